"""Faster conv+BN pattern rewriting for PT2E QAT (torchao), with the same result.

prepare_qat_pt2e and convert_pt2e rewrite conv+BN by matching pattern graphs that torchao builds
with a full torch.export each, for conv1d, conv2d, conv_transpose1d and conv_transpose2d alike:
convert alone traces 96 patterns. Profiled on the built-in model (one QAT run of 8 steps, this
2-core host): 112 s, of which 97 s was tracing patterns and under 1 s training. Two changes:

- a conv kind the graph does not contain is skipped: none of its patterns can match, and the
  graph clean-ups its helper also runs are done by the helper of a kind that is present;
- each pattern is traced once per process: torchao rebuilds the same pattern (same code, closure
  and example shapes) on every call, and every train/eval switch of a QAT graph traces six more
  (dropout, batch norm); a copy of the first trace is handed out after that. The trace itself
  skips dynamo (`_without_dynamo`).

ExecuTorch's XNNPACK quantizer annotates conv+BN(+ReLU) for QAT the same way, with 12 pattern traces
per prepare_qat_pt2e (12.5 s of a 26 s QAT run of 8 steps): its transposed-conv patterns are skipped
on a graph without a transposed conv, and its traces are kept like torchao's.

Applied by `fast_pattern_rewrites()` around the torchao calls; torchao's own functions are put back
afterwards. Measured on the built-in model (prepare, two batches, convert; `edgeq.qat`): 118 s →
38 s, converted outputs bit-identical. Pinned torchao (pyproject.toml): names it lacks are left alone."""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

_CONV_OPS = {F.conv1d: (torch.ops.aten.conv1d,), F.conv2d: (torch.ops.aten.conv2d,),
             F.conv_transpose1d: (torch.ops.aten.conv_transpose1d,),
             F.conv_transpose2d: (torch.ops.aten.conv_transpose2d,)}
_traced: dict[Any, torch.fx.GraphModule] = {}


def _has_conv(graph: torch.fx.Graph, conv_fn: Callable) -> bool:
    packets = _CONV_OPS.get(conv_fn)
    if packets is None:  # a kind this module does not know: let torchao look
        return True
    return any(n.op == "call_function" and getattr(n.target, "overloadpacket", None) in packets for n in graph.nodes)


def _skip_absent(helper: Callable) -> Callable:
    def helper_if_present(m: torch.fx.GraphModule, conv_fn: Callable, *args: Any, **kwargs: Any):
        return helper(m, conv_fn, *args, **kwargs) if _has_conv(m.graph, conv_fn) else m
    return helper_if_present


def _skip_absent_transpose(annotate: Callable) -> Callable:
    def annotate_if_present(gm: torch.fx.GraphModule, *args: Any, is_conv_transpose: bool = False, **kwargs: Any):
        if is_conv_transpose and not any(_has_conv(gm.graph, fn) for fn in (F.conv_transpose1d, F.conv_transpose2d)):
            return []  # no transposed conv to annotate (the plain-conv calls clean the graph up as before)
        return annotate(gm, *args, is_conv_transpose=is_conv_transpose, **kwargs)
    return annotate_if_present


def _describe(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return "tensor", tuple(value.shape), value.dtype, value.device.type
    if isinstance(value, (tuple, list)):
        return tuple(_describe(v) for v in value)
    return value


def _trace_once(trace: Callable) -> Callable:
    def traced(pattern: Callable, example_inputs: tuple[Any, ...], is_cuda: bool = False, **kwargs: Any):
        fn = getattr(pattern, "fn", pattern)  # torchao wraps pattern functions in a WrapperModule
        try:
            cells = tuple(c.cell_contents for c in (fn.__closure__ or ()))
            key = (type(pattern), fn.__code__, cells, _describe(example_inputs), is_cuda,
                   tuple(sorted((k, _describe(v)) for k, v in kwargs.items())))
            hash(key)
        except (AttributeError, TypeError, ValueError):  # not a plain function of hashable parts
            return _without_dynamo(trace, pattern, example_inputs, is_cuda, **kwargs)
        if key not in _traced:
            _traced[key] = _without_dynamo(trace, pattern, example_inputs, is_cuda, **kwargs)
        return copy.deepcopy(_traced[key])  # callers edit the graphs they get
    return traced


def _without_dynamo(trace: Callable, *args: Any, **kwargs: Any) -> torch.fx.GraphModule:
    """torchao traces each pattern with torch.export(strict=True), through dynamo. The patterns are plain
    tensor functions: non-strict export gives the same graphs (the same code for all 45 patterns of a
    QAT run of the built-in model) in a third of the time (18.2 → 6.4 s)."""
    export = torch.export.export

    def non_strict(*a: Any, **k: Any) -> torch.export.ExportedProgram:
        return export(*a, **{**k, "strict": False})

    torch.export.export = non_strict
    try:
        return trace(*args, **kwargs)
    finally:
        torch.export.export = export


@contextlib.contextmanager
def fast_pattern_rewrites() -> Iterator[None]:
    try:
        from executorch.backends.xnnpack.quantizer import xnnpack_quantizer_utils as xnnpack
        from torchao.quantization.pt2e import qat_utils, utils
    except ImportError:
        yield
        return
    patches = [(qat_utils, "_fuse_conv_bn_qat_helper", _skip_absent), (qat_utils, "_fold_conv_bn_qat_helper", _skip_absent),
               (qat_utils, "_get_aten_graph_module_for_pattern", _trace_once),
               (utils, "_get_aten_graph_module_for_pattern", _trace_once),  # train/eval switches import it from here
               (xnnpack, "_get_aten_graph_module_for_pattern", _trace_once),
               (xnnpack, "_do_annotate_conv_bn", _skip_absent_transpose)]
    saved = [(module, name, getattr(module, name), wrap) for module, name, wrap in patches if hasattr(module, name)]
    try:
        for module, name, original, wrap in saved:
            setattr(module, name, wrap(original))
        yield
    finally:
        for module, name, original, _ in saved:
            setattr(module, name, original)
