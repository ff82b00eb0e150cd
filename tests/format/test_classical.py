"""Classical chunk codecs (chunk method 6): JPEG XL, JPEG-LS and pcodec round trips, choice, damage, plumbing.

Layouts (little endian), from the docstrings of `shardzip.format.chunk` and `shardzip.format.classical`:

- chunk: b"SZ" | version u8 | method u8 (6) | crc32 of the raw chunk u32 | payload;
- method 6 payload: codec id u8 (1 jpegxl, 2 jpegls, 3 pcodec) | crc32 u32 of the codec's bytes | codec's bytes;
- image codecs' bytes: ndim u8 | axes u8 * ndim | interleaved u8 | sample bytes u8 | offset u64 | mosaic columns u32
  | codestream.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from conftest import examples
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shardzip.errors import ChunkChecksumError, FormatError
from shardzip.format.chunk import CLASSICAL, METHODS, PARTIAL, decode_chunk, encode_chunk
from shardzip.format.classical import CODECS, decode_classical, default_candidates, encode_classical

skdata = pytest.importorskip("skimage.data")

CHUNK_HEAD = struct.Struct("<2sBBI")
ENVELOPE = struct.Struct("<BI")
IMAGE_TAIL = struct.Struct("<BBQI")
IDS = {"jpegxl": 1, "jpegls": 2, "pcodec": 3}
LAYOUTS = {2: ["HW", None], 3: ["CHW", "HWC", "NHW", None], 4: ["NCHW", "NHWC", None]}


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shape, dtype (up to byte order) and values bit for bit (NaN payloads and -0.0 included)."""
    native = a.dtype.newbyteorder("=")
    return (a.shape == b.shape and b.dtype.newbyteorder("=") == native
            and np.ascontiguousarray(a.astype(native)).tobytes() == np.ascontiguousarray(b.astype(native)).tobytes())


def _chunk(payload: bytes, raw: np.ndarray) -> bytes:
    """A complete method-6 chunk around `payload` for the values `raw`."""
    return CHUNK_HEAD.pack(b"SZ", 1, CLASSICAL, zlib.crc32(np.ascontiguousarray(raw).astype(
        raw.dtype.newbyteorder("<")).tobytes())) + payload


def _reseal(payload: bytes, body: bytes) -> bytes:
    """`payload`'s codec id with another body and a *valid* CRC32 of it (a deliberate forgery)."""
    return ENVELOPE.pack(payload[0], zlib.crc32(body)) + body


# ---------------------------------------------------------------- round trips, property tests
@examples(30)
@given(hnp.arrays(st.sampled_from(["u1", "i1", "<u2", ">i2", "<u4", "i4", "u8", ">i8", "f2", "<f4", ">f8"]),
                  hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=12)))
def test_pcodec_round_trips_every_supported_dtype_bit_exactly(x):
    payload = encode_classical("pcodec", x, None)
    assert payload is not None and payload[0] == IDS["pcodec"]
    assert _same_bits(x, decode_classical(payload, x.shape, x.dtype))


@st.composite
def images(draw, dtypes=("u1", "<u2", ">u2")):
    ndim = draw(st.integers(2, 4))
    layout = draw(st.sampled_from(LAYOUTS[ndim]))
    shape = []
    for i in range(ndim):
        letter = layout[i] if layout else "?"
        shape.append(draw(st.sampled_from([1, 2, 3, 4, 5])) if letter == "C" else draw(st.integers(1, 13)))
    x = draw(hnp.arrays(st.sampled_from(dtypes), tuple(shape)))
    return x, layout


@examples(30)
@given(st.sampled_from(["jpegxl", "jpegls"]), images())
def test_image_codecs_round_trip_uint8_and_uint16_bit_exactly(name, case):
    x, layout = case
    payload = encode_classical(name, x, layout)
    assert payload is not None and payload[0] == IDS[name]
    assert _same_bits(x, decode_classical(payload, x.shape, x.dtype))  # the layout is not needed to decode


@examples(20)
@given(st.sampled_from(["jpegxl", "jpegls"]), st.sampled_from(["i1", "<i2", ">i4", "u4", "<i8"]),
       st.integers(-2**31, 2**31 - 1), st.integers(0, 70000), st.data())
def test_image_codecs_code_any_integer_dtype_whose_values_span_under_2_16(name, dtype, lo, span, data):
    info = np.iinfo(dtype)
    lo = min(max(lo, int(info.min)), int(info.max))
    hi = min(lo + span, int(info.max))
    x = data.draw(hnp.arrays(dtype, (data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))),
                             elements=st.integers(lo, hi)))
    payload = encode_classical(name, x, "HW")
    if int(x.max()) - int(x.min()) >= 1 << 16:
        assert payload is None  # not exact in 16-bit samples: no candidate
    else:
        assert payload is not None and _same_bits(x, decode_classical(payload, x.shape, x.dtype))


def test_codecs_that_cannot_take_a_chunk_say_so():
    assert encode_classical("jpegxl", np.zeros(10, np.uint8), None) is None  # 1-d: no rows and columns
    assert encode_classical("jpegls", np.zeros((4, 4), np.float32), "HW") is None
    assert encode_classical("pcodec", np.zeros((4, 4), bool), None) is None
    assert encode_classical("pcodec", np.zeros((0, 4), np.int32), None) is None
    with pytest.raises(FormatError, match="unknown classical codec"):
        encode_classical("png", np.zeros((4, 4), np.uint8), "HW")
    with pytest.raises(FormatError, match="unknown classical codec"):
        encode_chunk(np.zeros((4, 4), np.uint8), classical=("jpegxl", "webp"))


def test_default_candidates_follow_the_kind_of_array():
    assert default_candidates(np.uint8, (512, 512, 3), "HWC") == ("jpegxl", "jpegls")
    assert default_candidates(np.uint16, (10, 1, 64, 64), "NCHW") == ("jpegxl", "jpegls")
    assert default_candidates(np.int16, (5, 187, 489), "CHW") == ("jpegxl", "jpegls", "pcodec")
    assert default_candidates(np.uint8, (300, 400), None) == ("jpegxl", "jpegls", "pcodec")
    assert default_candidates(np.float32, (360, 500), "HW") == ("pcodec",)
    assert default_candidates(np.int64, (1000,), None) == ("pcodec",)
    assert default_candidates(np.dtype("<U4"), (10,), None) == ()
    assert default_candidates(bool, (10, 10), None) == ()
    assert set(CODECS) == set(IDS) and all(CODECS[n].codec_id == i for n, i in IDS.items())


# ---------------------------------------------------------------- chunk method 6 on real photographs
@pytest.mark.parametrize("name", ["astronaut", "camera"])
def test_encode_chunk_keeps_jpegxl_on_a_photograph_and_it_decodes_bit_exactly(name):
    x = getattr(skdata, name)()
    layout = "HWC" if x.ndim == 3 else "HW"
    data, stats = encode_chunk(x, layout=layout, classical=default_candidates(x.dtype, x.shape, layout))
    assert data[3] == CLASSICAL and data[CHUNK_HEAD.size] == IDS["jpegxl"]
    assert stats.method == "classical" and stats.classical == "jpegxl" and stats.coded_bytes == len(data)
    assert stats.coded_bytes < 0.8 * stats.zstd_bytes
    assert set(stats.classical_bytes) == {"jpegxl", "jpegls"} and stats.classical_bytes["jpegls"] > len(data) - 8
    for lay in (layout, None):  # decodes without the array's layout (stores without a model record none)
        back = decode_chunk(data, x.shape, x.dtype, lay)
        assert back.dtype == x.dtype and np.array_equal(back, x)


def test_without_classical_candidates_nothing_changes():
    x = skdata.camera()[:64, :64]
    data, stats = encode_chunk(x)
    assert stats.method == "zstd" and stats.classical is None and stats.classical_bytes is None
    assert np.array_equal(decode_chunk(data, x.shape, x.dtype), x)


def test_an_edge_chunk_wraps_a_classical_chunk_and_decodes_to_the_full_chunk():
    x = skdata.camera()[:100, :120]
    data, stats = encode_chunk(x, layout="HW", full_shape=(128, 128), classical=("jpegxl", "jpegls"))
    assert data[3] == PARTIAL and stats.method == "classical" and stats.classical in ("jpegxl", "jpegls")
    assert data[CHUNK_HEAD.size + 9 + 3] == CLASSICAL  # edge header: ndim u8 + 2 x u32, then the inner chunk
    back = decode_chunk(data, (128, 128), x.dtype)
    assert np.array_equal(back[:100, :120], x) and not back[100:].any() and not back[:, 120:].any()


def test_a_float_raster_can_be_kept_by_pcodec():
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.integers(-3, 4, (96, 96)), axis=1).astype(np.float32) * np.float32(0.5)
    data, stats = encode_chunk(x, layout="HW", classical=default_candidates(x.dtype, x.shape, "HW"))
    assert stats.method in ("classical", "masked") and stats.classical_bytes.keys() == {"pcodec"}
    assert stats.coded_bytes <= CHUNK_HEAD.size + min(stats.zstd_bytes, stats.classical_bytes["pcodec"])
    assert _same_bits(x, decode_chunk(data, x.shape, x.dtype))


def test_classical_is_a_method_name():
    assert METHODS[CLASSICAL] == "classical"


# ---------------------------------------------------------------- damaged and forged bytes
def _payloads() -> list[tuple[str, np.ndarray, bytes]]:
    grey = np.ascontiguousarray(skdata.camera()[200:248, 200:264])
    rgb = np.ascontiguousarray(skdata.astronaut()[100:140, 100:150])
    out = [(name, x, encode_classical(name, x, lay)) for name in ("jpegxl", "jpegls")
           for x, lay in ((grey, "HW"), (rgb, "HWC"))]
    out.append(("pcodec", grey.astype(np.int32) - 100, encode_classical("pcodec", grey.astype(np.int32) - 100, None)))
    return out


PAYLOADS = _payloads()


@pytest.mark.parametrize("case", range(len(PAYLOADS)))
def test_damaged_classical_chunks_raise_a_format_error(case):
    name, x, payload = PAYLOADS[case]
    assert np.array_equal(decode_chunk(_chunk(payload, x), x.shape, x.dtype), x)
    body = payload[ENVELOPE.size:]
    mid = len(payload) // 2
    damaged = {
        "flipped byte": payload[:mid] + bytes([payload[mid] ^ 0x10]) + payload[mid + 1:],
        "truncated": payload[:mid],
        "header only": payload[:3],
        "crc of the codec bytes": payload[:1] + bytes([payload[1] ^ 1]) + payload[2:],
        # forgeries: the codec library itself sees bad bytes (valid CRC32 of the codec's bytes)
        "codestream cut (resealed)": _reseal(payload, body[:len(body) // 2]),
        "codestream flipped (resealed)": _reseal(payload, body[:-40] + bytes(b ^ 0x5A for b in body[-40:])),
        "empty body (resealed)": _reseal(payload, b""),
    }
    for what, data in damaged.items():
        with pytest.raises(FormatError):
            decode_chunk(_chunk(data, x), x.shape, x.dtype)
        if "resealed" not in what:  # the payload alone, without the chunk's CRC32 of the raw values
            with pytest.raises(FormatError):
                decode_classical(data, x.shape, x.dtype)
        else:  # a codec may read forged bytes as other values (the chunk's CRC32 catches those), never crash
            try:
                decode_classical(data, x.shape, x.dtype)
            except FormatError:
                pass


@examples(25, derandomize=True)
@given(st.integers(0, len(PAYLOADS) - 1), st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)),
                                                  min_size=1, max_size=4), st.booleans())
def test_bit_flips_anywhere_raise_a_format_error_or_decode_exactly(case, flips, reseal):
    name, x, payload = PAYLOADS[case]
    data = bytearray(payload)
    for pos, mask in flips:
        data[pos % len(data)] ^= mask
    if reseal and data[0] in IDS.values():
        data = bytearray(_reseal(bytes(data), bytes(data[ENVELOPE.size:])))
    try:
        back = decode_chunk(_chunk(bytes(data), x), x.shape, x.dtype)
    except FormatError:
        return
    assert np.array_equal(back, x)


def test_a_jpegls_stream_cut_short_fails_fast():
    import time

    name, x, payload = PAYLOADS[2]  # CharLS 2.4 spends ~5 s on a truncated stream before it fails
    body = payload[ENVELOPE.size:]
    for cut in (len(body) // 2, len(body) - 1):
        t0 = time.perf_counter()
        with pytest.raises(ChunkChecksumError, match="EOI"):
            decode_classical(_reseal(payload, body[:cut]), x.shape, x.dtype)
        assert time.perf_counter() - t0 < 1.0


def test_image_headers_that_do_not_fit_the_chunk_raise_before_decoding():
    name, x, payload = PAYLOADS[0]  # jpegxl, a 48 x 64 grey tile
    body = payload[ENVELOPE.size:]
    ndim = body[0]
    axes, tail, stream = body[1:1 + ndim], body[1 + ndim:1 + ndim + IMAGE_TAIL.size], body[1 + ndim + IMAGE_TAIL.size:]
    interleaved, width, offset, cols = IMAGE_TAIL.unpack(tail)
    forged = {
        "ndim": bytes([3]) + body[1:],
        "axes not a permutation": bytes([ndim, 0, 0]) + body[1 + ndim:],
        "sample bytes": bytes([ndim]) + axes + IMAGE_TAIL.pack(interleaved, 3, offset, cols) + stream,
        "interleaved 2-d": bytes([ndim]) + axes + IMAGE_TAIL.pack(1, width, offset, cols) + stream,
        "mosaic columns 0": bytes([ndim]) + axes + IMAGE_TAIL.pack(interleaved, width, offset, 0) + stream,
        "mosaic columns huge": bytes([ndim]) + axes + IMAGE_TAIL.pack(interleaved, width, offset, 2**32 - 1) + stream,
        "offset past the dtype": bytes([ndim]) + axes + IMAGE_TAIL.pack(interleaved, width, 1 << 8, cols) + stream,
        "16-bit samples": bytes([ndim]) + axes + IMAGE_TAIL.pack(interleaved, 2, offset, cols) + stream,
        "codestream of a larger image": bytes([ndim]) + axes + tail + encode_classical(
            name, np.ascontiguousarray(skdata.camera()), "HW")[ENVELOPE.size + 1 + ndim + IMAGE_TAIL.size:],
    }
    for what, forged_body in forged.items():
        with pytest.raises(FormatError):
            decode_classical(_reseal(payload, forged_body), x.shape, x.dtype)
        assert what


def test_a_pcodec_stream_of_more_or_fewer_values_than_the_chunk_raises():
    name, x, payload = PAYLOADS[-1]
    for n in (x.size - 1, x.size + 1, 10 * x.size):
        other = encode_classical("pcodec", np.arange(n, dtype=np.int32), None)
        with pytest.raises(ChunkChecksumError):
            decode_classical(other, x.shape, x.dtype)
    with pytest.raises(ChunkChecksumError):  # another dtype in the stream than the array's
        decode_classical(encode_classical("pcodec", x.astype(np.float32), None), x.shape, x.dtype)


def test_an_unknown_codec_id_raises_a_format_error():
    name, x, payload = PAYLOADS[0]
    for codec_id in (0, 4, 255):
        data = bytes([codec_id]) + payload[1:]
        with pytest.raises(FormatError, match="unknown classical codec id"):
            decode_chunk(_chunk(data, x), x.shape, x.dtype)


# ---------------------------------------------------------------- plumbing: plans, specs, summaries
def test_plans_name_their_classical_codecs_and_old_plans_still_load():
    import zarr

    from shardzip.pipeline.plan import ArrayPlan, plan_array

    photos = zarr.create_array(store={}, shape=(4, 3, 64, 64), dtype="uint8", chunks=(2, 3, 64, 64))
    plan = plan_array("photos", photos, None, None)
    assert plan.layout == "NCHW" and plan.classical == ("jpegxl", "jpegls")
    field = zarr.create_array(store={}, shape=(50, 60), dtype="float32", chunks=(50, 60))
    assert plan_array("t2m", field, None, None).classical == ("pcodec",)
    d = plan.as_dict()
    assert d["classical"] == ["jpegxl", "jpegls"] and ArrayPlan.from_dict(d) == plan
    del d["classical"]
    assert ArrayPlan.from_dict(d).classical == ()


def test_the_summary_counts_classical_chunks():
    from shardzip.pipeline.jobs import format_summary

    methods = dict.fromkeys(METHODS.values(), 0) | {"model": 2, "classical": 5}
    manifest = {"dst": "out.szip", "job_id": "j", "model": {"name": "idf", "sha256": "0" * 64},
                "profile": {"device": "cpu", "numerics": "exact-2"}, "verified": True,
                "arrays": {"images": {"shape": [7, 1, 28, 28], "dtype": "|u1", "dims": 5488, "coded_bytes": 900,
                                      "zstd_bytes": 1000, "raw_bytes": 5488, "nll_bpd": None, "model": "0" * 64,
                                      "chunks_by_method": methods}}}
    text = format_summary(manifest)
    assert "model/zstd/raw/masked/classical" in text and "2/0/0/0/5" in text
