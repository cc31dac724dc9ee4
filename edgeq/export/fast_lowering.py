"""Faster lowering through ExecuTorch and the ONNX exporter, with the same bytes out.

Profiled on the built-in model (one .pte lowering, this 2-core host): fp32 42 s, int8 38 s, of
which two costs are not work on the model:

- XNNPACK's passes ConvertToUpsampleBilinear2d and ConvertToSDPAPass match pattern graphs that they
  build on first use with a torch.export and a to_edge each (6 programs, ~14 s per process, paid by
  every export child). A pattern only matches a graph holding each of its ops, so the pass is
  skipped on a graph without its anchor ops (`skip_unmatchable_patterns`).
- torch.fx provenance: every pass that rebuilds a node records where it came from
  (`meta["from_node"]`, a NodeSource) and deep-copies the whole history chain of the node it came
  from, so the cost grows with each pass (~1.4 M deepcopy calls in one int8 lowering). The chain
  is a tree of records that nothing edits once made (torch appends only to a node's own list, which
  stays a copy), so `shared_provenance` lets a new record share its ancestors instead of copying them.

Measured on the built-in model: the pattern skip took a fresh process's fp32 .pte from 42.2 to
28.7 s; shared provenance, in one process with ExecuTorch imported, int8 .pte 24.3 → 16.1 s and
fp32 14.4 → 11.4 s. The .pte files are byte for byte the same (sha256). Names this pinned stack
lacks are left alone.

The ONNX exporter, profiled the same way (the batch dimension is symbolic there, so every shape
is sympy arithmetic):

- In-place activations (`nn.ReLU6(inplace=True)` → `aten.hardtanh_`) have no ONNX function, so
  the exporter decomposes them through torch's reference implementations: under the profiler
  0.33 s per ReLU6, 15 of the built-in model's 40 s. `out_of_place` calls the out-of-place op
  where nothing else reads the tensor it would overwrite, which is what functionalization makes
  of it anyway: the same ONNX ops (35 Clip in mobilenet_v2), outputs within 1e-9. mobilenet_v2's
  fp32 .onnx: 36.8 → 23.6 s; in test_pipeline's export, int8 34.3 → 24.1 s, fp32 31.2 → 16.9 s.
  (The exporter also rebuilds its registry of ONNX functions on every export, 2–3.5 s, but a
  registry kept for a second export failed it: its entries are not only read.)
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

# Each pass's ops that every one of its patterns contains (aten names, overload left out).
_PATTERN_ANCHORS = {"ConvertToUpsampleBilinear2d": ("aten.upsample_bilinear2d",),
                    "ConvertToSDPAPass": ("aten._softmax", "aten.bmm")}


@contextlib.contextmanager
def skip_unmatchable_patterns() -> Iterator[None]:
    from executorch.backends.xnnpack import _passes
    from torch.fx.passes.infra.pass_base import PassResult

    patched = []
    for name, anchors in _PATTERN_ANCHORS.items():
        cls = getattr(_passes, name, None)
        if cls is None:
            continue

        def call(self: Any, graph_module: Any, _original: Any = cls.call, _anchors: tuple[str, ...] = anchors) -> Any:
            ops = {str(getattr(n.target, "_op", n.target)) for n in graph_module.graph.nodes if n.op == "call_function"}
            if all(any(op.startswith(anchor + ".") for op in ops) for anchor in _anchors):
                return _original(self, graph_module)
            return PassResult(graph_module, False)

        patched.append((cls, cls.call))
        cls.call = call
    try:
        yield
    finally:
        for cls, original in patched:
            cls.call = original


@contextlib.contextmanager
def shared_provenance() -> Iterator[None]:
    import torch.fx.traceback as fx_traceback

    source = getattr(fx_traceback, "NodeSource", None)
    if source is None:
        yield
        return
    original = source.__init__

    def init(self: Any, node: Any, *args: Any, **kwargs: Any) -> None:
        history = node.meta.get("from_node") if node is not None else None
        if not isinstance(history, list):
            return original(self, node, *args, **kwargs)
        node.meta["from_node"] = _SharedList(history)  # NodeSource deep-copies it: a copy of the list only
        try:
            original(self, node, *args, **kwargs)
        finally:
            node.meta["from_node"] = history

    source.__init__ = init
    try:
        yield
    finally:
        source.__init__ = original


class _SharedList(list):
    def __deepcopy__(self, memo: dict) -> list:
        return list(self)


def out_of_place(program: torch.export.ExportedProgram) -> int:
    """Replace each in-place aten op (`hardtanh_`, `relu_`, …) whose first argument is an intermediate
    tensor read by nothing else with its out-of-place overload; returns how many were replaced."""
    replaced = 0
    for node in program.graph_module.graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        name = target._schema.name.split("::", 1)[-1]
        source = node.args[0] if node.args else None
        if (not name.endswith("_") or name.endswith("__") or not isinstance(source, torch.fx.Node)
                or source.op == "placeholder" or len(source.users) != 1):
            continue  # an input's mutation is part of the program's signature; a shared tensor is read again
        functional = getattr(getattr(torch.ops.aten, name[:-1], None), target._overloadname, None)
        if isinstance(functional, torch._ops.OpOverload):
            node.target = functional
            replaced += 1
    if replaced:
        program.graph_module.recompile()
    return replaced
