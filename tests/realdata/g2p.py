"""g2p-en (Park & Kim): English grapheme-to-phoneme, a GRU encoder over letters and a GRUCell decoder
that feeds back its own greedy choice, with the real weights of PyPI g2p-en (`checkpoint20.npz`,
numpy arrays; the package's own code is numpy, not torch). Test data, not edgeq code.

Written for export: a fixed number of letter slots (padding 0, the encoder keeps its state over
padding, so a padded word encodes exactly as g2p-en encodes it unpadded) and a fixed number of
decoder steps; the output is every step's phoneme scores, (N, STEPS, 74).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

GRAPHEMES = ["<pad>", "<unk>", "</s>"] + list("abcdefghijklmnopqrstuvwxyz")
PHONEMES = ["<pad>", "<unk>", "<s>", "</s>"] + [
    "AA0", "AA1", "AA2", "AE0", "AE1", "AE2", "AH0", "AH1", "AH2", "AO0", "AO1", "AO2", "AW0", "AW1", "AW2",
    "AY0", "AY1", "AY2", "B", "CH", "D", "DH", "EH0", "EH1", "EH2", "ER0", "ER1", "ER2", "EY0", "EY1", "EY2",
    "F", "G", "HH", "IH0", "IH1", "IH2", "IY0", "IY1", "IY2", "JH", "K", "L", "M", "N", "NG", "OW0", "OW1",
    "OW2", "OY0", "OY1", "OY2", "P", "R", "S", "SH", "T", "TH", "UH0", "UH1", "UH2", "UW", "UW0", "UW1", "UW2",
    "V", "W", "Y", "Z", "ZH"]
LETTERS = 16  # letter slots: words of up to 15 letters, then </s>
STEPS = 16  # decoder steps (g2p-en allows 20; no CMUdict word of ≤ 15 letters needs more than 16)
END = PHONEMES.index("</s>")


class G2P(nn.Module):
    def __init__(self, letters: int = LETTERS, steps: int = STEPS) -> None:
        super().__init__()
        self.letters, self.steps = letters, steps
        self.enc_emb = nn.Embedding(len(GRAPHEMES), 256)
        self.encoder = nn.GRUCell(256, 256)
        self.dec_emb = nn.Embedding(len(PHONEMES), 256)
        self.decoder = nn.GRUCell(256, 256)
        self.fc = nn.Linear(256, len(PHONEMES))

    def forward(self, letters: torch.Tensor) -> torch.Tensor:
        x = self.enc_emb(letters)
        h = torch.zeros(letters.shape[0], 256)
        for t in range(letters.shape[1]):  # padding (0) keeps the state: the word's own last step counts
            h = torch.where(letters[:, t:t + 1] > 0, self.encoder(x[:, t], h), h)
        token = torch.full((letters.shape[0],), PHONEMES.index("<s>"), dtype=torch.long)
        scores = []
        for _ in range(self.steps):
            h = self.decoder(self.dec_emb(token), h)
            logits = self.fc(h)
            scores.append(logits)
            token = logits.argmax(-1)
        return torch.stack(scores, 1)

    def example_inputs(self) -> tuple[torch.Tensor]:
        return (encode(["example"], self.letters),)


class Encoder(nn.Module):
    """g2p-en's encoder alone: letters in, the GRU's final state (N, 256) out, what the decoder starts
    from (a model to export on its own: an embedding and a recurrent cell, int64 in)."""

    def __init__(self, g2p: G2P) -> None:
        super().__init__()
        self.letters, self.enc_emb, self.encoder = g2p.letters, g2p.enc_emb, g2p.encoder

    def forward(self, letters: torch.Tensor) -> torch.Tensor:
        x = self.enc_emb(letters)
        h = torch.zeros(letters.shape[0], 256)
        for t in range(letters.shape[1]):
            h = torch.where(letters[:, t:t + 1] > 0, self.encoder(x[:, t], h), h)
        return h

    def example_inputs(self) -> tuple[torch.Tensor]:
        return (encode(["example"], self.letters),)


def load(weights: np.lib.npyio.NpzFile, letters: int = LETTERS, steps: int = STEPS) -> G2P:
    model = G2P(letters, steps)
    state = {"enc_emb.weight": "enc_emb", "encoder.weight_ih": "enc_w_ih", "encoder.weight_hh": "enc_w_hh",
             "encoder.bias_ih": "enc_b_ih", "encoder.bias_hh": "enc_b_hh", "dec_emb.weight": "dec_emb",
             "decoder.weight_ih": "dec_w_ih", "decoder.weight_hh": "dec_w_hh", "decoder.bias_ih": "dec_b_ih",
             "decoder.bias_hh": "dec_b_hh", "fc.weight": "fc_w", "fc.bias": "fc_b"}
    model.load_state_dict({k: torch.from_numpy(weights[v]) for k, v in state.items()})
    return model.eval()


def encode(words: list[str], letters: int = LETTERS) -> torch.Tensor:
    """Letter ids, </s> after each word, padded with 0 to `letters`."""
    ids = torch.zeros(len(words), letters, dtype=torch.long)
    for i, word in enumerate(words):
        row = [GRAPHEMES.index(c) if c in GRAPHEMES else 1 for c in word] + [GRAPHEMES.index("</s>")]
        ids[i, :len(row)] = torch.tensor(row)
    return ids


def decode(scores: np.ndarray) -> list[tuple[str, ...]]:
    """Phonemes up to the first </s>, per word."""
    out = []
    for row in scores.argmax(-1):
        ends = np.flatnonzero(row == END)
        out.append(tuple(PHONEMES[i] for i in row[:ends[0] if len(ends) else len(row)]))
    return out


def cmudict_words(text: str, count: int, seed: int = 0, letters: int = LETTERS,
                  steps: int = STEPS) -> dict[str, tuple[str, ...]]:
    """`count` words of 2 to letters-1 letters a–z and at most steps-1 phonemes from cmudict.dict's text,
    with their first pronunciation."""
    entries = {}
    for line in text.splitlines():
        word, *phones = line.split("#")[0].split()
        if word.isalpha() and word.isascii() and 2 <= len(word) <= letters - 1 and word.islower() and \
                0 < len(phones) < steps:
            entries.setdefault(word, tuple(phones))
    words = sorted(entries)
    pick = np.random.default_rng(seed).choice(len(words), size=count, replace=False)
    return {words[i]: entries[words[i]] for i in sorted(pick)}
