from __future__ import annotations

import numpy as np
import onnx as onnx_lib
import pytest
import torch

from edgeq.config import QuantRecipe
from edgeq.errors import EdgeqError
from edgeq.runner import load
from edgeq.export import onnx
from edgeq.models import load_model


def test_fp32_onnx_runs_in_onnxruntime_without_debug_metadata(tmp_path):
    m = load_model()
    details = onnx.export(m.module, m.input_shape, tmp_path / "m.onnx", quantized=False)
    assert details["quantize_linear"] == 0 and details["ops"]["Conv"] > 10
    proto = onnx_lib.load(str(tmp_path / "m.onnx"))
    assert not any(node.metadata_props for node in proto.graph.node)
    assert str(tmp_path) not in (tmp_path / "m.onnx").read_bytes().decode("latin-1")
    x = np.random.default_rng(0).normal(size=m.input_shape).astype(np.float32)
    np.testing.assert_allclose(load("onnx", str(tmp_path / "m.onnx"))(x), m.module(torch.from_numpy(x)).detach().numpy(),
                               atol=1e-4)


def test_int8_onnx_without_qdq_fails_loudly(tmp_path):
    """A float graph exported as "int8" is what a Q/DQ-dropping optimizer pass leaves behind."""
    m = load_model()
    with pytest.raises(EdgeqError, match="dropped Q/DQ"):
        onnx.export(m.module, m.input_shape, tmp_path / "m.onnx", quantized=True)


def test_x86_onnx_is_quantized_by_onnxruntime_and_fuses_into_integer_kernels(tmp_path):
    """The x86 int8 .onnx: what makes it faster than fp32 on x86 is that onnxruntime turns every
    Conv into QLinearConv (and every Add into QLinearAdd): no float conv and no layout transposes left."""
    import onnxruntime as ort

    from edgeq.data import fashion_mnist, Preprocess

    m = load_model()
    images = fashion_mnist("train")
    calib = images.batch(Preprocess.default_for(m.input_shape, grayscale_stats=True), range(64))
    details = onnx.export_ort_quantized(m.module, m.input_shape, tmp_path / "q.onnx", calib, QuantRecipe(backend="x86"))
    assert details["quantize_linear"] > 0 and details["calibration"] == "Entropy over 64 samples"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "q.onnx"), options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx_lib.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert "QLinearConv" in ops and "QLinearAdd" in ops
    assert not ops & {"Conv", "FusedConv", "Clip"}, ops
    x = calib[:8]
    run, float_out = load("onnx", str(tmp_path / "q.onnx")), m.module(torch.from_numpy(x)).detach().numpy()
    agree = np.mean([run(x[i:i + 1])[0].argmax() == float_out[i].argmax() for i in range(len(x))])
    assert agree >= 0.875
