"""The offline APK build (fetched toolchain, compile, dex, package, align, sign, check) and the
runtime check: the APK's own arm64 libexecutorch.so runs its model under qemu-aarch64 and must
give the golden outputs, and refuses a damaged model with the runtime's reason."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgeq.android import apk
from edgeq.errors import EdgeqError
from conftest import assert_user_error, copy_demo_app, run_cli

needs_tools = pytest.mark.skipif(any(shutil.which(t) is None for t in apk.HOST_TOOLS),
                                 reason=f"needs {', '.join(apk.HOST_TOOLS)} (Debian: aapt zipalign apksigner "
                                        "openjdk-17-jdk-headless; scripts/setup.sh installs them as root)")


@pytest.fixture(scope="module")
def built_apk(installed_demo, tmp_path_factory):
    app, dist, _ = installed_demo
    out = tmp_path_factory.mktemp("apk") / "edgeq-demo.apk"
    result = run_cli("android", str(dist), str(app), "--apk", str(out))  # runs the runtime check by default
    assert result.exit_code == 0, result.output
    assert "newer than the APK's runtime 1.1.0" in " ".join(result.stderr.split())  # exported by 1.5.1
    return out, result.stdout


@needs_tools
def test_the_apk_builds_verifies_and_holds_the_app(built_apk):
    path, stdout = built_apk
    check = apk.check(path, {"package": "ai.edgeq.demo", "minSdk": "26"})
    assert check.package == "ai.edgeq.demo" and check.min_sdk == 26 and check.native_code == ["arm64-v8a"]
    assert "v2" in check.signatures
    assert "signature v2" in stdout and "runtime check passed" in stdout
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        pte = z.getinfo("assets/model.pte")
        dex = z.read("classes.dex")
    assert pte.compress_type == zipfile.ZIP_STORED
    # Stored and aligned: the model's bytes start on a 4-byte boundary (local header: 30 bytes + name + extra).
    header = path.read_bytes()[pte.header_offset:pte.header_offset + 30]
    data_start = pte.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    assert data_start % 4 == 0
    assert set(apk.REQUIRED) <= names
    assert sum(n.startswith("assets/samples/") for n in names) == 10
    for cls in (b"Lai/edgeq/demo/MainActivity;", b"Lai/edgeq/demo/core/Preprocess;", b"Lorg/pytorch/executorch/Module;"):
        assert cls in dex


@needs_tools
def test_a_deflated_model_or_a_broken_signature_is_caught(built_apk, tmp_path):
    path, _ = built_apk
    deflated = tmp_path / "deflated.apk"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(deflated, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), zipfile.ZIP_DEFLATED if info.filename.endswith(".pte")
                         else info.compress_type)
    with pytest.raises(EdgeqError, match="stores model.pte compressed"):
        apk.check(deflated)
    edited = tmp_path / "edited.apk"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(edited, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data.replace(b"T-shirt", b"X-shirt") if info.filename == "assets/labels.txt" else data)
    tampered = tmp_path / "tampered.apk"
    subprocess.run(["zipalign", "-p", "-f", "4", str(edited), str(tampered)], check=True)  # aligned, but edited
    with pytest.raises(EdgeqError, match="could not verify the signature"):
        apk.check(tampered)


def test_building_without_assets_or_tools_says_what_to_do(tmp_path, monkeypatch):
    app = copy_demo_app(tmp_path / "demo")
    assert_user_error(run_cli("android", str(tmp_path / "nope"), str(app), "--apk", str(tmp_path / "a.apk")),
                      "no manifest.json")
    with pytest.raises(EdgeqError, match="run edgeq android DIST"):
        apk.build(app, tmp_path / "a.apk")
    (app / "app/src/main/assets").mkdir(parents=True)
    (app / "app/src/main/assets/model.pte").write_bytes(b"x")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(EdgeqError, match="needs aapt, zipalign, apksigner"):
        apk.build(app, tmp_path / "a.apk")
    assert not (tmp_path / "a.apk").exists()


def _resigned(apk_path: Path, out: Path, replace: dict[str, bytes]) -> Path:
    """A copy of the APK with some entries replaced, stored, aligned and signed again with the debug
    key: what a rebuilt APK with that content would be."""
    unaligned = out.with_suffix(".unaligned.apk")
    with zipfile.ZipFile(apk_path) as src, zipfile.ZipFile(unaligned, "w") as dst:
        for info in src.infolist():
            if not info.filename.startswith("META-INF/"):
                dst.writestr(info, replace.get(info.filename, src.read(info)))
    aligned = out.with_suffix(".aligned.apk")
    subprocess.run(["zipalign", "-p", "-f", "4", str(unaligned), str(aligned)], check=True)
    subprocess.run(["apksigner", "sign", "--ks", str(apk.toolchain().keystore), "--ks-pass", "pass:android",
                    "--key-pass", "pass:android", "--ks-key-alias", "androiddebugkey", "--out", str(out),
                    str(aligned)], check=True, capture_output=True)
    return out


PORTABLE_PTE = """
import sys, torch
from executorch.exir import to_edge

class HardSwish(torch.nn.Module):  # decomposes into add, clamp, div, mul
    def forward(self, x):
        return torch.nn.functional.hardswish(x).flatten(1)[:, :10]

ep = torch.export.export(HardSwish(), (torch.randn(1, 1, 28, 28),))
open(sys.argv[1], "wb").write(to_edge(ep).to_executorch().buffer)
"""


def _portable_pte(tmp_path: Path, operator: str, renamed: str) -> bytes:
    """A .pte of portable (not delegated) operators, with one operator's name changed. Exported in a
    child process: this one may hold the runtime-only executorch.exir that edgeq.runner registers."""
    subprocess.run([sys.executable, "-c", PORTABLE_PTE, str(tmp_path / "portable.pte")], check=True,
                   capture_output=True, timeout=300)
    pte = (tmp_path / "portable.pte").read_bytes()
    assert pte.count(operator.encode()) == 1 and len(operator) == len(renamed)
    return pte.replace(operator.encode(), renamed.encode())


def _check_fails(path: Path, *needles: str) -> str:
    result = run_cli("android", "check", str(path))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("edgeq: error: "), result.stderr
    for needle in needles:
        assert needle in line, line
    return line


@needs_tools
def test_the_apks_runtime_runs_the_model_and_matches_every_golden_output(built_apk):
    path, _ = built_apk
    result = run_cli("android", "check", str(path))
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("  samples/")]
    assert len(rows) == 10 and all(row.endswith(" ok") for row in rows), result.stdout
    assert "ExecuTorch 1.1.0 (react-native-executorch@0.8.5) ran model.pte (exported with ExecuTorch 1.5.1)" \
        in result.stdout
    assert "top-1 equal on 10/10" in result.stdout and "emulated cortex-a76" in result.stdout
    with zipfile.ZipFile(path) as z:
        golden = json.loads(z.read("assets/golden/golden.json"))
    assert golden["apk_runtime"] == {"executorch": "1.1.0", "package": "react-native-executorch@0.8.5"}
    diffs = [float(re.search(r"max \|diff\| (\S+)", row).group(1)) for row in rows]
    assert max(diffs) <= golden["output_atol"]


@needs_tools
def test_a_damaged_delegate_a_missing_operator_or_wrong_outputs_fail_the_check_with_the_reason(built_apk, tmp_path):
    path, _ = built_apk
    with zipfile.ZipFile(path) as z:
        pte = z.read("assets/model.pte")
        outputs = z.read("assets/golden/outputs.f32")
    # The XNNPACK payload's format identifier, as a newer or damaged delegate blob would carry.
    assert pte.count(b"XN01") == 1
    broken = _resigned(path, tmp_path / "broken.apk", {"assets/model.pte": pte.replace(b"XN01", b"XN99")})
    _check_fails(broken, "ExecuTorch 1.1.0", "refused model.pte when loading the method of it",
                 "DelegateInvalidCompatibility", "XN99", "re-export and rebuild the APK")
    # A .pte naming an operator this runtime has no kernel for, as a newer exporter's new operator would.
    renamed = _portable_pte(tmp_path, "aten::clamp", "aten::clamq")
    missing = _resigned(path, tmp_path / "missing.apk", {"assets/model.pte": renamed})
    _check_fails(missing, "refused model.pte when loading the method of it (OperatorMissing)", "aten::clamq.out",
                 "uses an operator this runtime lacks")
    # The runtime runs, but the golden outputs say otherwise: every sample's first logit moved by 1.
    golden = np.frombuffer(outputs, "<f4").reshape(10, -1).copy()
    golden[:, 0] += 1.0
    wrong = _resigned(path, tmp_path / "wrong.apk", {"assets/golden/outputs.f32": golden.tobytes()})
    _check_fails(wrong, "outputs unlike the golden ones on 10/10 inputs")


def test_checking_a_missing_or_foreign_apk_says_what_to_do(tmp_path):
    assert_user_error(run_cli("android", "check", str(tmp_path / "nope.apk")), "does not exist")
    (tmp_path / "not.apk").write_bytes(b"not a zip")
    assert_user_error(run_cli("android", "check", str(tmp_path / "not.apk")), "not an APK")
