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

import copy
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from shardzip.coding import Message, categorical, uniform
from shardzip.models.base import LN2, MIN_LOG_SCALE, PARAM_GAIN, LosslessModel, mixture_coder, mixture_log2prob
from shardzip.models.layers import ConvNet
from shardzip.numerics.dispatch import suspended

MISSING = -1
MAX_LOG_SCALE_SYMBOLS = 12.0
# adapt=1: per coded batch, phase and band the encoder picks the offset added to every log-scale that codes the phase
# in the fewest bits and codes its index (3 bits): the model's confidence fitted to each image, as the context
# mixing coders adapt online. Offset 0 (index 3) is the unadapted model, which training uses.
ADAPT_OFFSETS = (-0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4)
UNADAPTED = ADAPT_OFFSETS.index(0.0)
# adapt=2 also tunes, per coded batch (a chunk), the parameters that set the networks' output distributions (the
# top grid's, the output norms' affine maps and the output biases: 448 values for RGB photographs) by a few
# gradient steps on the batch itself, and codes their change on a grid of ADAPT_STEP (a Laplace over
# +-ADAPT_RANGE steps) ahead of the pixels, behind a flag that says whether it pays for itself. The decoder adds
# the same integers: the tuning is the encoder's float business, the code decodes exactly anywhere.
ADAPTED = ("top", "net_a.out.0.weight", "net_a.out.0.bias", "net_a.out.2.bias", "net_b.out.0.weight",
           "net_b.out.0.bias", "net_b.out.2.bias")
ADAPT_STEP = 1 / 64
ADAPT_RANGE = 31
ADAPT_SPREAD = 4.0  # steps: the Laplace the changes are coded with
ADAPT_FIT_STEPS = 12
ADAPT_LR = 0.005  # larger steps overshoot at first: the output norms move every hidden channel

def _masked_mean(values: list[torch.Tensor], valid: list[torch.Tensor], kernels: list[torch.Tensor]) -> torch.Tensor:
    """sum_k conv(values_k * valid_k) / sum_k conv(valid_k): per-channel interpolation of the valid neighbours."""
    num = den = 0
    c = values[0].shape[1]
    for (v, ok), k in zip(zip(values, valid, strict=True), kernels, strict=True):
        w = k.to(v).expand(c, 1, 3, 3)
        num = num + F.conv2d(v * ok, w, padding=1, groups=c)
        den = den + F.conv2d(ok, w, padding=1, groups=c)
    return torch.where(den > 0, num / den.clamp(min=1e-6), torch.zeros_like(num))


def _k(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# Interpolation kernels over the known neighbours (zero padding; divided by the valid count).
# Phase A: the block centre P11 at (2i+1, 2j+1) sees P00 (i, j), (i, j+1), (i+1, j), (i+1, j+1).
_DIAG = _k([[0, 0, 0], [0, 1, 1], [0, 1, 1]])
# Phase B targets: P01 at (2i, 2j+1) sees P00 (i, j), (i, j+1) and P11 (i-1, j), (i, j);
# P10 at (2i+1, 2j) sees P00 (i, j), (i+1, j) and P11 (i, j-1), (i, j). (conv2d is a correlation.)
_B01_FROM_00 = _k([[0, 0, 0], [0, 1, 1], [0, 0, 0]])
_B01_FROM_11 = _k([[0, 1, 0], [0, 1, 0], [0, 0, 0]])
_B10_FROM_00 = _k([[0, 0, 0], [0, 1, 0], [0, 1, 0]])
_B10_FROM_11 = _k([[0, 0, 0], [1, 1, 0], [0, 0, 0]])


class MSP(LosslessModel):
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
    def _walk(self, shape: tuple[int, ...], x: torch.Tensor | None, take, cond: tuple | None,
              side: tuple | None, choose: bool = True) -> torch.Tensor:
        """Visit every coded quantity in decode order. `take(kind, params, sel, truth)` returns the symbols
        at the selected positions (the truth when encoding or scoring; popped when decoding). `choose=False`
        keeps an adapting model's offsets at 0 (training)."""
        step = functools.partial(self._value_step, choose=choose)
        b, C, h, w = shape
        dev = self.top.device
        ph, pw = self._padded(h, w)
        inside = torch.zeros((b, C, ph, pw), dtype=torch.bool, device=dev)
        inside[..., :h, :w] = True
        xp = None
        if x is not None:
            xp = torch.full((b, C, ph, pw), MISSING, dtype=torch.long, device=dev)
            xp[..., :h, :w] = x
        # side information: has-missing flags, medians, scale exponents
        flag, med, q = side if side is not None else (None, None, None)
        flag = take("uniform", 2, (b,), flag)
        med = take("uniform", self.K, (b, C), med)
        q = take("uniform", self.data_bits + 1, (b, C), q)
        norm_shift = med.view(b, C, 1, 1).float()
        norm_scale = torch.exp2(-q.view(b, C, 1, 1).float())
        cond_feats = self._cond(cond, med, q, ph, pw) if self.hparams["cond_channels"] else None
        # state: values (int, MISSING where unknown or missing) and known masks
        vals = torch.full((b, C, ph, pw), MISSING, dtype=torch.long, device=dev)
        valid = torch.zeros((b, C, ph, pw), dtype=torch.bool, device=dev)
        need_mask = flag.view(b, 1, 1, 1).bool()

        s = 1 << self.L
        # ---- coarsest grid
        sub = (slice(None), slice(None), slice(0, None, s), slice(0, None, s))
        ins = inside[sub]
        top_mask_logits = self.mask_top.view(1, C, 1, 1).expand(ins.shape)
        ok = self._mask_step(take, ins, top_mask_logits, need_mask, xp[sub] >= 0 if xp is not None else None)
        raw = self.top.view(1, -1, 1, 1).expand(b, -1, *ins.shape[2:])
        pred = torch.zeros(ins.shape, device=dev)
        got = step(take, raw, pred, ok, norm_shift, norm_scale, xp[sub] if xp is not None else None)
        vals[sub], valid[sub] = got, ok
        # ---- levels, coarse to fine
        for level in range(self.L, 0, -1):
            t = 1 << (level - 1)
            g = (slice(None), slice(None), slice(0, None, t), slice(0, None, t))
            lev = torch.full((b, 1, ph // (2 * t), pw // (2 * t)), level / self.L, device=dev)
            gv, gok, gin = vals[g], valid[g], inside[g]
            gx = xp[g] if xp is not None else None
            nv = (gv.float() - norm_shift) * norm_scale * gok
            P = [self._phase(nv, i, j) for i, j in ((0, 0), (0, 1), (1, 0), (1, 1))]
            Pok = [self._phase(gok.float(), i, j) for i, j in ((0, 0), (0, 1), (1, 0), (1, 1))]
            Pin = [self._phase(gin.float(), i, j) for i, j in ((0, 0), (0, 1), (1, 0), (1, 1))]
            cf = [cond_feats[level]] if cond_feats is not None else []
            # phase A: block centres (1, 1)
            m_in = torch.cat([Pok[0], Pin[0], torch.zeros_like(Pok[0]), Pin[3]] + cf + [lev], 1)
            ins_a = Pin[3] > 0
            ok_a = self._mask_step(take, ins_a, self.mask_a(m_in), need_mask,
                                   self._phase(gx, 1, 1) >= 0 if gx is not None else None)
            pred_a = _masked_mean([P[0]], [Pok[0]], [_DIAG])
            raw_a = self.net_a(torch.cat([P[0], Pok[0], pred_a] + cf + [lev], 1))
            got_a = step(take, raw_a, pred_a, ok_a, norm_shift, norm_scale,
                                     self._phase(gx, 1, 1) if gx is not None else None)
            nv_a = (got_a.float() - norm_shift) * norm_scale * ok_a
            # phase B: edge midpoints (0, 1) and (1, 0), together
            okf = ok_a.float()
            m_in = torch.cat([Pok[0], Pin[0], okf, Pin[3]] + cf + [lev], 1)
            ins_b = torch.cat([Pin[1], Pin[2]], 1) > 0
            truth_b = torch.cat([self._phase(gx, 0, 1), self._phase(gx, 1, 0)], 1) if gx is not None else None
            ok_b = self._mask_step(take, ins_b, self.mask_b(m_in), need_mask,
                                   truth_b >= 0 if truth_b is not None else None)
            pred_01 = _masked_mean([P[0], nv_a], [Pok[0], okf], [_B01_FROM_00, _B01_FROM_11])
            pred_10 = _masked_mean([P[0], nv_a], [Pok[0], okf], [_B10_FROM_00, _B10_FROM_11])
            raw_b = self.net_b(torch.cat([P[0], nv_a, Pok[0], okf, pred_01, pred_10] + cf + [lev], 1))
            shift2, scale2 = norm_shift.repeat(1, 2, 1, 1), norm_scale.repeat(1, 2, 1, 1)
            got_b = step(take, raw_b, torch.cat([pred_01, pred_10], 1), ok_b, shift2, scale2, truth_b,
                                     groups=2)
            # write the phases back into the grid at stride t
            gv, gok = gv.clone(), gok.clone()
            for (i, j), v, o in (((1, 1), got_a, ok_a), ((0, 1), got_b[:, :C], ok_b[:, :C]),
                                 ((1, 0), got_b[:, C:], ok_b[:, C:])):
                gv[..., i::2, j::2], gok[..., i::2, j::2] = v, o
            vals[g], valid[g] = gv, gok
        return vals[..., :h, :w]

    @staticmethod
    def _phase(t: torch.Tensor, i: int, j: int) -> torch.Tensor:
        return t[..., i::2, j::2]

    def _cond(self, cond: tuple | None, med, q, ph: int, pw: int) -> dict[int, torch.Tensor]:
        """Per level: the conditioning frames' 4 phases at that level's grid (values, valid) + has-frame.
        `cond` is (frames [B, C, H, W] with -1 where missing, has-frame flags [B]) or None."""
        b, C = med.shape
        dev = med.device
        full = torch.full((b, C, ph, pw), MISSING, dtype=torch.long, device=dev)
        has = torch.zeros((b, 1, 1, 1), device=dev)
        if cond is not None:
            frames, flags = cond
            full[..., : frames.shape[2], : frames.shape[3]] = frames
            has = flags.view(b, 1, 1, 1).float()
        ok = (full >= 0).float() * has
        nv = (full.float() - med.view(b, C, 1, 1).float()) * torch.exp2(-q.view(b, C, 1, 1).float()) * ok
        out = {}
        for level in range(self.L, 0, -1):
            t = 1 << (level - 1)
            gv, go = nv[..., ::t, ::t], ok[..., ::t, ::t]
            feats = [self._phase(gv, i, j) for i, j in ((0, 0), (0, 1), (1, 0), (1, 1))]
            feats += [self._phase(go, i, j) for i, j in ((0, 0), (0, 1), (1, 0), (1, 1))]
            out[level] = torch.cat(feats + [has.expand(b, 1, *feats[0].shape[2:])], 1)
        return out

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

    def _offset(self, take, means, log_scales, logits, sel, truth, choose: bool) -> torch.Tensor:
        """The coded log-scale offset of the batch for one phase band (one choice for all its images: 3 bits shared,
        where a choice per 28 x 28 digit would cost 0.02 bpd): when encoding or scoring, the one of ADAPT_OFFSETS
        that codes `truth` at `sel` in the fewest bits (UNADAPTED if not `choose`)."""
        pick = None
        if truth is not None:
            pick = torch.full((1,), UNADAPTED, dtype=torch.long, device=sel.device)
            if choose:
                with torch.no_grad(), suspended():
                    m, ls, lg = (t.detach()[sel].float() for t in (means, log_scales, logits))
                    v = truth[sel].float()
                    costs = []
                    for off in ADAPT_OFFSETS:
                        per = torch.zeros(sel.shape, dtype=torch.float64, device=sel.device)
                        lp = mixture_log2prob(v, m, (ls + off).clamp(MIN_LOG_SCALE, MAX_LOG_SCALE_SYMBOLS), lg,
                                              self.K)
                        per[sel] = -lp.double()
                        costs.append(per.sum().view(1))
                    pick = torch.stack(costs).argmin(0)
        pick = take("choice", len(ADAPT_OFFSETS), (1,), pick)
        table = torch.tensor(ADAPT_OFFSETS, dtype=log_scales.dtype, device=log_scales.device)
        return table[pick].view(1, 1, 1, 1, 1)

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

    # ------------------------------------------------------------------ per-batch tuning (adapt=2)
    def _with_changes(self, q: torch.Tensor | None) -> MSP:
        """This model with the integer changes `q` (ADAPT_STEP units, ADAPTED order) added: a copy, since the
        model itself is shared by a worker's threads."""
        if q is None:
            return self
        clone = copy.deepcopy(self)
        params = dict(clone.named_parameters())
        at = 0
        with torch.no_grad():
            for name in ADAPTED:
                p = params[name]
                p.add_((q[at:at + p.numel()].to(device=p.device, dtype=p.dtype) * ADAPT_STEP).view_as(p))
                at += p.numel()
        return clone

    def _tuned(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Integer changes of ADAPTED that code `x` in fewer bits, side information included (None if none do),
        and the bits per image of the model they give (without the changes' own bits)."""
        work = copy.deepcopy(self)
        params = dict(work.named_parameters())
        for p in work.parameters():
            p.requires_grad_(False)
        chosen = [params[n].requires_grad_(True) for n in ADAPTED]
        start = [p.detach().clone() for p in chosen]
        opt = torch.optim.Adam(chosen, lr=ADAPT_LR)
        with suspended():
            with torch.enable_grad():
                for _ in range(ADAPT_FIT_STEPS):
                    loss = work._bits(x, choose=False).sum()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            change = torch.cat([(p.detach() - s0).flatten() for p, s0 in zip(chosen, start, strict=True)])
            q = (change / ADAPT_STEP).round().clamp(-ADAPT_RANGE, ADAPT_RANGE).long()
            with torch.no_grad():  # judged as coded: scale offsets chosen on both sides
                before = self._bits(x, choose=True)
                if not bool(q.any()):
                    return None, before
                after = self._with_changes(q)._bits(x, choose=True)
        if float(after.sum()) + self._change_bits(q) < float(before.sum()) + self._change_bits(None):
            return q, after
        return None, before

    @staticmethod
    def _change_logits(device=None) -> torch.Tensor:
        """The Laplace over -ADAPT_RANGE..ADAPT_RANGE steps that the changes are coded with (logits)."""
        k = torch.arange(-ADAPT_RANGE, ADAPT_RANGE + 1, dtype=torch.float64, device=device)
        return -k.abs() / ADAPT_SPREAD

    def _change_coder(self, n: int):
        return categorical(logits=self._change_logits(self.top.device).expand(n, -1))

    def _change_bits(self, q: torch.Tensor | None) -> float:
        """Bits of the flag and the changes."""
        if q is None:
            return 1.0
        logp = torch.log_softmax(self._change_logits(), 0)[q.cpu() + ADAPT_RANGE]
        return 1.0 - float(logp.sum()) / math.log(2)

    def _push_changes(self, message: Message, q: torch.Tensor | None) -> None:
        """Pushed after the pixels, so the decoder pops them first: the changes, then the flag."""
        if q is not None:
            message.push(q + ADAPT_RANGE, self._change_coder(q.numel()))
        device = self.top.device
        message.push(torch.tensor([int(q is not None)], device=device), uniform(2, (1,), device=device))

    def _pop_changes(self, message: Message) -> torch.Tensor | None:
        if not int(message.pop(uniform(2, (1,), device=self.top.device))[0]):
            return None
        n = sum(dict(self.named_parameters())[name].numel() for name in ADAPTED)
        return message.pop(self._change_coder(n)).reshape(n).long() - ADAPT_RANGE

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
