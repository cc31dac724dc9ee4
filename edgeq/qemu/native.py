"""Native runners on the emulated target: `.pte` through the ExecuTorch runtime's C++ API and `.ptl`
through the lite interpreter's (native/model_run.cpp), built against the aarch64 wheels' own
libraries, so the machine code that runs is the code the Python runtimes would call, without Python.

Why: under QEMU a Python runner spent most of its time importing. Measured on this 2-core host
(built-in model, 32 inputs each, int8 + fp32 in one process): the torch-based Python runner took
60 s (torch's import 34 s, of which 11 s loading libtorch); the native .pte runner 2.1 s, the
native .ptl runner 12.6 s (loading libtorch_cpu), with the same outputs (int8 bit for bit). A phone
runs these formats from C++ as well. onnxruntime's Python runner imports in 3 s and stays.

    aarch64/native/pte_run, ptl_run   compiled once by zig (PyPI ziglang) against the wheels'
                                      headers and Debian's arm64 libstdc++ headers: the wheels'
                                      C++ libraries are built with GCC's libstdc++ (C++11 ABI)

The job format is edgeq/runner.py's: `run_job` writes the same outputs (.npz) and result files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from edgeq import fetch, procs, runner
from edgeq.fetch import DEBIAN

STEP = "targets setup"
FORMATS = ("pte", "ptl")
# GCC 12's C++ headers (Debian bookworm, the sysroot's release), matching its libstdc++6.
LIBSTDCXX_DEV = ("libstdc++-12-dev", "libgcc-12-dev")
TARGET = ["-target", "aarch64-linux-gnu.2.36"]
DTYPES = {"float32": "f32", "int64": "i64", "int32": "i32", "uint8": "u8", "bool": "b8"}  # model_run.cpp's names


def source() -> Path:
    return Path(str(resources.files("edgeq.qemu") / "native" / "model_run.cpp"))


def key(wheels_key: str) -> str:
    """Rebuilt when the wheels or the driver's source change."""
    return f"{wheels_key} model_run.cpp:{hashlib.sha256(source().read_bytes()).hexdigest()[:16]}"


def library_path(root: Path, fmt: str) -> str:
    """The guest's LD_LIBRARY_PATH for a runner: its runtime's libraries (libtorch_cpu needs the CUDA
    stubs for the profiler libraries it links)."""
    wheels = root / "wheels"
    if fmt == "pte":
        return str(wheels / "executorch" / "lib")
    return f"{wheels / 'torch' / 'lib'}:{root / 'stubs'}"


def build(out: Path, root: Path) -> None:
    """The two runners into `out`; the downloads and objects in a scratch folder beside it, removed."""
    scratch = out.with_name(out.name + ".build")
    try:
        _build(out, root, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _build(out: Path, root: Path, scratch: Path) -> None:
    from edgeq.qemu.provision import zig_compiler

    dev = scratch / "dev"
    for deb in fetch.apt_download(LIBSTDCXX_DEV, "arm64", [f"{DEBIAN} bookworm"], scratch / "debs", scratch / "apt",
                                  "the arm64 C++ headers the native runners build with", STEP):
        fetch.run(["dpkg-deb", "-x", str(deb), str(dev)], f"unpack {deb.name}", STEP)
    # ExecuTorch's header-only c10 includes a CMake-generated header the wheel leaves out; it only
    # sets export macros, which a program does not need.
    generated = scratch / "generated" / "torch" / "headeronly" / "macros"
    generated.mkdir(parents=True)
    (generated / "cmake_macros.h").write_text("#pragma once\n")
    wheels, sysroot = root / "wheels", root / "sysroot"
    executorch, torch = wheels / "executorch", wheels / "torch"
    cxx = ["-std=c++20", "-O2", "-w", "-nostdinc++", "-D_GLIBCXX_USE_CXX11_ABI=1",
           "-I", str(dev / "usr" / "include" / "c++" / "12"),
           "-I", str(dev / "usr" / "include" / "aarch64-linux-gnu" / "c++" / "12")]
    runtimes = {
        "pte": (["-I", str(executorch / "include"),
                 "-I", str(executorch / "include" / "executorch" / "runtime" / "core" / "portable_type" / "c10"),
                 "-I", str(scratch / "generated")],
                [executorch / "lib" / f"libexecutorch{part}.so" for part in
                 ("", "_backend_xnnpack", "_kernels_optimized", "_kernels_quantized", "_threadpool")]),
        "ptl": (["-I", str(torch / "include"), "-I", str(torch / "include" / "torch" / "csrc" / "api" / "include")],
                [torch / "lib" / "libtorch_cpu.so", torch / "lib" / "libc10.so"]),
    }
    with zig_compiler(scratch / "zig", STEP) as compile:
        for fmt, (includes, libraries) in runtimes.items():
            obj = scratch / f"{fmt}_run.o"
            compile(["c++", *TARGET, *cxx, f"-DEDGEQ_{fmt.upper()}", *includes, "-c", "-o", str(obj),
                     str(source())], f"compile the native {fmt} runner")
            # --no-as-needed: the backends and kernels register themselves when loaded, unreferenced.
            compile(["cc", *TARGET, "-o", str(out / f"{fmt}_run"), str(obj), "-Wl,--no-as-needed",
                     *map(str, libraries), str(sysroot / "usr" / "lib" / "aarch64-linux-gnu" / "libstdc++.so.6"),
                     str(sysroot / "lib" / "aarch64-linux-gnu" / "libgcc_s.so.1"), "-Wl,--allow-shlib-undefined"],
                    f"link the native {fmt} runner")


def run_emulated(job: dict[str, Any], job_file: Path, emu: Any, cpu: str, threads: int, timeout: float,
                 plugin_log: Path | None = None) -> subprocess.CompletedProcess[str]:
    """An edgeq/runner.py job on the emulated `cpu`: natively for .pte/.ptl (`run_job`, from arguments),
    else runner.py under the emulated Python, reading `job_file`. Raises subprocess.TimeoutExpired like procs.run."""
    if job["artifacts"][0]["format"] in FORMATS:
        return run_job(job, emu, cpu, timeout, plugin_log)
    job_file.write_text(json.dumps(job))
    argv, env = emu.command(cpu, [str(Path(runner.__file__).resolve()), str(job_file)], threads,
                            plugin_log is not None, plugin_log)
    return procs.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)


def run_job(job: dict[str, Any], emu: Any, cpu: str, timeout: float,
            plugin_log: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run an edgeq/runner.py job of one native format in one process; write what runner.py writes
    for each artifact that finished. Raises subprocess.TimeoutExpired like procs.run."""
    artifacts = job["artifacts"]
    fmt = artifacts[0]["format"]
    specs, count = [], 0
    for path in job["inputs"]:  # one .npy per model input, samples first
        x = np.load(path, allow_pickle=False)
        if x.dtype.name not in DTYPES:
            raise ValueError(f"the native runners take {', '.join(DTYPES)} inputs, not {x.dtype}")
        raw = Path(path).with_suffix(".bin")
        if not raw.exists():  # runners of two formats may start side by side: each file appears whole
            part = raw.with_name(f"{raw.name}.{os.getpid()}.{threading.get_ident()}.part")
            np.ascontiguousarray(x).tofile(part)
            os.replace(part, raw)
        specs.append(f"{raw}:{DTYPES[x.dtype.name]}:{'x'.join(map(str, (1, *x.shape[1:])))}")
        count = len(x)
    count = count if any(a["outputs"] for a in artifacts) else 0
    pairs = [(a["path"], a["outputs"] + ".f32" if a["outputs"] else "-") for a in artifacts]
    args = [str(count), str(job["warmup"]), str(job["runs"]), str(job.get("threads") or 1), job["engine"], *specs,
            "--", *(item for pair in pairs for item in pair)]
    argv, env = emu.command(cpu, args, job.get("threads") or 1, plugin_log is not None, plugin_log,
                            program=emu.root / "native" / f"{fmt}_run", library_path=library_path(emu.root, fmt))
    proc = procs.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    _write_results(proc.stdout, artifacts, count)
    refused = re.search(r"(?m)^model \d+ error (\w+)", proc.stdout or "")
    if refused:  # the runtime's own refusal, last on stderr where the validation report reads it
        what = {"pte": "the ExecuTorch runtime", "ptl": "the lite interpreter"}[fmt]
        proc.stderr = f"{proc.stderr or ''}\n{what} refused the model at: {refused.group(1)}"
    return proc


def _write_results(stdout: str, artifacts: list[dict[str, Any]], count: int) -> None:
    facts: dict[str, str] = {}
    cpuinfo, models = [], [dict() for _ in artifacts]
    for line in stdout.splitlines():
        head, _, rest = line.partition(" ")
        if head == "cpuinfo":
            cpuinfo.append(rest)
        elif head == "model":
            index, _, fact = rest.partition(" ")
            name, _, value = fact.partition(" ")
            if index.isdigit() and int(index) < len(models):
                models[int(index)][name] = value
        else:
            facts[head] = rest
    cpu, features = runner.cpu_model("\n".join(cpuinfo))
    for artifact, seen in zip(artifacts, models):
        if "latency_ms" not in seen:  # it did not finish
            continue
        if artifact["outputs"]:  # every output of a sample back to back: split, one array per output
            raw = Path(artifact["outputs"] + ".f32")
            sizes = [int(k) for k in seen["outputs"].split()]
            flat = np.fromfile(raw, dtype=np.float32).reshape(count, sum(sizes))
            np.savez(artifact["outputs"], *np.split(flat, np.cumsum(sizes)[:-1], axis=1))
            raw.unlink()
        result = {"machine": facts.get("machine", "unknown"), "cpu": cpu, "cpu_features": features, "python": None,
                  "runner": "native", "import_s": max(0.0, float(facts.get("startup_s", -1))),
                  "load_s": float(seen["load_ms"]) / 1e3, "latencies_ms": [float(t) for t in seen["latency_ms"].split()],
                  "peak_rss_mb": float(facts.get("rss_mb", 0))}
        runner.write_result(artifact["result"], result)
