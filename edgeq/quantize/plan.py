"""Float-layer plans: the weighted layers an int8 model leaves in float, applied alike to every flow.

A layer is named by its weight: the weight parameter's name without ".weight" (features.0.0,
blocks.3.conv, classifier.1), which is the module path for an nn.Conv2d or nn.Linear, and for a
functional conv the module whose weight it reads. The name survives the weight steps (fold.Layer.set
keeps weight names), torch.export (get_attr targets) and the ONNX exporter (initializer names), so
one list reaches every flow:
- PT2E XNNPACKQuantizer: a filter function. `set_module_name(name, None)` is refused by it here, and a
  module path would not reach a functional conv anyway.
- FX (.ptl): qconfig None for the conv module, or for the n-th call of a functional conv.
- onnxruntime quantize_static: `nodes_to_exclude`; the PT2E-made .onnx simply has no Q/DQ there.
A float layer takes what the runtime fuses with it (its ReLU) along: that is one partition.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable

import onnx
import torch
from torch import nn
from torch.fx import GraphModule, Node
from torch.nn import functional as F

from edgeq.errors import EdgeqError
from edgeq.quantize.fold import CONV_FUNCTIONS, CONV_MODULES, attribute, layer_of

WEIGHTED_ONNX_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
WEIGHTED_ATEN = {"conv1d", "conv2d", "conv3d", "linear", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}


def weight_layer(node: Node) -> str | None:
    """The layer name of a torch.export conv/linear node whose weight is a get_attr, else None."""
    op = str(node.target).split(".")[1] if node.op == "call_function" and str(node.target).startswith("aten.") else ""
    weight = node.args[1] if op in WEIGHTED_ATEN and len(node.args) > 1 else None
    return layer_of(str(weight.target)) if isinstance(weight, Node) and weight.op == "get_attr" else None


def exported_layers(graph: GraphModule) -> dict[str, str]:
    """Node name → layer name for every conv/linear of a torch.export graph module, in network order."""
    return {node.name: name for node in graph.graph.nodes if (name := weight_layer(node)) is not None}


def check_known(float_layers: Iterable[str], known: Iterable[str], where: str) -> None:
    """A plan naming a layer the model does not have is a plan for another model."""
    known = list(known)
    unknown = sorted(set(float_layers) - set(known))
    if unknown:
        sample = ", ".join(known[:4]) + (", …" if len(known) > 4 else "")
        raise EdgeqError(f"{where} names layer {unknown[0]!r}, which this model does not have (its conv/linear "
                         f"layers: {sample or 'none'}): use a plan made for this model, or run the search again")


def xnnpack_filter(float_layers: frozenset[str]) -> Callable[[Node], bool]:
    """For XNNPACKQuantizer.set_filter_function: False for the nodes of a float layer. Annotators skip
    a partition (conv + ReLU) when any of its nodes is filtered out."""
    def quantize(node: Node) -> bool:
        if node.op == "get_attr":
            return layer_of(str(node.target)) not in float_layers
        return weight_layer(node) not in float_layers

    return quantize


def fx_float_layers(traced: GraphModule, mapping, float_layers: frozenset[str]):  # QConfigMapping -> same
    """qconfig None for each float layer of an FX-traced graph. prepare_fx traces the (flat) graph
    again: a functional conv's scope is then the root, so it is addressed as the n-th call of its
    function there, counted as prepare_fx counts."""
    calls: dict[object, int] = defaultdict(int)
    for node in traced.graph.nodes:
        if node.op == "call_module":
            module = traced.get_submodule(str(node.target))
            if isinstance(module, (*CONV_MODULES, nn.Linear)) and str(node.target) in float_layers:
                mapping = mapping.set_module_name(str(node.target), None)
        elif node.op == "call_function":
            index = calls[node.target]
            calls[node.target] += 1
            if node.target in CONV_FUNCTIONS or node.target is F.linear:
                weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
                if isinstance(weight, Node) and weight.op == "get_attr" and layer_of(str(weight.target)) in float_layers:
                    mapping = mapping.set_module_name_object_type_order("", node.target, index, None)
    return mapping


def onnx_float_nodes(proto: onnx.ModelProto, float_layers: frozenset[str]) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes whose weight initializer belongs to a float layer."""
    initializers = {i.name for i in proto.graph.initializer}
    return [node.name for node in proto.graph.node
            if node.op_type in WEIGHTED_ONNX_OPS and len(node.input) > 1 and node.input[1] in initializers
            and layer_of(node.input[1]) in float_layers]


def layer_costs(graph: GraphModule) -> dict[str, tuple[int, int]]:
    """Layer name → (weights, multiply-accumulates per image), from a torch.export graph's shapes."""
    costs = {}
    for node in graph.graph.nodes:
        name = weight_layer(node)
        out = node.meta.get("val")
        if name is None or not isinstance(out, torch.Tensor):
            continue
        weight = attribute(graph, node.args[1])
        per_output = weight[0].numel() if "conv" in str(node.target) else weight.shape[-1]
        per_image = out[0].numel() if out.dim() > 1 else out.numel()
        costs[name] = (int(weight.numel()), int(per_image * per_output))
    return costs
