"""Network building blocks shared by the model families: fully convolutional, batch-independent.

Normalisation never uses batch statistics, so a sample's outputs do not depend on what else is
in its batch. Two kinds: `group` (GroupNorm: statistics over each sample's whole feature map, so
outputs depend on the image size — kept for the MNIST checkpoints, whose size is fixed) and
`pixel` (statistics over the channels of each pixel alone: a pixel's output depends only on its
receptive field, so a network trained on small crops computes the same function on whole images,
as HiLLoC needs). Residual branches start at zero (ReZero), so every network starts as the
identity / a constant and training is stable from the first step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shardzip.numerics import sums

NORMS = ("group", "pixel")


class PixelNorm(nn.Module):
    """LayerNorm over the channels of each pixel, with a per-channel affine map (size-independent)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor, silu: bool = False) -> torch.Tensor:
        """The norm, followed by SiLU where `silu` (one pass with it under exact numerics: `Chain`)."""
        compiled = sums.pixel_norm(x, self.weight, self.bias, self.eps, silu)  # the same bits, faster
        if compiled is not None:
            return compiled
        mean = x.mean(1, keepdim=True)
        var = (x - mean).square().mean(1, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias
        return F.silu(y) if silu else y


class Chain(nn.Sequential):
    """nn.Sequential (the same modules and state-dict keys) that runs a PixelNorm followed by a SiLU as one call
    (`PixelNorm.forward(x, silu=True)`): under exact numerics one compiled pass fewer over the activations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = list(self)
        i = 0
        while i < len(layers):
            fused = isinstance(layers[i], PixelNorm) and i + 1 < len(layers) and type(layers[i + 1]) is nn.SiLU
            x = layers[i](x, silu=True) if fused else layers[i](x)
            i += 2 if fused else 1
        return x


def norm_layer(channels: int, kind: str = "group") -> nn.Module:
    """A batch-independent normalisation of `kind` (see the module docstring)."""
    if kind == "pixel":
        return PixelNorm(channels)
    if kind != "group":
        raise ValueError(f"unknown norm {kind!r}; known: {', '.join(NORMS)}")
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """x + alpha * conv(SiLU(N(conv(SiLU(N(x)))))), alpha learned and initialised at 0 (ReZero)."""

    def __init__(self, channels: int, norm: str = "group") -> None:
        super().__init__()
        self.body = Chain(
            norm_layer(channels, norm), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            norm_layer(channels, norm), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.alpha * self.body(x)


class ConvNet(nn.Module):
    """conv3x3 -> `blocks` ResBlocks -> N, SiLU -> conv3x3 (output zero-initialised unless zero_out=False)."""

    def __init__(self, c_in: int, c_out: int, hidden: int, blocks: int, zero_out: bool = True,
                 norm: str = "group") -> None:
        super().__init__()
        self.inp = nn.Conv2d(c_in, hidden, 3, padding=1)
        self.blocks = nn.Sequential(*[ResBlock(hidden, norm) for _ in range(blocks)])
        self.out = Chain(norm_layer(hidden, norm), nn.SiLU(), nn.Conv2d(hidden, c_out, 3, padding=1))
        if zero_out:
            nn.init.zeros_(self.out[-1].weight)
            nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.inp(x)))


def coordinates(b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """[B, 2, H, W] pixel-centre coordinates scaled to [-1, 1]: the same for every image size."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))
    return grid.unsqueeze(0).expand(b, 2, h, w)
