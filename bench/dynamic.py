"""Dynamic, static and hybrid int8 on real sequence models: edgeq's flows per format against the plain
dynamic flow a user would write from each library's docs, and fp32: size, host latency (1 thread, batch 1), the outputs'
SQNR and per-sample cosine against the float model, the task's own figure, and arm64 instructions
per inference (QEMU, cortex-a76: independent of load; QEMU's time is not a phone's).

    .venv/bin/python -m bench.dynamic                  # ~40 min on the 2-core host; results/dynamic.json
    .venv/bin/python -m bench.dynamic minilm --no-count   # some models, host figures only (counts kept)
    .venv/bin/python -m bench.dynamic --table             # the saved results as Markdown tables

Models (real weights, fetched by tests/realdata): Silero VAD (convolutions + LSTMCell, raw audio
and state in) streamed over espeak-ng speech; g2p-en (GRU encoder, GRUCell decoder, int64 letters
in) on CMUdict words; all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder, token ids and a mask in)
on sentences of the Python manual. Plain flows:
- .pte: PT2E XNNPACKQuantizer(is_dynamic=True, per-channel) on the model as it is, lowered to XNNPACK.
- .onnx: onnxruntime quantize_dynamic on the float .onnx with its defaults (no quant_pre_process).
- .ptl: torch.ao quantize_dynamic on the model's Linear/LSTM/GRU/cell types with torch's default
  engine on this host (x86), traced and saved for the lite interpreter (x86 packed weights: it
  does not load on arm64, so it has no instruction count).
edgeq static (edgeq.quantize.static_tensors) calibrates on other inputs than those measured: another
utterance, other words, other sentences. Its hybrid keeps dynamic what the texts say needs it: the
recurrent layers (Silero, g2p) and the Transformer's feed-forward layers, whose activations carry the
outliers that per-tensor static ranges clip (MiniLM).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeq import runner
from edgeq.config import QuantRecipe
from edgeq.export import onnx as onnx_export, pte, ptl
from edgeq.quantize import static_tensors
from edgeq.quantize.dynamic import PTL_DYNAMIC, quantize_dynamic_eager, quantize_dynamic_pt2e
from edgeq.quantize.recurrent import as_linear
from edgeq.validate import cosines, sqnr_db

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


def _artifacts(model: nn.Module, names: tuple[str, ...], folder: Path, calibration: tuple[np.ndarray, ...],
               hybrid: tuple[str, ...]) -> dict[str, tuple[str, Path, str]]:
    """{label: (format, path, quantized engine)}: fp32, edgeq dynamic, static and hybrid (`hybrid`
    layers dynamic), and the plain dynamic flow per format."""
    example = model.example_inputs()
    static = QuantRecipe(backend="qnnpack")
    mixed = QuantRecipe(backend="qnnpack", dynamic_layers=hybrid)

    def batches():
        return (tuple(x[i:i + static.calib_batch] for x in calibration)
                for i in range(0, len(calibration[0]), static.calib_batch))
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
    linear = as_linear(model.eval(), recurrent=True, attention=True)[0]
    for kind, recipe in (("static", static), ("hybrid", mixed)):
        make(f"edgeq {kind} .pte", "pte", lambda p, r=recipe: pte.export(
            static_tensors.quantize_pt2e(model, example, r, batches), example, p))
        make(f"edgeq {kind} .onnx", "onnx", lambda p, r=recipe: onnx_export.export_ort_quantized(
            linear, example, p, calibration, r, names))
        make(f"edgeq {kind} .ptl", "ptl", lambda p, r=recipe: ptl.export(
            static_tensors.quantize_eager(model, r, batches), example, p, "qnnpack"))
    return made


def _figures(want: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> tuple[float, float, float]:
    """SQNR (dB) over every output of every sample, and the mean and minimum over samples of each
    sample's cosine (its outputs as one vector)."""
    w = np.stack([np.concatenate([a.reshape(-1) for a in ys]) for ys in want])
    g = np.stack([np.concatenate([a.reshape(-1) for a in ys]) for ys in got])
    sqnr = sqnr_db(w, g)
    cos = cosines(w, g)
    return float("inf") if sqnr is None else sqnr, float(cos.mean()), float(cos.min())


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
        sqnr, cos_mean, cos_min = _figures(reference, outputs)
        rows.append({"artifact": label, "bytes": path.stat().st_size, "host_ms": statistics.median(times),
                     "sqnr_db": round(sqnr, 2), "cosine_mean": round(cos_mean, 5), "cosine_min": round(cos_min, 5),
                     "task": run_task(run), "path": path, "engine": engine, "count_inputs": list(samples[0])})
        print(f"  {label:22s} {path.stat().st_size / 1e6:6.2f} MB  {rows[-1]['host_ms']:7.2f} ms  "
              f"{sqnr:6.1f} dB  cos {cos_mean:.4f}/{cos_min:.4f}  {rows[-1]['task']}", flush=True)
    return rows


def silero_vad(folder: Path) -> dict:
    from tests.realdata import silero, silero_model

    model = silero_model()
    other = silero.streamed_inputs(model, silero.speech("the quick brown fox jumps over the lazy dog", folder))
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
            "rows": _measure(_artifacts(model, ("audio", "h", "c"), folder, (other["audio"], other["h"], other["c"]),
                                        ("lstm",)), samples, task, reference)}


def g2p_en(folder: Path, letters: int = 8, steps: int = 8, words: int = 200) -> dict:
    from tests.realdata import cmudict_text, g2p, g2p_model

    model = g2p_model(letters, steps)
    picked = g2p.cmudict_words(cmudict_text(), words, letters=letters, steps=steps)
    ids = g2p.encode(list(picked), letters).numpy()
    other = [w for w in g2p.cmudict_words(cmudict_text(), words, seed=1, letters=letters, steps=steps) if w not in picked]
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
            "rows": _measure(_artifacts(model, ("letters",), folder, (g2p.encode(other, letters).numpy(),),
                                        ("encoder", "decoder")), samples, task, reference)}


def minilm(folder: Path, sentences: int = 100) -> dict:
    from tests.realdata import minilm as sentence_encoder, minilm_parts

    model, tokenizer = minilm_parts()
    measured = sentence_encoder.sentences(sentences, tokenizer)
    data = sentence_encoder.inputs(measured, tokenizer)
    other = sentence_encoder.inputs([s for s in sentence_encoder.sentences(2 * sentences, tokenizer)
                                     if s not in measured], tokenizer)
    samples = [(data["tokens"][i:i + 1], data["mask"][i:i + 1]) for i in range(sentences)]
    with torch.no_grad():
        reference = [[model(*map(torch.from_numpy, s)).numpy()] for s in samples]
    nearest_float = _nearest(np.concatenate([r[0] for r in reference]))

    def task(run) -> str:
        nearest = _nearest(np.concatenate([run(list(s))[0] for s in samples]))
        return f"nearest other sentence as float for {np.mean(nearest == nearest_float):.3f} of {sentences}"
    print(f"all-MiniLM-L6-v2: {sentences} sentences, {sentence_encoder.TOKENS} token slots")
    return {"model": "all-MiniLM-L6-v2 sentence encoder (6-layer BERT, 22.7 M weights, half of them the vocabulary)",
            "samples": sentences,
            "rows": _measure(_artifacts(model, ("tokens", "mask"), folder, (other["tokens"], other["mask"]), tuple(
                f"layers.{k}.{ffn}" for k in range(len(model.layers)) for ffn in ("intermediate", "output"))),
                samples, task, reference)}


def _nearest(embeddings: np.ndarray) -> np.ndarray:
    similarity = embeddings @ embeddings.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(1)


def count_instructions(models: list[dict]) -> None:
    """Each row's arm64 instructions per inference (one sample), two QEMU processes at a time."""
    from bench.xnnpack_coverage import CPU, instructions

    rows = [r for m in models for r in m["rows"] if r["engine"] == "qnnpack"]

    def count(row: dict) -> int | None:
        try:
            return instructions(row["path"], row["count_inputs"], row["path"].parent, counted_runs=3)
        except Exception as e:  # noqa: BLE001 - a runtime that cannot run it there is a result too
            print(f"  {row['artifact']}: not counted ({type(e).__name__}: {str(e).splitlines()[-1][:200]})")
            return None
    with ThreadPoolExecutor(2) as pool:  # counts do not depend on load: both cores
        for row, n in zip(rows, pool.map(count, rows)):
            row[f"instructions_{CPU}"] = n
            print(f"  {row['artifact']:22s} {n / 1e6 if n else float('nan'):9.1f} M instructions", flush=True)


def main(names: list[str], count: bool) -> None:
    torch.manual_seed(0)
    chosen = names or list(MODELS)
    with tempfile.TemporaryDirectory(prefix="edgeq-bench-dynamic-") as tmp:
        models = []
        for name in chosen:  # a folder each: the artifacts' names are the same for every model
            (Path(tmp) / name).mkdir()
            models.append(MODELS[name](Path(tmp) / name))
        if count:
            count_instructions(models)
        for m in models:
            for r in m["rows"]:
                for key in ("path", "engine", "count_inputs"):
                    r.pop(key)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"models": []}
    if not count:  # instruction counts do not depend on load: keep the last run's for the same artifacts
        from bench.xnnpack_coverage import CPU

        key = f"instructions_{CPU}"
        counted = {(m["model"], r["artifact"]): r[key] for m in previous["models"] for r in m["rows"] if key in r}
        for m in models:
            for r in m["rows"]:
                if (m["model"], r["artifact"]) in counted:
                    r[key] = counted[m["model"], r["artifact"]]
    fresh = {m["model"]: m for m in models}  # in place of the last run's, in its order
    merged = [fresh.pop(m["model"], m) for m in previous["models"]] + list(fresh.values())
    results = {"machine": runner.cpu_model()[0], "threads": 1, "runs": RUNS, "models": merged}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {RESULTS}")


def tables(results: dict) -> str:
    """Markdown: a table per model, sizes against its fp32 file of the same format."""
    from bench.xnnpack_coverage import CPU

    out = []
    for m in results["models"]:
        fp32 = {r["artifact"].split()[-1]: r for r in m["rows"] if r["artifact"].startswith("fp32")}
        out += [f"**{m['model']}**, {m['samples']} inputs", "",
                f"| artifact | size (÷ fp32) | host ms | {CPU} instructions | SQNR dB | cosine mean / min | task |",
                "|---|---|---:|---:|---:|---|---|"]
        for r in m["rows"]:
            base = fp32.get(r["artifact"].split()[-1])
            ratio = f" ({r['bytes'] / base['bytes']:.2f})" if base else ""
            count = r.get(f"instructions_{CPU}")
            sqnr = "exact" if r["sqnr_db"] > 100 else f"{r['sqnr_db']:.1f}"
            out.append(f"| {r['artifact']} | {r['bytes'] / 1e6:.2f} MB{ratio} | {r['host_ms']:.2f} | "
                       f"{f'{count / 1e6:.2f} M' if count else '–'} | {sqnr} | "
                       f"{r['cosine_mean']:.4f} / {r['cosine_min']:.4f} | {r['task']} |")
        out.append("")
    return "\n".join(out)


MODELS = {"silero": silero_vad, "g2p": g2p_en, "minilm": minilm}

if __name__ == "__main__":
    import sys

    if "--table" in sys.argv:  # the saved results as Markdown
        print(tables(json.loads(RESULTS.read_text())))
    else:
        main([a for a in sys.argv[1:] if not a.startswith("-")], count="--no-count" not in sys.argv)
        print(tables(json.loads(RESULTS.read_text())))
