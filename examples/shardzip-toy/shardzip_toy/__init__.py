"""ToyPixel: a row-context categorical model of 8-bit images, as a shardzip model-family plugin."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shardzip.coding import Message, categorical
from shardzip.models import LosslessModel

BUCKETS = 16  # the pixel above, in 16 buckets of 16 values; bucket BUCKETS: the first row (nothing above)


class _RowContext(LosslessModel):
    """p(x[r, c] | x[r-1, c]): a categorical per context, for each channel (the likelihood both toys share)."""

    stored_precision = "float32"

    def __init__(self, channels: int = 1, data_bits: int = 8) -> None:
        if data_bits != 8:
            raise ValueError(f"{type(self).__name__} codes 8-bit images")
        super().__init__(channels=channels, data_bits=data_bits)
        self.logits = nn.Parameter(torch.zeros(channels, BUCKETS + 1, 256))

    def train_bits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.check_input(x)
        above = torch.cat([torch.full_like(x[:, :, :1], -1), x[:, :, :-1]], 2)
        ctx = torch.where(above < 0, torch.full_like(above, BUCKETS), above // (256 // BUCKETS))
        c = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
        logp = F.log_softmax(self.logits[c, ctx], -1).gather(-1, x.unsqueeze(-1)).squeeze(-1)
        return -logp.flatten(1).sum(1) / torch.log(torch.tensor(2.0))

    def nll_bits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.train_bits(x).double()


class ToyPixelNLL(_RowContext):
    """The same likelihood with no coder: an NLL-only model, as a model whose coder is not written yet is (its
    report rows show the NLL and "coded: n/a")."""

    family = "toy-pixel-nll"


class ToyPixel(_RowContext):
    """p(x[r, c] | x[r-1, c]), coded: rows in parallel columns, each row given the decoded row above."""

    family = "toy-pixel"

    @classmethod
    def pretrained(cls) -> Path | None:
        """The weights this package ships (`train_toy.py`: the first 400 MNIST training digits), which make the
        family's name a model name: `--model toy-pixel`."""
        path = Path(__file__).with_name("toy-pixel.pt")
        return path if path.is_file() else None

    def _context(self, above: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """[B, C, W] context indices of one row, from the row above (None: the first row)."""
        if above is None:
            return torch.full_like(like, BUCKETS)
        return above // (256 // BUCKETS)

    def _row_logits(self, ctx: torch.Tensor) -> torch.Tensor:
        """[B, C, W, 256] logits of a row given its contexts."""
        c = torch.arange(ctx.shape[1], device=ctx.device).view(1, -1, 1)
        return self.logits[c, ctx]

    def _coder(self, ctx: torch.Tensor):
        return categorical(logits=self._row_logits(ctx).detach().double())

    def encode(self, message: Message, x: torch.Tensor) -> None:
        x = self.check_input(x)
        for r in range(x.shape[2] - 1, -1, -1):  # the last row first: the decoder pops the first row first
            above = x[:, :, r - 1] if r else None
            message.push(x[:, :, r], self._coder(self._context(above, x[:, :, r])))

    def decode(self, message: Message, shape: tuple[int, ...]) -> torch.Tensor:
        b, c, h, w = shape
        out = torch.zeros(shape, dtype=torch.long, device=self.logits.device)
        for r in range(h):
            above = out[:, :, r - 1] if r else None
            out[:, :, r] = message.pop(self._coder(self._context(above, out[:, :, r])))
        return out
