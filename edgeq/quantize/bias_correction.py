"""Empirical bias correction: take the mean error that weight rounding adds to each output channel
back out through the bias (Nagel et al. 2019, "Data-Free Quantization", §4.2; AIMET's empirical
variant).

Rounding a depthwise 3×3 kernel's nine weights to int8 shifts its output's mean by a visible
fraction of a level, and the shifts add up layer after layer. On a few calibration images, layer
by layer in graph order, run the layer with its float weight on the float network's input and with
its int8-rounded weight on the input of the network rounded so far; the per-channel mean of the
difference goes into the bias. The rounded network downstream then sees corrected inputs.

Only the biases change; weights stay float, and every flow rounds them as simulated here
(observers.fake_quantize_weight is their common scheme). Activation rounding is not simulated: it
differs per flow, and its mean error is small next to the weights'.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.fx import GraphModule, Node
from torch.fx.node import map_arg

from edgeq.quantize.fold import Layer, attribute, layers
from edgeq.quantize.observers import fake_quantize_weight


@torch.no_grad()
def correct_bias(graph: GraphModule, images: torch.Tensor, per_channel: bool, float_layers: tuple[str, ...] = ()) -> int:
    """Correct every conv/linear bias of a BN-folded graph, in place. Returns how many layers."""

    def correct(layer: Layer, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight, bias = layer.weight, layer.bias
        out = layer.run(x, fake_quantize_weight(weight, per_channel), bias)
        channel = out.dim() - 1 if layer.is_linear else 1
        shift = (target - out).movedim(channel, 0).reshape(out.shape[channel], -1).mean(1)
        layer.set(weight, shift if bias is None else bias + shift)
        return out + shift.view(-1, *[1] * (out.dim() - channel - 1))

    return run_rounded(graph, images, correct, float_layers)


Visit = Callable[[Layer, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def run_rounded(graph: GraphModule, images: torch.Tensor, visit: Visit, float_layers: tuple[str, ...] = ()) -> int:
    """Run the graph twice side by side on `images`: as it is (float), and with its conv/linear weights
    int8-rounded as `visit` decides. At each layer, `visit(layer, rounded input, float output)` may
    change the layer and returns its output in the rounded network. Returns how many layers it
    visited. (Bias correction and AdaRound both walk the network this way.) The layers a plan
    leaves float (edgeq.quantize.plan) are not visited: they run as they are in both networks."""
    by_node = {layer.node: layer for layer in layers(graph) if layer.name not in float_layers}
    last_use: dict[Node, Node] = {}
    for node in graph.graph.nodes:
        for used in node.all_input_nodes:
            last_use[used] = node
    floats: dict[Node, object] = {}
    rounded: dict[Node, object] = {}
    for node in list(graph.graph.nodes):
        if node.op == "output":
            break
        if node.op == "placeholder":
            floats[node] = rounded[node] = images
            continue
        floats[node] = _run(graph, node, floats)
        layer = by_node.get(node)
        rounded[node] = _run(graph, node, rounded) if layer is None else \
            visit(layer, rounded[node.args[0]], floats[node])  # type: ignore[arg-type]
        for used in node.all_input_nodes:
            if last_use.get(used) is node:
                floats.pop(used, None)
                rounded.pop(used, None)
    graph.recompile()
    return len(by_node)


def _run(graph: GraphModule, node: Node, env: dict[Node, object]) -> object:
    """One node of the graph on values from env (what torch.fx.Interpreter does, one step)."""
    args = map_arg(node.args, lambda n: env[n])
    kwargs = map_arg(node.kwargs, lambda n: env[n])
    if node.op == "get_attr":
        return attribute(graph, node)
    if node.op == "call_module":
        return graph.get_submodule(str(node.target))(*args, **kwargs)
    if node.op == "call_method":
        self, *rest = args
        return getattr(self, str(node.target))(*rest, **kwargs)
    return node.target(*args, **kwargs)  # type: ignore[operator]
