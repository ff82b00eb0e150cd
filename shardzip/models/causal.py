"""Causal per-pixel model (`causal`): every pixel coded given its full causal neighbourhood, raster by raster.

msp is coarse-to-fine: a pixel sees the coarser scales and the phases coded before it, not its whole causal
neighbourhood. This family codes band after band, and within a band in raster order: pixel (i, j) of band
b is predicted from 17 pixels of band b already coded (up to three rows above and three columns to the
left, two to the right in the row above) and from the 3 x 3 neighbourhood of every earlier band (coded in
full before band b). The neighbours are centred on the mean of the four nearest (W, N, NW, NE) and divided
by their mean absolute deviation from it (plus 2), and a small MLP per band turns them into a mixture of
discretized logistics in that local frame. The weights are few (a few thousand per band), so a model fitted
to one dataset costs little to store with it (`benchmarks/causal_probe.py` measured the idea first).

Coding follows wavefronts t = 3 i + j: every pixel of a wavefront depends only on earlier wavefronts, so a
wavefront's pixels (of every image of the batch) are one vectorized network evaluation and one push/pop.
The encoder walks the same wavefronts with the same batches as the decoder: under exact numerics (whose
grids follow each tensor's values) both evaluate identical tensors, so the CDFs match bit for bit.
Training and NLL evaluate every pixel at once (the true neighbours are known). `fit` trains from
independent pixels (`PixelSample`): each sampled pixel's network inputs are computed once, and a step draws
4096 of them at random, ~10 x more steps in the same time than crops and a better rate.

Out-of-image neighbours of band b take the value of the first of W, N, NW, NE inside the image (the middle of
the alphabet for the first pixel); earlier bands' neighbourhoods are clamped to the image. Values are
symbols of `data_bits` bits packed as the masked-model chunk method packs rasters (`codes_missing`), -1 where
a value is missing: one bit per image says whether it has any; where it does, each pixel's missing flag is
coded before its value, from the flags of its W, N, NW, NE neighbours and of the earlier bands, and missing
neighbours read as outside the image.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from shardzip.coding import Message
from shardzip.coding.models import categorical, uniform
from shardzip.models.base import LosslessModel, mixture_coder, mixture_log2prob

# (rows up, columns left) of the band's own neighbours, all coded before (i, j) in raster order; the largest
# reach to the right is two columns in the row above, so wavefronts t = 3 i + j order every dependency.
OWN = ((0, 1), (1, 0), (1, 1), (1, -1), (0, 2), (2, 0), (1, 2), (2, 1), (2, -1), (1, -2), (2, 2), (2, -2),
       (0, 3), (3, 0), (1, 3), (3, 1), (3, -1))
SLOPE = 3
PAD = 3
EARLIER = ((0, 0), (0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))
DIFFS = 4  # earlier band minus own band at the first DIFFS own neighbours
MIN_LOG_SCALE, MAX_LOG_SCALE = -4.0, 14.0
MISSING = -1  # a missing value's symbol (the masked-model packing); outside the image reads the same
_SENTINEL = MISSING


class Causal(LosslessModel):
    """Band by band, raster order: a per-band MLP on each pixel's causal neighbourhood."""

    family = "causal"
    codes_missing = True
    # a few thousand weights, stored with the data: int8 halves float16's bytes and cost 0.006 bpd on the aerial
    # scene, 0.013 on Landsat 8 (the weights of a 20-minute fit rounded, validation regions)
    stored_precision = "int8"

    def __init__(self, channels: int = 1, data_bits: int = 8, hidden: int = 16, mixtures: int = 3,
                 levels: bool = False) -> None:
        super().__init__(channels=channels, data_bits=data_bits, hidden=hidden, mixtures=mixtures, levels=levels)
        if not 1 <= data_bits <= 16:
            raise ValueError("causal models code 1- to 16-bit values")
        if channels < 1 or hidden < 1 or mixtures < 1:
            raise ValueError("causal models need channels, hidden and mixtures of at least 1")
        self.C, self.J, self.K = channels, mixtures, 1 << data_bits
        self.levels = bool(levels)
        if self.levels:  # each band's level feature is (local mean - level_mean) / level_scale (`calibrate`)
            self.register_buffer("level_mean", torch.full((channels,), float(self.K // 2)))
            self.register_buffer("level_scale", torch.full((channels,), float(max(1, self.K // 4))))
        self.nets = nn.ModuleList()
        for b in range(channels):
            n_in = self.n_inputs(b)
            head = nn.Linear(hidden, 3 * mixtures)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
            self.nets.append(nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                           head))
        # whether a pixel is missing: a logistic on the W, N, NW, NE neighbours' and the earlier bands' flags
        self.masks = nn.ModuleList(nn.Linear(4 + b, 1) for b in range(channels))
        # components start spread around the local mean (identical components would stay identical)
        self.register_buffer("spread", torch.linspace(-0.5, 0.5, mixtures) if mixtures > 1 else torch.zeros(1),
                             persistent=False)

    def n_inputs(self, b: int) -> int:
        """Network inputs of band b: its own neighbours, the earlier bands' 3 x 3 and differences, the log
        spread, and the level where the model has it."""
        return len(OWN) + b * (len(EARLIER) + DIFFS) + 1 + int(self.levels)

    def calibrate(self, tiles: list[torch.Tensor]) -> None:
        """Set each band's level normalisation from training tiles ([N, C, H, W], -1 where missing): the mean
        and standard deviation of its present values, rounded to float16 (as the model file stores them)."""
        if not self.levels:
            return
        with torch.no_grad():
            for b in range(self.C):
                v = torch.cat([t[:, b].reshape(-1) for t in tiles]).double()
                v = v[v >= 0]
                if v.numel():
                    self.level_mean[b] = float(v.mean())
                    self.level_scale[b] = max(1.0, float(v.std())) if v.numel() > 1 else 1.0
            self.level_mean.copy_(self.level_mean.half().float())
            self.level_scale.copy_(self.level_scale.half().float())

    # ------------------------------------------------------------------ features
    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C, H + PAD, W + 2 PAD] with the sentinel above, left and right."""
        b, c, h, w = x.shape
        p = torch.full((b, c, h + PAD, w + 2 * PAD), _SENTINEL, dtype=torch.long, device=x.device)
        p[:, :, PAD:, PAD:PAD + w] = x
        return p

    def _features(self, padded: torch.Tensor, near: torch.Tensor | None, b: int, rows: torch.Tensor,
                  cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Network input [B, n, F], local mean and spread [B, n] of band b's pixels (rows, cols). `padded` is
        `_padded` of the images; `near` the earlier bands edge-padded by one ([B, b, H + 2, W + 2]) or None."""
        bsz = padded.shape[0]
        n = rows.numel()
        pw = padded.shape[-1]
        own_off = torch.tensor([-dy * pw - dx for dy, dx in OWN], device=rows.device)
        at = ((rows + PAD) * pw + cols + PAD).unsqueeze(-1) + own_off  # [n, 17] into the flat padded band
        own = padded[:, b].reshape(bsz, -1)[:, at.reshape(-1)].reshape(bsz, n, len(OWN))
        inside = own != _SENTINEL
        first = torch.full_like(own[..., 0], self.K // 2)
        for k in (3, 2, 1, 0):  # the first of W, N, NW, NE inside the image
            first = torch.where(inside[..., k], own[..., k], first)
        own = torch.where(inside, own, first.unsqueeze(-1)).double()
        base = own[..., :4].mean(-1)
        spread = (own[..., :4] - base.unsqueeze(-1)).abs().mean(-1) + 2.0
        s = spread.unsqueeze(-1)
        parts = [own]
        if b:
            nw = near.shape[-1]
            offs = torch.tensor([-dy * nw - dx for dy, dx in EARLIER + OWN[:DIFFS]], device=rows.device)
            idx = ((rows + 1) * nw + cols + 1).unsqueeze(-1) + offs  # clamped by the edge padding, except
            # OWN offsets reach 2-3 pixels: clamp them to the padded plane
            idx = idx.clamp(0, near[0, 0].numel() - 1)
            got = near.reshape(bsz, b, -1)[:, :, idx.reshape(-1)].reshape(bsz, b, n, -1)
            present = got != MISSING
            got = got.double()
            centre = base.view(bsz, 1, n, 1)
            values = torch.where(present[..., :len(EARLIER)], got[..., :len(EARLIER)], centre)  # missing: no news
            diffs = torch.where(present[..., len(EARLIER):], got[..., len(EARLIER):] - own[..., :DIFFS].unsqueeze(1),
                                torch.zeros_like(centre))
            values = values.permute(0, 2, 1, 3).reshape(bsz, n, -1)
            diffs = diffs.permute(0, 2, 1, 3).reshape(bsz, n, -1)
            parts = [own, values]
        z = (torch.cat(parts, -1) - base.unsqueeze(-1)) / s
        if b:
            z = torch.cat([z, diffs / s], -1)
        parts = [z.clamp(-50.0, 50.0), torch.log(spread).unsqueeze(-1)]
        if self.levels:  # the local mean's level: noise and texture depend on the signal (shot noise, saturation)
            mean, scale = self.level_mean[b].double(), self.level_scale[b].double()
            parts.append(((base - mean) / scale).clamp(-50.0, 50.0).unsqueeze(-1))
        return torch.cat(parts, -1), base, spread

    @staticmethod
    def _near(x: torch.Tensor, b: int) -> torch.Tensor | None:
        """Bands before b, edge-padded by one pixel (their 3 x 3 neighbourhoods clamp to the image)."""
        if not b:
            return None
        return torch.nn.functional.pad(x[:, :b].double(), (1, 1, 1, 1), mode="replicate").long()

    def _mixture(self, b: int, feats: torch.Tensor, base: torch.Tensor, spread: torch.Tensor):
        """(means, log_scales, logits) [..., J] of band b's pixels, in symbol units."""
        dtype = next(self.parameters()).dtype
        out = self.nets[b](feats.to(dtype))
        J = self.J
        means = base.unsqueeze(-1).to(dtype) + spread.unsqueeze(-1).to(dtype) * (out[..., :J] + self.spread)
        log_scales = (out[..., J:2 * J] + torch.log(spread).unsqueeze(-1).to(dtype)).clamp(MIN_LOG_SCALE,
                                                                                            MAX_LOG_SCALE)
        return means, log_scales, out[..., 2 * J:]

    @staticmethod
    def _mask_flags(padded: torch.Tensor, b: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Flags [B, n, 4 + b] already coded when band b's pixels (rows, cols) are: the W, N, NW, NE neighbours
        missing (outside the image counts as present) and the earlier bands missing there."""
        w = padded.shape[-1] - 2 * PAD
        flags = []
        for dy, dx in OWN[:4]:
            r, c = rows - dy, cols - dx
            inside = (r >= 0) & (c >= 0) & (c < w)
            v = padded[:, b, r + PAD, c + PAD]
            flags.append(((v == MISSING) & inside).double())
        flags += [(padded[:, c, rows + PAD, cols + PAD] == MISSING).double() for c in range(b)]
        return torch.stack(flags, -1)

    def _mask_logits(self, padded: torch.Tensor, b: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Logit [B, n] that band b's pixels (rows, cols) are missing (a logistic on `_mask_flags`)."""
        return self._flag_logits(b, self._mask_flags(padded, b, rows, cols))

    def _flag_logits(self, b: int, flags: torch.Tensor) -> torch.Tensor:
        dtype = next(self.parameters()).dtype
        return self.masks[b](flags.to(dtype)).squeeze(-1) * 4.0

    # ------------------------------------------------------------------ interface
    def nll_bits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.train_bits(self.check_input(x)).detach().double()

    def training_sampler(self, tiles: list[torch.Tensor], generator: torch.Generator,
                         pixels: int | None = None) -> PixelSample:
        return PixelSample(self, tiles, pixels or PIXELS_PER_STEP, generator)

    def loss(self, x) -> torch.Tensor:
        if not isinstance(x, PixelBatch):
            return super().loss(x)
        total = 0.0
        for b, band in enumerate(x.bands):
            means, log_scales, logits = self._mixture(b, band.feats, band.base, band.spread)
            lp = mixture_log2prob(band.truth.clamp(min=0).to(means.dtype), means, log_scales, logits, self.K)
            total = total - (lp * band.present).sum()
            if band.flagged is not None:
                lg = self._flag_logits(b, band.flags)
                lp = torch.nn.functional.logsigmoid(torch.where(band.present, -lg, lg)) / math.log(2)
                total = total - (lp * band.flagged).sum()
        return total / (x.pixels * len(x.bands))

    def train_bits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.long()
        bsz, _, h, w = x.shape
        rows, cols = (g.reshape(-1) for g in torch.meshgrid(torch.arange(h, device=x.device),
                                                            torch.arange(w, device=x.device), indexing="ij"))
        padded = self._padded(x)
        flag = (x < 0).flatten(1).any(1)
        total = flag.double().new_ones(bsz)  # the has-missing flag: one bit per image
        for b in range(self.C):
            truth = x[:, b].reshape(bsz, -1)
            present = truth >= 0
            if bool(flag.any()):
                lg = self._mask_logits(padded, b, rows, cols)
                lp = torch.nn.functional.logsigmoid(torch.where(present, -lg, lg)) / math.log(2)
                total = total - (lp * flag.unsqueeze(-1)).sum(-1).double()
            feats, base, spread = self._features(padded, self._near(x, b), b, rows, cols)
            means, log_scales, logits = self._mixture(b, feats, base, spread)
            lp = mixture_log2prob(truth.clamp(min=0).to(means.dtype), means, log_scales, logits, self.K)
            total = total - (lp * present).sum(-1).double()
        return total

    @staticmethod
    def _wavefronts(h: int, w: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for t in range(SLOPE * (h - 1) + w):
            lo, hi = max(0, -(-(t - w + 1) // SLOPE)), min(h - 1, t // SLOPE)
            rows = torch.arange(lo, hi + 1, device=device)
            out.append((rows, t - SLOPE * rows))
        return out

    def _walk(self, shape: tuple[int, ...], x: torch.Tensor | None, take) -> torch.Tensor:
        """Visit every coded quantity in decode order; `take(kind, params, truth)` returns its symbols: "flag"
        (each image has missing values: 2 symbols, [B]), then per band and wavefront "mask" (logits of the
        pixels of flagged images) and "values" (the mixtures of the present pixels)."""
        bsz, c, h, w = shape
        device = self.spread.device
        flag = take("flag", (2, bsz), (x < 0).flatten(1).any(1).long() if x is not None else None).bool()
        out = torch.zeros((bsz, c, h, w), dtype=torch.long, device=device) if x is None else x
        padded = self._padded(out)
        fronts = self._wavefronts(h, w, device)
        any_missing = bool(flag.any())
        for b in range(c):
            near = self._near(out, b)  # bands before b are complete
            for rows, cols in fronts:
                truth = x[:, b, rows, cols] if x is not None else None
                present = torch.ones((bsz, rows.numel()), dtype=torch.bool, device=device)
                if any_missing:
                    sel = flag.unsqueeze(-1).expand_as(present)
                    lg = self._mask_logits(padded, b, rows, cols)[sel]
                    gone = take("mask", lg, (truth[sel] < 0).long() if truth is not None else None)
                    present[sel] = gone == 0
                feats, base, spread = self._features(padded, near, b, rows, cols)
                means, log_scales, logits = self._mixture(b, feats, base, spread)
                got = torch.full(present.shape, MISSING, dtype=torch.long, device=device)
                if bool(present.any()):
                    got[present] = take("values", (means[present], log_scales[present], logits[present]),
                                        truth[present] if truth is not None else None)
                if x is None:
                    out[:, b, rows, cols] = got
                    padded[:, b, rows + PAD, cols + PAD] = got
        return out

    def _coder(self, kind: str, params):
        if kind == "flag":
            return uniform(params[0], (params[1],), device=self.spread.device)
        if kind == "mask":
            lg = params.detach().double()
            return categorical(logits=torch.stack([torch.zeros_like(lg), lg], -1))
        return mixture_coder(*params, self.K)

    def encode(self, message: Message, x: torch.Tensor) -> None:
        x = self.check_input(x)
        pushes = []
        with torch.no_grad():
            def take(kind, params, truth):
                pushes.append((truth, self._coder(kind, params)))
                return truth

            self._walk(tuple(x.shape), x, take)
            for truth, model in reversed(pushes):
                message.push(truth, model)

    def decode(self, message: Message, shape: tuple[int, ...]) -> torch.Tensor:
        with torch.no_grad():
            return self._walk(tuple(shape), None, lambda kind, params, truth: message.pop(self._coder(kind, params)))

    def coding_lanes(self, shape: tuple[int, ...]) -> int:
        # every push is one wavefront (at most B x min(H, W / SLOPE) pixels): more lanes than that sit idle; each
        # lane ends with a 32-bit state, so small images get fewer
        b, _, h, w = shape
        return max(1, min(64, b * min(h, -(-w // SLOPE)), math.prod(shape) // 1024))


# ---------------------------------------------------------------------- training from pixels
TRAIN_FLOATS = 1 << 27  # feature floats a pixel sample holds at most (512 MB): its pixel count follows
# Pixels per training step. Measured on the R/G/B/NIR scene, 4 minutes on 2 cores: 4096 independent pixels per
# step reach 4.516 validation bpd (12 000 steps), 2025 reach 4.514, 32 768 (8 crops of 64 x 64) only 4.659 (1 150
# steps); crops of 8 x 64 x 64 took 20 minutes to reach 4.585.
PIXELS_PER_STEP = 4096


class _Band:
    """One band's training pixels: features, local mean and spread, value, present; the missing flags' inputs
    (and whether the pixel's image has missing values: None where no image has)."""

    def __init__(self, feats, base, spread, truth, present, flags, flagged) -> None:
        self.feats, self.base, self.spread, self.truth, self.present = feats, base, spread, truth, present
        self.flags, self.flagged = flags, flagged

    def take(self, idx: torch.Tensor) -> _Band:
        return _Band(self.feats[idx], self.base[idx], self.spread[idx], self.truth[idx].long(), self.present[idx],
                     None if self.flags is None else self.flags[idx],
                     None if self.flagged is None else self.flagged[idx])


class PixelBatch:
    """Pixels drawn at random from the training tiles, every band's at the same positions (`Causal.loss`)."""

    def __init__(self, bands: list[_Band], pixels: int) -> None:
        self.bands, self.pixels = bands, pixels


class PixelSample:
    """A causal model's training set: each pixel's network inputs computed once from whole tiles (a pixel's
    neighbourhood is the true one, as coding sees it), then `next()` draws `pixels` of them at random.

    Crops recompute every pixel's features at every step and draw neighbouring, alike pixels; drawing
    independent pixels from a table spends the step on the network instead, and sees the whole sample. At most
    `TRAIN_FLOATS` feature values are kept: a larger sample is subsampled, positions drawn with `generator`."""

    validate_every = 2000  # steps (~40 s on 2 cores): validation scores whole tiles, a step is ~20 ms

    def __init__(self, model: Causal, tiles: list[torch.Tensor], pixels: int, generator: torch.Generator) -> None:
        images = [t[i:i + 1].long() for t in tiles for i in range(t.shape[0])]
        images = [x for x in images if bool((x >= 0).any())]
        if not images:
            raise ValueError("the training tiles hold no valid values")
        sizes = torch.tensor([x.shape[-2] * x.shape[-1] for x in images])
        total = int(sizes.sum())
        per_pixel = sum(model.n_inputs(b) for b in range(model.C))
        keep = min(total, max(1, TRAIN_FLOATS // per_pixel))
        chosen = torch.randperm(total, generator=generator)[:keep].sort().values
        starts = torch.cumsum(sizes, 0) - sizes
        parts: list[list[tuple]] = [[] for _ in range(model.C)]
        with torch.no_grad():
            for x, start, size in zip(images, starts.tolist(), sizes.tolist(), strict=True):
                at = (chosen[(chosen >= start) & (chosen < start + size)] - start).to(x.device)
                if not at.numel():
                    continue
                w = x.shape[-1]
                rows, cols = at // w, at % w
                padded = model._padded(x)
                has_missing = bool((x < 0).any())
                for b in range(model.C):
                    feats, base, spread = model._features(padded, model._near(x, b), b, rows, cols)
                    truth = x[0, b, rows, cols]
                    flags = model._mask_flags(padded, b, rows, cols)[0].bool() if has_missing else None
                    parts[b].append((feats[0].float(), base[0].float(), spread[0].float(), truth.int(),
                                     truth >= 0, flags, has_missing))
        self.bands = []
        any_missing = any(p[-1] for p in parts[0])
        for b in range(model.C):
            def cat(k: int, band: list[tuple] = parts[b]) -> torch.Tensor:
                return torch.cat([p[k] for p in band])

            flags = flagged = None
            if any_missing:
                flags = torch.cat([p[5] if p[5] is not None else torch.zeros((p[0].shape[0], 4 + b), dtype=torch.bool)
                                   for p in parts[b]])
                flagged = torch.cat([torch.full((p[0].shape[0],), p[6]) for p in parts[b]])
            self.bands.append(_Band(cat(0), cat(1), cat(2), cat(3), cat(4), flags, flagged))
        self.count, self.pixels, self.generator = keep, max(1, pixels), generator

    def next(self) -> PixelBatch:
        idx = torch.randint(0, self.count, (min(self.pixels, self.count),), generator=self.generator)
        idx = idx.to(self.bands[0].feats.device)
        return PixelBatch([band.take(idx) for band in self.bands], int(idx.numel()))
