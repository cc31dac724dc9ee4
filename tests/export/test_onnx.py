from __future__ import annotations

import numpy as np
import onnx as onnx_lib
import pytest
import torch

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
