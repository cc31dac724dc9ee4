"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"):
learn, layer by layer, whether each weight rounds up or down, so that the layer's output on real
inputs stays closest to the float layer's, instead of rounding each weight to its nearest level.

Per conv/linear in graph order, on the calibration images: the input comes from the network
rounded so far, the target is the float network's output. A soft rounding h(V) ∈ [0, 1] per weight
is trained (Adam) on the output's squared error plus a regulariser that pushes every h to 0 or 1
(its exponent β annealed from 20 to 2); then each weight takes floor + (h ≥ ½). The weights are
written back on the int8 grid (observers.fake_quantize_weight leaves them as they are), so every
format's own round-to-nearest reproduces the learnt rounding.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule

from edgeq.quantize.bias_correction import run_rounded
from edgeq.quantize.fold import Layer
from edgeq.quantize.observers import WEIGHT_QMAX, WEIGHT_QMIN, weight_scale

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch
REGULARIZATION = 0.01
WARMUP = 0.2  # share of the iterations without the rounding regulariser
BATCH = 8  # images per step


def adaround(graph: GraphModule, images: torch.Tensor, per_channel: bool, iterations: int = 300,
             float_layers: tuple[str, ...] = ()) -> int:
    """Round every conv/linear weight of a BN-folded graph adaptively, in place. Returns how many."""

    def learn(layer: Layer, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight, bias = layer.weight.detach(), layer.bias.detach() if layer.bias is not None else None
        scale = weight_scale(weight, per_channel)
        floor = torch.floor(weight / scale)
        rest = (weight / scale - floor).clamp(0.01, 0.99)
        v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).requires_grad_(True)
        optimizer = torch.optim.Adam([v], lr=1e-2)
        generator = torch.Generator().manual_seed(0)
        with torch.enable_grad():
            for step in range(iterations):
                pick = torch.randperm(len(x), generator=generator)[:BATCH]
                h = (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
                soft = (floor + h).clamp(WEIGHT_QMIN, WEIGHT_QMAX) * scale
                loss = (layer.run(x[pick], soft, bias) - target[pick]).pow(2).mean()
                warm = step / iterations
                if warm > WARMUP:
                    beta = 2 + 18 * (1 - (warm - WARMUP) / (1 - WARMUP))
                    loss = loss + REGULARIZATION * (1 - (2 * h - 1).abs().pow(beta)).sum() / h.numel()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        levels = floor + (v.detach() >= 0).to(weight.dtype)
        # The largest weight keeps its level (±127): it sets the scale every format recomputes.
        levels = torch.where((weight / scale).abs() > WEIGHT_QMAX - 0.5, torch.round(weight / scale), levels)
        rounded = levels.clamp(WEIGHT_QMIN, WEIGHT_QMAX) * scale
        layer.set(rounded, bias if bias is not None else torch.zeros(weight.shape[0]))
        return layer.run(x, rounded, layer.bias)

    return run_rounded(graph, images, learn, float_layers)
