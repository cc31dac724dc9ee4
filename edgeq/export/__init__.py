"""Exporters, one module per format. Each writes its artifact and returns the format's facts
(for the manifest), and can load an artifact back with its own runtime for checking."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]  # 1×C×H×W float32 → 1×classes float32


def load_runner(fmt: str, path: Path, backend: str) -> Runner:
    """The artifact's own runtime: ExecuTorch, onnxruntime or the lite interpreter."""
    from edgeq.export import onnx, pte, ptl

    if fmt == "pte":
        return pte.load(path)
    if fmt == "onnx":
        return onnx.load(path)
    if fmt == "ptl":
        return ptl.load(path, backend)
    raise ValueError(fmt)
