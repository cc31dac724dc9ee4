"""Models for the accuracy-budget tests, loaded by edgeq as `path/budget_models.py:factory`."""

from __future__ import annotations

import torch

from edgeq.models import BUILTIN_INPUT_SHAPE, load_model

INPUT_SHAPE = BUILTIN_INPUT_SHAPE
BROKEN = "0.4.conv.2"  # the projection conv of a block without a residual, in the middle of the network


def one_bad_layer() -> torch.nn.Module:
    """The built-in model (real weights) where one layer's int8 weights are useless: input channel 0
    of BROKEN is made dead (its depthwise BN shifts it far below ReLU6's zero), and BROKEN's weights
    from that channel set to 50× the layer's largest weight. The float model loses nothing from the
    weights (they multiply zeros), but each output channel's int8 scale is set by them, and its
    real weights round to zero: int8 collapses, and only BROKEN in float undoes it."""
    model = load_model().module
    block = model.get_submodule(BROKEN.rsplit(".", 1)[0])
    with torch.no_grad():
        block[1][1].bias[0] = -100.0  # the depthwise conv's BatchNorm: channel 0 → ReLU6 → exactly 0
        conv = block[2]
        conv.weight[:, 0] = 50 * conv.weight.abs().max()
    return model
