"""Fuzzing the decoder: random, truncated and bit-flipped chunk and shard bytes.

Every case must end within a bounded time in one of two ways: a `ShardzipError` (never IndexError,
struct.error, MemoryError, a hang or a crash), or values identical to the ones that were encoded
(a damaged chunk never decodes to wrong values: its CRC32 is checked). Valid chunks of every method
are built once: raw, zstd, a learned model's container (direct and bits-back), a masked float chunk
with packed integers, a masked float chunk with plain values, and edge chunks wrapping a model
container and a masked chunk.
"""

from __future__ import annotations

import contextlib
import signal
import struct
import zlib
from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest
import torch
from conftest import TEST_DATA, examples
from hypothesis import given, settings
from hypothesis import strategies as st

from shardzip.errors import ShardzipError
from shardzip.format import shard as shardfmt
from shardzip.format.chunk import (
    _HEAD,
    MAGIC,
    MASKED_MODEL,
    MODEL,
    PARTIAL,
    VERSION,
    Packing,
    decode_chunk,
    encode_chunk,
)
from shardzip.format.layout import to_images
from shardzip.format.learned import encode_masked_model

MNIST = np.load(TEST_DATA / "mnist_test_64.npy")
# A decode of these small chunks takes milliseconds, a full model decode ~1 s; the bounds are generous so that
# a loaded CI machine does not fail them, yet a hang fails the test instead of stalling the suite.
SECONDS = 30.0  # wall-clock bound per decode (SIGALRM)
DEADLINE_MS = 10_000  # hypothesis' per-example deadline


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    values: np.ndarray
    shape: tuple[int, ...]
    layout: str | None = None
    model: str | None = None
    packing: Packing | None = None

    def decode(self, data: bytes) -> np.ndarray:
        loader = (lambda: _model(self.model)) if self.model else None
        return decode_chunk(data, self.shape, self.values.dtype, self.layout, loader, self.packing)


@cache
def _model(name: str):
    from shardzip.models import load_catalog_model

    return load_catalog_model(name)


def _model_chunk(images: np.ndarray, name: str) -> bytes:
    """A chunk coded with the model whatever zstd would give (method 2), as encode_chunk writes it."""
    from shardzip.models.codec import compress

    model = _model(name)
    batch = 4 if model.bits_back else 16
    body = compress(model, torch.from_numpy(to_images(images, "NCHW").astype(np.int64)), batch=batch)
    return _HEAD.pack(MAGIC, VERSION, MODEL, zlib.crc32(images.tobytes())) + body


@cache
def corpus() -> tuple[Case, ...]:
    rng = np.random.default_rng(7)
    images = MNIST[:2]  # small: a full decode with the model is what costs time
    noise = rng.integers(0, 256, (3, 17), dtype=np.uint8)
    ramp = (np.arange(600, dtype=np.uint16) % 37).reshape(20, 30)
    radar = rng.normal(20, 5, (12, 40)).round().astype(np.float32) * np.float32(0.5)
    radar[2:5] = -9999.0
    radar[7, :9] = np.nan
    plain = rng.normal(0, 1, (6, 25)).astype(np.float32)
    plain[0] = np.nan
    packed = Packing(scale_factor=0.5, add_offset=0.0, fill=-9999.0)
    cases = [
        Case("raw", encode_chunk(noise)[0], noise, noise.shape),
        Case("zstd", encode_chunk(ramp)[0], ramp, ramp.shape),
        Case("model", _model_chunk(images, "idf-mnist"), images, images.shape, "NCHW", "idf-mnist"),
        Case("bits-back", _model_chunk(images, "bbans-mnist"), images, images.shape, "NCHW", "bbans-mnist"),
        Case("masked-ints", encode_chunk(radar, packing=packed)[0], radar, radar.shape, packing=packed),
        Case("masked-floats", encode_chunk(plain, packing=Packing())[0], plain, plain.shape, packing=Packing()),
    ]
    full = np.zeros((3, 1, 28, 28), np.uint8)  # an edge chunk: 2 valid images of 3, around a model container
    full[:2] = images
    edge = (_HEAD.pack(MAGIC, VERSION, PARTIAL, zlib.crc32(full.tobytes())) + struct.pack("<B4I", 4, *images.shape)
            + _model_chunk(images, "bbans-mnist"))
    cases.append(Case("edge-model", edge, full, full.shape, "NCHW", "bbans-mnist"))
    edge_radar, _ = encode_chunk(radar[:9], packing=packed, full_shape=radar.shape)
    full_radar = np.zeros_like(radar)
    full_radar[:9] = radar[:9]
    cases.append(Case("edge-masked", edge_radar, full_radar, radar.shape, packing=packed))
    # method 5: the raster model codes values and the no-data mask (NaN and fill both present: kinds kept too)
    body, _ = encode_masked_model(radar, _model("msp-radar"), "HW", packed, None, 9)
    cases.append(Case("masked-model", _HEAD.pack(MAGIC, VERSION, MASKED_MODEL, zlib.crc32(radar.tobytes())) + body,
                      radar, radar.shape, "HW", "msp-radar", packed))
    for c in cases:  # the corpus itself decodes exactly
        assert np.array_equal(c.decode(c.data), c.values, equal_nan=True), c.name
    assert {c.data[3] for c in cases} == {0, 1, 2, 3, 4, 5}  # raw, zstd, model, masked, edge, masked-model
    return tuple(cases)


@contextlib.contextmanager
def time_limit(seconds: float):
    """Fail (TimeoutError) instead of hanging when the body takes longer than `seconds` (main thread only)."""
    def expire(*_):
        raise TimeoutError(f"decoding took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def decodes_exactly_or_raises(case: Case, data: bytes) -> str:
    """'raised' or 'exact'; anything else (wrong values, another exception type, a hang) fails."""
    with time_limit(SECONDS):
        try:
            out = case.decode(data)
        except ShardzipError:
            return "raised"
    assert out.shape == case.shape and out.dtype == case.values.dtype, case.name
    assert np.array_equal(out, case.values, equal_nan=True), f"{case.name}: damaged bytes decoded to other values"
    return "exact"


cases = st.integers(0, 8).map(lambda i: corpus()[i])


@settings(examples(80), deadline=DEADLINE_MS)
@given(cases, st.data())
def test_truncated_chunks_raise(case, data):
    cut = data.draw(st.integers(0, len(case.data) - 1))
    assert decodes_exactly_or_raises(case, case.data[:cut]) == "raised"


@settings(examples(150), deadline=DEADLINE_MS)
@given(cases, st.data())
def test_bit_flipped_chunks_raise_or_decode_exactly(case, data):
    damaged = bytearray(case.data)
    for bit in data.draw(st.lists(st.integers(0, 8 * len(damaged) - 1), min_size=1, max_size=3, unique=True)):
        damaged[bit // 8] ^= 1 << (bit % 8)
    decodes_exactly_or_raises(case, bytes(damaged))


@st.composite
def chunk_like_bytes(draw):
    """Random bytes, often behind a valid header of a random method, so that every method's parser is reached."""
    body = draw(st.binary(max_size=600))
    if draw(st.booleans()):
        method = draw(st.integers(0, 6))
        crc = draw(st.integers(0, 2**32 - 1))
        ndim = draw(st.integers(0, 5))
        extent = b"".join(struct.pack("<I", draw(st.integers(0, 40))) for _ in range(ndim))
        head = struct.pack("<2sBBI", b"SZ", 1, method, crc) + (bytes([ndim]) + extent if method == 4 else b"")
        body = head + body
    return body


@settings(examples(150), deadline=DEADLINE_MS)
@given(cases, chunk_like_bytes())
def test_random_bytes_raise(case, data):
    decodes_exactly_or_raises(case, data)


def test_zstd_frame_declaring_huge_content_is_refused_without_allocating():
    """A damaged zstd frame header may declare terabytes: refused by size before numcodecs allocates them."""
    case = corpus()[1]
    frame = struct.pack("<I", 0xFD2FB528) + bytes([0b11100000]) + struct.pack("<Q", 2**40) + b"\x0b\x03\x00x"
    data = case.data[:8] + frame
    with pytest.raises(ShardzipError, match="declares 1099511627776 bytes"):
        case.decode(data)
    bomb = struct.pack("<I", 0xFD2FB528) + b"\x00\x58" + (struct.pack("<I", 2 | (131071 << 3))[:3] + b"y") * 64
    with pytest.raises(ShardzipError, match="records its size"):
        case.decode(case.data[:8] + bomb)


@cache
def shard_case() -> tuple[bytes, list[Case | None]]:
    zstd, bits_back, masked = corpus()[1], corpus()[3], corpus()[4]
    parts: list[Case | None] = [bits_back, None, zstd, masked]
    return shardfmt.pack_shard([p.data if p else None for p in parts]), parts


def unpacks_exactly_or_raises(blob: bytes) -> str:
    _, parts = shard_case()
    with time_limit(SECONDS):
        try:
            chunks = shardfmt.unpack_shard(blob, len(parts))
        except ShardzipError:
            return "raised"
    outcome = "exact"
    for part, case in zip(chunks, parts, strict=True):
        if part is None or case is None:
            continue
        outcome = "raised" if decodes_exactly_or_raises(case, bytes(part)) == "raised" else outcome
    return outcome


@settings(examples(100), deadline=DEADLINE_MS)
@given(st.data())
def test_damaged_shards_raise_or_decode_exactly(data):
    blob, _ = shard_case()
    how = data.draw(st.sampled_from(["truncate", "flip", "random", "index"]))
    if how == "truncate":
        damaged = blob[:data.draw(st.integers(0, len(blob) - 1))]
    elif how == "random":
        damaged = data.draw(st.binary(max_size=300))
    else:
        damaged = bytearray(blob)
        lo = len(blob) - 4 * 16 - 4 if how == "index" else 0
        for bit in data.draw(st.lists(st.integers(8 * lo, 8 * len(blob) - 1), min_size=1, max_size=3, unique=True)):
            damaged[bit // 8] ^= 1 << (bit % 8)
        damaged = bytes(damaged)
    outcome = unpacks_exactly_or_raises(damaged)
    if how in ("truncate", "index"):
        assert outcome == "raised"


def test_undamaged_corpus_and_shard_decode_exactly():
    assert all(decodes_exactly_or_raises(c, c.data) == "exact" for c in corpus())
    assert unpacks_exactly_or_raises(shard_case()[0]) == "exact"
