"""Recurrent layers as `nn.Linear` + gates: the same function as `nn.LSTM`, `nn.GRU`, `nn.LSTMCell`
and `nn.GRUCell`, written so that quantizers see their matrix products (and `nn.MultiheadAttention`
with its in-projection as three Linears, see LinearAttention).

Why: torch.export keeps each recurrent module as one opaque op (`aten.lstm.input`, `aten.gru_cell`),
and PT2E's quantizer annotates linear and conv nodes only, so "dynamic int8" of an LSTM model
silently quantizes only its head (file size 1.00 of fp32); ExecuTorch then unrolls the op in
float. onnxruntime has no GRU quantizer either. Rewritten, every gate's product is an `nn.Linear`
that each flow quantizes, and each layer (and direction) of a multi-layer LSTM/GRU is its own
module, `NAME.layers.K` (`NAME.reverse.K`), so a float plan can keep one layer float (a first layer
fed raw, unnormalised features is where int8 at run time hurts) and quantize the rest.

Sequence length is read from the input, so an export fixes it (the graph is unrolled over time).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from edgeq.errors import EdgeqError

RECURRENT = (nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell)


class _LinearCell(nn.Module):
    """A recurrent cell's two products, input and state, as nn.Linear (GATES blocks of hidden_size)."""

    GATES = 1

    def __init__(self, cell: nn.LSTMCell | nn.GRUCell | None = None, *, input_size: int = 0, hidden_size: int = 0,
                 bias: bool = True, weights: tuple[torch.Tensor, ...] | None = None) -> None:
        super().__init__()
        if cell is not None:
            input_size, hidden_size, bias = cell.input_size, cell.hidden_size, cell.bias
            weights = (cell.weight_ih, cell.weight_hh, *((cell.bias_ih, cell.bias_hh) if bias else ()))
        self.hidden_size = hidden_size
        self.ih = nn.Linear(input_size, self.GATES * hidden_size, bias=bias)
        self.hh = nn.Linear(hidden_size, self.GATES * hidden_size, bias=bias)
        _copy_weights(self, weights, bias)


class LinearLSTMCell(_LinearCell):
    GATES = 4

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            state = (zeros, zeros)
        h, c = state
        i, f, g, o = (self.ih(x) + self.hh(h)).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class LinearGRUCell(_LinearCell):
    GATES = 3

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        if h is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
        xr, xz, xn = self.ih(x).chunk(3, -1)
        hr, hz, hn = self.hh(h).chunk(3, -1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h


class LinearRNN(nn.Module):
    """`nn.LSTM` / `nn.GRU` (layers, directions, batch_first, no projections) over LinearLSTMCell /
    LinearGRUCell: `layers.K` runs forward in time, `reverse.K` backward."""

    def __init__(self, rnn: nn.LSTM | nn.GRU) -> None:
        super().__init__()
        if getattr(rnn, "proj_size", 0):
            raise ValueError("an LSTM with proj_size has no Linear rewrite here")
        self.lstm = isinstance(rnn, nn.LSTM)
        self.batch_first, self.num_layers, self.hidden_size = rnn.batch_first, rnn.num_layers, rnn.hidden_size
        cell = LinearLSTMCell if self.lstm else LinearGRUCell
        directions = 2 if rnn.bidirectional else 1

        def layer(k: int, suffix: str) -> nn.Module:
            names = [f"weight_ih_l{k}{suffix}", f"weight_hh_l{k}{suffix}"]
            names += [f"bias_ih_l{k}{suffix}", f"bias_hh_l{k}{suffix}"] if rnn.bias else []
            weights = tuple(getattr(rnn, n) for n in names)
            return cell(input_size=weights[0].shape[1], hidden_size=rnn.hidden_size, bias=rnn.bias, weights=weights)

        self.layers = nn.ModuleList(layer(k, "") for k in range(rnn.num_layers))
        self.reverse = nn.ModuleList(layer(k, "_reverse") for k in range(rnn.num_layers)) if directions == 2 else None

    def forward(self, x: torch.Tensor, state=None):  # noqa: ANN001 - h0, or (h0, c0) for an LSTM
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)
            state = None if state is None else tuple(s.unsqueeze(1) for s in state) if self.lstm else state.unsqueeze(1)
        if self.batch_first and not unbatched:
            x = x.transpose(0, 1)
        directions = 2 if self.reverse is not None else 1
        hs, cs = [], []
        for k in range(self.num_layers):
            outs = []
            for d, cells in enumerate([self.layers] if directions == 1 else [self.layers, self.reverse]):
                i = k * directions + d
                s = None if state is None else (state[0][i], state[1][i]) if self.lstm else state[i]
                steps = range(x.shape[0]) if d == 0 else range(x.shape[0] - 1, -1, -1)
                ys: list[torch.Tensor] = [x[0]] * x.shape[0]
                for t in steps:
                    s = cells[k](x[t], s)
                    ys[t] = s[0] if self.lstm else s
                outs.append(torch.stack(ys))
                hs.append(s[0] if self.lstm else s)
                if self.lstm:
                    cs.append(s[1])
            x = outs[0] if directions == 1 else torch.cat(outs, -1)
        h = torch.stack(hs)
        final = (h, torch.stack(cs)) if self.lstm else h
        if self.batch_first and not unbatched:
            x = x.transpose(0, 1)
        if unbatched:
            x = x.squeeze(1)
            final = tuple(f.squeeze(1) for f in final) if self.lstm else final.squeeze(1)
        return x, final


def _copy_weights(module: nn.Module, weights: tuple[torch.Tensor, ...] | None, bias: bool) -> None:
    if weights is None:
        return
    with torch.no_grad():
        module.ih.weight.copy_(weights[0])
        module.hh.weight.copy_(weights[1])
        if bias:
            module.ih.bias.copy_(weights[2])
            module.hh.bias.copy_(weights[3])


def as_linear(model: nn.Module, recurrent: bool = True, attention: bool = False) -> tuple[nn.Module, list[str]]:
    """A copy of `model` with its recurrent modules and/or its MultiheadAttentions rewritten with
    nn.Linear (same outputs), and the names of those rewritten."""
    model = copy.deepcopy(model)
    rewritten: list[str] = []
    kinds = (*(RECURRENT if recurrent else ()), *((nn.MultiheadAttention,) if attention else ()))
    for name, module in list(model.named_modules()):
        if not isinstance(module, kinds):
            continue
        try:
            if isinstance(module, nn.MultiheadAttention):
                new: nn.Module = LinearAttention(module)
            elif isinstance(module, nn.LSTMCell):
                new = LinearLSTMCell(module)
            elif isinstance(module, nn.GRUCell):
                new = LinearGRUCell(module)
            else:
                new = LinearRNN(module)
        except ValueError as e:  # a variant of the layer without a rewrite: the user's model, named
            raise EdgeqError(f"layer {name or type(module).__name__}: {e}; dynamic int8 for .pte and .onnx needs "
                             "it as a plain layer: leave those formats out with --formats") from None
        if not name:  # the model is one recurrent module
            return new.train(model.training), [type(module).__name__]
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        rewritten.append(name)
    return model.train(model.training), rewritten


class LinearAttention(nn.Module):
    """`nn.MultiheadAttention` with its in-projection as three `nn.Linear` (q, k, v): the module keeps
    that projection as a bare parameter inside a functional call, so torch.ao's quantize_dynamic
    leaves the whole attention float (and its out_proj is a NonDynamicallyQuantizableLinear). Same
    function: masks (boolean or additive, attn_mask and key_padding_mask), is_causal, batch_first,
    the averaged or per-head weights. Dropout is an eval-time no-op and is not kept."""

    # What nn.TransformerEncoder(Layer) reads to decide on its fused fast path, which needs the
    # original module: these send it down the plain path, the same function.
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("a MultiheadAttention with add_bias_kv or add_zero_attn has no Linear rewrite here")
        self.num_heads, self.batch_first, self.embed_dim = mha.num_heads, mha.batch_first, mha.embed_dim
        e = mha.embed_dim
        bias = mha.in_proj_bias is not None
        self.q = nn.Linear(e, e, bias=bias)
        self.k = nn.Linear(mha.kdim, e, bias=bias)
        self.v = nn.Linear(mha.vdim, e, bias=bias)
        self.out_proj = nn.Linear(e, e, bias=mha.out_proj.bias is not None)
        with torch.no_grad():
            weights = mha.in_proj_weight.chunk(3) if mha._qkv_same_embed_dim else \
                (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            for linear, weight, b in zip((self.q, self.k, self.v), weights,
                                         mha.in_proj_bias.chunk(3) if bias else (None,) * 3):
                linear.weight.copy_(weight)
                if b is not None:
                    linear.bias.copy_(b)
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True, is_causal: bool = False):
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length, source = query.shape[0], query.shape[1], key.shape[1]
        h, d = self.num_heads, self.embed_dim // self.num_heads
        q = self.q(query).view(n, length, h, d).transpose(1, 2)
        k = self.k(key).view(n, source, h, d).transpose(1, 2)
        v = self.v(value).view(n, source, h, d).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / d ** 0.5  # (n, h, length, source)
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, source, dtype=torch.bool, device=query.device).triu(1)
        for mask in (attn_mask, key_padding_mask):
            if mask is None:
                continue
            if mask is key_padding_mask:
                mask = mask.view(n, 1, 1, source)
            elif mask.dim() == 3:  # (n·heads, length, source)
                mask = mask.view(n, h, length, source)
            scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        weights = scores.softmax(-1)
        out = self.out_proj((weights @ v).transpose(1, 2).reshape(n, length, h * d))
        if unbatched:
            out, weights = out.squeeze(0), weights.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(-3) if average_attn_weights else weights
