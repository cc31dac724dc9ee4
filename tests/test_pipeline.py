"""The Python API on torchvision classifiers, for both target families (random weights: no
hub downloads here, so agreement is reported, and fp32 must match the float model)."""

from __future__ import annotations

import pytest

import edgeq
from edgeq.manifest import Manifest


# Every model on arm64; the x86 flows (onnxruntime's quantize_static, the x86 FX qconfig) on one:
# they do not depend on the model, and each of these exports takes two to three minutes here.
@pytest.mark.parametrize("name,target", [
    ("mobilenet_v2", "arm64"),
    ("mobilenet_v3_small", "arm64"),
    ("resnet18", "arm64"),
    ("mobilenet_v3_small", "x86_64"),
])
def test_torchvision_models_export_all_formats(tmp_path, name, target):
    manifest = edgeq.export(tmp_path / "dist", validate_on_target=False, model=f"torchvision:{name}?num_classes=10", input_shape=(1, 3, 64, 64),
                            target=target, calib_samples=32, check_samples=24, progress=False)
    assert isinstance(manifest, Manifest)
    assert manifest.quantization.backend == ("x86" if target == "x86_64" else "qnnpack")
    assert len(manifest.artifacts) == 6
    for a in manifest.artifacts:
        assert (tmp_path / "dist" / a.path).stat().st_size == a.bytes
        assert a.host_check is not None and a.host_check.samples == 24
        if a.precision == "fp32":
            assert a.host_check.passed, (a.key, a.host_check)
    int8 = {a.format: a for a in manifest.artifacts if a.precision == "int8"}
    assert int8["onnx"].details["dequantize_linear"] > 0
    assert int8["pte"].details["delegated_ops"] > 0
    for a in manifest.artifacts:  # every op inside XNNPACK (hardsigmoid in mobilenet_v3: edgeq.export.delegable)
        assert a.format != "pte" or a.details["portable_ops"] == {}, (a.key, a.details)


@pytest.mark.slow
def test_mobilenet_v2_int8_pte_is_under_three_tenths_of_fp32(tmp_path):
    manifest = edgeq.export(tmp_path / "dist", validate_on_target=False, model="torchvision:mobilenet_v2", target="arm64", formats=["pte"],
                            calib_samples=16, check_samples=8, progress=False)
    int8, fp32 = manifest.artifact("pte", "int8"), manifest.artifact("pte", "fp32")
    assert int8.bytes <= 0.3 * fp32.bytes, (int8.bytes, fp32.bytes)
    assert manifest.model.input_shape == [1, 3, 224, 224]
    assert manifest.preprocess.resize == 256
