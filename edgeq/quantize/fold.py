"""The float model as a graph the weight steps can edit: traced, with BatchNorm folded into convs.

Equalization and bias correction change weights and biases as the runtime will see them, so they
need BN folded first (a runtime folds it anyway). PT2E folds BN itself, and FX fuses conv *modules*
with BN, but a functional conv (`F.conv2d(F.pad(x), self.weight, …)`, as TF ports of
EfficientNet write "SAME" padding) followed by a BN module is fused by neither: FX then quantizes
the conv output and the BN output separately, with the unfolded weight. `fold_batchnorm` folds both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.fx import GraphModule, Node
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights

CONV_FUNCTIONS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def trace(model: nn.Module) -> GraphModule:
    """torch.fx symbolic trace, functional convs spelled out (see functional_convs_with_lists)."""
    return functional_convs_with_lists(torch.fx.symbolic_trace(model))


def functional_convs_with_lists(graph: GraphModule) -> GraphModule:
    """F.conv2d(x, w, b, 2) is valid PyTorch, but FX's quantized conv packs its arguments with
    conv2d_prepack, which wants every one, as lists: spell them all out, one value per dimension."""
    for node in graph.graph.nodes:
        dims = CONV_FUNCTIONS.get(node.target) if node.op == "call_function" else None
        if dims is None:
            continue
        given = {**dict(zip(_ARGS, node.args)), **node.kwargs}
        values = [given.get(n, _DEFAULTS.get(n)) for n in _ARGS]
        node.args = tuple((v,) * dims if 3 <= i <= 5 and isinstance(v, int) else v for i, v in enumerate(values))
        node.kwargs = {}
    graph.recompile()
    return graph


@dataclass
class Layer:
    """A conv or linear of the traced graph, module or functional, with its weight and bias."""

    node: Node
    graph: GraphModule

    @property
    def module(self) -> nn.Module | None:
        return self.graph.get_submodule(str(self.node.target)) if self.node.op == "call_module" else None

    @property
    def name(self) -> str:
        """What plans call it (edgeq.quantize.plan): its weight's name without ".weight"."""
        return str(self.node.target) if self.module is not None else layer_of(str(self.node.args[1].target))

    @property
    def is_linear(self) -> bool:
        return isinstance(self.module, nn.Linear) or self.node.target is F.linear

    @property
    def groups(self) -> int:
        if self.is_linear:
            return 1
        return self.module.groups if self.module is not None else self.node.args[6]  # type: ignore[return-value]

    @property
    def weight(self) -> torch.Tensor:
        module = self.module
        return module.weight if module is not None else attribute(self.graph, self.node.args[1])

    @property
    def bias(self) -> torch.Tensor | None:
        module = self.module
        if module is not None:
            return module.bias
        return attribute(self.graph, self.node.args[2]) if self.node.args[2] is not None else None

    def set(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Give the layer these (new) parameters. A functional layer keeps its weight's name (the
        name float-layer plans use, see edgeq.quantize.plan) unless another node reads it too: then
        this layer gets parameters of its own and the others keep the old ones."""
        weight, bias = nn.Parameter(weight.detach().clone(), False), nn.Parameter(bias.detach().clone(), False)
        module = self.module
        if module is not None:
            module.weight, module.bias = weight, bias
            return
        args = list(self.node.args)
        for i, value, suffix in ((1, weight, "weight"), (2, bias, "bias")):
            old = args[i]
            if isinstance(old, Node) and self._sole_reader(old):
                _set_attribute(self.graph, str(old.target), value)
                continue
            name = f"edgeq_{self.node.name}_{suffix}"
            self.graph.register_parameter(name, value)
            with self.graph.graph.inserting_before(self.node):
                args[i] = self.graph.graph.get_attr(name)
        self.node.args = tuple(args)

    def _sole_reader(self, attr: Node) -> bool:
        """Whether this layer is all that reads the get_attr's tensor."""
        readers = [n for n in self.graph.graph.nodes if n.op == "get_attr" and n.target == attr.target]
        return readers == [attr] and set(attr.users) == {self.node}

    def run(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The layer on x with another weight and bias."""
        if self.is_linear:
            return F.linear(x, weight, bias)
        module = self.module
        if module is not None:
            return module._conv_forward(x, weight, bias)  # type: ignore[operator]
        return self.node.target(x, weight, bias, *self.node.args[3:])  # type: ignore[operator]


def layers(graph: GraphModule) -> list[Layer]:
    """Every conv and linear whose weight is a parameter of the graph, in graph order. A module
    called more than once is left out: its one weight serves several places."""
    calls: dict[str, int] = {}
    for node in graph.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    found = []
    for node in graph.graph.nodes:
        if node.op == "call_module" and isinstance(graph.get_submodule(str(node.target)), (*CONV_MODULES, nn.Linear)):
            if calls[str(node.target)] == 1:
                found.append(Layer(node, graph))
        elif node.op == "call_function" and (node.target in CONV_FUNCTIONS or node.target is F.linear):
            if node.target is F.linear:  # spelled out like the convs: (input, weight, bias)
                given = {**dict(zip(_ARGS, node.args)), **node.kwargs}
                node.args, node.kwargs = (given["input"], given["weight"], given.get("bias")), {}
            if not node.kwargs and len(node.args) >= 3 and _is_attr(node.args[1]) and \
                    (node.args[2] is None or _is_attr(node.args[2])):
                found.append(Layer(node, graph))
    return found


def fold_batchnorm(graph: GraphModule) -> int:
    """Fold every eval-mode BatchNorm that is a conv's only user into the conv (module or
    functional). Returns how many were folded. The graph must be a copy: its parameters change."""
    convs = {layer.node: layer for layer in layers(graph)}
    folded = 0
    for node in list(graph.graph.nodes):
        bn = graph.get_submodule(str(node.target)) if node.op == "call_module" else None
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.training or bn.running_mean is None:
            continue
        layer = convs.get(node.args[0]) if isinstance(node.args[0], Node) else None
        if layer is None or len(layer.node.users) != 1 or layer.is_linear:
            continue
        if layer.module is not None:
            parent, _, name = str(layer.node.target).rpartition(".")
            setattr(graph.get_submodule(parent), name, fuse_conv_bn_eval(layer.module, bn))
        else:
            layer.set(*fuse_conv_bn_weights(layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps,
                                            bn.weight, bn.bias))
        node.replace_all_uses_with(layer.node)
        graph.graph.erase_node(node)
        folded += 1
    graph.graph.eliminate_dead_code()
    graph.delete_all_unused_submodules()
    graph.recompile()
    return folded


def _is_attr(value: object) -> bool:
    return isinstance(value, Node) and value.op == "get_attr"


def layer_of(weight_name: str) -> str:
    """A layer's name in plans (edgeq.quantize.plan), from its weight's: classifier.1.weight → classifier.1"""
    return weight_name[:-len(".weight")] if weight_name.endswith(".weight") else weight_name


def _set_attribute(graph: GraphModule, target: str, value: nn.Parameter) -> None:
    owner, _, name = target.rpartition(".")
    setattr(graph.get_submodule(owner) if owner else graph, name, value)


def attribute(graph: GraphModule, node: Node) -> torch.Tensor:
    """The tensor a get_attr node reads."""
    obj: object = graph
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[return-value]
