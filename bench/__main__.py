"""python -m bench [--quick] [--table]: run the benchmark, save bench/results/, update README.md."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench import report, suite

RESULTS = suite.ROOT / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="built-in model only, fewer runs (a smoke test)")
    parser.add_argument("--table", action="store_true", help="only redo the README table and plot from latest.json")
    parser.add_argument("--work", type=Path, default=suite.ROOT / "bench" / ".work", help="scratch folder")
    args = parser.parse_args()
    if args.table:
        results = json.loads((RESULTS / "latest.json").read_text())
    else:
        t0 = time.perf_counter()
        results = suite.run(args.work, quick=args.quick,
                            log=lambda line: print(f"[{time.perf_counter() - t0:6.0f} s] {line}", flush=True))
        print(f"saved {suite.save(results, RESULTS)}")
    if results["quick"]:
        report.plot(results, RESULTS / "ratios-quick.png")
    else:
        report.plot(results, RESULTS / "ratios.png")
        report.update_readme(suite.ROOT / "README.md", results)
    print(report.tables(results))


if __name__ == "__main__":
    main()
