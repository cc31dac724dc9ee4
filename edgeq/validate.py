"""Validation against the float model: each artifact run by its own runtime, compared output by
output: on the host right after export, and on the target (QEMU aarch64 or the host) by `validate`."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from edgeq import procs, report, runner
from edgeq.errors import EdgeqError
from edgeq.manifest import MANIFEST, Artifact, HostCheck, Manifest, verify_file
from edgeq.paths import remove_stale, scratch_prefix
from edgeq.provision import Emulator, emulator
from edgeq.targets import Target, Thresholds, load_target, target_of

SCRATCH = "edgeq-validate-"  # in the temp folder: inputs, jobs and outputs of one validation

# fp32 artifacts must reproduce the float model almost exactly; int8 ones are held to the target.
FP32_MIN_SQNR_DB = 40.0
# The accuracy gate needs enough labelled images: on 100, one image is already a whole point.
MIN_ACCURACY_SAMPLES = 1000
# Instruction counting runs about this many emulated seconds of inferences (10 to 500 of them).
COUNT_SECONDS = 5.0


def top1_agreement(reference: np.ndarray, outputs: np.ndarray) -> float:
    return float(np.mean(reference.argmax(-1) == outputs.argmax(-1)))


def sqnr_db(reference: np.ndarray, outputs: np.ndarray) -> float | None:
    """Signal-to-quantization-noise ratio of the outputs in dB; None when they are bit-identical
    (infinite SQNR, which JSON cannot carry)."""
    ref = reference.astype(np.float64)
    noise = float(np.sum((ref - outputs) ** 2))
    if noise == 0.0:
        return None
    signal = max(float(np.sum(ref ** 2)), float(np.finfo(np.float64).tiny))  # all-zero reference: very negative
    return 10.0 * float(np.log10(signal / noise))


def accuracy(outputs: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float(np.mean(outputs.argmax(-1) == labels))


def compare(reference: np.ndarray, outputs: np.ndarray, labels: np.ndarray | None, precision: str,
            thresholds: Thresholds, method: str = "static") -> HostCheck:
    """Agreement, SQNR, max abs error and accuracy of `outputs` against the float model's `reference`,
    and whether they pass: the gates applied are listed in `HostCheck.gates`."""
    nonfinite = int(np.size(outputs) - np.count_nonzero(np.isfinite(outputs)))
    check = HostCheck(samples=int(len(reference)), top1_agreement=top1_agreement(reference, outputs),
                      sqnr_db=None if nonfinite else sqnr_db(reference, outputs),
                      max_abs_err=None if nonfinite else float(np.max(np.abs(reference - outputs))) if len(reference)
                      else 0.0, accuracy=accuracy(outputs, labels), nonfinite_outputs=nonfinite)
    sqnr = float("inf") if check.sqnr_db is None else check.sqnr_db
    if nonfinite:  # NaN or inf: no SQNR to judge, and the artifact fails whatever its top-1 says
        gates = {"outputs are finite": False}
    elif precision == "fp32":
        gates = {f"sqnr_db >= {FP32_MIN_SQNR_DB:g}": sqnr >= FP32_MIN_SQNR_DB}
    else:
        gates = {f"top1_agreement >= {thresholds.min_top1_agreement:g}":
                 check.top1_agreement >= thresholds.min_top1_agreement}
        if method == "static":
            gates[f"sqnr_db >= {thresholds.min_sqnr_db:g}"] = sqnr >= thresholds.min_sqnr_db
        float_accuracy = accuracy(reference, labels)
        if float_accuracy is not None and check.accuracy is not None and len(labels) >= MIN_ACCURACY_SAMPLES:
            gates[f"accuracy >= float - {thresholds.max_accuracy_drop:g}"] = \
                check.accuracy >= float_accuracy - thresholds.max_accuracy_drop
    check.gates = list(gates)
    check.passed = all(gates.values())
    return check


# ---------------------------------------------------------------------------------------------
# On the target: every artifact of an export run by edgeq/runner.py inside qemu-aarch64 (or on the
# host for host targets), its outputs compared with the float model's, its latency measured.

def validate(folder: str | Path, target: str | Path | None = None, *, runs: int = 20, warmup: int = 3,
             threads: int = 1, samples: int | None = None, count_instructions: bool = False,
             timeout: float = 900.0, thresholds: dict[str, float] | None = None,
             progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """Run each artifact of `folder` on `target` (default: the export's), compare it with the float
    model's outputs in reference.npz, time it, and merge the results into manifest.json under
    artifacts[].targets[<target>]. Returns {artifact key: result}. Raises EdgeqError for bad input;
    an artifact that fails or crashes is recorded as failed, the others still run."""
    started = time.perf_counter()
    folder = Path(folder)
    manifest = Manifest.load(folder)
    spec = load_target(target) if target else target_of(manifest.target, f"{folder / MANIFEST}: target")
    limits = replace(spec.thresholds, **(thresholds or {}))
    if runs < 1 or threads < 1 or warmup < 0 or (samples is not None and samples < 1):
        raise EdgeqError("--runs, --threads and --samples must be at least 1 (--warmup at least 0)")
    if manifest.reference is None:
        raise EdgeqError(f"{folder / MANIFEST} has no reference inputs (an export from before edgeq validate): re-export")
    for entry in (manifest.reference, *[asdict(a) for a in manifest.artifacts]):
        verify_file(folder, entry["path"], entry["sha256"])
    if spec.arch == "aarch64" and platform.machine() != "aarch64":
        emu = emulator(spec.name, with_plugins=count_instructions)
    elif spec.arch != platform.machine():
        raise EdgeqError(f"target {spec.name} is {spec.arch} and runs on the host, but this host is "
                         f"{platform.machine()}: validate on an {spec.arch} machine, or pick an emulated target")
    elif count_instructions:
        raise EdgeqError(f"--count-instructions needs an emulated target; {spec.name} runs on the host")
    else:
        emu = None
    with np.load(folder / manifest.reference["path"]) as ref:
        n = min(samples or len(ref["inputs"]), len(ref["inputs"]))
        inputs, expected = ref["inputs"][:n], ref["outputs"][:n]
        labels = ref["labels"][:n] if "labels" in ref.files else None
    engine = manifest.quantization.get("backend", "qnnpack")

    artifacts = [a for a in manifest.artifacts if a.format in spec.runtimes]
    task = progress.add_task(f"validating on {spec.name}", total=len(artifacts)) if progress else None
    results: dict[str, dict[str, Any]] = {}
    remove_stale(Path(tempfile.gettempdir()), SCRATCH)
    with tempfile.TemporaryDirectory(prefix=scratch_prefix(SCRATCH)) as tmp:
        work = Path(tmp)
        np.save(work / "inputs.npy", inputs)
        for a in artifacts:
            if progress:
                progress.update(task, description=f"validating {a.key} on {spec.name}")
            result = _on_target(a, folder, work, spec, emu, engine, threads, warmup, runs, timeout)
            if "error" not in result:
                outputs = np.load(work / f"{a.precision}_{a.format}.out.npy")
                check = compare(expected, outputs, labels, a.precision, limits, manifest.method)
                result["check"] = asdict(check)
                result["passed"] = bool(check.passed)
                if count_instructions:
                    n = int(np.clip(COUNT_SECONDS * 1e3 / result["latency_ms"]["median"], 10, 500))
                    result["instructions_per_inference"] = _instructions(a, folder, work, spec, emu, engine, timeout, n)
                    result["instructions_counted_over"] = n
            results[a.key] = result
            a.targets[spec.name] = result
            if progress:
                progress.advance(task)
    manifest.timings_s[f"validate_{spec.name}"] = round(time.perf_counter() - started, 3)
    manifest.write(folder)
    report.write(folder, manifest)
    return results


def _on_target(a: Artifact, folder: Path, work: Path, spec: Target, emu: Emulator | None, engine: str,
               threads: int, warmup: int, runs: int, timeout: float) -> dict[str, Any]:
    """One runner process per artifact: a crash or hang loses that artifact only."""
    stem = f"{a.precision}_{a.format}"
    job = _job(a, folder, work, stem, engine, threads, warmup, runs, outputs=True)
    started = time.perf_counter()
    proc = _run_runner(job, work / f"{stem}.job.json", spec, emu, threads, timeout)
    where = "emulated" if emu else "host"
    result: dict[str, Any] = {"target": spec.name, "where": where, "qemu_cpu": spec.qemu_cpu if emu else None,
                              "threads": threads,
                              "validated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if isinstance(proc, str) or proc.returncode != 0 or not Path(job["result"]).is_file():
        detail = proc if isinstance(proc, str) else how_it_ended(proc)
        return {**result, "passed": False, "error": f"runner failed on {spec.name}: {detail}"}
    seen = json.loads(Path(job["result"]).read_text())
    latencies = np.array(seen["latencies_ms"])
    where, label = measured_where(emu is not None, spec, seen)
    return {**result, "where": where, "machine": seen["machine"], "cpu": seen["cpu"], "cpu_features": seen["cpu_features"],
            "python": seen["python"], "import_s": round(seen["import_s"], 3), "load_s": round(seen["load_s"], 4),
            # Under QEMU this is the emulator process's peak, translation buffers included.
            "peak_rss_mb": round(seen["peak_rss_mb"], 1),
            "latency_ms": {"median": float(np.median(latencies)), "p90": float(np.percentile(latencies, 90)),
                           "trimmed_mean": _trimmed_mean(latencies), "runs": len(latencies), "warmup": warmup,
                           "measured": label},
            "wall_s": round(time.perf_counter() - started, 2)}


def failures(manifest: Manifest, spec: Target | None) -> list[str]:
    """Artifacts that failed their host check, or failed (or did not run) on `spec`; formats the
    target does not run are not its failures."""
    return [a.key for a in manifest.artifacts if (a.host_check and not a.host_check.passed)
            or (spec and a.format in spec.runtimes and not a.targets.get(spec.name, {}).get("passed"))]


def measured_where(emulated: bool, spec: Target, seen: dict[str, Any]) -> tuple[str, str]:
    """(where, label) of a latency. A host run can be emulated too: inside `docker run --platform
    linux/arm64` on an x86 machine, binfmt QEMU runs everything, and only the CPU the kernel reports
    shows it (QEMU's "max" CPU, or an x86 CPU under an aarch64 process)."""
    if emulated:
        return "emulated", f"emulated: qemu-aarch64 -cpu {spec.qemu_cpu}, not device time"
    cpu = seen.get("cpu", "")
    if seen.get("machine") == "aarch64" and ("implementer 0x" not in cpu or cpu.startswith("QEMU")):
        return "emulated", f"emulated: QEMU user mode (binfmt, {cpu}), not device time"
    return "host", f"host ({seen.get('machine', platform.machine())})"


def _instructions(a: Artifact, folder: Path, work: Path, spec: Target, emu: Emulator | None, engine: str,
                  timeout: float, n: int) -> int | None:
    """Guest instructions per inference: (runs=n) − (runs=0), both after one warm-up, so imports,
    loading and first-run setup cancel out. Independent of the host's load. What does not cancel
    (start-up varies by ~0.5 M instructions of ~7 G) is spread over the n runs."""
    counts = []
    for runs in (n, 0):
        stem = f"{a.precision}_{a.format}.insn{runs}"
        job = _job(a, folder, work, stem, engine, threads=1, warmup=1, runs=runs, outputs=False)
        log = work / f"{stem}.plugin.log"
        proc = _run_runner(job, work / f"{stem}.job.json", spec, emu, 1, timeout, plugin_log=log)
        if isinstance(proc, str) or proc.returncode != 0 or not log.is_file():
            return None
        found = re.findall(r"insns:\s*(\d+)", log.read_text())
        if not found:
            return None
        counts.append(int(found[-1]))
    return round((counts[0] - counts[1]) / n)


def _job(a: Artifact, folder: Path, work: Path, stem: str, engine: str, threads: int, warmup: int, runs: int,
         outputs: bool) -> dict[str, Any]:
    """What edgeq/runner.py reads: the artifact, its runtime's settings, where to write."""
    return {"format": a.format, "path": str((folder / a.path).resolve()), "engine": engine, "threads": threads,
            "inputs": str(work / "inputs.npy"), "outputs": str(work / f"{stem}.out.npy") if outputs else None,
            "warmup": warmup, "runs": runs, "result": str(work / f"{stem}.result.json"),
            "parent_pid": os.getpid()}  # the runner exits when edgeq is gone


def _run_runner(job: dict[str, Any], job_file: Path, spec: Target, emu: Emulator | None, threads: int,
                timeout: float, plugin_log: Path | None = None) -> subprocess.CompletedProcess[str] | str:
    job_file.write_text(json.dumps(job))
    script = [str(Path(runner.__file__).resolve()), str(job_file)]
    if emu is None:
        argv, env = [sys.executable, *script], {**os.environ, "OMP_NUM_THREADS": str(threads)}
    else:
        argv, env = emu.command(spec.qemu_cpu or "max", script, threads, plugin_log is not None, plugin_log)
    try:
        return procs.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:g} s (raise --timeout)"


def _trimmed_mean(values: np.ndarray, cut: float = 0.1) -> float:
    k = int(len(values) * cut)
    kept = np.sort(values)[k:len(values) - k] if len(values) > 2 * k else values
    return float(np.mean(kept))


def how_it_ended(proc: subprocess.CompletedProcess) -> str:
    """The signal or exit code, then the last lines of stderr (not whatever line came last)."""
    code = proc.returncode
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"killed by {name}"
    else:
        how = f"exit code {code}"
    last = _last_lines(proc.stderr or "", 3)
    return f"{how}; stderr: {last}" if last else f"{how}, nothing on stderr"


def _last_lines(text: str, n: int = 2) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "cpuinfo" not in ln and "MIDR" not in ln]
    return " | ".join(lines[-n:])[-400:]
