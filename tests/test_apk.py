"""The offline APK build: fetched toolchain, compile, dex, package, align, sign, then check.
What it shows is that the app builds and packages; nothing here runs Android."""

from __future__ import annotations

import shutil
import subprocess
import zipfile

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
    result = run_cli("android", str(dist), str(app), "--apk", str(out))
    assert result.exit_code == 0, result.output
    return out, result.stdout


@needs_tools
def test_the_apk_builds_verifies_and_holds_the_app(built_apk):
    path, stdout = built_apk
    check = apk.check(path, {"package": "ai.edgeq.demo", "minSdk": "26"})
    assert check.package == "ai.edgeq.demo" and check.min_sdk == 26 and check.native_code == ["arm64-v8a"]
    assert "v2" in check.signatures
    assert "not run on a device" in stdout and "signature v2" in stdout
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
