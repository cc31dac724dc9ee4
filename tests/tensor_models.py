"""Models of any tensors for the pipeline's tests (random weights: plumbing, not accuracy; the
real-weights models are in tests/realdata)."""

from __future__ import annotations

import torch
from torch import nn

VOCAB, TOKENS = 50, 6


class Tagger(nn.Module):
    """Token ids and a padding mask in; per-token tag scores and a pooled sentence vector out, as a
    dict: an embedding, a 2-layer LSTM, self-attention and a linear head."""

    def __init__(self, dim: int = 32, tags: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.lstm = nn.LSTM(dim, dim, num_layers=2, batch_first=True)
        self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.head = nn.Linear(dim, tags)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        x, _ = self.lstm(self.embed(tokens))
        x, _ = self.attn(x, x, x, key_padding_mask=~mask, need_weights=False)
        keep = mask.unsqueeze(-1).to(x.dtype)
        return {"tags": self.head(x), "pooled": (x * keep).sum(1) / keep.sum(1)}

    @staticmethod
    def example_inputs() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.arange(TOKENS).unsqueeze(0) % VOCAB, torch.ones(1, TOKENS, dtype=torch.bool)


def tagger() -> Tagger:
    torch.manual_seed(0)
    return Tagger().eval()


def tagger_data(n: int, seed: int = 0) -> dict:
    """n sentences of TOKENS token ids, the last few of some padded (mask False)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (n, TOKENS), generator=g)
    lengths = torch.randint(TOKENS // 2, TOKENS + 1, (n,), generator=g)
    mask = torch.arange(TOKENS).unsqueeze(0) < lengths.unsqueeze(1)
    return {"tokens": tokens.numpy(), "mask": mask.numpy()}


LONGEST = 16  # the Encoder's bound on its dynamic length


class Encoder(nn.Module):
    """The Tagger without recurrence, and of any length up to LONGEST tokens (its dynamic length):
    token ids and a padding mask in; an embedding with learned positions, self-attention, a
    feed-forward layer; per-token tag scores and a pooled vector out."""

    dynamic_axes = {"tokens": {1: LONGEST}, "mask": {1: LONGEST}}

    def __init__(self, dim: int = 32, tags: int = 5) -> None:
        super().__init__()
        self.embed, self.position = nn.Embedding(VOCAB, dim), nn.Embedding(LONGEST, dim)
        self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, dim))
        self.head = nn.Linear(dim, tags)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.embed(tokens) + self.position(torch.arange(tokens.shape[1]))
        x = x + self.attn(x, x, x, key_padding_mask=~mask, need_weights=False)[0]
        x = x + self.ffn(x)
        keep = mask.unsqueeze(-1).to(x.dtype)
        return {"tags": self.head(x), "pooled": (x * keep).sum(1) / keep.sum(1)}

    example_inputs = staticmethod(Tagger.example_inputs)


def encoder() -> Encoder:
    torch.manual_seed(0)
    return Encoder().eval()


FRAMES, FEATURES, ENERGY = 8, 20, 3e4


class RawFeatures(nn.Module):
    """A speech model's shape built to have one damaging layer: raw, unnormalised frame features (an
    energy column in the ten thousands beside features near 1) into a 3-layer LSTM, a score per frame
    out (no biases: the output is what the features make of it). The first layer scales energy down
    in its weights, so the float model is fine; quantizing that layer's input at run time (one scale
    for the row) rounds every small feature to zero, and only that layer sees them: layers 1 and 2
    take the LSTM's own outputs, in [-1, 1]."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.lstm = nn.LSTM(FEATURES, hidden, num_layers=3, batch_first=True)
        self.head = nn.Linear(hidden, 4)
        with torch.no_grad():
            self.lstm.weight_ih_l0[:, 1:] *= 4  # the features carry the signal
            self.lstm.weight_ih_l0[:, 0] /= ENERGY
            for name, p in self.named_parameters():
                if "bias" in name:
                    p.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(features)[0])

    @staticmethod
    def example_inputs() -> tuple[torch.Tensor]:
        return (torch.zeros(1, FRAMES, FEATURES),)


def raw_features() -> RawFeatures:
    torch.manual_seed(0)
    return RawFeatures().eval()


def raw_features_data(n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, FRAMES, FEATURES, generator=g)
    features[..., 0] = ENERGY * (1 + torch.rand(n, FRAMES, generator=g))
    return {"features": features.numpy()}


class FixedLength(Encoder):
    """An Encoder that declares a dynamic length but fixes it: its tag scores are viewed as TOKENS
    positions."""

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward(tokens, mask)
        return {"tags": out["tags"].view(len(tokens), TOKENS, -1), "pooled": out["pooled"]}


def fixed_length() -> FixedLength:
    torch.manual_seed(0)
    return FixedLength().eval()


def tagger_any_length() -> Tagger:
    """The Tagger (an nn.LSTM) declaring a dynamic length."""
    model = tagger()
    model.dynamic_axes = {"tokens": {1: LONGEST}, "mask": {1: LONGEST}}
    return model
