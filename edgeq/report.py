"""Reports from manifest.json alone: how much smaller, how much faster, how much worse.

One table model (`tables`) rendered three ways: rich tables in the terminal, GitHub-flavoured
Markdown (short enough for a pull request or a CI job summary), and one self-contained HTML file
with the plots embedded as PNG data (no network). Works on manifests of older runs: what a run did
not measure shows as "–".
"""

from __future__ import annotations

import base64
import html as html_lib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError
from edgeq.manifest import (REPORTS, FloatPlan, LayerError, LayerNumerics, LengthCheck, Manifest, WeightSteps,
                            write_atomic)

REPORT_MD, REPORT_HTML = REPORTS
DASH = "–"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    ok: list[bool | None]  # per row: passed, failed, or not judged


def tables(m: Manifest) -> list[Table]:
    """The host check, then one table per target the artifacts were validated on."""
    fp32 = {a.format: a.bytes for a in m.artifacts if a.precision == "fp32"}
    tensors = bool(m.model.outputs)  # a model of any tensors: every output compared, the worst shown
    host = Table(f"Host check: {m.model.source} for {m.target.name} ({m.method}), against the float model "
                 f"on {m.data.check.images} held-out {'samples' if tensors else 'images'}"
                 + (f"; the worst of its outputs ({', '.join(m.model.outputs)})" if tensors else ""),
                 ["artifact", "size", "÷fp32", "agreement", "SQNR dB", "accuracy",
                  *(["min cosine"] if tensors else [])], [], [])
    for a in m.artifacts:
        c = a.host_check
        host.rows.append([a.key, _size(a.bytes), f"{a.bytes / fp32[a.format]:.2f}×" if a.format in fp32 else DASH,
                          _pct(c.top1_agreement) if c else DASH, _db(c.sqnr_db, c.nonfinite_outputs) if c else DASH,
                          _pct(c.accuracy) if c else DASH]
                         + ([_cosine(c.outputs) if c else DASH] if tensors else []))
        host.ok.append(c.passed if c else None)
    out = [host]
    for target in _targets(m):
        runs = {a.key: a.targets[target] for a in m.artifacts if target in a.targets}
        first = next((r for r in runs.values() if r.error is None), None)
        seen = f"{first.machine}, {first.cpu}" if first else "nothing ran"
        where = first.latency_ms.measured if first and first.latency_ms else "host"
        t = Table(f"On {target}: {seen}; each artifact's outputs on the reference inputs against its own outputs "
                  f"on the host (and the float model's); latency {where}",
                  ["artifact", "max diff vs host", "tolerance", "identical inputs", "agreement", "SQNR dB", "median ms",
                   "p90 ms", "instructions/inference", "load s"], [], [])
        for key, r in runs.items():
            if r.error is not None or r.check is None or r.latency_ms is None:
                t.rows.append([key, (r.error or "no result")[:120], *[DASH] * 8])
            else:
                c, lat, insns, same = r.check, r.latency_ms, r.instructions_per_inference, r.host_parity
                t.rows.append([key, _diff(same.max_abs_diff) if same else DASH, f"{same.tolerance:.3g}" if same else DASH,
                               f"{same.identical}/{same.samples}" if same else DASH, _pct(c.top1_agreement),
                               _db(c.sqnr_db, c.nonfinite_outputs), f"{lat.median:.2f}", f"{lat.p90:.2f}",
                               f"{insns / 1e6:.2f} M" if insns else DASH,
                               f"{r.load_s:.2f}" if r.load_s is not None else DASH])
            t.ok.append(r.passed)
        out.append(t)
    return out


def notes(m: Manifest) -> list[str]:
    lines = []
    if m.float_accuracy is not None:
        lines.append(f"Float model accuracy: {m.float_accuracy:.2%} on {m.data.eval.source if m.data.eval else '?'}.")
    for flow in m.training.flows if m.training else []:
        best = f"{flow.best_val_accuracy:.2%}" if flow.best_val_accuracy is not None else DASH
        lines.append(f"QAT {flow.flow}: {len(flow.epochs)} epochs in {flow.seconds:.0f} s on "
                     f"{m.training.device} × {m.training.processes} process(es); best epoch {flow.best_epoch} "
                     f"({best} on {m.data.validation} held-out training images).")
    if m.model.inputs:
        lines.append(f"Inputs {'; '.join(m.model.inputs)}. Each output against the float model's (SQNR dB, "
                     "cosine similarity mean/min over the samples):")
        for a in m.artifacts:
            if a.host_check and a.host_check.outputs:
                lines.append(f"{a.key}: " + "; ".join(
                    f"{o.name} {_db(o.sqnr_db)}{'' if o.sqnr_db is None else ' dB'}, cos "
                    f"{_num(o.cosine_mean)}/{_num(o.cosine_min)}"
                    for o in a.host_check.outputs))
    lengths = [a for a in m.artifacts if a.host_check and a.host_check.lengths]
    if lengths:
        lines.append("At other lengths of the dynamic axis (the first check samples cut or repeated to it; the "
                     "worst output's SQNR and min cosine" + (", then each target's" if _targets(m) else "") + "):")
        for a in lengths:
            runs = [("host", a.host_check.lengths), *((t, r.lengths) for t, r in a.targets.items() if r.lengths)]
            lines.append(f"{a.key}: " + "; ".join(f"{where} " + ", ".join(map(_length, checks)) for where, checks in runs))
    steps = m.weight_steps
    if steps is not None:
        lines.append(_weight_steps_note(steps))
    if m.plan is not None:
        lines.append(plan_note(m.plan))
    if m.layer_numerics and m.layer_numerics.layers:
        drops = ", ".join(f"{e.module or e.node} {e.op} ({drop:+.1f} dB)" for e, drop in entry_points(m.layer_numerics)[:3])
        units = m.layer_numerics.flow == "eager"  # dynamic int8: by unit, on check samples
        lines.append(f"Per-layer int8 error ({numerics_source(m.layer_numerics)}): {len(m.layer_numerics.layers)} "
                     f"{'units' if units else 'layer outputs'} compared; the largest SQNR drops: {drops}.")
    if _targets(m):
        lines.append(target_inputs_note(m))
    if "total" in m.timings_s:
        validations = [f"validation on {k[len('validate_'):]} {v:.0f} s" for k, v in m.timings_s.items()
                       if k.startswith("validate_")]
        lines.append("; ".join([f"Export took {m.timings_s['total']:.0f} s on the host", *validations]) + ".")
    return lines


def target_inputs_note(m: Manifest) -> str:
    """Why a target's figures come from fewer inputs than the host check's."""
    counts = sorted({r.host_parity.samples for a in m.artifacts for r in a.targets.values() if r.host_parity})
    n = " or ".join(str(c) for c in counts) or "a few"
    what = "samples" if m.model.outputs else "images"
    return (f"On a target each artifact runs {n} reference inputs (one per class first), against "
            f"{m.data.check.images} check {what} on the host. The target proves the artifact computes there what it "
            "computed on the host (outputs within the kernels' rounding of its host outputs), so the host check's "
            "accuracy and agreement hold there; an artifact whose outputs differ is run on every reference input "
            f"and judged on its own. A target table's agreement and SQNR are on its {n} inputs only: not comparable "
            "with the host's figures.")


def plan_note(plan: FloatPlan) -> str:
    """One line: which layers stay float, and what the search measured."""
    layers = ", ".join(plan.float_layers) or "none"
    if plan.source != "search":
        return f"Float layers (from {plan.source}): {layers}."
    verdict = "budget met" if plan.met else f"budget NOT met ({plan.stopped})"
    if plan.metric in ("cosine", "sqnr"):  # dynamic int8, on the outputs
        name, fmt = ("mean cosine", "{:.4f}") if plan.metric == "cosine" else ("SQNR", "{:.1f} dB")
        costs = "; ".join(f"{s.layer}: {s.params:,} weights kept fp32 (+{3 * s.params / 1e3:.1f} kB)"
                          for s in plan.steps)
        return (f"Output budget (every output's {name} at least {fmt.format(plan.minimum)}): float layers {layers}; "
                f"worst output {fmt.format(plan.int8_score)} all int8 → {fmt.format(plan.score)} on {plan.images} "
                f"check samples (torch.ao eager model on the host), {verdict}; {plan.evaluations} candidate models "
                f"in {plan.seconds:.0f} s." + (f" Cost: {costs}." if costs else ""))
    name = "accuracy" if plan.metric == "accuracy" else "top-1 agreement with float"
    costs = "; ".join(f"{s.layer}: {s.params:,} weights kept fp32 (+{3 * s.params / 1e3:.1f} kB), "
                      f"{s.fp32_macs / 1e6:.2f} M MACs/image in fp32" for s in plan.steps)
    points = "point" if plan.max_drop == 1 else "points"
    return (f"Accuracy budget ({name} may drop {plan.max_drop:g} {points}): float layers {layers}; {name} "
            f"{plan.int8_score:.2f}% all int8 → {plan.score:.2f}% (float {plan.float_score:.2f}%) on {plan.images} "
            f"check images (PT2E model on the host), {verdict}; {plan.evaluations} candidate models in "
            f"{plan.seconds:.0f} s." + (f" Cost: {costs}." if costs else ""))


def _weight_steps_note(steps: WeightSteps) -> str:
    if steps.skipped:
        return f"Before int8: no weight steps ({steps.skipped})."
    done = [f"{steps.folded_batchnorms} BatchNorms folded"]
    if steps.equalized_pairs is not None:
        left = ", ".join(f"{n} behind {act}" for act, n in steps.not_equalized.items())
        done.append(f"{steps.equalized_pairs} conv pairs equalized" + (f" (not equalized: {left})" if left else ""))
    if steps.adarounded_layers is not None:
        done.append(f"AdaRound in {steps.adarounded_layers} layers")
    if steps.bias_corrected_layers is not None:
        done.append(f"bias corrected in {steps.bias_corrected_layers} layers")
    if steps.images:
        done.append(f"on {steps.images} calibration images")
    return "Before int8: " + "; ".join(done) + "."


LAYER_COLUMNS = ("module", "op", "node", "SQNR dB", "added dB", "float")


def layer_rows(numerics: LayerNumerics) -> list[list[str]]:
    """The per-layer table: what `edgeq inspect` prints and report.md holds. "added dB": what a
    conv/linear itself adds (input SQNR − output SQNR)."""
    return [[e.module, e.op, e.node, _db(e.sqnr_db), f"{e.added_db:.1f}" if e.added_db is not None else DASH,
             "float" if e.kept_float else ""] for e in numerics.layers]


def numerics_source(numerics: LayerNumerics) -> str:
    """"xnnpack, 16 held-out images", or for dynamic int8's units "eager, 16 check samples"."""
    return f"{numerics.flow}, {numerics.images} " + ("check samples" if numerics.flow == "eager" else "held-out images")


def entry_points(numerics: LayerNumerics) -> list[tuple[LayerError, float]]:
    """Layers by how much SQNR fell at them (from the layer before), largest fall first."""
    drops, before = [], None
    for e in numerics.layers:
        if e.sqnr_db is None:
            continue
        drops.append((e, e.sqnr_db - before if before is not None else 0.0))
        before = e.sqnr_db
    return sorted(drops, key=lambda d: d[1])


def print_terminal(m: Manifest, console: Any = None) -> None:
    from rich.table import Table as RichTable
    from rich.text import Text

    from edgeq.progress import plain_console

    console = console or plain_console()
    verdict = {True: Text("✓", style="green"), False: Text("✗ FAIL", style="red"), None: DASH}
    for t in tables(m):
        table = RichTable(title=t.title)
        for col in (*t.columns, "ok"):
            table.add_column(col, justify="left" if col == "artifact" else "right", overflow="fold")
        for row, ok in zip(t.rows, t.ok):
            table.add_row(*row, verdict[ok])
        console.print(table)
    for line in notes(m):
        console.print(line)


def markdown(m: Manifest) -> str:
    parts = [f"## edgeq: {m.model.source} → {m.target.name} ({m.method})", ""]
    for t in tables(m):
        parts += [f"**{t.title}**", "", "| " + " | ".join([*t.columns, "ok"]) + " |",
                  "|" + "|".join(["---"] + ["---:"] * len(t.columns)) + "|"]
        for row, ok in zip(t.rows, t.ok):
            cells = [c.replace("|", "\\|") for c in row]
            parts.append("| " + " | ".join([*cells, {True: "✅", False: "❌ **fail**", None: DASH}[ok]]) + " |")
        parts.append("")
    parts += [f"- {line}" for line in notes(m)]
    if m.layer_numerics and m.layer_numerics.layers:
        parts += ["", f"<details><summary>Per-layer SQNR of the int8 model ({m.layer_numerics.flow}) against the "
                  "float model, in network order</summary>", "", "| # | " + " | ".join(LAYER_COLUMNS) + " |",
                  "|---:|---|---|---|---:|---:|---|"]
        parts += [f"| {i} | " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
                  for i, row in enumerate(layer_rows(m.layer_numerics))]
        parts += ["", "</details>", ""]
    parts.append(f"- edgeq {m.edgeq_version}, torch {m.versions.get('torch')}, executorch {m.versions.get('executorch')}, "
                 f"onnxruntime {m.versions.get('onnxruntime')}; created {m.created}.")
    return "\n".join(parts) + "\n"


def html(m: Manifest) -> str:
    esc = html_lib.escape
    body = [f"<h1>edgeq: {esc(m.model.source)} → {esc(m.target.name)} ({esc(m.method)})</h1>"]
    for t in tables(m):
        head = "".join(f"<th>{esc(c)}</th>" for c in (*t.columns, "ok"))
        rows = "".join(
            f"<tr class='{ {True: 'pass', False: 'fail', None: ''}[ok] }'>" + "".join(f"<td>{esc(c)}</td>" for c in row)
            + f"<td>{ {True: '✓', False: '✗ FAIL', None: DASH}[ok] }</td></tr>" for row, ok in zip(t.rows, t.ok))
        body.append(f"<h2>{esc(t.title)}</h2><table><tr>{head}</tr>{rows}</table>")
    body.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in notes(m)) + "</ul>")
    body.append("<h2>Plots</h2>")
    for title, png in plots(m):
        body.append(f"<figure><img alt='{esc(title)}' src='data:image/png;base64,{png}'>"
                    f"<figcaption>{esc(title)}</figcaption></figure>")
    body.append("<h2>Environment</h2><table>" + "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in environment(m).items()) + "</table>")
    # Marks each plot with its decoded width, so a headless browser's DOM dump shows the plots rendered.
    script = ("<script>window.addEventListener('load',()=>document.querySelectorAll('img').forEach("
              "i=>i.setAttribute('data-rendered-width',i.naturalWidth)));</script>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>edgeq report</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th{text-align:left}"
            "tr.fail td{background:#fdd}tr.pass td:last-child{color:#080}img{max-width:100%}"
            f"</style></head><body>{''.join(body)}{script}</body></html>\n")


def environment(m: Manifest) -> dict[str, str]:
    env = {"edgeq": m.edgeq_version, "created": m.created, **{k: v for k, v in m.versions.items()},
           "target": f"{m.target.name}: {m.target.description}",
           "quantization": ", ".join(f"{k}={v}" for k, v in m.quantization.to_dict().items())}
    for target in _targets(m):
        r = next((a.targets[target] for a in m.artifacts if target in a.targets and a.targets[target].latency_ms), None)
        if r:
            env[f"ran on ({target})"] = f"{r.machine}, {r.cpu}, {r.threads} thread(s); {r.latency_ms.measured}"
    return env


def plots(m: Manifest) -> list[tuple[str, str]]:
    """(title, base64 PNG): size per format; latency per format and target; accuracy against size;
    instructions per inference when counted."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figures = []
    formats = list(dict.fromkeys(a.format for a in m.artifacts))
    precisions = list(dict.fromkeys(a.precision for a in m.artifacts))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, p in enumerate(precisions):
        sizes = [next((a.bytes / 1e3 for a in m.artifacts if a.format == f and a.precision == p), 0) for f in formats]
        ax.bar([x + i * 0.8 / len(precisions) for x in range(len(formats))], sizes, 0.8 / len(precisions), label=p)
    ax.set_xticks([x + 0.4 - 0.4 / len(precisions) for x in range(len(formats))], [f".{f}" for f in formats])
    ax.set_ylabel("kB")
    ax.legend()
    figures.append(("Artifact size per format, fp32 vs int8", fig))

    latency = [(t, a.key, a.targets[t].latency_ms) for t in _targets(m) for a in m.artifacts
               if t in a.targets and a.targets[t].latency_ms]
    if latency:
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(latency) + 1.2))
        labels = [f"{t}: {key}" for t, key, _ in latency]
        ax.barh(labels, [lat.median for _, _, lat in latency],
                xerr=[[0] * len(latency), [lat.p90 - lat.median for _, _, lat in latency]])
        ax.invert_yaxis()
        ax.set_xlabel("ms per inference (median, bar to p90)")
        where = {lat.measured.split(":")[0] for _, _, lat in latency}
        figures.append((f"Latency per format and target ({' and '.join(sorted(where))}; emulated time is not device "
                        "time)", fig))
    counted = [(t, a.key, a.targets[t].instructions_per_inference) for t in _targets(m) for a in m.artifacts
               if t in a.targets and a.targets[t].instructions_per_inference]
    if counted:
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(counted) + 1.2))
        ax.barh([f"{t}: {key}" for t, key, _ in counted], [n / 1e6 for _, _, n in counted], color="tab:green")
        ax.invert_yaxis()
        ax.set_xlabel("million guest instructions per inference (QEMU insn plugin)")
        figures.append(("Instructions per inference on the emulated CPUs (load-independent)", fig))

    if m.layer_numerics and m.layer_numerics.layers:
        figures.append(layer_figure(m.layer_numerics))

    checked = [a for a in m.artifacts if a.host_check]
    if checked:
        # accuracy where every artifact has one, else agreement, else (no class scores) the worst output's SQNR
        metric = next(name for name in ("accuracy", "top1_agreement", "sqnr_db")
                      if name == "sqnr_db" or all(getattr(a.host_check, name) is not None for a in checked))
        fig, ax = plt.subplots(figsize=(6, 4))
        labels: dict[tuple[str, float], list[Any]] = {}  # artifacts on the same spot share one label
        for a in checked:
            value = getattr(a.host_check, metric)
            if value is None:  # identical outputs: no SQNR to place
                continue
            y = value if metric == "sqnr_db" else 100 * value
            ax.scatter(a.bytes / 1e3, y, marker="o" if a.precision == "int8" else "s")
            labels.setdefault((a.precision, round(y, 4)), []).append(a)
        for (precision, y), group in labels.items():
            text = f"{precision} " + ", ".join(f".{a.format}" for a in group)
            ax.annotate(text, (group[0].bytes / 1e3, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if metric == "accuracy" and m.float_accuracy is not None:
            ax.axhline(100 * m.float_accuracy, linestyle="--", color="grey", label="float model")
            ax.legend()
        ax.set_xlabel("size (kB)")
        ax.set_ylabel({"accuracy": "accuracy (%)", "top1_agreement": "top-1 agreement with the float model (%)",
                       "sqnr_db": "SQNR of the worst output against the float model's (dB)"}[metric])
        title = {"accuracy": "Accuracy", "top1_agreement": "Agreement", "sqnr_db": "Output SQNR"}[metric]
        figures.append((f"{title} against size (host check)", fig))
    return encode(figures)


def layer_figure(numerics: LayerNumerics) -> tuple[str, Any]:
    """SQNR along the network, each op its colour, the three largest falls named, float layers marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    layers = numerics.layers
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.plot(range(len(layers)), [e.sqnr_db if e.sqnr_db is not None else float("nan") for e in layers],
            color="tab:blue", lw=1)
    for op in dict.fromkeys(e.op for e in layers):
        pts = [(i, e.sqnr_db) for i, e in enumerate(layers) if e.op == op and e.sqnr_db is not None]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=12, label=op)
    floats = [i for i, e in enumerate(layers) if e.kept_float]
    for k, i in enumerate(floats):
        ax.axvline(i, color="tab:red", lw=0.8, ls=":", label="float layer (plan)" if k == 0 else None)
        ax.annotate(layers[i].layer or layers[i].module, (i, ax.get_ylim()[1]), textcoords="offset points",
                    xytext=(2, -10), fontsize=7, color="tab:red")
    for e, _ in entry_points(numerics)[:3]:
        ax.annotate(e.module or e.node, (layers.index(e), e.sqnr_db), textcoords="offset points", xytext=(4, -12),
                    fontsize=7)
    ax.set_xlabel("layer output, in network order")
    ax.set_ylabel("SQNR vs float (dB)")
    ax.legend(fontsize=7, ncol=4)
    return (f"Per-layer int8 error ({numerics_source(numerics)}): where SQNR falls, error "
            "enters" + (f"; {len(floats)} layer(s) left float" if floats else ""), fig)


def encode(figures: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """(title, figure) → (title, base64 PNG)."""
    from matplotlib import pyplot as plt

    encoded = []
    for title, fig in figures:
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        encoded.append((title, base64.b64encode(buffer.getvalue()).decode()))
    return encoded


def inspect_html(m: Manifest) -> str:
    """`edgeq inspect --html`: the per-layer plot and table, and the plan, on one page."""
    esc = html_lib.escape
    numerics = m.layer_numerics
    (title, png), = encode([layer_figure(numerics)])
    head = "".join(f"<th>{esc(c)}</th>" for c in ("#", *LAYER_COLUMNS))
    rows = "".join(f"<tr class='{'float' if e.kept_float else ''}'><td>{i}</td>" + "".join(f"<td>{esc(c)}</td>" for c in row)
                   + "</tr>" for i, (e, row) in enumerate(zip(numerics.layers, layer_rows(numerics))))
    plan = f"<p>{esc(plan_note(m.plan))}</p>" if m.plan else "<p>No float layers: every layer is int8.</p>"
    return ("<!doctype html><html><head><meta charset='utf-8'><title>edgeq inspect</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}tr.float td{background:#fee}img{max-width:100%}"
            f"</style></head><body><h1>edgeq inspect: {esc(m.model.source)}</h1>{plan}"
            f"<figure><img alt='{esc(title)}' src='data:image/png;base64,{png}'><figcaption>{esc(title)}</figcaption>"
            f"</figure><table><tr>{head}</tr>{rows}</table></body></html>\n")


def write(folder: Path, m: Manifest | None = None) -> None:
    """report.md and report.html next to the manifest."""
    m = m or Manifest.load(folder)
    write_one(folder / REPORT_MD, markdown(m))
    write_one(folder / REPORT_HTML, html(m))


def write_one(path: Path, text: str) -> None:
    if path.is_dir():
        raise EdgeqError(f"cannot write {path}: it is a folder; pass a file path")
    if not path.parent.is_dir():
        raise EdgeqError(f"cannot write {path}: folder {path.parent} does not exist")
    write_atomic(path, text.encode())


def _targets(m: Manifest) -> list[str]:
    return list(dict.fromkeys(t for a in m.artifacts for t in a.targets))


def _diff(value: float | None) -> str:
    return "not finite" if value is None else "0" if value == 0 else f"{value:.3g}"


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _num(x: float | None) -> str:
    return DASH if x is None else f"{x:.4f}"


def _length(at: LengthCheck) -> str:
    verdict = "failed" if at.passed is False else "ok" if at.passed else "unjudged"
    figures = at.error or f"{_db(at.sqnr_db)}{'' if at.sqnr_db is None else ' dB'}, cos {_num(at.cosine_min)}"
    return f"{at.length} {verdict} ({figures})"


def _cosine(outputs: list) -> str:
    values = [o.cosine_min for o in outputs]
    return DASH if not values or None in values else f"{min(values):.4f}"


def _pct(x: float | None) -> str:
    return DASH if x is None else f"{x:.2%}"


def _db(x: float | None, nonfinite: int = 0) -> str:
    if nonfinite:
        return f"{nonfinite} NaN/inf outputs"
    return "identical" if x is None else f"{x:.1f}"
