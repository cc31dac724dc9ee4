"""ExecuTorch .pte: torch.export → rewrites XNNPACK takes (delegable.py) → to_edge_transform_and_lower(XNNPACK)
→ to_executorch."""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from edgeq.export import fast_lowering
from edgeq.export.delegable import make_delegable
from edgeq.graph import export_failure
from edgeq.quantize import Example, as_example, export_graph, quiet

NOT_OPS = {"Total", "getitem"}  # rows of the delegation table that are not kernels


def export(model: nn.Module, spec: tuple[int, ...] | Example, path: Path, rewrite: bool = True) -> dict[str, Any]:
    """Lower with the XNNPACK partitioner at the example inputs' shapes (or the image input shape);
    ops XNNPACK does not take run on portable kernels. `rewrite=False`: without edgeq's rewrites
    (delegable.py), as ExecuTorch alone lowers it."""
    program = export_graph(model, spec)
    rewrites = make_delegable(program) if rewrite else {}
    buffer, info, reasons = _lower(program)
    if rewrites and not _runs(buffer, as_example(spec)):
        # XNNPACK miscompiles some slices that cross a delegate boundary (seen: a slice feeding a float
        # ReLU in an int8 graph fails at run time): the program as it was, portable ops and all.
        program = export_graph(model, spec)
        buffer, info, reasons = _lower(program)
        rewrites = {}
    table = info.get_operator_delegation_dataframe()
    portable = {str(row.op_type): int(row.occurrences_in_non_delegated_graphs) for row in table.itertuples()
                if row.op_type not in NOT_OPS and row.occurrences_in_non_delegated_graphs > 0}
    path.write_bytes(buffer)
    details = {"delegate": "XnnpackBackend", "delegated_subgraphs": int(info.num_delegated_subgraphs),
               "delegated_ops": int(info.num_delegated_nodes), "portable_ops": portable}
    if portable:  # each op left outside, with the partitioner's reason (or that no config takes it)
        details["portable_reasons"] = {op: reasons.get(op, "XNNPACK's partitioner has no config for it")
                                       for op in portable}
    if rewrites:
        details["rewrites"] = rewrites  # see edgeq.export.delegable
    return details


def _lower(program: torch.export.ExportedProgram) -> tuple[bytes, Any, dict[str, str]]:
    """The .pte's bytes, the delegation table (read before to_executorch, whose out-variant pass adds
    a memory.alloc per output of every op left outside: buffers, not ops) and the partitioner's reasons."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower
    import executorch.kernels.quantized  # noqa: F401 - registers out variants of the quantize/dequantize ops

    try:
        with quiet(), _refusals() as reasons, fast_lowering.skip_unmatchable_patterns(), fast_lowering.shared_provenance():
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            info = get_delegation_info(edge.exported_program().graph_module)
            return edge.to_executorch().buffer, info, reasons
    except Exception as e:  # noqa: BLE001 - lowering raises many types; all are "cannot lower this op"
        raise export_failure("ExecuTorch lowering", e, program) from None


@contextlib.contextmanager
def _refusals() -> Iterator[dict[str, str]]:
    """Why XNNPACK's partitioner refused each op, in its own words: its configs report every refusal
    (WhyNoPartition) at DEBUG level on their loggers. {op name as the delegation table spells it: reason}."""
    reasons: dict[str, str] = {}

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            why = record.msg
            if getattr(why, "node", None) is not None and getattr(why, "reason", None):
                # node names are the table's op types, with _N after the first of a kind
                reasons.setdefault(re.sub(r"_\d+$", "", why.node.name), str(why.reason))

    logger = logging.getLogger("executorch.backends.xnnpack.partition")
    handler, level, propagate = Collect(logging.DEBUG), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # the records are for this table, not for the user's log
    try:
        yield reasons
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _runs(buffer: bytes, example: Example) -> bool:
    """Whether the ExecuTorch runtime loads and runs the program once (milliseconds)."""
    from executorch.runtime import Runtime

    from edgeq.runner import stderr_silenced

    try:
        with stderr_silenced():
            Runtime.get().load_program(buffer).load_method("forward").execute(list(example))
        return True
    except RuntimeError:
        return False
