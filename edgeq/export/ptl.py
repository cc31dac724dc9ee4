"""TorchScript-lite .ptl: trace → freeze → mobile passes → _save_for_lite_interpreter.

`optimize_for_mobile` needs a torch built with XNNPACK; the x86 wheels here are not (upstream
turned it off when PyTorch Mobile was deprecated). Then the passes that need no XNNPACK are
applied instead, and the manifest says which ran.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.ao.nn import quantized as nnq

from edgeq.errors import EdgeqError
from edgeq.quantize import Example, as_example, quiet
from edgeq.runner import quantized_engine
from edgeq.tensors import FlatOutputs

FALLBACK_PASSES = ["freeze (constant propagation, conv-bn folding)", "remove_dropout"]


def export(model: nn.Module, spec: tuple[int, ...] | Example, path: Path, backend: str) -> dict[str, Any]:
    """`model` is the float model or a quantized one (its packed weights follow `backend`), traced at
    its example inputs (or image input shape)."""
    from torch.utils.mobile_optimizer import optimize_for_mobile

    example = as_example(spec)
    with quiet(), quantized_engine(backend), torch.no_grad(), _mha_fast_path(False):
        out = model.eval()(*example)
        if not isinstance(out, (torch.Tensor, tuple)):  # a dict or list: as one tuple, the order every format has
            model = FlatOutputs(model).eval()
        try:
            traced = torch.jit.trace(model, tuple(example))
        except Exception as e:  # noqa: BLE001 - tracing errors come in many types
            raise EdgeqError(f"TorchScript tracing failed for .ptl ({type(e).__name__}: "
                             f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}): "
                             "leave the format out with --formats") from None
        # An int8 embedding frozen into a constant is saved twice by the lite format (measured: 2 × 11.7 MB
        # on all-MiniLM-L6-v2); kept as an attribute, once.
        tables = [name for name, m in model.named_modules() if isinstance(m, nnq.Embedding)]
        frozen = torch.jit.freeze(traced, preserved_attrs=tables)
        try:
            mobile = optimize_for_mobile(frozen)
            details: dict[str, Any] = {"mobile_optimization": "optimize_for_mobile"}
        except RuntimeError as e:
            if "XNNPACK" not in str(e):
                raise
            torch._C._jit_pass_remove_dropout(frozen._c)
            mobile = frozen
            details = {"mobile_optimization": "fallback passes", "passes": FALLBACK_PASSES,
                       "reason": "optimize_for_mobile unavailable: this torch build has XNNPACK disabled"}
        mobile._save_for_lite_interpreter(str(path))
    details["quantized_engine"] = backend
    return details


@contextlib.contextmanager
def _mha_fast_path(enabled: bool) -> Iterator[None]:
    """Transformer layers' fused fast path off while tracing: traced with it, a float .ptl bakes in
    aten::_transformer_encoder_layer_fwd, and a dynamically quantized layer fails its fast-path check
    (it reads linear1.weight, a method on nnqd.Linear). The plain path is the same function."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)
