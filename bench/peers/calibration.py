"""The model and the calibration images both edgeq and the peers use (edgeq's loaders)."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from edgeq.data import FASHION_MNIST, Preprocess, open_images
from edgeq.models import load_model


def load(source: str, weights: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    loaded = load_model(None if source == "builtin" else source, None if weights == "-" else weights)
    return loaded.module.eval(), loaded.input_shape


def preprocess_for(source: str, shape: tuple[int, ...]) -> Preprocess:
    return Preprocess.default_for(shape, grayscale_stats=source == "builtin")


def calibration_batches(source: str, shape: tuple[int, ...], samples: int) -> Iterator[np.ndarray]:
    """edgeq's calibration images: the first `samples` Fashion-MNIST training images, one at a time
    (the exported graph has batch size 1)."""
    images = open_images(FASHION_MNIST, "train")
    preprocess = preprocess_for(source, shape)
    for i in range(samples):
        yield images.batch(preprocess, [i])
