"""Per-layer numerics: where int8 error enters. Each layer output of the int8 model (PT2E, the graph
the .pte is lowered from) is compared with the same output of the float model, on held-out images,
as SQNR in dB. Error accumulates, so SQNR falls along the network; a layer where it drops sharply
is where to look (its range, its weights, or leave it float).

Both graphs come from torch.export of the same model, so an op keeps its name in both (conv2d_7,
add_2, …). A conv whose float output feeds a BatchNorm is compared at the BatchNorm's output: the
int8 graph has folded it into the conv. Names shown are the float model's module paths.

For a conv or linear, the SQNR of its input is measured too (the int8 graph's input as the layer
reads it, rounding included): the difference ("added dB") is what the layer itself costs, a first
look at what to leave float (the accuracy-budget search, budget.py, ranks by the metric instead).

Dynamic int8 (`unit_errors`) is measured by unit instead (a layer and direction of a stacked
LSTM/GRU, a cell, a linear, an embedding table: edgeq.quantize.output_budget.units), on the eager
int8 model (the .ptl's flow, recurrent layers split) against the float model with the same rewrite
(the same function), with forward hooks: a recurrent layer's output at every step, its input too.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.fx import GraphModule, Interpreter, Node

from edgeq.manifest import LayerError, LayerNumerics
from edgeq.quantize.plan import weight_layer

# Ops whose output is a layer's output (views, getitems and Q/DQ are not).
_LAYER_OPS = {"conv1d", "conv2d", "conv3d", "linear", "add", "mul", "cat", "relu", "relu6", "hardtanh", "hardswish",
              "hardsigmoid", "sigmoid", "silu", "gelu", "mean", "avg_pool2d", "adaptive_avg_pool2d", "max_pool2d",
              "matmul", "softmax"}
_BATCH_NORMS = {"batch_norm", "_native_batch_norm_legit_no_training"}
BATCH = 4


def op_name(node: Node) -> str:
    """aten.hardtanh_.default → hardtanh."""
    name = str(node.target).split(".")[1] if str(node.target).startswith("aten.") else str(node.target)
    return name.rstrip("_")


def compared_nodes(reference: GraphModule, quantized: GraphModule) -> dict[str, tuple[str, str, str]]:
    """int8 node name → (float node name holding the same value, module path, op), in network order."""
    names = {n.name for n in quantized.graph.nodes}
    found = {}
    for node in reference.graph.nodes:
        op = op_name(node) if node.op == "call_function" else ""
        if op not in _LAYER_OPS or node.name not in names:
            continue
        holder = node
        users = list(node.users)
        if len(users) == 1 and op_name(users[0]) in _BATCH_NORMS:
            holder = users[0]
            getitems = [u for u in holder.users if op_name(u) == "getitem" and u.args[1] == 0]
            holder = getitems[0] if op_name(holder).startswith("_native") and getitems else holder
        stack = node.meta.get("nn_module_stack")
        path = list(stack.values())[-1][0] if stack else node.name
        found[node.name] = (holder.name, path or node.name, op)
    return found


class _Capture(Interpreter):
    """Runs a graph and keeps the outputs of the named nodes."""

    def __init__(self, graph: GraphModule, names: set[str]) -> None:
        super().__init__(graph)
        self.names, self.values = names, {}

    def run_node(self, n: Node):  # noqa: ANN201 - whatever the node returns
        out = super().run_node(n)
        if n.name in self.names and isinstance(out, torch.Tensor):
            self.values[n.name] = out.detach().double()
        return out


def _input_of(graph: GraphModule, name: str) -> str | None:
    node = next((n for n in graph.graph.nodes if n.name == name), None)
    return node.args[0].name if node is not None and node.args and isinstance(node.args[0], Node) else None


@torch.no_grad()
def layer_errors(reference: nn.Module, quantized: GraphModule, images: np.ndarray, flow: str,
                 float_layers: tuple[str, ...] = ()) -> LayerNumerics:
    """SQNR of every layer output of `quantized` against `reference` (both torch.export graphs of the
    model; `reference` float) on `images`, in network order. `float_layers`: the plan's, marked."""
    if not isinstance(reference, GraphModule):
        raise TypeError("the float reference must be a torch.export graph module")
    pairs = compared_nodes(reference, quantized)
    layers = {node.name: weight_layer(node) for node in reference.graph.nodes if node.name in pairs}
    # (float node, int8 node) value pairs measured: each layer's output, and each conv/linear's input
    measured = {name: (holder, name) for name, (holder, _, _) in pairs.items()}
    for name, layer in layers.items():
        inputs = (_input_of(reference, name), _input_of(quantized, name))
        if layer is not None and None not in inputs:
            measured[f"{name}:input"] = inputs
    signal = {key: 0.0 for key in measured}
    noise = {key: 0.0 for key in measured}
    for i in range(0, len(images), BATCH):
        x = torch.from_numpy(images[i:i + BATCH])
        floats = _Capture(reference, {f for f, _ in measured.values()})
        floats.run(x)
        ints = _Capture(quantized, {q for _, q in measured.values()})
        ints.run(x)
        for key, (f_name, q_name) in measured.items():
            f, q = floats.values.get(f_name), ints.values.get(q_name)
            if f is None or q is None or f.shape != q.shape:
                continue
            signal[key] += float((f ** 2).sum())
            noise[key] += float(((f - q) ** 2).sum())

    def sqnr(key: str) -> float | None:
        if key not in signal or signal[key] == 0.0 or noise[key] == 0.0:
            return None
        return 10 * math.log10(signal[key] / noise[key])

    numerics = LayerNumerics(flow=flow, images=len(images))
    for name, (_, path, op) in pairs.items():
        if signal[name] == 0.0 and noise[name] == 0.0:
            continue
        out, into = sqnr(name), sqnr(f"{name}:input")
        layer = layers.get(name)
        numerics.layers.append(LayerError(
            node=name, module=path, op=op, sqnr_db=None if out is None else round(out, 2), layer=layer,
            added_db=round(into - out, 2) if into is not None and out is not None else None,
            kept_float=layer is not None and layer in float_layers))
    return numerics


@torch.no_grad()
def unit_errors(model: nn.Module, int8: nn.Module, inputs: tuple[np.ndarray, ...],
                float_layers: tuple[str, ...] = ()) -> LayerNumerics:
    """SQNR of every unit's output (and input) of an eager int8 model of tensors (dynamic, or static:
    edgeq.quantize.static_tensors; recurrent layers split), in network order, on `inputs`."""
    from edgeq.quantize.output_budget import units
    from edgeq.quantize.recurrent import as_linear

    names = units(model)
    reference, _ = as_linear(model.eval(), recurrent=True, attention=True)
    sums: dict[tuple[str, str], list[float]] = {}  # (unit, "in"/"out") → [signal, noise]
    order: list[str] = []

    def hooks(net: nn.Module, store: dict[str, list[tuple[torch.Tensor, torch.Tensor]]]) -> list:
        def hook(name: str):
            def keep(_module, args, out):
                first = out[0] if isinstance(out, (tuple, list)) else out
                taken = args[0] if args and isinstance(args[0], torch.Tensor) else None
                store.setdefault(name, []).append((taken, first))
            return keep
        modules = dict(net.named_modules())
        return [modules[n].register_forward_hook(hook(n)) for n in names if n in modules]

    for i in range(0, len(inputs[0]), BATCH):
        xs = [torch.from_numpy(x[i:i + BATCH]) for x in inputs]
        floats: dict[str, list] = {}
        ints: dict[str, list] = {}
        for net, store in ((reference, floats), (int8, ints)):
            handles = hooks(net, store)
            try:
                net(*xs)
            finally:
                for h in handles:
                    h.remove()
        for name in floats:
            if name not in order:
                order.append(name)
            for (f_in, f_out), (q_in, q_out) in zip(floats[name], ints.get(name, [])):
                for side, f, q in (("in", f_in, q_in), ("out", f_out, q_out)):
                    if isinstance(f, torch.Tensor) and isinstance(q, torch.Tensor) and f.shape == q.shape \
                            and f.is_floating_point():  # an embedding's input is ids: no error to measure
                        f, q = f.double(), q.double()
                        acc = sums.setdefault((name, side), [0.0, 0.0])
                        acc[0] += float((f ** 2).sum())
                        acc[1] += float(((f - q) ** 2).sum())

    def sqnr(name: str, side: str) -> float | None:
        signal, noise = sums.get((name, side), (0.0, 0.0))
        return None if signal == 0.0 or noise == 0.0 else 10 * math.log10(signal / noise)

    modules = dict(model.named_modules())
    numerics = LayerNumerics(flow="eager", images=len(inputs[0]))
    for name in order:
        out, into = sqnr(name, "out"), sqnr(name, "in")
        kind = type(modules[name]).__name__ if name in modules else "recurrent layer"
        numerics.layers.append(LayerError(
            node=name, module=name, op=kind, sqnr_db=None if out is None else round(out, 2), layer=name,
            added_db=round(into - out, 2) if into is not None and out is not None else None,
            kept_float=name in float_layers))
    return numerics
