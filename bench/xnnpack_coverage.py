"""Ops left outside the XNNPACK delegate in torchvision's mobile nets, and what bringing them in
(edgeq.export.delegable) is worth: portable ops, delegated subgraphs, host latency (1 thread) and
arm64 instructions per inference (QEMU, cortex-a76: independent of load), without and with the
rewrites, fp32 and int8 (edgeq's static int8, PT2E XNNPACK). Then the fp32 ÷ int8 instruction
ratio of every format (.pte, .onnx, .ptl) for mobilenet_v2 and the built-in model. Weights: random
init with BatchNorm statistics re-estimated on real images (bench.weights); ops and instruction
counts do not depend on training.

    .venv/bin/python -m bench.xnnpack_coverage            # ~40 min on 2 cores; results/xnnpack_coverage.json
    .venv/bin/python -m bench.xnnpack_coverage --ratios   # only the fp32 ÷ int8 ratios; results/instruction_ratios.json
"""

from __future__ import annotations

import json
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bench import measure, weights
from bench.peers.calibration import calibration_batches, load
from edgeq.config import QuantRecipe
from edgeq.export import pte
from edgeq.qemu import native
from edgeq.qemu.provision import setup as setup_target
from edgeq.quantize import quantize_static
from edgeq.quantize.weights import ready_for_int8

ROOT = Path(__file__).resolve().parent.parent
NETS = ("mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x1_0")
CPU = "cortex-a76"  # the android-arm64 target's
COUNTED_RUNS = 5


def instructions(path: Path, x: np.ndarray | list[np.ndarray], work: Path, counted_runs: int = COUNTED_RUNS) -> int:
    """Guest instructions per inference under qemu-aarch64 (-cpu CPU): runs=N minus runs=0, one thread,
    with the runners `edgeq validate` uses there (native for .pte/.ptl, Python for .onnx). `x`: the
    input, or the model's inputs in order (one sample each)."""
    emu = setup_target(with_plugins=True)
    inputs = []
    for i, array in enumerate([x] if isinstance(x, np.ndarray) else x):
        inputs.append(str(work / f"{path.stem}.x{i}.npy"))
        np.save(inputs[-1], array)
    counts = []
    for runs in (counted_runs, 0):
        log = work / f"{path.stem}.{runs}.log"
        job = {"artifacts": [{"format": path.suffix[1:], "path": str(path), "outputs": None,
                              "result": str(work / f"{path.stem}.{runs}.result.json")}],
               "engine": "qnnpack", "threads": 1, "inputs": inputs, "warmup": 1, "runs": runs}
        proc = native.run_emulated(job, work / f"{path.stem}.{runs}.json", emu, CPU, 1, 3600, log)
        assert proc.returncode == 0, proc.stderr[-2000:]
        counts.append(int(re.findall(r"insns:\s*(\d+)", log.read_text())[-1]))
    return round((counts[0] - counts[1]) / counted_runs)


def main(ratios_only: bool = False) -> None:
    work = Path(tempfile.mkdtemp(prefix="edgeq-bench-xnnpack-"))
    rows, jobs = [], []
    for net in () if ratios_only else NETS:
        model, shape, calib = load_net(net)
        for precision, m in (("fp32", model), ("int8", int8_models(model, shape, calib)["xnnpack"])):
            for rewrite in (False, True):
                path = work / f"{net}_{precision}_{'edgeq' if rewrite else 'plain'}.pte"
                details = pte.export(m, shape, path, rewrite=rewrite)
                row = {"net": net, "precision": precision, "lowering": "edgeq" if rewrite else "ExecuTorch alone",
                       "portable_ops": details["portable_ops"], "reasons": details.get("portable_reasons", {}),
                       "rewrites": details.get("rewrites", {}), "delegated_subgraphs": details["delegated_subgraphs"],
                       "bytes": path.stat().st_size,
                       "host": measure.host_latency("pte", path, calib[:1], seconds=2.0)}
                rows.append(row)
                jobs.append((row, path, calib[:1]))
                print(net, precision, row["lowering"], row["portable_ops"], f"{row['host']['median_ms']:.2f} ms",
                      flush=True)
    ratios = {}
    for net in ("mobilenet_v2", "builtin"):
        ratios[net] = {}
        model, shape, calib = load_net(net)
        for fmt, precision, path in every_format(net, model, shape, calib, work):
            row = {"net": net, "format": fmt, "precision": precision, "lowering": "edgeq"}
            ratios[net].setdefault(fmt, {})[precision] = row
            jobs.append((row, path, calib[:1]))
    with ThreadPoolExecutor(2) as pool:  # counts do not depend on load: both cores
        for row, count in zip([j[0] for j in jobs], pool.map(lambda j: instructions(j[1], j[2], work), jobs)):
            row[f"instructions_{CPU}"] = count
            print(row["net"], row["precision"], row["lowering"], f"{count / 1e6:.1f} M instructions", flush=True)
    ratio_rows = {net: {fmt: {**{p: r[f"instructions_{CPU}"] for p, r in by.items()},
                              "fp32_over_int8": round(by["fp32"][f"instructions_{CPU}"] /
                                                      by["int8"][f"instructions_{CPU}"], 2)}
                        for fmt, by in formats.items()} for net, formats in ratios.items()}
    out = ROOT / "bench" / "results" / ("instruction_ratios.json" if ratios_only else "xnnpack_coverage.json")
    out.write_text(json.dumps({"cpu": CPU, "rows": rows, "fp32_over_int8_instructions": ratio_rows}, indent=1) + "\n")
    print(table(rows))
    print(json.dumps(ratio_rows, indent=1))
    print(f"saved {out}")


def load_net(net: str) -> tuple[torch.nn.Module, tuple[int, ...], np.ndarray]:
    """The model (torchvision's with bench weights, or the built-in one), its input shape, 32
    calibration images."""
    source = "builtin" if net == "builtin" else f"torchvision:{net}"
    model, shape = load(source, "-" if net == "builtin" else
                        str(weights.bn_calibrated(net, ROOT / "bench" / ".work" / "weights")))
    return model, shape, np.concatenate(list(calibration_batches(source, shape, 32)))


def int8_models(model: torch.nn.Module, shape: tuple[int, ...], calib: np.ndarray,
                flows: tuple[str, ...] = ("xnnpack",)) -> dict[str, torch.nn.Module]:
    """edgeq's static int8 (weight steps, then each flow calibrated on `calib`)."""
    recipe = QuantRecipe(backend="qnnpack", calib_samples=len(calib))
    source, _ = ready_for_int8(model, recipe, torch.from_numpy(calib))
    return {flow: quantize_static(flow, source, shape, recipe, lambda: (calib[i:i + 8] for i in range(0, len(calib), 8)))
            for flow in flows}


def every_format(net: str, model: torch.nn.Module, shape: tuple[int, ...], calib: np.ndarray,
                 work: Path) -> list[tuple[str, str, Path]]:
    """int8 and fp32 .pte, .onnx (edgeq's PT2E XNNPACK int8) and .ptl (edgeq's FX qnnpack int8)."""
    from edgeq.export import onnx, ptl

    int8 = int8_models(model, shape, calib, ("xnnpack", "fx"))
    paths = []
    for precision in ("fp32", "int8"):
        for fmt in ("pte", "onnx", "ptl"):
            m = model if precision == "fp32" else int8["fx" if fmt == "ptl" else "xnnpack"]
            path = work / f"{net}_{fmt}_{precision}.{fmt}"
            paths.append((fmt, precision, path))
            if fmt == "pte":
                pte.export(m, shape, path)
            elif fmt == "onnx":
                onnx.export(m, shape, path, quantized=precision == "int8")
            else:
                ptl.export(m, shape, path, "qnnpack")
    return paths


def table(rows: list[dict]) -> str:
    lines = ["| net | precision | lowering | ops outside XNNPACK | subgraphs | host ms (1 thread) | "
             f"{CPU} instructions/inference |", "|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        ops = ", ".join(f"{k} ×{v}" for k, v in r["portable_ops"].items()) or "none"
        count = r.get(f"instructions_{CPU}")
        lines.append(f"| {r['net']} | {r['precision']} | {r['lowering']} | {ops} | {r['delegated_subgraphs']} | "
                     f"{r['host']['median_ms']:.2f} | {f'{count / 1e6:.1f} M' if count else '–'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    main(ratios_only="--ratios" in sys.argv[1:])
