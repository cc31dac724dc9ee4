"""Small measuring functions: host latency of an artifact, wall time and peak RSS of a command,
accuracy and agreement of an artifact on labelled images."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgeq import runner


def host_latency(fmt: str, path: Path, x: np.ndarray, engine: str = "qnnpack", seconds: float = 2.0,
                 min_runs: int = 20, max_runs: int = 300, warmup: int = 5) -> dict:
    """Median and spread (p10, p90) over as many runs as `seconds` take (bounded), 1 thread."""
    run = runner.load(fmt, str(path), engine, threads=1)
    for _ in range(warmup):
        run(x)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() < end):
        t0 = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t0) * 1e3)
    a = np.array(times)
    return {"median_ms": float(np.median(a)), "p10_ms": float(np.percentile(a, 10)),
            "p90_ms": float(np.percentile(a, 90)), "runs": len(a), "threads": 1, "measured": "host"}


def outputs(fmt: str, path: Path, inputs: np.ndarray, engine: str = "qnnpack") -> np.ndarray:
    run = runner.load(fmt, str(path), engine, threads=1)
    return np.stack([run(inputs[i:i + 1])[0] for i in range(len(inputs))])


def command(args: list[str], log: Path, accept: tuple[int, ...] = (0,)) -> dict:
    """Run a command to completion: wall seconds and its peak RSS (wait4: this process alone).
    `accept`: exit codes that still mean it produced its output."""
    started = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in accept:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{' '.join(args[:4])} … failed ({proc.returncode}):\n{tail}")
    return {"wall_s": round(time.perf_counter() - started, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "exit_code": proc.returncode}


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
