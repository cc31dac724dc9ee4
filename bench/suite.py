"""The benchmark run: edgeq and its peers on the same models, measured in one go.

Phases, in an order that keeps timings honest on a small machine:
1. exports (edgeq, the plain ExecuTorch script, onnxruntime's quantize_static), one at a time,
   each in its own process: wall time and peak RSS;
2. host latency of every artifact, one at a time, 1 thread, nothing else running;
3. accuracy / agreement on held-out images;
4. emulated arm64 CPUs (QEMU): instructions per inference, which do not depend on load, so these
   runs go in parallel, one per core; their emulated times are labelled as such.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import numpy as np

from bench import measure, weights
from edgeq.data import FASHION_MNIST, Preprocess, open_images
from edgeq.manifest import Manifest
from edgeq.qemu.provision import setup as setup_target

ROOT = Path(__file__).resolve().parent.parent
EMULATED_CPUS = {"cortex-a53": "Cortex-A53", "cortex-a72": "Cortex-A72", "cortex-a76": "Cortex-A76",
                 "neoverse-n1": "Neoverse-N1"}
ORT_VARIANTS = {"ORT QDQ s8s8 (plain)": ("qdq", "int8"), "ORT QDQ u8s8": ("qdq", "uint8"),
                "ORT QOperator u8s8": ("qoperator", "uint8")}
Log = Callable[[str], None]


def models(quick: bool, work: Path) -> list[dict]:
    builtin = {"name": "builtin", "source": "builtin", "weights": "-", "calib": 256, "check": None}
    if quick:
        return [builtin]
    tv = [{"name": n, "source": f"torchvision:{n}", "weights": str(weights.bn_calibrated(n, work / "weights")),
           "calib": 64, "check": 100} for n in ("mobilenet_v2", "resnet18")]
    return [builtin, *tv]


def run(work: Path, quick: bool = False, log: Log = print) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    started = datetime.now(timezone.utc)
    results = {"created": started.isoformat(timespec="seconds"), "quick": quick, "machine": machine(),
               "models": {}}
    for m in models(quick, work):
        log(f"{m['name']}: exports")
        results["models"][m["name"]] = export_all(m, work, quick, log)
    for m in models(quick, work):
        log(f"{m['name']}: host latency")
        host_latency(results["models"][m["name"]], quick)
        log(f"{m['name']}: accuracy / agreement")
        quality(m, results["models"][m["name"]], work)
    log("builtin: emulated arm64 CPUs (instruction counts)")
    results["models"]["builtin"]["emulated"] = emulated(work, quick, log)
    results["wall_s"] = round((datetime.now(timezone.utc) - started).total_seconds(), 1)
    return results


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text()
    return {"cpu": cpu, "cores": os.cpu_count(), "arch": platform.machine(), "python": platform.python_version(),
            "isa": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f" {f}" in flags],
            "versions": {p: version(p) for p in ("edgeq", "torch", "torchao", "executorch", "onnxruntime", "onnx")}}


def edgeq_export(m: dict, out: Path, log: Path, *args: str) -> dict:
    cmd = measure.python("edgeq", "export", "--out", str(out), "--no-validate", "-q",
                         "--calib-samples", str(m["calib"]), *args)
    if m["source"] != "builtin":
        cmd += ["--model", m["source"], "--weights", m["weights"]]
    if m["check"]:
        cmd += ["--check-samples", str(m["check"])]
    # Exit code 1 is a failed gate (the torchvision models' random weights miss the agreement
    # threshold): the artifacts and the manifest are written all the same.
    return measure.command(cmd, log, accept=(0, 1))


def export_all(m: dict, work: Path, quick: bool, log: Log) -> dict:
    name, d, logs = m["name"], work / m["name"], work / "logs"
    d.mkdir()
    r: dict = {"source": m["source"], "exports": {}}
    # edgeq, every format and precision, for the host (x86 backend for .onnx/.ptl; .pte is always XNNPACK).
    r["exports"]["edgeq full (x86_64)"] = edgeq_export(m, d / "x86_64", logs / f"{name}.x86_64.log", "--target",
                                                         "x86_64")
    # The same work as the plain script: int8 .pte only (edgeq adds its host check).
    r["exports"]["edgeq int8 .pte"] = edgeq_export(m, d / "pte", logs / f"{name}.pte.log", "--target", "arm64",
                                                   "--formats", "pte", "--precisions", "int8")
    if name == "builtin":
        r["exports"]["edgeq full (arm64)"] = edgeq_export(m, d / "arm64", logs / f"{name}.arm64.log", "--target",
                                                            "arm64")
        qat = ["--method", "qat", "--formats", "pte,onnx", "--precisions", "int8"]
        if quick:
            qat += ["--epochs", "1", "--train-samples", "4096"]
        log(f"{name}: QAT export")
        r["exports"]["edgeq QAT int8 (arm64)"] = edgeq_export(m, d / "qat", logs / f"{name}.qat.log", "--target",
                                                                "arm64", *qat)
    manifest = Manifest.load(d / "x86_64")
    r["parameters"] = manifest.model.parameters
    r["input_shape"] = manifest.model.input_shape
    r["artifacts"] = {f"edgeq {a.key}": {"path": str(d / "x86_64" / a.path), "format": a.format,
                                         "precision": a.precision, "bytes": a.bytes,
                                         "engine": manifest.quantization.backend} for a in manifest.artifacts}
    log(f"{name}: peers")
    plain = d / "plain_executorch.pte"
    r["exports"]["plain ExecuTorch script"] = measure.command(
        measure.python("bench.peers.plain_executorch", m["source"], m["weights"], str(m["calib"]), str(plain)),
        work / "logs" / f"{name}.plain_executorch.log")
    r["artifacts"]["plain ExecuTorch int8 .pte"] = {"path": str(plain), "format": "pte", "precision": "int8",
                                                    "bytes": plain.stat().st_size, "engine": "qnnpack"}
    fp32_onnx = d / "x86_64" / manifest.artifact("onnx", "fp32").path
    for label, (fmt, activation) in ORT_VARIANTS.items():
        out = d / f"ort_{fmt}_{activation}.onnx"
        r["exports"][label] = measure.command(
            measure.python("bench.peers.ort_quantize", m["source"], str(fp32_onnx), str(m["calib"]), str(out), fmt,
                           activation), work / "logs" / f"{name}.{out.stem}.log")
        r["artifacts"][f"{label} int8 .onnx"] = {"path": str(out), "format": "onnx", "precision": "int8",
                                                 "bytes": out.stat().st_size, "engine": "x86"}
    return r


def host_latency(r: dict, quick: bool) -> None:
    with np.load(Path(r["artifacts"]["edgeq fp32 .onnx"]["path"]).parent / "reference.npz") as ref:
        x = ref["inputs"][:1]
    for a in r["artifacts"].values():
        a["host"] = measure.host_latency(a["format"], Path(a["path"]), x, a["engine"], seconds=0.5 if quick else 2.0)


def quality(m: dict, r: dict, work: Path) -> None:
    """Builtin: accuracy on the Fashion-MNIST test set, every artifact on the same images. Torchvision
    models (weights not trained): top-1 agreement with the float model on the held-out images."""
    if m["source"] == "builtin":
        test = open_images(FASHION_MNIST, "test")
        shape = tuple(r["input_shape"])
        inputs = test.batch(Preprocess.default_for(shape, grayscale_stats=True), range(len(test)))
        labels = test.labels
        r["eval"] = f"{test.description}: accuracy"
        for key in ("arm64", "qat"):
            manifest = Manifest.load(work / "builtin" / key)
            for a in manifest.artifacts:
                r["artifacts"].setdefault(f"edgeq {'QAT ' if key == 'qat' else ''}{a.key} (arm64)", {
                    "path": str(work / "builtin" / key / a.path), "format": a.format, "precision": a.precision,
                    "bytes": a.bytes, "engine": manifest.quantization.backend})
    else:
        with np.load(work / m["name"] / "x86_64" / "reference.npz") as ref:
            inputs, reference = ref["inputs"], ref["outputs"]
        labels = None
        r["eval"] = f"top-1 agreement with the float model on {len(inputs)} held-out images"
    for a in r["artifacts"].values():
        out = measure.outputs(a["format"], Path(a["path"]), inputs, a["engine"])
        if labels is not None:
            a["accuracy"] = float(np.mean(out.argmax(1) == labels))
        else:
            a["agreement"] = float(np.mean(out.argmax(1) == reference.argmax(1)))


def emulated(work: Path, quick: bool, log: Log) -> dict:
    """Instructions per inference and emulated time of the builtin arm64 artifacts (.pte, .onnx) on
    each emulated CPU: `edgeq validate --count-instructions` with a target file per CPU."""
    setup_target(with_plugins=True, log=lambda line: log(f"  targets setup: {line}"))
    export = work / "builtin" / "arm64"
    cpus = ["cortex-a53", "cortex-a76"] if quick else list(EMULATED_CPUS)

    def one(cpu: str) -> tuple[str, dict]:
        folder, spec = work / "emulated" / cpu, work / "emulated" / f"{cpu}.toml"
        shutil.copytree(export, folder)
        spec.write_text(f'name = "{cpu}"\narch = "aarch64"\nqemu_cpu = "{cpu}"\nbackend = "qnnpack"\n'
                        'runtimes = ["pte", "onnx"]\n')
        measure.command(measure.python("edgeq", "validate", str(folder), "--target", str(spec), "--count-instructions",
                                       "--samples", "20", "--runs", "5", "-q"), work / "logs" / f"emulated.{cpu}.log",
                        accept=(0, 1))
        rows = {}
        for a in Manifest.load(folder).artifacts:
            t = a.targets.get(cpu)
            if t and t.latency_ms:
                rows[a.key] = {"instructions": t.instructions_per_inference, "emulated_ms": t.latency_ms.median,
                               "measured": t.latency_ms.measured, "cpu_seen": t.cpu}
        return cpu, rows

    (work / "emulated").mkdir()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(pool.map(one, cpus))


def save(results: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for r in results["models"].values():  # paths into the scratch folder mean nothing in the repo
        for a in r["artifacts"].values():
            a.pop("path", None)
    text = json.dumps(results, indent=2) + "\n"
    stamp = results["created"][:19].replace(":", "").replace("-", "")
    (folder / f"{'quick-' if results['quick'] else ''}{stamp}.json").write_text(text)
    latest = folder / ("latest-quick.json" if results["quick"] else "latest.json")
    latest.write_text(text)
    return latest
