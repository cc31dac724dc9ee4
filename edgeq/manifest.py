"""The manifest: the one typed object stages hand each other, saved as DIR/manifest.json."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from edgeq import schema
from edgeq.schema import OMIT
from edgeq.config import FORMATS, PRECISIONS, ExportConfig, QuantRecipe, TrainConfig
from edgeq.data import Preprocess
from edgeq.errors import EdgeqError
from edgeq.paths import inside, plain_name, remove_stale, scratch_prefix
from edgeq.procs import raise_if_stopped
from edgeq.targets import Target

MANIFEST = "manifest.json"
REPORTS = ("report.md", "report.html")
PLAN = "plan.json"
SCHEMA = 1




@dataclass
class OutputCheck:
    """One output of a model of any tensors against the float model's, over the check samples."""

    name: str
    sqnr_db: float | None  # None: bit-identical
    cosine_mean: float | None  # cosine similarity per sample (flattened), mean and minimum; None: not finite
    cosine_min: float | None
    max_abs_err: float | None


@dataclass
class LengthCheck:
    """A model with a dynamic length, run at another length than its check data's: the first check
    samples cut or repeated to it (edgeq.tensors.Signature.at_length), every output against the float
    model's at that length, judged by its noise and direction (validate.judge without class scores)."""

    length: int
    samples: int
    sqnr_db: float | None  # the worst output's; None: bit-identical, or it did not run
    cosine_min: float | None  # the worst output's
    passed: bool | None  # None: not judged here (see the host check's gates)
    error: str | None = field(default=None, metadata=OMIT)  # the runtime refused this length
    same_as_host: bool | None = field(default=None, metadata=OMIT)  # on a target: its outputs within the host's tolerance


@dataclass
class HostCheck:
    """The artifact run by its own runtime on the host, against the float PyTorch model. For a model
    of any tensors, `outputs` holds each output's figures, and the top-level ones are the worst of
    them (top-1 agreement only where an output is class scores)."""

    samples: int
    top1_agreement: float | None
    sqnr_db: float | None  # None: outputs bit-identical to the float model's
    max_abs_err: float | None  # None: the outputs were not all finite
    accuracy: float | None = None
    passed: bool | None = None  # all of `gates` hold
    gates: list[str] = field(default_factory=list)  # the conditions checked, e.g. "top1_agreement >= 0.97"
    nonfinite_outputs: int = field(default=0, metadata=OMIT)  # NaN or ±inf outputs (the artifact then fails)
    outputs: list[OutputCheck] = field(default_factory=list, metadata=OMIT)
    lengths: list[LengthCheck] = field(default_factory=list, metadata=OMIT)  # other lengths of a dynamic axis


@dataclass
class Latency:
    median: float
    p90: float
    trimmed_mean: float
    runs: int
    warmup: int
    measured: str  # where: "host (x86_64)", "emulated: qemu-aarch64 -cpu cortex-a53, not device time", …


@dataclass
class Parity:
    """The artifact's outputs on a target against its own outputs on the host, on the same inputs:
    the proof that the target computes what the host check measured."""

    samples: int
    max_abs_diff: float | None  # None: the target's outputs were not all finite
    tolerance: float  # the kernels' rounding allowed (validate.output_tolerance)
    identical: int  # samples whose outputs are bit-identical
    top1_same: float | None  # share of samples with the host's top-1 (None: several outputs)
    passed: bool


@dataclass
class TargetRun:
    """One artifact run on one target by `edgeq validate`: what ran where, how it compared, how long it took."""

    target: str
    where: str  # host | emulated | device (see edgeq.placement)
    qemu_cpu: str | None
    threads: int
    validated: str  # UTC time
    passed: bool = False
    error: str | None = field(default=None, metadata=OMIT)  # the runner failed: signal or exit code, last stderr
    machine: str | None = field(default=None, metadata=OMIT)
    cpu: str | None = field(default=None, metadata=OMIT)
    cpu_features: str | None = field(default=None, metadata=OMIT)
    python: str | None = field(default=None, metadata=OMIT)
    runner: str | None = field(default=None, metadata=OMIT)  # python | native (edgeq.qemu.native)
    import_s: float | None = field(default=None, metadata=OMIT)
    load_s: float | None = field(default=None, metadata=OMIT)
    peak_rss_mb: float | None = field(default=None, metadata=OMIT)  # under QEMU: the emulator's, buffers included
    latency_ms: Latency | None = field(default=None, metadata=OMIT)
    wall_s: float | None = field(default=None, metadata=OMIT)
    check: HostCheck | None = field(default=None, metadata=OMIT)  # against the float model, on these inputs
    host_parity: Parity | None = field(default=None, metadata=OMIT)  # against the host's outputs
    gates: list[str] = field(default_factory=list, metadata=OMIT)  # what `passed` required
    lengths: list[LengthCheck] = field(default_factory=list, metadata=OMIT)  # other lengths of a dynamic axis
    instructions_per_inference: int | None = field(default=None, metadata=OMIT)
    instructions_counted_over: int | None = field(default=None, metadata=OMIT)


@dataclass
class Model:
    source: str
    weights: str | None
    weights_sha256: str | None
    input_shape: list[int] | None  # image models
    parameters: int
    num_classes: int | None  # image models
    classes: list[str] | None = None
    inputs: list[str] | None = field(default=None, metadata=OMIT)  # models of any tensors: "name: dtype[N, …]"
    outputs: list[str] | None = field(default=None, metadata=OMIT)


@dataclass
class Reference:
    """reference.npz: held-out inputs, the float model's outputs, the artifacts' host outputs, labels if known."""

    path: str
    samples: int
    labels: bool
    bytes: int
    sha256: str
    host_outputs: bool = field(default=False, metadata=OMIT)  # each artifact's host outputs (host_<precision>_<fmt>)
    lengths: list[int] = field(default_factory=list, metadata=OMIT)  # other lengths of a dynamic axis (at<L>.* arrays)


@dataclass
class ImagesUsed:
    source: str
    images: int
    classes: int | None = None


@dataclass
class CheckImages(ImagesUsed):
    held_out: str = ""  # which images: eval data, or calibration/training images held out


@dataclass
class DataRecord:
    check: CheckImages
    eval: ImagesUsed | None = None
    calibration: ImagesUsed | None = field(default=None, metadata=OMIT)  # static
    training: ImagesUsed | None = field(default=None, metadata=OMIT)  # QAT
    validation: int | None = field(default=None, metadata=OMIT)  # QAT: held-out training images


@dataclass
class WeightSteps:
    """What was done to the float model's weights before static quantization (edgeq.quantize.weights)."""

    images: int = 0  # calibration images the data-driven steps used
    folded_batchnorms: int = 0
    equalized_pairs: int | None = None  # None: equalization off
    not_equalized: dict[str, int] = field(default_factory=dict)  # activation between a pair → pairs left alone
    adarounded_layers: int | None = None  # None: AdaRound off
    bias_corrected_layers: int | None = None  # None: bias correction off
    skipped: str | None = None  # why none of the steps ran (the model could not be traced)


@dataclass
class LayerError:
    """One layer output of the int8 model against the float model's (edgeq.quantize.numerics)."""

    node: str  # the op in the torch.export graph: conv2d_7, add_2, …
    module: str  # the float model's module path it belongs to
    op: str  # conv2d, linear, add, relu6, …
    sqnr_db: float | None  # None: identical outputs (no error to measure)
    layer: str | None = field(default=None, metadata=OMIT)  # a conv/linear: its name in plans (weight name)
    added_db: float | None = field(default=None, metadata=OMIT)  # conv/linear: input SQNR − output SQNR
    kept_float: bool = field(default=False, metadata=OMIT)  # left in float by the plan


@dataclass
class LayerNumerics:
    flow: str  # the int8 model measured (xnnpack: the graph the .pte is lowered from)
    images: int  # held-out images
    layers: list[LayerError] = field(default_factory=list)  # in network order


@dataclass
class PlanStep:
    """One layer returned to float by the accuracy-budget search (edgeq.quantize.budget)."""

    layer: str
    score: float  # the metric (percent, cosine or dB) with this layer and those before it in float
    candidates: dict[str, float] = field(default_factory=dict)  # layers tried this step → their score
    rank_gain: float | None = None  # the cheap ranking's metric gain for this layer (points)
    sqnr_gain_db: float | None = None  # and its logit SQNR gain
    params: int = 0  # weights kept in fp32 (4 bytes each instead of 1)
    fp32_macs: int = 0  # multiply-accumulates per image moved from int8 to fp32


@dataclass
class FloatPlan:
    """Which layers every int8 artifact leaves in float, and why: found by the search
    (`--max-accuracy-drop` / `--max-agreement-drop` for static int8, `--min-cosine` / `--min-sqnr` for
    dynamic) or read from a plan file (`--plan`). Saved as plan.json beside the artifacts, and
    reusable with --plan."""

    float_layers: list[str] = field(default_factory=list)
    source: str = "search"  # "search", or the plan file it came from
    metric: str | None = None  # accuracy | agreement (static int8) | cosine | sqnr (dynamic int8, the worst output)
    max_drop: float | None = None  # percentage points (accuracy, agreement)
    minimum: float | None = None  # the mean cosine or the SQNR dB each output must keep (cosine, sqnr)
    images: int = 0  # check images the metric was measured on
    float_score: float | None = None  # the float model's (agreement: 100)
    int8_score: float | None = None  # everything int8
    score: float | None = None  # with the plan
    met: bool | None = None
    stopped: str | None = None  # why the search ended before meeting the budget
    steps: list[PlanStep] = field(default_factory=list)
    evaluations: int = 0  # candidate models quantized and scored
    seconds: float = 0.0


@dataclass
class QatFlow:
    """What a QAT run did for one flow."""

    flow: str
    epochs: list[dict[str, Any]] = field(default_factory=list)  # epoch, loss, val_accuracy, lr_end, seconds
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    resumed_at_step: int | None = None
    seconds: float = 0.0


@dataclass
class Training:
    config: TrainConfig
    processes: int
    checkpoints: str
    device: str
    flows: list[QatFlow] = field(default_factory=list)


@dataclass
class Artifact:
    format: str  # pte | onnx | ptl
    precision: str  # int8 | fp32
    path: str  # relative to the manifest's folder
    bytes: int
    sha256: str
    details: dict[str, Any] = field(default_factory=dict)  # per-format facts: delegation, Q/DQ counts, passes
    host_check: HostCheck | None = None
    targets: dict[str, TargetRun] = field(default_factory=dict)  # per target name: its validation

    @property
    def key(self) -> str:
        return f"{self.precision} .{self.format}"


@dataclass
class Manifest:
    """What an export made and how each artifact did: typed to its leaves, saved as manifest.json."""

    edgeq_version: str
    created: str
    versions: dict[str, str]
    model: Model
    target: Target  # a copy of the target file: a user's own .toml stays known after it moves
    method: str
    quantization: QuantRecipe  # with the backend resolved
    preprocess: Preprocess | None  # image models
    data: DataRecord
    float_accuracy: float | None = None
    artifacts: list[Artifact] = field(default_factory=list)
    reference: Reference | None = None
    training: Training | None = None  # QAT only
    timings_s: dict[str, float] = field(default_factory=dict)  # host wall time per pipeline stage
    schema: int = SCHEMA
    recipe: ExportConfig | None = field(default=None, metadata=OMIT)  # the config the export ran with
    weight_steps: WeightSteps | None = field(default=None, metadata=OMIT)  # static int8 only
    layer_numerics: LayerNumerics | None = field(default=None, metadata=OMIT)  # per-layer int8 error
    plan: FloatPlan | None = field(default=None, metadata=OMIT)  # layers left in float (static int8)
    plan_sha256: str | None = field(default=None, metadata=OMIT)  # of plan.json, the plan's copy for --plan

    def to_dict(self) -> dict[str, Any]:
        return schema.dump(self)

    def to_json(self) -> str:
        return dumps(self.to_dict())

    def files(self) -> list[str]:
        """The names edgeq wrote in the export folder: all it may replace there."""
        return [MANIFEST, *REPORTS, *([self.reference.path] if self.reference else []), *([PLAN] if self.plan else []),
                *(a.path for a in self.artifacts)]

    def write(self, folder: Path) -> Path:
        path = folder / MANIFEST
        write_atomic(path, (self.to_json() + "\n").encode())
        return path

    def artifact(self, fmt: str, precision: str) -> Artifact:
        for a in self.artifacts:
            if a.format == fmt and a.precision == precision:
                return a
        raise KeyError(f"{precision} .{fmt}")

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Manifest":
        """Checked field by field (a wrong type, an unknown format or a file name that is not a plain
        name in the folder raises SchemaError). The one place that reads older manifests: fields they
        lack take their defaults, fields a newer edgeq added are ignored."""
        m = schema.build(Manifest, d)
        for i, a in enumerate(m.artifacts):
            where = f"artifacts[{i}]"
            if a.format not in FORMATS or a.precision not in PRECISIONS:
                raise schema.SchemaError(where, f"unknown artifact {a.precision} .{a.format} "
                                                f"(formats {', '.join(FORMATS)}; precisions {', '.join(PRECISIONS)})")
            _file_name(a.path, f"{where}.path")
        if m.reference is not None:
            _file_name(m.reference.path, "reference.path")
        keys = [a.key for a in m.artifacts]
        if len(set(keys)) != len(keys):
            raise schema.SchemaError("artifacts", "lists an artifact twice")
        return m

    @staticmethod
    def load(folder: Path) -> "Manifest":
        path = folder / MANIFEST if folder.is_dir() else folder
        if not path.is_file():
            raise EdgeqError(f"no {MANIFEST} in {folder}: run edgeq export --out {folder} first")
        try:
            return Manifest.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, schema.SchemaError, EdgeqError) as e:
            raise EdgeqError(f"{path} is not an edgeq manifest ({e}): re-run edgeq export") from None


def _file_name(name: Any, where: str) -> None:
    try:
        plain_name(name, "file name")
    except EdgeqError as e:
        raise schema.SchemaError(where, str(e)) from None


def dumps(data: Any) -> str:
    """Strict JSON: a NaN or infinity that slipped through becomes null (bare NaN is not JSON)."""
    return json.dumps(_finite(data), indent=2, allow_nan=False)


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(folder: Path, name: str, sha256: str) -> None:
    """The file a manifest lists is there, inside `folder`, and unchanged since export."""
    path = inside(folder, name, f"{MANIFEST} lists the file")
    if not path.is_file():
        raise EdgeqError(f"{path} is missing (listed in {MANIFEST}): re-export, or restore the file")
    if sha256_file(path) != sha256:
        raise EdgeqError(f"{path} does not match its sha256 in {MANIFEST}: the file was changed or corrupted "
                         "after export; re-export it")


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a sibling temp file, fsync, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_replaceable(out: Path, option: str = "--out") -> None:
    """`out` may be new, empty, or an earlier edgeq export holding only the files its manifest lists:
    that is all edgeq will replace. Anything else there is the user's, and refused."""
    if out.exists() and not out.is_dir():
        raise EdgeqError(f"{option} {out} is a file: pass a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        owned = set(Manifest.load(out).files())
    except EdgeqError:
        raise EdgeqError(f"{option} {out} exists and is not an edgeq export (no valid {MANIFEST}): "
                         "pass a new or empty folder") from None
    foreign = sorted(p.name for p in out.iterdir() if p.name not in owned or not p.is_file() or p.is_symlink())
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise EdgeqError(f"{option} {out} holds files edgeq did not write ({shown}): edgeq replaces the whole "
                         "folder, so move them out or pass a new folder")


@contextlib.contextmanager
def staged_output(out: Path, before_replace: Callable[[], None] = lambda: None) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `out` (after `before_replace`, the last
    chance to refuse), on any failure it is removed. Stages left by a killed edgeq are removed first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}.edgeq-"
    remove_stale(out.parent, prefix)
    stage = Path(tempfile.mkdtemp(prefix=scratch_prefix(prefix), dir=out.parent))
    try:
        yield stage
        raise_if_stopped()
        before_replace()
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    os.chmod(stage, 0o755)  # mkdtemp makes it 0700
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=scratch_prefix(prefix), dir=out.parent)) / "old"
        os.rename(out, old)
        os.rename(stage, out)
        shutil.rmtree(old.parent, ignore_errors=True)
    else:
        os.rename(stage, out)
