"""The Linear rewrite of recurrent layers computes what torch's own modules compute, in every
configuration edgeq accepts (layers, directions, batch_first, state given or not, unbatched)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeq.quantize.recurrent import LinearRNN, as_linear


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("layers, bidirectional, batch_first, bias", [
    (1, False, False, True), (3, False, True, True), (2, True, True, True), (2, True, False, False)])
def test_the_rewrite_of_a_multi_layer_rnn_is_the_same_function(kind, layers, bidirectional, batch_first, bias):
    torch.manual_seed(0)
    rnn = kind(12, 16, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias).eval()
    linear = LinearRNN(rnn).eval()
    x = torch.randn(3, 7, 12)
    directions = 2 if bidirectional else 1
    h0 = torch.randn(layers * directions, 3 if batch_first else 7, 16)
    state = (h0, torch.randn_like(h0)) if kind is nn.LSTM else h0
    with torch.no_grad():
        for args in ((x,), (x, state)):
            want, got = rnn(*args), linear(*args)
            torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
            for g, w in zip(got[1] if kind is nn.LSTM else [got[1]], want[1] if kind is nn.LSTM else [want[1]]):
                torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
        unbatched = rnn(x[0]), linear(x[0])  # (seq, features): torch's unbatched form
        torch.testing.assert_close(unbatched[1][0], unbatched[0][0], atol=1e-5, rtol=1e-5)
    names = [n for n, _ in linear.named_modules() if n.endswith((".ih", ".hh"))]
    assert len(names) == 2 * layers * directions  # each layer and direction its own pair of Linears


def test_cells_and_nested_modules_are_rewritten_in_place_of_a_copy():
    torch.manual_seed(0)
    model = nn.ModuleDict({"lstm": nn.LSTMCell(8, 16), "gru": nn.GRUCell(8, 16), "head": nn.Linear(16, 4)}).eval()
    rewritten, names = as_linear(model)
    assert sorted(names) == ["gru", "lstm"] and isinstance(model["lstm"], nn.LSTMCell)  # the original untouched
    x, h, c = torch.randn(5, 8), torch.randn(5, 16), torch.randn(5, 16)
    with torch.no_grad():
        for want, got in zip(model["lstm"](x, (h, c)), rewritten["lstm"](x, (h, c))):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rewritten["gru"](x, h), model["gru"](x, h), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rewritten["gru"](x), model["gru"](x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_with_its_in_projection_as_linears_is_the_same_function(batch_first):
    from edgeq.quantize.recurrent import LinearAttention

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    linear = LinearAttention(mha).eval()
    x = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[0, 3:] = True
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    with torch.no_grad():
        for kwargs in ({}, {"key_padding_mask": pad}, {"attn_mask": causal}, {"attn_mask": causal.float() * -1e4},
                       {"attn_mask": causal, "key_padding_mask": pad, "average_attn_weights": False},
                       {"need_weights": False}):
            want, got = mha(x, x, x, **kwargs), linear(x, x, x, **kwargs)
            torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
            if want[1] is not None:
                torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)


def test_a_transformer_encoders_attention_projections_become_int8_for_ptl(tmp_path):
    """torch.ao's quantize_dynamic alone leaves nn.MultiheadAttention float (and the traced layer
    needs its fast path off): edgeq's .ptl flow makes q, k, v and out_proj int8 too."""
    from edgeq import runner
    from edgeq.export import ptl
    from edgeq.quantize.dynamic import int8_layers, quantize_dynamic_eager

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(1, 10, 32)
    quantized = quantize_dynamic_eager(model, "qnnpack", per_channel=True)
    assert sorted(n for n in int8_layers(quantized) if n.startswith("layers.0.")) == [
        "layers.0.linear1", "layers.0.linear2", "layers.0.self_attn.k", "layers.0.self_attn.out_proj",
        "layers.0.self_attn.q", "layers.0.self_attn.v"]
    ptl.export(quantized, (x,), tmp_path / "t.ptl", "qnnpack")
    got = runner.load_tensors("ptl", str(tmp_path / "t.ptl"))([x.numpy()])[0]
    with torch.no_grad():
        want = model(x).numpy()
    cosine = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
    assert cosine > 0.99, cosine


def test_a_layer_without_a_rewrite_is_a_user_error_naming_it():
    from edgeq.errors import EdgeqError

    model = nn.ModuleDict({"encoder": nn.LSTM(4, 8, proj_size=2)})
    with pytest.raises(EdgeqError, match="layer encoder: an LSTM with proj_size has no Linear rewrite"):
        as_linear(model)


class Stacked(nn.Module):
    """A 3-layer LSTM and a head: a speech model's shape (features in, a score per step out)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(20, 32, num_layers=3, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(features)[0])


@pytest.mark.parametrize("fmt", ["pte", "onnx", "ptl"])
def test_a_plan_keeps_one_layer_of_a_multi_layer_lstm_float_in_every_flow(fmt, tmp_path):
    """The unit is a layer, not the module: lstm.layers.0 stays float, layers 1 and 2 and the head
    become int8 (random weights: this is the plumbing; what it buys on real speech is measured)."""
    from edgeq.export import onnx
    from edgeq.quantize.dynamic import int8_layers, quantize_dynamic_eager, quantize_dynamic_pt2e

    torch.manual_seed(0)
    model, example = Stacked().eval(), (torch.randn(1, 6, 20),)
    plan = ("lstm.layers.0",)
    if fmt == "pte":
        graph = quantize_dynamic_pt2e(model, example, per_channel=True, float_layers=plan)
        linears = [n for n in graph.graph.nodes if n.target == torch.ops.aten.linear.default]
        floats = {str(n.args[1].target).rsplit(".", 1)[0] for n in linears if n.args[1].op == "get_attr"}
        assert floats == {"lstm.layers.0.ih", "lstm.layers.0.hh"}, floats
        int8 = [n for n in linears if "dequantize_per_channel" in str(n.args[1].target)]
        assert len(int8) == len(linears) - 2 * 6  # layer 0's two products at each of the 6 steps stay float
    elif fmt == "onnx":
        path = tmp_path / "m.onnx"
        details = onnx.export_ort_dynamic(model, example, ("features",), path, per_channel=True, float_layers=plan)
        assert len(details["float_weighted_nodes"]) == 0 and details["int8_ops"]["MatMulInteger"] > 0
        kept = [n for n in __import__("onnx").load(str(path)).graph.node if n.op_type in ("MatMul", "Gemm")]
        assert len(kept) == 2 * 6, [n.name for n in kept]  # layer 0's two products at each of the 6 steps
    else:
        quantized = quantize_dynamic_eager(model, "qnnpack", per_channel=True, float_layers=plan)
        layers = int8_layers(quantized)
        assert "lstm.layers.0.ih" not in layers and "lstm.layers.0.hh" not in layers
        assert {"lstm.layers.1.ih", "lstm.layers.2.hh", "head"} <= set(layers), layers
        whole = int8_layers(quantize_dynamic_eager(model, "qnnpack", per_channel=True, float_layers=("lstm",)))
        assert whole == ["head"]


def test_a_plan_naming_no_layer_of_the_model_is_refused():
    from edgeq.errors import EdgeqError
    from edgeq.quantize.dynamic import quantize_dynamic_eager

    with pytest.raises(EdgeqError, match="the plan names 'lstm.layers.7', which holds no linear layer"):
        quantize_dynamic_eager(Stacked().eval(), "qnnpack", per_channel=True, float_layers=("lstm.layers.7",))
