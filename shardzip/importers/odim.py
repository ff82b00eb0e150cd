"""ODIM HDF5 radar volumes (OPERA): every sweep and moment as a zarr array, stored values kept exactly.

`datasetN/dataM/data` becomes `sweepN/<quantity>` (rays x gates) in its stored dtype (raw integers
stay integers); the moment's `what` attributes (gain, offset, nodata, undetect, quantity) are kept
as they are and mirrored in CF names (`scale_factor`, `add_offset`, `_FillValue`) so that xarray
decodes physical values; the sweep's and the volume's what/where/how become group attributes.
"""

from __future__ import annotations

from pathlib import Path

from shardzip.errors import ImportDataError
from shardzip.importers.common import jsonable, require_file, write_array


def _attrs(node) -> dict:
    return {k: jsonable(v) for k, v in node.attrs.items()}


def import_odim(path: str | Path, store: str | Path) -> dict[str, tuple[int, ...]]:
    import h5py
    import zarr

    p = require_file(path, "ODIM HDF5 file")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise ImportDataError(f"{p} is not an HDF5 file: {exc}") from exc
    out = {}
    with f:
        if "what" not in f or "object" not in f["what"].attrs:
            raise ImportDataError(f"{p} is HDF5 but not ODIM (no /what@object); use `shardzip import netcdf`?")
        root = zarr.open_group(str(store), mode="w", zarr_format=3)
        root.attrs.update({f"{sec}": _attrs(f[sec]) for sec in ("what", "where", "how") if sec in f})
        sweeps = sorted((k for k in f if k.startswith("dataset")), key=lambda k: int(k[7:]))
        if not sweeps:
            raise ImportDataError(f"{p}: no datasetN groups (sweeps) found")
        for s in sweeps:
            g = root.require_group(f"sweep{s[7:]}")
            g.attrs.update({sec: _attrs(f[s][sec]) for sec in ("what", "where", "how") if sec in f[s]})
            moments = sorted((k for k in f[s] if k.startswith("data")), key=lambda k: int(k[4:]))
            for m in moments:
                what = {**(_attrs(f[s]["what"]) if "what" in f[s] else {}), **_attrs(f[s][m]["what"])}
                qty = str(what.get("quantity", m))
                data = f[s][m]["data"][...]
                attrs = {**what, "odim_path": f"/{s}/{m}"}
                if "gain" in what:
                    attrs["scale_factor"] = what["gain"]
                    attrs["add_offset"] = what.get("offset", 0.0)
                if "nodata" in what:
                    attrs["_FillValue"] = what["nodata"]
                write_array(g, qty, data, attrs, ["azimuth", "range"] if data.ndim == 2 else None)
                out[f"sweep{s[7:]}/{qty}"] = data.shape
    return out
