"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization", §4.1).

Where conv₁ → ReLU → conv₂, output channel i of conv₁ can be divided by sᵢ and input channel i of
conv₂ multiplied by sᵢ without changing the network, because ReLU(x/s) = ReLU(x)/s for s > 0.
Choosing sᵢ = √(r₁ᵢ / r₂ᵢ) (rᵢ: the channel's weight range) gives both the same range, so one
per-tensor scale fits every channel; per-channel weights gain less. The activation between must be
positively homogeneous: ReLU (or nothing). ReLU6 clips at 6, and a scaled channel would clip at
6/sᵢ: those pairs are left alone and counted (the DFQ paper retrains with ReLU instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.fx import GraphModule, Node
from torch.nn import functional as F

from edgeq.quantize.fold import Layer, layers
from edgeq.quantize.patterns import is_clamp_06

_HOMOGENEOUS = (nn.ReLU, F.relu, torch.relu)


@dataclass
class Equalized:
    pairs: int = 0  # conv/linear pairs equalized
    skipped: dict[str, int] = field(default_factory=dict)  # activation between a pair → pairs left alone


@torch.no_grad()
def equalize(graph: GraphModule, iterations: int = 8) -> Equalized:
    """Equalize every conv/linear pair joined by a ReLU (or directly), in place."""
    found = {layer.node: layer for layer in layers(graph)}
    result = Equalized()
    pairs = []
    for first in found.values():
        between, second = _next(first.node, found)
        if second is None:
            continue
        if between is not None and not _homogeneous(graph, between):
            name = "ReLU6" if is_clamp_06(graph, between) else str(getattr(between.target, "__name__", between.target))
            result.skipped[name] = result.skipped.get(name, 0) + 1
        elif _input_channels_of(second) is not None and first.weight.shape[0] == _input_channels_of(second):
            pairs.append((first, second))
    for _ in range(iterations):
        for first, second in pairs:
            _equalize_pair(first, second)
    result.pairs = len(pairs)
    return result


def _next(node: Node, found: dict[Node, Layer]) -> tuple[Node | None, Layer | None]:
    """(activation, next layer) when node's only user is a layer, or an activation whose only user is."""
    if len(node.users) != 1:
        return None, None
    user = next(iter(node.users))
    if user in found and user.args[0] is node:
        return None, found[user]
    if len(user.users) != 1:
        return None, None
    after = next(iter(user.users))
    return (user, found[after]) if after in found and after.args[0] is user else (None, None)


def _homogeneous(graph: GraphModule, node: Node) -> bool:
    if node.op == "call_module":
        return type(graph.get_submodule(str(node.target))) is nn.ReLU
    return node.op == "call_function" and node.target in _HOMOGENEOUS


def _input_channels_of(layer: Layer) -> int | None:
    """Input channels, for plain (groups 1) and depthwise layers; None for other grouped convs."""
    weight = layer.weight
    if layer.groups == 1:
        return weight.shape[1]
    return weight.shape[0] if weight.shape[1] == 1 and layer.groups == weight.shape[0] else None


def _equalize_pair(first: Layer, second: Layer) -> None:
    w1, b1, w2 = first.weight, first.bias, second.weight
    in_axis = 0 if second.groups != 1 else 1  # depthwise: weight row i reads input channel i
    r1 = w1.abs().flatten(1).amax(1)
    r2 = w2.abs().transpose(0, in_axis).flatten(1).amax(1)
    s = torch.sqrt(r1 / r2.clamp(min=1e-12)).clamp(min=1e-4, max=1e4)
    s = torch.where((r1 > 0) & (r2 > 0), s, torch.ones_like(s))
    shape1 = (-1,) + (1,) * (w1.dim() - 1)
    shape2 = [1] * w2.dim()
    shape2[in_axis] = -1
    first.set(w1 / s.view(shape1), (b1 if b1 is not None else torch.zeros_like(s)) / s)
    second.set(w2 * s.view(shape2), second.bias if second.bias is not None else torch.zeros(w2.shape[0]))
