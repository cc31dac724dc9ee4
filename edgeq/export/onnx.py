"""ONNX .onnx: the torch.export graph through the dynamo ONNX exporter.

From a converted PT2E graph it emits QDQ: QuantizeLinear/DequantizeLinear around Conv and Gemm.
For x86 static quantization, the float model's ONNX goes through onnxruntime's own quantize_static
instead (see edgeq.quantize.quantizer_for). Either result is checked with onnx.checker and for
Q/DQ that an optimizer pass may have dropped.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
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
            onnx_program = torch.onnx.export(program, tuple(as_example(spec)), dynamo=True, verbose=False,
                                             input_names=names, output_names=["logits"] if image else None)
    except Exception as e:  # noqa: BLE001 - the exporter wraps the real cause; export_failure digs it out
        raise export_failure("the ONNX exporter", e, program) from None
    proto = name_batch_dimension(strip_debug_info(onnx_program.model_proto))
    if quantized and float_layers:
        float_inputs(proto, onnx_float_nodes(proto, frozenset(float_layers)))
    onnx.save(proto, str(path))
    return _checked(proto, quantized, float_layers)


# What static int8 of a model of tensors quantizes in onnxruntime's flow: the products, as in its
# .ptl (edgeq.quantize.static_tensors). onnxruntime's default takes every op it has a quantizer for,
# the Where of a masked_fill too, whose -inf it cannot calibrate ("range of [-inf, inf] is not finite").
TENSOR_STATIC_OPS = ("MatMul", "Gemm", "Conv")


def export_ort_quantized(model: nn.Module, spec: tuple[int, ...] | Example, path: Path,
                         calib: np.ndarray | tuple[np.ndarray, ...], recipe: QuantRecipe,
                         input_names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The float model to ONNX, then onnxruntime's static quantization: quant_pre_process (shape
    inference, graph optimizations), then quantize_static calibrated on `calib` with the recipe's
    method (edgeq.quantize.observers.ort_calibration), QDQ with uint8 activations and int8 weights
    (7-bit for x86, REDUCE_RANGE), the pairing onnxruntime's x86 kernels are fastest with.

    A model of tensors (`input_names`, `calib` one array per input; the model written with Linears,
    edgeq.quantize.static_tensors): its plan names units, its embedding tables become int8 per row
    (edgeq.quantize.embedding) rather than onnxruntime's one-scale uint8 Gather, and the recipe's
    hybrid layers get onnxruntime's quantize_dynamic."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_dynamic, quantize_static)

    from edgeq.quantize import embedding

    samples = calib if input_names is not None else (calib,)
    names = input_names or ("input",)

    class Samples(CalibrationDataReader):
        def __init__(self) -> None:
            self.next = iter(range(len(samples[0])))

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self.next, None)  # a sample at a time: what every exported graph takes
            return None if i is None else {name: x[i:i + 1] for name, x in zip(names, samples)}

    method, options = ort_calibration(recipe.calibration, recipe.percentile)
    with tempfile.TemporaryDirectory(prefix="edgeq-ort-") as tmp:
        fp32, prepared, hybrid = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx", Path(tmp) / "hybrid.onnx"
        export(model, spec, fp32, quantized=False, input_names=input_names)
        try:
            with quiet(), contextlib.redirect_stdout(io.StringIO()):  # its calibrators print progress
                try:
                    quant_pre_process(str(fp32), str(prepared))
                except Exception:  # noqa: BLE001 - its symbolic shape inference fails on some Expand nodes
                    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # ONNX's own then
                graph = onnx.load(str(prepared))
                if input_names is not None and gemms_as_matmuls(graph):
                    onnx.save(graph, str(prepared))
                if input_names is None:
                    excluded, dynamic = onnx_float_nodes(graph, frozenset(recipe.float_layers)), []
                else:
                    excluded = unit_nodes(graph, model, recipe.float_layers)
                    dynamic = unit_nodes(graph, model, recipe.dynamic_layers)
                    lookups = {f"{t}.weight" for t in embedding.tables(model, recipe.float_layers)}
                    excluded += [n.name for n in graph.graph.node if n.op_type == "Gather" and n.input[0] in lookups]
                quantize_static(str(prepared), str(hybrid if dynamic else path), Samples(),
                                quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, per_channel=recipe.per_channel,
                                reduce_range=REDUCE_RANGE and recipe.backend == "x86", calibrate_method=method,
                                extra_options=options, nodes_to_exclude=excluded + dynamic,
                                op_types_to_quantize=None if input_names is None else list(TENSOR_STATIC_OPS))
                if dynamic:  # the hybrid layers, MatMuls left float by quantize_static (it warns: "already quantized")
                    logging.disable(logging.WARNING)
                    try:
                        quantize_dynamic(str(hybrid), str(path), weight_type=QuantType.QInt8,
                                         per_channel=recipe.per_channel, nodes_to_quantize=dynamic,
                                         op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True})
                    finally:
                        logging.disable(logging.NOTSET)
        except EdgeqError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime's quantizer raises many types
            raise EdgeqError(f"onnxruntime could not quantize the model ({type(e).__name__}: {first_line(e)}): "
                             + ("export with --backend qnnpack, or " if input_names is None else "")
                             + "leave .onnx out with --formats") from None
    proto = onnx.load(str(path))
    tables = embedding.for_onnx(proto, model, recipe.float_layers) if input_names is not None else []
    if excluded:
        float_inputs(proto, excluded)
    if excluded or tables:
        onnx.save(proto, str(path))
    details = _checked(proto, quantized=True, planned=excluded)  # hybrid layers are MatMulInteger now
    details["calibration"] = f"{method.name} over {len(samples[0])} samples"
    if input_names is not None:
        details.update(int8_embeddings=tables, **({"dynamic_nodes": dynamic} if dynamic else {}))
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
                excluded = unit_nodes(onnx.load(str(prepared)), source, float_layers)
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


def unit_nodes(proto: onnx.ModelProto, model: nn.Module, float_layers: tuple[str, ...]) -> list[str]:
    """The MatMul/Gemm nodes of the linears inside these units (a plan's float layers, a recipe's
    hybrid layers), found by their weight's name. The exporter
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
                         "a constant), so onnxruntime's flow cannot single it out: leave .onnx out with "
                         "--formats, or quantize the layer like the rest")
    # quantize_dynamic rewrites each Gemm as MatMul + Add first, naming the MatMul NAME_MatMul
    return nodes + [f"{n.name}_MatMul" for n in proto.graph.node if n.name in nodes and n.op_type == "Gemm"]


def _check_model(proto: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise EdgeqError(f"the exported ONNX model fails onnx.checker: {str(e).splitlines()[0]}") from None


def _checked(proto: onnx.ModelProto, quantized: bool, float_layers: tuple[str, ...] = (),
             planned: list[str] | None = None) -> dict[str, Any]:
    """onnx.checker, and every weighted node of an int8 graph fed by a DequantizeLinear but the
    float layers' (or the `planned` nodes: float, or quantized dynamically)."""
    _check_model(proto)
    counts = Counter(node.op_type for node in proto.graph.node)
    details: dict[str, Any] = {"stripped": "per-node debug metadata", "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
                               "quantize_linear": counts["QuantizeLinear"],
                               "dequantize_linear": counts["DequantizeLinear"],
                               "ops": dict(sorted(counts.items()))}
    if quantized:
        planned = set(onnx_float_nodes(proto, frozenset(float_layers)) if planned is None else planned)
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


def gemms_as_matmuls(proto: onnx.ModelProto) -> int:
    """Rewrite (in place) each Gemm of a weight initializer as MatMul (+ Add of the bias), the weight
    stored transposed once; the MatMul keeps the Gemm's name (a plan finds it by name). onnxruntime's
    quantizers otherwise transpose a Gemm's weight at each use: an unrolled recurrent layer uses its
    weights at every step, and quantize_static wrote one Transpose per use under one output name
    (not SSA, refused by onnx.checker); quantize_dynamic's own rewrite takes every Gemm, those
    another quantizer made int8 too. Returns how many were rewritten."""
    inits = {i.name: i for i in proto.graph.initializer}
    uses: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            uses.setdefault(name, []).append(node)

    def plain(node: onnx.NodeProto) -> bool:
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        return node.op_type == "Gemm" and a.get("transA", 0) == 0 and a.get("alpha", 1.0) == 1.0 \
            and a.get("beta", 1.0) == 1.0 and len(node.input) > 1 and node.input[1] in inits

    def trans_b(node: onnx.NodeProto) -> int:
        return next((helper.get_attribute_value(x) for x in node.attribute if x.name == "transB"), 0)

    nodes, done, transposed = [], 0, set()
    for node in proto.graph.node:
        weight = node.input[1] if len(node.input) > 1 else ""
        users = uses.get(weight, [])
        if not plain(node) or not all(plain(u) and trans_b(u) == trans_b(node) for u in users):
            nodes.append(node)
            continue
        if trans_b(node) and weight not in transposed:
            array = numpy_helper.to_array(inits[weight]).T.copy()
            inits[weight].CopyFrom(numpy_helper.from_array(array, weight))
            transposed.add(weight)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        product = f"{node.output[0]}_matmul" if bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product], name=node.name))
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [node.output[0]], name=f"{node.name}_bias"))
        done += 1
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return done


def name_batch_dimension(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The exporter names dynamic dimensions after symbols (s31, …): call the batch "batch" and a model's
    dynamic length (edgeq.tensors.Example) "length"."""
    dims = [d for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info)
            for d in value.type.tensor_type.shape.dim]
    names = {d.dim_param: "batch" if i == 0 else "length" for value in proto.graph.input
             for i, d in enumerate(value.type.tensor_type.shape.dim) if d.dim_param}
    for d in dims:
        if d.dim_param in names:
            d.dim_param = names[d.dim_param]
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
