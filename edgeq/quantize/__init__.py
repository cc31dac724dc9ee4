"""Quantization: prepare → (calibrate | train, see edgeq.qat) → convert, to int8.

Two flows, because the formats need different graphs:
- PT2E (torchao) on a `torch.export` graph → feeds the .pte and .onnx exporters.
- FX graph mode (torch.ao, deprecated but the only producer of TorchScript quantized
  modules) → feeds the .ptl exporter.
The backend picks the config: "qnnpack" → XNNPACKQuantizer for PT2E (XNNPACK is QNNPACK's
successor on ARM) and the qnnpack qconfig for FX; "x86" → the x86 quantizer for .onnx and the
x86 qconfig for FX (.pte keeps the XNNPACK quantizer: see quantizer_for).

The package, a module per concern:
- patterns.py: quantization points where the runtimes fuse (ReLU6 after the clamp; F.pad in FX).
- observers.py: calibration methods (histogram, min-max, percentile) and the one weight grid.
- fold.py, equalize.py, adaround.py, bias_correction.py, weights.py: the float model's weights
  made ready for int8 before static quantization (BN fold, equalization, AdaRound, bias correction).
- numerics.py: per-layer SQNR of the int8 model against the float model.
- plan.py, budget.py: the layers an accuracy budget leaves in float, found by a search, applied to every flow.
"""

from __future__ import annotations

import contextlib
import copy
import re
import warnings
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.fx import GraphModule

from edgeq.errors import EdgeqError, first_line
from edgeq.graph import export_failure
from edgeq.runner import quantized_engine
from edgeq.tensors import Example
from edgeq.config import QuantRecipe
from edgeq.quantize.fold import fold_batchnorm, trace
from edgeq.quantize.observers import WEIGHT_QMAX, WEIGHT_QMIN, activation_observer
from edgeq.quantize.qat_patterns import fast_pattern_rewrites

Calibration = Callable[[], Iterator[np.ndarray]]  # yields preprocessed batches, N×C×H×W float32


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the deprecation chatter of torch.ao / TorchScript for the block, not globally."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield




def as_example(spec: tuple[int, ...] | Example) -> Example:
    """The example inputs themselves, or, for an image model, its input shape: one float tensor."""
    if all(isinstance(d, int) for d in spec):
        return Example((torch.zeros(tuple(spec)),))
    return spec if isinstance(spec, Example) else Example(spec)


def export_graph(model: nn.Module, spec: tuple[int, ...] | Example, dynamic_batch: bool = False) -> torch.export.ExportedProgram:
    """torch.export the model at its example inputs (or input shape), their dynamic length (if declared)
    kept dynamic; with `dynamic_batch` the first axis of every input is one dynamic batch dimension,
    so calibration and checks can batch."""
    example = as_example(spec)
    batch = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        # batch 2: a size-1 axis would be specialised
        example = Example(tuple(torch.cat([t, t]) for t in example), example.lengths)
    dynamic = example.dynamic_shapes(batch)
    try:
        with quiet():
            return torch.export.export(model, tuple(example), dynamic_shapes=dynamic)  # a plain tuple for pytree
    except Exception as e:  # noqa: BLE001 - torch.export raises many types; all mean "cannot trace"
        if example.max_length and ("Constraints violated" in str(e) or "data-dependent" in str(e)):
            fixed = re.search(r"specialized it to be a constant \((\d+)\)", str(e))
            why = f"a step of the model fixes it at {fixed[1]}" if fixed else first_line(e)
            raise EdgeqError(f"torch.export cannot keep the model's dynamic length variable from 1 to {example.max_length} "
                             f"({why}): write the model so no step fixes the length (a reshape to a constant, "
                             "a loop over it), or drop dynamic_axes") from None
        raise export_failure("torch.export", e, None) from None


def quantizer_for(fmt: str, backend: str, method: str = "static", tensors: bool = False) -> str:
    """Which quantization flow feeds a format: "fx" for .ptl, else a PT2E quantizer, or "ort".
    XNNPACK is ExecuTorch's CPU delegate on ARM and x86 alike, and it cannot compile the x86
    quantizer's patterns (XNNCompiler fails at load), so .pte always uses the XNNPACK quantizer.
    .onnx follows the backend; for x86 static quantization it is onnxruntime's own quantize_static
    (uint8 activations, QDQ): onnxruntime fuses that graph into QLinearConv/QLinearAdd throughout,
    where the PT2E x86 graph (conv+add fused for inductor, int8 ReLU6 clips) leaves float convs and
    layout transposes. On MobileNetV2 on an AVX-512 VNNI host: 1.8 ms against 2.8 ms, fp32 4.6 ms
    (bench/). QAT has no onnxruntime flow: it stays on PT2E x86. Dynamic int8 (edgeq.quantize.dynamic):
    PT2E XNNPACK for .pte, onnxruntime's quantize_dynamic for .onnx, torch.ao's eager modules for .ptl;
    static int8 of a model of tensors the same (edgeq.quantize.static_tensors)."""
    if method == "dynamic" or tensors:
        return {"pte": "xnnpack", "onnx": "ort", "ptl": "eager"}[fmt]
    if fmt == "ptl":
        return "fx"
    if fmt == "pte" or backend == "qnnpack":
        return "xnnpack"
    return "ort" if method == "static" else "x86"


def pt2e_quantizer(name: str, recipe: QuantRecipe, qat: bool = False):  # -> torchao Quantizer
    per_channel = recipe.per_channel
    if name == "xnnpack":
        from edgeq.quantize.patterns import xnnpack_quantizer

        quantizer = xnnpack_quantizer(per_channel, qat, None if qat else (recipe.calibration, recipe.percentile))
        if recipe.float_layers:
            from edgeq.quantize.plan import xnnpack_filter

            quantizer.set_filter_function(xnnpack_filter(frozenset(recipe.float_layers)))
        return quantizer
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    if not per_channel:
        raise EdgeqError("the x86 quantizer only has per-channel weights: drop --per-tensor or use --backend qnnpack")
    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=qat))


def prepare(flow: str, model: nn.Module, input_shape: tuple[int, ...], recipe: QuantRecipe,
            qat: bool = False) -> nn.Module:
    """Insert observers (static) or fake-quantize modules (QAT) for a flow: "fx", or a PT2E quantizer
    name. The model itself is not changed. PT2E graphs keep a dynamic batch dimension."""
    if flow == "fx":
        return _prepare_fx(model, input_shape, recipe, qat)
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

    # torch.export shares the model's parameter tensors: QAT would train the float model in place.
    ep = export_graph(copy.deepcopy(model), input_shape, dynamic_batch=True)
    graph = ep.module()
    _split_reused_module_partitions(graph)
    config = pt2e_quantizer(flow, recipe, qat)
    try:
        with quiet(), fast_pattern_rewrites():
            return (prepare_qat_pt2e if qat else prepare_pt2e)(graph, config)
    except Exception as e:  # noqa: BLE001
        raise export_failure(f"the {flow} PT2E quantizer", e, ep) from None


def convert(flow: str, prepared: nn.Module, recipe: QuantRecipe) -> nn.Module:
    """Observers/fake-quant → real quantized ops (PT2E: Q/DQ graph; FX: the backend's quantized modules).
    A QAT-prepared PT2E graph must be in eval mode first (edgeq.qat.set_mode)."""
    with quiet():
        if flow == "fx":
            from torch.ao.quantization.quantize_fx import convert_fx

            from edgeq.quantize.patterns import fx_backend_config

            with quantized_engine(recipe.backend):  # weights are packed for the engine set now
                converted = convert_fx(prepared.eval(), backend_config=fx_backend_config())
            if recipe.backend == "qnnpack":
                contiguous_clamps(converted)
            return converted
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        with fast_pattern_rewrites():
            return convert_pt2e(prepared)


def quantize_static(flow: str, model: nn.Module, input_shape: tuple[int, ...], recipe: QuantRecipe,
                    calibration: Calibration) -> nn.Module:
    """Post-training static quantization: prepare → calibrate on representative batches → convert."""
    prepared = prepare(flow, model, input_shape, recipe)
    calibrate(prepared, calibration, flow)
    return convert(flow, prepared, recipe)


def calibrate(prepared: nn.Module, calibration: Callable[[], Iterator[np.ndarray | tuple[np.ndarray, ...]]],
              label: str) -> None:
    """Run the calibration batches (an image batch, or every input of a batch of tensors) through a
    prepared model, whose observers record their ranges. A failure here is the user's model on the
    user's data."""
    with torch.no_grad():
        for batch in calibration():
            try:
                prepared(*map(torch.from_numpy, batch if isinstance(batch, tuple) else (batch,)))
            except Exception as e:  # noqa: BLE001 - the user's model, on the user's data
                raise EdgeqError(f"the model failed on a batch of --calib-data while calibrating ({label}; "
                                 f"{type(e).__name__}: {first_line(e)}): fix the model or the data") from None


def static_qconfig(recipe: QuantRecipe) -> Any:
    """torch.ao's static QConfig for the recipe: the backend's default, per-channel weights unless the
    recipe says per-tensor, weights rounded as every format rounds them (observers.py), activations
    observed by the recipe's calibration method."""
    from torch.ao.quantization import QConfig, get_default_qconfig
    from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver, default_per_channel_weight_observer

    default = get_default_qconfig(recipe.backend)
    weight = default_per_channel_weight_observer if recipe.per_channel else default.weight
    return QConfig(activation=activation_observer(HistogramObserver, MinMaxObserver, recipe.calibration,
                                                  recipe.percentile, **default.activation.p.keywords),
                   weight=weight.with_args(quant_min=WEIGHT_QMIN, quant_max=WEIGHT_QMAX))


def _prepare_fx(model: nn.Module, input_shape: tuple[int, ...], recipe: QuantRecipe, qat: bool) -> nn.Module:
    """FX graph mode with the backend's (QAT) qconfig, per-channel weights by default."""
    from torch.ao.quantization import (QConfig, get_default_qat_qconfig, get_default_qat_qconfig_mapping,
                                       get_default_qconfig_mapping)
    from torch.ao.quantization.fake_quantize import default_per_channel_weight_fake_quant
    from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

    from edgeq.quantize.patterns import fx_backend_config

    if not recipe.per_channel and recipe.backend == "x86":
        raise EdgeqError("the x86 qconfig only has per-channel weights: drop --per-tensor or use --backend qnnpack")
    with quiet():
        if qat:
            qconfig = get_default_qat_qconfig(recipe.backend)
            if recipe.per_channel:  # qnnpack's default is per-tensor; its kernels also take per-channel
                qconfig = QConfig(activation=qconfig.activation, weight=default_per_channel_weight_fake_quant)
        else:
            qconfig = static_qconfig(recipe)
        # The backend's mapping keeps its fixed-qparams configs (sigmoid, hardsigmoid, …).
        mapping = (get_default_qat_qconfig_mapping if qat else get_default_qconfig_mapping)(recipe.backend)
        mapping = mapping.set_global(qconfig)
        model = copy.deepcopy(model).train(qat)
        try:
            traced = trace(model)
            if not qat:  # FX fuses conv *modules* with BN, not functional convs (see fold.py)
                fold_batchnorm(traced)
            if recipe.float_layers:
                from edgeq.quantize.plan import fx_float_layers

                mapping = fx_float_layers(traced, mapping, frozenset(recipe.float_layers))
            prepared = (prepare_qat_fx if qat else prepare_fx)(traced, mapping, (torch.zeros(input_shape),),
                                                               backend_config=fx_backend_config())
        except Exception as e:  # noqa: BLE001 - symbolic tracing fails on data-dependent Python code
            raise export_failure("FX quantization (symbolic tracing)", e, None) from None
    if not qat:
        from edgeq.quantize.patterns import fx_observe_after_relu6

        fx_observe_after_relu6(prepared)
    return prepared


_CLAMP_FUNCTIONS = (F.relu6, F.hardtanh, F.hardtanh_, torch.clamp, torch.clamp_)
_CLAMP_MODULES = (nn.ReLU6, nn.Hardtanh)  # the quantized ReLU6/Hardtanh modules subclass these


def contiguous_clamps(graph: GraphModule) -> int:
    """Feed every ReLU6/Hardtanh/clamp of a converted FX graph a contiguous tensor. QNNPACK's
    quantized clamp returns wrong values on channels-last tensors (seen in torch 2.14.1: errors of
    the full 0..6 range), and its quantized convolutions output channels-last. Modules and
    functional calls alike: TF ports of EfficientNet-Lite call F.relu6, and without this their .ptl
    agreed with the float model on 0% of images. The copy costs little next to the conv."""
    modules = dict(graph.named_modules())
    fixed = 0
    for node in list(graph.graph.nodes):
        is_clamp = (node.op == "call_function" and node.target in _CLAMP_FUNCTIONS) or \
            (node.op == "call_method" and node.target in ("clamp", "clamp_")) or \
            (node.op == "call_module" and isinstance(modules.get(node.target), _CLAMP_MODULES))
        if not is_clamp or not isinstance(node.args[0], torch.fx.Node):
            continue
        with graph.graph.inserting_before(node):
            contiguous = graph.graph.call_method("contiguous", (node.args[0],))
        node.replace_input_with(node.args[0], contiguous)
        fixed += 1
    graph.recompile()
    return fixed


def _split_reused_module_partitions(graph: GraphModule) -> None:
    """Give each call of a reused ReLU module (torchvision's ResNet calls one ReLU twice per
    block) its own source partition. Partitions are keyed by module path, so both calls land in
    one partition with two outputs, and the x86 quantizer's pattern matcher fails ("Input
    partition has more than one output node")."""
    calls: dict[str, int] = {}
    for node in graph.graph.nodes:
        if node.op != "call_function" or node.target not in (torch.ops.aten.relu.default, torch.ops.aten.relu_.default):
            continue
        stack = node.meta.get("nn_module_stack")
        if not stack or node.meta.get("source_fn_stack"):
            continue
        path, cls = list(stack.values())[-1]
        if cls is nn.ReLU or cls == "torch.nn.modules.activation.ReLU":
            calls[path] = calls.get(path, 0) + 1
            node.meta["source_fn_stack"] = [(f"{path}#{calls[path]}", nn.ReLU)]
