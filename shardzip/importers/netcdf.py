"""CF netCDF files (netCDF4/HDF5 via h5py, classic netCDF3 via SciPy): numeric variables as stored.

Packed variables stay packed: the stored integers are written with their `scale_factor`,
`add_offset` and `_FillValue` attributes, so nothing is rounded; dimension names are kept for
xarray. Character and string variables are listed as skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shardzip.errors import ImportDataError
from shardzip.importers.common import jsonable, require_file, write_array

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _scalar(value):
    """netCDF stores scalar attributes as 1-element arrays in HDF5; netCDF readers give the scalar."""
    return value[0] if isinstance(value, np.ndarray) and value.shape == (1,) else value


def _h5_variables(f):
    import h5py

    for name, var in f.items():
        if not isinstance(var, h5py.Dataset) or var.attrs.get("CLASS") == b"DIMENSION_SCALE" and \
                "REFERENCE_LIST" not in var.attrs and var.shape == ():
            continue
        dims = []
        scale = var.attrs.get("CLASS") == b"DIMENSION_SCALE"  # a coordinate variable: its own dimension
        for i, d in enumerate(var.dims):
            if len(d):
                label = d[0].name.rsplit("/", 1)[-1]
            elif scale and var.ndim == 1:
                label = name
            else:
                label = d.label or f"dim{i}"
            dims.append(label)
        attrs = {k: _scalar(v) for k, v in var.attrs.items() if k not in (
            "DIMENSION_LIST", "REFERENCE_LIST", "CLASS", "NAME", "_Netcdf4Dimid", "_Netcdf4Coordinates")}
        yield name, var[...], attrs, dims


def _nc3_variables(path: Path):
    from scipy.io import netcdf_file

    with netcdf_file(str(path), "r", mmap=False, maskandscale=False) as f:
        for name, var in f.variables.items():
            yield name, np.array(var.data), dict(var._attributes), list(var.dimensions)


def read_variables(path: str | Path) -> tuple[list[tuple[str, np.ndarray, dict, list[str]]], dict]:
    """(name, values as stored, attributes, dimension names) of every variable, and the global attributes."""
    p = require_file(path, "netCDF file")
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head == HDF5_SIGNATURE:
        import h5py

        with h5py.File(p, "r") as f:
            return list(_h5_variables(f)), {k: jsonable(v) for k, v in f.attrs.items()}
    if head[:3] == b"CDF":
        return list(_nc3_variables(p)), {}
    raise ImportDataError(f"{p} is not a netCDF file (neither HDF5 nor CDF signature)")


def import_netcdf(path: str | Path, store: str | Path) -> dict[str, tuple[int, ...]]:
    import zarr

    p = require_file(path, "netCDF file")
    variables, global_attrs = read_variables(p)
    root = zarr.open_group(str(store), mode="w", zarr_format=3)
    root.attrs.update(global_attrs)
    out, skipped = {}, []
    for name, data, attrs, dims in variables:
        if data.dtype.kind not in "iufb":
            skipped.append(name)
            continue
        write_array(root, name, data, attrs, dims if len(dims) == data.ndim and len(set(dims)) == len(dims) else None)
        out[name] = data.shape
    if skipped:
        root.attrs["shardzip_skipped_variables"] = skipped
    if not out:
        raise ImportDataError(f"{p}: no numeric variables to import")
    return out
