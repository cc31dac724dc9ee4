"""Faster conv+BN pattern rewriting for PT2E QAT (torchao), with the same result.

prepare_qat_pt2e and convert_pt2e rewrite conv+BN by matching pattern graphs that torchao builds
with a full torch.export each, for conv1d, conv2d, conv_transpose1d and conv_transpose2d alike:
convert alone traces 96 patterns. Profiled on the built-in model (one QAT run of 8 steps, this
2-core host): 112 s, of which 97 s was tracing patterns and under 1 s training. Two changes:

- a conv kind the graph does not contain is skipped: none of its patterns can match, and the
  graph clean-ups its helper also runs are done by the helper of a kind that is present;
- each pattern is traced once per process: torchao rebuilds the same pattern (same code, closure
  and example shapes) on every call, and every train/eval switch of a QAT graph traces six more
  (dropout, batch norm); a copy of the first trace is handed out after that.

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
            return trace(pattern, example_inputs, is_cuda, **kwargs)
        if key not in _traced:
            _traced[key] = trace(pattern, example_inputs, is_cuda, **kwargs)
        return copy.deepcopy(_traced[key])  # callers edit the graphs they get
    return traced


@contextlib.contextmanager
def fast_pattern_rewrites() -> Iterator[None]:
    try:
        from torchao.quantization.pt2e import qat_utils, utils
    except ImportError:
        yield
        return
    patches = [(qat_utils, "_fuse_conv_bn_qat_helper", _skip_absent), (qat_utils, "_fold_conv_bn_qat_helper", _skip_absent),
               (qat_utils, "_get_aten_graph_module_for_pattern", _trace_once),
               (utils, "_get_aten_graph_module_for_pattern", _trace_once)]  # train/eval switches import it from here
    saved = [(module, name, getattr(module, name), wrap) for module, name, wrap in patches if hasattr(module, name)]
    try:
        for module, name, original, wrap in saved:
            setattr(module, name, wrap(original))
        yield
    finally:
        for module, name, original, _ in saved:
            setattr(module, name, original)
