"""The coarse-to-fine order an msp model codes in (`shardzip.models.msp`): the grid of every 2**levels-th pixel,
then per level the block centres (phase A) and the edge midpoints (phase B), each phase after its missing-value
mask, with the fixed interpolations that the networks correct. `Pyramid` is a mixin of `MSP`: it walks the
pyramid and asks the model's `_mask_step` and `_value_step` for each phase's symbols.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MISSING = -1


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


@dataclass
class _Walk:
    """The state a walk over the pyramid carries from level to level: how it takes symbols, the side information's
    normalisation, and the grid of values and masks filled in so far."""

    take: Callable
    step: Callable
    need_mask: torch.Tensor
    norm_shift: torch.Tensor
    norm_scale: torch.Tensor
    cond_feats: dict | None
    xp: torch.Tensor | None
    inside: torch.Tensor
    vals: torch.Tensor
    valid: torch.Tensor


class Pyramid:
    """The walk over the pyramid of an `MSP` model."""

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
        walk = _Walk(take, step, need_mask, norm_shift, norm_scale, cond_feats, xp, inside, vals, valid)
        for level in range(self.L, 0, -1):
            self._level(walk, level)
        return vals[..., :h, :w]

    def _level(self, w: _Walk, level: int) -> None:
        """Code one level of the pyramid: the values at stride t = 2**(level-1) not yet known, in two phases (A:
        block centres; B: edge midpoints), each after its missing-value mask."""
        take, step, need_mask, norm_shift, norm_scale = w.take, w.step, w.need_mask, w.norm_shift, w.norm_scale
        xp, inside, vals, valid, cond_feats = w.xp, w.inside, w.vals, w.valid, w.cond_feats
        b, C, ph, pw = vals.shape
        dev = vals.device
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
        got_b = step(take, raw_b, torch.cat([pred_01, pred_10], 1), ok_b, shift2, scale2, truth_b, groups=2)
        # write the phases back into the grid at stride t
        gv, gok = gv.clone(), gok.clone()
        for (i, j), v, o in (((1, 1), got_a, ok_a), ((0, 1), got_b[:, :C], ok_b[:, :C]),
                             ((1, 0), got_b[:, C:], ok_b[:, C:])):
            gv[..., i::2, j::2], gok[..., i::2, j::2] = v, o
        vals[g], valid[g] = gv, gok

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
