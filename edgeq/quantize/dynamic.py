"""Dynamic quantization: int8 weights, activations quantized per row at run time (no calibration).
The method of LSTMs, GRUs and Transformers, whose activation ranges vary from input to input.

One model, a flow per format (measured on the pinned stack, see ../shared/design/dynamic.md):
- .pte: PT2E with XNNPACKQuantizer(is_dynamic, per-channel) on the model with its recurrent layers
  written as nn.Linear (edgeq.quantize.recurrent); XNNPACK's dynamically quantized fully-connected
  kernel runs them. Per-tensor weights are refused: XNNPACK leaves those linears to portable
  kernels, 17-33× slower, without a word.
- .onnx: onnxruntime's quantize_dynamic on the float export (edgeq.export.onnx.export_ort_dynamic).
- .ptl: torch.ao's quantize_dynamic, whose nnqd.Linear/LSTM/GRU/LSTMCell/GRUCell modules the lite
  interpreter runs; each nn.MultiheadAttention first gets its in-projection as Linears.
Embedding tables become int8 storage in every flow (edgeq.quantize.embedding). The layers of a
float plan stay float in every flow.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.ao.nn import quantized as nnq

from edgeq.errors import EdgeqError
from edgeq.quantize import embedding
from edgeq.quantize.recurrent import RECURRENT, as_linear
from edgeq.runner import quantized_engine

# What quantize_dynamic makes int8 for .ptl (module types; the lite interpreter has their kernels).
PTL_DYNAMIC = (nn.Linear, nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell)


def quantize_dynamic_pt2e(model: nn.Module, example: tuple[torch.Tensor, ...], per_channel: bool,
                          float_layers: tuple[str, ...] = ()) -> nn.Module:
    """The PT2E dynamic int8 graph of `model` for XNNPACK (the .pte's), at the example's shapes."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                          get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgeq.quantize import export_graph, quiet
    from edgeq.quantize.plan import xnnpack_filter

    if not per_channel:
        raise EdgeqError("dynamic int8 for .pte needs per-channel weights (XNNPACK runs per-tensor dynamic "
                         "linears outside its delegate, 17-33× slower): drop --per-tensor")
    linear, _ = as_linear(model.eval())
    embedding.for_pte(linear, float_layers)
    program = export_graph(linear, example)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    if float_layers:
        quantizer.set_filter_function(xnnpack_filter(frozenset(float_linears(linear, float_layers))))
    with quiet():
        prepared = prepare_pt2e(program.module(), quantizer)
        prepared(*example)  # dynamic: placeholder observers only, one call fixes nothing but the graph
        return convert_pt2e(prepared)


def quantize_dynamic_eager(model: nn.Module, backend: str, per_channel: bool,
                           float_layers: tuple[str, ...] = (), split: bool = False) -> nn.Module:
    """torch.ao's dynamic quantization for the lite interpreter (.ptl), weights packed for `backend`;
    `split`: recurrent modules as Linears (layer by layer) even where the plan keeps none float."""
    from torch.ao.quantization import quantize_dynamic
    from torch.ao.quantization.qconfig import (default_dynamic_qconfig, float_qparams_weight_only_qconfig,
                                               per_channel_dynamic_qconfig)

    from edgeq.quantize import quiet

    linear_qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    spec: dict = {kind: linear_qconfig if kind is nn.Linear else default_dynamic_qconfig for kind in PTL_DYNAMIC}
    # Attention's in-projection as Linears, so that it is int8 too (quantize_dynamic skips
    # nn.MultiheadAttention); recurrent modules too when the plan keeps one of their layers float
    # (nnqd.LSTM is int8 as a whole).
    split = split or any(name not in dict(model.named_modules()) for name in float_layers)  # e.g. lstm.layers.0
    model, _ = as_linear(model.eval(), recurrent=split, attention=True)
    modules = dict(model.named_modules())
    whole = [name for name in float_layers if isinstance(modules.get(name), RECURRENT)]
    for name in [*whole, *float_linears(model, tuple(n for n in float_layers if n not in whole))]:
        spec[name] = None
    spec.update({name: float_qparams_weight_only_qconfig for name in embedding.tables(model, float_layers)})
    with quiet(), quantized_engine(backend):
        return quantize_dynamic(model, spec, dtype=torch.qint8)


def float_linears(model: nn.Module, float_layers: tuple[str, ...]) -> list[str]:
    """The nn.Linear modules a plan keeps float: a plan names a layer (a Linear) or a unit that holds
    several (a recurrent layer `lstm.layers.0`, a rewritten cell, attention). A name that reaches no
    Linear is a plan for another model."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen: list[str] = []
    unknown = []
    modules = dict(model.named_modules())
    for unit in float_layers:
        inside = [name for name in linears if name == unit or name.startswith(unit + ".")]
        chosen += inside
        if not inside and not isinstance(modules.get(unit), nn.Embedding):  # a table: edgeq.quantize.embedding
            unknown.append(unit)
    if unknown:
        sample = ", ".join(linears[:4]) + (", …" if len(linears) > 4 else "")
        raise EdgeqError(f"the plan names {unknown[0]!r}, which holds no linear layer of this model (its linear "
                         f"layers: {sample or 'none'}): use a plan made for this model")
    return chosen


def int8_layers(model: nn.Module) -> list[str]:
    """The modules of an eager int8 model that became int8 (an embedding: int8 storage): dynamic, or
    static inside a QuantWrapper (edgeq.quantize.static_tensors), named as the layer it wraps."""
    from torch.ao.quantization import QuantWrapper

    wrappers = {name for name, m in model.named_modules() if isinstance(m, QuantWrapper)}
    found = []
    for name, m in model.named_modules():
        parent = name.rpartition(".")[0]
        if isinstance(m, (nnq.Quantize, nnq.DeQuantize)) or not type(m).__module__.startswith("torch.ao.nn.quantized") \
                or any(name.startswith(f + ".") for f in found):  # a layer's packed weights
            continue
        found.append(parent if parent in wrappers and name.endswith(".module") else name)
    return found
