"""Accuracy budget: the layers edgeq's search leaves in float, against the usual heuristics.

    .venv/bin/python -m bench.train_fashion && .venv/bin/python -m bench.accuracy_budget   # ~25 min here
    .venv/bin/python -m bench.accuracy_budget --models one-bad-layer --random 5

For each model, `edgeq export` (static int8, default recipe) on the same data, four ways:
- all int8 (no plan);
- the search: `--max-agreement-drop BUDGET`;
- the "first and last layer float" heuristic, applied with `--plan`;
- random choices of as many float layers as the search chose (`--random` seeds, .pte only).
Every artifact is scored by the host check (its own runtime, against the float model, on 2,000
Fashion-MNIST test images). Models: torchvision mobilenet_v3_small trained by bench.train_fashion
(its int8 loses 1.8 points of agreement), and the test model with one broken layer
(tests/quantize/budget_models.py). Results: bench/results/accuracy_budget.json, and a table.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from edgeq.config import BudgetConfig, DataConfig, ExportConfig
from edgeq.models import load_model
from edgeq.pipeline import export
from edgeq.quantize import export_graph
from edgeq.quantize.plan import exported_layers

RESULTS = Path(__file__).parent / "results" / "accuracy_budget.json"
ROOT = Path(__file__).resolve().parents[1]


def setups(names: list[str]) -> list[dict]:
    from bench.train_fashion import SHAPE, SOURCE, WEIGHTS

    known = {
        "fashion-mbv3": dict(name="mobilenet_v3_small (Fashion-MNIST, bench.train_fashion)", model=SOURCE,
                             weights=str(WEIGHTS), input_shape=SHAPE, budget=1.0),
        "one-bad-layer": dict(name="built-in with one broken layer (tests/quantize/budget_models.py)",
                              model=f"{ROOT / 'tests' / 'quantize' / 'budget_models.py'}:one_bad_layer", weights=None,
                              input_shape=None, budget=1.0),
    }
    return [known[n] for n in names]


def run(setup: dict, work: Path, tag: str, formats: tuple[str, ...], **budget) -> dict:
    config = ExportConfig(model=setup["model"], weights=setup["weights"], input_shape=setup["input_shape"],
                          formats=formats, precisions=("int8",), validate=False,
                          data=DataConfig(calib="fashion-mnist", eval="fashion-mnist", check_samples=2000),
                          budget=BudgetConfig(**budget))
    t0 = time.perf_counter()
    m = export(work / tag, config, progress=False)
    result = {"seconds": round(time.perf_counter() - t0, 1),
              "agreement": {a.format: round(100 * a.host_check.top1_agreement, 2) for a in m.artifacts},
              "accuracy": {a.format: round(100 * a.host_check.accuracy, 2) for a in m.artifacts},
              "bytes": {a.format: a.bytes for a in m.artifacts}}
    if m.plan is not None:
        result["float_layers"] = m.plan.float_layers
        if m.plan.source == "search":
            result["plan"] = {k: getattr(m.plan, k) for k in ("int8_score", "score", "met", "stopped", "evaluations",
                                                              "seconds")}
    print(tag, json.dumps(result), flush=True)
    return result


def plan_file(work: Path, name: str, layers: list[str]) -> str:
    path = work / f"{name}.json"
    path.write_text(json.dumps({"float_layers": layers, "source": name}))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="fashion-mbv3,one-bad-layer")
    parser.add_argument("--random", type=int, default=5, help="random choices per model")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    formats = ("pte", "onnx", "ptl")
    with tempfile.TemporaryDirectory(prefix="edgeq-bench-budget-") as tmp:
        work = Path(tmp)
        for setup in setups(args.models.split(",")):
            loaded = load_model(setup["model"], setup["weights"], setup["input_shape"])
            layers = list(exported_layers(export_graph(loaded.module, loaded.input_shape).module()).values())
            row = {"name": setup["name"], "budget_points": setup["budget"], "layers": len(layers)}
            row["all int8"] = run(setup, work, "int8", formats)
            row["search"] = run(setup, work, "search", formats, max_agreement_drop=setup["budget"])
            row["first and last float"] = run(setup, work, "first-last", formats,
                                              plan=plan_file(work, "first-last", [layers[0], layers[-1]]))
            k = len(row["search"].get("float_layers", [])) or 1
            picks = random.Random(0)
            row[f"random {k}"] = [run(setup, work, f"random-{seed}", ("pte",),
                                      plan=plan_file(work, f"random-{seed}", picks.sample(layers, k)))
                                  for seed in range(args.random)]
            results[setup["name"]] = row
            RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


def table(results: dict) -> str:
    lines = ["| model (budget: agreement drop) | plan | float layers | .pte | .onnx | .ptl |", "|---|---|---:|---:|---:|---:|"]
    for row in results.values():
        budget = row["budget_points"]
        for label in ("all int8", "search", "first and last float"):
            r = row[label]
            cells = [f"{r['agreement'].get(f, float('nan')):.2f}%" for f in ("pte", "onnx", "ptl")]
            lines.append(f"| {row['name']} (≤ {budget:g} pt) | {label} | {len(r.get('float_layers', []))} | "
                         + " | ".join(cells) + " |")
        rand = next(v for k, v in row.items() if k.startswith("random"))
        scores = [r["agreement"]["pte"] for r in rand]
        met = sum(100 - s <= budget for s in scores)
        lines.append(f"| | random × {len(rand)} | {len(rand[0].get('float_layers', []))} | "
                     f"{min(scores):.2f}–{max(scores):.2f}% ({met}/{len(rand)} meet) | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
