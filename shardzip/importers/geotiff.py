"""GeoTIFF scenes: all bands as one (bands, y, x) array in the native dtype, georeferencing kept.

Attributes: `nodata` (GDAL_NODATA, also as `_FillValue`), the affine `transform` from
ModelPixelScale + ModelTiepoint (or ModelTransformation), and the raw GeoKey directory, double and
ASCII parameters (the CRS, exactly as in the file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shardzip.errors import ImportDataError
from shardzip.importers.common import jsonable, require_file, write_array

GEO_TAGS = {33550: "model_pixel_scale", 33922: "model_tiepoint", 34264: "model_transformation",
            34735: "geokey_directory", 34736: "geo_double_params", 34737: "geo_ascii_params"}


def import_geotiff(path: str | Path, store: str | Path, name: str | None = None) -> dict[str, tuple[int, ...]]:
    import tifffile
    import zarr

    p = require_file(path, "GeoTIFF file")
    try:
        with tifffile.TiffFile(p) as tif:
            page = tif.pages[0]
            data = tif.series[0].asarray()
            tags = {GEO_TAGS[t.code]: jsonable(t.value) for t in page.tags.values() if t.code in GEO_TAGS}
            nodata = page.tags.get(42113)
            samples_last = page.planarconfig == 1 and page.samplesperpixel > 1
    except tifffile.TiffFileError as exc:
        raise ImportDataError(f"{p} is not a TIFF file: {exc}") from exc
    if "geokey_directory" not in tags:
        raise ImportDataError(f"{p} has no GeoKey directory: not a GeoTIFF (use `shardzip import images`)")
    if data.ndim == 3 and samples_last:
        data = np.ascontiguousarray(np.moveaxis(data, -1, 0))
    elif data.ndim == 2:
        data = data[np.newaxis]
    attrs: dict = {"source": p.name, **tags}
    if "model_pixel_scale" in tags and "model_tiepoint" in tags:
        sx, sy = tags["model_pixel_scale"][:2]
        i, j, _, x, y = tags["model_tiepoint"][:5]
        attrs["transform"] = [sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy]  # GDAL order: x = a*col + b*row + c
    if nodata is not None:
        value = str(nodata.value).strip("\x00 ")
        attrs["nodata"] = attrs["_FillValue"] = float(value) if data.dtype.kind == "f" else int(float(value))
    root = zarr.open_group(str(store), mode="a", zarr_format=3)
    key = name or p.stem
    write_array(root, key, data, attrs, ["band", "y", "x"])
    return {key: data.shape}
