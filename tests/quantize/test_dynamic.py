"""Dynamic int8 (int8 weights, activations quantized at run time) in all three formats, on real
models, each artifact run by its own runtime:
- g2p-en's GRU encoder and GRUCell decoder (PyPI g2p-en), int64 letters in, judged on words of the
  CMU Pronouncing Dictionary;
- Silero VAD (PyPI silero-vad): raw audio and an LSTMCell's state in, speech probability and the
  next state out, streamed chunk by chunk over speech that espeak-ng says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeq import runner
from edgeq.export import onnx, pte, ptl
from edgeq.quantize.dynamic import int8_layers, quantize_dynamic_eager, quantize_dynamic_pt2e
from tests.realdata import cmudict_text, g2p_model, silero_model
from tests.realdata import silero
from tests.realdata.g2p import cmudict_words, decode, encode

LETTERS, STEPS = 8, 8  # words of up to 7 letters and 7 phonemes (the graph is unrolled over both: small is quick)
WORDS = 64


@pytest.fixture(scope="module")
def g2p():
    model = g2p_model(LETTERS, STEPS)
    words = cmudict_words(cmudict_text(), WORDS, letters=LETTERS, steps=STEPS)
    letters = encode(list(words), LETTERS)
    with torch.no_grad():
        scores = model(letters).numpy()
    return model, words, letters.numpy(), scores


def _words_right(scores: np.ndarray, words: dict[str, tuple[str, ...]]) -> float:
    return float(np.mean([got == want for got, want in zip(decode(scores), words.values())]))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["pte", "onnx", "ptl"])
def test_dynamic_int8_keeps_what_g2p_says(fmt, g2p, tmp_path):
    """For .pte, the program it is lowered from (the PT2E graph, run in torch): lowering this unrolled
    encoder-decoder takes two minutes here, and the silero test lowers the same dynamic linears end to
    end (python -m bench.dynamic runs the g2p .pte itself)."""
    model, words, letters, float_scores = g2p
    example = model.example_inputs()
    path = tmp_path / f"g2p_int8.{fmt}"
    float_bytes = 4 * sum(p.numel() for p in model.parameters())
    if fmt == "pte":
        graph = quantize_dynamic_pt2e(model, example, per_channel=True)
        # every gate product and the head: its input quantized at run time, its weight int8 per channel
        linears = [n for n in graph.graph.nodes if n.target == torch.ops.aten.linear.default]
        assert len(linears) == 2 * (LETTERS + STEPS) + STEPS
        for node in linears:
            assert "dequantize_per_tensor" in str(node.args[0].target), node.format_node()
            assert "dequantize_per_channel" in str(node.args[1].target), node.format_node()
        with torch.no_grad():
            scores = np.concatenate([graph(torch.from_numpy(letters[i:i + 1])).numpy() for i in range(len(letters))])
    else:
        if fmt == "onnx":
            details = onnx.export_ort_dynamic(model, example, ("letters",), path, per_channel=True)
            # 2 per GRU step (input and state products) and the head at each decoder step
            assert details["int8_ops"]["MatMulInteger"] >= 2 * (LETTERS + STEPS) + STEPS, details
            assert not details["float_weighted_nodes"], details
        else:
            quantized = quantize_dynamic_eager(model, "qnnpack", per_channel=True)
            assert sorted(int8_layers(quantized)) == ["dec_emb", "decoder", "enc_emb", "encoder", "fc"]
            ptl.export(quantized, example, path, "qnnpack")
        # int8 GRUs and embedding tables: a quarter of the float weights, and a little for the row scales.
        # A flow that left the GRUs float (onnxruntime without the rewrite) would be ~0.9.
        assert path.stat().st_size < 0.3 * float_bytes, (path.stat().st_size, float_bytes)
        scores = runner.load(fmt, str(path), engine="qnnpack", threads=1)(letters)
    assert scores.shape == float_scores.shape
    agreement = np.mean([a == b for a, b in zip(decode(scores), decode(float_scores))])
    float_right, int8_right = _words_right(float_scores, words), _words_right(scores, words)
    print(f"{fmt}: words as float {agreement:.2f}; right {int8_right:.2f} (float {float_right:.2f})")
    assert float_right >= 0.5  # the real weights, rightly ported: most words come out as CMUdict says
    # One phoneme off and the word differs, and then the decoder goes on from another phoneme: whole
    # words are a strict measure. onnxruntime quantizes activations per tensor (XNNPACK per row).
    assert agreement >= 0.85 and int8_right >= float_right - 0.05


def _dynamic_artifact(fmt: str, model: torch.nn.Module, names: tuple[str, ...], path) -> dict:
    example = model.example_inputs()
    if fmt == "pte":
        return pte.export(quantize_dynamic_pt2e(model, example, per_channel=True), example, path)
    if fmt == "onnx":
        return onnx.export_ort_dynamic(model, example, names, path, per_channel=True)
    return ptl.export(quantize_dynamic_eager(model, "qnnpack", per_channel=True), example, path, "qnnpack")


@pytest.fixture(scope="module")
def vad(tmp_path_factory):
    model = silero_model()
    audio = silero.speech("hello, this is a test of voice activity detection on a phone",
                          tmp_path_factory.mktemp("speech"))

    def run(xs):
        with torch.no_grad():
            return [t.numpy() for t in model(*[torch.from_numpy(x) for x in xs])]
    return model, audio, silero.stream(run, audio)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["pte", "onnx", "ptl"])
def test_dynamic_int8_streams_silero_vad_with_its_state(fmt, vad, tmp_path):
    model, audio, float_probs = vad
    speech = float_probs > 0.5
    silence = int(silero.RATE / silero.CHUNK)  # chunks of the leading second of silence
    assert speech[silence + 2:-silence - 2].mean() > 0.7 and not speech[:silence - 2].any()  # the weights work
    path = tmp_path / f"vad_int8.{fmt}"
    details = _dynamic_artifact(fmt, model, ("audio", "h", "c"), path)
    probs = silero.stream(runner.load_tensors(fmt, str(path), threads=1), audio)
    agree = float(np.mean((probs > 0.5) == speech))
    print(f"{fmt}: speech/silence as float on {agree:.3f} of {len(probs)} chunks, "
          f"probabilities within {np.abs(probs - float_probs).max():.3f}; {details.get('int8_ops', '')}")
    assert agree >= 0.95 and np.abs(probs - float_probs).mean() < 0.05
