"""Turning an exporter's or quantizer's failure into one line that names the op and the layer."""

from __future__ import annotations

import re

import torch

from edgeq.errors import EdgeqError

_OP = re.compile(r"aten[:.]+([A-Za-z0-9_]+)")


def export_failure(stage: str, error: BaseException, program: torch.export.ExportedProgram | None) -> EdgeqError:
    """An EdgeqError for `stage` failing: the aten op named in the error chain, and the layers
    (module paths from the graph's nn_module_stack) that call it."""
    text = " ".join(_chain_text(error).split())
    ops = [op for op in _OP.findall(text) if op not in ("default", "Tensor")]
    op = ops[0] if ops else None
    layers = op_layers(program, op) if (program is not None and op) else []
    where = f" in layer {', '.join(layers[:3])}" if layers else ""
    what = f"op aten.{op}{where}" if op else _first_line(error)
    return EdgeqError(f"{stage} cannot handle {what}: replace it with a supported op, "
                      "or leave the format out with --formats")


def op_layers(program: torch.export.ExportedProgram, op: str) -> list[str]:
    """Module paths (e.g. features.3.conv.0) of the graph nodes that call aten.`op`."""
    layers: list[str] = []
    for node in program.graph.nodes:
        target = getattr(node.target, "__name__", str(node.target))
        if node.op == "call_function" and target.split(".")[0] == op:
            stack = node.meta.get("nn_module_stack") or {}
            path = list(stack.values())[-1][0] if stack else "<model top level>"
            if path not in layers:
                layers.append(path or "<model top level>")
    return layers


def _chain_text(error: BaseException) -> str:
    parts, seen = [], set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts.append(str(e))
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


def _first_line(error: BaseException) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]
