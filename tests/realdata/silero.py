"""Silero VAD (16 kHz): voice activity for one 32 ms chunk of raw audio at a time, a streaming model
that carries its LSTM state from chunk to chunk; the real weights PyPI silero-vad 6.2.3 ships for
its tinygrad model (`silero_vad_16k.safetensors`). Test data, not edgeq code: the layers its
TorchScript file declares (an STFT as a fixed conv, four conv blocks, an LSTMCell, a 1×1 conv);
with the TorchScript file's own weights (another revision) this module gives its outputs exactly.

forward(audio, h, c): audio (N, 576) = the previous chunk's last 64 samples + 512 new ones, in
[-1, 1]; h, c (N, 128): the LSTM state (zeros at the start). Returns (speech probability (N, 1),
the next h, c). The package's own files take the state as one (2, N, 128) tensor; here each input
has its batch first, as edgeq's data files do.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

CHUNK, CONTEXT, RATE = 512, 64, 16000


class SileroVAD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("stft_basis", torch.zeros(258, 1, 256))
        self.encoder = nn.Sequential(*[nn.Sequential(nn.Conv1d(cin, cout, 3, stride=s, padding=1), nn.ReLU())
                                       for cin, cout, s in ((129, 128, 1), (128, 64, 2), (64, 64, 2), (64, 128, 1))])
        self.lstm = nn.LSTMCell(128, 128)
        self.head = nn.Conv1d(128, 1, 1)

    def forward(self, audio: torch.Tensor, h: torch.Tensor, c: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.pad(audio.unsqueeze(1), (0, 64), mode="reflect")
        spectrum = F.conv1d(x, self.stft_basis, stride=128)
        magnitude = torch.sqrt(spectrum[:, :129] ** 2 + spectrum[:, 129:] ** 2)
        features = self.encoder(magnitude).squeeze(-1)
        h, c = self.lstm(features, (h, c))
        speech = torch.sigmoid(self.head(F.relu(h).unsqueeze(-1))).squeeze(-1)
        return speech, h, c

    @staticmethod
    def example_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.zeros(1, CONTEXT + CHUNK), torch.zeros(1, 128), torch.zeros(1, 128)


def read_safetensors(path: Path, skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The float32 tensors of a .safetensors file (a JSON header, then raw little-endian data), but
    those named in `skip`."""
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    body = memoryview(data)[8 + size:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or name in skip:
            continue
        if info["dtype"] != "F32":
            raise ValueError(f"{name}: {info['dtype']}, expected F32")
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(body[start:end], dtype="<f4").reshape(info["shape"]).copy()
    return out


def load(path: Path) -> SileroVAD:
    w = read_safetensors(path)
    names = {"stft_basis": "stft_conv.weight", "lstm.weight_ih": "lstm_cell.weight_ih",
             "lstm.weight_hh": "lstm_cell.weight_hh", "lstm.bias_ih": "lstm_cell.bias_ih",
             "lstm.bias_hh": "lstm_cell.bias_hh", "head.weight": "final_conv.weight", "head.bias": "final_conv.bias"}
    for i in range(4):
        names[f"encoder.{i}.0.weight"], names[f"encoder.{i}.0.bias"] = f"conv{i + 1}.weight", f"conv{i + 1}.bias"
    model = SileroVAD()
    model.load_state_dict({k: torch.from_numpy(w[v]) for k, v in names.items()})
    return model.eval()


def chunks(audio: np.ndarray) -> np.ndarray:
    """The model's audio inputs for a 16 kHz float waveform: each 512-sample chunk after the previous
    chunk's last 64 samples (zeros before the first), (chunks, 576)."""
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), audio.astype(np.float32)])
    count = (len(audio)) // CHUNK
    return np.stack([padded[i * CHUNK:i * CHUNK + CONTEXT + CHUNK] for i in range(count)])


def stream(run, audio: np.ndarray) -> np.ndarray:  # run: [audio, h, c] → [speech, h, c], numpy
    """Speech probability of each chunk, the state carried from chunk to chunk, as an app runs it."""
    h = c = np.zeros((1, 128), np.float32)
    probs = []
    for x in chunks(audio):
        p, h, c = run([x[None], h, c])
        probs.append(float(p.reshape(-1)[0]))
    return np.array(probs)


def speech(text: str, into: Path, silence_s: float = 1.0) -> np.ndarray:
    """`text` spoken by espeak-ng (Debian), at 16 kHz, between two stretches of silence."""
    import subprocess
    import wave

    wav = into / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True, capture_output=True)
    with wave.open(str(wav)) as w:
        rate, frames = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2")
    voice = frames.astype(np.float32) / 32768
    at = np.arange(0, len(voice) / rate, 1 / RATE)
    voice = np.interp(at, np.arange(len(voice)) / rate, voice).astype(np.float32)  # to 16 kHz
    quiet = np.zeros(int(silence_s * RATE), np.float32)
    return np.concatenate([quiet, voice, quiet])


def streamed_inputs(model: nn.Module, audio: np.ndarray) -> dict[str, np.ndarray]:
    """Every chunk's inputs as the float model streams `audio`: edgeq's data file for this model (one
    array per forward parameter, samples first), each sample a chunk with the state carried into it."""
    samples: dict[str, list[np.ndarray]] = {"audio": [], "h": [], "c": []}

    def run(xs):
        for name, x in zip(samples, xs):
            samples[name].append(x[0])
        with torch.no_grad():
            return [t.numpy() for t in model(*map(torch.from_numpy, xs))]
    stream(run, audio)
    return {name: np.stack(arrays) for name, arrays in samples.items()}


if __name__ == "__main__":  # python -m tests.realdata.silero speech.npz ["what espeak-ng says"]
    import sys
    import tempfile

    from tests.realdata import silero_model

    with tempfile.TemporaryDirectory() as tmp:
        spoken = speech(sys.argv[2] if len(sys.argv) > 2 else "the quick brown fox jumps over the lazy dog", Path(tmp))
    np.savez(sys.argv[1], **streamed_inputs(silero_model(), spoken))
