"""The float model's weights made ready for int8, before any flow quantizes them: BatchNorm folded,
cross-layer equalization (opt-in), AdaRound (opt-in), empirical bias correction (default). One traced copy serves
every static flow (.pte, .onnx, .ptl), so each rounds the same weights and gets the same biases.
The layers a plan leaves float (recipe.float_layers) keep their weights: nothing rounds them.
The float artifacts and the reference outputs keep the model as given."""

from __future__ import annotations

import copy

import torch
from torch import nn

from edgeq.config import QuantRecipe
from edgeq.manifest import WeightSteps
from edgeq.quantize.adaround import adaround
from edgeq.quantize.bias_correction import correct_bias
from edgeq.quantize.equalize import equalize
from edgeq.quantize.fold import fold_batchnorm, trace


def ready_for_int8(model: nn.Module, recipe: QuantRecipe, images: torch.Tensor,
                   fold: bool = False) -> tuple[nn.Module, WeightSteps]:
    """The model to quantize, and what was done. With every step off, the model as given (unless
    `fold`: then BN folded all the same). A model torch.fx cannot trace is returned as given, with
    the reason."""
    if not (recipe.equalization or recipe.adaround or recipe.bias_correction or fold):
        return model, WeightSteps()
    try:
        graph = trace(copy.deepcopy(model).eval())
    except Exception as e:  # noqa: BLE001 - symbolic tracing fails on data-dependent Python code
        first = str(e).splitlines()[0] if str(e) else ""
        return model, WeightSteps(skipped=f"torch.fx could not trace the model ({type(e).__name__}: {first})")
    steps = WeightSteps(folded_batchnorms=fold_batchnorm(graph))
    if recipe.equalization:
        done = equalize(graph)
        steps.equalized_pairs, steps.not_equalized = done.pairs, done.skipped
    used = images[:recipe.correction_images]
    if recipe.adaround:
        steps.images = len(used)
        steps.adarounded_layers = adaround(graph, used, recipe.per_channel, float_layers=recipe.float_layers)
    if recipe.bias_correction:  # after AdaRound: what mean error its rounding leaves
        steps.images = len(used)
        steps.bias_corrected_layers = correct_bias(graph, used, recipe.per_channel, recipe.float_layers)
    return graph, steps

