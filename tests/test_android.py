"""`edgeq android`: the demo app's assets from a real export, the Java app logic under JUnit against
edgeq's Python (preprocessing within 1e-6, top-k), and the Gradle project's completeness."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeq.android.assets import write_golden
from edgeq.data import Preprocess
from edgeq.manifest import Manifest, sha256_file
from conftest import ANDROID_DEMO, assert_user_error, copy_demo_app, run_cli

JUNIT = [Path("/usr/share/java/junit4.jar"), Path("/usr/share/java/hamcrest-core.jar")]  # Debian junit4
JAVA_TESTS = ("ParityTest", "ClassificationTest", "JsonTest", "PreprocessTest")
needs_jdk = pytest.mark.skipif(shutil.which("javac") is None or not all(p.exists() for p in JUNIT),
                               reason="needs javac and JUnit 4 (Debian: openjdk-17-jdk-headless junit4; "
                                      "scripts/setup.sh installs them as root)")


@pytest.fixture(scope="module")
def java_classes(tmp_path_factory) -> Path:
    """The app's plain-Java logic and its JVM tests, compiled as Gradle's unit-test task would."""
    out = tmp_path_factory.mktemp("jvm")
    app = ANDROID_DEMO / "app" / "src"
    sources = sorted((app / "main" / "java" / "ai" / "edgeq" / "demo" / "core").glob("*.java"))
    sources += sorted((app / "test" / "java").rglob("*.java"))
    proc = subprocess.run(["javac", "-encoding", "UTF-8", "-d", str(out), "-cp", ":".join(map(str, JUNIT)),
                           *map(str, sources)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out


def junit(classes: Path, assets: Path, *tests: str) -> subprocess.CompletedProcess:
    return subprocess.run(["java", f"-Dedgeq.assets={assets}", "-cp", ":".join(map(str, [classes, *JUNIT])),
                           "org.junit.runner.JUnitCore", *(f"ai.edgeq.demo.core.{t}" for t in tests)],
                          capture_output=True, text=True, timeout=300)


def test_android_puts_the_export_into_the_apps_assets(installed_demo):
    app, dist, stdout = installed_demo
    manifest = Manifest.load(dist)
    assets = app / "app" / "src" / "main" / "assets"
    assert sha256_file(assets / "model.pte") == manifest.artifact("pte", "int8").sha256
    assert (assets / "labels.txt").read_text().splitlines() == manifest.model.classes
    pre = json.loads((assets / "preprocess.json").read_text())
    assert Preprocess.from_dict(pre) == manifest.preprocess
    assert pre["input_shape"] == [1, 1, 28, 28] and pre["executorch"] == manifest.versions["executorch"]
    golden = json.loads((assets / "golden" / "golden.json").read_text())
    assert sorted(s["label"] for s in golden["samples"]) == list(range(10))  # one sample per class
    assert "10 samples" in stdout and "Android Studio" in stdout
    # The PNGs turn back into exactly the reference inputs they came from.
    with np.load(dist / "reference.npz") as ref:
        inputs, labels = ref["inputs"], ref["labels"]
    floats = np.fromfile(assets / "golden" / "inputs.f32", "<f4").reshape(10, 1, 28, 28)
    for k, sample in enumerate(golden["samples"]):
        first = int(np.flatnonzero(labels == sample["label"])[0])
        np.testing.assert_allclose(floats[k], inputs[first], atol=1e-6)
        assert (assets / sample["image"]).is_file()
    # The expected outputs are the .pte's on the host, and mostly right on these samples.
    outputs = np.fromfile(assets / "golden" / "outputs.f32", "<f4").reshape(10, 10)
    assert [s["top5"][0]["index"] for s in golden["samples"]] == outputs.argmax(1).tolist()
    assert sum(s["top5"][0]["index"] == s["label"] for s in golden["samples"]) >= 7


@needs_jdk
def test_java_matches_python_on_the_export(installed_demo, java_classes):
    app, _, _ = installed_demo
    proc = junit(java_classes, app / "app" / "src" / "main" / "assets", *JAVA_TESTS)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert re.search(r"^OK \(\d+ tests\)", proc.stdout, re.M), proc.stdout


@needs_jdk
@pytest.mark.parametrize("config", ["rgb-resize-crop", "gray-straight-resize"])
def test_java_preprocessing_matches_pillow_through_resize_and_crop(tmp_path, java_classes, config):
    """Color images of odd sizes (down- and upscaled) through both preprocessing styles; then the
    same check with one golden float moved by 1e-5, which the Java test must catch."""
    if config == "rgb-resize-crop":
        pre = Preprocess(size=(24, 24), channels=3, resize=27, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    else:
        pre = Preprocess(size=(20, 16), channels=1, resize=None, mean=(0.5,), std=(0.25,))
    rng = np.random.default_rng(0)
    images = [(f"{w}x{h}.png", Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB"), None)
              for w, h in ((61, 40), (40, 61), (33, 33), (7, 9), (24, 24))]
    weights = rng.standard_normal((6, pre.channels * pre.size[0] * pre.size[1])).astype(np.float32)
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "preprocess.json").write_text(json.dumps(pre.to_dict()))
    (assets / "labels.txt").write_text("".join(f"c{i}\n" for i in range(6)))
    write_golden(assets, images, pre, lambda x: weights @ x.reshape(-1) / 50, "fp32", "numpy")
    proc = junit(java_classes, assets, "ParityTest")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "OK (2 tests)" in proc.stdout

    floats = np.fromfile(assets / "golden" / "inputs.f32", "<f4")
    floats[123] += 1e-5
    floats.astype("<f4").tofile(assets / "golden" / "inputs.f32")
    proc = junit(java_classes, assets, "ParityTest")
    assert proc.returncode != 0 and "value 123" in proc.stdout


def test_a_changed_pte_is_refused_and_the_assets_stay(installed_demo, tmp_path):
    app, dist, _ = installed_demo
    bad = tmp_path / "dist"
    shutil.copytree(dist, bad)
    (bad / Manifest.load(dist).artifact("pte", "int8").path).write_bytes(b"not a model")
    before = sha256_file(app / "app" / "src" / "main" / "assets" / "model.pte")
    assert_user_error(run_cli("android", str(bad), str(app)), "does not match its sha256", "re-export")
    assert sha256_file(app / "app" / "src" / "main" / "assets" / "model.pte") == before
    assert not [p.name for p in (app / "app" / "src" / "main").iterdir() if p.name.startswith(".assets")]


def test_an_export_without_a_pte_or_reference_is_refused(installed_demo, tmp_path):
    app, dist, _ = installed_demo
    bad = tmp_path / "dist"
    shutil.copytree(dist, bad)
    manifest = Manifest.load(bad)
    manifest.artifacts = [a for a in manifest.artifacts if a.format != "pte"]
    manifest.write(bad)
    assert_user_error(run_cli("android", str(bad), str(app)), "no int8 .pte", "--formats pte")
    manifest = Manifest.load(dist)
    manifest.reference = None
    manifest.write(bad)
    assert_user_error(run_cli("android", str(bad), str(app)), "no reference.npz", "re-export")
    assert_user_error(run_cli("android", str(dist), str(tmp_path)), "not the edgeq Android demo")


def test_an_app_built_for_another_executorch_gets_a_warning(builtin_export, tmp_path):
    _, dist, _ = builtin_export
    app = copy_demo_app(tmp_path / "demo")
    props = app / "gradle.properties"
    props.write_text(props.read_text().replace("executorchVersion=", "executorchVersion=0.0.0-was-"))
    result = run_cli("android", str(dist), str(app))
    assert result.exit_code == 0, result.output
    assert "warning" in result.stderr and "executorchVersion=" in result.stderr


def test_the_gradle_project_is_complete():
    """What Android Studio needs to open and run it, and what a device farm needs to test it."""
    root = ANDROID_DEMO
    assert 'include ":app"' in (root / "settings.gradle").read_text()
    assert "com.android.application" in (root / "build.gradle").read_text()
    assert re.search(r"distributionUrl=.*gradle-8\.\d+(\.\d+)?-bin\.zip", (root / "gradle/wrapper/gradle-wrapper.properties").read_text())
    pins = tomllib.loads(Path("pyproject.toml").read_text())["project"]["dependencies"]
    executorch = next(p.split("==")[1] for p in pins if p.startswith("executorch=="))
    assert f"executorchVersion={executorch}" in (root / "gradle.properties").read_text()
    gradle = (root / "app" / "build.gradle").read_text()
    for needle in ('implementation "org.pytorch:executorch-android:${executorchVersion}"', 'noCompress "pte"',
                   "minSdk 26", "testImplementation", "androidx.test.runner.AndroidJUnitRunner"):
        assert needle in gradle
    manifest = ET.parse(root / "app/src/main/AndroidManifest.xml").getroot()
    android = "{http://schemas.android.com/apk/res/android}"
    activity = manifest.find("application/activity")
    assert activity.get(f"{android}name") == ".MainActivity" and activity.get(f"{android}exported") == "true"
    assert activity.find("intent-filter/category").get(f"{android}name") == "android.intent.category.LAUNCHER"
    for res in ("res/layout/activity_main.xml", "res/values/strings.xml", "res/drawable/ic_launcher.xml"):
        ET.parse(root / "app/src/main" / res)
    instrumented = (root / "app/src/androidTest/java/ai/edgeq/demo/GoldenOutputsTest.java").read_text()
    assert "AndroidJUnit4" in instrumented and "Golden.load" in instrumented and "outputAtol" in instrumented
    for core in (root / "app/src/main/java/ai/edgeq/demo/core").glob("*.java"):
        assert not re.search(r"^import android", core.read_text(), re.M), core  # plain Java, JVM-testable
