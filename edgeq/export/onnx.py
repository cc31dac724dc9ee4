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
from edgeq.errors import EdgeqError, first_line
from edgeq.export import fast_lowering
from edgeq.graph import export_failure
from edgeq.quantize import Example, as_example, export_graph, quiet
from edgeq.quantize.observers import ort_calibration
from edgeq.quantize.fold import layer_of
from edgeq.quantize.plan import WEIGHTED_ONNX_OPS as WEIGHTED_OPS, onnx_float_nodes

# 7-bit weights in onnxruntime's x86 flow: without VNNI its u8s8 kernels (VPMADDUBSW) add two u8×s8
# products in int16, which saturates with full-range weights. On this AVX2 host the built-in model's
# int8 .onnx gave 15.8 dB / 95.9% agreement (failing its gates) and 27.8 dB / 98.8% with 7 bits; an
# x86 target may be any x86 CPU, so the file must be right on those without VNNI too.
REDUCE_RANGE = True


def export(model: nn.Module, spec: tuple[int, ...] | Example, path: Path, quantized: bool,
           float_layers: tuple[str, ...] = (), input_names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """`spec`: the model's example inputs, or an image model's input shape (its input is then called
    "input" and its output "logits"). `float_layers`: the int8 model's float layers
    (edgeq.quantize.plan), expected without Q/DQ. The batch dimension (every input's first) is
    dynamic: onnxruntime runs a batch in one call (the host check does)."""
    image = all(isinstance(d, int) for d in spec)
    program = export_graph(model, spec, dynamic_batch=True)
    fast_lowering.out_of_place(program)
    names = ["input"] if image else list(input_names) if input_names else None
    try:
        with quiet():
            onnx_program = torch.onnx.export(program, as_example(spec), dynamo=True, verbose=False,
                                             input_names=names, output_names=["logits"] if image else None)
    except Exception as e:  # noqa: BLE001 - the exporter wraps the real cause; export_failure digs it out
        raise export_failure("the ONNX exporter", e, program) from None
    proto = name_batch_dimension(strip_debug_info(onnx_program.model_proto))
    if quantized and float_layers:
        float_inputs(proto, onnx_float_nodes(proto, frozenset(float_layers)))
    onnx.save(proto, str(path))
    return _checked(proto, quantized, float_layers)


def export_ort_quantized(model: nn.Module, input_shape: tuple[int, ...], path: Path, calib: np.ndarray,
                         recipe: QuantRecipe) -> dict[str, Any]:
    """The float model to ONNX, then onnxruntime's static quantization: quant_pre_process (shape
    inference, graph optimizations), then quantize_static calibrated on `calib` with the recipe's
    method (edgeq.quantize.observers.ort_calibration), QDQ with uint8 activations and int8 weights
    (7-bit, REDUCE_RANGE), the pairing onnxruntime's x86 kernels are fastest with."""
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
                try:
                    quant_pre_process(str(fp32), str(prepared))
                except Exception:  # noqa: BLE001 - its symbolic shape inference fails on some Expand nodes
                    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # ONNX's own then
                excluded = onnx_float_nodes(onnx.load(str(prepared)), frozenset(recipe.float_layers))
                quantize_static(str(prepared), str(path), Images(), quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                per_channel=recipe.per_channel, reduce_range=REDUCE_RANGE, calibrate_method=method,
                                extra_options=options, nodes_to_exclude=excluded)
        except Exception as e:  # noqa: BLE001 - onnxruntime's quantizer raises many types
            raise EdgeqError(f"onnxruntime could not quantize the model ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}): export with --backend qnnpack, or leave "
                             ".onnx out with --formats") from None
    proto = onnx.load(str(path))
    if recipe.float_layers:
        float_inputs(proto, excluded)
        onnx.save(proto, str(path))
    details = _checked(proto, quantized=True, float_layers=recipe.float_layers)
    details["calibration"] = f"{method.name} over {len(calib)} images"
    return details


DYNAMIC_OPS = ("MatMul", "Gemm", "LSTM", "Attention")  # what quantize_dynamic makes int8 here; not Gather (below)
DYNAMIC_INT8_OPS = ("MatMulInteger", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "QAttention")


def export_ort_dynamic(model: nn.Module, example: tuple[torch.Tensor, ...], names: tuple[str, ...], path: Path,
                       per_channel: bool, float_layers: tuple[str, ...] = ()) -> dict[str, Any]:
    """The float model to ONNX (batch dynamic, as `export`), then onnxruntime's dynamic quantization:
    quant_pre_process first (it folds the Unsqueeze/Concat feeding an ONNX LSTM's W and R into
    initializers; without it the LSTM stays float without a warning), then quantize_dynamic on
    MatMul/Gemm/LSTM/Attention. GRUs and recurrent cells are written as Linear layers before export
    (edgeq.quantize.recurrent): onnxruntime has no GRU quantizer. An embedding's Gather is not
    quantize_dynamic's (its one-scale uint8 table cost 3.6-7.6 dB on the measured models): its table
    becomes int8 with a scale per row afterwards (edgeq.quantize.embedding)."""
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    from edgeq.quantize import embedding
    from edgeq.quantize.recurrent import as_linear

    # An nn.LSTM stays an ONNX LSTM (DynamicQuantizeLSTM) unless a plan keeps part of it float
    cells = any(isinstance(m, (nn.GRU, nn.GRUCell, nn.LSTMCell)) for m in model.modules())
    source = as_linear(model.eval())[0] if cells or float_layers else model
    with tempfile.TemporaryDirectory(prefix="edgeq-ort-") as tmp:
        fp32, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        export(source, example, fp32, quantized=False, input_names=names)
        try:
            with quiet(), contextlib.redirect_stdout(io.StringIO()):
                try:
                    quant_pre_process(str(fp32), str(prepared))
                except Exception:  # noqa: BLE001 - its symbolic shape inference fails on some Expand nodes
                    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # ONNX's own then
                excluded = _dynamic_float_nodes(onnx.load(str(prepared)), source, float_layers)
                quantize_dynamic(str(prepared), str(path), weight_type=QuantType.QInt8, per_channel=per_channel,
                                 op_types_to_quantize=list(DYNAMIC_OPS), nodes_to_exclude=excluded,
                                 extra_options={"MatMulConstBOnly": True})
        except Exception as e:  # noqa: BLE001 - onnxruntime's quantizer raises many types
            raise EdgeqError(f"onnxruntime could not quantize the model dynamically ({type(e).__name__}: "
                             f"{first_line(e)}): leave .onnx out with --formats") from None
    proto = onnx.load(str(path))
    tables = embedding.for_onnx(proto, source, float_layers)
    if tables:
        onnx.save(proto, str(path))
    _check_model(proto)
    counts = Counter(node.op_type for node in proto.graph.node)
    int8 = {op: counts[op] for op in DYNAMIC_INT8_OPS if counts[op]}
    weights = {i.name for i in proto.graph.initializer}
    float_weighted = [f"{n.op_type} {n.name}" for n in proto.graph.node if n.op_type in ("MatMul", "Gemm", "LSTM", "GRU")
                      and len(n.input) > 1 and n.input[1] in weights and n.name not in excluded]
    if not int8:
        raise EdgeqError("onnxruntime's dynamic quantization left every layer float (no MatMulInteger or "
                         "DynamicQuantizeLSTM): the model has no linear layers it takes; use --method static")
    return {"opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
            "int8_ops": int8, "int8_embeddings": tables, "float_weighted_nodes": float_weighted,
            "ops": dict(sorted(counts.items())),
            "quantizer": "onnxruntime quantize_dynamic (int8 weights, uint8 activations at run time)"}


def _dynamic_float_nodes(proto: onnx.ModelProto, model: nn.Module, float_layers: tuple[str, ...]) -> list[str]:
    """The MatMul/Gemm nodes of the plan's float linears, found by their weight's name. The exporter
    and quant_pre_process may fold a weight's transpose into a new constant (val_N), losing the name:
    then the plan cannot be applied here, and that is said rather than ignored."""
    from edgeq.quantize.dynamic import float_linears

    if not float_layers:
        return []
    wanted = set(float_linears(model, float_layers))
    nodes = onnx_float_nodes(proto, frozenset(wanted))
    found = {layer_of(i) for n in proto.graph.node if n.name in nodes for i in n.input[1:2]}
    missing = sorted(wanted - found)
    if missing:
        raise EdgeqError(f"the ONNX graph no longer names the weight of {missing[0]} (the exporter folded it into "
                         "a constant), so onnxruntime's dynamic flow cannot keep it float: leave .onnx out with "
                         "--formats, or let the layer be int8")
    # quantize_dynamic rewrites each Gemm as MatMul + Add first, naming the MatMul NAME_MatMul
    return nodes + [f"{n.name}_MatMul" for n in proto.graph.node if n.name in nodes and n.op_type == "Gemm"]


def _check_model(proto: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise EdgeqError(f"the exported ONNX model fails onnx.checker: {str(e).splitlines()[0]}") from None


def _checked(proto: onnx.ModelProto, quantized: bool, float_layers: tuple[str, ...] = ()) -> dict[str, Any]:
    _check_model(proto)
    counts = Counter(node.op_type for node in proto.graph.node)
    details: dict[str, Any] = {"stripped": "per-node debug metadata", "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
                               "quantize_linear": counts["QuantizeLinear"],
                               "dequantize_linear": counts["DequantizeLinear"],
                               "ops": dict(sorted(counts.items()))}
    if quantized:
        planned = set(onnx_float_nodes(proto, frozenset(float_layers)))
        float_weighted = [n for n in unquantized_weighted_nodes(proto) if n.split(" ", 1)[1] not in planned]
        if planned:
            details["float_nodes"] = sorted(planned)
        if counts["QuantizeLinear"] == 0 or counts["DequantizeLinear"] == 0 or float_weighted:
            raise EdgeqError(f"the ONNX exporter dropped Q/DQ nodes ({counts['QuantizeLinear']} QuantizeLinear, "
                             f"{counts['DequantizeLinear']} DequantizeLinear; float weights at "
                             f"{', '.join(float_weighted[:3]) or 'every node'}): the int8 .onnx would run in float; "
                             "report it with the model, or leave .onnx out with --formats")
    return details


def float_inputs(proto: onnx.ModelProto, float_nodes: list[str]) -> int:
    """Feed each float layer the value before its input's QuantizeLinear → DequantizeLinear: onnxruntime's
    WeightBiasQuantization (a basic, default-on graph optimization) quantizes the float weight of any
    Conv/Gemm whose input comes out of a DequantizeLinear, which would undo the plan at load time.
    No Q/DQ around a float layer is also what the plan means. Returns how many inputs changed."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    users: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    changed = 0
    for node in proto.graph.node:
        dq = producers.get(node.input[0]) if node.name in float_nodes else None
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        node.input[0] = q.input[0]
        changed += 1
        users[dq.output[0]] -= 1
    dead = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear" and users.get(n.output[0]) == 0}
    for n in [n for n in proto.graph.node if n.output[0] in dead]:
        users[n.input[0]] -= 1
        proto.graph.node.remove(n)
    for n in [n for n in proto.graph.node if n.op_type == "QuantizeLinear" and users.get(n.output[0]) == 0]:
        proto.graph.node.remove(n)
    return changed


def name_batch_dimension(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The exporter names the dynamic batch dimension after a symbol (s31, …): call it "batch"."""
    dims = [d for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info)
            for d in value.type.tensor_type.shape.dim]
    symbol = next((d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim[:1] if d.dim_param), None)
    for d in dims:
        if symbol and d.dim_param == symbol:
            d.dim_param = "batch"
    return proto


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
