"""The per-shard tasks that run on Dask workers: read, code, write the shard itself, return a record.

Shard bytes never travel through the client: a task reads its source region, codes each inner
chunk, writes the shard object to the destination, optionally decodes it back and compares, and
only then writes the shard's record (`_shardzip/records/...`, a `ShardRecord` as JSON), which is what `--resume`
trusts; the task returns the same `ShardRecord` to the client, which keeps it in the array's record table.
"""

from __future__ import annotations

import json
import os
import socket
import time
import zlib
from functools import lru_cache
from typing import Any

import numpy as np

from shardzip.coding.message import coder_seconds
from shardzip.errors import ChunkChecksumError, CodingError, FormatError, ShardzipError
from shardzip.format import shard as shardfmt
from shardzip.format.chunk import METHODS, Packing, decode_chunk, encode_chunk
from shardzip.format.records import EvalRecord, ShardRecord
from shardzip.format.store import Location, record_key
from shardzip.models.codec import decode_notes
from shardzip.numerics import FLOAT
from shardzip.pipeline.plan import EvalTask, ShardTask


def _freeze(options: dict[str, Any] | None) -> str:
    return json.dumps(options or {}, sort_keys=True, default=str)


@lru_cache(maxsize=64)
def _location(url: str, options: str) -> Location:
    return Location(url, json.loads(options))


@lru_cache(maxsize=64)
def _array(url: str, options: str, path: str):
    import zarr

    loc = _location(url, options)
    return zarr.open_array(store=loc.zarr_store(read_only=True), path=path, mode="r")


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"local:{socket.gethostname()}"


def region_crc(data: np.ndarray) -> int:
    arr = np.ascontiguousarray(data)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return zlib.crc32(arr.tobytes())


def _chunks_of(data: np.ndarray, origin: tuple[int, ...], shape: tuple[int, ...], spec: ShardTask):
    """(chunk index within the shard, the chunk's valid values or None) in C order."""
    chunk = spec.chunks
    per_shard = tuple(s // c for s, c in zip(spec.shards, chunk, strict=True))
    for idx in shardfmt.indices(per_shard):
        start = tuple(o + i * c for o, i, c in zip(origin, idx, chunk, strict=True))
        if any(st >= s for st, s in zip(start, shape, strict=True)):
            yield idx, None
            continue
        local = tuple(slice(st - o, min(st + c, s) - o) for st, o, c, s in zip(start, origin, chunk, shape,
                                                                                   strict=True))
        yield idx, data[local]  # edge chunks are coded as just their valid part (format.chunk method 4)


def compress_shard(spec: ShardTask) -> ShardRecord:
    """Code shard `spec.shard` of array `spec.array` from the source into the destination."""
    from shardzip.workers.plugin import worker_model

    t0, c0 = time.perf_counter(), coder_seconds()
    if os.environ.get("SHARDZIP_FAULT_DELAY"):  # fault injection for tests: slow shards, to kill a job mid-way
        time.sleep(float(os.environ["SHARDZIP_FAULT_DELAY"]))
    shape = spec.shape
    index = spec.shard
    reg = shardfmt.region(index, spec.shards, shape)
    data = np.asarray(_array(spec.src, _freeze(spec.src_options), spec.src_path)[reg])
    t_read = time.perf_counter() - t0
    model, device = (worker_model(spec.model) if spec.model else (None, "cpu"))
    packing = Packing(**spec.packing) if spec.packing else None
    coded, totals = [], {"nll_bits": 0.0, "zstd_bytes": 0, **{f"{m}_chunks": 0 for m in METHODS.values()}}
    origin = tuple(s.start for s in reg)
    for _, block in _chunks_of(data, origin, shape, spec):
        if block is None:
            coded.append(None)
            continue
        out, stats = encode_chunk(block, model, spec.layout, zstd_level=spec.zstd_level, packing=packing,
                                  full_shape=spec.chunks, numerics=spec.numerics,
                                  classical=tuple(spec.classical or ()))
        coded.append(out)
        totals[f"{stats.method}_chunks"] += 1
        totals["zstd_bytes"] += stats.zstd_bytes
        if stats.nll_bits is not None:
            totals["nll_bits"] += stats.nll_bits
    blob = shardfmt.pack_shard(coded)
    t_code, t_coder = time.perf_counter() - t0 - t_read, coder_seconds() - c0
    dst = _location(spec.dst, _freeze(spec.dst_options))
    key = shardfmt.shard_key(spec.array, index)
    dst.write_bytes(key, blob)
    crc = region_crc(data)
    verified = False
    if spec.verify:
        back = decode_shard(dst.read_bytes(key), spec, shape, index)
        if region_crc(back) != crc:
            raise ChunkChecksumError(f"array {spec.array or '/'} shard {index}: decoding the written shard "
                                     "does not give back the source values")
        verified = True
    record = ShardRecord(
        spec.array, index, len(blob), int(data.nbytes), int(data.size), totals["nll_bits"] if model else None,
        totals["zstd_bytes"], {m: totals[f"{m}_chunks"] for m in METHODS.values()}, crc, verified,
        time.perf_counter() - t0, t_read, t_code, t_coder, _worker_name(), device, spec.run)
    dst.write_json(record_key(spec.array, index), record.as_dict())
    return record


def decode_shard(blob: bytes, spec: ShardTask, shape: tuple[int, ...], index: tuple[int, ...]) -> np.ndarray:
    """The source values of shard `index`, decoded from its bytes (checks every chunk's CRC32).

    Errors name the array, the shard (index and store key) and a damaged chunk by its index in the
    array's chunk grid (and its place in the shard)."""
    from shardzip.workers.plugin import worker_model

    chunk = spec.chunks
    per_shard = tuple(s // c for s, c in zip(spec.shards, chunk, strict=True))
    where = f"array {spec.array or '/'} shard {index} (key {shardfmt.shard_key(spec.array, index)})"
    try:
        parts = shardfmt.unpack_shard(blob, int(np.prod(per_shard)))
    except ShardzipError as exc:
        raise type(exc)(f"{where}: {exc}") from exc
    reg = shardfmt.region(index, spec.shards, shape)
    out = np.empty(tuple(s.stop - s.start for s in reg), dtype=np.dtype(spec.dtype))
    loader = (lambda: worker_model(spec.model)[0]) if spec.model else None
    for part, idx in zip(parts, shardfmt.indices(per_shard), strict=True):
        start = tuple(r.start + i * c for r, i, c in zip(reg, idx, chunk, strict=True))
        if any(st >= s for st, s in zip(start, shape, strict=True)):
            continue
        grid_index = tuple(i * n + j for i, n, j in zip(index, per_shard, idx, strict=True))
        if part is None:
            raise FormatError(f"{where}: chunk {grid_index} (inner chunk {idx} of the shard) is missing")
        try:
            block = decode_chunk(part, chunk, np.dtype(spec.dtype), spec.layout, loader,
                                 Packing(**spec.packing) if spec.packing else None)
        except ShardzipError as exc:
            raise type(exc)(f"{where}: chunk {grid_index} (inner chunk {idx} of the shard): {exc}") from exc
        local = tuple(slice(st - r.start, min(st + c, s) - r.start) for st, r, c, s in zip(start, reg, chunk, shape,
                                                                                          strict=True))
        out[local] = block[tuple(slice(0, sl.stop - sl.start) for sl in local)]
    return out


def verify_shard(spec: ShardTask) -> dict:
    """Decode one committed shard and compare its CRC32 with the record written at compression.

    A shard that is missing, damaged or decodes to other values is reported (`ok` false, `error` naming
    array, shard and chunk), not raised: verify lists every bad shard."""
    t0 = time.perf_counter()
    shape, index = spec.shape, spec.shard
    dst = _location(spec.dst, _freeze(spec.dst_options))
    key = shardfmt.shard_key(spec.array, index)
    error, dims, raw_bytes = None, 0, 0
    try:
        with decode_notes() as notes:
            data = decode_shard(dst.read_bytes(key), spec, shape, index)
    except (FormatError, CodingError) as exc:  # damaged or missing bytes; I/O, cluster, numerics: raised
        error = str(exc)
    else:
        dims, raw_bytes = int(data.size), int(data.nbytes)
        if region_crc(data) != spec.crc32:
            error = (f"array {spec.array or '/'} shard {index} (key {key}): decodes to values whose CRC32 differs "
                     "from the source's in the manifest")
    return {"array": spec.array, "shard": list(index), "key": key, "ok": error is None, "error": error,
            "dims": dims, "raw_bytes": raw_bytes, "seconds": time.perf_counter() - t0, "worker": _worker_name(),
            "decoded": tally_decodes(notes)}


def tally_decodes(notes: list[dict]) -> dict[str, int]:
    """How many model containers decoded how: "exact-3", "float, 2 threads", or for containers that predate
    recorded numerics "float (not recorded), decoded with 2 threads"."""
    out: dict[str, int] = {}
    for n in notes:
        if n["numerics"] != FLOAT:
            label = n["numerics"]
        elif n.get("legacy"):
            label = f"float (threads not recorded), decoded with {n['threads']} threads"
        else:
            label = f"float, {n['threads']} threads"
        out[label] = out.get(label, 0) + 1
    return out


def decompress_shard(spec: ShardTask) -> dict:
    """Decode one shard and write its values into the plain zarr array at spec.out."""
    import zarr

    t0, c0 = time.perf_counter(), coder_seconds()
    shape, index = spec.shape, spec.shard
    dst = _location(spec.dst, _freeze(spec.dst_options))
    blob = dst.read_bytes(shardfmt.shard_key(spec.array, index))
    t_read = time.perf_counter() - t0
    data = decode_shard(blob, spec, shape, index)
    t_code, t_coder = time.perf_counter() - t0 - t_read, coder_seconds() - c0
    if region_crc(data) != spec.crc32:
        raise ChunkChecksumError(f"array {spec.array or '/'} shard {index}: decoded values differ from the "
                                 "source's checksum in the manifest")
    out_loc = _location(spec.out, _freeze(spec.out_options))
    arr = zarr.open_array(store=out_loc.zarr_store(), path=spec.array, mode="r+")
    arr[shardfmt.region(index, spec.shards, shape)] = data
    return {"array": spec.array, "shard": list(index), "dims": int(data.size), "raw_bytes": int(data.nbytes),
            "seconds": time.perf_counter() - t0, "read_seconds": t_read, "code_seconds": t_code,
            "coder_seconds": t_coder, "worker": _worker_name()}


def eval_shard(spec: EvalTask) -> EvalRecord:
    """Code one shard in memory (nothing written): model bits, NLL, timings, a decode check, and the
    classical baselines on the same images when `spec.baselines` names some."""
    from shardzip.workers.plugin import worker_model

    shape, index = spec.shape, spec.shard
    reg = shardfmt.region(index, spec.shards, shape)
    data = np.asarray(_array(spec.src, _freeze(spec.src_options), spec.src_path)[reg])
    model, device = (worker_model(spec.model) if spec.model else (None, "cpu"))
    packing = Packing(**spec.packing) if spec.packing else None
    rec = EvalRecord(spec.dataset, spec.array, list(index), spec.model_name, list(spec.grid), int(data.size),
                     int(data.nbytes), device, _worker_name(), nll_bits=0.0 if model else None,
                     nll_complete=model is not None)
    origin = tuple(s.start for s in reg)
    slots = 0
    for _, block in _chunks_of(data, origin, shape, spec):
        slots += 1
        if block is None:
            continue
        t0 = time.perf_counter()
        full = spec.chunks
        out, stats = encode_chunk(block, model, spec.layout, zstd_level=spec.zstd_level, packing=packing,
                                  full_shape=full, numerics=spec.numerics,
                                  classical=tuple(spec.classical or ()))
        rec.encode_seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        back = decode_chunk(out, full, block.dtype, spec.layout, (lambda: model) if model else None, packing)
        rec.decode_seconds += time.perf_counter() - t0
        valid = back[tuple(slice(0, s) for s in block.shape)]
        rec.verified &= valid.tobytes() == block.tobytes()
        rec.coded_bits += 8 * len(out)
        rec.methods[stats.method] += 1
        if model is not None and stats.nll_bits is not None and stats.image_nll_bits:
            rec.nll_bits += stats.nll_bits
            rec.image_nll_bits += stats.image_nll_bits  # chunks in C order = images in order
            # the images the model saw in this chunk (a tile of a raster is one), all of one size
            rec.image_nll_dims += [block.size // len(stats.image_nll_bits)] * len(stats.image_nll_bits)
        elif model is not None:  # coded without the model (masked floats, zstd): the array's NLL is partial
            rec.nll_complete = False
    rec.coded_bits += 8 * (16 * slots + 4)  # the shard index, as `compress` writes it: same bits
    rec.image_dims, rec.baselines = _eval_baselines(data, spec)
    return rec


def _eval_baselines(data: np.ndarray, spec: EvalTask) -> tuple[list[int], dict[str, dict]]:
    """The image sizes of a shard's region (layout arrays) and the classical baselines `spec.baselines` names,
    coded on the same images: the eval record's `image_dims` and `baselines`."""
    from shardzip.format.layout import to_images

    images = list(to_images(data, spec.layout)) if spec.layout else [data]
    dims, baselines = [int(img.size) for img in images] if spec.layout else [], {}
    if spec.baselines:
        from shardzip.report.baselines import baseline_bytes

        for name in spec.baselines:
            r = baseline_bytes(name, images)
            baselines[name] = {"applicable": r.applicable, "reason": r.reason,
                               "bytes_per_image": list(r.bytes_per_image), "dims_per_image": list(r.dims_per_image),
                               "encode_seconds": r.encode_seconds, "decode_seconds": r.decode_seconds,
                               "verified": r.verified}
    return dims, baselines
