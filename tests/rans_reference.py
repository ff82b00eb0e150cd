"""A pure-Python reference of the interleaved rANS message, written from the documented design.

Plain integers, no torch: what `shardzip.coding.Message` must reproduce bit for bit. It follows the
specification, not the implementation:

- layout (little endian): b"SZAN" | version u8 | flags u8 (1: always warm) | lanes u32 | ops i64 |
  words u64 | tail bytes u32 | tail | words (u32 each) | CRC32 u32 of everything before it;
  the tail holds per lane a 6-bit bit length and the state's mantissa, then, for cold messages and
  lanes at >= 2**31 only, the Elias-gamma code of (warm op + 1);
- N symbols over L lanes: `full, rest = divmod(N, L)`, symbol i in lane i % L of step i // L; the
  `rest` lanes of a partial last row are coded on their own, the other lanes sit that step out;
- push: emit the low 32 bits while x >= f << (63 - n), then x = (x // f) * M + x % f + c;
  pop: slot = x & (M - 1), x = f * (x >> n) + slot - c, then refill x = x << 32 | word when
  x < 2**31 and the lane may refill at this op;
- cold lanes start at 1 and record the op count at which their state first reaches 2**31 (their
  warm op); they refill only at op indices >= it, and a pop that leaves a cold lane at 0, or at
  >= 2**31 where no refill is allowed, or that needs a word the stack lacks, is an underflow;
- always-warm lanes (clean bits, warm-started) refill whenever x < 2**31; only an empty stack
  stops them.
"""

from __future__ import annotations

import bisect
import struct
import zlib

LOWER = 1 << 31
WORD_MASK = (1 << 32) - 1
FLAG_ALWAYS_WARM = 1
# the documented field widths: magic 4, version 1, flags 1, lanes 4, ops 8 (signed), words 8, tail 4
HEADER_FORMAT = "<4sBBIqQI"
HEADER_BYTES = 4 + 1 + 1 + 4 + 8 + 8 + 4
CRC_BYTES = 4


class ReferenceUnderflow(Exception):
    """The reference's verdict: this pop needs bits the message does not hold."""


def _gamma(value: int) -> str:
    assert value >= 1
    return "0" * (value.bit_length() - 1) + format(value, "b")


class ReferenceMessage:
    """States, warm ops, op count and word stack of a message, as plain Python integers."""

    def __init__(self, lanes: int, always_warm: bool = False) -> None:
        self.lanes = lanes
        self.always_warm = always_warm
        self.state = [1] * lanes
        self.warm = [-1] * lanes  # -1: cold (below 2**31); always-warm messages record none
        self.ops = 0
        self.stack: list[int] = []

    # ----------------------------------------------------------------- coding
    def push(self, start: list[int], freq: list[int], n: int) -> None:
        N, L = len(start), self.lanes
        if N == 0:
            return
        full, rest = divmod(N, L)
        rows = ([(full, rest)] if rest else []) + [(t, L) for t in reversed(range(full))]
        for t, width in rows:  # the partial last row first: it is popped last
            for lane in range(width):
                i = t * L + lane
                x, f, c = self.state[lane], freq[i], start[i]
                if x >= f << (63 - n):
                    self.stack.append(x & WORD_MASK)
                    x >>= 32
                self.state[lane] = (x // f << n) + x % f + c
            self.ops += 1
            if not self.always_warm:
                for lane in range(L):
                    if self.warm[lane] < 0 and self.state[lane] >= LOWER:
                        self.warm[lane] = self.ops

    def pop(self, cdf_rows: list[list[int]], n: int) -> list[int]:
        """Decode len(cdf_rows) symbols, row i the integer CDF c(0..K) of symbol i. Atomic: on
        ReferenceUnderflow nothing changes."""
        N, L = len(cdf_rows), self.lanes
        if N == 0:
            return []
        full, rest = divmod(N, L)
        steps = full + (1 if rest else 0)
        if not self.always_warm and steps > self.ops:
            raise ReferenceUnderflow(f"{steps} steps, {self.ops} held")
        M = 1 << n
        x, stack, out = list(self.state), list(self.stack), [0] * N
        rows = [(t, L) for t in range(full)] + ([(full, rest)] if rest else [])
        for s, (t, width) in enumerate(rows):
            op = self.ops - 1 - s  # the op index this step undoes
            refill = []
            for lane in range(width):
                i = t * L + lane
                c = cdf_rows[i]
                slot = x[lane] & (M - 1)
                k = bisect.bisect_right(c, slot) - 1
                out[i] = k
                x[lane] = (c[k + 1] - c[k]) * (x[lane] >> n) + slot - c[k]
                may_refill = self.always_warm or 0 <= self.warm[lane] <= op
                if x[lane] == 0 or (x[lane] >= LOWER and not may_refill):
                    raise ReferenceUnderflow(f"lane {lane} at op {op}: state {x[lane]}")
                if x[lane] < LOWER and may_refill:
                    refill.append(lane)
            for lane in reversed(refill):  # the highest lane pushed its word last
                if not stack:
                    raise ReferenceUnderflow("the word stack ran out")
                x[lane] = (x[lane] << 32) | stack.pop()
        self.state, self.stack = x, stack
        self.ops -= steps
        if not self.always_warm:
            self.warm = [-1 if w > self.ops else w for w in self.warm]
        return out

    # ---------------------------------------------------------- serialization
    def to_bytes(self) -> bytes:
        bits = []
        for x, w in zip(self.state, self.warm, strict=True):
            length = x.bit_length()
            bits.append(format(length, "06b"))
            if length > 1:
                bits.append(format(x - (1 << (length - 1)), f"0{length - 1}b"))
            if x >= LOWER and not self.always_warm:
                bits.append(_gamma(w + 1))
        bitstring = "".join(bits)
        bitstring += "0" * (-len(bitstring) % 8)
        tail = int(bitstring, 2).to_bytes(len(bitstring) // 8, "big") if bitstring else b""
        flags = FLAG_ALWAYS_WARM if self.always_warm else 0
        head = struct.pack(HEADER_FORMAT, b"SZAN", 1, flags, self.lanes, self.ops, len(self.stack), len(tail))
        body = head + tail + struct.pack(f"<{len(self.stack)}I", *self.stack)
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def parse(cls, data: bytes) -> ReferenceMessage:
        """Read a well-formed message (no validation beyond asserts: the reference trusts its input)."""
        magic, version, flags, lanes, ops, n_words, tail_len = struct.unpack_from(HEADER_FORMAT, data)
        assert (magic, version) == (b"SZAN", 1) and flags in (0, FLAG_ALWAYS_WARM)
        msg = cls(lanes, always_warm=flags == FLAG_ALWAYS_WARM)
        tail = data[HEADER_BYTES:HEADER_BYTES + tail_len]
        bitstring = "".join(format(b, "08b") for b in tail)
        pos = 0

        def read(width: int) -> int:
            nonlocal pos
            value = int(bitstring[pos:pos + width], 2) if width else 0
            pos += width
            return value

        for lane in range(lanes):
            length = read(6)
            x = (1 << (length - 1)) + read(length - 1)
            msg.state[lane] = x
            if x >= LOWER and not msg.always_warm:
                zeros = 0
                while bitstring[pos] == "0":
                    zeros += 1
                    pos += 1
                msg.warm[lane] = read(zeros + 1) - 1
        start = HEADER_BYTES + tail_len
        msg.stack = list(struct.unpack_from(f"<{n_words}I", data, start))
        msg.ops = ops
        assert len(data) >= start + 4 * n_words + CRC_BYTES
        return msg
