"""ExecuTorch .pte: torch.export → to_edge_transform_and_lower(XNNPACK) → to_executorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

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
