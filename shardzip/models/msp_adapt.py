"""How an msp model adapts to the batch it codes (its `adapt` hparam): the encoder's choices, coded for the decoder.

adapt=1 picks a log-scale offset per coded batch, phase and band; adapt=2 also tunes the output parameters per
batch and codes their change. Only integers reach the decoder (an offset's index, the changes on a grid), so the
choice may be made with plain floats and decoding stays exact. `Adaptation` is a mixin of `MSP`
(`shardzip.models.msp`): it uses the model's `_bits`, `top`, `K` and parameters.
"""

from __future__ import annotations

import copy
import math

import torch

from shardzip.coding import Message, categorical, uniform
from shardzip.models.base import MIN_LOG_SCALE, mixture_log2prob
from shardzip.numerics.dispatch import suspended

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


class Adaptation:
    """The adapt=1 offsets and the adapt=2 tuning of an `MSP` model."""

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

    # ------------------------------------------------------------------ per-batch tuning (adapt=2)
    def _with_changes(self, q: torch.Tensor | None) -> Adaptation:
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
