"""Retrain edgeq's built-in model from scratch and rebuild the bundled Fashion-MNIST subset.

    apt-get install dataset-fashion-mnist      # the full 70k images (MIT licence)
    python scripts/train_builtin.py            # ~5 min on 2 cores; writes edgeq/builtin/*

Deterministic for a given torch build (fixed seed, one data order); prints the test accuracy.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgeq.data import (BUNDLED_FASHION_MNIST, DEBIAN_FASHION_MNIST, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                        load_fashion_mnist_arrays)
from edgeq.models import BUILTIN_WEIGHTS, fashion_mobilenet

SUBSET = {"train": 1024, "test": 1000}  # what ships inside the package (~1.6 MB uncompressed)


def normalize(images: np.ndarray) -> torch.Tensor:
    # The same arithmetic as edgeq.data.Preprocess for 28×28 grayscale (scale, mean, std).
    x = torch.from_numpy(images.astype(np.float32) * np.float32(1 / 255)).unsqueeze(1)
    return (x - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and ±2 px shift (padding with the background value)."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = F.pad(x, (2, 2, 2, 2), value=float(x.min()))
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
    return pad[:, :, dy:dy + 28, dx:dx + 28]


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return float((pred == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--out", type=Path, default=BUILTIN_WEIGHTS)
    ap.add_argument("--subset-out", type=Path, default=BUNDLED_FASHION_MNIST)
    args = ap.parse_args()
    if not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        raise SystemExit("needs the full data set: apt-get install dataset-fashion-mnist")
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    train_images, train_labels, _ = load_fashion_mnist_arrays("train")
    test_images, test_labels, _ = load_fashion_mnist_arrays("test")
    x, y = normalize(train_images), torch.from_numpy(train_labels)
    xt, yt = normalize(test_images), torch.from_numpy(test_labels)

    model = fashion_mobilenet()
    steps = args.epochs * (len(x) // args.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=4e-5, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(len(x) // args.batch_size):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            loss = F.cross_entropy(model(augment(x[idx], gen)), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{args.epochs}  loss {loss.item():.3f}  test acc {evaluate(model, xt, yt):.4f}  "
              f"{time.time() - start:.0f}s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes), test accuracy {evaluate(model, xt, yt):.4f}")

    # The bundled subset: the first images of each split, for machines without the Debian package.
    np.savez_compressed(args.subset_out,
                        train_images=train_images[:SUBSET["train"]], train_labels=train_labels[:SUBSET["train"]],
                        test_images=test_images[:SUBSET["test"]], test_labels=test_labels[:SUBSET["test"]])
    print(f"wrote {args.subset_out} ({args.subset_out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
