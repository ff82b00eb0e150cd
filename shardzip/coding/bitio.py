"""Minimal MSB-first bit writer/reader for the small per-lane tails of a message."""

from __future__ import annotations


class BitWriter:
    """Appends unsigned fields of a given width; Elias-gamma codes for positive integers."""

    def __init__(self) -> None:
        self._acc = 0
        self._nbits = 0
        self._out = bytearray()

    def write(self, value: int, width: int) -> None:
        if width == 0:
            return
        if value < 0 or value >> width:
            raise ValueError(f"value {value} does not fit in {width} bits")
        self._acc = (self._acc << width) | value
        self._nbits += width
        while self._nbits >= 8:
            self._nbits -= 8
            self._out.append((self._acc >> self._nbits) & 0xFF)
        self._acc &= (1 << self._nbits) - 1

    def write_gamma(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"Elias-gamma codes positive integers, got {value}")
        length = value.bit_length()
        self.write(0, length - 1)
        self.write(value, length)

    def getvalue(self) -> bytes:
        if self._nbits:
            return bytes(self._out) + bytes([(self._acc << (8 - self._nbits)) & 0xFF])
        return bytes(self._out)


class BitReader:
    """Reads what BitWriter wrote; raises EOFError past the end."""

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._left = 8 * len(data)

    def read(self, width: int) -> int:
        if width > self._left:
            raise EOFError("bit stream exhausted")
        self._left -= width
        return (self._value >> self._left) & ((1 << width) - 1)

    def read_gamma(self) -> int:
        zeros = 0
        while self.read(1) == 0:
            zeros += 1
            if zeros > 64:
                raise EOFError("Elias-gamma code longer than 64 bits")
        return (1 << zeros) | self.read(zeros)
