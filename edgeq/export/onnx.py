"""ONNX .onnx: the torch.export graph through the dynamo ONNX exporter.

From a converted PT2E graph it emits QDQ: QuantizeLinear/DequantizeLinear around Conv and Gemm.
The result is checked with onnx.checker and for Q/DQ that an optimizer pass may have dropped.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from edgeq.errors import EdgeqError
from edgeq.graph import export_failure
from edgeq.quantize import export_graph, quiet

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def export(model: nn.Module, input_shape: tuple[int, ...], path: Path, quantized: bool) -> dict[str, Any]:
    program = export_graph(model, input_shape)
    try:
        with quiet():
            onnx_program = torch.onnx.export(program, (torch.zeros(input_shape),), dynamo=True, verbose=False,
                                             input_names=["input"], output_names=["logits"])
    except Exception as e:  # noqa: BLE001 - the exporter wraps the real cause; export_failure digs it out
        raise export_failure("the ONNX exporter", e, program) from None
    proto = strip_debug_info(onnx_program.model_proto)
    onnx.save(proto, str(path))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise EdgeqError(f"the exported ONNX model fails onnx.checker: {str(e).splitlines()[0]}") from None
    counts = Counter(node.op_type for node in proto.graph.node)
    details: dict[str, Any] = {"stripped": "per-node debug metadata", "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
                               "quantize_linear": counts["QuantizeLinear"],
                               "dequantize_linear": counts["DequantizeLinear"],
                               "ops": dict(sorted(counts.items()))}
    if quantized:
        float_weighted = unquantized_weighted_nodes(proto)
        if counts["QuantizeLinear"] == 0 or counts["DequantizeLinear"] == 0 or float_weighted:
            raise EdgeqError(f"the ONNX exporter dropped Q/DQ nodes ({counts['QuantizeLinear']} QuantizeLinear, "
                             f"{counts['DequantizeLinear']} DequantizeLinear; float weights at "
                             f"{', '.join(float_weighted[:3]) or 'every node'}): the int8 .onnx would run in float; "
                             "report it with the model, or leave .onnx out with --formats")
    return details


def strip_debug_info(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop per-node metadata (Python stack traces, FX node dumps, local paths): often more than
    half the file for small models, and nothing a runtime reads."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    return proto


def unquantized_weighted_nodes(proto: onnx.ModelProto) -> list[str]:
    """Conv/Gemm/MatMul nodes whose weight input does not come out of a DequantizeLinear."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    bad = []
    for node in proto.graph.node:
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1:
            producer = producers.get(node.input[1])
            if producer is None or producer.op_type != "DequantizeLinear":
                bad.append(f"{node.op_type} {node.name}")
    return bad
