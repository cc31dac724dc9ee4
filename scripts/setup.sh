#!/usr/bin/env bash
# Set up edgeq on a fresh Debian/Python 3.11 machine: the full Fashion-MNIST (optional),
# a virtual environment in .venv, and edgeq with its pinned dependencies. Idempotent.
#   --no-test-tools   skip what only the tests use (chromium, the Android build tools): CI's
#                     device-farm jobs export and validate, they don't run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
test_tools=1
[ "${1:-}" = "--no-test-tools" ] && test_tools=0

if [ ! -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  # Optional: without it edgeq uses its bundled subset (1,024 train / 1,000 test images).
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
      || echo "setup: could not install dataset-fashion-mnist; edgeq will use its bundled subset" >&2
  else
    echo "setup: dataset-fashion-mnist not installed (needs root apt-get); edgeq will use its bundled subset" >&2
  fi
fi

# Host tools `edgeq targets setup` uses (readelf to read aarch64 libraries; a C toolchain, ninja and
# pkg-config to build QEMU's instruction-count plugin). Usually present; installed when missing.
missing=()
# chromium: the report test renders report.html headless (skipped without it).
# espeak-ng: speech for the voice-activity model of the dynamic-quantization tests.
# The Android demo's offline APK build and JVM tests: aapt, zipalign, apksigner, a JDK, JUnit 4, npm.
tools=(readelf:binutils gcc:gcc ninja:ninja-build pkg-config:pkg-config)
[ $test_tools = 1 ] && tools+=(chromium:chromium espeak-ng:espeak-ng aapt:aapt zipalign:zipalign apksigner:apksigner
                               javac:openjdk-17-jdk-headless npm:npm)
for tool in "${tools[@]}"; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
done
[ $test_tools = 1 ] && [ ! -e /usr/share/java/junit4.jar ] && missing+=(junit4)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } \
      || echo "setup: could not install ${missing[*]}; edgeq targets setup may fail" >&2
  else
    echo "setup: missing ${missing[*]} (needed by edgeq targets setup and the Android build); install them with apt-get" >&2
  fi
fi

[ -x .venv/bin/python ] || python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
