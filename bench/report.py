"""Results JSON → the Markdown tables in README.md and bench/results/ratios.png."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
FORMATS = ("pte", "onnx", "ptl")
RUNTIMES = {"pte": "ExecuTorch XNNPACK", "onnx": "onnxruntime", "ptl": "lite interpreter"}


def _ms(h: dict) -> str:
    return f"{h['median_ms']:.3g} ms ({h['p10_ms']:.3g}–{h['p90_ms']:.3g})"


def _kb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def tables(results: dict) -> str:
    m = results["machine"]
    out = [f"Measured {results['created'][:10]} on {m['cpu']} ({m['cores']} cores, {', '.join(m['isa'])}), "
           f"Python {m['python']}, edgeq {m['versions']['edgeq']}, torch {m['versions']['torch']}, executorch "
           f"{m['versions']['executorch']}, onnxruntime {m['versions']['onnxruntime']}; whole run "
           f"{results['wall_s'] / 60:.1f} min (`python -m bench`). Host latencies: 1 thread, median (p10–p90).\n"]

    out += ["**Size** (int8 ÷ fp32; the floor is 1 byte ÷ 4 bytes per parameter)\n",
            "| model | parameters | floor int8 / fp32 | .pte | .onnx | .ptl | plain ExecuTorch .pte | ORT QDQ .onnx |",
            "|---|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        a, p = r["artifacts"], r["parameters"]
        cells = []
        for f in FORMATS:
            i8, f32 = a[f"edgeq int8 .{f}"]["bytes"], a[f"edgeq fp32 .{f}"]["bytes"]
            cells.append(f"{_kb(i8)} / {_kb(f32)} = {i8 / f32:.3f}")
        fp32_pte, fp32_onnx = a["edgeq fp32 .pte"]["bytes"], a["edgeq fp32 .onnx"]["bytes"]
        plain = a["plain ExecuTorch int8 .pte"]["bytes"]
        ort = a["ORT QDQ s8s8 (plain) int8 .onnx"]["bytes"]
        out.append(f"| {name} | {p:,} | {_kb(p)} / {_kb(4 * p)} = 0.250 | {' | '.join(cells)} | "
                   f"{_kb(plain)} = {plain / fp32_pte:.3f} | {_kb(ort)} = {ort / fp32_onnx:.3f} |")

    out += ["", "**Host latency** (x86-64 host, 1 thread; speed-up = fp32 ÷ int8 median)\n",
            "| model | runtime | fp32 | int8 (edgeq) | speed-up | peer int8 | peer speed-up |", "|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        a = r["artifacts"]
        for f in FORMATS:
            f32, i8 = a[f"edgeq fp32 .{f}"]["host"], a[f"edgeq int8 .{f}"]["host"]
            peers = [("plain ExecuTorch", a["plain ExecuTorch int8 .pte"])] if f == "pte" else \
                [(k.removesuffix(" int8 .onnx"), v) for k, v in a.items() if k.startswith("ORT")] if f == "onnx" else []
            first = True
            for label, peer in peers or [(None, None)]:
                row = [name, RUNTIMES[f], _ms(f32), _ms(i8), f"{f32['median_ms'] / i8['median_ms']:.2f}×"] if first \
                    else ["", "", "", "", ""]
                row += [f"{label}: {_ms(peer['host'])}", f"{f32['median_ms'] / peer['host']['median_ms']:.2f}×"] \
                    if peer else ["–", "–"]
                out.append("| " + " | ".join(row) + " |")
                first = False

    b = results["models"]["builtin"]
    out += ["", f"**Accuracy** (built-in model; {b['eval']})\n",
            "| artifact | accuracy | | peer | accuracy |", "|---|---|---|---|---|"]
    a = b["artifacts"]
    rows = [("fp32 .pte (arm64 export)", a["edgeq fp32 .pte (arm64)"]["accuracy"])]
    rows += [(f"static int8 .{f} (arm64)", a[f"edgeq int8 .{f} (arm64)"]["accuracy"]) for f in FORMATS]
    rows += [(f"QAT int8 .{f} (arm64)", a[f"edgeq QAT int8 .{f} (arm64)"]["accuracy"]) for f in ("pte", "onnx")]
    peers = [("plain ExecuTorch int8 .pte", a["plain ExecuTorch int8 .pte"]["accuracy"])]
    peers += [(k, v["accuracy"]) for k, v in a.items() if k.startswith("ORT")]
    for i in range(max(len(rows), len(peers))):
        left = rows[i] if i < len(rows) else ("", None)
        right = peers[i] if i < len(peers) else ("", None)
        out.append(f"| {left[0]} | {_pct(left[1]) if left[0] else ''} | | {right[0]} | "
                   f"{_pct(right[1]) if right[0] else ''} |")
    out += ["", "Torchvision models (random weights with re-estimated BatchNorm: agreement, not accuracy): "
            + "; ".join(f"{n}: edgeq int8 .pte {_pct(r['artifacts']['edgeq int8 .pte']['agreement'])}, .onnx "
                        f"{_pct(r['artifacts']['edgeq int8 .onnx']['agreement'])}, plain ExecuTorch "
                        f"{_pct(r['artifacts']['plain ExecuTorch int8 .pte']['agreement'])}, ORT QDQ "
                        f"{_pct(r['artifacts']['ORT QDQ s8s8 (plain) int8 .onnx']['agreement'])}"
                        for n, r in results["models"].items() if n != "builtin")]

    out += ["", "**Emulated arm64 CPUs** (built-in model, arm64 export; QEMU user mode: instructions per "
            "inference, and emulated time, which is not device time)\n",
            "| CPU | int8 .pte | fp32 .pte | fp32 ÷ int8 | int8 .onnx | fp32 .onnx | fp32 ÷ int8 |",
            "|---|---|---|---|---|---|---|"]
    for cpu, rows in b.get("emulated", {}).items():
        cells = [cpu]
        for f in ("pte", "onnx"):
            i8, f32 = rows.get(f"int8 .{f}", {}), rows.get(f"fp32 .{f}", {})
            if i8.get("instructions") and f32.get("instructions"):
                cells += [f"{i8['instructions'] / 1e6:.2f} M, {i8['emulated_ms']:.2f} ms",
                          f"{f32['instructions'] / 1e6:.2f} M, {f32['emulated_ms']:.2f} ms",
                          f"{f32['instructions'] / i8['instructions']:.2f}×"]
            else:
                cells += ["–", "–", "–"]
        out.append("| " + " | ".join(cells) + " |")

    out += ["", "**Export time and memory** (each in its own process, imports included)\n",
            "| model | edgeq full export (6 artifacts + host check) | edgeq int8 .pte only | plain ExecuTorch script "
            "| ORT quantize_static (plain) | peak RSS, edgeq full |", "|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        e = r["exports"]
        out.append(f"| {name} | {e['edgeq full (x86_64)']['wall_s']:.0f} s | {e['edgeq int8 .pte']['wall_s']:.0f} s | "
                   f"{e['plain ExecuTorch script']['wall_s']:.0f} s | {e['ORT QDQ s8s8 (plain)']['wall_s']:.0f} s | "
                   f"{e['edgeq full (x86_64)']['peak_rss_mb'] / 1024:.2f} GB |")
    return "\n".join(out) + "\n"


def update_readme(readme: Path, results: dict) -> None:
    text = readme.read_text()
    block = f"{BEGIN}\n{tables(results)}\n![ratios](bench/results/ratios.png)\n{END}"
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text += f"\n## Benchmarks\n\n{block}\n"
    readme.write_text(text)


def plot(results: dict, path: Path) -> None:
    """Two panels: int8 ÷ fp32 size per format (with the 0.25 floor) and fp32 ÷ int8 host speed-up
    per runtime, edgeq beside its peers, per model."""
    names = list(results["models"])
    fig, (size_ax, speed_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / 5
    for k, (label, key) in enumerate([(".pte", "pte"), (".onnx", "onnx"), (".ptl", "ptl")]):
        ratios = [results["models"][n]["artifacts"][f"edgeq int8 .{key}"]["bytes"]
                  / results["models"][n]["artifacts"][f"edgeq fp32 .{key}"]["bytes"] for n in names]
        size_ax.bar([i + k * width for i in range(len(names))], ratios, width, label=f"edgeq {label}")
    peers = [("plain ExecuTorch .pte", "plain ExecuTorch int8 .pte", "pte"),
             ("ORT QDQ .onnx", "ORT QDQ s8s8 (plain) int8 .onnx", "onnx")]
    for k, (label, key, fmt) in enumerate(peers, start=3):
        ratios = [results["models"][n]["artifacts"][key]["bytes"]
                  / results["models"][n]["artifacts"][f"edgeq fp32 .{fmt}"]["bytes"] for n in names]
        size_ax.bar([i + k * width for i in range(len(names))], ratios, width, label=label, hatch="//")
    size_ax.axhline(0.25, color="black", linestyle="--", linewidth=1, label="floor (1 B / 4 B)")
    size_ax.set_xticks([i + 2 * width for i in range(len(names))], names)
    size_ax.set_ylabel("int8 size ÷ fp32 size (lower is better)")
    size_ax.legend(fontsize=7)
    series = [("edgeq .pte", "edgeq int8 .pte", "pte"), ("edgeq .onnx", "edgeq int8 .onnx", "onnx"),
              ("edgeq .ptl", "edgeq int8 .ptl", "ptl"), ("plain ExecuTorch .pte", "plain ExecuTorch int8 .pte", "pte"),
              ("ORT QDQ s8s8", "ORT QDQ s8s8 (plain) int8 .onnx", "onnx"),
              ("ORT QOperator u8s8", "ORT QOperator u8s8 int8 .onnx", "onnx")]
    width = 0.8 / len(series)
    for k, (label, key, fmt) in enumerate(series):
        ups = [results["models"][n]["artifacts"][f"edgeq fp32 .{fmt}"]["host"]["median_ms"]
               / results["models"][n]["artifacts"][key]["host"]["median_ms"] for n in names]
        speed_ax.bar([i + k * width for i in range(len(names))], ups, width, label=label,
                     hatch="//" if not key.startswith("edgeq") else None)
    speed_ax.axhline(1.0, color="black", linewidth=1)
    speed_ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names)
    speed_ax.set_ylabel("host speed-up, fp32 ÷ int8 median (higher is better)")
    speed_ax.legend(fontsize=7)
    fig.suptitle(f"edgeq vs peers — {results['machine']['cpu']}, 1 thread, {results['created'][:10]}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
