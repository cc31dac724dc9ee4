"""ONNX .onnx: the torch.export graph through the dynamo ONNX exporter.

From a converted PT2E graph it emits QDQ: QuantizeLinear/DequantizeLinear around Conv and Gemm.
For x86 static quantization, the float model's ONNX goes through onnxruntime's own quantize_static
instead (see edgeq.quantize.quantizer_for). Either result is checked with onnx.checker and for
Q/DQ that an optimizer pass may have dropped.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from edgeq.config import QuantRecipe
from edgeq.errors import EdgeqError
from edgeq.graph import export_failure
from edgeq.quantize import export_graph, quiet
from edgeq.quantize.observers import ort_calibration

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
    return _checked(proto, quantized)


def export_ort_quantized(model: nn.Module, input_shape: tuple[int, ...], path: Path, calib: np.ndarray,
                         recipe: QuantRecipe) -> dict[str, Any]:
    """The float model to ONNX, then onnxruntime's static quantization: quant_pre_process (shape
    inference, graph optimizations), then quantize_static calibrated on `calib` with the recipe's
    method (edgeq.quantize.observers.ort_calibration), QDQ with uint8 activations and int8 weights,
    the pairing onnxruntime's x86 kernels are fastest with."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(len(calib)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self.batches, None)  # one image at a time: the exported graph has batch size 1
            return None if i is None else {"input": calib[i:i + 1]}

    method, options = ort_calibration(recipe.calibration, recipe.percentile)
    with tempfile.TemporaryDirectory(prefix="edgeq-ort-") as tmp:
        fp32, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        export(model, input_shape, fp32, quantized=False)
        try:
            with quiet(), contextlib.redirect_stdout(io.StringIO()):  # its calibrators print progress
                quant_pre_process(str(fp32), str(prepared))
                quantize_static(str(prepared), str(path), Images(), quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                per_channel=recipe.per_channel, calibrate_method=method, extra_options=options)
        except Exception as e:  # noqa: BLE001 - onnxruntime's quantizer raises many types
            raise EdgeqError(f"onnxruntime could not quantize the model ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}): export with --backend qnnpack, or leave "
                             ".onnx out with --formats") from None
    details = _checked(onnx.load(str(path)), quantized=True)
    details["calibration"] = f"{method.name} over {len(calib)} images"
    return details


def _checked(proto: onnx.ModelProto, quantized: bool) -> dict[str, Any]:
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
