"""`edgeq.export`: model + data → quantize → export (.pte, .onnx, .ptl) → host check → manifest.

Each stage is its own module; this one only wires them and owns the output folder, which is
built in a temporary sibling folder and moved into place at the end, so a failure or Ctrl-C
never leaves a half-written export behind. What to do comes in one `ExportConfig`.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import platform
import signal
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from rich.progress import Progress

from edgeq import procs, qat, report, runner, schema
from edgeq.config import ExportConfig, QuantRecipe
from edgeq.data import FASHION_MNIST, ImageSet, Preprocess, one_per_class_first, open_images
from edgeq.errors import EdgeqError, first_line
from edgeq.export import onnx, pte, ptl
from edgeq.manifest import (PLAN, Artifact, CheckImages, DataRecord, FloatPlan, ImagesUsed, LayerNumerics,
                            Manifest, Model, Reference, Training, WeightSteps, check_replaceable, dumps, sha256_file,
                            staged_output, write_atomic)
from edgeq.models import LoadedModel, load_model
from edgeq.placement import ensure_ready, placement
from edgeq.progress import log_lines, progress_bars
from edgeq.quantize import as_example, embedding, export_graph, output_budget, quantize_static, quantizer_for
from edgeq.quantize import static_tensors
from edgeq.quantize.dynamic import int8_layers, quantize_dynamic_eager, quantize_dynamic_pt2e
from edgeq.quantize.budget import search as budget_search
from edgeq.quantize.numerics import layer_errors, unit_errors
from edgeq.quantize.plan import check_known, exported_layers
from edgeq.quantize.recurrent import as_linear
from edgeq.quantize.weights import ready_for_int8
from edgeq.targets import Target, load_target
from edgeq.tensors import TensorSet, flat_outputs, open_npz
from edgeq.validate import budget_gate, compare, host_key, judge, length_check, measure_outputs, validate

LIBRARIES = ("torch", "torchvision", "torchao", "executorch", "onnx", "onnxscript", "onnxruntime", "numpy")
DEFAULT_HELD_OUT = 200  # held-out calibration images checked when there is no eval data
QUANTIZER_NAMES = {"xnnpack": "PT2E XNNPACKQuantizer", "x86": "PT2E X86InductorQuantizer",
                   "fx": "FX {backend} qconfig",
                   "ort": "onnxruntime quantize_static (QDQ, uint8 activations, int8 weights)",
                   "eager": "torch.ao quantize_dynamic ({backend} engine)"}
STATIC_TENSORS = {"xnnpack": "PT2E XNNPACKQuantizer, static (calibrated on the .npz)",
                  "ort": "onnxruntime quantize_static (QDQ on MatMul/Gemm/Conv, uint8 activations, int8 weights)",
                  "eager": "torch.ao eager static, QuantStub/DeQuantStub around each Linear/Conv ({backend} engine)"}
DYNAMIC_PTE = "PT2E XNNPACKQuantizer, dynamic (int8 weights per channel, activations per row at run time)"
REFERENCE = "reference.npz"  # inputs + float outputs for validation on targets
# Held-out inputs stored for targets (validate.PARITY_SAMPLES of them, one per class first, are run
# by default; all of them by an artifact whose outputs there differ from the host's).
REFERENCE_SAMPLES = 256
REFERENCE_BYTES = 16 << 20  # at 224×224×3 that is 26 inputs
LAYER_NUMERICS_IMAGES = 16  # held-out images: enough to rank layers
SEARCH_BYTES = 512 << 20  # check images an accuracy-budget search scores candidates on, at most
EXPORT_PROCESSES = 2  # forked workers for the exports and the host check (lowering is single-threaded Python)
CHECK_CHUNK = 256  # images preprocessed at a time during checks (bounds memory at 224×224)
LENGTH_SAMPLES = 8  # check samples run again at each other length of a dynamic axis, here and on targets


@dataclass(frozen=True)
class CheckSet:
    """The held-out samples every artifact is compared on (never used for calibration): images, or
    samples of named tensors (a model with example_inputs())."""

    images: ImageSet | TensorSet
    indices: Sequence[int]
    labels: np.ndarray | None

    def batch(self, preprocess: Preprocess, indices: Sequence[int]) -> tuple[np.ndarray, ...]:
        """Every input of these samples, batch first (images preprocessed)."""
        if isinstance(self.images, TensorSet):
            return self.images.batch(list(indices))
        return (self.images.batch(preprocess, list(indices)),)

    def within(self, preprocess: Preprocess, limit: int) -> int:
        """How many of the first samples' inputs fit in `limit` bytes (at least one)."""
        per_sample = sum(x[0].nbytes for x in self.batch(preprocess, self.indices[:1]))
        return max(1, min(len(self.indices), limit // max(1, per_sample)))


@dataclass
class Job:
    """One export under way: the config, what it resolved to, and what the stages produced."""

    out: Path
    config: ExportConfig
    target: Target
    recipe: QuantRecipe  # the config's, with the backend resolved
    loaded: LoadedModel
    preprocess: Preprocess | None  # image models
    eval_set: ImageSet | TensorSet | None
    bar: Progress
    timings: dict[str, float] = field(default_factory=dict)
    plan: FloatPlan | None = None  # the float layers of static int8 (a budget's search, or --plan)
    _reference: torch.nn.Module | None = None

    def reference(self) -> torch.nn.Module:
        """The float model as a torch.export graph (what per-layer numerics compare with)."""
        if self._reference is None:
            self._reference = export_graph(self.loaded.module, self.loaded.spec, dynamic_batch=True).module()
        return self._reference

    def flows(self) -> list[str]:
        return list(dict.fromkeys(self.flow(f) for f in self.config.formats))

    def flow(self, fmt: str) -> str:
        return quantizer_for(fmt, self.recipe.backend, self.config.method, self.loaded.signature is not None)


@dataclass
class Quantized:
    """The int8 models per flow, or, for onnxruntime's own flow, the calibration images it quantizes
    with and the float model it quantizes (static: with its weights made ready, see weight_steps)."""

    models: dict[str, torch.nn.Module] = field(default_factory=dict)
    ort_calibration: np.ndarray | tuple[np.ndarray, ...] | None = None
    ort_source: torch.nn.Module | None = None
    weight_steps: WeightSteps | None = None


@dataclass
class Prepared:
    """What calibration or QAT hands the export: the int8 models and the images around them."""

    quantized: Quantized
    check: CheckSet
    labelled: ImageSet | TensorSet | None  # calibration or training data (its classes name the outputs when they fit)
    used: dict[str, Any]  # DataRecord's calibration, or training and validation
    training: Training | None = None
    float_outputs: list[np.ndarray] | None = None  # the float model's on the check set, where already run


def export(out: str | Path, config: ExportConfig | None = None, *, progress: bool = True,
           **keywords: Any) -> Manifest | None:
    """Quantize (static, or QAT), export every requested format, check each artifact on the host,
    write `out/manifest.json`, then validate on the target (set up on first use). Returns the
    manifest, or None on the other ranks of a torchrun job (rank 0 exports). Raises EdgeqError for
    bad input. The older keyword form (`model=…, calib_data=…`) still works: see
    ExportConfig.from_keywords."""
    config = ExportConfig.from_keywords(config or ExportConfig(), keywords) if keywords else config or ExportConfig()
    out = Path(out)
    started = time.perf_counter()
    target = load_target(config.target)
    recipe = replace(config.quantization, backend=config.quantization.backend or target.backend)
    inputs = {"--weights": config.weights, "--calib-data": config.data.calib, "--eval-data": config.data.eval,
              "--train-data": config.data.train, "--checkpoint-dir": config.checkpoint_dir}
    check_output_folder(out, inputs)

    loaded = load_model(config.model, config.weights, config.input_shape)
    if loaded.signature is not None:
        _check_tensor_export(config, loaded)
    if config.budget.on_outputs and loaded.signature is None:
        raise EdgeqError("--min-cosine and --min-sqnr budget the outputs of a model of tensors (example_inputs()); "
                         "an image classifier's budget is --max-agreement-drop or --max-accuracy-drop")
    if recipe.dynamic_layers and (loaded.signature is None or config.method != "static"):
        raise EdgeqError("--dynamic-layers makes static int8 of a model of tensors (example_inputs()) hybrid: pass "
                         "it with --method static on such a model, or drop it")
    preprocess = _preprocess(loaded, config) if loaded.signature is None else None
    data = config.data
    eval_set = _open_data(data.eval, "--eval-data", loaded, "test") if data.eval else \
        (open_images(FASHION_MNIST, "test") if loaded.builtin else None)
    if isinstance(eval_set, ImageSet) and eval_set.classes and not _labels_fit(eval_set, loaded.num_classes):
        raise EdgeqError(f"{eval_set.description} has {len(eval_set.classes)} classes but the model outputs "
                         f"{loaded.num_classes}: use data with the model's classes, or a model built for this data "
                         "(e.g. ?num_classes=)")

    with qat.process_group(config.training.device if config.method == "qat" else "cpu") as world, \
            progress_bars(progress and world.main) as bar:
        job = Job(out, config, target, recipe, loaded, preprocess, eval_set, bar)
        prepared = _train(job, world) if config.method == "qat" else \
            _quantize_dynamic(job) if config.method == "dynamic" or (loaded.signature and "int8" not in
                                                                     config.precisions) else \
            _calibrate_tensors(job) if loaded.signature else _calibrate(job)
        if not world.main:
            return None
        check = prepared.check

        with staged_output(out, before_replace=lambda: check_output_folder(out, inputs)) as stage:
            artifacts, numerics = _export_all(job, prepared, stage)
            t0 = time.perf_counter()
            float_accuracy, float_outputs, host_outputs = _host_check(job, check, artifacts, stage,
                                                                      prepared.float_outputs)
            at_lengths = _length_check(job, check, artifacts, stage)
            job.timings["host_check"] = time.perf_counter() - t0
            reference = _write_reference(stage, job, check, float_outputs, host_outputs, at_lengths)
            job.timings["total"] = time.perf_counter() - started
            classes = next((s.classes for s in (eval_set, prepared.labelled) if isinstance(s, ImageSet)
                            and _labels_fit(s, loaded.num_classes)), None)
            manifest = Manifest(
                edgeq_version=_version("edgeq"), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                versions={"python": platform.python_version(), **{lib: _version(lib) for lib in LIBRARIES}},
                model=Model(**loaded.info(), classes=list(classes) if classes else None),
                target=target, method=config.method, quantization=recipe, preprocess=preprocess,
                data=DataRecord(**prepared.used, check=CheckImages(**check.images.info(len(check.indices)),
                                                          held_out=_held_out(config.method, eval_set)),
                                eval=ImagesUsed(**eval_set.info(len(check.indices))) if eval_set is not None else None),
                float_accuracy=float_accuracy, artifacts=artifacts, reference=reference, training=prepared.training,
                timings_s={k: round(v, 3) for k, v in job.timings.items()}, recipe=config,
                weight_steps=prepared.quantized.weight_steps, layer_numerics=numerics, plan=job.plan)
            if job.plan is not None:
                write_atomic(stage / PLAN, (dumps(schema.dump(job.plan)) + "\n").encode())
                manifest.plan_sha256 = sha256_file(stage / PLAN)
            manifest.write(stage)
            report.write(stage, manifest)

        if config.validate:
            ensure_ready(placement(target), log_lines(bar))
            validate(out, config.target, config.validation, progress=bar)
            manifest = Manifest.load(out)
    return manifest


def _check_tensor_export(config: ExportConfig, loaded: LoadedModel) -> None:
    """What a model of any tensors (example_inputs()) can be exported with today."""
    source = loaded.source
    if config.method == "qat" and "int8" in config.precisions:
        raise EdgeqError(f"{source} takes tensors (example_inputs()); QAT trains image classifiers: pass --method "
                         "static or dynamic, or --precisions fp32")
    recurrent = next((name for name, m in loaded.module.named_modules() if isinstance(m, nn.RNNBase)), None)
    if recurrent is not None and loaded.signature.max_length and "int8" in config.precisions:
        # int8 writes a recurrent layer as its steps (edgeq.quantize.recurrent): as many as the length
        raise EdgeqError(f"{source}: {recurrent} ({type(loaded.module.get_submodule(recurrent)).__name__}) runs over "
                         "the model's dynamic length, and int8 writes recurrent layers one step at a time, a fixed "
                         "number of steps: drop dynamic_axes, or export a step model (one cell call, state in and "
                         "out) and loop over it on the device")


def _open_data(source: str, option: str, loaded: LoadedModel, split: str) -> ImageSet | TensorSet:
    """The user's data: an .npz of the model's inputs for a model with example_inputs(), else images."""
    if loaded.signature is not None:
        if not source.endswith(".npz"):
            raise EdgeqError(f"{option} {source}: {loaded.source} takes tensors (example_inputs()), so its data is "
                             f"an .npz with one array per forward parameter ({', '.join(loaded.signature.names)})")
        return open_npz(Path(source), loaded.signature, option)
    if source.endswith(".npz") and Path(source).is_file():
        raise EdgeqError(f"{option} {source} is an .npz: tensor data is for models whose factory's module defines "
                         "example_inputs(); this one takes images: pass an image folder")
    return open_images(source, split)


def _quantize_dynamic(job: Job) -> Prepared:
    """Dynamic int8 (edgeq.quantize.dynamic), or fp32 only: no calibration, so the check set is the
    eval data, or the first samples of --calib-data (every one of them unused). One model per flow:
    PT2E for .pte, torch.ao's eager modules for .ptl; onnxruntime quantizes the float .onnx at export."""
    config, loaded = job.config, job.loaded
    data = _open_data(config.data.calib, "--calib-data", loaded, "train") if config.data.calib else \
        open_images(FASHION_MNIST, "train") if loaded.builtin else None
    n = config.data.check_samples or DEFAULT_HELD_OUT
    if job.eval_set is not None:
        check = _check_set(job.eval_set, config.data.check_samples, loaded.num_classes)
    elif data is not None:
        check = _check_set(data, n, loaded.num_classes)
    else:
        raise EdgeqError(f"{loaded.source} needs samples to check the artifacts on: pass --eval-data (or "
                         "--calib-data)" + (" as an .npz of the model's inputs" if loaded.signature else ""))
    prepared = Prepared(Quantized(), check, data, {}, float_outputs=_float_model_runs_on(job, check))
    if "int8" not in config.precisions:
        return prepared
    recipe = job.recipe
    _tensor_plan(job, prepared, lambda float_layers: quantize_dynamic_eager(loaded.module, recipe.backend,
                                                                           recipe.per_channel, float_layers))
    recipe, example = job.recipe, as_example(loaded.spec)
    task = job.bar.add_task("dynamic int8 (no calibration)", total=None)
    for flow in job.flows():
        t0 = time.perf_counter()
        if flow == "xnnpack":
            prepared.quantized.models[flow] = quantize_dynamic_pt2e(loaded.module, example, recipe.per_channel,
                                                                    recipe.float_layers)
        elif flow == "eager":
            prepared.quantized.models[flow] = quantize_dynamic_eager(loaded.module, recipe.backend, recipe.per_channel,
                                                                     recipe.float_layers)
        else:  # "ort": at export time, from the float model
            prepared.quantized.ort_source = loaded.module
        job.timings[f"quantize_{flow}"] = time.perf_counter() - t0
    job.bar.remove_task(task)
    return prepared


def _float_model_runs_on(job: Job, check: CheckSet) -> list[np.ndarray]:
    """The float model on every check sample, a chunk at a time, before any export: a failure is the
    user's model or data (a token id outside the embedding table, a shape it cannot take). Returns
    its outputs (one array per output)."""
    chunks = [_float_outputs(job, check.batch(job.preprocess, check.indices[start:start + CHECK_CHUNK]),
                             f"on {check.images.description}", "fix the model or the data")
              for start in range(0, len(check.indices), CHECK_CHUNK)]
    return [np.concatenate(c) for c in zip(*chunks)]


def _float_outputs(job: Job, inputs: tuple[np.ndarray, ...], where: str, fix: str) -> list[np.ndarray]:
    """The float model's outputs on a batch of the user's inputs; its failure is the user's model or
    data, said in one line (`where` it failed, the `fix`)."""
    try:
        with torch.no_grad():
            return [t.numpy() for t in flat_outputs(job.loaded.module(*map(torch.from_numpy, inputs)))]
    except Exception as e:  # noqa: BLE001 - the user's model, on the user's data
        raise EdgeqError(f"{job.loaded.source} failed {where} ({type(e).__name__}: {first_line(e)}): {fix}") from None


def _tensor_plan(job: Job, prepared: Prepared, quantize: Callable[[tuple[str, ...]], torch.nn.Module]) -> None:
    """A model of tensors' float units, from --plan or an output budget's search, into the job's
    recipe; `quantize(float_units)` makes a candidate of the search."""
    budget = job.config.budget
    if budget.plan:
        job.plan = FloatPlan(float_layers=load_plan(Path(budget.plan)).float_layers, source=budget.plan)
    elif budget.on_outputs:
        job.plan = _output_plan(job, prepared.check, prepared.float_outputs, quantize)
    if job.plan is not None:
        job.recipe = replace(job.recipe, float_layers=tuple(job.plan.float_layers))


def _output_plan(job: Job, check: CheckSet, expected: list[np.ndarray],
                 quantize: Callable[[tuple[str, ...]], torch.nn.Module]) -> FloatPlan:
    """The float units that keep every output within --min-cosine / --min-sqnr (output_budget), on
    the check samples (at most SEARCH_BYTES of inputs)."""
    loaded = job.loaded
    n = check.within(job.preprocess, SEARCH_BYTES)
    inputs = check.batch(job.preprocess, list(check.indices)[:n])
    t0 = time.perf_counter()
    plan = output_budget.search(loaded.module, quantize, inputs, [e[:n] for e in expected], loaded.signature.outputs,
                                job.config.budget, job.bar)
    job.timings["budget_search"] = time.perf_counter() - t0
    return plan


def _calibrate(job: Job) -> Prepared:
    """Static quantization, once per flow the formats need (FX for .ptl, PT2E xnnpack and/or x86),
    all calibrated on the same preprocessed images; the held-out check set beside them."""
    images = _open_data(job.config.data.calib or FASHION_MNIST, "--calib-data", job.loaded, "train")
    indices, check = _split(images, job)
    prepared = Prepared(Quantized(), check, images, {"calibration": ImagesUsed(**images.info(len(indices)))})
    quantized = prepared.quantized
    if "int8" not in job.config.precisions:
        return prepared
    bar, recipe = job.bar, job.recipe
    task = bar.add_task("preprocessing calibration images", total=len(indices))
    chunks = []
    for i in range(0, len(indices), 64):
        chunks.append(images.batch(job.preprocess, indices[i:i + 64]))
        bar.advance(task, len(chunks[-1]))
    calib = np.concatenate(chunks)
    if job.config.budget.metric or job.config.budget.plan:
        job.plan = _float_plan(job, calib, check)
        job.recipe = recipe = replace(recipe, float_layers=tuple(job.plan.float_layers))
    task = bar.add_task("preparing weights (BN fold, equalization, bias correction)", total=None)
    source, quantized.weight_steps = ready_for_int8(job.loaded.module, recipe, torch.from_numpy(calib))
    bar.remove_task(task)
    for flow in job.flows():
        if flow == "ort":  # onnxruntime quantizes the float .onnx at export time, with these images
            quantized.ort_calibration, quantized.ort_source = calib, source
            continue
        t0 = time.perf_counter()
        label = f"FX {recipe.backend}, for .ptl" if flow == "fx" else f"PT2E {flow}"

        def calibration() -> Iterator[np.ndarray]:
            t = bar.add_task(f"calibrating ({label})", total=len(calib))  # noqa: B023 - used in this iteration
            for i in range(0, len(calib), recipe.calib_batch):
                yield calib[i:i + recipe.calib_batch]
                bar.advance(t, len(calib[i:i + recipe.calib_batch]))

        quantized.models[flow] = quantize_static(flow, source, job.loaded.input_shape, recipe, calibration)
        job.timings[f"quantize_{flow}"] = time.perf_counter() - t0
    return prepared


def _calibrate_tensors(job: Job) -> Prepared:
    """Static int8 (or hybrid) of a model of tensors (edgeq.quantize.static_tensors), a model per flow,
    calibrated on the .npz's first samples; the held-out check set beside them. The eager model is
    made whatever the formats: the per-unit numerics measure it."""
    config, loaded = job.config, job.loaded
    if config.budget.metric and not config.budget.on_outputs:
        raise EdgeqError(f"{loaded.source} takes tensors (example_inputs()): its outputs are budgeted with --min-cosine "
                         "or --min-sqnr; --max-accuracy-drop and --max-agreement-drop budget an image classifier's top-1")
    if config.data.calib is None:
        raise EdgeqError(f"static int8 of {loaded.source} calibrates on its inputs: pass --calib-data as an .npz "
                         f"with one array per forward parameter ({', '.join(loaded.signature.names)}), or use "
                         "--method dynamic")
    data = _open_data(config.data.calib, "--calib-data", loaded, "train")
    indices, check = _split(data, job)
    float_outputs = _float_model_runs_on(job, check)
    calib = data.batch(list(indices))
    prepared = Prepared(Quantized(), check, data, {"calibration": ImagesUsed(**data.info(len(indices)))},
                        float_outputs=float_outputs)
    bar = job.bar

    def batches(label: str | None = None) -> Iterator[tuple[np.ndarray, ...]]:
        task, size = bar.add_task(f"calibrating ({label})", total=len(indices)) if label else None, job.recipe.calib_batch
        for i in range(0, len(indices), size):
            yield tuple(x[i:i + size] for x in calib)
            if task is not None:
                bar.advance(task, min(size, len(indices) - i))

    recipe = job.recipe
    _tensor_plan(job, prepared, lambda float_layers: static_tensors.quantize_eager(
        loaded.module, replace(recipe, float_layers=float_layers), batches))
    recipe = job.recipe
    both = set(recipe.float_layers) & set(recipe.dynamic_layers)
    if both:
        raise EdgeqError(f"{sorted(both)[0]} is both a float layer (the plan) and a dynamic one (--dynamic-layers): "
                         "name it in one of them")
    quantized = prepared.quantized
    for flow in dict.fromkeys([*job.flows(), "eager"]):
        t0 = time.perf_counter()
        if flow == "xnnpack":
            quantized.models[flow] = static_tensors.quantize_pt2e(
                loaded.module, as_example(loaded.spec), recipe, lambda: batches("PT2E XNNPACK, for .pte"))
        elif flow == "eager":
            quantized.models[flow] = static_tensors.quantize_eager(
                loaded.module, recipe, lambda: batches(f"torch.ao eager {recipe.backend}, for .ptl"))
        else:  # "ort": onnxruntime calibrates the float .onnx at export time, on these samples
            quantized.ort_calibration = calib
            quantized.ort_source = as_linear(loaded.module.eval(), recurrent=True, attention=True)[0]
        job.timings[f"quantize_{flow}"] = time.perf_counter() - t0
    return prepared


def _float_plan(job: Job, calib: np.ndarray, check: CheckSet) -> FloatPlan:
    """The float layers: read from --plan, or searched for within the budget on the check images."""
    budget, shape = job.config.budget, job.loaded.input_shape
    layers = exported_layers(job.reference()).values()
    if budget.plan is not None:
        plan = load_plan(Path(budget.plan))
        check_known(plan.float_layers, layers, f"--plan {budget.plan}")
        return FloatPlan(float_layers=plan.float_layers, source=budget.plan)
    if budget.metric == "accuracy" and check.labels is None:
        raise EdgeqError("--max-accuracy-drop needs labelled check images (--eval-data, or labelled calibration "
                         "folders with the model's classes): pass them, or use --max-agreement-drop")
    n = check.within(job.preprocess, SEARCH_BYTES)
    images = check.images.batch(job.preprocess, list(check.indices)[:n])
    labels = None if check.labels is None else check.labels[:n]
    model, recipe = job.loaded.module, job.recipe

    def quantize(float_layers: tuple[str, ...]) -> torch.nn.Module:
        """The candidate as the export would make it: weight steps, then PT2E XNNPACK."""
        def calibration() -> Iterator[np.ndarray]:
            return (calib[i:i + recipe.calib_batch] for i in range(0, len(calib), recipe.calib_batch))

        candidate = replace(recipe, float_layers=float_layers)
        source, _ = ready_for_int8(model, candidate, torch.from_numpy(calib))
        return quantize_static("xnnpack", source, shape, candidate, calibration)

    t0 = time.perf_counter()
    # The float weights as the int8 model has them before rounding (BN folded, equalized): the cheap
    # ranking runs a layer in float with these.
    unrounded, _ = ready_for_int8(model, replace(recipe, adaround=False, bias_correction=False),
                                  torch.from_numpy(calib), fold=True)
    folded = export_graph(unrounded, shape, dynamic_batch=True).module()
    plan = budget_search(quantize, job.reference(), folded, images, labels, budget, job.bar)
    job.timings["budget_search"] = time.perf_counter() - t0
    return plan


def load_plan(path: Path) -> FloatPlan:
    """A plan.json written by an earlier export (its float layers are what --plan applies)."""
    try:
        data = json.loads(path.read_text())
        return schema.build(FloatPlan, data)
    except FileNotFoundError:
        raise EdgeqError(f"--plan {path} does not exist: pass the plan.json of an earlier export") from None
    except (json.JSONDecodeError, UnicodeDecodeError, schema.SchemaError) as e:
        raise EdgeqError(f"--plan {path} is not a plan.json ({e}): pass the plan.json of an earlier export") from None


def _train(job: Job, world: qat.World) -> Prepared:
    """QAT, once per flow the formats need; each flow has its own checkpoint file."""
    config, loaded = job.config, job.loaded
    if config.data.train is None and not loaded.builtin:
        raise EdgeqError("--method qat needs --train-data: a labelled image folder (one subfolder per class)")
    split = qat.TrainSplit.of(open_images(config.data.train or FASHION_MNIST, "train"), config.training,
                              loaded.num_classes, world)
    n = config.data.check_samples
    check = _check_set(job.eval_set, n, loaded.num_classes) if job.eval_set is not None else \
        CheckSet(split.images, split.val[:n], split.images.labels[split.val[:n]])
    used = {"training": ImagesUsed(**split.images.info(len(split.train))), "validation": len(split.val)}
    checkpoints = Path(config.checkpoint_dir) if config.checkpoint_dir else job.out.with_name(f"{job.out.name}.qat")
    quantized, records = Quantized(), []
    if "int8" in config.precisions:
        run = qat.Run(job.loaded, job.recipe, config.training, split, job.preprocess, config.resume, world, job.bar)
        for flow in job.flows():
            t0 = time.perf_counter()
            quantized.models[flow], record = qat.train(flow, run, checkpoints / f"{flow}.pt")
            records.append(record)
            job.timings[f"qat_{flow}"] = time.perf_counter() - t0
    training = Training(config=config.training.resolved(), processes=world.size, checkpoints=str(checkpoints),
                        device=str(qat.resolve_device(config.training.device, world)), flows=records)
    return Prepared(quantized, check, split.images, used, training)


def _layer_numerics(job: Job, prepared: Prepared, flow: str) -> tuple[LayerNumerics, float]:
    """Per-layer SQNR of the PT2E int8 model (the .pte's graph) on a few held-out images, or, for
    dynamic int8, per unit of the eager model on a few check samples; and its time (never touches the
    progress bar: it runs in a forked child)."""
    t0 = time.perf_counter()
    check, recipe = prepared.check, job.recipe
    samples = check.batch(job.preprocess, list(check.indices)[:LAYER_NUMERICS_IMAGES])
    if job.config.method == "dynamic":
        int8 = quantize_dynamic_eager(job.loaded.module, recipe.backend, recipe.per_channel, recipe.float_layers,
                                      split=True)
        numerics = unit_errors(job.loaded.module, int8, samples, recipe.float_layers)
    elif job.loaded.signature is not None:  # static int8 of a model of tensors: its eager model, by unit
        numerics = unit_errors(job.loaded.module, prepared.quantized.models["eager"], samples, recipe.float_layers)
    else:
        numerics = layer_errors(job.reference(), prepared.quantized.models[flow], samples[0], flow,
                                recipe.float_layers)
    return numerics, time.perf_counter() - t0


def _export_all(job: Job, prepared: Prepared, stage: Path) -> tuple[list[Artifact], LayerNumerics | None]:
    """Every format × precision into `stage`, each with its file's size and sha256, and the per-layer
    numerics. Lowering (ExecuTorch's passes, the ONNX exporter) and the numerics are single-threaded
    Python, so they run in forked processes side by side where the machine has the cores; the
    numerics go last, beside the longest lowering (a .pte)."""
    todo = [(precision, fmt) for precision in job.config.precisions for fmt in job.config.formats]
    # per-layer numerics: of the PT2E graph for static and QAT int8 of an image model; by unit, on the
    # eager model, for dynamic int8 and for models of tensors
    flow = None if "int8" not in job.config.precisions else \
        "eager" if job.config.method == "dynamic" or job.loaded.signature is not None else \
        next((f for f in ("xnnpack", "x86") if f in prepared.quantized.models), None)
    _import_exporters(job.config.formats)
    task = job.bar.add_task("exporting" + (" and per-layer numerics" if flow else ""), total=len(todo) + bool(flow))

    def work(i: int) -> tuple[Any, float]:
        if i == len(todo):
            return _layer_numerics(job, prepared, flow)
        return _export_one(job, prepared.quantized, stage, *todo[i])

    artifacts, numerics = [], None
    for done, seconds in _forked_map(work, len(todo) + bool(flow)):
        if isinstance(done, Artifact):
            artifacts.append(done)
            job.timings[f"export_{done.precision}_{done.format}"] = seconds
        else:
            numerics = done
            job.timings["layer_numerics"] = seconds
        job.bar.advance(task)
    return artifacts, numerics


def _import_exporters(formats: Sequence[str]) -> None:
    """Import the exporters' libraries once, before the fork: ExecuTorch's compiler alone takes ~10 s
    to import here, which each child would pay again, and every later export in this process too."""
    if "pte" in formats:
        import executorch.backends.xnnpack.partition.xnnpack_partitioner  # noqa: F401
        import executorch.exir  # noqa: F401
    if "onnx" in formats:
        import onnxscript  # noqa: F401
        import torch.onnx._internal.exporter._core  # noqa: F401


def _forked_map(work: Any, count: int) -> Iterator[Any]:
    """work(0) … work(count - 1), in order, in EXPORT_PROCESSES forked processes where the machine has
    the cores and fork exists (nothing is pickled in: the children read `work` from the parent's
    memory), else here."""
    workers = min(count, EXPORT_PROCESSES, os.cpu_count() or 1)
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        yield from map(work, range(count))
        return
    _forked[:] = [work]
    try:
        with procs.signals_held():
            pool = multiprocessing.get_context("fork").Pool(workers, initializer=_forked_child)
        with pool:
            yield from pool.imap(_forked_call, range(count))
    finally:
        _forked.clear()


_forked: list[Any] = []  # the work the forked children call


def _forked_child() -> None:
    """A forked worker: one intra-op thread (the parent's OpenMP threads are not in the child,
    and a team of one never needs them), Ctrl-C left to the parent, which ends the pool."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    procs.unhold_signals()


def _forked_call(index: int) -> Any:
    return _forked[0](index)


def _export_one(job: Job, quantized: Quantized, stage: Path, precision: str, fmt: str) -> tuple[Artifact, float]:
    """One artifact (never touches the progress bar: it may run in a forked child). Returns it and
    its export time."""
    t0 = time.perf_counter()
    recipe = job.recipe
    flow = job.flow(fmt)
    path = stage / f"model_{precision}.{fmt}"
    loaded, method = job.loaded, job.config.method
    tensors = loaded.signature is not None
    module, shape = loaded.module, loaded.spec
    names = loaded.input_names if loaded.signature else None
    if precision == "int8" and flow == "ort" and method == "dynamic":  # the float model, quantized by onnxruntime
        details = onnx.export_ort_dynamic(module, as_example(shape), loaded.input_names, path, recipe.per_channel,
                                          recipe.float_layers)
    elif precision == "int8" and flow == "ort":
        source = quantized.ort_source if quantized.ort_source is not None else module
        details = onnx.export_ort_quantized(source, shape, path, quantized.ort_calibration, recipe, names)
    elif fmt == "pte":
        # Static int8 of a model of tensors lowers without edgeq's rewrites: with them XNNPACK computed
        # the Tagger's static LSTM wrong (pooled output 8 dB, 35 dB without; edgeq.export.delegable).
        details = pte.export(module if precision == "fp32" else quantized.models[flow], shape, path,
                             rewrite=not (tensors and method == "static" and precision == "int8"))
    elif fmt == "onnx":
        details = onnx.export(module if precision == "fp32" else quantized.models[flow], shape, path,
                              quantized=precision == "int8", float_layers=recipe.float_layers, input_names=names)
    else:
        details = ptl.export(module if precision == "fp32" else quantized.models[flow], shape, path, recipe.backend)
    if precision == "int8":
        names = STATIC_TENSORS if tensors and method == "static" else QUANTIZER_NAMES
        details.setdefault("quantizer", DYNAMIC_PTE if method == "dynamic" and flow == "xnnpack" else
                           names[flow].format(backend=recipe.backend))
        if flow == "eager":  # the modules torch.ao made int8 (the rest run in float)
            details["int8_modules"] = int8_layers(quantized.models[flow])
        if tensors and flow == "xnnpack":
            details["int8_embeddings"] = embedding.tables(module, recipe.float_layers)
        if tensors and recipe.float_layers:
            details["float_layers"] = list(recipe.float_layers)
        if recipe.dynamic_layers:
            details["dynamic_layers"] = list(recipe.dynamic_layers)
        if method == "static" and flow != "ort":  # onnxruntime's flow names its calibrator
            details["calibration"] = recipe.calibration + \
                (f" {recipe.percentile}" if recipe.calibration == "percentile" else "")
    artifact = Artifact(format=fmt, precision=precision, path=path.name, bytes=path.stat().st_size,
                        sha256=sha256_file(path), details=details)
    return artifact, time.perf_counter() - t0


def _held_out(method: str, eval_set: ImageSet | TensorSet | None) -> str:
    if eval_set is not None:
        return "eval data"
    if method == "dynamic":
        return "calibration data (dynamic int8 calibrates nothing)"
    return "training images held out from QAT" if method == "qat" else "calibration images not used for calibration"


def _host_check(job: Job, check: CheckSet, artifacts: list[Artifact], stage: Path,
                float_outputs: list[np.ndarray] | None = None
                ) -> tuple[float | None, list[np.ndarray], dict[str, list[np.ndarray]]]:
    """Run every artifact with its own runtime on the held-out images, a chunk at a time (batched
    where the format allows, see runner.load); compare with the float model (its `float_outputs`
    where a stage ran it already). Returns the float model's accuracy and outputs, and each
    artifact's outputs (a list: one array per output)."""
    host_kernels = job.target.arch == platform.machine()
    run_time_int8 = job.config.method == "dynamic" or bool(job.recipe.dynamic_layers)  # no QDQ form
    for a in artifacts:
        if a.format == "onnx" and a.precision == "int8":
            a.details["host_check_kernels"] = "this host's (the target's architecture)" if host_kernels else \
                f"this host's {platform.machine()} integer kernels: a dynamic graph has no QDQ form to run as " \
                f"written; {job.target.arch}'s own outputs are judged by edgeq validate" \
                if run_time_int8 else \
                f"QDQ as written (onnxruntime basic optimizations): {job.target.arch} kernels are not this host's"
    # A dynamic .onnx runs onnxruntime's fused int8 kernels here; an x86 CPU without VNNI clips their
    # products (measured: 12.6 dB here, 35.8 dB for the same file on arm64), so a failure here is not
    # the artifact's.
    unjudged = {a.key for a in artifacts if a.format == "onnx" and a.precision == "int8" and not host_kernels
                and run_time_int8
                and runner.int8_products_saturate(platform.machine(), runner.cpu_model()[1])}
    runners: dict[str, runner.Runner] = {}  # loaded once per process, on its first chunk

    def check_chunk(start: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        # One intra-op thread per runtime (the forked workers have one; set here too when there are
        # none): batches keep one core busy, and with anything else running on a 2-core machine a
        # second thread made the lite interpreter 10-40× slower (seen: 0.35 → 3.9 ms an image at batch 32).
        torch.set_num_threads(1)
        if not runners:
            runners.update({a.key: _host_runner(job, stage, a) for a in artifacts})
        x = check.batch(job.preprocess, check.indices[start:start + CHECK_CHUNK])
        if float_outputs is not None:
            expected = [y[start:start + CHECK_CHUNK] for y in float_outputs]
        else:
            expected = _float_outputs(job, x, f"on {check.images.description}", "fix the model or the data")
        return expected, {key: run(list(x)) for key, run in runners.items()}

    threads = torch.get_num_threads()
    starts = range(0, len(check.indices), CHECK_CHUNK)
    reference, outputs = [], {a.key: [] for a in artifacts}
    task = job.bar.add_task("checking artifacts on the host", total=len(check.indices) * max(1, len(artifacts)))
    try:
        # Chunks of images across the forked workers: each preprocesses its chunk once and runs every
        # artifact (and the float model) on it, one thread each.
        for expected, produced in _forked_map(lambda i: check_chunk(starts[i]), len(starts)):
            reference.append(expected)
            for key, y in produced.items():
                outputs[key].append(y)
            job.bar.advance(task, len(expected) * max(1, len(artifacts)))
    finally:
        torch.set_num_threads(threads)
    ref = [np.concatenate(chunks) for chunks in zip(*reference)]  # per output
    host = {key: [np.concatenate(c) for c in zip(*chunks)] for key, chunks in outputs.items()}
    float_accuracy = None if check.labels is None else float(np.mean(ref[0].argmax(-1) == check.labels))
    budget, signature = job.config.budget, job.loaded.signature
    for a in artifacts:
        if signature is None:  # an image classifier: one output, its class scores
            a.host_check = compare(ref[0], host[a.key][0], check.labels, a.precision, job.target.thresholds,
                                   job.config.method)
        else:
            a.host_check = judge(measure_outputs(signature.outputs, ref, host[a.key], check.labels), a.precision,
                                 job.target.thresholds, job.config.method, float_accuracy)
        # The budget, held against each artifact as its own runtime ran it. The search scored the PT2E
        # model in PyTorch; XNNPACK, onnxruntime and QNNPACK round a little differently.
        if a.precision == "int8" and budget.metric:
            budget_gate(a.host_check, budget.metric, budget.max_drop, float_accuracy, budget.minimum)
        if a.key in unjudged and not a.host_check.passed:
            a.host_check.passed = None  # not the artifact's verdict: the target's kernels give it (validate)
            a.host_check.gates.append(f"not judged on this host: its x86 int8 products saturate without VNNI, "
                                      f"{job.target.arch}'s do not; edgeq validate judges it on {job.target.name}")
    return float_accuracy, ref, host


def _host_runner(job: Job, stage: Path, a: Artifact) -> runner.Batched:
    """An artifact in its own runtime here, one thread. A target of another architecture runs other
    integer kernels than this host's: its int8 .onnx runs as written (QDQ); the target proves its
    kernels match (validate)."""
    return runner.load_batched(a.format, str(stage / a.path), engine=job.recipe.backend, threads=1,
                               host_kernels=job.target.arch == platform.machine() or a.precision == "fp32")


AtLength = tuple[tuple[np.ndarray, ...], list[np.ndarray], dict[str, list[np.ndarray]]]  # inputs, float, artifacts'


def _length_check(job: Job, check: CheckSet, artifacts: list[Artifact], stage: Path) -> dict[int, AtLength]:
    """A model with a dynamic length: every artifact also at the shortest length and at the bound, on
    the first check samples cut or repeated to it, against the float model at that length (each
    output by its noise and direction, validate.length_check). The artifact fails where one fails
    or its runtime refuses the length. Returns, per length, the inputs, the float model's outputs and
    each artifact's, for reference.npz."""
    signature = job.loaded.signature
    if signature is None or not signature.max_length:
        return {}
    x = check.batch(job.preprocess, check.indices[:LENGTH_SAMPLES])
    lengths = signature.lengths_checked(signature.data_length(x))
    task = job.bar.add_task(f"checking lengths {', '.join(map(str, lengths))}", total=len(lengths) * len(artifacts))
    threads = torch.get_num_threads()
    runners = {a.key: _host_runner(job, stage, a) for a in artifacts}  # the lite interpreter sets 1 thread
    found: dict[int, AtLength] = {}
    for length in lengths:
        inputs = signature.at_length(x, length)
        expected = _float_outputs(job, inputs, f"at length {length}, which its dynamic_axes allow",
                                  "fix the model or lower the bound")
        found[length] = (inputs, expected, {})
        for a in artifacts:
            try:
                outputs = runners[a.key](list(inputs))
            except Exception as e:  # noqa: BLE001 - the runtime refused the length: the artifact's failure
                outputs, error = None, f"{type(e).__name__}: {first_line(e)}"[:300]
            else:
                found[length][2][a.key], error = outputs, None
            at, gates = length_check(length, signature.outputs, expected, outputs, error, a.precision,
                                     job.target.thresholds, job.config.method)
            a.host_check.lengths.append(at)
            if a.host_check.passed is not None:  # None: not judged on this host (see _host_check)
                a.host_check.passed = a.host_check.passed and bool(at.passed)
                a.host_check.gates.append(gates)
            else:
                at.passed = None
            job.bar.advance(task)
    job.bar.remove_task(task)
    torch.set_num_threads(threads)
    return found


def _write_reference(stage: Path, job: Job, check: CheckSet, float_outputs: list[np.ndarray],
                     host_outputs: dict[str, list[np.ndarray]], at_lengths: dict[int, AtLength]) -> Reference:
    """A few held-out inputs (one per class first) with the float model's outputs, each artifact's
    outputs on the host, and labels: what `edgeq validate` runs on the target and compares against,
    with no model or data needed there. An image model's arrays are inputs, outputs and
    host_<precision>_<format>; a model of any tensors has one array per input and output, named
    input.NAME, output.NAME and host_<precision>_<format>.NAME; at another length of its dynamic axis,
    the same prefixed at<length>. (the artifacts that ran at it)."""
    signature = job.loaded.signature
    n = min(REFERENCE_SAMPLES, check.within(job.preprocess, REFERENCE_BYTES))
    picked = one_per_class_first(check.labels, len(check.indices), n)
    inputs = check.batch(job.preprocess, [check.indices[i] for i in picked])
    if signature is None:
        arrays = {"inputs": inputs[0], "outputs": float_outputs[0][picked]}
        arrays.update({host_key(key): outputs[0][picked] for key, outputs in host_outputs.items()})
    else:
        arrays = {f"input.{name}": x for name, x in zip(signature.names, inputs)}
        arrays.update({f"output.{name}": y[picked] for name, y in zip(signature.outputs, float_outputs)})
        arrays.update({f"{host_key(key)}.{name}": y[picked] for key, outputs in host_outputs.items()
                       for name, y in zip(signature.outputs, outputs)})
    if check.labels is not None:
        arrays["labels"] = check.labels[picked]
    for length, (x, expected, outputs) in at_lengths.items():
        arrays.update({f"at{length}.input.{name}": a for name, a in zip(signature.names, x)})
        arrays.update({f"at{length}.output.{name}": y for name, y in zip(signature.outputs, expected)})
        arrays.update({f"at{length}.{host_key(key)}.{name}": y for key, ys in outputs.items()
                       for name, y in zip(signature.outputs, ys)})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = stage / REFERENCE
    write_atomic(path, buffer.getvalue())
    return Reference(path=REFERENCE, samples=n, labels=check.labels is not None, bytes=path.stat().st_size,
                     sha256=sha256_file(path), host_outputs=True, lengths=list(at_lengths))


def _labels_fit(images: ImageSet | TensorSet, num_classes: int | None) -> bool:
    """Whether the set's labels are the model's classes (calibration images may be any images); an
    .npz's labels are its first output's classes."""
    if isinstance(images, TensorSet):
        return images.labels is not None
    return images.labels is not None and images.classes is not None and len(images.classes) == num_classes


def _check_set(eval_set: ImageSet | TensorSet, check_samples: int | None, num_classes: int | None) -> CheckSet:
    """The first `check_samples` eval samples; labels only where they are the model's classes."""
    n = len(eval_set) if check_samples is None else min(check_samples, len(eval_set))
    return CheckSet(eval_set, range(n), eval_set.labels[:n] if _labels_fit(eval_set, num_classes) else None)


def _split(calib_set: ImageSet, job: Job) -> tuple[range, CheckSet]:
    """Calibration indices, and the held-out check set: the eval data, else unused calibration images."""
    calib_samples, check_samples = job.recipe.calib_samples, job.config.data.check_samples
    num_classes = job.loaded.num_classes
    if job.eval_set is not None:
        return range(min(calib_samples, len(calib_set))), _check_set(job.eval_set, check_samples, num_classes)
    held_out = min(check_samples or DEFAULT_HELD_OUT, len(calib_set) // 5)
    if held_out < 1:
        raise EdgeqError(f"{calib_set.description} has {len(calib_set)} images: too few to hold some out for the check; "
                         "add images or pass --eval-data")
    n_calib = min(calib_samples, len(calib_set) - held_out)
    labels = calib_set.labels[n_calib:n_calib + held_out] if _labels_fit(calib_set, num_classes) else None
    return range(n_calib), CheckSet(calib_set, range(n_calib, n_calib + held_out), labels)


def _preprocess(loaded: LoadedModel, config: ExportConfig) -> Preprocess:
    base = Preprocess.default_for(loaded.input_shape, grayscale_stats=loaded.builtin)
    o = config.preprocess
    return replace(base, resize=o.resize if o.resize is not None else base.resize,
                   mean=tuple(o.mean) if o.mean else base.mean, std=tuple(o.std) if o.std else base.std)


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
