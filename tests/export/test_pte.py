from __future__ import annotations

import numpy as np
import torch

from edgeq.runner import load
from edgeq.export import pte
from edgeq.models import load_model


def test_fp32_pte_is_delegated_and_matches_torch(tmp_path):
    m = load_model()
    details = pte.export(m.module, m.input_shape, tmp_path / "m.pte")
    assert details["delegate"] == "XnnpackBackend" and details["delegated_ops"] > 20
    assert details["portable_ops"] == {}
    x = np.random.default_rng(0).normal(size=m.input_shape).astype(np.float32)
    out = load("pte", str(tmp_path / "m.pte"))(x)
    np.testing.assert_allclose(out, m.module(torch.from_numpy(x)).detach().numpy(), atol=1e-4)


def test_ops_xnnpack_does_not_take_are_listed_as_portable(tmp_path):
    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.cumsum(x.flatten(1), 1)[:, :10]  # no XNNPACK kernel for cumsum

    details = pte.export(Net().eval(), (1, 1, 4, 4), tmp_path / "m.pte")
    assert details["portable_ops"] == {"aten_cumsum_default": 1}
    assert details["portable_reasons"] == {"aten_cumsum_default": "XNNPACK's partitioner has no config for it"}
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    np.testing.assert_allclose(load("pte", str(tmp_path / "m.pte"))(x)[0], np.cumsum(x.ravel())[:10])


class MobileBlocks(torch.nn.Module):
    """The three patterns of torchvision's mobile nets XNNPACK refused: hardsigmoid (mobilenet_v3's
    squeeze-excitation), chunk (shufflenet's split), mean over H, W without keepdim (its pooling)."""

    def __init__(self, float_after_split: bool = False) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.gate = torch.nn.Conv2d(8, 8, 1)
        self.branch = torch.nn.Conv2d(4, 4, 1)
        self.fc = torch.nn.Linear(8, 5)
        self.float_after_split = float_after_split

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = x * torch.nn.functional.hardsigmoid(self.gate(x.mean((2, 3), keepdim=True)))
        a, b = x.chunk(2, dim=1)
        b = torch.relu(b) if self.float_after_split else torch.relu(self.branch(b))
        return self.fc(torch.cat([a, b], 1).mean([2, 3]))


def test_mobile_net_patterns_stay_inside_xnnpack_in_fp32_and_int8(tmp_path):
    from edgeq.config import QuantRecipe
    from edgeq.quantize import quantize_static

    torch.manual_seed(0)
    model, shape = MobileBlocks().eval(), (1, 3, 16, 16)
    x = np.random.default_rng(0).normal(size=(8, *shape[1:])).astype(np.float32)
    int8 = quantize_static("xnnpack", model, shape, QuantRecipe(backend="qnnpack"), lambda: iter([x]))
    for name, m, atol in (("fp32", model, 1e-5), ("int8", int8, 0.05)):
        details = pte.export(m, shape, tmp_path / f"{name}.pte")
        if name == "fp32":
            assert details["portable_ops"] == {} and details["delegated_subgraphs"] == 1, details
        else:  # the halves' consumers gave them other int8 grids than their source: a requantize, outside
            assert details["portable_ops"] == {"aten_slice_copy_tensor": 2}, details
            assert "matching input and output quantization" in details["portable_reasons"]["aten_slice_copy_tensor"]
        assert details["rewrites"] == {"hardsigmoid → add, clamp, div": 1, "split → slices": 1,
                                       "mean over H, W → mean keepdim, view": 1}, details
        with torch.no_grad():
            expected = m(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(load("pte", str(tmp_path / f"{name}.pte"))(x), expected, atol=atol)


def test_a_split_of_int8_read_by_float_ops_stays_whole(tmp_path):
    """In an int8 graph, XNNPACK gets slices whose pieces float ops read wrong: a slice feeding a float
    ReLU fails at run time ("Failed to resize output tensor"), an LSTM's gates chunked after the
    quantized add gave wrong values without a word (edgeq.export.delegable). Such a split stays
    whole, outside the delegate, as ExecuTorch would leave it; the other rewrites still apply."""
    from edgeq.config import QuantRecipe
    from edgeq.quantize import quantize_static

    torch.manual_seed(0)
    model, shape = MobileBlocks(float_after_split=True).eval(), (1, 3, 16, 16)
    x = np.random.default_rng(0).normal(size=(4, *shape[1:])).astype(np.float32)
    int8 = quantize_static("xnnpack", model, shape, QuantRecipe(backend="qnnpack"), lambda: iter([x]))
    details = pte.export(int8, shape, tmp_path / "m.pte")
    assert "split → slices" not in details["rewrites"] and details["rewrites"], details
    assert details["portable_ops"].get("aten_split_with_sizes_copy_default") == 1, details
    with torch.no_grad():
        np.testing.assert_allclose(load("pte", str(tmp_path / "m.pte"))(x), int8(torch.from_numpy(x)).numpy(),
                                   atol=0.05)
