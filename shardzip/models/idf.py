"""Integer discrete flows (Hoogeboom et al. 2019) with the IDF++ changes (van den Berg et al. 2021).

The flow maps integer images to integer latents through additive couplings, `b += round(t(a))`,
which are exactly invertible on integers; the latents are coded directly with rANS (no bits-back).

Structure, per level: squeeze (2x2 space-to-depth), `couplings` additive coupling layers, then a
split: half the channels are factored out and coded under a mixture of discretized logistics whose
parameters come from the remaining half (a conditional "split prior"). After the last level the
remaining channels are split `top_splits` more times the same way; what is left is coded under a
top prior that is either conditioned on pixel coordinates scaled to the image (`top_prior="coords"`,
for fixed-size data such as MNIST, where position matters) or the same at every position
(`top_prior="const"`, for models trained on crops and run on whole images of any size: a crop's
corner is not the image's corner). With `norm="pixel"` (shardzip.models.layers) every network is
size-independent too, so a model trained on crops computes the same function on whole images.

IDF++ changes adopted: each coupling permutes channels, couples, and applies the inverse
permutation (the "inverted permutation" of IDF++), residual nets with normalisation and Swish (SiLU),
and ReZero: every translation net is scaled by a learned scalar initialised at zero, so the flow
starts as the identity. Gradients pass the rounding straight through.

Images whose sides are not multiples of 2**levels are replicate-padded at the bottom/right; the
padding is coded with the image and cropped on decode (`shardzip.models.base.pad_to_multiple`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from shardzip.coding import Message
from shardzip.coding.models import MAX_ALPHABET
from shardzip.models.base import (
    LosslessModel,
    mixture_log2prob,
    pad_to_multiple,
    round_ste,
    to_symbols,
)
from shardzip.models.layers import ConvNet, coordinates
from shardzip.models.mixture import MixtureHead

MEAN_GAIN = 16.0  # split priors: means move 16 levels per unit of network output (the skip path does the bulk)


class Coupling(nn.Module):
    """Permute channels, add round(t(first part)) to the second part, permute back (IDF++)."""

    def __init__(self, channels: int, hidden: int, blocks: int, seed: int, translation_scale: float,
                 norm: str = "group", half: float = 128.0) -> None:
        super().__init__()
        self.half = half  # half the data range: inputs scaled to about [-1, 1]
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(channels, generator=gen)
        self.register_buffer("perm", perm, persistent=False)
        self.register_buffer("inv", torch.argsort(perm), persistent=False)
        self.split = channels // 2  # conditioning part: the first channels - split after permuting
        self.net = ConvNet(channels - self.split, self.split, hidden, blocks, zero_out=False, norm=norm)
        self.rezero = nn.Parameter(torch.zeros(()))  # the only zero: a zero head too would never learn
        self.translation_scale = translation_scale

    def translation(self, cond: torch.Tensor) -> torch.Tensor:
        return round_ste(self.rezero * self.translation_scale * self.net(cond / self.half - 1.0))

    def forward(self, h: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        p = h[:, self.perm]
        cond, moved = p[:, self.split:], p[:, : self.split]
        t = self.translation(cond)
        moved = moved - t if reverse else moved + t
        return torch.cat([moved, cond], 1)[:, self.inv]


class SplitPrior(nn.Module):
    """p(z | y): a mixture of discretized logistics per element of z, parameters from a conv net on y."""

    def __init__(self, c_cond: int, c_out: int, hidden: int, blocks: int, mixtures: int, offset: int,
                 norm: str = "group", half: float = 128.0) -> None:
        super().__init__()
        self.c_out, self.half = c_out, half
        self.gain = MEAN_GAIN * half / 128.0  # mean steps per unit of network output grow with the data range
        self.net = ConvNet(c_cond, c_out * mixtures * 3, hidden, blocks, norm=norm)
        # A linear path from the conditioning values, initialised so that every component's mean starts at
        # the average of the conditioning channels at the same position: a sensible predictor from step 0.
        self.skip = nn.Conv2d(c_cond, c_out * mixtures * 3, 3, padding=1)
        with torch.no_grad():
            self.skip.weight.zero_()
            self.skip.bias.zero_()
            self.skip.weight[: c_out * mixtures, :, 1, 1] = half / self.gain / c_cond  # mean rows: the average
        self.head = MixtureHead(c_out, mixtures, half + offset, self.gain, 1.5 + math.log(half / 128.0), spread=0.4)

    def raw(self, y: torch.Tensor) -> torch.Tensor:
        """The conv output that `head` reads as the mixture of each element of z."""
        y = y / self.half - 1.0
        return self.net(y) + self.skip(y)


class TopPrior(nn.Module):
    """p(z): a mixture per channel whose parameters depend on pixel coordinates only, or on nothing."""

    def __init__(self, c_out: int, hidden: int, mixtures: int, offset: int, use_coords: bool = True,
                 half: float = 128.0) -> None:
        super().__init__()
        self.c_out, self.use_coords = c_out, use_coords
        self.net = nn.Sequential(nn.Conv2d(2, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, hidden, 1), nn.SiLU(),
                                 nn.Conv2d(hidden, c_out * mixtures * 3, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.head = MixtureHead(c_out, mixtures, half - 0.5 + offset, half / 2, 3.5 + math.log(half / 128.0))

    def raw(self, b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        grid = coordinates(b, h, w, device)
        return self.net(grid if self.use_coords else torch.zeros_like(grid))


class IDF(LosslessModel):
    """Integer discrete flow with split priors; see the module docstring."""

    family = "idf"

    def __init__(self, channels: int = 1, data_bits: int = 8, levels: int = 2, couplings: int = 4,
                 hidden: int = 64, blocks: int = 2, prior_hidden: int | None = None, prior_blocks: int | None = None,
                 mixtures: int = 5, top_splits: int = 2, latent_offset: int | None = None,
                 latent_alphabet: int | None = None, translation_scale: float | None = None, seed: int = 0,
                 norm: str = "group", top_prior: str = "coords") -> None:
        if not 1 <= data_bits <= 16:
            raise ValueError("idf models code 1- to 16-bit data")
        half = float(1 << (data_bits - 1))
        # Latents leave the data range by what the couplings add: 8-bit data gets [-512, 1023] (alphabet 1536);
        # wider data gets 12 x half the range, capped by the coder's 2**16 symbols (16-bit data: no margin).
        latent_alphabet = latent_alphabet or min(MAX_ALPHABET, 12 * int(half))
        latent_offset = latent_offset if latent_offset is not None else min(
            4 * int(half), (latent_alphabet - (1 << data_bits)) // 2)
        translation_scale = translation_scale or 16.0 * half / 128.0
        super().__init__(channels=channels, data_bits=data_bits, levels=levels, couplings=couplings, hidden=hidden,
                         blocks=blocks, prior_hidden=prior_hidden, prior_blocks=prior_blocks, mixtures=mixtures,
                         top_splits=top_splits, latent_offset=latent_offset, latent_alphabet=latent_alphabet,
                         translation_scale=translation_scale, seed=seed, norm=norm, top_prior=top_prior)
        if top_prior not in ("coords", "const"):
            raise ValueError(f"top_prior must be 'coords' or 'const', got {top_prior!r}")
        ph, pb = prior_hidden or hidden, prior_blocks if prior_blocks is not None else blocks
        self.levels, self.offset, self.K = levels, latent_offset, latent_alphabet
        self.flows = nn.ModuleList()
        self.priors = nn.ModuleList()  # one per split, in the order the forward pass factors them out
        c = channels
        for level in range(levels):
            c *= 4
            self.flows.append(nn.ModuleList(
                Coupling(c, hidden, blocks, seed * 1000 + level * 100 + i, translation_scale, norm, half)
                for i in range(couplings)))
            splits = 1 if level < levels - 1 else top_splits
            for _ in range(splits):
                if c < 2:
                    break
                z = c // 2
                self.priors.append(SplitPrior(c - z, z, ph, pb, mixtures, latent_offset, norm, half))
                c -= z
        self.top = TopPrior(c, ph, mixtures, latent_offset, use_coords=top_prior == "coords", half=half)
        self.top_channels = c

    # ------------------------------------------------------------------ analysis (x -> latents)
    def _splits_at(self, level: int) -> int:
        return 1 if level < self.levels - 1 else len(self.priors) - (self.levels - 1)

    def _analyse(self, x: torch.Tensor):
        """Latents, their priors' heads and raw outputs, in the order they are factored out (= push order)."""
        h = pad_to_multiple(x, 1 << self.levels).to(torch.float32)
        parts, k = [], 0
        for level in range(self.levels):
            h = F.pixel_unshuffle(h, 2)
            for coupling in self.flows[level]:
                h = coupling(h)
            for _ in range(self._splits_at(level)):
                prior = self.priors[k]
                z, h = h[:, : prior.c_out], h[:, prior.c_out:]
                parts.append((z, prior.head, prior.raw(h)))
                k += 1
        b, _, hh, ww = h.shape
        parts.append((h, self.top.head, self.top.raw(b, hh, ww, h.device)))
        return parts

    def nll_bits(self, x: torch.Tensor) -> torch.Tensor:
        return self.train_bits(self.check_input(x)).detach().double()

    def train_bits(self, x: torch.Tensor) -> torch.Tensor:
        total = 0
        for z, head, raw in self._analyse(x):
            total = total - mixture_log2prob(z + self.offset, *head.params(raw), self.K).flatten(1).sum(1)
        return total

    # ------------------------------------------------------------------ coding
    def encode(self, message: Message, x: torch.Tensor) -> torch.Tensor:
        """Push the batch and return its bits per image under the float model of the same network pass."""
        x = self.check_input(x)
        total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        with torch.no_grad():
            for i, (z, head, raw) in enumerate(self._analyse(x)):
                symbols = to_symbols(z, self.offset, self.K, f"idf latent {i}")
                model, log2p = head.coder_scored(raw, symbols, self.K)  # the score: reported, never coded
                total = total - log2p
                message.push(symbols, model)
        return total

    def decode(self, message: Message, shape: tuple[int, ...]) -> torch.Tensor:
        b, _, height, width = shape
        m = 1 << self.levels
        ph, pw = -(-height // m) * m, -(-width // m) * m
        dev = message.device
        with torch.no_grad():
            hh, ww = ph >> self.levels, pw >> self.levels
            h = self._pop(message, self.top.head, self.top.raw(b, hh, ww, dev))
            k = len(self.priors)
            for level in reversed(range(self.levels)):
                for _ in range(self._splits_at(level)):
                    k -= 1
                    h = torch.cat([self._pop(message, self.priors[k].head, self.priors[k].raw(h)), h], 1)
                for coupling in reversed(self.flows[level]):
                    h = coupling(h, reverse=True)
                h = F.pixel_shuffle(h, 2)
        return h[..., :height, :width].round().long()

    def _pop(self, message: Message, head: MixtureHead, raw: torch.Tensor) -> torch.Tensor:
        return (message.pop(head.coder(raw, self.K)) - self.offset).to(torch.float32)

    def coding_lanes(self, shape: tuple[int, ...]) -> int:
        # Each pushed part holds >= 1/2**(levels + top_splits + 1) of the dims; keep every part >= 1 step.
        # Each lane ends with a 32-bit state: numel // 4096 lanes keep that under ~0.5 % at >= 1.5 bpd.
        b, c, h, w = shape
        smallest = b * c * h * w >> (self.levels + len(self.priors) - self.levels + 2)
        return max(1, min(2048, smallest, max(16, b * c * h * w // 4096)))
