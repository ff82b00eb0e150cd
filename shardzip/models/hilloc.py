"""HiLLoC (Townsend et al. 2020): a fully convolutional hierarchical ResNet VAE, coded with bits-back.

Two latent layers with top-down inference (Ladder VAE / IAF-VAE style): a deterministic bottom-up
pass gives features at 1/2 and 1/4 resolution; then

    q(z2 | x), p(z2) = N(0, 1)           at H/4 x W/4
    q(z1 | z2, x), p(z1 | z2)            at H/2 x W/2
    p(x | z1, z2): per-pixel mixtures of discretized logistics over 0..255.

Coding one image (always-warm message), layer by layer:

    encode:  z2 = pop Q2;  z1 = pop Q1;  push x | z1, z2;  push z1 | z2;  push z2 | uniform
    decode:  z2 = pop uniform;  z1 = pop P1(z2);  x = pop p(x | z1, z2);  push z1 under Q1;  push z2 under Q2

Being fully convolutional it codes any H x W: sides are replicate-padded up to multiples of 4,
the padding is coded and cropped on decode. Images are coded in tiles of at most `tile` x `tile`
(`shardzip.models.codec.tile_boxes`), so that only the first tile of a set needs initial bits.
With `norm="pixel"` no layer computes statistics over the image, so the networks trained on small
crops compute the same function on whole images and tiles (HiLLoC's point); GroupNorm (`"group"`)
would normalise over the crop and then over the tile, which generalises badly.
"""

from __future__ import annotations

import torch
from torch import nn

from shardzip.coding import Message
from shardzip.models.base import LosslessModel, mixture_log2prob, pad_to_multiple
from shardzip.models.codec import tile_boxes
from shardzip.models.latents import (
    bucket_of,
    centres,
    clean_words_for,
    gaussian_coder,
    gaussian_kl_bits,
    sample,
    standard_prior,
)
from shardzip.models.layers import Chain, ResBlock, norm_layer
from shardzip.models.mixture import MixtureHead

EVAL_SEED = 4321


def _stage(c_in: int, c_out: int, blocks: int, stride: int = 1, norm: str = "group") -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
                         *[ResBlock(c_out, norm) for _ in range(blocks)])


def _head(c_in: int, c_out: int, norm: str = "group") -> nn.Sequential:
    head = Chain(norm_layer(c_in, norm), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
    nn.init.zeros_(head[-1].weight)
    nn.init.zeros_(head[-1].bias)
    return head


class HiLLoC(LosslessModel):
    """Two-layer hierarchical ResNet VAE for images of any size; see the module docstring."""

    family = "hilloc"
    bits_back = True

    def __init__(self, channels: int = 3, data_bits: int = 8, hidden: int = 64, blocks: int = 2, z1: int = 4,
                 z2: int = 4, mixtures: int = 3, tile: int = 128, norm: str = "group") -> None:
        super().__init__(channels=channels, data_bits=data_bits, hidden=hidden, blocks=blocks, z1=z1, z2=z2,
                         mixtures=mixtures, tile=tile, norm=norm)
        self.K = 1 << data_bits
        self.head = MixtureHead(channels, mixtures, (self.K - 1) / 2, self.K / 4, 2.5)
        self.z1, self.z2, self.mixtures, self.tile = z1, z2, mixtures, tile
        h = hidden
        n = norm
        self.up1 = _stage(channels, h, blocks, stride=2, norm=n)        # x -> H/2
        self.up2 = _stage(h, h, blocks, stride=2, norm=n)               # -> H/4
        self.q2 = _head(h, 2 * z2, n)
        self.dec2 = nn.Sequential(_stage(z2, h, blocks, norm=n), nn.Upsample(scale_factor=2, mode="nearest"))
        self.q1 = _head(2 * h, 2 * z1, n)
        self.p1 = _head(h, 2 * z1, n)
        self.dec1 = _stage(h + z1, h, blocks, norm=n)
        self.out = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _stage(h, h, 1, norm=n),
                                 _head(h, channels * mixtures * 3, n))

    # ---------------------------------------------------------------- networks
    def bottom_up(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f1 = self.up1(x.float() / ((self.K - 1) / 2) - 1.0)  # 8-bit: / 127.5
        return f1, self.up2(f1)

    @staticmethod
    def _gauss(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, ls = raw.chunk(2, 1)
        return mu, ls.clamp(-8, 3)

    def top_down(self, z2: torch.Tensor) -> torch.Tensor:
        return self.dec2(z2)

    def likelihood_raw(self, g: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """The conv output that `head` reads as p(x | z1, z2)."""
        return self.out(self.dec1(torch.cat([g, z1], 1)))

    def likelihood(self, g: torch.Tensor, z1: torch.Tensor):
        return self.head.params(self.likelihood_raw(g, z1))

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return pad_to_multiple(self.check_input(x), 4)

    # ---------------------------------------------------------------- likelihoods
    def train_bits(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_multiple(x.long(), 4)
        f1, f2 = self.bottom_up(x)
        mu2, ls2 = self._gauss(self.q2(f2))
        z2 = sample(mu2, ls2)
        g = self.top_down(z2)
        mu1, ls1 = self._gauss(self.q1(torch.cat([f1, g], 1)))
        pm1, pls1 = self._gauss(self.p1(g))
        z1 = sample(mu1, ls1)
        m, s, lg = self.likelihood(g, z1)
        rec = -mixture_log2prob(x.float(), m, s, lg, self.K).flatten(1).sum(1)
        kl = gaussian_kl_bits(mu2, ls2).flatten(1).sum(1) + gaussian_kl_bits(mu1, ls1, pm1, pls1).flatten(1).sum(1)
        return rec + kl

    def nll_bits(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO of the coded (bucketed) model, one posterior sample, fixed seed; tiles as coded."""
        x = self.check_input(x)
        total = torch.zeros(x.shape[0], dtype=torch.float64)
        for r, q, h, w in tile_boxes(self, x.shape[2], x.shape[3]):
            total += self._nll_tile(x[..., r:r + h, q:q + w])
        return total

    def _nll_tile(self, x: torch.Tensor) -> torch.Tensor:
        x = self._prepare(x)
        gen = torch.Generator().manual_seed(EVAL_SEED)
        with torch.no_grad():
            f1, f2 = self.bottom_up(x)
            mu2, ls2 = self._gauss(self.q2(f2))
            k2 = bucket_of(sample(mu2, ls2, gen))
            g = self.top_down(centres(k2))
            mu1, ls1 = self._gauss(self.q1(torch.cat([f1, g], 1)))
            k1 = bucket_of(sample(mu1, ls1, gen))
            m, s, lg = self.likelihood(g, centres(k1))
            rec = -mixture_log2prob(x.double(), m.double(), s.double(), lg.double(), self.K).flatten(1).sum(1)
            q = gaussian_coder(mu2, ls2).log2_prob(k2).flatten(1).sum(1) + \
                gaussian_coder(mu1, ls1).log2_prob(k1).flatten(1).sum(1)
            p = standard_prior(tuple(k2.shape), k2.device).log2_prob(k2).flatten(1).sum(1) + \
                gaussian_coder(*self._gauss(self.p1(g))).log2_prob(k1).flatten(1).sum(1)
        return rec + q - p

    # ---------------------------------------------------------------- coding
    def encode(self, message: Message, x: torch.Tensor) -> None:
        x = self._prepare(x)
        with torch.no_grad():
            f1, f2 = self.bottom_up(x)
            k2 = message.pop(gaussian_coder(*self._gauss(self.q2(f2))))
            g = self.top_down(centres(k2))
            k1 = message.pop(gaussian_coder(*self._gauss(self.q1(torch.cat([f1, g], 1)))))
            message.push(x, self.head.coder(self.likelihood_raw(g, centres(k1)), self.K))
            message.push(k1, gaussian_coder(*self._gauss(self.p1(g))))
            message.push(k2, standard_prior(tuple(k2.shape), k2.device))

    def decode(self, message: Message, shape: tuple[int, ...]) -> torch.Tensor:
        b, c, h, w = shape
        ph, pw = -(-h // 4) * 4, -(-w // 4) * 4
        with torch.no_grad():
            k2 = message.pop(standard_prior((b, self.z2, ph // 4, pw // 4), message.device))
            g = self.top_down(centres(k2))
            k1 = message.pop(gaussian_coder(*self._gauss(self.p1(g))))
            x = message.pop(self.head.coder(self.likelihood_raw(g, centres(k1)), self.K))
            f1, f2 = self.bottom_up(x)
            message.push(k1, gaussian_coder(*self._gauss(self.q1(torch.cat([f1, g], 1)))))
            message.push(k2, gaussian_coder(*self._gauss(self.q2(f2))))
        return x[..., :h, :w]

    def initial_words(self, shape: tuple[int, ...], lanes: int) -> int:
        b, _, h, w = shape
        latents = b * (self.z2 * (h // 4 + 1) * (w // 4 + 1) + self.z1 * (h // 2 + 1) * (w // 2 + 1))
        return clean_words_for(latents * 4.0, lanes)

    def coding_lanes(self, shape: tuple[int, ...]) -> int:
        return 512


__all__ = ["HiLLoC"]
