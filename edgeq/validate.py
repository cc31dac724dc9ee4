"""Validation against the float model: each artifact run by its own runtime, compared output by output."""

from __future__ import annotations

import numpy as np

from edgeq.manifest import HostCheck
from edgeq.targets import Thresholds

# fp32 artifacts must reproduce the float model almost exactly; int8 ones are held to the target.
FP32_MIN_SQNR_DB = 40.0


def top1_agreement(reference: np.ndarray, outputs: np.ndarray) -> float:
    return float(np.mean(reference.argmax(-1) == outputs.argmax(-1)))


def sqnr_db(reference: np.ndarray, outputs: np.ndarray) -> float | None:
    """Signal-to-quantization-noise ratio of the outputs in dB; None when they are bit-identical
    (infinite SQNR, which JSON cannot carry)."""
    ref = reference.astype(np.float64)
    noise = float(np.sum((ref - outputs) ** 2))
    if noise == 0.0:
        return None
    signal = max(float(np.sum(ref ** 2)), float(np.finfo(np.float64).tiny))  # all-zero reference: very negative
    return 10.0 * float(np.log10(signal / noise))


def accuracy(outputs: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float(np.mean(outputs.argmax(-1) == labels))


def compare(reference: np.ndarray, outputs: np.ndarray, labels: np.ndarray | None, precision: str,
            thresholds: Thresholds, method: str = "static") -> HostCheck:
    """Agreement, SQNR, max abs error and accuracy of `outputs` against the float model's `reference`,
    and whether they pass: the gates applied are listed in `HostCheck.gates`."""
    check = HostCheck(samples=int(len(reference)), top1_agreement=top1_agreement(reference, outputs),
                      sqnr_db=sqnr_db(reference, outputs),
                      max_abs_err=float(np.max(np.abs(reference - outputs))) if len(reference) else 0.0,
                      accuracy=accuracy(outputs, labels))
    sqnr = float("inf") if check.sqnr_db is None else check.sqnr_db
    if precision == "fp32":
        gates = {f"sqnr_db >= {FP32_MIN_SQNR_DB:g}": sqnr >= FP32_MIN_SQNR_DB}
    else:
        gates = {f"top1_agreement >= {thresholds.min_top1_agreement:g}":
                 check.top1_agreement >= thresholds.min_top1_agreement}
        if method == "static":
            gates[f"sqnr_db >= {thresholds.min_sqnr_db:g}"] = sqnr >= thresholds.min_sqnr_db
        float_accuracy = accuracy(reference, labels)
        if float_accuracy is not None and check.accuracy is not None:
            gates[f"accuracy >= float - {thresholds.max_accuracy_drop:g}"] = \
                check.accuracy >= float_accuracy - thresholds.max_accuracy_drop
    check.gates = [g for g in gates]
    check.passed = all(gates.values())
    return check
