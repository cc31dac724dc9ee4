"""Dynamic int8 on real sequence models: edgeq's flow per format against the plain flow a user would
write from each library's docs, and fp32. Host numbers only (1 thread, this machine).

    .venv/bin/python -m bench.dynamic          # ~10 min on the 2-core host; results/dynamic.json

Models (real weights, fetched by tests/realdata): Silero VAD (convolutions + LSTMCell, raw audio
and state in) streamed over espeak-ng speech; g2p-en (GRU encoder, GRUCell decoder, int64 letters
in) on CMUdict words. Plain flows:
- .pte: PT2E XNNPACKQuantizer(is_dynamic=True, per-channel) on the model as it is, lowered to XNNPACK.
- .onnx: onnxruntime quantize_dynamic on the float .onnx with its defaults (no quant_pre_process).
- .ptl: torch.ao quantize_dynamic on the model's Linear/LSTM/GRU/cell types with torch's default
  engine on this host (x86), traced and saved for the lite interpreter.
Per artifact: bytes, host latency (median of the runs), the outputs' SQNR and cosine against the
float model, and the task's own figure (speech/silence decisions, words right).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeq import runner
from edgeq.export import onnx as onnx_export, pte, ptl
from edgeq.quantize.dynamic import PTL_DYNAMIC, quantize_dynamic_eager, quantize_dynamic_pt2e

RESULTS = Path(__file__).parent / "results" / "dynamic.json"
RUNS = 50


def _plain_pte(model: nn.Module, example, path: Path) -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                          get_symmetric_quantization_config)
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    prepared(*example)
    converted = convert_pt2e(prepared)
    edge = to_edge_transform_and_lower(torch.export.export(converted, example), partitioner=[XnnpackPartitioner()])
    path.write_bytes(edge.to_executorch().buffer)


def _plain_onnx(model: nn.Module, example, names, path: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    fp32 = path.with_name("plain_fp32.onnx")
    torch.onnx.export(torch.export.export(model, example), example, dynamo=True, input_names=list(names)).save(str(fp32))
    quantize_dynamic(str(fp32), str(path))


def _plain_ptl(model: nn.Module, example, path: Path) -> None:
    from torch.ao.quantization import quantize_dynamic

    quantized = quantize_dynamic(model, set(PTL_DYNAMIC), dtype=torch.qint8)
    torch.jit.freeze(torch.jit.trace(quantized, example))._save_for_lite_interpreter(str(path))


def _artifacts(model: nn.Module, names: tuple[str, ...], folder: Path) -> dict[str, tuple[str, Path, str]]:
    """{label: (format, path, quantized engine)}: fp32, edgeq dynamic and the plain flow per format."""
    example = model.example_inputs()
    made: dict[str, tuple[str, Path, str]] = {}

    def make(label: str, fmt: str, build, engine: str = "qnnpack") -> None:
        path = folder / f"{label.replace(' ', '_').replace('.', '')}.{fmt}"
        try:
            build(path)
            made[label] = (fmt, path, engine)
        except Exception as e:  # noqa: BLE001 - a flow that fails is a result too
            print(f"  {label}: failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")

    make("fp32 .pte", "pte", lambda p: pte.export(model, example, p))
    make("edgeq dynamic .pte", "pte", lambda p: pte.export(quantize_dynamic_pt2e(model, example, True), example, p))
    make("plain dynamic .pte", "pte", lambda p: _plain_pte(model, example, p))
    make("fp32 .onnx", "onnx", lambda p: onnx_export.export(model, example, p, quantized=False, input_names=names))
    make("edgeq dynamic .onnx", "onnx", lambda p: onnx_export.export_ort_dynamic(model, example, names, p, True))
    make("plain dynamic .onnx", "onnx", lambda p: _plain_onnx(model, example, names, p))
    make("fp32 .ptl", "ptl", lambda p: ptl.export(model, example, p, "qnnpack"))
    make("edgeq dynamic .ptl", "ptl",
         lambda p: ptl.export(quantize_dynamic_eager(model, "qnnpack", True), example, p, "qnnpack"))
    make("plain dynamic .ptl", "ptl", lambda p: _plain_ptl(model, example, p), engine=torch.backends.quantized.engine)
    return made


def _sqnr_cosine(want: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
    w = np.concatenate([a.reshape(-1) for a in want]).astype(np.float64)
    g = np.concatenate([a.reshape(-1) for a in got]).astype(np.float64)
    noise = float(np.sum((w - g) ** 2))
    sqnr = float("inf") if noise == 0 else 10 * np.log10(float(np.sum(w ** 2)) / noise)
    return sqnr, float(w @ g / (np.linalg.norm(w) * np.linalg.norm(g)))


def _measure(made, samples, run_task, reference) -> list[dict]:
    rows = []
    for label, (fmt, path, engine) in made.items():
        run = runner.load_tensors(fmt, str(path), engine=engine, threads=1)
        outputs = [run(list(xs)) for xs in samples]
        for _ in range(3):
            run(list(samples[0]))
        times = []
        for _ in range(RUNS):
            t0 = time.perf_counter()
            run(list(samples[0]))
            times.append((time.perf_counter() - t0) * 1e3)
        sqnr, cosine = _sqnr_cosine([y for ys in reference for y in ys], [y for ys in outputs for y in ys])
        rows.append({"artifact": label, "bytes": path.stat().st_size, "host_ms": statistics.median(times),
                     "sqnr_db": round(sqnr, 2), "cosine": round(cosine, 5), "task": run_task(run)})
        print(f"  {label:22s} {path.stat().st_size / 1e6:6.2f} MB  {rows[-1]['host_ms']:7.2f} ms  "
              f"{sqnr:6.1f} dB  cos {cosine:.4f}  {rows[-1]['task']}")
    return rows


def silero_vad(folder: Path) -> dict:
    from tests.realdata import silero, silero_model

    model = silero_model()
    audio = silero.speech("hello, this is a test of voice activity detection on a phone", folder)
    h = c = np.zeros((1, 128), np.float32)
    samples, reference = [], []
    with torch.no_grad():  # the float model's own stream: its states are every artifact's inputs
        for x in silero.chunks(audio):
            xs = (x[None], h, c)
            ys = [t.numpy() for t in model(*[torch.from_numpy(a) for a in xs])]
            samples.append(xs)
            reference.append(ys)
            h, c = ys[1], ys[2]
    speech = np.array([float(ys[0].reshape(-1)[0]) for ys in reference]) > 0.5

    def task(run) -> str:
        probs = silero.stream(run, audio)
        return f"speech/silence as float on {np.mean((probs > 0.5) == speech):.3f} of {len(probs)} chunks"
    print(f"Silero VAD: {len(samples)} chunks of 32 ms")
    return {"model": "Silero VAD 16 kHz, silero-vad 6.2.3 safetensors (conv + LSTMCell)", "samples": len(samples),
            "rows": _measure(_artifacts(model, ("audio", "h", "c"), folder), samples, task, reference)}


def g2p_en(folder: Path, letters: int = 8, steps: int = 8, words: int = 200) -> dict:
    from tests.realdata import cmudict_text, g2p, g2p_model

    model = g2p_model(letters, steps)
    picked = g2p.cmudict_words(cmudict_text(), words, letters=letters, steps=steps)
    ids = g2p.encode(list(picked), letters).numpy()
    samples = [(ids[i:i + 1],) for i in range(len(ids))]
    with torch.no_grad():
        reference = [[model(torch.from_numpy(s[0])).numpy()] for s in samples]
    float_words = g2p.decode(np.concatenate([r[0] for r in reference]))

    def task(run) -> str:
        scores = np.concatenate([run([s[0]])[0] for s in samples])
        said = g2p.decode(scores)
        right = np.mean([a == b for a, b in zip(said, picked.values())])
        same = np.mean([a == b for a, b in zip(said, float_words)])
        return f"words as float {same:.3f}, right {right:.3f} (CMUdict, {len(samples)} words)"
    print(f"g2p-en: {len(samples)} CMUdict words, {letters} letter slots, {steps} decoder steps")
    return {"model": "g2p-en (Embedding + GRUCell encoder/decoder)", "samples": len(samples),
            "rows": _measure(_artifacts(model, ("letters",), folder), samples, task, reference)}


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="edgeq-bench-dynamic-") as tmp:
        results = {"machine": runner.cpu_model()[0], "threads": 1, "runs": RUNS,
                   "models": [silero_vad(Path(tmp)), g2p_en(Path(tmp))]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
