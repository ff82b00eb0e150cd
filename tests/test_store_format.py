"""The compressed format's parts on their own: layouts, chunks (with fallback and CRC32), shards, codec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shardzip.errors import ChunkChecksumError, FormatError, NumericsError, SourceError
from shardzip.format import shard as shardfmt
from shardzip.format.chunk import Packing, decode_chunk, encode_chunk
from shardzip.format.codec import ShardzipCodec
from shardzip.format.layout import from_images, infer_layout, to_images
from shardzip.format.weights import decode_device

MNIST = np.load(Path(__file__).parent / "data" / "mnist_test_64.npy")


@given(st.sampled_from(["NCHW", "NHWC", "NHW", "CHW", "HWC", "HW", "TYX", "TCYX"]), st.data())
def test_layouts_round_trip(layout, data):
    shape = tuple(data.draw(st.integers(1, 4)) for _ in layout)
    x = data.draw(hnp.arrays(np.uint8, shape))
    images = to_images(x, layout)
    assert images.ndim == 4
    assert np.array_equal(from_images(images, layout), x)


def test_layout_inference_and_bad_layout():
    assert infer_layout((64, 1, 28, 28)) == "NCHW"
    assert infer_layout((10, 28, 28)) == "NHW"
    assert infer_layout((3, 512, 512)) == "CHW"
    assert infer_layout((512, 512, 3)) == "HWC"
    assert infer_layout((100,)) is None
    with pytest.raises(SourceError, match="layout"):
        to_images(np.zeros((2, 2)), "NCHW")


@given(hnp.arrays(st.sampled_from([np.uint8, np.uint16, np.int16, np.float32, np.int64]),
                  hnp.array_shapes(min_dims=1, max_dims=3, max_side=9)))
def test_chunks_without_model_round_trip_any_dtype(x):
    data, stats = encode_chunk(x)
    assert stats.method in ("zstd", "raw") and stats.coded_bytes == len(data)
    back = decode_chunk(data, x.shape, x.dtype)
    assert back.dtype == x.dtype and np.array_equal(back, x, equal_nan=x.dtype.kind == "f")


def test_model_chunk_round_trips_mnist_and_is_never_worse_than_zstd():
    from shardzip.models import load_catalog_model

    model = load_catalog_model("idf-mnist")
    x = MNIST[:16]
    data, stats = encode_chunk(x, model, "NCHW")
    assert stats.coded_bytes <= stats.zstd_bytes + 8
    assert stats.model_bytes is not None and stats.nll_bits is not None
    assert np.array_equal(decode_chunk(data, x.shape, x.dtype, "NCHW", lambda: model), x)


def test_damaged_chunk_is_detected():
    data, _ = encode_chunk(MNIST[:4])
    bad = bytearray(data)
    bad[5] ^= 0xFF  # inside the stored CRC32
    with pytest.raises(ChunkChecksumError):
        decode_chunk(bytes(bad), MNIST[:4].shape, np.uint8)
    with pytest.raises(FormatError, match="not a shardzip chunk"):
        decode_chunk(b"XX" + data[2:], MNIST[:4].shape, np.uint8)
    with pytest.raises(FormatError, match="shorter"):
        decode_chunk(data[:5], MNIST[:4].shape, np.uint8)


@given(st.lists(st.one_of(st.none(), st.binary(max_size=40)), min_size=1, max_size=12))
def test_shards_pack_and_unpack(chunks):
    blob = shardfmt.pack_shard(chunks)
    back = shardfmt.unpack_shard(blob, len(chunks))
    assert [None if b is None else bytes(b) for b in back] == chunks


def test_damaged_shard_index_is_detected():
    blob = bytearray(shardfmt.pack_shard([b"abc", None, b"de"]))
    blob[-10] ^= 1
    with pytest.raises(FormatError, match="CRC32C"):
        shardfmt.unpack_shard(bytes(blob), 3)


def test_zarr_reads_shards_written_by_shardzip(tmp_path):
    """Our hand-packed shards follow zarr v3's sharding layout: zarr itself decodes them."""
    import zarr

    x = MNIST[:40]
    arr = zarr.create_array(store=str(tmp_path), shape=x.shape, dtype=x.dtype, chunks=(8, 1, 28, 28),
                            shards=(16, 1, 28, 28), serializer=ShardzipCodec(), compressors=None, filters=None,
                            fill_value=0)
    for s in range(3):
        chunks = []
        for c in range(2):
            lo = s * 16 + c * 8
            chunks.append(encode_chunk(x[lo:lo + 8])[0] if lo < 40 else None)
        (tmp_path / "c" / str(s) / "0" / "0").mkdir(parents=True, exist_ok=True)
        (tmp_path / "c" / str(s) / "0" / "0" / "0").write_bytes(shardfmt.pack_shard(chunks))
    assert np.array_equal(zarr.open_array(str(tmp_path), mode="r")[:], x)
    assert np.array_equal(arr[17:23], x[17:23])


def test_codec_configuration_round_trips():
    codec = ShardzipCodec(model="ab" * 32, family="idf", layout="NCHW", profile={"device": "cpu"}, zstd_level=5)
    again = ShardzipCodec.from_dict(codec.to_dict())
    assert again.to_dict() == codec.to_dict()
    with pytest.raises(ValueError):
        ShardzipCodec.from_dict({"name": "bytes"})


def test_store_coded_on_cuda_is_refused_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(NumericsError, match="CUDA"):
        decode_device({"device": "cuda", "dtype": "float32", "torch": torch.__version__})


def test_cf_packed_floats_are_coded_as_integers_with_a_fill_and_nan_mask():
    rng = np.random.default_rng(0)
    ints = rng.integers(-300, 300, (64, 64))
    x = (ints * 0.5 + 10.0).astype(np.float32)
    x[:20] = -9999.0  # no data
    x[30, :5] = np.nan
    packing = Packing(scale_factor=0.5, add_offset=10.0, fill=-9999.0)
    data, stats = encode_chunk(x, packing=packing)
    assert stats.method == "masked" and stats.coded_bytes < stats.zstd_bytes
    back = decode_chunk(data, x.shape, x.dtype, packing=packing)
    assert back.tobytes() == x.tobytes()
    with pytest.raises(FormatError, match="scale_factor"):
        decode_chunk(data, x.shape, x.dtype)


@given(hnp.arrays(st.sampled_from([np.float32, np.float64]), hnp.array_shapes(max_dims=2, max_side=12),
                  elements=st.floats(width=32, allow_nan=True, allow_infinity=True)),
       st.sampled_from([None, 0.25, 0.1]), st.sampled_from([None, -9999.0, 0.0]))
@example(np.zeros(1, np.float32), None, 0.0)  # every value masked: no values at all (found by CI)
@example(np.full((2, 2), np.nan, np.float64), 0.5, None)
def test_float_chunks_round_trip_bit_exactly_whatever_the_packing(x, scale, fill):
    packing = Packing(scale_factor=scale, add_offset=0.0, fill=fill)
    data, _ = encode_chunk(x, packing=packing)
    assert decode_chunk(data, x.shape, x.dtype, packing=packing).tobytes() == x.tobytes()


def test_packing_from_cf_and_odim_attributes():
    assert Packing.from_attrs({"scale_factor": np.float32(0.5), "add_offset": 1, "_FillValue": -1}) == \
        Packing(0.5, 1.0, -1.0)
    assert Packing.from_attrs({"gain": 1.0, "offset": 0.0, "nodata": -9999.0}) == Packing(1.0, 0.0, -9999.0)
    assert Packing.from_attrs({}, fill_value=float("nan")) == Packing(None, 0.0, None)


def test_edge_chunks_code_only_their_valid_part_and_zarr_reads_them(tmp_path):
    """An edge chunk past the array's end is coded as its valid values alone (no padding coded)."""
    import zarr

    from shardzip.models import load_catalog_model

    model = load_catalog_model("idf-mnist")
    x = MNIST[:37]
    zarr.create_array(store=str(tmp_path), shape=x.shape, dtype=x.dtype, chunks=(8, 1, 28, 28),
                      shards=(40, 1, 28, 28), serializer=ShardzipCodec(model="unused-for-zstd-chunks"),
                      compressors=None, filters=None, fill_value=0)
    chunks, sizes = [], []
    for lo in range(0, 40, 8):
        data, stats = encode_chunk(x[lo:lo + 8], None if lo < 32 else model, "NCHW", full_shape=(8, 1, 28, 28))
        chunks.append(data)
        sizes.append(stats.coded_bytes)
    import struct

    assert chunks[-1][3] == 4 and struct.unpack_from("<B4I", chunks[-1], 8) == (4, 5, 1, 28, 28)  # 5 coded, not 8
    assert chunks[0][3] != 4  # whole chunks are not wrapped
    (tmp_path / "c" / "0" / "0" / "0").mkdir(parents=True)
    (tmp_path / "c" / "0" / "0" / "0" / "0").write_bytes(shardfmt.pack_shard(chunks))
    back = decode_chunk(chunks[-1], (8, 1, 28, 28), np.uint8, "NCHW", lambda: model)
    assert np.array_equal(back[:5], x[32:]) and not back[5:].any()
    assert np.array_equal(zarr.open_array(str(tmp_path), mode="r")[:], x)
