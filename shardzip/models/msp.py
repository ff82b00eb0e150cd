"""Multi-scale pixel model (`msp`) for rasters: 8- to 16-bit values, C bands, no-data masks, and
optionally a conditioning frame (the previous frame of a (T, Y, X) sequence).

Pixels are coded coarse to fine, in the interlaced order of multi-scale context models (L3C, the
"checkerboard" and quadtree orders): first the grid of every 2**levels-th pixel, then per level the
centres of the 2x2 blocks of the known grid (phase A), then the remaining edge midpoints (phase B).
Every phase is one network evaluation over the whole image, so decoding needs 2 * levels + 1
passes, not one per pixel. Each pixel is a mixture of discretized logistics around a fixed
interpolation of its known neighbours (the mean of the valid ones) plus a learned correction;
bands are coupled as in PixelCNN++: band c's means move linearly (gains predicted per pixel) with
the residuals of bands < c at the same pixel, which both sides know by then.

Missing data. Images arrive with -1 where a value is missing (no-data, no-echo, NaN). The mask is
coded first, in the same coarse-to-fine order, with a small network of its own (large no-echo
regions cost a few bits); missing pixels are then simply not coded. Padding up to a multiple of
2**levels is known to both sides and costs nothing.

Scale. Per image and band, the encoder pushes the median `m` of the valid values and an exponent
`q` (~log2 of their mean absolute deviation); the networks see (x - m) / 2**q, and the mixtures are
scaled back, so one model serves data of very different ranges (reflectivity in 0.01 dBZ steps,
correlation coefficients in 1/65536 steps, 8-bit Landsat bands).

Sequences (`cond_channels=1`): frame t is coded given the decoded frame t-1 of the same batch
(frame 0 given nothing), so a batch [T, C, H, W] is a sequence and is coded frame by frame.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from shardzip.coding import Message, categorical, uniform
from shardzip.models.base import LN2, MIN_LOG_SCALE, PARAM_GAIN, LosslessModel, mixture_coder, mixture_log2prob
from shardzip.models.layers import ConvNet
from shardzip.models.msp_adapt import MAX_LOG_SCALE_SYMBOLS, Adaptation
from shardzip.models.msp_pyramid import MISSING, Pyramid
from shardzip.numerics.dispatch import suspended


class MSP(Pyramid, Adaptation, LosslessModel):
    """Coarse-to-fine raster model with masks, band coupling and an optional conditioning frame."""

    family = "msp"
    codes_missing = True

    def __init__(self, channels: int = 1, data_bits: int = 16, levels: int = 4, hidden: int = 32, blocks: int = 1,
                 mixtures: int = 3, mask_hidden: int = 16, cond_channels: int = 0, norm: str = "pixel",
                 adapt: int = 0) -> None:
        extra = {"adapt": adapt} if adapt else {}  # models without it keep their hyper-parameters (and bytes)
        super().__init__(channels=channels, data_bits=data_bits, levels=levels, hidden=hidden, blocks=blocks,
                         mixtures=mixtures, mask_hidden=mask_hidden, cond_channels=cond_channels, norm=norm, **extra)
        if adapt not in (0, 1, 2):
            raise ValueError("adapt is 0, 1 (a coded scale offset per phase and band) or 2 (and output parameters "
                             "tuned per coded batch)")
        if adapt == 2 and cond_channels:
            raise ValueError("adapt=2 is for models without a conditioning frame")
        if not 1 <= data_bits <= 16:
            raise ValueError("msp models code 1- to 16-bit values")
        if cond_channels not in (0, channels):
            raise ValueError("cond_channels must be 0 or the model's channel count (the previous frame)")
        C, J = channels, mixtures
        self.C, self.J, self.L, self.K = C, J, levels, 1 << data_bits
        self.n_coef = C * (C - 1) // 2
        self.per_target = C * J * 3 + self.n_coef
        cond_in = 8 * cond_channels + (1 if cond_channels else 0)  # 4 phases x (values, valid) + "has frame"
        level_in = 1
        self.net_a = ConvNet(2 * C + C + cond_in + level_in, self.per_target, hidden, blocks, norm=norm)
        self.net_b = ConvNet(4 * C + 2 * C + cond_in + level_in, 2 * self.per_target, hidden, blocks, norm=norm)
        self.top = nn.Parameter(torch.zeros(self.per_target))
        mask_in = 2 * C + 2 * C  # known valid + inside flags (phase A: 1 phase; padded to the phase B width)
        self.mask_a = ConvNet(mask_in + cond_in + level_in, C, mask_hidden, 1, norm=norm)
        self.mask_b = ConvNet(mask_in + cond_in + level_in, 2 * C, mask_hidden, 1, norm=norm)
        self.mask_top = nn.Parameter(torch.zeros(C))

    # ------------------------------------------------------------------ shapes and side information
    def _padded(self, h: int, w: int) -> tuple[int, int]:
        m = 1 << self.L
        return -(-h // m) * m, -(-w // m) * m

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per image: has-missing flag [B]; per image and band: median m and scale exponent q [B, C]."""
        b, c = x.shape[:2]
        flat = x.reshape(b, c, -1)
        valid = flat >= 0
        flag = (~valid).flatten(1).any(1).long()
        big = torch.where(valid, flat, torch.full_like(flat, 1 << 20))
        n = valid.sum(-1)
        srt = big.sort(-1).values
        med = srt.gather(-1, ((n - 1).clamp(min=0) // 2).unsqueeze(-1)).squeeze(-1)
        med = torch.where(n > 0, med, torch.zeros_like(med))
        dev = ((flat - med.unsqueeze(-1)).abs() * valid).sum(-1).double() / n.clamp(min=1)
        q = torch.log2(dev + 1.0).round().long().clamp(0, self.data_bits)
        return flag, med, q

    # ------------------------------------------------------------------ the walk shared by all uses
    def _mask_step(self, take, inside: torch.Tensor, logits: torch.Tensor, need: torch.Tensor,
                   truth: torch.Tensor | None) -> torch.Tensor:
        """Valid flags of the target grid: coded where the image has missing values, else all inside."""
        sel = inside & need.expand_as(inside)
        ok = inside.clone()
        if bool(sel.any()):
            bits = take("mask", logits[sel], sel, truth[sel].long() if truth is not None else None)
            ok[sel] = bits.bool()
        return ok

    def _split(self, raw: torch.Tensor, pred: torch.Tensor, groups: int):
        """Raw net output [B, groups * per_target, h, w] -> (means, log_scales, logits) [B, G*C, h, w, J] and
        coupling coefficients [B, G, n_coef, h, w] (normalised units)."""
        b, _, h, w = raw.shape
        C, J = self.C, self.J
        r = raw.view(b, groups, self.per_target, h, w)
        mix = r[:, :, : C * J * 3].reshape(b, groups, 3, J, C, h, w).permute(0, 2, 1, 4, 5, 6, 3)
        mix = mix.reshape(b, 3, groups * C, h, w, J)
        spread = torch.linspace(-0.5, 0.5, J, device=raw.device) if J > 1 else torch.zeros(1, device=raw.device)
        means = pred.unsqueeze(-1) + mix[:, 0] + spread * 0.1
        log_scales = PARAM_GAIN * mix[:, 1] - 2.0
        logits = PARAM_GAIN * mix[:, 2]
        coef = r[:, :, C * J * 3:]  # unbounded: a band can track an earlier one with gain > 1
        return means, log_scales, logits, coef

    def _value_step(self, take, raw, pred, ok, shift, scale, truth, groups: int = 1, choose: bool = True
                    ) -> torch.Tensor:
        """Code the valid values of one phase band by band (bands < c shift band c's means)."""
        means, log_scales, logits, coef = self._split(raw, pred, groups)
        adapt = bool(self.hparams.get("adapt"))
        C = self.C
        out = torch.full(ok.shape, MISSING, dtype=torch.long, device=ok.device)
        resid = []  # per band of each group: (value - pred) in normalised units, 0 where missing
        for c in range(C):
            idx = [gi * C + c for gi in range(groups)]
            m = means[:, idx]
            for c2 in range(c):
                m = m + (coef[:, :, c * (c - 1) // 2 + c2] * resid[c2]).unsqueeze(-1)
            sc, sh = scale[:, idx], shift[:, idx]
            m_sym = sh.unsqueeze(-1) + m / sc.unsqueeze(-1)
            sel = ok[:, idx]
            ls_sym = log_scales[:, idx] - torch.log(sc).unsqueeze(-1)
            if adapt and bool(sel.any()):
                t = truth[:, idx] if truth is not None else None
                ls_sym = ls_sym + self._offset(take, m_sym, ls_sym, logits[:, idx], sel, t, choose)
            ls_sym = ls_sym.clamp(MIN_LOG_SCALE, MAX_LOG_SCALE_SYMBOLS)
            band = torch.full(sel.shape, MISSING, dtype=torch.long, device=ok.device)
            if bool(sel.any()):
                band[sel] = take("values", (m_sym[sel], ls_sym[sel], logits[:, idx][sel]), sel,
                                 truth[:, idx][sel] if truth is not None else None)
            out[:, idx] = band
            resid.append(((band.float() - sh) * sc - pred[:, idx]) * sel)
        return out

    # ------------------------------------------------------------------ the public interface
    def _conditional(self) -> bool:
        return bool(self.hparams["cond_channels"])

    @property
    def sequence(self) -> bool:
        return self._conditional()

    @staticmethod
    def _previous(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each frame's previous frame and whether it has one (frame 0 has none)."""
        prev = torch.cat([torch.full_like(x[:1], MISSING), x[:-1]])
        has = torch.arange(x.shape[0], device=x.device) > 0
        return prev, has

    def nll_bits(self, x: torch.Tensor) -> torch.Tensor:
        """The bits the coder spends: with adapt=2 those of the tuned model plus its coded changes, spread over
        the batch's images."""
        x = self.check_input(x)
        if self.hparams.get("adapt") != 2:
            return self._bits(x, choose=True).detach().double()
        q, bits = self._tuned(x)
        return bits.double() + self._change_bits(q) / x.shape[0]

    def train_bits(self, x: torch.Tensor) -> torch.Tensor:
        return self._bits(x, choose=False)

    def _bits(self, x: torch.Tensor, choose: bool) -> torch.Tensor:
        """Bits per image; for a conditional model the batch is a sequence and every frame is scored
        given the true previous frame, all frames in one pass (the coder goes frame by frame). Training
        (`choose=False`) keeps an adapting model's offsets at 0."""
        x = x.long()
        total = [torch.zeros(x.shape[0], device=x.device)]

        def take(kind, params, sel, truth):
            self._score(total, kind, params, sel, truth)
            return truth

        cond = self._previous(x) if self._conditional() else None
        self._walk(tuple(x.shape), x, take, cond, self._stats(x), choose)
        return total[0]

    def _score(self, total: list, kind: str, params, sel: torch.Tensor, truth: torch.Tensor) -> None:
        """Add -log2 p of `truth` at the positions `sel` under `params` to total[0] (bits per image)."""
        if kind == "uniform":
            total[0] = total[0] + math.log2(params) * (truth.numel() // truth.shape[0])
            return
        if kind == "choice":  # one symbol for the whole batch: its bits spread over the images
            total[0] = total[0] + math.log2(params) / total[0].shape[0]
            return
        if kind == "mask":
            lp = F.logsigmoid(torch.where(truth.bool(), params, -params)) / LN2
        else:
            lp = mixture_log2prob(truth.float(), *params, self.K)
        per = torch.zeros(sel.shape, device=truth.device, dtype=lp.dtype)
        per[sel] = -lp
        total[0] = total[0] + per.flatten(1).sum(1)

    def encode(self, message: Message, x: torch.Tensor) -> torch.Tensor:
        """Push the batch and return its bits per image under the float model of the same network pass."""
        x = self.check_input(x)
        # A conditional model codes frame by frame (the decoder needs frame t-1 before frame t), with the
        # same [1, C, H, W] shapes the decoder will use; the last frame is pushed first.
        units = ([(x[i:i + 1], (x[i - 1:i], torch.ones(1, dtype=torch.bool, device=x.device)) if i else None)
                  for i in range(x.shape[0])] if self._conditional() else [(x, None)])
        bits = []
        q = self._tuned(x)[0] if self.hparams.get("adapt") == 2 else None
        model = self._with_changes(q)
        with torch.no_grad():
            for xs, cond in reversed(units):
                pushes, total = [], [torch.zeros(xs.shape[0], device=x.device)]

                def take(kind, params, sel, truth, pushes=pushes, total=total):
                    with suspended():  # a reported figure: plain floats are enough and cheaper
                        model._score(total, kind, params, sel, truth)
                    pushes.append((truth, model._coder(kind, params, tuple(truth.shape))))
                    return truth

                model._walk(tuple(xs.shape), xs, take, cond, model._stats(xs))
                for symbols, coder in reversed(pushes):
                    message.push(symbols, coder)
                bits.append(total[0])
        if self.hparams.get("adapt") == 2:
            self._push_changes(message, q)
            bits[0] = bits[0] + self._change_bits(q) / x.shape[0]
        return torch.cat(bits[::-1]).double()

    def decode(self, message: Message, shape: tuple[int, ...]) -> torch.Tensor:
        b = shape[0]
        with torch.no_grad():
            def take(kind, params, sel, truth):
                shp = sel if kind in ("uniform", "choice") else (int(sel.sum()),)
                return message.pop(self._coder(kind, params, shp)).reshape(shp)

            if not self._conditional():
                model = self._with_changes(self._pop_changes(message)) if self.hparams.get("adapt") == 2 else self
                return model._walk(tuple(shape), None, take, None, None)
            frames = []
            for _ in range(b):
                cond = (frames[-1], torch.ones(1, dtype=torch.bool, device=self.top.device)) if frames else None
                frames.append(self._walk((1,) + tuple(shape[1:]), None, take, cond, None))
            return torch.cat(frames)

    def _coder(self, kind, params, shape):
        if kind in ("uniform", "choice"):
            return uniform(params, tuple(shape), device=self.top.device)
        if kind == "mask":
            lg = params.detach().double()
            return categorical(logits=torch.stack([torch.zeros_like(lg), lg], -1))
        m, ls, lg = params
        return mixture_coder(m, ls, lg, self.K)

    def coding_lanes(self, shape: tuple[int, ...]) -> int:
        # Decoding steps through each push lanes symbols at a time, so lanes set the decoder's speed; each
        # lane ends with one 32-bit state, so numel // 2048 lanes cost < 0.4 % at >= 4 bpd. Pushes smaller
        # than the lane count (the coarse grid, sparse valid pixels) just fill part of a row.
        return max(16, min(1024, math.prod(shape) // 2048))
