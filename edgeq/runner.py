"""Load an artifact with its own runtime and run it: ExecuTorch (.pte), onnxruntime (.onnx),
the TorchScript lite interpreter (.ptl).

This file is also the program that runs on the target (inside qemu-aarch64, or on the host):
it imports nothing from edgeq, only numpy and the one runtime an artifact needs, because the
emulated sysroot has the aarch64 runtime wheels and nothing else.

    python runner.py JOB.json      # JOB: {"format", "path", "engine", "threads", "inputs",
                                   #       "outputs", "warmup", "runs", "result"}

It writes the outputs of every reference input (.npy) and a result JSON: where it ran
(platform.machine(), the CPU model the kernel reports), load time, per-run latencies and the
peak RSS of the process.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import sys
import time
import types
import warnings
from typing import Callable, Iterator

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]  # 1×C×H×W float32 → 1×classes float32


def import_runtime(fmt: str) -> None:
    """Import what `fmt` needs, apart from loading an artifact (the runner times the two apart)."""
    if fmt == "onnx":
        import onnxruntime  # noqa: F401
        return
    import torch  # noqa: F401

    if fmt == "pte":
        if "executorch.exir" not in sys.modules:
            # The runtime's pybindings import executorch.exir._warnings, and with it exir/__init__, which
            # pulls in dynamo and inductor (~15 s more under emulation). Register the package bare so only
            # that small submodule loads. executorch is a namespace package: __path__, not __file__.
            import executorch

            exir = types.ModuleType("executorch.exir")
            exir.__path__ = [os.path.join(list(executorch.__path__)[0], "exir")]
            sys.modules["executorch.exir"] = exir
        from executorch.runtime import Runtime  # noqa: F401


def load(fmt: str, path: str, engine: str = "qnnpack", threads: int | None = None) -> Runner:
    """The artifact's own runtime; `engine` is torch's quantized engine for .ptl (qnnpack | x86)."""
    import_runtime(fmt)
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]

    import torch

    if threads:
        torch.set_num_threads(threads)
    if fmt == "pte":
        from executorch.runtime import Runtime

        if threads:
            _executorch_threads(threads)
        with _stderr_silenced():  # XNNPACK's cpuinfo logs its CPU probing to fd 2 on first load
            method = Runtime.get().load_program(path).load_method("forward")
        return lambda x: method.execute([torch.from_numpy(x)])[0].numpy()
    if fmt == "ptl":
        from torch.jit.mobile import _load_for_lite_interpreter

        with warnings.catch_warnings(), quantized_engine(engine):  # weights are repacked at load, for the engine
            warnings.simplefilter("ignore")
            module = _load_for_lite_interpreter(path)

        def run(x: np.ndarray) -> np.ndarray:
            with quantized_engine(engine), torch.no_grad():
                return module(torch.from_numpy(x)).numpy()
        return run
    raise ValueError(f"unknown format {fmt!r}")


@contextlib.contextmanager
def quantized_engine(engine: str) -> Iterator[None]:
    """torch's quantized engine is process-wide: set it for the block only. On aarch64 the default
    is "x86", which has no arm kernels: the qnnpack artifacts need "qnnpack"."""
    import torch

    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def _executorch_threads(threads: int) -> None:
    try:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(threads)
    except (ImportError, AttributeError):  # older pybindings: XNNPACK keeps its default pool
        pass


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


ARM_PARTS = {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76",
             "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd47": "Cortex-A710", "0xd49": "Neoverse-N2"}


def cpu_model(text: str | None = None) -> tuple[str, str]:
    """(CPU, its feature flags) as the (possibly emulated) kernel reports them in /proc/cpuinfo."""
    if text is None:
        try:
            with open("/proc/cpuinfo") as f:
                text = f.read()
        except OSError:
            return "unknown", ""
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.split("\n\n")[0].splitlines()) if v}
    features = fields.get("Features") or fields.get("flags", "")
    part = fields.get("CPU part")
    if part:  # ARM: the part number names the core
        implementer = fields.get("CPU implementer", "?")
        # 0x00 is reserved for software: QEMU's "max" CPU, the default under binfmt (docker --platform).
        name = "QEMU max" if implementer == "0x00" else ARM_PARTS.get(part, "ARM core")
        return f"{name} (implementer {implementer}, part {part})", features
    return fields.get("model name", "unknown"), features


def exit_with_parent(parent_pid: int, every_s: float = 1.0) -> None:
    """End this process when edgeq is gone (killed, or a native abort): an orphaned runner under
    QEMU would otherwise go on for minutes. A sleeping thread: no instructions between checks."""
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every_s)
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def main(job_path: str) -> None:
    with open(job_path) as f:
        job = json.load(f)
    if job.get("parent_pid"):
        exit_with_parent(job["parent_pid"])
    started = time.perf_counter()
    import_runtime(job["format"])
    imported = time.perf_counter()
    run = load(job["format"], job["path"], job.get("engine", "qnnpack"), job.get("threads"))
    loaded = time.perf_counter()
    inputs = np.load(job["inputs"])
    if job.get("outputs"):
        np.save(job["outputs"], np.stack([run(inputs[i:i + 1])[0] for i in range(len(inputs))]))
    x = inputs[:1]
    for _ in range(job.get("warmup", 0)):
        run(x)
    latencies = []
    for _ in range(job.get("runs", 0)):
        t0 = time.perf_counter()
        run(x)
        latencies.append((time.perf_counter() - t0) * 1e3)
    cpu, features = cpu_model()
    result = {"machine": platform.machine(), "cpu": cpu, "cpu_features": features, "python": platform.python_version(),
              "import_s": imported - started, "load_s": loaded - imported, "latencies_ms": latencies,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    with open(job["result"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
