"""Load an artifact with its own runtime and run it: ExecuTorch (.pte), onnxruntime (.onnx),
the TorchScript lite interpreter (.ptl).

This file is also the program that runs on the target (inside qemu-aarch64, or on the host):
it imports nothing from edgeq, only numpy and the one runtime an artifact needs, because the
emulated sysroot has the aarch64 runtime wheels and nothing else.

    python runner.py JOB.json      # JOB: {"artifacts": [{"format", "path", "outputs", "result"}, …],
                                   #       "engine", "threads", "inputs": [.npy per input], "warmup", "runs"}

One process runs every artifact of the job, so each runtime is imported once. Under QEMU it runs
the .onnx only: importing torch there costs tens of seconds, so .pte and .ptl run through their
runtimes' C++ APIs instead (edgeq.qemu.native, same job, same files written). For each artifact
it writes the outputs of every reference input (an .npz, one array per output) and a result JSON:
where it ran (platform.machine(), the CPU model the kernel reports), the process's import time,
load time, per-run latencies and the process's peak RSS so far. A result file exists only for an artifact
that finished, so whoever started the process knows which ones a crash left undone.
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
from typing import Any, Callable, Iterator

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]  # N×C×H×W float32 → N×classes float32, any N
Batched = Callable[[list[np.ndarray]], list[np.ndarray]]  # every input, batch first → every output, any N


def import_runtime(fmt: str) -> None:
    """Import what `fmt` needs, apart from loading an artifact (the runner times the two apart)."""
    if fmt == "onnx":
        import onnxruntime  # noqa: F401
        return
    import torch  # noqa: F401

    if fmt == "pte":
        if "executorch.exir" not in sys.modules:
            # The runtime's pybindings import executorch.exir._warnings, and with it exir/__init__, which
            # pulls in dynamo and inductor (~10 s on this host). Register the package bare so only that
            # small submodule loads. executorch is a namespace package: __path__, not __file__.
            import executorch

            exir = types.ModuleType("executorch.exir")
            exir.__path__ = [os.path.join(list(executorch.__path__)[0], "exir")]
            sys.modules["executorch.exir"] = exir
        from executorch.runtime import Runtime  # noqa: F401


def load(fmt: str, path: str, engine: str = "qnnpack", threads: int | None = None,
         host_kernels: bool = True) -> Runner:
    """An image model's artifact in its own runtime: a batch in, its outputs out, batched where the
    artifact allows (else a sample at a time). `engine` is torch's quantized engine for .ptl (qnnpack |
    x86). host_kernels=False (a host check for another architecture): onnxruntime runs a QDQ graph as
    written, dequantize → float op → quantize, instead of fusing it into this host's integer
    kernels, which are not the target's: on x86 without VNNI they saturate (u8s8 VPMADDUBSW;
    seen: the built-in model's int8 .onnx 20.7 dB here against 32.0 dB on arm64 and as written)."""
    run = load_batched(fmt, path, engine, threads, host_kernels)
    return lambda x: run([x])[0]


def load_batched(fmt: str, path: str, engine: str = "qnnpack", threads: int | None = None,
                 host_kernels: bool = True) -> Batched:
    """Any model's artifact: a batch of samples of every input in, every output for each out; one
    call where the artifact takes a batch, else a sample at a time."""
    run = load_tensors(fmt, path, engine, threads, host_kernels)
    if fmt == "pte" or run.fixed_batch:  # a .pte's shapes are planned for one sample: a loop costs ~20 µs a call
        return _per_sample(run)
    return _batched_or_per_sample(run) if fmt == "ptl" else run


class Tensors:
    """An artifact loaded in its own runtime, for any number of inputs and outputs of any dtype: one
    call is one run at the shapes given, every output returned in order."""

    def __init__(self, run: Callable[[list[np.ndarray]], list[np.ndarray]], fixed_batch: bool) -> None:
        self.run, self.fixed_batch = run, fixed_batch

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self.run(inputs)


def load_tensors(fmt: str, path: str, engine: str = "qnnpack", threads: int | None = None,
                 host_kernels: bool = True) -> Tensors:
    """The artifact's own runtime (see load for `engine` and `host_kernels`)."""
    import_runtime(fmt)
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if not host_kernels:  # QDQ fusion into QLinear* kernels happens above the basic level
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return Tensors(lambda xs: list(session.run(None, dict(zip(names, xs)))),
                       fixed_batch=isinstance(session.get_inputs()[0].shape[0], int))

    import torch

    if threads:
        torch.set_num_threads(threads)
    if fmt == "pte":
        import executorch.kernels.quantized  # noqa: F401 - int8 embedding tables (embedding_byte) run on these
        from executorch.runtime import Runtime

        with stderr_silenced():  # XNNPACK's cpuinfo logs its CPU probing to fd 2 on first load
            if threads:
                _executorch_threads(threads)
            method = Runtime.get().load_program(path).load_method("forward")
        return Tensors(lambda xs: [y.numpy() for y in method.execute([torch.from_numpy(x) for x in xs])],
                       fixed_batch=True)
    if fmt == "ptl":
        from torch.jit.mobile import _load_for_lite_interpreter

        with warnings.catch_warnings(), quantized_engine(engine):  # weights are repacked at load, for the engine
            warnings.simplefilter("ignore")
            module = _load_for_lite_interpreter(path)

        def run(xs: list[np.ndarray]) -> list[np.ndarray]:
            with quantized_engine(engine), torch.no_grad():
                y = module(*[torch.from_numpy(x) for x in xs])
            return [t.numpy() for t in (y if isinstance(y, (tuple, list)) else [y])]
        return Tensors(run, fixed_batch=False)
    raise ValueError(f"unknown format {fmt!r}")


def _per_sample(run: Batched) -> Batched:
    def each(xs: list[np.ndarray]) -> list[np.ndarray]:
        runs = [run([x[i:i + 1] for x in xs]) for i in range(len(xs[0]))]
        return [np.concatenate(outputs) for outputs in zip(*runs)]
    return each


def _batched_or_per_sample(run: Batched) -> Batched:
    """A traced graph runs a whole batch when nothing in it fixed the batch size (a reshape to the
    traced shape would): try the batch once, and go one sample at a time if it fails or gives
    another number of outputs. The lite interpreter is ~10× faster a sample on batches."""
    per_sample = _per_sample(run)
    batched = [True]

    def run_any(xs: list[np.ndarray]) -> list[np.ndarray]:
        if batched[0] and len(xs[0]) > 1:
            try:
                ys = run(xs)
                if all(y.ndim and len(y) == len(xs[0]) for y in ys):
                    return ys
            except RuntimeError:
                pass
            batched[0] = False
        return per_sample(xs)
    return run_any


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
def stderr_silenced() -> Iterator[None]:
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


def int8_products_saturate(machine: str, features: str) -> bool:
    """Whether onnxruntime's fused x86 int8 kernels saturate here: without VNNI they multiply with
    VPMADDUBSW, whose int16 sums of two u8×s8 products clip for full-range int8 weights (the
    onnxruntime quantization docs' "reduce_range" caveat)."""
    flags = set(features.split())
    return machine in ("x86_64", "AMD64") and "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni"}


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
    for fmt in dict.fromkeys(a["format"] for a in job["artifacts"]):
        import_runtime(fmt)
    import_s = time.perf_counter() - started
    inputs = [np.load(path, allow_pickle=False) for path in job["inputs"]]
    cpu, features = cpu_model()
    for artifact in job["artifacts"]:
        t0 = time.perf_counter()
        run = load_batched(artifact["format"], artifact["path"], job.get("engine", "qnnpack"), job.get("threads"))
        load_s = time.perf_counter() - t0
        if artifact.get("outputs"):
            np.savez(artifact["outputs"], *run(inputs))
        x = [a[:1] for a in inputs]
        for _ in range(job.get("warmup", 0)):
            run(x)
        latencies = []
        for _ in range(job.get("runs", 0)):
            t0 = time.perf_counter()
            run(x)
            latencies.append((time.perf_counter() - t0) * 1e3)
        write_result(artifact["result"], {
            "machine": platform.machine(), "cpu": cpu, "cpu_features": features, "python": platform.python_version(),
            "runner": "python", "import_s": import_s, "load_s": load_s, "latencies_ms": latencies,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def write_result(path: str, result: dict[str, Any]) -> None:
    """One artifact's result file, whole or absent (validate reruns an artifact without one)."""
    with open(path + ".part", "w") as f:
        json.dump(result, f)
    os.replace(path + ".part", path)


if __name__ == "__main__":
    main(sys.argv[1])
