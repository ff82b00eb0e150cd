"""The compressed format's parts on their own: layouts, chunks (with fallback and CRC32), shards, codec."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_DATA
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shardzip.errors import ChunkChecksumError, FormatError, NumericsError, ShardzipError, SourceError
from shardzip.format import shard as shardfmt
from shardzip.format.chunk import Packing, decode_chunk, encode_chunk
from shardzip.format.codec import ShardzipCodec
from shardzip.format.layout import from_images, infer_layout, to_images
from shardzip.format.weights import decode_device

MNIST = np.load(TEST_DATA / "mnist_test_64.npy")


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
    codec = ShardzipCodec(model="ab" * 32, family="idf", layout="NCHW", profile={"device": "cpu"}, zstd_level=5,
                          array="test/chelsea")
    again = ShardzipCodec.from_dict(codec.to_dict())
    assert again.to_dict() == codec.to_dict() and again.array == "test/chelsea"
    # stores written before the `array` field: read as not recorded, and written back without it
    old = {"name": "shardzip", "configuration": {"model": None, "family": None, "layout": None, "profile": {},
                                                 "zstd_level": 9, "packing": None}}
    assert ShardzipCodec.from_dict(old).array is None and ShardzipCodec.from_dict(old).to_dict() == old
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


@pytest.fixture(scope="module")
def dbzh(tmp_path_factory) -> tuple[np.ndarray, dict]:
    """Real radar reflectivity (ODIM sweep 2, 0.01 dBZ steps, -9999 no echo) and its attributes."""
    pytest.importorskip("h5py")
    import zarr
    from conftest import package_file

    from shardzip.importers.odim import import_odim

    path = tmp_path_factory.mktemp("radar") / "radar.zarr"
    import_odim(package_file("pyart", "testing/data/example_radar.polar.fikor.h5"), path)
    arr = zarr.open_group(str(path), mode="r")["sweep2/DBZH"]
    return arr[60:300, :], dict(arr.attrs)  # ODIM: nodata -9999


@pytest.fixture(scope="module")
def damaged_store(tmp_path_factory, dbzh) -> tuple[Path, np.ndarray, Exception]:
    """A radar store as shardzip writes it (group, sharded array "sweep2/DBZH" of 240 x 500, chunks of 120 x 128
    coded by msp-radar, 1 x 2 chunks per shard, the codec recording the array's path), with a byte in the middle
    of inner chunk (0, 1) of shard (1, 1) flipped: chunk (1, 3) of the array's chunk grid. Also the error that
    decoding that chunk's bytes alone raises."""
    import zarr

    from shardzip.catalog import load_catalog
    from shardzip.format.weights import numerics_profile

    x, attrs = dbzh
    root = tmp_path_factory.mktemp("damaged") / "radar.szip"
    packing = Packing.from_attrs(attrs).as_dict()
    codec = ShardzipCodec(model=load_catalog().model("msp-radar").sha256, family="msp", layout="HW",
                          profile=numerics_profile(), packing=packing, array="sweep2/DBZH")
    g = zarr.open_group(str(root), mode="w", zarr_format=3)
    a = g.create_array("sweep2/DBZH", shape=x.shape, dtype=x.dtype, chunks=(120, 128), shards=(120, 256),
                       serializer=codec, compressors=None, filters=None, fill_value=packing["fill"],
                       dimension_names=["ray", "gate"])
    a[...] = x
    key = root / shardfmt.shard_key("sweep2/DBZH", (1, 1))
    blob = bytearray(key.read_bytes())
    assert shardfmt.unpack_shard(bytes(blob), 2)[1][3] == 5  # coded by the model (a model container)
    (_, _), (offset, size) = np.frombuffer(bytes(blob[-(2 * 16 + 4):-4]), "<u8").reshape(2, 2)
    blob[int(offset) + int(size) // 2] ^= 0x5A
    key.write_bytes(bytes(blob))
    with pytest.raises(ShardzipError) as direct:
        decode_chunk(shardfmt.unpack_shard(bytes(blob), 2)[1], (120, 128), x.dtype, "HW", codec._model,
                     Packing(**packing))
    return root, x, direct.value


def _store_copy(tmp_path, damaged_store, recorded: bool) -> Path:
    """The damaged store; without `recorded`, its codec configuration as stores written before the field have it."""
    import json
    import shutil

    root = tmp_path / "radar.szip"
    shutil.copytree(damaged_store[0], root)
    if not recorded:
        meta = root / "sweep2" / "DBZH" / "zarr.json"
        doc = json.loads(meta.read_text())
        inner = doc["codecs"][0]["configuration"]["codecs"][0]
        assert inner["name"] == "shardzip" and inner["configuration"].pop("array") == "sweep2/DBZH"
        meta.write_text(json.dumps(doc))
    return root


def _settle_zarr() -> None:
    """Wait for the chunk decodes zarr still runs after a read raised on its first failing chunk (its other
    chunks go on decoding in zarr's event loop), so that no later test meets them."""
    import asyncio

    from zarr.core.sync import sync

    async def drain() -> None:
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.gather(*pending, return_exceptions=True)

    sync(drain())


@pytest.mark.parametrize("recorded", [True, False], ids=["array-recorded", "older-store"])
def test_reading_a_damaged_chunk_names_the_array_the_chunk_and_what_to_do(tmp_path, damaged_store, recorded):
    """Read with plain zarr (and xarray), a damaged chunk raises the error decoding raised (same class, so callers
    that catch it keep working), its message naming the array, the shard and the chunk as `shardzip verify`
    does, and what to do. Stores written without the codec's `array` field name the array from the shard key."""
    import zarr

    _, x, direct = damaged_store
    root = _store_copy(tmp_path, damaged_store, recorded)
    where = "array sweep2/DBZH shard (1, 1) (key sweep2/DBZH/c/1/1): chunk (1, 3) (inner chunk (0, 1) of the shard): "
    arr = zarr.open(str(root), mode="r")["sweep2/DBZH"]
    for window in (np.s_[120:240, 384:500], np.s_[200, 400], np.s_[100:200, 300:500]):  # 1, 1 and 4 chunks
        with pytest.raises(type(direct)) as info:
            arr[window]
        message = str(info.value)
        assert message.startswith(where + str(direct)), message
        assert f"shardzip verify {root}" in message and "backup" in message
        assert info.value.array == "sweep2/DBZH" and info.value.chunk == (1, 3)
        _settle_zarr()
    assert arr[120:, 256:384].tobytes() == x[120:, 256:384].tobytes()  # the rest reads as ever
    xr = pytest.importorskip("xarray")
    ds = xr.open_zarr(str(root), group="sweep2", consolidated=False)
    with pytest.raises(type(direct), match=re.escape(where)):
        _ = ds["DBZH"][120:240, 384:500].values  # one chunk: no other dask task goes on decoding after it
    _settle_zarr()


def test_a_damaged_chunk_is_still_named_by_its_place_in_its_shard_where_zarr_does_not_say_which_shard(
        tmp_path, damaged_store, monkeypatch):
    """The shard comes from a small wrapper of zarr's sharding codec (it notes the shard's key); with another zarr,
    where it is not installed, the message still names the array and the chunk's place in its shard."""
    import zarr
    from zarr.codecs.sharding import ShardingCodec

    from shardzip.format import codec as codec_module

    assert codec_module.NOTES_SHARD_KEYS and codec_module._note_shard_keys()  # installed once, idempotent
    wrapped = ShardingCodec.__dict__["_decode_partial_single"]
    assert wrapped.__wrapped__ is not wrapped
    root, direct = _store_copy(tmp_path, damaged_store, True), damaged_store[2]
    monkeypatch.setattr(ShardingCodec, "_decode_partial_single", wrapped.__wrapped__)
    with pytest.raises(type(direct), match=re.escape("array sweep2/DBZH inner chunk (0, 1) of one of its shards: ")):
        zarr.open(str(root), mode="r")["sweep2/DBZH"][120:240, 384:500]
    _settle_zarr()


def test_chunk_and_shard_keys_give_array_and_block():
    from shardzip.format.codec import _block_of_key

    assert _block_of_key("images/c/2/0/0/0", 4) == ("images", (2, 0, 0, 0))
    assert _block_of_key("test/chelsea/c/0/1/0", 3) == ("test/chelsea", (0, 1, 0))
    assert _block_of_key("c/3/1", 2) == ("", (3, 1))
    assert _block_of_key("sweep1/DBZH/c.3.1", 2) == ("sweep1/DBZH", (3, 1))
    assert _block_of_key("sweep1/DBZH/3.1", 2) == ("sweep1/DBZH", (3, 1))
    assert _block_of_key("c", 0) == ("", ())
    assert _block_of_key("images/zarr.json", 2) is None and _block_of_key("a/c/1/x", 2) is None
