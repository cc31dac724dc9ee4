"""The manifest: the one typed object stages hand each other, saved as DIR/manifest.json."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from edgeq.errors import EdgeqError

MANIFEST = "manifest.json"
SCHEMA = 1


@dataclass
class HostCheck:
    """The artifact run by its own runtime on the host, against the float PyTorch model."""

    samples: int
    top1_agreement: float
    sqnr_db: float | None  # None: outputs bit-identical to the float model's
    max_abs_err: float
    accuracy: float | None = None
    passed: bool | None = None  # all of `gates` hold
    gates: list[str] = field(default_factory=list)  # the conditions checked, e.g. "top1_agreement >= 0.97"


@dataclass
class Artifact:
    format: str  # pte | onnx | ptl
    precision: str  # int8 | fp32
    path: str  # relative to the manifest's folder
    bytes: int
    sha256: str
    details: dict[str, Any] = field(default_factory=dict)  # per-format facts: delegation, Q/DQ counts, passes
    host_check: HostCheck | None = None
    targets: dict[str, Any] = field(default_factory=dict)  # per-target validation results

    @property
    def key(self) -> str:
        return f"{self.precision} .{self.format}"


@dataclass
class Manifest:
    edgeq_version: str
    created: str
    versions: dict[str, str]
    model: dict[str, Any]
    target: dict[str, Any]
    method: str
    quantization: dict[str, Any]
    preprocess: dict[str, Any]
    data: dict[str, Any]
    float_accuracy: float | None = None
    artifacts: list[Artifact] = field(default_factory=list)
    reference: dict[str, Any] | None = None  # reference.npz: held-out inputs, float outputs, labels
    training: dict[str, Any] | None = None  # QAT: config, processes, per-flow epochs and best epoch
    timings_s: dict[str, float] = field(default_factory=dict)  # host wall time per pipeline stage
    schema: int = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

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
        arts = []
        for a in d.get("artifacts", []):
            check = a.get("host_check")
            arts.append(Artifact(**{**a, "host_check": HostCheck(**check) if check else None}))
        return Manifest(**{**d, "artifacts": arts})

    @staticmethod
    def load(folder: Path) -> "Manifest":
        path = folder / MANIFEST if folder.is_dir() else folder
        if not path.is_file():
            raise EdgeqError(f"no {MANIFEST} in {folder}: run edgeq export --out {folder} first")
        try:
            return Manifest.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as e:
            raise EdgeqError(f"{path} is not an edgeq manifest ({type(e).__name__}: {e}): re-run edgeq export") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(folder: Path, name: str, sha256: str) -> None:
    """The file a manifest lists is there and unchanged since export."""
    path = folder / name
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
