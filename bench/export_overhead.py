"""edgeq's export against the plain script it replaces: the same six artifacts (int8 and fp32 .pte,
.onnx, .ptl) from the same model and calibration images, each in its own process, imports
included. edgeq adds its weight steps, per-layer numerics, the host check of every artifact and the
reports; `--no-validate`: the target run is timed apart (manifest timings_s).

    .venv/bin/python -m bench.export_overhead        # ~3 min; results/export_overhead.json
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from bench import measure
from bench.suite import machine
from edgeq.manifest import Manifest

ROOT = Path(__file__).resolve().parent.parent
CALIB = 256  # edgeq's default


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="edgeq-bench-overhead-"))
    rows = {"plain script (bench/peers/plain_all_formats.py)": measure.command(
        measure.python("bench.peers.plain_all_formats", "builtin", "-", str(CALIB), str(work / "plain")),
        work / "plain.log")}
    rows["edgeq export --no-validate"] = measure.command(
        measure.python("edgeq", "export", "--target", "arm64", "--no-validate", "-q", "--out", str(work / "edgeq")),
        work / "edgeq.log")
    stages = Manifest.load(work / "edgeq").timings_s
    result = {"machine": machine(), "model": "builtin (Fashion-MNIST MobileNetV2-style, 96k parameters)",
              "exports": rows, "edgeq_stages_s": stages,
              "overhead_s": round(rows["edgeq export --no-validate"]["wall_s"]
                                  - rows["plain script (bench/peers/plain_all_formats.py)"]["wall_s"], 1)}
    out = ROOT / "bench" / "results" / "export_overhead.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    for name, r in rows.items():
        print(f"{name}: {r['wall_s']} s wall, {r['peak_rss_mb']} MB peak RSS")
    print(f"edgeq stages: {stages}")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
