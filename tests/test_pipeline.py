"""The Python API on torchvision classifiers, for both target families (random weights: no
hub downloads here, so agreement is reported, and fp32 must match the float model)."""

from __future__ import annotations

import pytest

import edgeq
from edgeq.config import ExportConfig
from edgeq.manifest import Manifest
from edgeq.models import load_model
from edgeq.pipeline import _preprocess


# Every model on arm64; the x86 flows (onnxruntime's quantize_static, the x86 FX qconfig) on one:
# they do not depend on the model, and each of these exports takes one to two minutes here. The
# x86 one leaves out the .pte: it is the arm64 one's flow (XNNPACK on every CPU, quantizer_for) and
# its int8 lowering alone took 97 s of mobilenet_v3_small's 170. fp32 on mobilenet_v2 only: a float
# export does not depend on the net, and the mobile nets' float patterns (hardsigmoid, split, mean)
# are checked inside XNNPACK block by block (tests/export/test_pte.py).
@pytest.mark.parametrize("name,target,precisions", [
    ("mobilenet_v2", "arm64", ("int8", "fp32")),
    ("mobilenet_v3_small", "arm64", ("int8",)),
    ("resnet18", "arm64", ("int8",)),
    ("mobilenet_v3_small", "x86_64", ("int8", "fp32")),
])
def test_torchvision_models_export_all_formats(tmp_path, name, target, precisions):
    formats = ("onnx", "ptl") if target == "x86_64" else ("pte", "onnx", "ptl")
    manifest = edgeq.export(tmp_path / "dist", validate_on_target=False, model=f"torchvision:{name}?num_classes=10", input_shape=(1, 3, 64, 64),
                            target=target, calib_samples=32, check_samples=24, progress=False, formats=formats,
                            precisions=precisions)
    assert isinstance(manifest, Manifest)
    assert manifest.quantization.backend == ("x86" if target == "x86_64" else "qnnpack")
    assert len(manifest.artifacts) == len(precisions) * len(formats)
    for a in manifest.artifacts:
        assert (tmp_path / "dist" / a.path).stat().st_size == a.bytes
        assert a.host_check is not None and a.host_check.samples == 24
        if a.precision == "fp32":
            assert a.host_check.passed, (a.key, a.host_check)
    int8 = {a.format: a for a in manifest.artifacts if a.precision == "int8"}
    assert int8["onnx"].details["dequantize_linear"] > 0
    assert "pte" not in int8 or int8["pte"].details["delegated_ops"] > 0
    for a in manifest.artifacts:  # every op inside XNNPACK (hardsigmoid in mobilenet_v3: edgeq.export.delegable)
        assert a.format != "pte" or a.details["portable_ops"] == {}, (a.key, a.details)
    if name == "mobilenet_v2":  # weights are the file: int8 is about a quarter of fp32 at any input size
        fp32 = manifest.artifact("pte", "fp32")
        assert int8["pte"].bytes <= 0.3 * fp32.bytes, (int8["pte"].bytes, fp32.bytes)


def test_a_torchvision_model_gets_its_imagenet_input_and_resize():
    loaded = load_model("torchvision:mobilenet_v2", None, None)
    assert loaded.input_shape == (1, 3, 224, 224)
    assert _preprocess(loaded, ExportConfig()).resize == 256
