"""`edgeq.export`: model + data → quantize → export (.pte, .onnx, .ptl) → host check → manifest.

Each stage is its own module; this one only wires them and owns the output folder, which is
built in a temporary sibling folder and moved into place at the end, so a failure or Ctrl-C
never leaves a half-written export behind.
"""

from __future__ import annotations

import io
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from rich.progress import Progress

from edgeq.data import FASHION_MNIST, ImageSet, Preprocess, open_images
from edgeq.errors import EdgeqError
from edgeq import runner
from edgeq.export import onnx, pte, ptl
from edgeq.manifest import PRECISIONS, Artifact, Manifest, check_replaceable, sha256_file, staged_output, write_atomic
from edgeq.models import LoadedModel, load_model
from edgeq.progress import log_lines, progress_bars
from edgeq.provision import Emulator, cache_root
from edgeq.provision import setup as provision_setup
from edgeq import qat, report
from edgeq.qat import TrainConfig
from edgeq.quantize import QuantRecipe, quantize_static, quantizer_for
from edgeq.targets import FORMATS, Thresholds, load_target
from edgeq.validate import compare, validate

METHODS = ("static", "qat")
LIBRARIES = ("torch", "torchvision", "torchao", "executorch", "onnx", "onnxscript", "onnxruntime", "numpy")
DEFAULT_HELD_OUT = 200  # held-out calibration images checked when there is no eval data
QUANTIZER_NAMES = {"xnnpack": "PT2E XNNPACKQuantizer", "x86": "PT2E X86InductorQuantizer",
                   "fx": "FX {backend} qconfig",
                   "ort": "onnxruntime quantize_static (QDQ, uint8 activations, int8 weights)"}
REFERENCE = "reference.npz"  # inputs + float outputs for validation on targets
REFERENCE_SAMPLES = 1000  # enough to judge accuracy within a point (see validate.MIN_ACCURACY_SAMPLES)
REFERENCE_BYTES = 16 << 20  # at 224×224×3 that is 26 inputs
CHECK_CHUNK = 256  # images preprocessed at a time during checks (bounds memory at 224×224)


@dataclass(frozen=True)
class CheckSet:
    """The held-out images every artifact is compared on (never used for calibration)."""

    images: ImageSet
    indices: Sequence[int]
    labels: np.ndarray | None


def export(out: str | Path, *, model: str | None = None, weights: str | Path | None = None,
           input_shape: Sequence[int] | None = None, target: str | Path = "arm64", method: str = "static",
           backend: str | None = None, calib_data: str | Path | None = None, calib_samples: int = 256,
           train_data: str | Path | None = None, training: TrainConfig | None = None, resume: bool = False,
           checkpoint_dir: str | Path | None = None, eval_data: str | Path | None = None,
           check_samples: int | None = None, formats: Sequence[str] = FORMATS, precisions: Sequence[str] = PRECISIONS,
           per_channel: bool = True, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
           resize: int | None = None, validate_on_target: bool = True, runs: int = 20,
           progress: bool = True) -> Manifest | None:
    """Quantize (static, or QAT with `training`) and export a model to every requested format, check
    each artifact on the host, write `out/manifest.json`, then validate on the target (set up on
    first use; see edgeq.validate). Returns the manifest, or None on the other ranks of a torchrun
    job (rank 0 exports). Raises EdgeqError for bad input."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out)
    target_spec = load_target(target)
    if method not in METHODS:
        raise EdgeqError(f"unknown --method {method!r}: use one of {', '.join(METHODS)}")
    formats = _subset(formats, FORMATS, "--formats")
    precisions = _subset(precisions, PRECISIONS, "--precisions")
    recipe = QuantRecipe(backend=backend or target_spec.backend, per_channel=per_channel, calib_samples=calib_samples)
    training = training or TrainConfig()
    if check_samples is not None and check_samples < 1:
        raise EdgeqError("--check-samples must be at least 1")
    inputs = {"--weights": weights, "--calib-data": calib_data, "--eval-data": eval_data, "--train-data": train_data,
              "--checkpoint-dir": checkpoint_dir}
    check_output_folder(out, inputs)

    loaded = load_model(model, weights, tuple(input_shape) if input_shape else None)
    preprocess = _preprocess(loaded, mean, std, resize)
    eval_set = open_images(eval_data, "test") if eval_data else (open_images(FASHION_MNIST, "test") if loaded.builtin else None)
    num_classes = loaded.num_classes
    if eval_set is not None and eval_set.classes and not _labels_fit(eval_set, num_classes):
        raise EdgeqError(f"{eval_set.description} has {len(eval_set.classes)} classes but the model outputs {num_classes}: "
                         "use data with the model's classes, or a model built for this data (e.g. ?num_classes=)")

    with qat.process_group(training.device if method == "qat" else "cpu") as world, \
            progress_bars(progress and world.main) as bar:
        if method == "qat":
            if train_data is None and not loaded.builtin:
                raise EdgeqError("--method qat needs --train-data: a labelled image folder (one subfolder per class)")
            split = qat.TrainSplit.of(open_images(train_data or FASHION_MNIST, "train"), training, num_classes, world)
            check = _check_set(eval_set, check_samples, num_classes) if eval_set is not None else \
                CheckSet(split.images, split.val[:check_samples], split.images.labels[split.val[:check_samples]])
            checkpoints = Path(checkpoint_dir) if checkpoint_dir else out.with_name(f"{out.name}.qat")
            quantized, records = _train(loaded, recipe, formats, training, split, preprocess, checkpoints, resume,
                                        world, bar, timings) if "int8" in precisions else ({}, [])
            if not world.main:
                return None
            labelled, data_info = split.images, {"training": split.images.info(len(split.train)),
                                                 "validation": len(split.val)}
            trained = {"config": training.to_dict(), "processes": world.size, "checkpoints": str(checkpoints),
                       "device": str(qat.resolve_device(training.device, world)),
                       "flows": [asdict(r) for r in records]}
        else:
            labelled = open_images(calib_data or FASHION_MNIST, "train")
            calib_indices, check = _split(labelled, eval_set, recipe.calib_samples, check_samples, num_classes)
            quantized = _calibrate(loaded, recipe, formats, labelled, calib_indices, preprocess, bar, timings) \
                if "int8" in precisions else {}
            data_info, trained = {"calibration": labelled.info(len(calib_indices))}, None

        with staged_output(out, before_replace=lambda: check_output_folder(out, inputs)) as stage:
            artifacts = []
            task = bar.add_task("exporting", total=len(formats) * len(precisions))
            for precision in precisions:
                for fmt in formats:
                    bar.update(task, description=f"exporting {precision} .{fmt}")
                    t0 = time.perf_counter()
                    flow = quantizer_for(fmt, recipe.backend, method)
                    path = stage / f"model_{precision}.{fmt}"
                    if precision == "int8" and flow == "ort":  # the float model, quantized by onnxruntime
                        details = onnx.export_ort_quantized(loaded.module, loaded.input_shape, path, quantized[flow],
                                                            recipe.per_channel)
                    else:
                        source = loaded.module if precision == "fp32" else quantized[flow]
                        details = _export_one(fmt, source, loaded.input_shape, path, recipe.backend,
                                              precision == "int8")
                    if precision == "int8":
                        details["quantizer"] = QUANTIZER_NAMES[flow].format(backend=recipe.backend)
                    timings[f"export_{precision}_{fmt}"] = time.perf_counter() - t0
                    artifacts.append(Artifact(format=fmt, precision=precision, path=path.name,
                                              bytes=path.stat().st_size, sha256=sha256_file(path), details=details))
                    bar.advance(task)
            bar.update(task, description="exporting")

            t0 = time.perf_counter()
            float_accuracy, float_outputs = _host_check(loaded, preprocess, check, artifacts, stage, recipe.backend,
                                                        target_spec.thresholds, method, bar)
            timings["host_check"] = time.perf_counter() - t0
            reference = _write_reference(stage, preprocess, check, float_outputs)
            timings["total"] = time.perf_counter() - started
            classes = next((s.classes for s in (eval_set, labelled) if s is not None and _labels_fit(s, num_classes)), None)
            manifest = Manifest(
                edgeq_version=_version("edgeq"), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                versions={"python": platform.python_version(), **{lib: _version(lib) for lib in LIBRARIES}},
                model={**loaded.info(), "classes": list(classes) if classes else None},
                target=target_spec.to_dict(), method=method, quantization=recipe.to_dict(),
                preprocess=preprocess.to_dict(),
                data={**data_info,
                      "check": {**check.images.info(len(check.indices)), "held_out": _held_out(method, eval_set)},
                      "eval": eval_set.info(len(check.indices)) if eval_set is not None else None},
                float_accuracy=float_accuracy, artifacts=artifacts, reference=reference, training=trained,
                timings_s={k: round(v, 3) for k, v in timings.items()})
            manifest.write(stage)
            report.write(stage, manifest)

        if validate_on_target:
            if target_spec.qemu_cpu and platform.machine() != "aarch64" and Emulator(cache_root() / "aarch64").missing():
                log = log_lines(bar)
                log(f"setting up the emulated target (once; cached in {cache_root()})")
                provision_setup(log=lambda line: log(f"  {line}"))
            validate(out, target, runs=runs, progress=bar)
            manifest = Manifest.load(out)
    return manifest


def _calibrate(loaded: LoadedModel, recipe: QuantRecipe, formats: Sequence[str], images: ImageSet,
               indices: range, preprocess: Preprocess, bar: Progress,
               timings: dict[str, float]) -> dict[str, Any]:
    """Static quantization, once per flow the formats need (FX for .ptl, PT2E xnnpack and/or x86),
    all calibrated on the same preprocessed images. The "ort" flow quantizes at export time: it
    gets the calibration images themselves."""
    task = bar.add_task("preprocessing calibration images", total=len(indices))
    chunks = []
    for i in range(0, len(indices), 64):
        chunks.append(images.batch(preprocess, indices[i:i + 64]))
        bar.advance(task, len(chunks[-1]))
    calib = np.concatenate(chunks)
    quantized: dict[str, Any] = {}
    for flow in _flows(formats, recipe, "static"):
        if flow == "ort":
            quantized[flow] = calib
            continue
        t0 = time.perf_counter()
        label = f"FX {recipe.backend}, for .ptl" if flow == "fx" else f"PT2E {flow}"

        def calibration() -> Iterator[np.ndarray]:
            t = bar.add_task(f"calibrating ({label})", total=len(calib))  # noqa: B023 - used in this iteration
            for i in range(0, len(calib), recipe.calib_batch):
                yield calib[i:i + recipe.calib_batch]
                bar.advance(t, len(calib[i:i + recipe.calib_batch]))

        quantized[flow] = quantize_static(flow, loaded.module, loaded.input_shape, recipe, calibration)
        timings[f"quantize_{flow}"] = time.perf_counter() - t0
    return quantized


def _train(loaded: LoadedModel, recipe: QuantRecipe, formats: Sequence[str], config: TrainConfig,
           split: qat.TrainSplit, preprocess: Preprocess, checkpoints: Path, resume: bool, world: qat.World,
           bar: Progress, timings: dict[str, float]) -> tuple[dict[str, torch.nn.Module], list[qat.Record]]:
    """QAT, once per flow the formats need; each flow has its own checkpoint file."""
    log = log_lines(bar)
    quantized, records = {}, []
    for flow in _flows(formats, recipe, "qat"):
        t0 = time.perf_counter()
        label = f"FX {recipe.backend}" if flow == "fx" else f"PT2E {flow}"
        quantized[flow], record = qat.train(flow, loaded, recipe, config, split, preprocess,
                                            checkpoints / f"{flow}.pt", resume, world, bar, log, label)
        records.append(record)
        timings[f"qat_{flow}"] = time.perf_counter() - t0
    return quantized, records


def _flows(formats: Sequence[str], recipe: QuantRecipe, method: str) -> list[str]:
    return list(dict.fromkeys(quantizer_for(fmt, recipe.backend, method) for fmt in formats))


def _held_out(method: str, eval_set: ImageSet | None) -> str:
    if eval_set is not None:
        return "eval data"
    return "training images held out from QAT" if method == "qat" else "calibration images not used for calibration"


def _export_one(fmt: str, model: torch.nn.Module, input_shape: tuple[int, ...], path: Path,
                backend: str, quantized: bool) -> dict:
    if fmt == "pte":
        return pte.export(model, input_shape, path)
    if fmt == "onnx":
        return onnx.export(model, input_shape, path, quantized=quantized)
    return ptl.export(model, input_shape, path, backend)


def _host_check(loaded: LoadedModel, preprocess: Preprocess, check: CheckSet, artifacts: list[Artifact],
                stage: Path, backend: str, thresholds: Thresholds, method: str,
                bar: Progress) -> tuple[float | None, np.ndarray]:
    """Run every artifact with its own runtime on the held-out images; compare with the float model.
    Returns the float model's accuracy and outputs."""
    runners = {a.key: runner.load(a.format, str(stage / a.path), engine=backend) for a in artifacts}
    reference, outputs = [], {key: [] for key in runners}
    task = bar.add_task("checking artifacts on the host", total=len(check.indices) * max(1, len(runners)))
    for start in range(0, len(check.indices), CHECK_CHUNK):
        x = check.images.batch(preprocess, check.indices[start:start + CHECK_CHUNK])
        with torch.no_grad():
            reference.append(loaded.module(torch.from_numpy(x)).numpy())
        for key, run in runners.items():
            outputs[key].extend(run(x[i:i + 1])[0] for i in range(len(x)))
            bar.advance(task, len(x))
    ref = np.concatenate(reference)
    for a in artifacts:
        a.host_check = compare(ref, np.stack(outputs[a.key]), check.labels, a.precision, thresholds, method)
    return None if check.labels is None else float(np.mean(ref.argmax(-1) == check.labels)), ref


def _write_reference(stage: Path, preprocess: Preprocess, check: CheckSet, float_outputs: np.ndarray) -> dict:
    """The first held-out inputs with the float model's outputs (and labels): what `edgeq validate`
    runs on the target and compares against, with no model or data needed there."""
    per_sample = 4 * preprocess.channels * preprocess.size[0] * preprocess.size[1]
    n = max(1, min(len(check.indices), REFERENCE_SAMPLES, REFERENCE_BYTES // per_sample))
    arrays = {"inputs": check.images.batch(preprocess, check.indices[:n]), "outputs": float_outputs[:n]}
    if check.labels is not None:
        arrays["labels"] = check.labels[:n]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = stage / REFERENCE
    write_atomic(path, buffer.getvalue())
    return {"path": REFERENCE, "samples": n, "labels": check.labels is not None, "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


def _labels_fit(images: ImageSet, num_classes: int) -> bool:
    """Whether the set's labels are the model's classes (calibration images may be any images)."""
    return images.labels is not None and images.classes is not None and len(images.classes) == num_classes


def _check_set(eval_set: ImageSet, check_samples: int | None, num_classes: int) -> CheckSet:
    """The first `check_samples` eval images; labels only where they are the model's classes."""
    n = len(eval_set) if check_samples is None else min(check_samples, len(eval_set))
    return CheckSet(eval_set, range(n), eval_set.labels[:n] if _labels_fit(eval_set, num_classes) else None)


def _split(calib_set: ImageSet, eval_set: ImageSet | None, calib_samples: int,
           check_samples: int | None, num_classes: int) -> tuple[range, CheckSet]:
    """Calibration indices, and the held-out check set: the eval data, else unused calibration images."""
    if eval_set is not None:
        return range(min(calib_samples, len(calib_set))), _check_set(eval_set, check_samples, num_classes)
    held_out = min(check_samples or DEFAULT_HELD_OUT, len(calib_set) // 5)
    if held_out < 1:
        raise EdgeqError(f"{calib_set.description} has {len(calib_set)} images: too few to hold some out for the check; "
                         "add images or pass --eval-data")
    n_calib = min(calib_samples, len(calib_set) - held_out)
    labels = calib_set.labels[n_calib:n_calib + held_out] if _labels_fit(calib_set, num_classes) else None
    return range(n_calib), CheckSet(calib_set, range(n_calib, n_calib + held_out), labels)


def _preprocess(loaded: LoadedModel, mean: Sequence[float] | None, std: Sequence[float] | None,
                resize: int | None) -> Preprocess:
    base = Preprocess.default_for(loaded.input_shape, grayscale_stats=loaded.builtin)
    return replace(base, resize=resize if resize is not None else base.resize,
                   mean=tuple(mean) if mean else base.mean, std=tuple(std) if std else base.std)


def _subset(chosen: Sequence[str], allowed: Sequence[str], option: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(chosen))
    bad = [c for c in chosen if c not in allowed]
    if bad or not chosen:
        raise EdgeqError(f"{option} {','.join(bad) or '(empty)'} not understood: choose from {','.join(allowed)}")
    return chosen


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def check_output_folder(out: Path, inputs: dict[str, Any]) -> None:
    """Before any work: `out` can be written, replaces only an earlier export (see
    manifest.check_replaceable), and holds none of the inputs (replacing it would delete them)."""
    here = Path.cwd().resolve()
    target = out.resolve()
    if target == here or here.is_relative_to(target):
        raise EdgeqError(f"--out {out} is the current folder or holds it: edgeq replaces the output folder whole; "
                         "pass a new folder, e.g. --out dist")
    for option, value in inputs.items():
        if value is not None and Path(value).exists() and Path(value).resolve().is_relative_to(target):
            raise EdgeqError(f"{option} {value} lies inside --out {out}, which edgeq replaces whole: "
                             "keep inputs outside the output folder, or pass another --out")
    check_replaceable(out)
    parent = next((p for p in target.parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise EdgeqError(f"--out {out}: {parent} is not a folder: pass a path under a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgeqError(f"--out {out}: cannot write in {parent} (permission denied): pass a folder you can write")
