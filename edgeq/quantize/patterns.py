"""Quantizer patterns that match what the runtimes fuse.

XNNPACKQuantizer (ExecuTorch 1.5.1) fuses conv/linear + ReLU but not + ReLU6: `torch.export` turns
`nn.ReLU6` / `F.relu6` into `aten.relu6`, which the stock annotators neither fuse nor share, and an
explicit `hardtanh(0, 6)` is shared with its input. Either way the producer's output is observed
*before* the clamp: a [0, 6] activation gets a range set by its negative tail and outliers above 6,
and loses most of its 256 levels (a [0, 6] signal seen as −4.5…14.9 uses ~80). On EfficientNet-Lite
with ImageNet weights that alone took the logit SQNR from 7.8 to 18.8 dB (../shared/design/ptq.md).

The fix is the one XNNPACK itself runs: conv → clamp is one kernel with an output range, so the
quantization point belongs after the clamp. `EdgeqXNNPACKQuantizer` runs the stock annotators, then
moves each producer's output spec onto the ReLU6 that is its only user, then shares specs as usual.

What else the runtimes fuse needs nothing more: the stock annotators already quantize add (+ReLU)
and share cat's observers. Hardswish has no quantized kernel in ExecuTorch's XNNPACK partitioner
(`HardswishConfig` is FP32 only), so the conv before it must keep its quantized output and the
hardswish runs in float between DQ and Q, which is what the stock quantizer does. The FX flow has
quantized hardswish; the x86 flows fuse conv + hardswish themselves (X86InductorQuantizer, and
onnxruntime for static .onnx).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.fx import GraphModule, Node

# ReLU6 as torch.export writes it; hardtanh counts only with the bounds (0, 6).
_RELU6 = (torch.ops.aten.relu6.default, torch.ops.aten.relu6_.default)
_HARDTANH = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)


def is_relu6(node: Node) -> bool:
    if node.op != "call_function":
        return False
    if node.target in _RELU6:
        return True
    if node.target in _HARDTANH:
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        high = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
        return (low, high) == (0.0, 6.0) or (low, high) == (0, 6)
    return False


def observe_after_relu6(model: GraphModule) -> int:
    """Move the output quantization spec of every annotated producer whose only user is a ReLU6 onto
    that ReLU6. Returns how many were moved. Run after the stock annotators, before sharing."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec

    key = "quantization_annotation"
    moved = 0
    for node in model.graph.nodes:
        if not is_relu6(node) or not isinstance(node.args[0], Node):
            continue
        producer = node.args[0]
        annotation = producer.meta.get(key)
        spec = annotation.output_qspec if annotation is not None else None
        # Only a spec of its own (not one shared with another node) and only when nothing else reads
        # the unclamped value: it is not quantized any more.
        if not isinstance(spec, QuantizationSpec) or len(producer.users) != 1 or node.meta.get(key) is not None:
            continue
        annotation.output_qspec = None
        node.meta[key] = QuantizationAnnotation(input_qspec_map={}, output_qspec=spec, _annotated=True)
        moved += 1
    return moved


_UNSQUEEZES = (torch.ops.aten.unsqueeze.default, torch.ops.aten.unsqueeze_copy.default)


def share_through_unsqueeze(model: GraphModule) -> int:
    """Give every unsqueeze of an int8 tensor its input's quantization parameters, as the stock
    annotators do for squeeze, view and the other shape ops (propagate_annotation's list lacks
    unsqueeze). Otherwise the unsqueeze sits between a DequantizeLinear of one grid and its consumer's
    QuantizeLinear of another, XNNPACK's partitioner takes it as an int8 reshape anyway, and the
    program fails to load (ExecuTorch 1.5.1: error 0x1; seen on Silero VAD, whose LSTM state goes
    through a ReLU and an unsqueeze into a Conv1d). Run after propagate_annotation. Returns how many."""
    return _share_input_grid(model, _UNSQUEEZES, lambda node: True)


_PADS = (torch.ops.aten.pad.default, torch.ops.aten.constant_pad_nd.default)


def quantize_pads_before_float(model: GraphModule, is_quantized: Callable[[Node], bool]) -> int:
    """Give a zero pad that feeds a float conv (a float layer of a plan, edgeq.quantize.plan) its
    input's quantization spec. XNNPACK's InsertPadQDQPass (ExecuTorch 1.5.1) adds a Q/DQ after every
    pad that reads a dequantized tensor, assuming its consumer is int8: a float conv after it then
    fails to lower ("Weight and Input should both be quantized"). A pad quantized here leaves a Q
    after itself and the pass alone. Returns how many pads were annotated."""
    return _share_input_grid(model, _PADS, lambda node: not all(is_quantized(u) for u in node.users))


def _share_input_grid(model: GraphModule, targets: tuple, wanted: Callable[[Node], bool]) -> int:
    """Annotate each not yet annotated call of `targets` whose input is annotated int8, and that is
    `wanted`, to share that input's quantization parameters in and out. Returns how many."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    key = "quantization_annotation"
    done = 0
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in targets or node.meta.get(key) is not None:
            continue
        producer = node.args[0]
        annotation = producer.meta.get(key) if isinstance(producer, Node) else None
        if annotation is None or annotation.output_qspec is None or not wanted(node):
            continue
        shared = SharedQuantizationSpec(producer)
        node.meta[key] = QuantizationAnnotation(input_qspec_map={producer: shared}, output_qspec=shared,
                                                _annotated=True)
        done += 1
    return done


def xnnpack_quantizer(per_channel: bool, qat: bool, calibration: tuple[str, float] | None = None):
    """The XNNPACK quantizer with the ReLU6 pattern (see the module docstring). `calibration`:
    (method, percentile) for static quantization's activation observers (edgeq.quantize.observers).
    A filter function (set_filter_function) leaves layers in float; see quantize_pads_before_float."""
    import dataclasses

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                          get_symmetric_quantization_config)
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils import propagate_annotation
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    from edgeq.quantize.observers import activation_observer

    class EdgeqXNNPACKQuantizer(XNNPACKQuantizer):
        def annotate(self, model: GraphModule) -> GraphModule:
            if not any("batch_norm" in str(n.target) for n in model.graph.nodes):
                # BN folded already (edgeq.quantize.fold): matching the conv+BN patterns would cost
                # a dozen torch.export traces of pattern graphs, most of a small model's prepare.
                self.SUPPORTED_PATTERNS = [p for p in self.SUPPORTED_PATTERNS if "_bn" not in p.name]
            model = self._annotate_for_quantization_config(model)
            observe_after_relu6(model)
            propagate_annotation(model)
            if self.filter_fn is not None:
                quantize_pads_before_float(model, self.filter_fn)
            return model

    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_qat=qat)
    if calibration is not None:
        spec = config.input_activation
        spec = dataclasses.replace(spec, observer_or_fake_quant_ctr=activation_observer(
            HistogramObserver, MinMaxObserver, *calibration, **spec.observer_or_fake_quant_ctr.p.keywords))
        config = dataclasses.replace(config, input_activation=spec, output_activation=spec)
    return EdgeqXNNPACKQuantizer().set_global(config)


def is_clamp_06(graph: GraphModule, node: Node) -> bool:
    """A ReLU6 (or hardtanh(0, 6)) of a torch.fx symbolic trace, module or functional."""
    if node.op == "call_module":
        module = graph.get_submodule(str(node.target))
        return isinstance(module, torch.nn.ReLU6) or \
            (isinstance(module, torch.nn.Hardtanh) and (module.min_val, module.max_val) == (0.0, 6.0))
    if node.op != "call_function":
        return False
    if node.target is torch.nn.functional.relu6:
        return True
    return node.target is torch.nn.functional.hardtanh and tuple(node.args[1:3]) == (0.0, 6.0)


class _ObservesClamped:
    """Mixed into an FX observer: it records what the ReLU6 after it will output."""

    edgeq_clamp: tuple[float, float]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        super().forward(x.detach().clamp(*self.edgeq_clamp))  # type: ignore[misc]
        return x


def fx_observe_after_relu6(model: GraphModule) -> int:
    """The FX flow's equivalent, for static quantization: FX shares one observer between a producer
    and the ReLU6 after it, and feeds it the unclamped values. Make that observer record the
    clamped ones: the producer's quantized output then saturates at 0 and 6 itself, which is the
    ReLU6, with all 256 levels on [0, 6]. Returns how many observers now do."""
    from torch.ao.quantization.observer import ObserverBase

    modules = dict(model.named_modules(remove_duplicate=False))
    changed = 0
    for node in model.graph.nodes:
        clamp = is_clamp_06(model, node)
        observer_node = node.args[0] if clamp and node.args else None
        observer = modules.get(observer_node.target) if isinstance(observer_node, Node) and \
            observer_node.op == "call_module" else None
        if not isinstance(observer, ObserverBase) or len(observer_node.users) != 1 or \
                isinstance(observer, _ObservesClamped):
            continue
        producer = observer_node.args[0]
        if not isinstance(producer, Node) or len(producer.users) != 1:
            continue
        observer.__class__ = type(f"Clamped{type(observer).__name__}", (_ObservesClamped, type(observer)), {})
        observer.edgeq_clamp = (0.0, 6.0)
        changed += 1
    return changed


def fx_backend_config():  # -> torch.ao BackendConfig
    """torch.ao's native backend config, plus F.pad as an op whose output shares its input's
    observer (as max-pool and ReLU do). Stock FX gives F.pad's output an observer of its own: every
    TF-"SAME" padded conv then rounds its input twice, on two scales. With one observer, the
    dequantize → pad → quantize that FX still writes around the pad is exact."""
    import torch.ao.quantization.backend_config.utils  # noqa: F401 - BackendConfig needs it loaded
    from torch.ao.quantization.backend_config import (BackendPatternConfig, ObservationType,
                                                      get_native_backend_config)

    config = get_native_backend_config()
    dtypes = next(c.dtype_configs for c in config.configs if c.pattern is torch.nn.functional.max_pool2d)
    return config.set_backend_pattern_config(
        BackendPatternConfig(torch.nn.functional.pad)
        .set_observation_type(ObservationType.OUTPUT_SHARE_OBSERVER_WITH_INPUT)
        .set_dtype_configs(dtypes))
