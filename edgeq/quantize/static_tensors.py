"""Static int8 for models of tensors (example_inputs()), calibrated on an .npz, and hybrid: the
layers a recipe names (`dynamic_layers`) quantized dynamically inside the static model.

The model is first written with its recurrent layers and attention as nn.Linear
(edgeq.quantize.recurrent), so every gate's and projection's product is a layer each flow quantizes,
and a stacked LSTM/GRU splits by layer. Embedding tables get int8 storage, one scale per row, as
in dynamic int8 (edgeq.quantize.embedding). A flow per format, as for dynamic int8:
- .pte: PT2E with edgeq's XNNPACK quantizer, linears and convs (with their ReLUs) int8 with calibrated
  ranges, the add/mul/cat between them float; a hybrid layer gets the dynamic config by module name.
- .onnx: onnxruntime's quantize_static on the float export (QDQ); hybrid layers then get its
  quantize_dynamic (edgeq.export.onnx.export_ort_quantized). The PT2E graph cannot go to ONNX here:
  the exporter has no function for embedding_byte, nor for a dynamic layer's choose_qparams.
- .ptl: torch.ao's eager flow, each static Linear/Conv wrapped in QuantStub/DeQuantStub (so the lite
  interpreter runs quantized::linear between quantize and dequantize), hybrid layers as nnqd.Linear.
  FX graph mode, the image models' .ptl flow, cannot trace an unrolled recurrent layer (its loop
  runs over the input's length).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from edgeq.config import QuantRecipe
from edgeq.errors import EdgeqError
from edgeq.quantize import Example, calibrate, export_graph, pt2e_quantizer, quiet, static_qconfig
from edgeq.quantize import embedding
from edgeq.quantize.dynamic import float_linears
from edgeq.quantize.patterns import share_through_unsqueeze
from edgeq.quantize.recurrent import as_linear
from edgeq.runner import quantized_engine

Batches = Callable[[], Iterator[tuple[np.ndarray, ...]]]  # calibration: every input of a batch, batch first
CONVS = (nn.Conv1d, nn.Conv2d)
ELEMENTWISE = ("add", "add_relu", "mul", "mul_relu", "cat")  # XNNPACKQuantizer patterns static_tensors leaves float


def weighted_layers(model: nn.Module, units: tuple[str, ...]) -> list[str]:
    """The Linear and Conv modules inside the named units (a unit that holds none is refused, see
    float_linears)."""
    modules = dict(model.named_modules())
    convs = [u for u in units if isinstance(modules.get(u), CONVS)]
    return convs + float_linears(model, tuple(u for u in units if u not in convs))


def quantize_pt2e(model: nn.Module, example: Example, recipe: QuantRecipe, calibration: Batches) -> nn.Module:
    """The .pte's int8 graph: PT2E static (XNNPACK), hybrid layers dynamic, int8 embedding tables."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgeq.quantize.qat_patterns import fast_pattern_rewrites

    if not recipe.per_channel and recipe.dynamic_layers:
        raise EdgeqError("hybrid int8 for .pte needs per-channel weights (XNNPACK runs per-tensor dynamic linears "
                         "outside its delegate, 17-33× slower): drop --per-tensor")
    linear, _ = as_linear(model.eval(), recurrent=True, attention=True)
    embedding.for_pte(linear, recipe.float_layers)
    dynamic = weighted_layers(linear, recipe.dynamic_layers)
    quantizer = pt2e_quantizer("xnnpack", replace(recipe, float_layers=tuple(
        weighted_layers(linear, recipe.float_layers))))
    # The products, as in .onnx and .ptl, not the elementwise ops between them: an add's calibrated range
    # takes in a Transformer's additive attention mask (-10000), and one int8 grid for that and the
    # scores wrecked all-MiniLM-L6-v2 (its PT2E graph gave -0.6 dB in torch; products only, 10.4 dB).
    quantizer.SUPPORTED_PATTERNS = [p for p in quantizer.SUPPORTED_PATTERNS if p.name not in ELEMENTWISE]
    for name in dynamic:
        quantizer.set_module_name(name, get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    annotate = quantizer.annotate

    def annotate_and_share(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        model = annotate(model)
        share_through_unsqueeze(model)
        return model

    quantizer.annotate = annotate_and_share
    graph = export_graph(linear, example, dynamic_batch=True).module()
    with quiet(), fast_pattern_rewrites():
        prepared = prepare_pt2e(graph, quantizer)
        calibrate(prepared, calibration, "PT2E XNNPACK")
        return convert_pt2e(prepared)


def quantize_eager(model: nn.Module, recipe: QuantRecipe, calibration: Batches) -> nn.Module:
    """The .ptl's int8 model: torch.ao eager static per Linear/Conv (QuantWrapper), hybrid layers
    dynamic, int8 embedding tables; weights packed for the recipe's backend."""
    from torch.ao.quantization import QuantWrapper, convert, prepare, quantize_dynamic
    from torch.ao.quantization.qconfig import (default_dynamic_qconfig, float_qparams_weight_only_qconfig,
                                               per_channel_dynamic_qconfig)

    backend = recipe.backend
    model, _ = as_linear(model.eval(), recurrent=True, attention=True)
    keep = set(weighted_layers(model, recipe.float_layers))
    dynamic = weighted_layers(model, recipe.dynamic_layers)
    static = [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, *CONVS))
              and name not in keep and name not in dynamic]
    with quiet(), quantized_engine(backend):
        qconfig = static_qconfig(recipe)
        for name in static:
            parent, _, child = name.rpartition(".")
            wrapper = QuantWrapper(model.get_submodule(name))
            wrapper.qconfig = qconfig
            setattr(model.get_submodule(parent) if parent else model, child, wrapper)
        prepare(model, inplace=True)
        calibrate(model, calibration, f"torch.ao eager, {backend}")
        convert(model, inplace=True)
        spec: dict = {name: per_channel_dynamic_qconfig if recipe.per_channel else default_dynamic_qconfig
                      for name in dynamic}
        spec.update({name: float_qparams_weight_only_qconfig for name in embedding.tables(model, recipe.float_layers)})
        return quantize_dynamic(model, spec, dtype=torch.qint8) if spec else model
