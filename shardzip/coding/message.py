"""An interleaved rANS message: a stack of symbols that can be pushed to and popped from.

`push(symbols, model)` encodes, `pop(model)` decodes the most recently pushed batch (LIFO), so
bits-back coding is a pop under the posterior before a push. A batch of N symbols is laid out
over the message's L lanes in ceil(N / L) steps, symbol i in lane i % L of step i // L; the lanes
beyond a partial last step sit that step out.

Two kinds of lanes:

- cold (`Message(lanes)`): lanes start at state 1 rather than the usual 2**31, so no lane pays 31
  bits of initial state; a lane still costs ~26 bits (rANS codes its first symbols imprecisely
  while the state is small; the serialized tail holds a 6-bit length and the Elias-gamma coded
  op at which the lane turned warm, below which pops never refill). Pops must undo pushes: one
  that reaches below a lane's bits raises MessageUnderflowError.
- always warm (`Message.with_clean_bits`, `Message.warm_started`): lanes start at 2**62 plus 62
  bits of payload (seeded clean bits, or another message's bytes), refill whenever the state
  drops below 2**31, and so invert any sequence of pushes and pops: what bits-back needs.

A message's bytes (`to_bytes`, `from_bytes`) are laid out in `shardzip.coding.message_format`; `encode` and
`decode` of `shardzip.coding.container` code one batch of symbols as checked, self-delimiting bytes.
"""

from __future__ import annotations

import functools
import threading
import time

import numpy as np
import torch
from torch.utils._python_dispatch import _disable_current_modes

from shardzip.coding import kernels as K_
from shardzip.coding import message_format, native
from shardzip.coding.message_format import LOWER, MAX_LANES
from shardzip.coding.models import EntropyModel
from shardzip.errors import DecodeMismatchError, MessageUnderflowError, ModelParameterError

LANE_OVERHEAD_BITS = 26  # measured: a lane's cold start and serialized tail cost ~26 bits
TARGET_OVERHEAD = 0.0006  # default lane counts keep lane overhead near 0.06 % of the payload
MAX_DEFAULT_LANES = 4096
_COLD = 1 << 62
_ALWAYS = -(1 << 62)
PAYLOAD_BITS = 62
PAYLOAD_BASE = 1 << PAYLOAD_BITS


def default_lanes(n_symbols: int, ideal_bits: float, lane_bits: float = LANE_OVERHEAD_BITS) -> int:
    """The most lanes whose overhead (`lane_bits` each) stays near TARGET_OVERHEAD of `ideal_bits`.

    More lanes decode faster (each step works on all lanes at once) but every lane costs bits;
    callers that want throughput over size (a GPU) pass `lanes` explicitly.
    """
    target = int(ideal_bits * TARGET_OVERHEAD / lane_bits)
    return max(1, min(target, n_symbols, MAX_DEFAULT_LANES))


_CLOCK = threading.local()


def coder_seconds() -> float:
    """Seconds this thread has spent in `Message.push` and `Message.pop` so far (the coder's share of a job's
    time: workers record the difference over each shard)."""
    return getattr(_CLOCK, "seconds", 0.0)


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are one: "cuda" names the current CUDA device, so it is "cuda:0" when that is current."""
    def index(d: torch.device) -> int | None:
        if d.type == "cuda" and d.index is None and torch.cuda.is_available():
            return torch.cuda.current_device()
        return d.index

    return a.type == b.type and index(a) == index(b)


def _plain(method):
    """Run a coding step outside any torch dispatch mode: the coder is integer arithmetic, exact as it is, and
    `shardzip.numerics.exact_numerics` (under which models build their entropy models) would only slow it.
    The step's time adds to `coder_seconds`."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        depth = getattr(_CLOCK, "depth", 0)
        t0 = time.perf_counter()
        _CLOCK.depth = depth + 1
        try:
            with _disable_current_modes():
                return method(*args, **kwargs)
        finally:
            _CLOCK.depth = depth
            if not depth:  # a step inside a step is counted once
                _CLOCK.seconds = coder_seconds() + time.perf_counter() - t0
    return wrapper


class Message:
    """A stack of rANS-coded symbols over `lanes` interleaved states on one device."""

    def __init__(self, lanes: int, device: torch.device | str = "cpu") -> None:
        if not 1 <= lanes <= MAX_LANES:
            raise ModelParameterError(f"lane count {lanes} is outside 1..{MAX_LANES}")
        self.lanes = lanes
        self.device = torch.device(device)
        self.always_warm = False
        self.state = torch.ones(lanes, dtype=torch.int64, device=self.device)
        self.warm = torch.full((lanes,), -1, dtype=torch.int64, device=self.device)
        self.ops = 0
        self._stack = torch.zeros(1024, dtype=torch.int64, device=self.device)
        self._top = 0

    # ------------------------------------------------------------------ coding
    @_plain
    def push(self, symbols: torch.Tensor, model: EntropyModel) -> None:
        """Encode `symbols` (shape = model.shape) on top of the message."""
        self._check_device(model)
        start, freq = model.start_freq(symbols)
        self.push_coded(start, freq, model.precision)

    def push_coded(self, start: torch.Tensor, freq: torch.Tensor, precision: int) -> None:
        """Encode symbols already turned into their flat (start, frequency) under `precision` bits."""
        n = start.numel()
        if n == 0:
            return
        lanes = self.lanes
        full, rest = divmod(n, lanes)
        track = not self.always_warm and bool((self.warm < 0).any())
        if K_.scripted.use_native(self.device):
            self._push_native(start, freq, precision, full, rest, track)
            return
        x, cold, words = self.state, torch.zeros_like(self.state), []
        if rest:  # the partial last row goes first (LIFO: it is popped last); lanes >= rest sit it out
            tail = slice(full * lanes, n)
            xr, wr, cr = K_.scripted.push_loop(x[:rest], start[tail].view(1, rest), freq[tail].view(1, rest),
                                               precision, track)
            if track:
                cold = torch.cat([cr, (x[rest:] < LOWER).long()])
            x = torch.cat([xr, x[rest:]])
            words.append(wr)
        if full:
            body = slice(0, full * lanes)
            x, wf, cf = K_.scripted.push_loop(x, start[body].view(full, lanes), freq[body].view(full, lanes),
                                              precision, track)
            cold = cold + cf
            words.append(wf)
        if track:
            turned = (self.warm < 0) & (x >= LOWER)
            self.warm = torch.where(turned, self.ops + cold, self.warm)
        self.state = x
        self.ops += full + (1 if rest else 0)
        self._append(torch.cat(words) if len(words) > 1 else words[0])

    def _push_native(self, start: torch.Tensor, freq: torch.Tensor, precision: int, full: int, rest: int,
                     track: bool) -> None:
        """`push_coded` with the compiled loops: the same states, words and warm ops."""
        lanes, n = self.lanes, start.numel()
        x = self.state.numpy().copy()
        st, fr = start.numpy(), freq.numpy()
        self._reserve(self._top + n)  # at most one word per symbol
        buf = self._stack.numpy()[self._top:]
        cold = np.zeros(lanes, np.int64)
        used = 0
        if rest:  # the partial last row goes first (LIFO: it is popped last); lanes >= rest sit it out
            if track:
                cold[rest:] = x[rest:] < LOWER
            w, cr = native.push_loop(x[:rest], st[full * lanes:n].reshape(1, rest), fr[full * lanes:n].reshape(1, rest),
                                     precision, track, buf)
            cold[:rest] += cr
            used += w
        if full:
            w, cf = native.push_loop(x, st[:full * lanes].reshape(full, lanes), fr[:full * lanes].reshape(full, lanes),
                                     precision, track, buf[used:])
            cold += cf
            used += w
        state = torch.from_numpy(x)
        if track:
            turned = (self.warm < 0) & (state >= LOWER)
            self.warm = torch.where(turned, self.ops + torch.from_numpy(cold), self.warm)
        self.state = state
        self.ops += full + (1 if rest else 0)
        self._top += used

    def _check_device(self, model: EntropyModel) -> None:
        if not same_device(model.device, self.device):
            raise ModelParameterError(f"model lives on {model.device} but the message on {self.device}")

    @_plain
    def pop(self, model: EntropyModel) -> torch.Tensor:
        """Decode the top `model.numel` symbols (the inverse of the last push with this model)."""
        self._check_device(model)
        n = model.numel
        if n == 0:
            return torch.zeros(model.shape, dtype=torch.int64, device=self.device)
        lanes = self.lanes
        full, rest = divmod(n, lanes)
        steps = full + (1 if rest else 0)
        if not self.always_warm and steps > self.ops:
            raise MessageUnderflowError(
                f"popping {n} symbols needs {steps} steps but the message holds only {self.ops};"
                " for bits-back coding start the message with clean bits (Message.with_clean_bits)"
            )
        warm_from = torch.full_like(self.warm, _ALWAYS) if self.always_warm else \
            torch.where(self.warm >= 0, self.warm, _COLD)
        if K_.scripted.use_native(self.device):
            x, top, bad, out = self._pop_native(model, warm_from, full, rest)
        else:
            x, top, bad, out = self._pop_torch(model, warm_from, full, rest)
        if bad or top < 0:
            raise MessageUnderflowError(
                "a pop needed more bits than the message holds: for bits-back start the message with enough clean"
                " bits (Message.with_clean_bits); otherwise the message is corrupt or decoded with other models,"
                " shapes or order than it was encoded with"
            )
        self.state = x
        self._top = top
        self.ops -= steps
        if not self.always_warm:
            self.warm = torch.where(self.warm > self.ops, -1, self.warm)
        return out.reshape(model.shape)

    def _pop_native(self, model: EntropyModel, warm_from: torch.Tensor, full: int, rest: int):
        """The pop's rows with the compiled loops: (states, stack top, impossible events, symbols)."""
        n, lanes = model.numel, self.lanes
        p0, p1, p2, edges, tab = native.model_arrays(model)
        offset = 0.5 if model.edges is None else 0.0
        x = self.state.numpy().copy()
        stack = self._stack.numpy() if self._top > 0 else self._stack.numpy()[:1]
        wf = warm_from.numpy()
        out = np.empty(n, np.int64)
        top, bad = self._top, 0
        for rows, width, lo in ((full, lanes, 0), (1 if rest else 0, rest, full * lanes)):
            if rows == 0:
                continue
            top, flags = native.pop_loop(x[:width], stack, top, model.kind, p0, p1, p2, lo, edges, tab,
                                         model.alphabet_size, model.precision, model.loc_frac, model.guess_id, offset,
                                         wf[:width], self.ops - (0 if lo == 0 else full), rows,
                                         out[lo:lo + rows * width].reshape(rows, width))
            top, bad = int(top), bad + int(flags)
        return torch.from_numpy(x), top, bad, torch.from_numpy(out)

    def _pop_torch(self, model: EntropyModel, warm_from: torch.Tensor, full: int, rest: int):
        """The pop's rows with the torch loops (any device): (states, stack top, impossible events, symbols)."""
        lanes = self.lanes
        params = model.flat_params()
        guess = model.guess_params()
        stack = self._stack if self._top > 0 else self._stack[:1]
        common = (model.kind, model.edges_tensor(), model.table_tensor(), model.alphabet_size, model.precision,
                  model.loc_frac, model.guess_id)
        x, top, bad, outs = self.state, self._top, 0, []
        for rows, width, lo in ((full, lanes, 0), (1 if rest else 0, rest, full * lanes)):
            if rows == 0:
                continue
            span = slice(lo, lo + rows * width)

            def rowed(t: torch.Tensor, span=span, rows=rows, width=width) -> torch.Tensor:
                return t[span].reshape((rows, width) + tuple(t.shape[1:]))

            ga, gb = (rowed(guess[0]), rowed(guess[1])) if guess is not None else (_EMPTY2, _EMPTY2)
            kind, edges, tab, K, prec, loc_frac, guess_id = common
            xs, out, ptr, flags = K_.scripted.pop_loop(
                x[:width], stack, top, kind, [rowed(p) for p in params], edges, tab, K, prec, loc_frac, guess_id,
                ga.to(self.device), gb.to(self.device), warm_from[:width], self.ops - (0 if lo == 0 else full), rows)
            x = xs if width == lanes else torch.cat([xs, x[width:]])
            top, bad = int(ptr[0]), bad + int(flags[0])
            outs.append(out.reshape(-1))
        return x, top, bad, torch.cat(outs)

    def _reserve(self, need: int) -> None:
        """Grow the word stack to hold at least `need` words (what lies beyond the top is never read)."""
        if need > self._stack.numel():
            grown = torch.empty(max(need, 2 * self._stack.numel()), dtype=torch.int64, device=self.device)
            grown[: self._top] = self._stack[: self._top]
            self._stack = grown

    def _append(self, words: torch.Tensor) -> None:
        need = self._top + words.numel()
        self._reserve(need)
        self._stack[self._top:need] = words
        self._top = need

    # ------------------------------------------------------------ bits-back
    @classmethod
    def warm_started(cls, payload: torch.Tensor, device: torch.device | str = "cpu") -> Message:
        """An always-warm message whose lanes start at 2**62 + payload (62 bits each)."""
        msg = cls(payload.numel(), device)
        msg.always_warm = True
        msg.state = payload.to(device=msg.device, dtype=torch.int64) + PAYLOAD_BASE
        msg.warm = torch.zeros_like(msg.state)
        return msg

    def take_payload(self) -> torch.Tensor:
        """The 62-bit payloads of a fully decoded `warm_started` message."""
        if self.ops != 0 or self._top != 0 or not bool((self.state >= PAYLOAD_BASE).all()):
            raise DecodeMismatchError(
                f"the message is not back at its initial states after decoding ({self.ops} steps and"
                f" {self._top} words left): it was decoded with other models or shapes than it was encoded with"
            )
        return self.state - PAYLOAD_BASE

    @classmethod
    def with_clean_bits(cls, lanes: int, words_per_lane: int = 2, seed: int = 0,
                        device: torch.device | str = "cpu") -> Message:
        """An always-warm message over seeded pseudo-random bits, for bits-back pops to consume.

        Each lane starts at 2**62 plus 62 seeded bits over `words_per_lane` seeded 32-bit words:
        (62 + 32 * words_per_lane) * lanes bits that the first pops draw on before anything is
        pushed. They are part of the final message (its cost of starting bits-back), and the
        decoder's `check_clean_bits` confirms they came back unchanged.
        """
        payload, words = _clean_bits(lanes, words_per_lane, seed)
        msg = cls.warm_started(payload, device)
        msg._append(words.to(msg.device))
        return msg

    def check_clean_bits(self, words_per_lane: int = 2, seed: int = 0) -> None:
        """After decoding everything, confirm the message is back at its seeded clean bits."""
        payload, words = _clean_bits(self.lanes, words_per_lane, seed)
        ok = (self.always_warm and self.ops == 0 and self._top == words.numel()
              and torch.equal(self.state.cpu(), payload + PAYLOAD_BASE)
              and torch.equal(self._stack[: self._top].cpu(), words))
        if not ok:
            raise DecodeMismatchError(
                "the message is not back at its seeded clean bits: it was decoded with other models, shapes"
                " or order than it was encoded with, or with another seed"
            )

    def check_empty(self) -> None:
        """Raise unless everything pushed has been popped again (a full, consistent decode)."""
        if self.always_warm or self.ops != 0 or self._top != 0 or not bool((self.state == 1).all()):
            raise DecodeMismatchError(
                f"the message is not empty after decoding ({self.ops} steps and {self._top} words left):"
                " it was decoded with other models or shapes than it was encoded with"
            )

    # ------------------------------------------------------------ serialization
    def to_bytes(self) -> bytes:
        """Self-delimiting bytes of this message (`shardzip.coding.message_format`)."""
        return message_format.pack(self.lanes, self.always_warm, self.ops, self.state.cpu().tolist(),
                                   self.warm.cpu().tolist(), self._stack[: self._top].cpu().numpy())

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, device: torch.device | str = "cpu") -> tuple[Message, int]:
        """Parse a message at the start of `data`; returns it and the number of bytes it took."""
        fields, total = message_format.unpack(data)
        msg = cls(fields.lanes, device)
        msg.always_warm = fields.always_warm
        msg.state = torch.tensor(fields.state, dtype=torch.int64, device=msg.device)
        msg.warm = torch.tensor(fields.warm, dtype=torch.int64, device=msg.device)
        msg.ops = fields.ops
        msg._stack = torch.from_numpy(np.concatenate([fields.words, np.zeros(1, np.int64)])).to(msg.device)
        msg._top = fields.words.shape[0]
        return msg, total

    @property
    def word_count(self) -> int:
        """32-bit words on the stack."""
        return self._top

    def num_bits(self) -> int:
        """Exact size of `to_bytes()` in bits."""
        return 8 * len(self.to_bytes())


_EMPTY2 = torch.empty(0, 0, dtype=torch.float64)


def _clean_bits(lanes: int, words_per_lane: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded 62-bit lane payloads and 32-bit words (CPU generator: the same on every machine)."""
    gen = torch.Generator().manual_seed(seed)
    hi = torch.randint(0, 1 << 31, (lanes,), generator=gen)
    lo = torch.randint(0, 1 << 31, (lanes,), generator=gen)
    words = torch.randint(0, 1 << 32, (words_per_lane * lanes,), generator=gen)
    return (hi << 31) | lo, words


__all__ = ["Message", "coder_seconds", "default_lanes", "same_device"]
