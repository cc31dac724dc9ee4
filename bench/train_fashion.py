"""Train a torchvision network on Fashion-MNIST for the int8 bench (a real trained net with
hardswish and squeeze-excite, unlike the built-in model):

    .venv/bin/python -m bench.train_fashion [--epochs 2] [--out bench/results/...pt]

torchvision mobilenet_v3_small, 10 classes, 3×32×32 inputs preprocessed exactly as edgeq will
(Preprocess.default_for: grey → RGB, resize 37, centre crop 32, ImageNet mean/std). AdamW, cosine
schedule, batch 128, CPU. Writes the state_dict (loaded weights_only by edgeq) and prints test
accuracy.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeq.data import Preprocess, fashion_mnist

SOURCE = "torchvision:mobilenet_v3_small?num_classes=10"
SHAPE = (1, 3, 32, 32)
WEIGHTS = Path(__file__).parent / "results" / "fashion_mobilenet_v3_small.pt"


def images(split: str) -> tuple[np.ndarray, np.ndarray]:
    data = fashion_mnist(split)
    return data.batch(Preprocess.default_for(SHAPE, grayscale_stats=False), range(len(data))), data.labels


def main() -> None:
    import torchvision

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = images("train")
    xt, yt = images("test")
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    steps = args.epochs * (len(x) // 128)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(len(x) // 128):
            idx = order[i * 128:(i + 1) * 128]
            loss = nn.functional.cross_entropy(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]).long())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            pred = np.concatenate([model(torch.from_numpy(xt[i:i + 500])).argmax(1).numpy()
                                   for i in range(0, len(xt), 500)])
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, test accuracy {(pred == yt).mean():.2%}, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
