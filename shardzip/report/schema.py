"""The report dict's schema ("shardzip.report", version 1) and its check.

`shardzip eval` and `shardzip report` produce the dict (see `REPORT_SCHEMA_DOC`); `validate_report` checks it
before anything is written, so a malformed one fails with a message naming the row and field, not with a
stack trace halfway through writing.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shardzip.errors import ReportError

SCHEMA = "shardzip.report"
SCHEMA_VERSION = 1

REPORT_SCHEMA_DOC = """\
{"schema": "shardzip.report", "version": 1,
 "rows": [{"dataset": str, "array": str, "codec": str, "kind": "model" | "baseline", "applicable": bool,
           "reason": str|null, "bpd": float|null, "nll_bpd": float|null, "overhead_pct": float|null,
           "ratio": float|null, "bpd_std": float|null, "bpd_ci95": [lo, hi]|null, "per_image_bpd": [float],
           "images": int, "dims": int, "encode_mbps": float|null, "decode_mbps": float|null,
           "device": str|null, "verified": bool|null, ...}],
 "shards": [{"dataset": str, "array": str, "codec": str, "grid": [int], "index": [int], "bpd": float}],
 "reproducibility": {"command": str, "code_version": str, "models": {name: sha256}, "datasets": {name: checksum},
                     "hardware": str, "libraries": {name: version}, "date": str}}"""

__all__ = ["SCHEMA", "SCHEMA_VERSION", "REPORT_SCHEMA_DOC", "validate_report"]

_ROW_FIELDS: dict[str, str] = {
    "dataset": "str", "array": "str", "codec": "str", "kind": "kind", "applicable": "bool", "reason": "str?",
    "bpd": "num?", "nll_bpd": "num?", "overhead_pct": "num?", "ratio": "num?", "bpd_std": "num?",
    "bpd_ci95": "ci?", "per_image_bpd": "nums", "images": "count", "dims": "count", "encode_mbps": "num?",
    "decode_mbps": "num?", "device": "str?", "verified": "bool?",
}
_SHARD_FIELDS: dict[str, str] = {"dataset": "str", "array": "str", "codec": "str", "grid": "ints",
                                 "index": "ints", "bpd": "num"}
_REPRO_FIELDS: dict[str, str] = {"command": "str", "code_version": "str", "models": "strmap",
                                 "datasets": "strmap", "hardware": "str", "libraries": "strmap", "date": "str"}
_EXPECTED = {"str": "a string", "str?": "a string or null", "kind": '"model" or "baseline"', "bool": "true or false",
             "bool?": "true, false or null", "num": "a finite number", "num?": "a finite number or null",
             "ci?": "[lo, hi] (two finite numbers) or null", "nums": "a list of finite numbers",
             "count": "a non-negative integer", "ints": "a list of non-negative integers",
             "strmap": "an object of string to string"}


def _is_num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= 0


def _is_list(v: Any) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, str | bytes)


def _type_ok(kind: str, v: Any) -> bool:
    if kind.endswith("?") and v is None:
        return True
    base = kind.rstrip("?")
    checks: dict[str, Callable[[Any], bool]] = {
        "str": lambda x: isinstance(x, str),
        "kind": lambda x: x in ("model", "baseline"),
        "bool": lambda x: isinstance(x, bool),
        "num": _is_num,
        "ci": lambda x: _is_list(x) and len(x) == 2 and all(_is_num(e) for e in x),
        "nums": lambda x: _is_list(x) and all(_is_num(e) for e in x),
        "count": _is_int,
        "ints": lambda x: _is_list(x) and all(_is_int(e) for e in x),
        "strmap": lambda x: isinstance(x, Mapping) and all(isinstance(k, str) and isinstance(e, str)
                                                            for k, e in x.items()),
    }
    return checks[base](v)


def _check_fields(obj: Any, fields: dict[str, str], where: str, problems: list[str]) -> bool:
    if not isinstance(obj, Mapping):
        problems.append(f"{where} must be an object; got {type(obj).__name__}")
        return False
    missing = [k for k in fields if k not in obj]
    if missing:
        problems.append(f"{where} lacks {', '.join(repr(k) for k in missing)}")
    for key, kind in fields.items():
        if key in obj and not _type_ok(kind, obj[key]):
            shown = repr(obj[key])
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            problems.append(f"{where}: {key!r} must be {_EXPECTED[kind]}; got {shown}")
    return not missing


def _label(obj: Mapping, i: int, name: str) -> str:
    ids = [f"{k} {obj[k]!r}" for k in ("dataset", "array", "codec") if isinstance(obj.get(k), str)]
    return f"{name}[{i}]" + (f" ({', '.join(ids)})" if ids else "")


def validate_report(report: Any) -> None:
    """Raise ReportError, listing what is wrong where, unless `report` is a valid schema-1 report dict.

    Rows and shards may carry extra keys (kept in the JSON, ignored by the other outputs); numbers
    must be finite so that report.json is standard JSON.
    """
    if not isinstance(report, Mapping):
        raise ReportError(f"a report must be a dict (schema {SCHEMA!r}); got {type(report).__name__}")
    if report.get("schema") != SCHEMA:
        raise ReportError(f"not a shardzip report: 'schema' is {report.get('schema')!r}, expected {SCHEMA!r}")
    if report.get("version") != SCHEMA_VERSION:
        raise ReportError(f"report version {report.get('version')!r} is not supported by this shardzip (it writes "
                          f"version {SCHEMA_VERSION}); regenerate the report with this shardzip or upgrade it")
    problems: list[str] = []
    for key in ("rows", "shards"):
        if not _is_list(report.get(key)):
            problems.append(f"{key!r} must be a list; got {type(report.get(key)).__name__}")
    for i, row in enumerate(report.get("rows") if _is_list(report.get("rows")) else []):
        where = _label(row, i, "rows") if isinstance(row, Mapping) else f"rows[{i}]"
        _check_fields(row, _ROW_FIELDS, where, problems)
    for i, shard in enumerate(report.get("shards") if _is_list(report.get("shards")) else []):
        where = _label(shard, i, "shards") if isinstance(shard, Mapping) else f"shards[{i}]"
        if _check_fields(shard, _SHARD_FIELDS, where, problems) and _type_ok("ints", shard["grid"]) \
                and _type_ok("ints", shard["index"]):
            grid, index = list(shard["grid"]), list(shard["index"])
            if len(grid) != len(index) or any(j >= g for j, g in zip(index, grid, strict=False)):
                problems.append(f"{where}: index {index} lies outside the shard grid {grid}")
    _check_fields(report.get("reproducibility"), _REPRO_FIELDS, "'reproducibility'", problems)
    if problems:
        shown = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
        raise ReportError("malformed report dict:\n  " + "\n  ".join(shown)
                          + f"\nexpected schema:\n{REPORT_SCHEMA_DOC}")
