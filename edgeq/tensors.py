"""Models that take and return tensors, not just one image: their signature, and data as `.npz`.

A model's signature is what every stage shares: each input's name (its `forward` parameter), dtype,
shape with the batch first, and the axes that may vary up to a bound (a sequence length). It comes
from the factory's `example_inputs()` (one tuple of example tensors, batch 1), or, for an image
classifier, from `--input-shape`.

Data for such a model is an `.npz` file: one array per `forward` parameter, named like it, first
axis = samples, and an optional `labels` array (one class per sample). Read with
allow_pickle=False; every way it can be wrong is one line naming the file, the array and the fix.
"""

from __future__ import annotations

import inspect
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeq.errors import EdgeqError

LABELS = "labels"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy's name: float32, int64, bool, …
    shape: tuple[int, ...]  # the example's, batch first (1)
    dynamic: dict[int, int] = field(default_factory=dict)  # axis → largest size it may take

    def describe(self) -> str:
        dims = ["N" if i == 0 else f"≤{self.dynamic[i]}" if i in self.dynamic else str(d)
                for i, d in enumerate(self.shape)]
        return f"{self.name}: {self.dtype}[{', '.join(dims)}]"


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...] = ("output",)  # flattened: a tensor, a tuple/list's items, a dict's keys

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    @property
    def max_length(self) -> int | None:
        """The bound of the model's one dynamic length (an axis of one or more inputs), if it has one."""
        return next((bound for s in self.inputs for bound in s.dynamic.values()), None)

    def lengths_checked(self, data_length: int) -> list[int]:
        """The lengths a check runs besides the data's own: the shortest, and the bound."""
        return sorted({1, self.max_length} - {data_length}) if self.max_length else []

    def data_length(self, arrays: tuple[np.ndarray, ...]) -> int:
        """The dynamic length of a batch of inputs (batch first)."""
        return next(a.shape[axis] for a, s in zip(arrays, self.inputs) for axis in s.dynamic)

    def at_length(self, arrays: tuple[np.ndarray, ...], length: int) -> tuple[np.ndarray, ...]:
        """The inputs with every dynamic axis cut to `length`, or repeated to it (a longer input made of
        the same data: a sentence said again, audio looped)."""
        out = []
        for a, spec in zip(arrays, self.inputs):
            for axis in spec.dynamic:
                a = np.take(a, np.arange(length) % a.shape[axis], axis=axis)
            out.append(np.ascontiguousarray(a))
        return tuple(out)


class Example(tuple):
    """A model's example inputs (tensors, batch 1), what every exporter traces at, with the axes that
    may vary: `lengths[i]` maps input i's dynamic axes to their bound (one length shared by all)."""

    lengths: tuple[dict[int, int], ...]

    def __new__(cls, tensors: Any, lengths: tuple[dict[int, int], ...] = ()) -> "Example":
        example = super().__new__(cls, tensors)
        example.lengths = lengths
        return example

    @property
    def max_length(self) -> int | None:
        return next((bound for axes in self.lengths for bound in axes.values()), None)

    def dynamic_shapes(self, batch: Any = None) -> tuple[dict[int, Any], ...] | None:
        """torch.export's dynamic_shapes: the one bounded length (torch.export.Dim "length", from 1), and
        `batch` (a Dim) on axis 0 of every input when given."""
        if self.max_length is None and batch is None:
            return None
        length = torch.export.Dim("length", min=1, max=self.max_length) if self.max_length else None
        lengths = self.lengths or tuple({} for _ in self)
        return tuple({**({0: batch} if batch is not None else {}), **{axis: length for axis in axes}}
                     for axes in lengths)


def output_names(out: Any, source: str) -> tuple[str, ...]:
    """The names of a model's outputs, in the order every format returns them (torch's pytree order):
    "output" for one tensor, output_0… for a tuple or list, the keys of a dict."""
    if isinstance(out, torch.Tensor):
        return ("output",)
    if isinstance(out, dict) and out and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                             for k, v in out.items()):
        return tuple(out)
    if isinstance(out, (tuple, list)) and out and all(isinstance(t, torch.Tensor) for t in out):
        return tuple(f"output_{i}" for i in range(len(out)))
    raise EdgeqError(f"{source} returned {type(out).__name__}"
                     f"{'' if not isinstance(out, (tuple, list, dict)) else ' holding something other than tensors'}: "
                     "return a tensor, or a tuple, list or dict (string keys) of tensors")


def flat_outputs(out: Any) -> list[torch.Tensor]:
    """A model's outputs as the formats return them: one list of tensors."""
    if isinstance(out, torch.Tensor):
        return [out]
    return list(out.values()) if isinstance(out, dict) else list(out)


class FlatOutputs(torch.nn.Module):
    """The model with its outputs as one tuple: what .ptl's tracer and every runner hand back (a
    dict or list output otherwise comes back in each format's own container)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(flat_outputs(self.model(*inputs)))


def forward_names(module: torch.nn.Module, count: int, source: str) -> tuple[str, ...]:
    """The names of `forward`'s first `count` positional parameters (what an .npz's arrays are called)."""
    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(params) < count:
        raise EdgeqError(f"{source}: example_inputs() gives {count} tensors but forward takes {len(params)} "
                         "positional parameters: return one example per parameter")
    return tuple(p.name for p in params[:count])


def signature_of(module: torch.nn.Module, example: Any, source: str,
                 dynamic: dict[str, dict[int, int]] | None = None) -> Signature:
    """The signature from a factory's example inputs (a tensor or a tuple of tensors, batch 1) and its
    declared dynamic axes ({parameter: {axis: largest size}})."""
    example = example if isinstance(example, tuple) else (example,)
    bad = next((i for i, t in enumerate(example) if not isinstance(t, torch.Tensor)), None)
    if not example or bad is not None:
        raise EdgeqError(f"{source}: example_inputs() must return a tensor or a tuple of tensors"
                         f"{f', item {bad} is {type(example[bad]).__name__}' if bad is not None else ''}")
    names = forward_names(module, len(example), source)
    dynamic = dynamic or {}
    unknown = sorted(set(dynamic) - set(names))
    if unknown:
        raise EdgeqError(f"{source}: dynamic axes name {unknown[0]!r}, which is not a forward parameter "
                         f"({', '.join(names)})")
    specs = []
    for name, t in zip(names, example):
        if t.dim() == 0 or t.shape[0] != 1:
            raise EdgeqError(f"{source}: example input {name} has shape {tuple(t.shape)}: give each example "
                             "a batch of one, batch first")
        axes = {int(a): int(m) for a, m in dynamic.get(name, {}).items()}
        for axis, largest in axes.items():
            if not 0 < axis < t.dim() or largest < t.shape[axis]:
                raise EdgeqError(f"{source}: dynamic axis {axis} of {name} (shape {tuple(t.shape)}) needs "
                                 f"1 ≤ axis < {t.dim()} and a bound ≥ the example's {t.shape[axis] if 0 < axis < t.dim() else '?'}")
        specs.append(TensorSpec(name, str(t.numpy().dtype), tuple(t.shape), axes))
    sizes = {(s.shape[axis], bound) for s in specs for axis, bound in s.dynamic.items()}
    if len(sizes) > 1:  # one Dim for every axis: edgeq checks, cuts and repeats one length
        raise EdgeqError(f"{source}: dynamic axes must be one length, the same size in the example and the same "
                         f"bound everywhere; found {', '.join(f'{d} (≤{b})' for d, b in sorted(sizes))}: declare one")
    if sizes and next(iter(sizes))[0] < 2:
        raise EdgeqError(f"{source}: the example's dynamic length is 1, which torch.export fixes (it specialises "
                         "sizes 0 and 1): give example_inputs() a length of 2 or more")
    return Signature(tuple(specs))


@dataclass
class TensorSet:
    """Samples of named tensors from an .npz file, with labels when it has them."""

    description: str
    arrays: dict[str, np.ndarray]  # in forward's order
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def batch(self, indices: range | list[int]) -> tuple[np.ndarray, ...]:
        index = np.asarray(list(indices), dtype=np.int64)
        return tuple(a[index] for a in self.arrays.values())

    def info(self, used: int | None = None) -> dict[str, Any]:
        """As the manifest records data (ImagesUsed: its "images" are samples here)."""
        return {"source": self.description, "images": len(self) if used is None else used, "classes": None}


def open_npz(path: Path, signature: Signature, option: str) -> TensorSet:
    """`path` checked against the signature: every parameter present and nothing else (but labels),
    dtypes and shapes as the example's (dynamic axes up to their bound), finite floats, one label per
    sample."""
    where = f"{option} {path}"
    if not path.is_file():
        raise EdgeqError(f"{where} does not exist: pass an .npz with one array per forward parameter "
                         f"({', '.join(signature.names)})")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise EdgeqError(f"{where} is not a readable .npz archive ({e}): save it with numpy.savez") from None
    except ValueError as e:  # an object array needs pickle, refused; or a damaged member
        raise EdgeqError(f"{where} holds an array numpy cannot read without pickle ({e}): save plain numeric "
                         "arrays with numpy.savez") from None
    if not arrays:
        raise EdgeqError(f"{where} is empty: save one array per forward parameter ({', '.join(signature.names)})")
    labels = arrays.pop(LABELS, None)
    missing = [n for n in signature.names if n not in arrays]
    extra = sorted(set(arrays) - set(signature.names))
    if missing or extra:
        what = f"lacks {', '.join(missing)}" if missing else f"has {', '.join(extra)}, which"
        raise EdgeqError(f"{where} {what}{' is not a forward parameter' if not missing else ''}: the model takes "
                         f"{', '.join(s.describe() for s in signature.inputs)} (and optional labels)")
    counts = {n: len(a) if a.ndim else 0 for n, a in arrays.items()}
    if len(set(counts.values())) != 1 or not next(iter(counts.values())):
        raise EdgeqError(f"{where}: every array needs the same number of samples (first axis), at least one; "
                         f"found {', '.join(f'{n} {c}' for n, c in counts.items())}")
    ordered = {}
    for spec in signature.inputs:
        a = arrays[spec.name]
        if str(a.dtype) != spec.dtype:
            raise EdgeqError(f"{where}: {spec.name} is {a.dtype}, the model takes {spec.dtype}: save it with "
                             f".astype(numpy.{spec.dtype})")
        fits = a.ndim == len(spec.shape) and all(
            (1 <= a.shape[i] <= spec.dynamic[i]) if i in spec.dynamic else a.shape[i] == spec.shape[i]
            for i in range(1, a.ndim))
        if not fits:
            raise EdgeqError(f"{where}: {spec.name} has shape {a.shape}, the model takes {spec.describe()} "
                             "(samples first): reshape it")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            sample = int(np.argwhere(~np.isfinite(a.reshape(len(a), -1)))[0][0])
            raise EdgeqError(f"{where}: {spec.name} holds NaN or infinite values (sample {sample}): "
                             "clean the data")
        ordered[spec.name] = a
    n = next(iter(counts.values()))
    if labels is not None:
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != n:
            raise EdgeqError(f"{where}: labels must be {n} whole numbers (one class per sample), found "
                             f"{labels.dtype}{list(labels.shape)}")
        if (labels < 0).any():
            raise EdgeqError(f"{where}: labels hold a negative class ({int(labels.min())}): classes count from 0")
    return TensorSet(f"tensor file {path}", ordered, labels)
