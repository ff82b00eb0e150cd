"""Radar sweep sequences: a CF/Radial file of repeated sector scans -> one (T, Y, X) array per moment.

A raster or sector-scanning radar sweeps the same sector again and again; each sweep is one frame.
Sweeps hold different numbers of rays (and alternate direction), so every frame takes `rays` of its
sweep's rays: the sweep's rays in azimuth order, at evenly spaced ranks (row i of every frame is at
the same relative position across the sector; no ray is used twice, none is interpolated: every
value in the output is one the radar stored). The stored integers stay packed (`scale_factor`, `add_offset`,
`_FillValue` kept) in group `moments`; each array gets `shardzip_layout: TYX` so shardzip codes it as
a sequence; the source ray of every (frame, row) (`ray_index`) and its azimuth are kept at the root,
so the mapping back to the file's rays is exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shardzip.errors import ImportDataError
from shardzip.importers.common import require_file, write_array
from shardzip.importers.netcdf import read_variables


def import_radar_sequence(path: str | Path, store: str | Path, rays: int | None = None) -> dict[str, tuple]:
    """Write every (time, range) moment of CF/Radial `path` as a (sweep, ray, gate) sequence into `store`."""
    import zarr

    src = require_file(path, "CF/Radial file")
    try:
        var = {name: (data, attrs, dims) for name, data, attrs, dims in read_variables(src)[0]}
    except ImportDataError:  # already names the file and what is wrong
        raise
    except Exception as exc:  # noqa: BLE001 - h5py/scipy raise many types for a bad file
        raise ImportDataError(f"{src}: not a readable CF/Radial netCDF file: {exc}") from exc
    need = ("azimuth", "sweep_start_ray_index", "sweep_end_ray_index")
    missing = [n for n in need if n not in var]
    if missing:
        raise ImportDataError(f"{src}: no {', '.join(missing)}: not a CF/Radial file with sweeps")
    az = var["azimuth"][0].astype(np.float64)
    starts, ends = var["sweep_start_ray_index"][0].astype(int), var["sweep_end_ray_index"][0].astype(int)
    if len(starts) < 2:
        raise ImportDataError(f"{src}: {len(starts)} sweep(s); a sequence needs at least 2")
    n = rays or min(int(e - s + 1) for s, e in zip(starts, ends, strict=True))
    index = []
    for s, e in zip(starts, ends, strict=True):
        order = s + np.argsort(az[s:e + 1], kind="stable")
        index.append(order[np.round(np.linspace(0, e - s, n)).astype(int)])
    index = np.stack(index)  # [T, rays]: the source ray of each (frame, row), distinct within a frame
    n_rays = az.shape[0]
    root = zarr.open_group(str(store), mode="a")
    root.attrs.update({"source": src.name, "kind": "radar sweep sequence",
                       "description": __doc__.split("\n\n")[1].replace("\n", " ")})
    write_array(root, "ray_index", index.astype(np.int32), {"long_name": "source ray of each (sweep, row)"},
                ["sweep", "ray"])
    write_array(root, "azimuth", az[index].astype(var["azimuth"][0].dtype), dict(var["azimuth"][1]), ["sweep", "ray"])
    out = {"ray_index": index.shape, "azimuth": index.shape}
    moments = root.require_group("moments")
    for name, (data, attrs, dims) in sorted(var.items()):
        if data.ndim != 2 or data.shape[0] != n_rays or data.dtype.kind not in "iuf" or dims[0] != "time":
            continue
        seq = np.ascontiguousarray(data[index])  # [T, rays, gates]
        attrs = dict(attrs)
        attrs["shardzip_layout"] = "TYX"
        write_array(moments, name, seq, attrs, ["sweep", "ray", dims[1]])
        out[f"moments/{name}"] = seq.shape
    if len(out) == 1:
        raise ImportDataError(f"{src}: no (time, range) moments to import")
    return out

