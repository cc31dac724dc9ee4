"""The script edgeq's default export replaces, written from each tool's documentation, with no
checks: int8 and fp32 .pte (PT2E XNNPACK quantizer → to_edge_transform_and_lower), .onnx (the same
PT2E model → torch.onnx.export, dynamo) and .ptl (FX qnnpack → trace → lite interpreter). Same
model and calibration images as edgeq (edgeq's loaders); nothing else of edgeq is used.

    python -m bench.peers.plain_all_formats SOURCE WEIGHTS|- CALIB_SAMPLES OUT_DIR
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

started = time.perf_counter()

import torch  # noqa: E402
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: E402
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (  # noqa: E402
    XNNPACKQuantizer, get_symmetric_quantization_config)
from executorch.exir import to_edge_transform_and_lower  # noqa: E402
from torch.ao.quantization import get_default_qconfig_mapping  # noqa: E402
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx  # noqa: E402
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # noqa: E402

from bench.peers.calibration import calibration_batches, load  # noqa: E402


def main(source: str, weights: str, samples: int, out: Path) -> None:
    model, shape = load(source, weights)
    example = (torch.zeros(shape),)
    calib = [torch.from_numpy(b) for b in calibration_batches(source, shape, samples)]
    prepared = prepare_pt2e(torch.export.export(model, example).module(),
                            XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)))
    torch.backends.quantized.engine = "qnnpack"
    fx = prepare_fx(model, get_default_qconfig_mapping("qnnpack"), example)
    with torch.no_grad():
        for x in calib:
            prepared(x)
            fx(x)
    models = {"int8": (convert_pt2e(prepared), convert_fx(fx)), "fp32": (model, model)}
    out.mkdir(parents=True, exist_ok=True)
    for precision, (pt2e, eager) in models.items():
        program = torch.export.export(pt2e, example)
        (out / f"model_{precision}.pte").write_bytes(
            to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)
        torch.onnx.export(program, example, str(out / f"model_{precision}.onnx"), dynamo=True)
        with torch.no_grad():
            torch.jit.freeze(torch.jit.trace(eager.eval(), example))._save_for_lite_interpreter(
                str(out / f"model_{precision}.ptl"))
    print(f"wall_s={time.perf_counter() - started:.2f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
