"""One batch of symbols as checked, self-delimiting bytes: `encode`, `decode` and `describe` (the SZEN container).

With 8 or more lanes the lanes are bootstrapped: a small cold message codes a prefix of the symbols, and its
bytes become the 62-bit initial states of the main message's lanes (`Message.warm_started`), which the decoder
gets back after decoding the rest. The symbols' CRC32 in the header makes a decode with the wrong model fail
loudly rather than return wrong data.
"""

from __future__ import annotations

import struct
import sys
import zlib

import numpy as np
import torch

from shardzip.coding.message import LANE_OVERHEAD_BITS, PAYLOAD_BITS, Message, default_lanes
from shardzip.coding.message_format import _CRC, _HEADER, VERSION
from shardzip.coding.models import EntropyModel, check_symbols
from shardzip.errors import DecodeMismatchError, MessageFormatError, MessageUnderflowError

BOOTSTRAPPED_LANE_BITS = 9  # measured overhead of a warm-started lane of `encode`, prefix lanes included

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
        msg.push_coded(start, freq, model.precision)
        return head(PLAIN, 0) + msg.to_bytes()
    seed = Message(max(1, lanes // PREFIX_LANE_RATIO), model.device)
    seed.push_coded(start[:prefix], freq[:prefix], model.precision)
    seed_bytes = seed.to_bytes()
    capacity = lanes * PAYLOAD_BITS // 8
    main = Message.warm_started(_bytes_to_payload(seed_bytes[:capacity], lanes), model.device)
    main.push_coded(start[prefix:], freq[prefix:], model.precision)
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
            "prefix_symbols": prefix, "steps": msg.ops, "words": msg.word_count, "bytes": len(view)}


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


__all__ = ["decode", "describe", "encode", "ideal_bits", "symbols_crc"]
