"""Recipes as data: what `edgeq export` and `edgeq validate` do, as frozen dataclasses.

    config = ExportConfig(model="torchvision:mobilenet_v2", weights="ckpt.pt",
                          quantization=QuantRecipe(per_channel=False), data=DataConfig(calib="images/"))
    edgeq.export("dist/", config)
    ExportConfig.load("recipe.toml")          # `edgeq export --config recipe.toml`; flags override it

The CLI builds these from its flags, the manifest records the one an export ran with (`recipe`),
and every stage takes the part it needs. Imports nothing heavy: no torch here.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from edgeq import schema
from edgeq.errors import EdgeqError

FORMATS = ("pte", "onnx", "ptl")
PRECISIONS = ("int8", "fp32")
METHODS = ("static", "qat", "dynamic")
BACKENDS = ("qnnpack", "x86")
CALIBRATIONS = ("histogram", "minmax", "percentile")  # see edgeq.quantize.observers  # quantization configs (see edgeq.quantize)
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")


@dataclass(frozen=True)
class QuantRecipe:
    """How to quantize: the backend's config (None: the target's), weight granularity, calibration."""

    backend: str | None = None
    per_channel: bool = True
    calib_samples: int = 256
    calib_batch: int = 32
    # How activation ranges are chosen: histogram | minmax | percentile (edgeq.quantize.observers).
    calibration: str = field(default="histogram", metadata=schema.OMIT)
    percentile: float = field(default=99.99, metadata=schema.OMIT)
    # Float-model steps before static quantization (edgeq.quantize.weights): cross-layer
    # equalization where activations allow it, AdaRound, empirical bias correction; the data-driven
    # ones on `correction_images` calibration images.
    equalization: bool = field(default=False, metadata=schema.OMIT)
    adaround: bool = field(default=False, metadata=schema.OMIT)
    bias_correction: bool = field(default=True, metadata=schema.OMIT)
    correction_images: int = field(default=64, metadata=schema.OMIT)
    # Conv/linear layers left in float by every int8 flow, by weight name (edgeq.quantize.plan):
    # what an accuracy-budget search or a --plan file chose.
    float_layers: tuple[str, ...] = field(default=(), metadata=schema.OMIT)
    # Hybrid: the layers or units (a recurrent layer `lstm.layers.0`, a linear) that static int8 of a
    # model of tensors quantizes dynamically instead (edgeq.quantize.static_tensors).
    dynamic_layers: tuple[str, ...] = field(default=(), metadata=schema.OMIT)

    def __post_init__(self) -> None:
        if self.dynamic_layers is None:  # the flag not given
            object.__setattr__(self, "dynamic_layers", ())
        if self.backend is not None and self.backend not in BACKENDS:
            raise EdgeqError(f"unknown quantization backend {self.backend!r}: use one of {', '.join(BACKENDS)}")
        if self.calib_samples < 1 or self.calib_batch < 1 or self.correction_images < 1:
            raise EdgeqError("--calib-samples (and the calibration batch, and correction images) must be at least 1")
        if self.calibration not in CALIBRATIONS:
            raise EdgeqError(f"unknown calibration method {self.calibration!r}: use one of {', '.join(CALIBRATIONS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise EdgeqError(f"--percentile {self.percentile}: must be above 50 and at most 100 (e.g. 99.99)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BudgetConfig:
    """An accuracy budget: layers go back to float, the most damaging first, until int8 keeps it.
    Static int8 (edgeq.quantize.budget): at most this many percentage points of top-1 accuracy lost
    (labelled check images) or of top-1 agreement with the float model. Dynamic int8
    (edgeq.quantize.output_budget), for outputs that are not class scores: every output's mean cosine
    similarity to the float model's at least `min_cosine`, or its SQNR at least `min_sqnr` dB. Or
    `plan`: the float layers of an earlier search (its plan.json), applied without searching."""

    max_accuracy_drop: float | None = None
    max_agreement_drop: float | None = None
    min_cosine: float | None = None
    min_sqnr: float | None = None
    max_float_layers: int = 8  # the search stops here, budget met or not
    candidates: int = 4  # layers of the cheap ranking confirmed on the real metric per step
    plan: str | None = None

    def __post_init__(self) -> None:
        given = {flag: v for flag, v in (("--max-accuracy-drop", self.max_accuracy_drop),
                                         ("--max-agreement-drop", self.max_agreement_drop),
                                         ("--min-cosine", self.min_cosine), ("--min-sqnr", self.min_sqnr))
                 if v is not None}
        if len(given) > 1:
            raise EdgeqError(f"{' and '.join(given)} both given: pass one budget")
        if self.max_drop is not None and not (0 <= self.max_drop <= 100 and math.isfinite(self.max_drop)):
            raise EdgeqError(f"accuracy budget {self.max_drop}: give percentage points between 0 and 100, e.g. 0.5")
        if self.min_cosine is not None and not 0 < self.min_cosine <= 1:
            raise EdgeqError(f"--min-cosine {self.min_cosine}: give a cosine similarity above 0 and at most 1, "
                             "e.g. 0.99")
        if self.min_sqnr is not None and not math.isfinite(self.min_sqnr):
            raise EdgeqError(f"--min-sqnr {self.min_sqnr}: give a number of dB, e.g. 30")
        if given and self.plan is not None:
            raise EdgeqError("--plan applies a plan found before, a budget searches for one: pass one of them")
        if self.max_float_layers < 1 or self.candidates < 1:
            raise EdgeqError("--max-float-layers (and the candidates per step) must be at least 1")

    @property
    def metric(self) -> str | None:
        for metric, value in (("accuracy", self.max_accuracy_drop), ("agreement", self.max_agreement_drop),
                              ("cosine", self.min_cosine), ("sqnr", self.min_sqnr)):
            if value is not None:
                return metric
        return None

    @property
    def on_outputs(self) -> bool:
        """A budget on the outputs' cosine or SQNR (dynamic int8), not on top-1."""
        return self.metric in ("cosine", "sqnr")

    @property
    def minimum(self) -> float | None:
        return self.min_cosine if self.min_cosine is not None else self.min_sqnr

    @property
    def max_drop(self) -> float | None:
        return self.max_accuracy_drop if self.max_accuracy_drop is not None else self.max_agreement_drop


@dataclass(frozen=True)
class TrainConfig:
    """Quantization-aware training (`--method qat`)."""

    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 64  # per process: under torchrun the global batch is this × processes
    optimizer: str = "sgd"  # sgd (momentum 0.9, nesterov) | adamw
    schedule: str = "cosine"  # cosine | step (×0.1 at 2/3) | constant
    weight_decay: float = 0.0
    freeze_bn_after: float | None = None  # epochs (fractions allowed); default 60% of training
    freeze_observers_after: float | None = None  # epochs; default 80% of training
    train_samples: int | None = None  # cap on training images (default: all not held out)
    val_samples: int | None = None  # held-out images scored each epoch (default: 10%, at most 5000)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    checkpoint_every: int = 500  # optimizer steps between mid-epoch checkpoints

    def __post_init__(self) -> None:
        checks = [(self.epochs >= 1, "--epochs must be at least 1"),
                  (self.lr > 0 and math.isfinite(self.lr), "--lr must be a positive number"),
                  (self.batch_size >= 1, "--batch-size must be at least 1"),
                  (self.optimizer in OPTIMIZERS, f"--optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}"),
                  (self.schedule in SCHEDULES, f"--schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}"),
                  (self.weight_decay >= 0, "--weight-decay must be ≥ 0"),
                  (self.train_samples is None or self.train_samples >= 1, "--train-samples must be at least 1"),
                  (self.val_samples is None or self.val_samples >= 1, "--val-samples must be at least 1"),
                  (self.checkpoint_every >= 1, "--checkpoint-every must be at least 1")]
        for at in (self.freeze_bn_after, self.freeze_observers_after):
            checks.append((at is None or at >= 0, "--freeze-bn-after / --freeze-observers-after must be ≥ 0 epochs"))
        for ok, message in checks:
            if not ok:
                raise EdgeqError(message)

    @property
    def bn_epoch(self) -> float:
        return 0.6 * self.epochs if self.freeze_bn_after is None else self.freeze_bn_after

    @property
    def observer_epoch(self) -> float:
        return 0.8 * self.epochs if self.freeze_observers_after is None else self.freeze_observers_after

    def resolved(self) -> "TrainConfig":
        """The same, with the freeze points as numbers (what the manifest records)."""
        return replace(self, freeze_bn_after=self.bn_epoch, freeze_observers_after=self.observer_epoch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self.resolved())


@dataclass(frozen=True)
class DataConfig:
    """Image folders, or "fashion-mnist" (the built-in model's data, also its default)."""

    calib: str | None = None  # calibration images (static)
    train: str | None = None  # labelled training images (QAT)
    eval: str | None = None  # labelled images: accuracy, and the host check
    check_samples: int | None = None  # held-out images checked (default: all eval images, else 200)

    def __post_init__(self) -> None:
        if self.check_samples is not None and self.check_samples < 1:
            raise EdgeqError("--check-samples must be at least 1")


@dataclass(frozen=True)
class PreprocessOverrides:
    """What to change in the model's default preprocessing (None: keep it)."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | None = None  # shorter side, then center crop


@dataclass(frozen=True)
class ThresholdOverrides:
    """Replace a target's thresholds for one validation (None: the target's)."""

    min_top1_agreement: float | None = None
    min_sqnr_db: float | None = None
    max_accuracy_drop: float | None = None

    def given(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ValidateConfig:
    """Running an export's artifacts on a target (`edgeq validate`, and the end of `edgeq export`)."""

    runs: int = 20  # timed runs per artifact
    warmup: int = 3
    threads: int = 1
    samples: int | None = None  # reference inputs each artifact runs (default: validate.PARITY_SAMPLES)
    count_instructions: bool = False
    timeout: float = 900.0  # seconds per artifact
    thresholds: ThresholdOverrides = field(default_factory=ThresholdOverrides)

    def __post_init__(self) -> None:
        if self.runs < 1 or self.threads < 1 or self.warmup < 0 or (self.samples is not None and self.samples < 1):
            raise EdgeqError("--runs, --threads and --samples must be at least 1 (--warmup at least 0)")


@dataclass(frozen=True)
class ExportConfig:
    """Everything `edgeq export` does, in one object."""

    model: str | None = None  # torchvision:NAME[?k=v], path/file.py:factory, module:factory; None: built-in
    weights: str | None = None  # a state_dict file, loaded weights_only
    input_shape: tuple[int, ...] | None = None
    target: str = "arm64"  # a target name or a .toml file
    method: str = "static"  # static | qat | dynamic
    formats: tuple[str, ...] = FORMATS
    precisions: tuple[str, ...] = PRECISIONS
    quantization: QuantRecipe = field(default_factory=QuantRecipe)
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessOverrides = field(default_factory=PreprocessOverrides)
    training: TrainConfig = field(default_factory=TrainConfig)
    checkpoint_dir: str | None = None  # QAT checkpoints (default: OUT.qat beside the output)
    resume: bool = False
    validate: bool = True  # run every artifact on the target afterwards
    validation: ValidateConfig = field(default_factory=ValidateConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig, metadata=schema.OMIT)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise EdgeqError(f"unknown --method {self.method!r}: use one of {', '.join(METHODS)}")
        for option, chosen, allowed in (("--formats", self.formats, FORMATS), ("--precisions", self.precisions, PRECISIONS)):
            bad = [c for c in chosen if c not in allowed]
            if bad or not chosen:
                raise EdgeqError(f"{option} {','.join(bad) or '(empty)'} not understood: choose from {','.join(allowed)}")
        if (self.budget.metric or self.budget.plan) and "int8" not in self.precisions:
            raise EdgeqError("an accuracy budget or --plan chooses float layers of int8: put int8 in --precisions")
        if self.budget.on_outputs and self.method == "qat":
            raise EdgeqError("--min-cosine and --min-sqnr budget dynamic or static int8 of a model of tensors "
                             "(recurrent layers, linears, embedding tables): use --method dynamic or static")
        if self.budget.metric and not self.budget.on_outputs and self.method != "static":
            raise EdgeqError("--max-accuracy-drop and --max-agreement-drop budget static int8: use --method static, "
                             "or --min-cosine / --min-sqnr for dynamic int8")
        if self.budget.plan and self.method == "qat":
            raise EdgeqError("--plan chooses float layers of static or dynamic int8: use --method static or dynamic")
        # Duplicates dropped, order kept: "pte,pte,onnx" exports each once.
        object.__setattr__(self, "formats", tuple(dict.fromkeys(self.formats)))
        object.__setattr__(self, "precisions", tuple(dict.fromkeys(self.precisions)))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @staticmethod
    def from_dict(data: Any, where: str = "recipe") -> "ExportConfig":
        try:
            return schema.build(ExportConfig, data, strict=True)
        except schema.SchemaError as e:
            raise EdgeqError(f"{where}: {e}") from None

    @staticmethod
    def load(path: str | Path) -> "ExportConfig":
        """A recipe file (TOML): any subset of the fields, in tables named as the dataclasses' fields."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise EdgeqError(f"recipe {path} does not exist: check --config") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise EdgeqError(f"recipe {path} is not valid TOML: {e}") from None
        return ExportConfig.from_dict(data, f"recipe {path}")

    def to_toml(self) -> str:
        """The recipe as TOML (fields left at None are left out: TOML has no null)."""
        return _toml(self)

    @staticmethod
    def from_keywords(base: "ExportConfig", keywords: dict[str, Any]) -> "ExportConfig":
        """The older keyword API (`edgeq.export(out, model=…, calib_data=…, per_channel=False)`) on `base`."""
        unknown = sorted(set(keywords) - set(KEYWORDS))
        if unknown:
            raise TypeError(f"export() got an unexpected keyword argument {unknown[0]!r}")
        return base.with_values({KEYWORDS[k]: _plain(v) for k, v in keywords.items()})

    def with_values(self, values: dict[str, Any]) -> "ExportConfig":
        """A copy with dotted fields replaced, e.g. {"quantization.per_channel": False}."""
        config: Any = self
        for dotted, value in values.items():
            config = _replace_path(config, dotted.split("."), value)
        return config


# The older keyword API of edgeq.export: each keyword and the field it sets.
KEYWORDS = {"model": "model", "weights": "weights", "input_shape": "input_shape", "target": "target",
            "method": "method", "backend": "quantization.backend", "per_channel": "quantization.per_channel",
            "calib_samples": "quantization.calib_samples", "calib_data": "data.calib", "train_data": "data.train",
            "eval_data": "data.eval", "check_samples": "data.check_samples", "formats": "formats",
            "precisions": "precisions", "mean": "preprocess.mean", "std": "preprocess.std",
            "resize": "preprocess.resize", "training": "training", "checkpoint_dir": "checkpoint_dir",
            "resume": "resume", "validate_on_target": "validate", "runs": "validation.runs"}


def _plain(value: Any) -> Any:
    """Paths as text and sequences as tuples, as the dataclasses hold them."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return tuple(value)
    return value


def _replace_path(obj: Any, path: list[str], value: Any) -> Any:
    if len(path) == 1:
        return replace(obj, **{path[0]: value})
    return replace(obj, **{path[0]: _replace_path(getattr(obj, path[0]), path[1:], value)})


def _toml(obj: Any, prefix: str = "") -> str:
    plain, tables = [], []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            tables.append(_toml(value, f"{prefix}{f.name}."))
        elif value is not None:
            plain.append(f"{f.name} = {json.dumps(list(value) if isinstance(value, tuple) else value)}\n")
    head = f"[{prefix[:-1]}]\n" if prefix else ""
    return head + "".join(plain) + "".join("\n" + t for t in tables)
