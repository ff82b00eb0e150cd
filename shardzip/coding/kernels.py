"""Integer kernels: CDF evaluation, symbol lookup and the interleaved rANS push/pop loops.

TorchScript cannot read module globals, so the kernels spell their constants as literals; the
named constants below document them and `tests/coding/test_kernels.py` pins the two together.

Everything here is integer tensor arithmetic, so the same code gives bit-identical results on CPU
and CUDA, eager or TorchScript. The functions are written in the TorchScript subset and scripted
once at import (`scripted`); if scripting is unavailable the eager functions are used, which
compute exactly the same integers (tested).

rANS conventions (one lane = one independent rANS state, int64):

- state bound ``LOWER = 2**31``; words are 32 bits; a warm lane's state lies in [2**31, 2**63).
- probability precision ``n`` bits (``M = 2**n``), 8 <= n <= 28; a symbol owns [c, c + f) of M.
- cold lanes start at state 1: the first symbols grow the state without emitting words, so no
  31 bits of initial state are spent. A lane becomes warm at the op count ``w`` where its state
  first reaches LOWER; pops refill from the word stack only at ops >= w (``warm_from``).
  Always-warm lanes (``warm_from`` very negative) start at or above LOWER and refill whenever
  the state drops below it, as in textbook rANS.

Model kinds (``kind`` argument) and their parameter lists ``p``:

- UNIFORM: no parameters; ``c(k) = k * M // K``.
- TABLE: ``p[0]`` holds cumulative integer weights [N, K + 1] (0 first, total last) of
  categorical models; ``c(k) = W_k (M - K) // W_K + k``, normalized only where it is read.
- LOCSCALE: ``p[0]`` location and ``p[1]`` inverse scale (fixed point); bin edges [K + 1] in
  ``edges``; the CDF shape comes from ``tab`` (signed sigmoid or normal table).
- MIXTURE: ``p[0]`` locations, ``p[1]`` inverse scales, ``p[2]`` weights summing to 2**MIX_BITS,
  each [..., J]; bin edges as for LOCSCALE.
"""

from __future__ import annotations

import os
import warnings

import torch

from shardzip.coding.tables import TABLE_BITS, Z_FRAC, Z_LEN  # noqa: F401 (pinned by tests)

UNIFORM = 0
TABLE = 1
LOCSCALE = 2
MIXTURE = 3

LOWER_BITS = 31
WORD_BITS = 32
WORD_MASK = (1 << WORD_BITS) - 1
LOC_FRAC = 8  # fixed-point fraction bits of locations on regular integer bins
INV_SCALE_FRAC = 28  # fixed-point fraction bits of inverse scales
MIX_BITS = 16  # mixture weights sum to 2**MIX_BITS


def _locscale_value(edge: torch.Tensor, loc: torch.Tensor, inv_scale: torch.Tensor,
                    tab: torch.Tensor, loc_frac: int) -> torch.Tensor:
    """Table value (0..2**30) of the CDF at fixed-point `edge`, linearly interpolated.

    `tab` is the signed table padded by one entry: index j stands for z = (j - 65536) / 2**12.
    z is computed with 12 more fraction bits than the table has, so wide distributions (16-bit
    data, bins a fraction of a table step wide) still get smooth, distinct bin masses. The
    distance is clamped to 2**24 before multiplying (no int64 overflow); inverse scales are at
    least 2**16 / 2**24 so that anything clamped lies beyond the table and saturates anyway.
    """
    d = (edge - loc).clamp(-(1 << 24), 1 << 24)
    z = ((d * inv_scale) >> (loc_frac + 28 - 24)).clamp(-(65536 << 12), 65536 << 12) + (65536 << 12)
    j = z >> 12
    lo = tab[j]
    return lo + (((tab[j + 1] - lo) * (z & 4095)) >> 12)


def cdf(kind: int, k: torch.Tensor, p: list[torch.Tensor], edges: torch.Tensor, tab: torch.Tensor,
        K: int, n: int, loc_frac: int) -> torch.Tensor:
    """Quantized CDF c(k) for 0 <= k <= K: c(0) = 0, c(K) = 2**n, c(k+1) - c(k) >= 1.

    Location-scale kinds read bin edges from `edges` [K + 1], whose first and last entries are
    sentinels far outside any location: the open edge bins then fall out of the table's
    saturation (value 0 below, 2**30 above) without a special case.
    """
    M = 1 << n
    if kind == 0:
        return (k * M) // K
    if kind == 1:
        cum = torch.gather(p[0], -1, k.unsqueeze(-1)).squeeze(-1)
        return (cum * (M - K)) // p[0][:, -1] + k
    edge = edges[k]
    if kind == 2:
        v = _locscale_value(edge, p[0], p[1], tab, loc_frac)
    else:  # MIXTURE: components along the last dimension
        v = (_locscale_value(edge.unsqueeze(-1), p[0], p[1], tab, loc_frac) * p[2]).sum(-1) >> 16
    return ((v * (M - K)) >> 30) + k


def lookup(kind: int, slot: torch.Tensor, p: list[torch.Tensor], edges: torch.Tensor, tab: torch.Tensor,
           K: int, n: int, loc_frac: int, guess: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The symbol k with c(k) <= slot < c(k+1), its start c(k) and frequency c(k+1) - c(k).

    `guess` (empty for none) is an estimate of k that only affects speed, never the result:
    it is checked against the exact integer CDF, nudged by one, and whatever is still off is
    found by bisection.
    """
    if kind == 0:
        k = ((slot + 1) * K - 1) >> n
    elif kind == 1:  # normalize this step's rows only, then search them
        rows = (p[0] * ((1 << n) - K)) // p[0][:, -1:] + torch.arange(K + 1, device=slot.device)
        k = torch.searchsorted(rows, slot.unsqueeze(-1), right=True) - 1
        start = torch.gather(rows, -1, k).squeeze(-1)
        return k.squeeze(-1), start, torch.gather(rows, -1, k + 1).squeeze(-1) - start
    elif guess.numel() > 0:
        k = guess
        both = cdf(kind, torch.stack([k, k + 1]), p, edges, tab, K, n, loc_frac)  # params broadcast
        lo_c = both[0]
        hi_c = both[1]
        below = slot < lo_c
        above = slot >= hi_c
        if bool((below | above).any()):
            k = torch.where(below, k - 1, torch.where(above, k + 1, k))
            # a lane moved down keeps its old c(k) as the new upper end, one moved up its old c(k+1)
            fresh = cdf(kind, torch.where(below, k, k + 1), p, edges, tab, K, n, loc_frac)
            new_lo = torch.where(below, fresh, torch.where(above, hi_c, lo_c))
            hi_c = torch.where(above, fresh, torch.where(below, lo_c, hi_c))
            lo_c = new_lo
            bad = (slot < lo_c) | (slot >= hi_c)
            if bool(bad.any()):
                lo = torch.where(bad, torch.zeros_like(k), k)
                hi = torch.where(bad, torch.full_like(k, K), k + 1)
                k = _bisect(kind, slot, lo, hi, p, edges, tab, K, n, loc_frac)
                lo_c = cdf(kind, k, p, edges, tab, K, n, loc_frac)
                hi_c = cdf(kind, k + 1, p, edges, tab, K, n, loc_frac)
        return k, lo_c, hi_c - lo_c
    else:
        k = _bisect(kind, slot, torch.zeros_like(slot), torch.full_like(slot, K), p, edges, tab, K, n, loc_frac)
    start = cdf(kind, k, p, edges, tab, K, n, loc_frac)
    return k, start, cdf(kind, k + 1, p, edges, tab, K, n, loc_frac) - start


def _bisect(kind: int, slot: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, p: list[torch.Tensor],
            edges: torch.Tensor, tab: torch.Tensor, K: int, n: int, loc_frac: int) -> torch.Tensor:
    """Largest k in [lo, hi) with c(k) <= slot, given c(lo) <= slot < c(hi)."""
    while bool((hi - lo > 1).any()):
        mid = (lo + hi) >> 1
        go_up = cdf(kind, mid, p, edges, tab, K, n, loc_frac) <= slot
        lo = torch.where(go_up, mid, lo)
        hi = torch.where(go_up, hi, mid)
    return lo


def push_loop(x: torch.Tensor, start: torch.Tensor, freq: torch.Tensor, n: int,
              track_cold: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Push T steps of symbols, given as start/freq of shape [T, L], processing row T-1 first.

    Returns the new states, the emitted words in stack order, and per lane the number of steps
    that began below LOWER (the op offset at which a cold lane turned warm).
    """
    T = start.shape[0]
    lower = 1 << 31
    states = torch.empty_like(start)
    emit = torch.empty(start.shape, dtype=torch.bool, device=start.device)
    cold = torch.zeros_like(x)
    gain = (1 << n) - freq
    for i in range(T):
        t = T - 1 - i
        f = freq[t]
        if track_cold:
            cold += (x < lower).long()
        m = torch.ge(x, f << (63 - n), out=emit[i])
        states[i].copy_(x)
        x = torch.where(m, x >> 32, x)
        q = torch.div(x, f, rounding_mode="floor")
        x = x + q * gain[t] + start[t]
    words = states[emit] & 0xFFFFFFFF
    return x, words, cold


GUESS_NONE = 0
GUESS_LOGISTIC = 1
GUESS_GAUSSIAN = 2
GUESS_GAUSSIAN_BUCKETS = 3


def _guess_from_u(guess_id: int, u: torch.Tensor, a: torch.Tensor, b: torch.Tensor, K: int) -> torch.Tensor:
    if guess_id == 1:
        x = torch.logit(u).mul_(b).add_(a)
    else:
        x = torch.erfinv(u.mul_(2).sub_(1)).mul_(b * 1.4142135623730951).add_(a)
        if guess_id == 3:
            x = torch.erf(x.mul_(0.7071067811865476)).add_(1).mul_(0.5 * K)
    return x.clamp_(0.0, K - 1.0).long()  # truncation is floor on [0, K-1]


def _guess(guess_id: int, slot: torch.Tensor, a: torch.Tensor, b: torch.Tensor, K: int, n: int) -> torch.Tensor:
    """Floating-point estimate of the symbol for `slot`, in [0, K-1] (speed only; lookup verifies).

    c(k) = shape(k) * (M - K) + k: for large alphabets the "+ k" term moves the slot by up to K,
    so one Newton step solves k = x((slot - k) / (M - K)) from the first estimate, x being the
    inverse of the shape (robust in the tails, where the "+ k" term dominates).
    """
    M = 1 << n
    u = (slot.double() + 0.5) * (1.0 / M)  # in (0, 1): logit and erfinv stay finite
    k = _guess_from_u(guess_id, u, a, b, K)
    if K > 1024 and guess_id != 3:
        kd = k.double()
        u = (slot.double() - kd).add_(0.5).mul_(1.0 / (M - K)).clamp_(1e-15, 1.0 - 1e-15)
        if guess_id == 1:
            x = torch.logit(u).mul_(b).add_(a)
            slope = b / (u * (1.0 - u))
        else:
            y = torch.erfinv(u.mul(2.0).sub_(1.0))
            x = (y * 1.4142135623730951).mul_(b).add_(a)
            slope = (y * y).exp_().mul_(b * 2.5066282746310002)
        kd = kd - (kd - x) / slope.mul_(1.0 / (M - K)).add_(1.0)
        k = kd.nan_to_num_(0.0).clamp_(0.0, K - 1.0).long()
    return k


def pop_loop(x: torch.Tensor, words: torch.Tensor, top: int, kind: int, p: list[torch.Tensor],
             edges: torch.Tensor, tab: torch.Tensor, K: int, n: int, loc_frac: int, guess_id: int,
             guess_a: torch.Tensor, guess_b: torch.Tensor, warm_from: torch.Tensor, ops_before: int,
             steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pop `steps` rows of symbols (parameters `p` of shape [steps, L, ...]): inverse of `push_loop`.

    `words[:top]` is the stack; `warm_from` is each lane's warm op (huge for cold lanes, very
    negative for always-warm ones). Returns the states, the symbols [steps, L], the new stack top
    (1-element tensor, negative if the stack ran out) and a count of impossible events: a cold
    lane popped to state 0 or to a state only a refill could explain. Non-zero means the pops
    asked for more bits than the lanes hold (bits-back without clean bits), or the message is
    corrupt or decoded with other models than it was encoded with.
    """
    Lw = x.shape[0]
    M = 1 << n
    lower = 1 << 31
    out = torch.empty([steps, Lw], dtype=torch.int64, device=x.device)
    ptr = torch.full([1], top, dtype=torch.int64, device=x.device)
    bad = torch.zeros([1], dtype=torch.int64, device=x.device)
    check_warm = bool((warm_from > ops_before - steps).any())
    last_word = max(top - 1, 0)
    for t in range(steps):
        slot = x & (M - 1)
        pt = [q[t] for q in p]
        if guess_id != 0:
            guess = _guess(guess_id, slot, guess_a[t], guess_b[t], K, n)
        else:
            guess = torch.empty([0], dtype=torch.int64, device=x.device)
        k, start, freq = lookup(kind, slot, pt, edges, tab, K, n, loc_frac, guess)
        out[t] = k
        x = freq * (x >> n) + slot - start
        if check_warm:
            eligible = warm_from <= ops_before - 1 - t
            m = (x < lower) & eligible
            bad += ((x == 0) | ((x >= lower) & ~eligible)).sum()
        else:
            m = x < lower
        cnt = torch.cumsum(m, 0, dtype=torch.int64)
        ptr = ptr - cnt[-1:]
        word = words[(cnt + (ptr - 1)).clamp(0, last_word)]
        x = torch.where(m, (x << 32) | word, x)
    bad += (ptr < 0).long()  # the pointer only decreases: one check covers every step
    return x, out, ptr, bad


def _try_script(fn):
    try:
        with warnings.catch_warnings():
            # deprecated since torch 2.10 but still the only way to run these loops without a
            # compiler toolchain; the eager fallback below codes identically
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.script(fn)
    except Exception as exc:  # pragma: no cover - TorchScript missing or changed: eager is equivalent
        warnings.warn(f"TorchScript unavailable for {fn.__name__} ({exc}); using the slower eager loop,"
                      " which codes identically", RuntimeWarning, stacklevel=2)
        return fn


class _Scripted:
    """Which loops code: the compiled CPU loops (`shardzip.coding.native`, for CPU messages, where numba imports
    and `native` is on), else the TorchScript loops (created on first use, scripting takes ~1 s), else the eager
    ones. All write identical bytes. SHARDZIP_CODER=torch (or scripted/eager) turns the compiled loops off."""

    def __init__(self) -> None:
        self._loops: dict[str, object] = {}  # the scripted loops, by name
        choice = os.environ.get("SHARDZIP_CODER", "native").strip().lower()
        if choice not in ("native", "torch", "scripted", "eager"):
            raise ValueError(f"SHARDZIP_CODER={choice!r}: expected native, torch, scripted or eager")
        self.enabled = choice != "eager"
        self.native = choice == "native"

    def use_native(self, device: torch.device) -> bool:
        """Whether a message on `device` codes with the compiled loops."""
        if not (self.native and device.type == "cpu"):
            return False
        from shardzip.coding import jit

        return jit.available()

    def _loop(self, fn):
        """`fn` scripted (on first use), or as it is where scripting is off."""
        if not self.enabled:
            return fn
        if fn.__name__ not in self._loops:
            self._loops[fn.__name__] = _try_script(fn)
        return self._loops[fn.__name__]

    @property
    def push_loop(self):
        return self._loop(push_loop)

    @property
    def pop_loop(self):
        return self._loop(pop_loop)


scripted = _Scripted()
