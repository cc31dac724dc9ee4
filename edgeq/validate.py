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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.progress import Progress

from edgeq import procs, report, runner
from edgeq.config import ValidateConfig
from edgeq.errors import EdgeqError
from edgeq.manifest import (MANIFEST, Artifact, HostCheck, Latency, LengthCheck, Manifest, OutputCheck, Parity,
                            TargetRun, verify_file)
from edgeq.paths import remove_stale, scratch_prefix
from edgeq.placement import Placement, measured, placement
from edgeq.qemu import native
from edgeq.qemu.provision import Emulator, emulator
from edgeq.targets import Target, Thresholds, load_target, target_of

SCRATCH = "edgeq-validate-"  # in the temp folder: inputs, jobs and outputs of one validation

# fp32 artifacts must reproduce the float model almost exactly; int8 ones are held to the target.
FP32_MIN_SQNR_DB = 40.0
# The accuracy gate needs enough labelled images: on 100, one image is already a whole point.
MIN_ACCURACY_SAMPLES = 1000
# Reference inputs a target runs by default. Its job is to show the artifact computes there what it
# computed on the host, where accuracy was measured on every check image. A kernel that differs
# between CPUs differs on any input, so a few suffice; an artifact whose outputs do differ is run
# again on every reference input and judged on its own outputs.
PARITY_SAMPLES = 32
# A model's outputs that are not class scores (an embedding, a probability, a recurrent state) are
# held to their direction and their noise: the cosine similarity of each sample's output to the float
# model's, at least 0.95 on every sample, and the target's min_sqnr_db over all samples. Measured on
# real weights, dynamic int8, every format: Silero VAD's probability and state 35-65 dB, minimum cosine
# over every chunk of speech 0.9992 or above (tests/test_tensor_models.py); g2p-en's letter scores 19-28 dB, mean
# cosine 0.994 or above, with 95-100% of words unchanged (bench.dynamic).
MIN_COSINE = 0.95
# Samples a target runs at each other length of a model's dynamic axis (the host check ran 8 there):
# as for PARITY_SAMPLES, a kernel that differs between CPUs differs on any input. All-MiniLM-L6-v2 at
# 128 tokens takes ~3 s an inference under QEMU.
LENGTH_PARITY_SAMPLES = 3
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
    return judge(measure(reference, outputs, labels), precision, thresholds, method, accuracy(reference, labels))


def measure(reference: np.ndarray, outputs: np.ndarray, labels: np.ndarray | None) -> HostCheck:
    """The figures of `outputs` against the float model's, not yet judged."""
    nonfinite = int(np.size(outputs) - np.count_nonzero(np.isfinite(outputs)))
    return HostCheck(samples=int(len(reference)), top1_agreement=top1_agreement(reference, outputs),
                     sqnr_db=None if nonfinite else sqnr_db(reference, outputs),
                     max_abs_err=None if nonfinite else float(np.max(np.abs(reference - outputs))) if len(reference)
                     else 0.0, accuracy=accuracy(outputs, labels), nonfinite_outputs=nonfinite)


def cosines(reference: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Each sample's cosine similarity of `outputs` to `reference` (flattened); 1 where both are zero."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    out = outputs.reshape(len(outputs), -1).astype(np.float64)
    dot, norms = np.sum(ref * out, axis=1), np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    return np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), np.where(np.any(ref != out, axis=1), 0.0, 1.0))


def measure_outputs(names: tuple[str, ...], reference: list[np.ndarray], outputs: list[np.ndarray],
                    labels: np.ndarray | None) -> HostCheck:
    """A model of any tensors: each output against the float model's; the top-level figures are the
    worst output's. With labels, the first output is class scores (agreement and accuracy)."""
    per_output, nonfinite = [], 0
    for name, ref, out in zip(names, reference, outputs):
        bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
        nonfinite += bad
        cos = None if bad or not len(ref) else cosines(ref, out)
        per_output.append(OutputCheck(name=name, sqnr_db=None if bad else sqnr_db(ref, out),
                                      cosine_mean=None if cos is None else float(cos.mean()),
                                      cosine_min=None if cos is None else float(cos.min()),
                                      max_abs_err=None if bad or not len(ref) else float(np.max(np.abs(ref - out)))))
    finite = not nonfinite
    sqnrs = [o.sqnr_db for o in per_output if o.sqnr_db is not None]
    scores = labels is not None
    return HostCheck(samples=int(len(reference[0])),
                     top1_agreement=top1_agreement(reference[0], outputs[0]) if scores else None,
                     sqnr_db=min(sqnrs) if finite and sqnrs else None,
                     max_abs_err=max(o.max_abs_err or 0.0 for o in per_output) if finite else None,
                     accuracy=accuracy(outputs[0], labels) if scores else None, nonfinite_outputs=nonfinite,
                     outputs=per_output)


def judge(check: HostCheck, precision: str, thresholds: Thresholds, method: str,
          float_accuracy: float | None) -> HostCheck:
    """Hold the figures to the thresholds: sets `gates` (the conditions applied) and `passed`."""
    sqnr = float("inf") if check.sqnr_db is None else check.sqnr_db
    if check.nonfinite_outputs:  # NaN or inf: no SQNR to judge, and the artifact fails whatever its top-1 says
        gates = {"outputs are finite": False}
    elif precision == "fp32":
        gates = {f"sqnr_db >= {FP32_MIN_SQNR_DB:g}": sqnr >= FP32_MIN_SQNR_DB}
    elif check.top1_agreement is None:  # no class scores: every output by its noise and direction
        gates = {f"sqnr_db >= {thresholds.min_sqnr_db:g}": sqnr >= thresholds.min_sqnr_db}
        for o in check.outputs:
            gates[f"{o.name}: cosine_min >= {MIN_COSINE:g}"] = (o.cosine_min or 0.0) >= MIN_COSINE
    else:
        gates = {f"top1_agreement >= {thresholds.min_top1_agreement:g}":
                 check.top1_agreement >= thresholds.min_top1_agreement}
        if method == "static":
            gates[f"sqnr_db >= {thresholds.min_sqnr_db:g}"] = sqnr >= thresholds.min_sqnr_db
        if float_accuracy is not None and check.accuracy is not None and check.samples >= MIN_ACCURACY_SAMPLES:
            gates[f"accuracy >= float - {thresholds.max_accuracy_drop:g}"] = \
                check.accuracy >= float_accuracy - thresholds.max_accuracy_drop
    check.gates = list(gates)
    check.passed = all(gates.values())
    return check


def length_check(length: int, names: tuple[str, ...], expected: list[np.ndarray], outputs: list[np.ndarray] | None,
                 error: str | None, precision: str, thresholds: Thresholds, method: str) -> tuple[LengthCheck, str]:
    """An artifact at another length of its model's dynamic axis (edgeq.pipeline._length_check): its
    outputs against the float model's there, judged as outputs that are not class scores (a few
    samples say nothing of top-1 agreement). Returns the record and the gate it was held to."""
    samples = len(expected[0])
    if outputs is None or [y.shape for y in outputs] != [e.shape for e in expected]:
        return (LengthCheck(length, samples, None, None, False, error or "outputs of another number or shape"),
                f"runs at length {length}")
    check = judge(measure_outputs(names, expected, outputs, None), precision, thresholds, method, None)
    worst = [o.cosine_min for o in check.outputs]
    return (LengthCheck(length, samples, check.sqnr_db, None if None in worst else min(worst), check.passed),
            f"at length {length} ({samples} samples): {', '.join(check.gates)}")


def budget_gate(check: HostCheck, metric: str, max_drop: float | None, float_accuracy: float | None,
                minimum: float | None = None) -> None:
    """An accuracy budget (points of accuracy or of top-1 agreement; or each output's mean cosine or
    SQNR), added to the check's gates."""
    if metric in ("cosine", "sqnr"):
        values = [o.cosine_mean if metric == "cosine" else o.sqnr_db for o in check.outputs]
        if metric == "sqnr" and not check.nonfinite_outputs:
            values = [float("inf") if v is None else v for v in values]  # no noise: identical outputs
        check.gates.append(f"every output's {'mean cosine' if metric == 'cosine' else 'sqnr_db'} >= {minimum:g} "
                           "(output budget)")
        check.passed = bool(check.passed) and bool(values) and all(v is not None and v >= minimum - 1e-9
                                                                   for v in values)
        return
    if metric == "accuracy":
        drop = 100 * ((float_accuracy or 0.0) - (check.accuracy or 0.0))
    else:
        drop = 100 * (1 - check.top1_agreement)
    check.gates.append(f"{metric} drop <= {max_drop:g} points (accuracy budget)")
    check.passed = bool(check.passed) and drop <= max_drop + 1e-9


def output_tolerance(outputs: np.ndarray, precision: str) -> float:
    """How far the same artifact's outputs may lie from the host's on another CPU or runtime build:
    int8 kernels round requantization a step or two apart (ARM and x86 XNNPACK, onnxruntime's MLAS,
    QNNPACK; measured: at most one output grid step between arm64 and x86_64), fp32 ones sum in
    another order. 5% of the outputs' spread for int8 is a few grid steps; fp32 differ in the last
    bits. A wrong kernel lands far outside either."""
    spread = float(np.ptp(outputs)) if np.size(outputs) and np.all(np.isfinite(outputs)) else 0.0
    return 0.05 * spread if precision == "int8" else 1e-3 * spread + 1e-5


def parity_all(host: list[np.ndarray], outputs: list[np.ndarray], precision: str) -> Parity:
    """parity over every output: passed when each is within its tolerance; the output farthest past
    (or nearest to) its tolerance gives the difference shown; a sample is identical when all its
    outputs are."""
    each = [parity(h, y, precision) for h, y in zip(host, outputs)]
    if len(each) == 1:
        return each[0]
    worst = max(each, key=lambda p: float("inf") if p.max_abs_diff is None else p.max_abs_diff / max(p.tolerance, 1e-30))
    same = np.all([np.all(h.reshape(len(h), -1) == y.reshape(len(y), -1), axis=1) for h, y in zip(host, outputs)],
                  axis=0)
    return Parity(samples=worst.samples, max_abs_diff=worst.max_abs_diff, tolerance=worst.tolerance,
                  identical=int(np.sum(same)), top1_same=None, passed=all(p.passed for p in each))


def parity(host: np.ndarray, outputs: np.ndarray, precision: str) -> Parity:
    """The artifact's outputs on the target against its own outputs on the host, same inputs."""
    tolerance = output_tolerance(host, precision)
    finite = bool(np.all(np.isfinite(outputs)))
    diff = float(np.max(np.abs(host.astype(np.float64) - outputs))) if finite and len(host) else None
    same = np.all(host.reshape(len(host), -1) == outputs.reshape(len(outputs), -1), axis=1)
    return Parity(samples=int(len(host)), max_abs_diff=diff, tolerance=tolerance, identical=int(np.sum(same)),
                  top1_same=top1_agreement(host, outputs), passed=diff is not None and diff <= tolerance)


def host_key(key: str) -> str:
    """The name of an artifact's host outputs in reference.npz: "int8 .pte" → "host_int8_pte"."""
    return "host_" + key.replace(" .", "_")


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
    inputs: int  # the model's inputs (input0.npy, …; input0_all.npy, … with every reference sample)


def validate(folder: str | Path, target: str | Path | None = None, options: ValidateConfig = ValidateConfig(),
             progress: Progress | None = None) -> dict[str, TargetRun]:
    """Run each artifact of `folder` on `target` (default: the export's, from its manifest) on the
    inputs in reference.npz, prove its outputs there equal its outputs on the host within the
    kernels' rounding, compare them with the float model's, time it, and merge the results into
    manifest.json under artifacts[].targets[<target>]. Accuracy is the host check's (every check
    image): an artifact passes on the target when it runs there, matches its host outputs, and its
    host figures meet the target's thresholds. Returns {artifact key: result}. Raises EdgeqError for
    bad input; an artifact that fails or crashes is recorded as failed, the others still run."""
    started = time.perf_counter()
    folder = Path(folder)
    manifest = Manifest.load(folder)
    spec = load_target(target) if target else target_of(manifest.target, f"{folder / MANIFEST}: target")
    limits = replace(spec.thresholds, **options.thresholds.given())
    if manifest.reference is None or not manifest.reference.host_outputs:
        raise EdgeqError(f"{folder / MANIFEST} has no host outputs to compare the target's with (an export from "
                         "an older edgeq): re-export")
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
    artifacts = [a for a in manifest.artifacts if a.format in spec.runtimes]
    inputs, expected, host, labels = _reference(folder / manifest.reference.path, manifest, artifacts)
    if options.samples:  # asked for: no more, even where outputs differ (an emulated Transformer: 0.75 s each)
        inputs = [x[:options.samples] for x in inputs]
    n = min(options.samples or PARITY_SAMPLES, len(inputs[0]))

    task = progress.add_task(f"validating on {spec.name}", total=len(artifacts)) if progress else None
    results: dict[str, TargetRun] = {}
    own_figures: list[Artifact] = []  # outputs unlike the host's: measured again on every reference input
    remove_stale(Path(tempfile.gettempdir()), SCRATCH)
    with tempfile.TemporaryDirectory(prefix=scratch_prefix(SCRATCH)) as tmp:
        session = Session(folder, Path(tmp), spec, plan, emu, manifest.quantization.backend or "qnnpack", options,
                          len(inputs))
        for i, x in enumerate(inputs):
            np.save(session.work / f"input{i}.npy", x[:n])
            np.save(session.work / f"input{i}_all.npy", x)

        def done(a: Artifact, result: TargetRun) -> None:
            outputs = _outputs(session.work / f"{_stem(a)}.out.npz", host[a.key]) if result.error is None else None
            if result.error is None and outputs is None:
                result.error = f"the outputs on {spec.name} are not the host's in number or size"
            if result.error is None:
                k = len(outputs[0])
                wanted = None if labels is None else labels[:k]
                result.host_parity = parity_all([h[:k] for h in host[a.key]], outputs, a.precision)
                result.check = measure(expected[0][:k], outputs[0], wanted) if not manifest.model.outputs else \
                    measure_outputs(tuple(manifest.model.outputs), [e[:k] for e in expected], outputs, wanted)
                if result.host_parity.passed:  # the host check's figures are this target's too
                    judged = _host_figures(a, manifest, limits)
                    result.passed = bool(judged and judged.passed)
                    result.gates = [f"outputs within {result.host_parity.tolerance:.3g} of the host's",
                                    *(judged.gates if judged else ["a host check (the export has none)"])]
                elif k < len(inputs[0]) and all(a.key != b.key for b in own_figures):
                    own_figures.append(a)
                    return
                else:  # another computation than the host's: judged on its own outputs
                    judge(result.check, a.precision, limits, manifest.method, manifest.float_accuracy)
                    result.passed = bool(result.check.passed)
                    why = ""
                    if a.format == "onnx" and a.precision == "int8" and \
                            runner.int8_products_saturate(result.machine or "", result.cpu_features or ""):
                        why = (" (onnxruntime's x86 int8 kernels saturate on a CPU without VNNI; an export for "
                               "this target checks them on the host)")
                    result.gates = [f"outputs differ from the host's beyond {result.host_parity.tolerance:.3g}{why}: "
                                    f"judged on its own outputs on {k} inputs", *result.check.gates]
            results[a.key] = a.targets[spec.name] = result
            if progress:
                progress.update(task, description=f"validated {a.key} on {spec.name}")
                progress.advance(task)

        _run_all(artifacts, session, [("", done)])
        for a in own_figures:
            _on_target([a], session, done, inputs="_all")
        if manifest.reference.lengths:
            if progress:
                progress.update(task, description=f"running every artifact at lengths "
                                f"{', '.join(map(str, manifest.reference.lengths))} on {spec.name}")
            _at_lengths(folder / manifest.reference.path, manifest, artifacts, session, results, limits)
        if options.count_instructions:
            for a in artifacts:
                result = results[a.key]
                if progress:
                    progress.update(task, description=f"counting instructions of {a.key} on {spec.name}")
                if result.error is None and result.latency_ms:
                    runs = int(np.clip(COUNT_SECONDS * 1e3 / result.latency_ms.median, 10, 500))
                    result.instructions_per_inference = _instructions(a, session, runs)
                    result.instructions_counted_over = runs
    results = {a.key: results[a.key] for a in artifacts}  # in the manifest's order
    manifest.timings_s[f"validate_{spec.name}"] = round(time.perf_counter() - started, 3)
    manifest.write(folder)
    report.write(folder, manifest)
    return results


def _reference(path: Path, manifest: Manifest, artifacts: list[Artifact], prefix: str = "") -> tuple[
        list[np.ndarray], list[np.ndarray], dict[str, list[np.ndarray]], np.ndarray | None]:
    """reference.npz as lists, one array per input and output (edgeq.pipeline._write_reference): the
    inputs, the float model's outputs, each artifact's host outputs, and the labels. `prefix`
    "at<length>.": those at another length of the model's dynamic axis (the artifacts that ran there)."""
    inputs_, outputs_ = manifest.model.inputs, manifest.model.outputs
    with np.load(path, allow_pickle=False) as ref:
        if outputs_:  # a model of any tensors: "name: dtype[…]" inputs, named outputs
            names = [spec.split(":")[0] for spec in inputs_ or []]
            keys = {"inputs": [f"{prefix}input.{n}" for n in names], "outputs": [f"{prefix}output.{o}" for o in outputs_],
                    **{a.key: [f"{prefix}{host_key(a.key)}.{o}" for o in outputs_] for a in artifacts
                       if not prefix or f"{prefix}{host_key(a.key)}.{outputs_[0]}" in ref.files}}
        else:
            keys = {"inputs": ["inputs"], "outputs": ["outputs"], **{a.key: [host_key(a.key)] for a in artifacts}}
        missing = [k for names in keys.values() for k in names if k not in ref.files]
        if missing:
            raise EdgeqError(f"{path} lacks {', '.join(missing[:3])}: re-export")
        arrays = {what: [ref[k] for k in names] for what, names in keys.items()}
        labels = ref["labels"] if "labels" in ref.files and not prefix else None
    return arrays.pop("inputs"), arrays.pop("outputs"), arrays, labels


def _outputs(path: Path, host: list[np.ndarray]) -> list[np.ndarray] | None:
    """A runner's outputs (one array per output, samples first) in the host outputs' shapes; None when
    their number or sizes are not the host's."""
    with np.load(path, allow_pickle=False) as f:
        outputs = [f[f"arr_{i}"] for i in range(len(f.files))]
    if len(outputs) != len(host) or any(y.size // max(1, len(y)) != h[0].size for y, h in zip(outputs, host)):
        return None
    return [y.reshape(len(y), *h.shape[1:]) for y, h in zip(outputs, host)]


def _host_figures(a: Artifact, manifest: Manifest, limits: Thresholds) -> HostCheck | None:
    """The host check's figures (every check image) held to this target's thresholds: with outputs
    equal to the host's, they are the target's figures too."""
    if a.host_check is None:
        return None
    check = judge(replace(a.host_check, gates=[]), a.precision, limits, manifest.method, manifest.float_accuracy)
    plan = manifest.plan
    if a.precision == "int8" and plan is not None and plan.metric and plan.max_drop is not None:
        budget_gate(check, plan.metric, plan.max_drop, manifest.float_accuracy)
    return check


def _at_lengths(path: Path, manifest: Manifest, artifacts: list[Artifact], session: Session,
                results: dict[str, TargetRun], limits: Thresholds) -> None:
    """Every artifact run again at each other length of the model's dynamic axis (reference.npz's
    at<length>. inputs, the first LENGTH_PARITY_SAMPLES), judged on its own outputs there against the
    float model's (as on the host, edgeq.pipeline._length_check), and compared with its host outputs
    at that length."""
    def at(length: int) -> tuple[str, Callable[[Artifact, TargetRun], None]]:
        inputs, expected, host, _ = _reference(path, manifest, artifacts, f"at{length}.")
        n = min(LENGTH_PARITY_SAMPLES, session.options.samples or LENGTH_PARITY_SAMPLES)  # no more than asked for
        expected, host = [y[:n] for y in expected], {key: [y[:n] for y in ys] for key, ys in host.items()}
        for i, x in enumerate(inputs):
            np.save(session.work / f"input{i}_at{length}.npy", x[:n])

        def done(a: Artifact, run: TargetRun) -> None:
            result = results[a.key]
            outputs = None
            if run.error is None and a.key in host:
                outputs = _outputs(session.work / f"{_stem(a)}.out.npz", host[a.key])
            check, gate = length_check(length, tuple(manifest.model.outputs), expected, outputs, run.error,
                                       a.precision, limits, manifest.method)
            if outputs is not None:
                check.same_as_host = parity_all(host[a.key], outputs, a.precision).passed
            result.lengths.append(check)
            result.passed = result.passed and bool(check.passed)
            result.gates.append(gate)
        return f"_at{length}", done

    _run_all(artifacts, session, [at(length) for length in manifest.reference.lengths], runs=0)


# Runtimes whose imports one runner process shares: ExecuTorch's pybindings and the lite interpreter
# both load libtorch; onnxruntime needs none of it. Under QEMU, .pte and .ptl run natively
# (edgeq.qemu.native), one runtime per program.
PROCESS_GROUPS = (("onnx",), ("pte", "ptl"))
NATIVE_GROUPS = (("onnx",), ("pte",), ("ptl",))


def _run_all(artifacts: list[Artifact], session: Session,
             passes: list[tuple[str, Callable[[Artifact, TargetRun], None]]], runs: int | None = None) -> None:
    """One runner process per runtime group and pass (`passes`: the inputs' suffix, see _on_target, and
    what to do with each result), the groups side by side (each is single-threaded by default), a
    group's passes one after another (they write the same files). When a process dies, the artifacts
    it left undone run again one per process, so a crash or hang loses only the artifact that caused it."""
    kinds = NATIVE_GROUPS if session.emu is not None else PROCESS_GROUPS
    groups = [[a for a in artifacts if a.format in formats] for formats in kinds]
    groups = [g for g in groups if g]

    def run_group(group: list[Artifact]) -> None:
        for inputs, done in passes:
            finished = _on_target(group, session, done, inputs, runs)
            if len(group) > 1:
                for a in group:
                    if a.key not in finished:
                        _on_target([a], session, done, inputs, runs)

    workers = max(1, min(len(groups), (os.cpu_count() or 1) // max(1, session.options.threads)))
    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(run_group, g) for g in groups]:
            future.result()


def _stem(a: Artifact) -> str:
    return f"{a.precision}_{a.format}"


def _on_target(group: list[Artifact], session: Session, done: Callable[[Artifact, TargetRun], None],
               inputs: str = "", runs: int | None = None) -> set[str]:
    """Run `group` in one runner process on the reference inputs in the scratch folder (`inputs`: "" for
    the first few, "_all" for every one, "_at<length>" at another length), timed over `runs` (default:
    the options'); report each artifact that finished (or, when the process was alone with its
    artifact, how it failed). Returns the keys reported."""
    options, spec = session.options, session.spec
    name = _stem(group[0]) if len(group) == 1 else "+".join(_stem(a) for a in group)
    job = _job(group, session, name, options.runs if runs is None else runs, counting=False, inputs=inputs)
    started = time.perf_counter()
    proc = _run_runner(job, session.work / f"{name}.job.json", session, options.threads,
                       timeout=options.timeout * len(group))
    reported = set()
    for a, entry in zip(group, job["artifacts"]):
        result = TargetRun(target=spec.name, where=session.plan.where, qemu_cpu=session.plan.qemu_cpu,
                           threads=options.threads, validated=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        if not Path(entry["result"]).is_file():
            if len(group) > 1:
                continue  # run again alone
            ended = proc if isinstance(proc, str) else how_it_ended(proc) if proc.returncode else "no result written"
            result.error = f"runner failed on {spec.name}: {ended}"
        else:
            seen = json.loads(Path(entry["result"]).read_text())
            latencies = np.array(seen["latencies_ms"])
            result.where, label = measured(session.plan, seen)
            result.machine, result.cpu, result.cpu_features = seen["machine"], seen["cpu"], seen["cpu_features"]
            result.python, result.import_s = seen["python"], round(seen["import_s"], 3)
            result.runner = seen.get("runner")
            result.load_s = round(seen["load_s"], 4)
            result.peak_rss_mb = round(seen["peak_rss_mb"], 1)  # under QEMU: the emulator's, buffers included
            if len(latencies):
                result.latency_ms = Latency(median=float(np.median(latencies)),
                                            p90=float(np.percentile(latencies, 90)),
                                            trimmed_mean=_trimmed_mean(latencies), runs=len(latencies),
                                            warmup=options.warmup, measured=label)
            result.wall_s = round(time.perf_counter() - started, 2)  # the process's, shared by its artifacts
        done(a, result)
        reported.add(a.key)
    return reported


def failures(manifest: Manifest, spec: Target | None) -> list[str]:
    """Artifacts that failed their host check, or failed (or did not run) on `spec`; formats the
    target does not run are not its failures, nor a host check this host could not judge (None)."""
    def failed_on_target(a: Artifact) -> bool:
        run = a.targets.get(spec.name) if spec else None
        return bool(spec) and a.format in spec.runtimes and not (run and run.passed)

    return [a.key for a in manifest.artifacts
            if (a.host_check and a.host_check.passed is False) or failed_on_target(a)]


def _instructions(a: Artifact, session: Session, n: int) -> int | None:
    """Guest instructions per inference: (runs=n) − (runs=0), both after one warm-up, so imports,
    loading and first-run setup cancel out. Independent of the host's load. What does not cancel
    (start-up varies by ~0.5 M instructions of ~7 G) is spread over the n runs."""
    counts = []
    for runs in (n, 0):
        stem = f"{_stem(a)}.insn{runs}"
        job = _job([a], session, stem, runs, counting=True)
        log = session.work / f"{stem}.plugin.log"
        proc = _run_runner(job, session.work / f"{stem}.job.json", session, 1, session.options.timeout, log)
        if isinstance(proc, str) or proc.returncode != 0 or not log.is_file():
            return None
        found = re.findall(r"insns:\s*(\d+)", log.read_text())
        if not found:
            return None
        counts.append(int(found[-1]))
    return round((counts[0] - counts[1]) / n)


def _job(group: list[Artifact], session: Session, stem: str, runs: int, counting: bool,
         inputs: str = "") -> dict[str, Any]:
    """What edgeq/runner.py reads: the artifacts, their runtimes' settings, where to write. A counting
    run uses one thread and one warm-up, and writes no outputs (the run before compared them)."""
    work, options = session.work, session.options
    entries = [{"format": a.format, "path": str((session.folder / a.path).resolve()),
                "outputs": None if counting else str(work / f"{_stem(a)}.out.npz"),
                "result": str(work / f"{stem if counting else _stem(a)}.result.json")} for a in group]
    return {"artifacts": entries, "engine": session.engine, "threads": 1 if counting else options.threads,
            "inputs": [str(work / f"input{i}{inputs}.npy") for i in range(session.inputs)], "warmup": 1 if counting else options.warmup if runs else 0, "runs": runs,
            "parent_pid": os.getpid()}  # the runner exits when edgeq is gone


def _run_runner(job: dict[str, Any], job_file: Path, session: Session, threads: int, timeout: float,
                plugin_log: Path | None = None) -> subprocess.CompletedProcess[str] | str:
    try:
        if session.emu is not None:
            return native.run_emulated(job, job_file, session.emu, session.plan.qemu_cpu or "max", threads, timeout,
                                       plugin_log)
        job_file.write_text(json.dumps(job))
        argv = [sys.executable, str(Path(runner.__file__).resolve()), str(job_file)]
        return procs.run(argv, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {session.options.timeout:g} s (raise --timeout)"


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
