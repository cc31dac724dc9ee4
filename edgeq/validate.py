"""Validation against the float model: each artifact run by its own runtime, compared output by
output: on the host right after export, and on the target (QEMU aarch64 or the host) by `validate`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from edgeq import procs, report, runner
from edgeq.config import ValidateConfig
from edgeq.errors import EdgeqError
from edgeq.manifest import MANIFEST, Artifact, HostCheck, Latency, Manifest, TargetRun, verify_file
from edgeq.paths import remove_stale, scratch_prefix
from edgeq.placement import Placement, measured, placement
from edgeq.qemu.provision import Emulator, emulator
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

@dataclass(frozen=True)
class Session:
    """One `validate` run: the export, the target, where it runs, and the scratch folder."""

    folder: Path
    work: Path
    spec: Target
    plan: Placement
    emu: Emulator | None
    engine: str  # torch's quantized engine for .ptl
    options: ValidateConfig


def validate(folder: str | Path, target: str | Path | None = None, options: ValidateConfig = ValidateConfig(),
             progress: Progress | None = None) -> dict[str, TargetRun]:
    """Run each artifact of `folder` on `target` (default: the export's, from its manifest), compare
    it with the float model's outputs in reference.npz, time it, and merge the results into
    manifest.json under artifacts[].targets[<target>]. Returns {artifact key: result}. Raises
    EdgeqError for bad input; an artifact that fails or crashes is recorded as failed, the others
    still run."""
    started = time.perf_counter()
    folder = Path(folder)
    manifest = Manifest.load(folder)
    spec = load_target(target) if target else target_of(manifest.target, f"{folder / MANIFEST}: target")
    limits = replace(spec.thresholds, **options.thresholds.given())
    if manifest.reference is None:
        raise EdgeqError(f"{folder / MANIFEST} has no reference inputs (an export from before edgeq validate): re-export")
    for name, sha256 in ((manifest.reference.path, manifest.reference.sha256),
                         *((a.path, a.sha256) for a in manifest.artifacts)):
        verify_file(folder, name, sha256)
    plan = placement(spec)
    if plan.where == "emulated":
        emu = emulator(spec.name, with_plugins=options.count_instructions)
    elif options.count_instructions:
        raise EdgeqError(f"--count-instructions needs an emulated target; {spec.name} runs on the host")
    else:
        emu = None
    with np.load(folder / manifest.reference.path) as ref:
        n = min(options.samples or len(ref["inputs"]), len(ref["inputs"]))
        inputs, expected = ref["inputs"][:n], ref["outputs"][:n]
        labels = ref["labels"][:n] if "labels" in ref.files else None

    artifacts = [a for a in manifest.artifacts if a.format in spec.runtimes]
    task = progress.add_task(f"validating on {spec.name}", total=len(artifacts)) if progress else None
    results: dict[str, TargetRun] = {}
    remove_stale(Path(tempfile.gettempdir()), SCRATCH)
    with tempfile.TemporaryDirectory(prefix=scratch_prefix(SCRATCH)) as tmp:
        session = Session(folder, Path(tmp), spec, plan, emu, manifest.quantization.backend or "qnnpack", options)
        np.save(session.work / "inputs.npy", inputs)
        for a in artifacts:
            if progress:
                progress.update(task, description=f"validating {a.key} on {spec.name}")
            result = _on_target(a, session)
            if result.error is None:
                outputs = np.load(session.work / f"{a.precision}_{a.format}.out.npy")
                result.check = compare(expected, outputs, labels, a.precision, limits, manifest.method)
                result.passed = bool(result.check.passed)
                if options.count_instructions and result.latency_ms:
                    n = int(np.clip(COUNT_SECONDS * 1e3 / result.latency_ms.median, 10, 500))
                    result.instructions_per_inference = _instructions(a, session, n)
                    result.instructions_counted_over = n
            results[a.key] = a.targets[spec.name] = result
            if progress:
                progress.advance(task)
    manifest.timings_s[f"validate_{spec.name}"] = round(time.perf_counter() - started, 3)
    manifest.write(folder)
    report.write(folder, manifest)
    return results


def _on_target(a: Artifact, session: Session) -> TargetRun:
    """One runner process per artifact: a crash or hang loses that artifact only."""
    options, spec = session.options, session.spec
    stem = f"{a.precision}_{a.format}"
    job = _job(a, session, stem, options.runs, counting=False)
    started = time.perf_counter()
    proc = _run_runner(job, session.work / f"{stem}.job.json", session, options.threads)
    result = TargetRun(target=spec.name, where=session.plan.where, qemu_cpu=session.plan.qemu_cpu,
                       threads=options.threads, validated=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if isinstance(proc, str) or proc.returncode != 0 or not Path(job["result"]).is_file():
        result.error = f"runner failed on {spec.name}: {proc if isinstance(proc, str) else how_it_ended(proc)}"
        return result
    seen = json.loads(Path(job["result"]).read_text())
    latencies = np.array(seen["latencies_ms"])
    result.where, label = measured(session.plan, seen)
    result.machine, result.cpu, result.cpu_features = seen["machine"], seen["cpu"], seen["cpu_features"]
    result.python, result.import_s, result.load_s = seen["python"], round(seen["import_s"], 3), round(seen["load_s"], 4)
    result.peak_rss_mb = round(seen["peak_rss_mb"], 1)  # under QEMU: the emulator's, translation buffers included
    result.latency_ms = Latency(median=float(np.median(latencies)), p90=float(np.percentile(latencies, 90)),
                                trimmed_mean=_trimmed_mean(latencies), runs=len(latencies), warmup=options.warmup,
                                measured=label)
    result.wall_s = round(time.perf_counter() - started, 2)
    return result


def failures(manifest: Manifest, spec: Target | None) -> list[str]:
    """Artifacts that failed their host check, or failed (or did not run) on `spec`; formats the
    target does not run are not its failures."""
    def failed_on_target(a: Artifact) -> bool:
        run = a.targets.get(spec.name) if spec else None
        return bool(spec) and a.format in spec.runtimes and not (run and run.passed)

    return [a.key for a in manifest.artifacts if (a.host_check and not a.host_check.passed) or failed_on_target(a)]


def _instructions(a: Artifact, session: Session, n: int) -> int | None:
    """Guest instructions per inference: (runs=n) − (runs=0), both after one warm-up, so imports,
    loading and first-run setup cancel out. Independent of the host's load. What does not cancel
    (start-up varies by ~0.5 M instructions of ~7 G) is spread over the n runs."""
    counts = []
    for runs in (n, 0):
        stem = f"{a.precision}_{a.format}.insn{runs}"
        job = _job(a, session, stem, runs, counting=True)
        log = session.work / f"{stem}.plugin.log"
        proc = _run_runner(job, session.work / f"{stem}.job.json", session, 1, plugin_log=log)
        if isinstance(proc, str) or proc.returncode != 0 or not log.is_file():
            return None
        found = re.findall(r"insns:\s*(\d+)", log.read_text())
        if not found:
            return None
        counts.append(int(found[-1]))
    return round((counts[0] - counts[1]) / n)


def _job(a: Artifact, session: Session, stem: str, runs: int, counting: bool) -> dict[str, Any]:
    """What edgeq/runner.py reads: the artifact, its runtime's settings, where to write. A counting
    run uses one thread and one warm-up, and writes no outputs (the run before compared them)."""
    work, options = session.work, session.options
    return {"format": a.format, "path": str((session.folder / a.path).resolve()), "engine": session.engine,
            "threads": 1 if counting else options.threads, "inputs": str(work / "inputs.npy"),
            "outputs": None if counting else str(work / f"{stem}.out.npy"), "warmup": 1 if counting else options.warmup,
            "runs": runs,
            "result": str(work / f"{stem}.result.json"),
            "parent_pid": os.getpid()}  # the runner exits when edgeq is gone


def _run_runner(job: dict[str, Any], job_file: Path, session: Session, threads: int,
                plugin_log: Path | None = None) -> subprocess.CompletedProcess[str] | str:
    job_file.write_text(json.dumps(job))
    script = [str(Path(runner.__file__).resolve()), str(job_file)]
    if session.emu is None:
        argv, env = [sys.executable, *script], {**os.environ, "OMP_NUM_THREADS": str(threads)}
    else:
        argv, env = session.emu.command(session.plan.qemu_cpu or "max", script, threads, plugin_log is not None,
                                        plugin_log)
    timeout = session.options.timeout
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
