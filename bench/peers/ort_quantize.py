"""onnxruntime's own post-training quantization of an fp32 .onnx, as its documentation writes it:
quant_pre_process (shape inference, optimization) → quantize_static with a calibration reader,
per-channel weights. The format and the activation type are arguments, to find what runs fastest.

    python -m bench.peers.ort_quantize SOURCE FP32.onnx CALIB_SAMPLES OUT.onnx FORMAT ACTIVATION
        FORMAT: qdq | qoperator     ACTIVATION: int8 | uint8
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

started = time.perf_counter()

import onnx  # noqa: E402
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,  # noqa: E402
                                      quant_pre_process, quantize_static)

from bench.peers.calibration import calibration_batches  # noqa: E402


class Reader(CalibrationDataReader):
    def __init__(self, source: str, fp32: str, samples: int) -> None:
        model = onnx.load(fp32)
        self.name = model.graph.input[0].name
        shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
        self.batches = calibration_batches(source, shape, samples)

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.name: batch}


def main(source: str, fp32: str, samples: int, out: str, fmt: str, activation: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        prepared = str(Path(tmp) / "prepared.onnx")
        quant_pre_process(fp32, prepared)
        quantize_static(prepared, out, Reader(source, fp32, samples),
                        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                        activation_type=QuantType.QInt8 if activation == "int8" else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True)
    print(f"wall_s={time.perf_counter() - started:.2f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6])
