"""Output budget for dynamic (or static) int8 of a model of tensors: which units to leave in float so that every output stays close to
the float model's: its mean cosine similarity over the check samples at least `--min-cosine`, or its
SQNR at least `--min-sqnr` dB (the worst output decides). For models whose outputs are not class
scores (an embedding, a probability, a recurrent state), where top-1 means nothing.

The unit is a layer, not a module: each layer (and direction) of a multi-layer LSTM/GRU
(`lstm.layers.0`), a recurrent cell, a linear, an embedding table. Some speech models feed raw,
unnormalised features to the first layer of a stacked LSTM; quantizing that layer's input at run
time wrecks it and only it, and the search finds it.

Greedy, as the image models' search (edgeq.quantize.budget), without its cheap ranking: such a model
has few units, so every candidate is quantized for real (torch.ao's eager flow, the .ptl's, which
splits stacked recurrent layers and runs at eager speed; static int8 calibrates each) and scored on
the check samples. Each step returns to float the unit that helps most; stop when the budget holds, at the
layer limit, or when no unit helps. The plan applies to every format; the host check then holds each
artifact, as its own runtime ran it, to the budget.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from rich.progress import Progress
from torch import nn

from edgeq.config import BudgetConfig
from edgeq.errors import EdgeqError, first_line
from edgeq.manifest import FloatPlan, PlanStep
from edgeq.quantize.embedding import tables
from edgeq.quantize.recurrent import RECURRENT
from edgeq.tensors import flat_outputs
from edgeq.validate import measure_outputs

BATCH = 64
IDENTICAL_DB = 200.0  # an output int8 left bit-identical scores this (JSON has no infinity)


def units(model: nn.Module) -> list[str]:
    """What the search may return to float: stacked recurrent modules by layer and direction, cells,
    linears outside those and outside attention (whose in-projection is no module), embedding tables."""
    found: list[str] = []
    inside: list[str] = []  # modules whose linears are not units of their own
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(m, (nn.LSTM, nn.GRU)) and (m.num_layers > 1 or m.bidirectional):
            found += [f"{name}.{part}.{k}" for k in range(m.num_layers)
                      for part in (("layers", "reverse") if m.bidirectional else ("layers",))]
            inside.append(name)
        elif isinstance(m, RECURRENT):
            found.append(name)
            inside.append(name)
        elif isinstance(m, nn.MultiheadAttention):
            inside.append(name)
        elif isinstance(m, nn.Linear) and name:
            found.append(name)
    return found + tables(model)


def search(model: nn.Module, quantize: Callable[[tuple[str, ...]], nn.Module], inputs: tuple[np.ndarray, ...],
           expected: list[np.ndarray], names: tuple[str, ...], budget: BudgetConfig, bar: Progress) -> FloatPlan:
    """The float units that keep every output within `budget` (cosine or SQNR) on `inputs`, against
    the float model's `expected` outputs (one array per output, samples first). `quantize(float_units)`:
    the eager int8 model with those units float (dynamic, or static: edgeq.quantize.static_tensors)."""
    started = time.perf_counter()
    metric, minimum = budget.metric, budget.minimum
    assert metric in ("cosine", "sqnr") and minimum is not None, budget  # the config checks this first
    scores: dict[tuple[str, ...], float] = {}

    def score(float_layers: tuple[str, ...]) -> float:
        key = tuple(sorted(float_layers))
        if key not in scores:
            scores[key] = _score(quantize(float_layers), inputs, expected, names, metric)
        return scores[key]

    candidates = units(model)
    chosen: list[str] = []
    steps: list[PlanStep] = []
    task = bar.add_task("output budget: all int8", total=None)
    current = int8_score = score(())
    stopped = None
    while current < minimum:
        remaining = [u for u in candidates if u not in chosen]
        if len(chosen) >= budget.max_float_layers or not remaining:
            stopped = f"reached --max-float-layers {budget.max_float_layers}" if remaining else "every layer is float"
            break
        bar.update(task, description=f"output budget: trying float layer {len(chosen) + 1}", total=len(remaining),
                   completed=0)
        trials = {}
        for unit in remaining:
            trials[unit] = round(score(tuple(chosen + [unit])), 5)
            bar.advance(task)
        best = max(remaining, key=lambda u: trials[u])  # ties: the first in the model
        if trials[best] <= current:
            stopped = "no layer left improves the worst output alone"
            break
        chosen.append(best)
        current = trials[best]
        steps.append(PlanStep(layer=best, score=current, candidates=trials, params=_weights(model, best)))
    bar.remove_task(task)
    return FloatPlan(float_layers=chosen, metric=metric, minimum=minimum, images=len(inputs[0]),
                     float_score=1.0 if metric == "cosine" else IDENTICAL_DB, int8_score=int8_score, score=current,
                     met=current >= minimum, stopped=stopped, steps=steps, evaluations=len(scores),
                     seconds=round(time.perf_counter() - started, 1))


def _weights(model: nn.Module, unit: str) -> int:
    """The weights a unit keeps in fp32: `lstm.layers.1` is nn.LSTM's `*_l1` parameters."""
    head, _, k = unit.rpartition(".")
    module, _, part = head.rpartition(".")
    if part in ("layers", "reverse") and k.isdigit():
        suffix = f"_l{k}" + ("_reverse" if part == "reverse" else "")
        return sum(p.numel() for n, p in model.get_submodule(module).named_parameters() if n.endswith(suffix))
    return sum(p.numel() for p in model.get_submodule(unit).parameters())


@torch.no_grad()
def _score(model: nn.Module, inputs: tuple[np.ndarray, ...], expected: list[np.ndarray], names: tuple[str, ...],
           metric: str) -> float:
    """The worst output's mean cosine, or its SQNR (dB), of `model` against the float outputs."""
    chunks: list[list[np.ndarray]] = []
    for i in range(0, len(inputs[0]), BATCH):
        try:
            out = model(*(torch.from_numpy(x[i:i + BATCH]) for x in inputs))
        except Exception as e:  # noqa: BLE001 - the user's model, quantized
            raise EdgeqError(f"the model failed with int8 layers during the output-budget search "
                             f"({type(e).__name__}: {first_line(e)}): pass --plan, or drop the budget") from None
        chunks.append([t.numpy() for t in flat_outputs(out)])
    outputs = [np.concatenate(c) for c in zip(*chunks)]
    check = measure_outputs(names, expected, outputs, None)
    if metric == "cosine":
        return min(o.cosine_mean if o.cosine_mean is not None else -1.0 for o in check.outputs)
    return min(o.sqnr_db if o.sqnr_db is not None else IDENTICAL_DB if o.cosine_mean is not None else -IDENTICAL_DB
               for o in check.outputs)  # no SQNR: identical, or not finite
