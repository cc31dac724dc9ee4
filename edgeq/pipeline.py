"""`edgeq.export`: model + data → quantize → export (.pte, .onnx, .ptl) → host check → manifest.

Each stage is its own module; this one only wires them and owns the output folder, which is
built in a temporary sibling folder and moved into place at the end, so a failure or Ctrl-C
never leaves a half-written export behind.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from edgeq.data import FASHION_MNIST, ImageSet, Preprocess, open_images
from edgeq.errors import EdgeqError
from edgeq.export import load_runner, onnx, pte, ptl
from edgeq.manifest import MANIFEST, Artifact, Manifest, sha256_file
from edgeq.models import LoadedModel, load_model
from edgeq.quantize import QuantRecipe, quantize_fx, quantize_pt2e, quantizer_for
from edgeq.targets import FORMATS, Thresholds, load_target
from edgeq.validate import compare

PRECISIONS = ("int8", "fp32")
METHODS = ("static",)
LIBRARIES = ("torch", "torchvision", "torchao", "executorch", "onnx", "onnxscript", "onnxruntime", "numpy")
DEFAULT_HELD_OUT = 200  # held-out calibration images checked when there is no eval data
QUANTIZER_NAMES = {"xnnpack": "PT2E XNNPACKQuantizer", "x86": "PT2E X86InductorQuantizer",
                   "fx": "FX {backend} qconfig"}
CHECK_CHUNK = 256  # images preprocessed at a time during checks (bounds memory at 224×224)


@dataclass(frozen=True)
class CheckSet:
    """The held-out images every artifact is compared on (never used for calibration)."""

    images: ImageSet
    indices: range
    labels: np.ndarray | None


def export(out: str | Path, *, model: str | None = None, weights: str | Path | None = None,
           input_shape: Sequence[int] | None = None, target: str | Path = "arm64", method: str = "static",
           backend: str | None = None, calib_data: str | Path | None = None, calib_samples: int = 256,
           eval_data: str | Path | None = None, check_samples: int | None = None,
           formats: Sequence[str] = FORMATS, precisions: Sequence[str] = PRECISIONS, per_channel: bool = True,
           mean: Sequence[float] | None = None, std: Sequence[float] | None = None, resize: int | None = None,
           progress: bool = True) -> Manifest:
    """Quantize and export a model to every requested format, check each artifact on the host,
    and write `out/manifest.json`. Returns the manifest. Raises EdgeqError for bad input."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out)
    target_spec = load_target(target)
    if method not in METHODS:
        raise EdgeqError(f"unknown --method {method!r}: use one of {', '.join(METHODS)}")
    formats = _subset(formats, FORMATS, "--formats")
    precisions = _subset(precisions, PRECISIONS, "--precisions")
    recipe = QuantRecipe(backend=backend or target_spec.backend, per_channel=per_channel, calib_samples=calib_samples)
    if check_samples is not None and check_samples < 1:
        raise EdgeqError("--check-samples must be at least 1")
    check_output_folder(out)

    loaded = load_model(model, weights, tuple(input_shape) if input_shape else None)
    preprocess = _preprocess(loaded, mean, std, resize)
    calib_set = open_images(calib_data or FASHION_MNIST, "train")
    eval_set = open_images(eval_data, "test") if eval_data else (open_images(FASHION_MNIST, "test") if loaded.builtin else None)
    num_classes = loaded.num_classes
    if eval_set is not None and eval_set.classes and not _labels_fit(eval_set, num_classes):
        raise EdgeqError(f"{eval_set.description} has {len(eval_set.classes)} classes but the model outputs {num_classes}: "
                         "use data with the model's classes, or a model built for this data (e.g. ?num_classes=)")
    calib_indices, check = _split(calib_set, eval_set, recipe.calib_samples, check_samples, num_classes)

    with _progress(progress) as bar, staged_output(out) as stage:
        task = bar.add_task("preprocessing calibration images", total=len(calib_indices))
        chunks = []
        for i in range(0, len(calib_indices), 64):
            chunks.append(calib_set.batch(preprocess, calib_indices[i:i + 64]))
            bar.advance(task, len(chunks[-1]))
        calib = np.concatenate(chunks)

        def calibration(label: str) -> Iterator[np.ndarray]:
            t = bar.add_task(f"calibrating ({label})", total=len(calib))
            for i in range(0, len(calib), recipe.calib_batch):
                yield calib[i:i + recipe.calib_batch]
                bar.advance(t, len(calib[i:i + recipe.calib_batch]))

        quantized = _quantize(loaded, recipe, formats, calibration, timings) if "int8" in precisions else {}

        artifacts = []
        task = bar.add_task("exporting", total=len(formats) * len(precisions))
        for precision in precisions:
            for fmt in formats:
                bar.update(task, description=f"exporting {precision} .{fmt}")
                t0 = time.perf_counter()
                quantizer = quantizer_for(fmt, recipe.backend)
                source = loaded.module if precision == "fp32" else quantized[quantizer]
                path = stage / f"model_{precision}.{fmt}"
                details = _export_one(fmt, source, loaded.input_shape, path, recipe.backend, precision == "int8")
                if precision == "int8":
                    details["quantizer"] = QUANTIZER_NAMES[quantizer].format(backend=recipe.backend)
                timings[f"export_{precision}_{fmt}"] = time.perf_counter() - t0
                artifacts.append(Artifact(format=fmt, precision=precision, path=path.name, bytes=path.stat().st_size,
                                          sha256=sha256_file(path), details=details))
                bar.advance(task)
        bar.update(task, description="exporting")

        t0 = time.perf_counter()
        float_accuracy = _host_check(loaded, preprocess, check, artifacts, stage, recipe.backend,
                                     target_spec.thresholds, bar)
        timings["host_check"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - started
        classes = next((s.classes for s in (eval_set, calib_set) if s is not None and _labels_fit(s, num_classes)), None)
        manifest = Manifest(
            edgeq_version=_version("edgeq"), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            versions={"python": platform.python_version(), **{lib: _version(lib) for lib in LIBRARIES}},
            model={**loaded.info(), "classes": list(classes) if classes else None},
            target=target_spec.to_dict(), method=method, quantization=recipe.to_dict(),
            preprocess=preprocess.to_dict(),
            data={"calibration": calib_set.info(len(calib_indices)),
                  "check": {**check.images.info(len(check.indices)),
                            "held_out": "eval data" if eval_set is not None else "calibration images not used for calibration"},
                  "eval": eval_set.info(len(check.indices)) if eval_set is not None else None},
            float_accuracy=float_accuracy, artifacts=artifacts, timings_s={k: round(v, 3) for k, v in timings.items()})
        manifest.write(stage)
    return manifest


def _quantize(loaded: LoadedModel, recipe: QuantRecipe, formats: Sequence[str],
              calibration: Callable[[str], Iterator[np.ndarray]], timings: dict[str, float]) -> dict[str, torch.nn.Module]:
    """One quantized model per flow the formats need (FX for .ptl, PT2E xnnpack and/or x86)."""
    quantized: dict[str, torch.nn.Module] = {}
    for name in dict.fromkeys(quantizer_for(fmt, recipe.backend) for fmt in formats):
        t0 = time.perf_counter()
        if name == "fx":
            quantized[name] = quantize_fx(loaded.module, loaded.input_shape, recipe,
                                          lambda: calibration(f"FX {recipe.backend}, for .ptl"))
        else:
            quantized[name] = quantize_pt2e(loaded.module, loaded.input_shape, recipe, name,
                                            lambda: calibration(f"PT2E {name}"))
        timings[f"quantize_{name}"] = time.perf_counter() - t0
    return quantized


def _export_one(fmt: str, model: torch.nn.Module, input_shape: tuple[int, ...], path: Path,
                backend: str, quantized: bool) -> dict:
    if fmt == "pte":
        return pte.export(model, input_shape, path)
    if fmt == "onnx":
        return onnx.export(model, input_shape, path, quantized=quantized)
    return ptl.export(model, input_shape, path, backend)


def _host_check(loaded: LoadedModel, preprocess: Preprocess, check: CheckSet, artifacts: list[Artifact],
                stage: Path, backend: str, thresholds: Thresholds, bar: Progress) -> float | None:
    """Run every artifact with its own runtime on the held-out images; compare with the float model."""
    runners = {a.key: load_runner(a.format, stage / a.path, backend) for a in artifacts}
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
        a.host_check = compare(ref, np.stack(outputs[a.key]), check.labels, a.precision, thresholds)
    return None if check.labels is None else float(np.mean(ref.argmax(-1) == check.labels))


def _labels_fit(images: ImageSet, num_classes: int) -> bool:
    """Whether the set's labels are the model's classes (calibration images may be any images)."""
    return images.labels is not None and images.classes is not None and len(images.classes) == num_classes


def _split(calib_set: ImageSet, eval_set: ImageSet | None, calib_samples: int,
           check_samples: int | None, num_classes: int) -> tuple[range, CheckSet]:
    """Calibration indices, and the held-out check set: the eval data, else unused calibration images.
    Labels come along only where they are the model's classes."""
    if eval_set is not None:
        n = len(eval_set) if check_samples is None else min(check_samples, len(eval_set))
        labels = eval_set.labels[:n] if _labels_fit(eval_set, num_classes) else None
        return range(min(calib_samples, len(calib_set))), CheckSet(eval_set, range(n), labels)
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


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Progress]:
    """Progress bars on stderr, so `--json` output on stdout stays clean."""
    with Progress(SpinnerColumn(), TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled) as bar:
        try:
            yield bar
        except BaseException:
            bar.live.transient = True  # on failure the error line alone is the output
            raise


def check_output_folder(out: Path) -> None:
    """The output folder may be new, empty, or an earlier edgeq export; nothing else is overwritten."""
    if out.exists() and not out.is_dir():
        raise EdgeqError(f"--out {out} is a file: pass a folder")
    if out.is_dir() and any(out.iterdir()):
        try:
            Manifest.load(out)
        except EdgeqError:
            raise EdgeqError(f"--out {out} exists and is not an edgeq export (no valid {MANIFEST}): "
                             "pass a new or empty folder") from None


@contextlib.contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `out`, on any failure it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.edgeq-", dir=out.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    os.chmod(stage, 0o755)  # mkdtemp makes it 0700
    if out.exists():
        old = out.with_name(f".{out.name}.edgeq-old-{os.getpid()}")
        os.rename(out, old)
        os.rename(stage, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(stage, out)
