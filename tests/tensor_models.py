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
