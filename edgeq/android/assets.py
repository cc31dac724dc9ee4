"""`edgeq android DIST APP`: the exported .pte and what the demo app needs beside it, into the
app's assets/ folder.

    model.pte          the int8 (or fp32) .pte, checked against its sha256 in manifest.json
    labels.txt         one class name per line, in output order
    preprocess.json    the export's preprocessing (the app's Java code applies it as edgeq does)
    samples/*.png      bundled images: held-out inputs from reference.npz, turned back into pixels
    golden/            what the app's tests compare against: golden.json (shapes, Python's top-5,
                       tolerance, the ExecuTorch runtime the offline APK packages), inputs.f32
                       (Python's preprocessing of samples/*.png) and outputs.f32 (the .pte's outputs on
                       those inputs, run on the host by ExecuTorch)

Only these files are edgeq's: they are built in a staging folder beside assets/ (a failure leaves
assets/ as it was), then moved in one by one, and `.edgeq-assets.json` lists them, so the next run
replaces exactly those and never a file of the user's.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import numpy as np
from packaging.version import InvalidVersion, Version
from PIL import Image

from edgeq import runner
from edgeq.validate import output_tolerance
from edgeq.android import apk
from edgeq.data import Preprocess, one_per_class_first
from edgeq.errors import EdgeqError
from edgeq.manifest import Manifest, verify_file, write_atomic
from edgeq.paths import inside, remove_stale, scratch_prefix
from edgeq.schema import SchemaError, convert

ASSETS = Path("app") / "src" / "main" / "assets"
OWNED = ".edgeq-assets.json"  # in assets/: the files edgeq wrote there
GOLDEN_SAMPLES = 10  # one per class where the export has labels
TOP_K = 5


@dataclass
class AndroidAssets:
    folder: Path
    files: list[str]  # relative to `folder`
    samples: int
    precision: str
    executorch_export: str
    executorch_app: str | None
    warnings: list[str] = field(default_factory=list)


def install(dist: str | Path, app: str | Path, precision: str = "int8") -> AndroidAssets:
    dist, app = Path(dist), Path(app)
    manifest = Manifest.load(dist)
    if not (app / "app" / "build.gradle").is_file():
        raise EdgeqError(f"{app} is not the edgeq Android demo (no app/build.gradle): pass the android_demo/ "
                         "folder of the edgeq repository")
    try:
        pte = manifest.artifact("pte", precision)
    except KeyError:
        raise EdgeqError(f"{dist} has no {precision} .pte: export with --formats pte (and --precisions "
                         f"{precision})") from None
    verify_file(dist, pte.path, pte.sha256)
    if not manifest.reference:
        raise EdgeqError(f"{dist} has no reference.npz (exported by an older edgeq): re-export it")
    verify_file(dist, manifest.reference.path, manifest.reference.sha256)
    preprocess = manifest.preprocess
    if preprocess is None or manifest.model.num_classes is None:
        raise EdgeqError(f"{dist} is an export of {manifest.model.source}, which takes tensors, not an image: the demo "
                         "app classifies camera images; run the .pte from your own app's code")
    classes = manifest.model.classes or [f"class {i}" for i in range(manifest.model.num_classes)]

    final = app / ASSETS
    final.mkdir(parents=True, exist_ok=True)
    owned = _owned(final)
    remove_stale(final.parent, ".assets.edgeq-")
    stage = Path(tempfile.mkdtemp(prefix=scratch_prefix(".assets.edgeq-"), dir=final.parent))
    try:
        shutil.copyfile(dist / pte.path, stage / "model.pte")
        (stage / "labels.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
        (stage / "preprocess.json").write_text(json.dumps({
            **preprocess.to_dict(), "input_shape": manifest.model.input_shape, "model": manifest.model.source,
            "precision": precision, "edgeq": manifest.edgeq_version,
            "executorch": manifest.versions.get("executorch")}, indent=2) + "\n")
        count = _golden(stage, dist / pte.path, dist / manifest.reference.path, preprocess, classes, precision)
        written = _move_in(stage, final, owned)
    finally:
        shutil.rmtree(stage, ignore_errors=True)

    exporter = manifest.versions.get("executorch", "unknown")
    in_app = _gradle_property(app / "gradle.properties", "executorchVersion")
    warnings = []
    if in_app != exporter:
        warnings.append(f"the app builds against ExecuTorch {in_app} but the .pte was exported with {exporter}: "
                        f"set executorchVersion={exporter} in {app / 'gradle.properties'}")
    return AndroidAssets(final, written, count, precision, exporter, in_app, warnings)


def newer_than_runtime(exporter: str | None) -> str | None:
    """A warning when the .pte comes from a newer ExecuTorch than the offline APK's runtime (which
    promises backward compatibility only), else None."""
    try:
        if exporter is None or Version(exporter) <= Version(apk.RUNTIME_EXECUTORCH):
            return None
    except InvalidVersion:
        return None
    return (f"the .pte was exported with ExecuTorch {exporter}, newer than the APK's runtime "
            f"{apk.RUNTIME_EXECUTORCH} ({apk.EXECUTORCH_NPM}); ExecuTorch runs older models, not necessarily "
            "newer ones: the runtime check decides")


def _owned(assets: Path) -> set[str]:
    """The files the last `edgeq android` wrote in assets/ (none before the first)."""
    record = assets / OWNED
    if not record.is_file():
        return set()
    try:
        names = convert(list[str], json.loads(record.read_text()).get("files"), "files")
        return {str(inside(assets, n, f"{record} lists").relative_to(assets)) for n in names}
    except (ValueError, AttributeError, SchemaError, EdgeqError) as e:
        raise EdgeqError(f"{record} is damaged ({e}): delete it and the assets edgeq wrote, then rerun") from None


def _move_in(stage: Path, assets: Path, owned: set[str]) -> list[str]:
    """Move the staged files into assets/, replacing only files edgeq wrote there before; then remove
    the ones of the last run that this run did not write. Returns the new list."""
    new = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
    theirs = [n for n in new if (assets / n).exists() and n not in owned]
    if theirs:
        raise EdgeqError(f"{assets / theirs[0]} exists and was not written by edgeq android: move it out of "
                         "assets/ (edgeq replaces only its own files there)")
    # Listed first as old ∪ new: an interrupted move leaves nothing edgeq would later refuse as foreign.
    write_atomic(assets / OWNED, json.dumps({"files": sorted(owned | set(new))}, indent=1).encode())
    for name in new:
        (assets / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / name, assets / name)
    for name in sorted(owned - set(new)):
        (assets / name).unlink(missing_ok=True)
        for folder in (assets / name).parents:  # folders edgeq made and that are now empty
            if folder == assets or any(folder.iterdir()):
                break
            folder.rmdir()
    write_atomic(assets / OWNED, json.dumps({"files": new}, indent=1).encode())
    return new


def _golden(assets: Path, pte: Path, reference: Path, preprocess: Preprocess, classes: list[str],
            precision: str) -> int:
    """Sample PNGs from the reference inputs (one per class where there are labels), then golden data."""
    with np.load(reference) as ref:
        inputs, labels = ref["inputs"], ref["labels"] if "labels" in ref else None
    picks = one_per_class_first(labels, len(inputs), GOLDEN_SAMPLES)
    images = []
    for n, i in enumerate(picks):
        label = None if labels is None else int(labels[i])
        name = f"{n:02d}_{_slug(classes[label]) if label is not None else 'sample'}.png"
        images.append((name, _to_image(inputs[i], preprocess), label))
    run = runner.load("pte", str(pte))
    return write_golden(assets, images, preprocess, lambda x: run(x[None])[0], precision,
                        f"ExecuTorch {version('executorch')} on the host ({platform.machine()})",
                        {"apk_runtime": {"executorch": apk.RUNTIME_EXECUTORCH, "package": apk.EXECUTORCH_NPM}})


def write_golden(assets: Path, images: list[tuple[str, Image.Image, int | None]], preprocess: Preprocess,
                 forward: Callable[[np.ndarray], np.ndarray], precision: str, produced_by: str,
                 extra: dict | None = None) -> int:
    """samples/NAME.png for each image, and golden/: Python's preprocessing of each PNG as saved (the
    parity reference), `forward` of those floats, and Python's top-5 of the outputs. `extra` goes
    into golden.json as it is."""
    (assets / "samples").mkdir(exist_ok=True)
    (assets / "golden").mkdir(exist_ok=True)
    samples, floats, outputs = [], [], []
    for name, image, label in images:
        image.save(assets / "samples" / name)
        with Image.open(assets / "samples" / name) as saved:
            x = preprocess.apply(saved)
        y = np.asarray(forward(x), np.float32).reshape(-1)
        floats.append(x)
        outputs.append(y)
        samples.append({"image": f"samples/{name}", "label": label, "top5": top_k(y, TOP_K)})
    outputs_array = np.stack(outputs)
    atol = output_tolerance(outputs_array, precision)  # the phone's kernels round like any other CPU's
    np.stack(floats).astype("<f4").tofile(assets / "golden" / "inputs.f32")
    outputs_array.astype("<f4").tofile(assets / "golden" / "outputs.f32")
    (assets / "golden" / "golden.json").write_text(json.dumps({
        "input_shape": [1, *floats[0].shape], "num_classes": int(outputs_array.shape[1]),
        "inputs": "inputs.f32", "outputs": "outputs.f32", "output_atol": atol, "produced_by": produced_by,
        "samples": samples, **(extra or {})}, indent=2) + "\n")
    return len(samples)


def top_k(logits: np.ndarray, k: int) -> list[dict]:
    """Softmax in float64, then the k best; ties go to the lower index (the app's Java does the same)."""
    x = logits.astype(np.float64)
    p = np.exp(x - x.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")[:k]
    return [{"index": int(i), "score": float(p[i])} for i in order]


def _to_image(x: np.ndarray, preprocess: Preprocess) -> Image.Image:
    """A C×H×W reference input back to 8-bit RGB pixels. The inputs came from 8-bit images through
    resize and crop (which keep 8 bits), so this inverts them exactly. RGB even for grayscale
    models: Java's ImageIO reads gray PNGs through a color transform, RGB ones as they are."""
    mean = np.asarray(preprocess.mean, np.float64)[:, None, None]
    std = np.asarray(preprocess.std, np.float64)[:, None, None]
    pixels = np.clip(np.rint((x.astype(np.float64) * std + mean) / preprocess.scale), 0, 255).astype(np.uint8)
    hwc = pixels.transpose(1, 2, 0)
    return Image.fromarray(np.repeat(hwc, 3, axis=2) if hwc.shape[2] == 1 else hwc, "RGB")


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_") or "sample"


def _gradle_property(path: Path, key: str) -> str | None:
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            return value.strip()
    return None
