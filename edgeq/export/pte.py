"""ExecuTorch .pte: torch.export → to_edge_transform_and_lower(XNNPACK) → to_executorch."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeq.export import Runner
from edgeq.graph import export_failure
from edgeq.quantize import export_graph, quiet

NOT_OPS = {"Total", "getitem"}  # rows of the delegation table that are not kernels


def export(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> dict[str, Any]:
    """Lower with the XNNPACK partitioner; ops XNNPACK does not take run on portable kernels."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower
    import executorch.kernels.quantized  # noqa: F401 - registers out variants of the quantize/dequantize ops

    program = export_graph(model, input_shape)
    try:
        with quiet():
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            executorch_program = edge.to_executorch()
    except Exception as e:  # noqa: BLE001 - lowering raises many types; all are "cannot lower this op"
        raise export_failure("ExecuTorch lowering", e, program) from None
    info = get_delegation_info(edge.exported_program().graph_module)
    table = info.get_operator_delegation_dataframe()
    portable = {str(row.op_type): int(row.occurrences_in_non_delegated_graphs) for row in table.itertuples()
                if row.op_type not in NOT_OPS and row.occurrences_in_non_delegated_graphs > 0}
    path.write_bytes(executorch_program.buffer)
    return {"delegate": "XnnpackBackend", "delegated_subgraphs": int(info.num_delegated_subgraphs),
            "delegated_ops": int(info.num_delegated_nodes), "portable_ops": portable}


def load(path: Path) -> Runner:
    from executorch.runtime import Runtime

    with _stderr_silenced():  # XNNPACK's cpuinfo logs its CPU probing to fd 2 on first load
        method = Runtime.get().load_program(str(path)).load_method("forward")

    def run(x: np.ndarray) -> np.ndarray:
        return method.execute([torch.from_numpy(x)])[0].numpy()

    return run


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
