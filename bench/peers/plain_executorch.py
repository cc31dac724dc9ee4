"""The plain ExecuTorch flow, as its documentation writes it: torch.export → PT2E with the
XNNPACK quantizer (per-channel) → calibrate → convert → to_edge_transform_and_lower(XNNPACK) →
.pte. The model and calibration images come from edgeq's loaders, so both flows quantize the same
network on the same images; nothing else of edgeq is used.

    python -m bench.peers.plain_executorch SOURCE WEIGHTS|- CALIB_SAMPLES OUT.pte
"""

from __future__ import annotations

import sys
import time

started = time.perf_counter()

import torch  # noqa: E402
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: E402
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (  # noqa: E402
    XNNPACKQuantizer, get_symmetric_quantization_config)
from executorch.exir import to_edge_transform_and_lower  # noqa: E402
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # noqa: E402

from bench.peers.calibration import calibration_batches, load  # noqa: E402


def main(source: str, weights: str, samples: int, out: str) -> None:
    model, shape = load(source, weights)
    example = (torch.zeros(shape),)
    graph = torch.export.export(model, example).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for batch in calibration_batches(source, shape, samples):
            prepared(torch.from_numpy(batch))
    converted = convert_pt2e(prepared)
    program = to_edge_transform_and_lower(torch.export.export(converted, example),
                                          partitioner=[XnnpackPartitioner()]).to_executorch()
    with open(out, "wb") as f:
        f.write(program.buffer)
    print(f"wall_s={time.perf_counter() - started:.2f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
