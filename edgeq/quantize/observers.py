"""Calibration methods (how an activation's range is chosen) and the one weight scheme.

- "histogram" (default): a histogram of every value seen, then the range that minimises the L2
  error of quantizing it (torch's HistogramObserver). Robust to a few outliers.
- "minmax": the smallest and largest value seen. Exact on bounded signals, wasteful with outliers.
- "percentile": the same histogram, clipped at the given percentile on each side.
For onnxruntime's own flow (x86 .onnx) the same names map to its calibrators: MinMax, Entropy (its
histogram method: KL divergence, not L2) and Percentile.

Weights: symmetric int8 in [-127, 127], per channel (or per tensor), the scheme of XNNPACK and of
onnxruntime. The FX flow is set to it too, so that every format rounds each weight the same way
and bias correction, computed once, fits all of them.
"""

from __future__ import annotations

import torch

WEIGHT_QMIN, WEIGHT_QMAX = -127, 127


def weight_scale(weight: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """The int8 step of a weight, per output channel (broadcastable) or for the whole tensor."""
    dims = tuple(range(1, weight.dim())) if per_channel else tuple(range(weight.dim()))
    return (weight.abs().amax(dim=dims, keepdim=True) / WEIGHT_QMAX).clamp(min=2 ** -12)


def fake_quantize_weight(weight: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """The weight as the runtimes will hold it: round-to-nearest onto the symmetric int8 grid."""
    scale = weight_scale(weight, per_channel)
    return (weight / scale).round().clamp(WEIGHT_QMIN, WEIGHT_QMAX) * scale


class _Percentile:
    """Mixed into a HistogramObserver: the range is the histogram's percentiles, not an L2 search."""

    edgeq_percentile: float

    def _non_linear_param_search(self) -> tuple[torch.Tensor, torch.Tensor]:
        hist = self.histogram.double()  # type: ignore[attr-defined]
        cdf = hist.cumsum(0) / hist.sum().clamp(min=1)
        tail = (100.0 - self.edgeq_percentile) / 100.0
        low = int(torch.searchsorted(cdf, torch.tensor(tail, dtype=cdf.dtype)))
        high = int(torch.searchsorted(cdf, torch.tensor(1.0 - tail, dtype=cdf.dtype)))
        width = (self.max_val - self.min_val) / self.bins  # type: ignore[attr-defined]
        return self.min_val + width * low, self.min_val + width * min(high + 1, self.bins)  # type: ignore[attr-defined]


def activation_observer(histogram: type, minmax: type, method: str, percentile: float, **kwargs):  # -> constructor
    """The observer constructor for a calibration method, from a library's own observer classes
    (torch.ao's for FX, torchao's for PT2E: the two are separate class trees)."""
    if method == "minmax":
        return minmax.with_args(**kwargs)
    if method == "histogram":
        return histogram.with_args(**kwargs)
    cls = type(f"Percentile{histogram.__name__}", (_Percentile, histogram), {"edgeq_percentile": percentile})
    return cls.with_args(**kwargs)


def ort_calibration(method: str, percentile: float) -> tuple[object, dict]:
    """onnxruntime's calibrator and extra options for a calibration method."""
    from onnxruntime.quantization import CalibrationMethod

    if method == "minmax":
        return CalibrationMethod.MinMax, {}
    if method == "histogram":
        return CalibrationMethod.Entropy, {}
    return CalibrationMethod.Percentile, {"CalibPercentile": percentile}
