"""Weights for the torchvision models. No hub weights can be downloaded here, so these are
random-init weights with BatchNorm statistics re-estimated on real images (Fashion-MNIST, resized
to 224, RGB): activations get a trained-like scale, so int8 against fp32 means something. They
are not trained: accuracy is not measured on them, top-1 agreement with the float model is."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from edgeq.data import Preprocess, fashion_mnist


def bn_calibrated(name: str, folder: Path, images: int = 160, seed: int = 0) -> Path:
    path = folder / f"{name}_bn{images}_seed{seed}.pt"
    if path.is_file():
        return path
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the batches below
            module.reset_running_stats()
    preprocess = Preprocess.default_for((1, 3, 224, 224), grayscale_stats=False)
    data = fashion_mnist("train")
    model.train()
    with torch.no_grad():
        for start in range(1000, 1000 + images, 16):
            model(torch.from_numpy(data.batch(preprocess, range(start, start + 16))))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path
