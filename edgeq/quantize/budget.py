"""Accuracy budget: which layers to leave in float so that int8 loses at most a given amount.

The search, as NNCF's accuracy control does it for OpenVINO: start fully int8; while the metric
drops more than the budget, rank the int8 layers cheaply (`rank`: the metric, then the logit SQNR,
gained when that layer alone runs float in the int8 graph as it is, on up to 500 images), confirm
the top few on the real metric (each candidate quantized for real with that layer float, and
scored on all check images), and return the best of them to float. Re-rank after each step: what is worst changes once
a layer is float. Stop when the budget holds, at the layer limit, or when none of the candidates
improves the metric (on a noisy metric, more float layers would buy nothing).

The metric is top-1 in percentage points: accuracy on labelled images (drop from the float model's
accuracy), or agreement with the float model's top-1 (drop from 100). Candidates are quantized by
the PT2E XNNPACK flow (the .pte's graph); the plan it finds applies to every format (plan.py), and
the host check then measures each artifact on its own.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from rich.progress import Progress
from torch.fx import GraphModule, Interpreter, Node

from edgeq.config import BudgetConfig
from edgeq.manifest import FloatPlan, PlanStep
from edgeq.quantize.fold import attribute
from edgeq.quantize.patterns import is_relu6
from edgeq.quantize.plan import exported_layers, layer_costs

RANK_IMAGES = 500  # check images the cheap ranking runs on (the first ones)
BATCH = 64
_QDQ = ("quantized_decomposed.quantize_per_tensor", "quantized_decomposed.dequantize_per_tensor")


@dataclass
class _Scorer:
    """Quantizes with a set of float layers and scores the result on the check images (cached)."""

    quantize: Callable[[tuple[str, ...]], GraphModule]
    images: np.ndarray
    expected: np.ndarray  # labels, or the float model's top-1
    models: dict[tuple[str, ...], GraphModule] = field(default_factory=dict)
    scores: dict[tuple[str, ...], float] = field(default_factory=dict)

    def model(self, float_layers: tuple[str, ...]) -> GraphModule:
        if float_layers not in self.models:
            self.models = {float_layers: self.quantize(float_layers)}  # keep one: they are large
        return self.models[float_layers]

    @torch.no_grad()
    def score(self, float_layers: tuple[str, ...]) -> float:
        key = tuple(sorted(float_layers))
        if key not in self.scores:
            model = self.model(float_layers)
            top1 = np.concatenate([model(torch.from_numpy(self.images[i:i + BATCH])).argmax(-1).numpy()
                                   for i in range(0, len(self.images), BATCH)])
            self.scores[key] = round(100.0 * float(np.mean(top1 == self.expected)), 3)
        return self.scores[key]


class _WithFloatLayer(Interpreter):
    """Runs an int8 PT2E graph as if one conv/linear were float: its float weight and bias, no Q/DQ after
    it (or after the ReLU fused with it). The input keeps its rounding. Not the model the plan
    would quantize (observers downstream keep their ranges), but close, and no calibration."""

    def __init__(self, graph: GraphModule, node: str, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__(graph)
        self.weight, self.bias = weight, bias
        target = next(n for n in graph.graph.nodes if n.name == node)
        self.node, self.chain = target, {target}
        while len(target.users) == 1 and (is_relu6(user := next(iter(target.users))) or
                                          str(user.target).startswith("aten.relu")):
            target = user
            self.chain.add(target)

    def run_node(self, n: Node):  # noqa: ANN201 - whatever the node returns
        if n is self.node:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            return n.target(args[0], self.weight, self.bias, *args[3:], **kwargs)
        if n.op == "call_function" and str(n.target).startswith(_QDQ) and n.args[0] in self.chain:
            self.chain.add(n)  # a Q, then its DQ: both pass the float value on
            return self.env[n.args[0]]
        return super().run_node(n)


@torch.no_grad()
def rank(model: GraphModule, folded: GraphModule, images: np.ndarray, expected: np.ndarray,
         float_logits: torch.Tensor, skip: set[str], advance: Callable[[], None]) -> dict[str, tuple[float, float]]:
    """The cheap pass: each int8 conv/linear of `model` run alone in float (no calibration, see
    _WithFloatLayer) on a subset of the images: the metric gained (points), then the logit SQNR
    gained (dB, against `float_logits`), which breaks the metric's many ties."""
    x = torch.from_numpy(images)
    base = _outputs(model(x))
    base_score, base_sqnr = _top1(base, expected), _sqnr(float_logits, base)
    layers = {name: layer for name, layer in exported_layers(folded).items() if layer not in skip}
    params = {n.name: (attribute(folded, n.args[1]), attribute(folded, n.args[2])
                       if len(n.args) > 2 and isinstance(n.args[2], Node) else None)
              for n in folded.graph.nodes if n.name in layers}
    present = {n.name for n in model.graph.nodes}
    gains = {}
    for name, layer in layers.items():
        if name in present:
            out = _outputs(_WithFloatLayer(model, name, *params[name]).run(x))
            gains[layer] = (_top1(out, expected) - base_score, _sqnr(float_logits, out) - base_sqnr)
        advance()
    return gains


def _outputs(out: torch.Tensor | tuple | list) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _top1(logits: torch.Tensor, expected: np.ndarray) -> float:
    return 100.0 * float(np.mean(logits.argmax(-1).numpy() == expected))


def _sqnr(reference: torch.Tensor, x: torch.Tensor) -> float:
    noise = float(((reference.double() - x.double()) ** 2).sum())
    return 10 * math.log10(float((reference.double() ** 2).sum()) / noise) if noise > 0 else 200.0


def search(quantize: Callable[[tuple[str, ...]], GraphModule], reference: GraphModule, folded: GraphModule,
           images: np.ndarray, labels: np.ndarray | None, budget: BudgetConfig, bar: Progress) -> FloatPlan:
    """The float layers that keep the drop within `budget`, and how each step scored.
    `quantize(float_layers)` returns a converted PT2E graph of `folded` (the torch.export graph of
    the model as quantized: weights made ready); `reference` is the float model's torch.export graph.
    Conv/linear weight names name the layers in both."""
    started = time.perf_counter()
    with torch.no_grad():
        float_top1 = np.concatenate([reference(torch.from_numpy(images[i:i + BATCH])).argmax(-1).numpy()
                                     for i in range(0, len(images), BATCH)])
    if budget.metric == "accuracy":
        assert labels is not None, "accuracy budget without labels"  # the pipeline checks this first
        expected, baseline = labels, round(100.0 * float(np.mean(float_top1 == labels)), 3)
    else:
        expected, baseline = float_top1, 100.0
    scorer = _Scorer(quantize, images, expected)
    costs = layer_costs(reference)
    with torch.no_grad():
        float_logits = reference(torch.from_numpy(images[:RANK_IMAGES]))
    n_rank = len(float_logits)
    chosen: list[str] = []
    steps: list[PlanStep] = []
    task = bar.add_task("accuracy budget: all int8", total=None)
    score = int8_score = scorer.score(())
    stopped = None
    while baseline - score > budget.max_drop:
        if len(chosen) >= budget.max_float_layers:
            stopped = f"reached --max-float-layers {budget.max_float_layers}"
            break
        bar.update(task, description=f"accuracy budget: ranking ({len(chosen)} float)", total=len(costs),
                   completed=0)
        gains = rank(scorer.model(tuple(chosen)), folded, images[:n_rank], expected[:n_rank], float_logits,
                     set(chosen), lambda: bar.advance(task))
        candidates = sorted(gains, key=lambda layer: gains[layer], reverse=True)[:budget.candidates]
        if not candidates:
            stopped = "every conv and linear layer is float"
            break
        bar.update(task, description=f"accuracy budget: trying float layer {len(chosen) + 1}",
                   total=len(candidates), completed=0)
        trials = {}
        for layer in candidates:
            trials[layer] = scorer.score(tuple(chosen + [layer]))
            bar.advance(task)
        best = max(candidates, key=lambda c: trials[c])  # ties: the higher ranked (max keeps the first)
        if trials[best] <= score:  # none of the likeliest layers helps alone: stop rather than guess
            stopped = f"none of the {len(candidates)} top-ranked layers improves the metric alone"
            break
        chosen.append(best)
        score = trials[best]
        params, macs = costs.get(best, (0, 0))
        steps.append(PlanStep(layer=best, score=score, candidates=trials, rank_gain=round(gains[best][0], 3),
                              sqnr_gain_db=round(gains[best][1], 2), params=params, fp32_macs=macs))
    bar.remove_task(task)
    return FloatPlan(float_layers=chosen, metric=budget.metric, max_drop=budget.max_drop, images=len(images),
                     float_score=baseline, int8_score=int8_score, score=score, met=baseline - score <= budget.max_drop,
                     stopped=stopped, steps=steps, evaluations=len(scorer.scores),
                     seconds=round(time.perf_counter() - started, 1))
