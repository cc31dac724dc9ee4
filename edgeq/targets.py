"""Targets are data: `targets/*.toml` names the arch, the QEMU -cpu, the backend and the runtimes."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeq import schema
from edgeq.errors import EdgeqError
from edgeq.config import BACKENDS, FORMATS
from edgeq.paths import plain_name

# The repo's targets/ folder; the wheel carries the same files as package data (see pyproject).
_CANDIDATE_DIRS = (Path(__file__).resolve().parent.parent / "targets", Path(__file__).resolve().parent / "target_files")
ARCHES = ("aarch64", "x86_64")


@dataclass(frozen=True)
class Thresholds:
    """What an int8 artifact must reach against the float model (fp32 ones must match it, ≥ 40 dB)."""

    min_top1_agreement: float = 0.97
    min_sqnr_db: float = 15.0  # static only: QAT moves the weights on purpose, so its logits differ
    max_accuracy_drop: float = 0.01  # float accuracy − artifact accuracy, when the check images have labels


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    arch: str  # "aarch64" or "x86_64"
    backend: str  # quantization backend: "qnnpack" or "x86"
    runtimes: tuple[str, ...]
    qemu_cpu: str | None = None  # None: runs on the host
    thresholds: Thresholds = field(default_factory=Thresholds)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["runtimes"] = list(self.runtimes)
        return d

    @staticmethod
    def from_dict(data: Any, where: str, strict: bool = True) -> "Target":
        """A target from a TOML file's table or a manifest's copy, every value checked."""
        try:
            if isinstance(data, dict):
                data = {"runtimes": list(FORMATS), "description": data.get("name", ""), **data}
            target = schema.build(Target, data, strict=strict)
        except schema.SchemaError as e:
            raise EdgeqError(f"{where}: {e}") from None
        plain_name(target.name, f"{where}: target name",
                   "a target name becomes a folder name: use letters, digits, '.', '_', '+' and '-' only")
        if target.backend not in BACKENDS:
            raise EdgeqError(f"{where}: backend must be one of {', '.join(BACKENDS)}, not {target.backend!r}")
        if target.arch not in ARCHES:
            raise EdgeqError(f"{where}: arch must be {' or '.join(ARCHES)}, not {target.arch!r}")
        unknown = set(target.runtimes) - set(FORMATS)
        if unknown:
            raise EdgeqError(f"{where}: unknown runtimes {sorted(unknown)}; use {', '.join(FORMATS)}")
        return target


def targets_dir() -> Path:
    for d in _CANDIDATE_DIRS:
        if d.is_dir():
            return d
    raise EdgeqError("edgeq's targets/ folder is missing: reinstall edgeq")


def list_targets() -> list[Target]:
    return [load_target(p) for p in sorted(targets_dir().glob("*.toml"))]


def load_target(name_or_path: str | Path) -> Target:
    """A built-in target by name (arm64, x86_64, …) or the user's own TOML file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = targets_dir() / f"{name_or_path}.toml"
        if not path.is_file():
            known = ", ".join(p.stem for p in sorted(targets_dir().glob("*.toml")))
            raise EdgeqError(f"unknown target {name_or_path!r}: use one of {known}, or a path to your own .toml")
    if not path.is_file():
        raise EdgeqError(f"target file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise EdgeqError(f"target file {path} is not valid TOML: {e}") from None
    return Target.from_dict(data, f"target file {path}")


def target_of(manifest_target: Target, where: str) -> Target:
    """The target an export was made for, from the copy its manifest holds (checked as a target file
    is: its name becomes a folder name): a user's own .toml stays known after that file moves."""
    return Target.from_dict(schema.dump(manifest_target), where, strict=False)
