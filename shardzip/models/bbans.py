"""BB-ANS (Townsend et al. 2019): a VAE with one continuous latent layer, coded with bits-back.

q(z | x) and p(x | z) are small MLPs; p(z) = N(0, 1). Coding one batch (always-warm message):

    encode:  k = pop(Q(. | x));  push(x, p(x | z_k));  push(k, uniform(K))
    decode:  k = pop(uniform(K));  x = pop(p(x | z_k));  push(k, Q(. | x))

so the net cost is -log2 p(x | z) - log2 P(z) + log2 Q(z | x). The likelihood is a mixture of
discretized logistics per pixel over 0..255 with open end bins (MNIST is mostly 0 and 255).
"""

from __future__ import annotations

import torch
from torch import nn

from shardzip.coding import Message
from shardzip.models import latents as lat
from shardzip.models.base import LosslessModel, mixture_log2prob
from shardzip.models.mixture import MixtureHead

EVAL_SEED = 1234


class BBANSVAE(LosslessModel):
    """Single-latent-layer VAE for small fixed-size images (MNIST), coded with bits-back."""

    family = "bbans"
    bits_back = True

    def __init__(self, channels: int = 1, height: int = 28, width: int = 28, data_bits: int = 8, latent: int = 40,
                 hidden: int = 256, mixtures: int = 1) -> None:
        super().__init__(channels=channels, height=height, width=width, data_bits=data_bits, latent=latent,
                         hidden=hidden, mixtures=mixtures)
        self.dims = channels * height * width
        self.latent, self.mixtures = latent, mixtures
        self.K = 1 << data_bits
        self.head = MixtureHead(channels, mixtures, (self.K - 1) / 2, self.K / 4, 2.0)
        self.encoder = nn.Sequential(nn.Linear(self.dims, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, self.dims * mixtures * 3))

    def _check_shape(self, x: torch.Tensor) -> None:
        shape = (self.channels, self.hparams["height"], self.hparams["width"])
        if tuple(x.shape[1:]) != shape:
            from shardzip.errors import ModelParameterError

            raise ModelParameterError(f"bbans: this model codes images of shape {shape}, got {tuple(x.shape[1:])};"
                                      " use a fully convolutional model (idf, hilloc) for other sizes")

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(x.flatten(1).float() / 127.5 - 1.0)
        return out[:, : self.latent], out[:, self.latent:].clamp(-8, 3)

    def likelihood_raw(self, z: torch.Tensor, b: int) -> torch.Tensor:
        """The decoder's output as the conv-shaped map [B, mixtures * 3 * channels, H, W] that `head` reads."""
        return self.decoder(z).view(b, self.mixtures * 3 * self.channels, self.hparams["height"], self.hparams["width"])

    def likelihood(self, z: torch.Tensor, b: int):
        return self.head.params(self.likelihood_raw(z, b))

    def train_bits(self, x: torch.Tensor) -> torch.Tensor:
        self._check_shape(x)
        mu, ls = self.posterior(x)
        z = lat.sample(mu, ls)
        m, s, lg = self.likelihood(z, x.shape[0])
        rec = -mixture_log2prob(x.float(), m, s, lg, self.K).flatten(1).sum(1)
        return rec + lat.gaussian_kl_bits(mu, ls).sum(1)

    def nll_bits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.check_input(x)
        self._check_shape(x)
        gen = torch.Generator().manual_seed(EVAL_SEED)
        with torch.no_grad():
            mu, ls = self.posterior(x)
            k = lat.bucket_of(lat.sample(mu, ls, gen))
            m, s, lg = self.likelihood(lat.centres(k), x.shape[0])
            rec = -mixture_log2prob(x.double(), m.double(), s.double(), lg.double(), self.K).flatten(1).sum(1)
            q = lat.gaussian_coder(mu, ls).log2_prob(k).sum(1)
            prior = lat.standard_prior(tuple(k.shape), k.device).log2_prob(k).sum(1)
        return rec - prior + q

    def encode(self, message: Message, x: torch.Tensor) -> None:
        x = self.check_input(x)
        self._check_shape(x)
        with torch.no_grad():
            k = message.pop(lat.gaussian_coder(*self.posterior(x)))
            message.push(x, self.head.coder(self.likelihood_raw(lat.centres(k), x.shape[0]), self.K))
            message.push(k, lat.standard_prior(tuple(k.shape), k.device))

    def decode(self, message: Message, shape: tuple[int, ...]) -> torch.Tensor:
        b = shape[0]
        with torch.no_grad():
            k = message.pop(lat.standard_prior((b, self.latent), message.device))
            x = message.pop(self.head.coder(self.likelihood_raw(lat.centres(k), b), self.K))
            message.push(k, lat.gaussian_coder(*self.posterior(x)))
        return x

    def initial_words(self, shape: tuple[int, ...], lanes: int) -> int:
        # About 4 bits per latent for the first pops; the codec doubles this and retries if it falls short.
        return lat.clean_words_for(shape[0] * self.latent * 4.0, lanes)

    def coding_lanes(self, shape: tuple[int, ...]) -> int:
        # Four latents per lane per batch: the clean bits (62 + 32 w per lane) stay a small share.
        return max(1, min(256, shape[0] * self.latent // 4))


__all__ = ["BBANSVAE"]
