"""What a committed job says about itself: the per-array summary in the manifest, and the lines people read."""

from __future__ import annotations

import hashlib

from shardzip.format.records import METHOD_NAMES, RecordTable
from shardzip.format.weights import portable, profile_numerics
from shardzip.pipeline.plan import ArrayPlan


def _checksum(table: RecordTable) -> str:
    """sha256 over (shard, crc32, dims) of every shard in shard order (the same digest version 1 manifests hold)."""
    h = hashlib.sha256()
    for shards, crcs, dims in table.column_blocks(("crc32", "dims")):
        h.update("".join(f"{s}:{c}:{d};" for s, c, d in zip(shards, crcs, dims, strict=True)).encode())
    return h.hexdigest()


def _nll_bits(table: RecordTable) -> float | None:
    """The NLL bits of the shards the model coded, added in shard order as version 1 added its records' (None:
    no shard has any)."""
    total, seen = 0, False
    for _, nll in table.column_blocks(("nll_bits",)):
        kept = [v for v in nll if v == v]  # NaN: coded without a model
        seen = seen or bool(kept)
        total = sum(kept, total)
    return total if seen else None


def summarise(plans: list[ArrayPlan], tables: dict[str, RecordTable]) -> dict[str, dict]:
    """The manifest's summary of each array, from its record table (every shard recorded).

    Computed at the commit from the table in shard order, not as records arrive: float sums (NLL bits) then do not
    depend on the order the workers finished in, and the figures equal those of the JSON records. Memory: the
    table's columns plus one block of rows at a time."""
    arrays = {}
    for plan in plans:
        rows = tables[plan.path].rows
        dims, bits = int(rows["dims"].sum()), 8 * int(rows["bytes"].sum())
        nll = _nll_bits(tables[plan.path])
        chunks = rows["chunks"].sum(axis=0).tolist() if len(rows) else [0] * len(METHOD_NAMES)
        arrays[plan.path or "/"] = {
            **plan.as_dict(), "coded_bytes": bits // 8, "raw_bytes": int(rows["raw_bytes"].sum()),
            "zstd_bytes": int(rows["zstd_bytes"].sum()), "dims": dims,
            "bpd": bits / dims if dims else None, "nll_bpd": nll / dims if nll is not None and dims else None,
            "chunks_by_method": dict(zip(METHOD_NAMES, chunks, strict=True)),
            "checksum": _checksum(tables[plan.path]), "shard_count": len(rows)}
    return arrays


def model_name(job: dict, sha: str | None) -> str | None:
    """The name a job gave the model `sha` (a job of one model, or `--model auto`'s per-array choices)."""
    if sha is None:
        return None
    found = job.get("models", {}).get(sha)
    return found["name"] if found else job["model"]["name"]


def model_family(job: dict, sha: str) -> str:
    found = job.get("models", {}).get(sha)
    return found["family"] if found else job["model"]["family"]


def format_decode_notes(decoded: dict[str, int]) -> list[str]:
    """Lines saying how the model-coded chunks decoded (numerics, and the thread count legacy chunks needed)."""
    return [f"{n} model-coded chunk(s): {label}" for label, n in sorted(decoded.items())]


def format_summary(manifest: dict) -> str:
    """A few lines for people: per array, how it was coded and the bits per dimension next to zstd's."""
    m = manifest["model"]
    chosen = ", ".join(sorted(x["name"] for x in manifest.get("models", {}).values())) or "none"
    which = f"model {m['name']} (sha256 {m['sha256'][:12]})" if m.get("sha256") else (
        f"model {m['name']} (chosen per array: {chosen})")
    lines = [f"{manifest['dst']}: committed job {manifest['job_id']}, {which}, device {manifest['profile']['device']}, "
             f"numerics {profile_numerics(manifest['profile'])}"
             f"{'' if portable(manifest['profile']) else ' (decodes only where it was coded)'}, "
             f"{'verified' if manifest.get('verified') else 'not verified'}"]
    lines.append(f"  {'array':<24} {'shape':<22} {'dtype':<6} {'bpd':>7} {'nll bpd':>8} {'zstd bpd':>9} "
                 f"{'ratio':>7}  chunks model/zstd/raw/masked/classical")
    tot = {"bits": 0, "dims": 0, "zstd": 0, "raw": 0}
    for name, a in manifest["arrays"].items():
        dims = a["dims"] or 1
        nll = f"{a['nll_bpd']:.4f}" if a.get("nll_bpd") is not None else "-"
        cm = a["chunks_by_method"]
        lines.append(f"  {name:<24} {str(tuple(a['shape'])):<22} {a['dtype']:<6} {8 * a['coded_bytes'] / dims:>7.4f} "
                     f"{nll:>8} {8 * a['zstd_bytes'] / dims:>9.4f} {a['raw_bytes'] / max(1, a['coded_bytes']):>7.2f}"
                     f"  {cm['model'] + cm.get('masked-model', 0)}/{cm['zstd']}/{cm['raw']}/{cm.get('masked', 0)}"
                     f"/{cm.get('classical', 0)}"
                     + _array_note(manifest, a))
        tot["bits"] += 8 * a["coded_bytes"]
        tot["dims"] += a["dims"]
        tot["zstd"] += 8 * a["zstd_bytes"]
        tot["raw"] += a["raw_bytes"]
    if tot["dims"]:
        lines.append(f"  total: {tot['bits'] / tot['dims']:.4f} bpd ({tot['bits'] // 8} bytes from {tot['raw']}); "
                     f"zstd alone {tot['zstd'] / tot['dims']:.4f} bpd")
    if manifest.get("storage"):
        st = manifest["storage"]
        with_weights = 8 * (st["coded"] + st["weights"]) / tot["dims"] if tot["dims"] else None
        shipped = manifest["model"].get("shipped") and not st["weights"]
        lines.append(f"  store: {_mb(st['total'])} in all = {_mb(st['coded'])} coded shards + "
                     + ("model weights shipped with shardzip (referenced by sha256, not copied)" if shipped else
                        f"{_mb(st['weights'])} model weights")
                     + f" + {_mb(st['metadata'])} metadata"
                     + (f"; {with_weights:.4f} bpd counting the weights" if with_weights is not None and not shipped
                        else ""))
        saved = tot["zstd"] / 8 - st["coded"]
        if st["weights"] and saved > 0 and tot["raw"]:  # a fitted model's weights against what it saves over zstd
            pays = st["weights"] / saved * tot["raw"]
            one_percent = 100 * st["weights"] / max(1, st["coded"]) * tot["raw"]
            lines.append(f"  the weights pay for themselves from {_mb(int(pays))} of data like this (vs zstd); they "
                         f"are 1 % of the coded bytes from {_mb(int(one_percent))}")
    return "\n".join(lines)


def _array_note(manifest: dict, a: dict) -> str:
    """What `format_summary` says after an array's figures: the fallback's reason, or `auto`'s choice."""
    if not a.get("model"):
        return f"  (fallback: {a.get('reason')})"
    if a.get("choice"):
        return f"  ({model_name(manifest, a['model'])}: {a['choice']['reason']})"
    return ""


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 10_000 else f"{n} B"

