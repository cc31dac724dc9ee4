from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgeq.errors import EdgeqError
from edgeq.quantize import QuantRecipe, prepare, quantize_static, quantizer_for
from edgeq.runner import quantized_engine
from edgeq.validate import sqnr_db

SHAPE = (1, 1, 28, 28)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 8, 3, groups=8), nn.ReLU6(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


class _FunctionalNet(nn.Module):
    """As TF ports write it: F.pad + functional conv, F.relu6 (no activation modules to find)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, groups=8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn(F.conv2d(F.pad(x, [0, 1, 0, 1]), self.conv.weight, self.conv.bias, 2)))
        x = F.relu6(self.dw(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _calibration(x: np.ndarray):
    return lambda: iter([x[:32], x[32:]])


X = np.random.default_rng(0).normal(size=(64, *SHAPE[1:])).astype(np.float32)


@pytest.mark.parametrize("backend", ["qnnpack", "x86"])
@pytest.mark.parametrize("functional", [False, True])
def test_fx_quantization_tracks_the_float_model(backend, functional):
    """For qnnpack this holds only with contiguous_clamps: QNNPACK's quantized ReLU6 on the
    channels-last conv output is off by up to 6.0 in torch 2.14.1, for nn.ReLU6 and F.relu6 alike."""
    model = _FunctionalNet().eval() if functional else _net()
    q = quantize_static("fx", model, SHAPE, QuantRecipe(backend=backend), _calibration(X))
    with torch.no_grad(), quantized_engine(backend):
        out = q(torch.from_numpy(X)).numpy()
    assert sqnr_db(model(torch.from_numpy(X)).detach().numpy(), out) > 28  # broken clamp: ~17 dB


@pytest.mark.parametrize("quantizer", ["xnnpack", "x86"])
def test_pt2e_inserts_quantize_ops_and_keeps_batch_dynamic(quantizer):
    model = _net()
    q = quantize_static(quantizer, model, SHAPE, QuantRecipe(), _calibration(X))
    targets = {str(n.target) for n in q.graph.nodes if n.op == "call_function"}
    assert any("quantize_per_tensor" in t for t in targets)
    with torch.no_grad():
        out = q(torch.from_numpy(X[:5])).numpy()
    assert out.shape == (5, 10)
    assert sqnr_db(model(torch.from_numpy(X[:5])).detach().numpy(), out) > 15


def test_quantizer_choice_per_format():
    assert quantizer_for("pte", "x86") == "xnnpack"  # ExecuTorch's CPU delegate is XNNPACK everywhere
    assert quantizer_for("onnx", "x86") == "ort"  # onnxruntime's quantize_static: fastest on x86 (bench/)
    assert quantizer_for("onnx", "x86", "qat") == "x86"  # QAT trains through PT2E
    assert quantizer_for("onnx", "qnnpack") == "xnnpack"
    assert quantizer_for("ptl", "x86") == "fx"


def test_engine_is_restored():
    before = torch.backends.quantized.engine
    with quantized_engine("qnnpack"):
        assert torch.backends.quantized.engine == "qnnpack"
    assert torch.backends.quantized.engine == before


def test_bad_recipe():
    with pytest.raises(EdgeqError, match="unknown quantization backend"):
        QuantRecipe(backend="fbgemm2")
    with pytest.raises(EdgeqError, match="per-channel"):
        quantize_static("fx", _net(), SHAPE, QuantRecipe(backend="x86", per_channel=False), _calibration(X))


@pytest.mark.parametrize("flow", ["xnnpack", "x86", "fx"])
def test_qat_prepare_inserts_fake_quantize_and_keeps_gradients(flow):
    model = _net()
    prepared = prepare(flow, model, SHAPE, QuantRecipe(backend="x86" if flow == "x86" else "qnnpack"), qat=True)
    fake_quants = [m for m in prepared.modules() if hasattr(m, "observer_enabled")]
    assert fake_quants, "no fake-quantize modules were inserted"
    out = prepared(torch.from_numpy(X[:4]))
    out.sum().backward()
    grads = [p.grad for p in prepared.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())  # the float model is untouched
