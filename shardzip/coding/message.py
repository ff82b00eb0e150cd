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

Serialized layout (little endian), version 1::

    b"SZAN" | version u8 | flags u8 (1: always warm) | lanes u32 | ops i64 | words u64
    | tail bytes u32 | tail (bit-packed per lane) | words (u32 each) | crc32 u32 of all before
"""

from __future__ import annotations

import functools
import struct
import sys
import threading
import time
import zlib

import numpy as np
import torch
from torch.utils._python_dispatch import _disable_current_modes

from shardzip.coding import kernels as K_
from shardzip.coding import native
from shardzip.coding.bitio import BitReader, BitWriter
from shardzip.coding.models import EntropyModel, check_symbols
from shardzip.errors import DecodeMismatchError, MessageFormatError, MessageUnderflowError, ModelParameterError

MAGIC = b"SZAN"
VERSION = 1
_HEADER = struct.Struct("<4sBBIqQI")
ALWAYS_WARM = 1
MAX_OPS = 1 << 62
_CRC = struct.Struct("<I")
LANE_OVERHEAD_BITS = 26  # measured: a lane's cold start and serialized tail cost ~26 bits
TARGET_OVERHEAD = 0.0006  # default lane counts keep lane overhead near 0.06 % of the payload
MAX_DEFAULT_LANES = 4096
_COLD = 1 << 62
_ALWAYS = -(1 << 62)
LOWER = 1 << K_.LOWER_BITS
PAYLOAD_BITS = 62
PAYLOAD_BASE = 1 << PAYLOAD_BITS
BOOTSTRAPPED_LANE_BITS = 9  # measured overhead of a warm-started lane of `encode`, prefix lanes included


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
        if not 1 <= lanes <= 1 << 24:
            raise ModelParameterError(f"lane count {lanes} is outside 1..{1 << 24}")
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
        self._push_coded(start, freq, model.precision)

    def _push_coded(self, start: torch.Tensor, freq: torch.Tensor, precision: int) -> None:
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
        """`_push_coded` with the compiled loops: the same states, words and warm ops."""
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
        """Self-delimiting bytes of this message (see module docstring)."""
        state = self.state.cpu().tolist()
        warm = self.warm.cpu().tolist()
        writer = BitWriter()
        for x, w in zip(state, warm, strict=True):
            length = x.bit_length()
            writer.write(length, 6)
            writer.write(x - (1 << (length - 1)), length - 1)
            if x >= LOWER and not self.always_warm:
                writer.write_gamma(w + 1)
        tail = writer.getvalue()
        stack = self._stack[: self._top].cpu().numpy()
        # each word is the low 32 bits of an int64: on a little-endian machine the first half of its 8 bytes
        words = stack.view("<u4")[::2].tobytes() if sys.byteorder == "little" else stack.astype("<u4").tobytes()
        flags = ALWAYS_WARM if self.always_warm else 0
        head = _HEADER.pack(MAGIC, VERSION, flags, self.lanes, self.ops, self._top, len(tail))
        crc = zlib.crc32(words, zlib.crc32(tail, zlib.crc32(head)))  # = crc32(head + tail + words), no copy
        return b"".join((head, tail, words, _CRC.pack(crc)))

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, device: torch.device | str = "cpu") -> tuple[Message, int]:
        """Parse a message at the start of `data`; returns it and the number of bytes it took."""
        data = memoryview(data)
        if len(data) < _HEADER.size:
            raise MessageFormatError(f"message truncated: {len(data)} bytes, the header alone needs {_HEADER.size}")
        magic, version, flags, lanes, ops, n_words, tail_len = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise MessageFormatError(f"not a shardzip rANS message (magic {bytes(magic)!r}, expected {MAGIC!r})")
        if version != VERSION:
            raise MessageFormatError(
                f"message format version {version} is not supported (this shardzip reads {VERSION}); upgrade shardzip"
            )
        total = _HEADER.size + tail_len + 4 * n_words + _CRC.size
        if len(data) < total:
            raise MessageFormatError(f"message truncated: it declares {total} bytes but only {len(data)} are present")
        body = data[: total - _CRC.size]
        (crc,) = _CRC.unpack_from(data, total - _CRC.size)
        if zlib.crc32(body) != crc:
            raise MessageFormatError("message corrupted: its CRC32 does not match its bytes")
        always_warm = bool(flags & ALWAYS_WARM)
        ops_ok = -MAX_OPS < ops < MAX_OPS and (ops >= 0 or always_warm)
        if flags & ~ALWAYS_WARM or not 1 <= lanes <= 1 << 24 or not ops_ok:
            raise MessageFormatError(f"message header is impossible (flags {flags}, {lanes} lanes, {ops} ops)")
        reader = BitReader(bytes(data[_HEADER.size: _HEADER.size + tail_len]))
        state, warm = [], []
        try:
            for _ in range(lanes):
                length = reader.read(6)
                if not 1 <= length <= 63:
                    raise MessageFormatError(f"message corrupted: lane state of bit length {length}")
                x = (1 << (length - 1)) + reader.read(length - 1)
                if always_warm:
                    if x < LOWER:
                        raise MessageFormatError("message corrupted: an always-warm lane below 2**31")
                    w = 0
                else:
                    w = reader.read_gamma() - 1 if x >= LOWER else -1
                    if w > ops:
                        raise MessageFormatError("message corrupted: a lane turned warm after the last op")
                state.append(x)
                warm.append(w)
        except EOFError as exc:
            raise MessageFormatError("message corrupted: lane tail shorter than its lane count") from exc
        msg = cls(lanes, device)
        msg.always_warm = always_warm
        msg.state = torch.tensor(state, dtype=torch.int64, device=msg.device)
        msg.warm = torch.tensor(warm, dtype=torch.int64, device=msg.device)
        msg.ops = ops
        start = _HEADER.size + tail_len
        words = np.frombuffer(data[start: start + 4 * n_words], dtype="<u4").astype(np.int64)
        msg._stack = torch.from_numpy(np.concatenate([words, np.zeros(1, np.int64)])).to(msg.device)
        msg._top = n_words
        return msg, total

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


_CONTAINER = struct.Struct("<4sBBQQI")
CONTAINER_MAGIC = b"SZEN"
PLAIN, BOOTSTRAPPED = 0, 1
PREFIX_LANE_RATIO = 16  # the prefix message that seeds the lanes has 1/16 as many lanes
MIN_BOOTSTRAP_LANES = 8


def _payload_to_bytes(payload: torch.Tensor) -> bytes:
    values = payload.cpu().numpy().astype(np.uint64)
    shifts = np.arange(PAYLOAD_BITS - 1, -1, -1, dtype=np.uint64)
    bits = ((values[:, None] >> shifts) & np.uint64(1)).astype(np.uint8).reshape(-1)
    return np.packbits(bits).tobytes()[: len(bits) // 8]


def _bytes_to_payload(data: bytes, lanes: int) -> torch.Tensor:
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    bits = np.concatenate([bits, np.zeros(lanes * PAYLOAD_BITS - len(bits), np.uint8)]).reshape(lanes, PAYLOAD_BITS)
    weights = np.uint64(1) << np.arange(PAYLOAD_BITS - 1, -1, -1, dtype=np.uint64)
    return torch.from_numpy((bits.astype(np.uint64) * weights).sum(1).astype(np.int64))


def symbols_crc(flat: torch.Tensor) -> int:
    """CRC32 of symbols as little-endian int64: what decode verifies its output against."""
    values = np.ascontiguousarray(flat.reshape(-1).to(torch.int64).cpu().numpy())
    return zlib.crc32(values if sys.byteorder == "little" else values.astype("<i8").tobytes())  # little-endian int64s


def encode(symbols: torch.Tensor, model: EntropyModel, lanes: int | None = None) -> bytes:
    """Encode one batch of symbols into self-delimiting bytes that `decode` checks end to end.

    With 8 or more lanes the lanes are bootstrapped: a small cold message (1/16 of the lanes)
    codes a prefix of the symbols, and its bytes become the 62-bit initial states of the main
    lanes, which the decoder gets back after decoding the rest. A lane then costs ~9 bits
    instead of ~26, so `default_lanes` can use three times as many for the same overhead.

    Layout: b"SZEN" | version u8 | mode u8 | symbols u64 | prefix symbols u64 | crc32 of the
    symbols u32 | crc32 u32 of the header | main message | the rest of the prefix message.
    """
    flat = check_symbols(symbols, model)
    start, freq = model.start_freq_flat(flat)
    n = freq.numel()
    info = freq.double().log2_().neg_().add_(model.precision)  # precision - log2 f, bit for bit, in place
    total = float(info.sum()) if n else 0.0
    if lanes is None:
        lanes = default_lanes(n, total, BOOTSTRAPPED_LANE_BITS)
        if lanes < MIN_BOOTSTRAP_LANES:
            lanes = default_lanes(n, total)
    prefix = _prefix_length(info, lanes) if lanes >= MIN_BOOTSTRAP_LANES else n
    head = _container(n, symbols_crc(flat))
    if prefix >= n:
        msg = Message(lanes, model.device)
        msg._push_coded(start, freq, model.precision)
        return head(PLAIN, 0) + msg.to_bytes()
    seed = Message(max(1, lanes // PREFIX_LANE_RATIO), model.device)
    seed._push_coded(start[:prefix], freq[:prefix], model.precision)
    seed_bytes = seed.to_bytes()
    capacity = lanes * PAYLOAD_BITS // 8
    main = Message.warm_started(_bytes_to_payload(seed_bytes[:capacity], lanes), model.device)
    main._push_coded(start[prefix:], freq[prefix:], model.precision)
    return b"".join((head(BOOTSTRAPPED, prefix), main.to_bytes(), seed_bytes[capacity:]))


def _prefix_length(info: torch.Tensor, lanes: int) -> int:
    """Symbols whose cold-coded message roughly fills the lanes' 62-bit initial states."""
    seed_lanes = max(1, lanes // PREFIX_LANE_RATIO)
    need = torch.tensor([float(max(lanes * PAYLOAD_BITS - seed_lanes * LANE_OVERHEAD_BITS
                                   - 8 * (_HEADER.size + _CRC.size), 1))], dtype=info.dtype, device=info.device)
    # the running sum of a growing head of `info` (the same sequential sums as over all of it): the prefix is
    # a few thousand symbols, the batch may be millions
    size = 1 << 14
    while True:
        cumulative = torch.cumsum(info[:size], 0)
        if size >= info.numel() or bool(cumulative[-1] >= need[0]):
            return int(torch.searchsorted(cumulative, need)[0]) + 1
        size *= 4


def _container(count: int, crc: int):
    def head(mode: int, prefix: int) -> bytes:
        fields = _CONTAINER.pack(CONTAINER_MAGIC, VERSION, mode, count, prefix, crc)
        return fields + _CRC.pack(zlib.crc32(fields))
    return head


def _read_container(view: memoryview) -> tuple[int, int, int, int]:
    """Mode, symbol count, prefix length and symbol CRC of `encode`'s output, header checked."""
    size = _CONTAINER.size + _CRC.size
    if len(view) < size:
        raise MessageFormatError(f"encoded data truncated: {len(view)} bytes, the header alone needs {size}")
    magic, version, mode, count, prefix, crc = _CONTAINER.unpack_from(view)
    if magic != CONTAINER_MAGIC:
        raise MessageFormatError(f"not shardzip encoded data (magic {bytes(magic)!r}, expected {CONTAINER_MAGIC!r})")
    if version != VERSION:
        raise MessageFormatError(f"encoded-data version {version} is not supported (this shardzip reads {VERSION})")
    if _CRC.unpack_from(view, _CONTAINER.size)[0] != zlib.crc32(view[: _CONTAINER.size]):
        raise MessageFormatError("encoded data corrupted: its header CRC32 does not match")
    if mode not in (PLAIN, BOOTSTRAPPED) or (mode == BOOTSTRAPPED and not 0 < prefix < count):
        raise MessageFormatError(f"encoded data has an impossible header (mode {mode}, prefix {prefix} of {count})")
    return mode, count, prefix, crc


def describe(data: bytes) -> dict[str, int | str]:
    """What `encode` produced: mode, symbols, lanes, prefix symbols and sizes (for reports and `info`)."""
    view = memoryview(data)
    mode, count, prefix, _ = _read_container(view)
    msg, _ = Message.from_bytes(view[_CONTAINER.size + _CRC.size:])
    return {"mode": "bootstrapped" if mode == BOOTSTRAPPED else "plain", "symbols": count, "lanes": msg.lanes,
            "prefix_symbols": prefix, "steps": msg.ops, "words": msg._top, "bytes": len(view)}


def decode(data: bytes, model: EntropyModel) -> torch.Tensor:
    """Decode bytes made by `encode` with the same model.

    Raises MessageFormatError for damaged or truncated bytes and DecodeMismatchError when the
    model does not reproduce the encoder's (wrong model, shape or precision): decoded symbols are
    checked against the CRC32 the encoder stored, so wrong data is never returned silently.
    """
    view = memoryview(data)
    mode, count, prefix, crc = _read_container(view)
    n = model.numel
    if count != n:
        raise DecodeMismatchError(f"the data holds {count} symbols but the model describes {n} (shape {model.shape})")
    size = _CONTAINER.size + _CRC.size
    msg, used = Message.from_bytes(view[size:], model.device)
    end = size + used
    try:
        if mode == PLAIN:
            symbols = msg.pop(model)
            msg.check_empty()
        else:
            rest = msg.pop(model.slice(prefix, n))
            capacity = msg.lanes * PAYLOAD_BITS // 8
            seed_bytes = _payload_to_bytes(msg.take_payload())[:capacity] + bytes(view[end:])
            seed, seed_used = Message.from_bytes(seed_bytes, model.device)
            end += max(0, seed_used - capacity)
            first = seed.pop(model.slice(0, prefix))
            seed.check_empty()
            symbols = torch.cat([first, rest])
    except (MessageUnderflowError, MessageFormatError) as exc:
        # these arise from what the model decoded (lane states, the prefix message rebuilt from them)
        raise DecodeMismatchError(f"decoding with this model does not retrace the encoder: {exc}") from exc
    if end != len(view):
        raise MessageFormatError(f"{len(view) - end} unexpected bytes after the encoded data")
    if symbols_crc(symbols) != crc:
        raise DecodeMismatchError("decoded symbols fail their CRC32: the model differs from the encoder's")
    return symbols.reshape(model.shape)


def ideal_bits(symbols: torch.Tensor, model: EntropyModel) -> float:
    """sum(-log2 p) of the symbols under the quantized model: the bound the coder approaches."""
    return float(-model.log2_prob(symbols).sum())


__all__ = ["Message", "coder_seconds", "decode", "default_lanes", "describe", "encode", "ideal_bits"]
