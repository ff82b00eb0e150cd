"""One report from several: `shardzip report` merges evaluation runs (report.json files) and finished stores.

Rows and shards are concatenated in the order given; a row of a (dataset, array, codec) that an earlier report
already has is left out (a baseline run again on the same data, say) and counted. The reproducibility block is the
first report's with the models and datasets of all, and every run's own block under `runs`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from shardzip.errors import ReportError
from shardzip.report.schema import SCHEMA, SCHEMA_VERSION, validate_report

__all__ = ["is_report_file", "merge_reports", "read_report"]


def is_report_file(ref: str) -> bool:
    """Whether `ref` names an evaluation report (a report.json, or a report directory holding one) rather than a
    compressed store."""
    p = Path(ref)
    return (p.is_file() and p.suffix == ".json") or (p.is_dir() and (p / "report.json").is_file()
                                                       and not (p / "_shardzip").exists())


def read_report(ref: str) -> dict:
    """The report dict in a report.json (or a report directory), validated."""
    p = Path(ref)
    path = p / "report.json" if p.is_dir() else p
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: not a readable report.json ({exc})") from exc
    try:
        validate_report(report)
    except ReportError as exc:
        raise ReportError(f"{path}: {exc}") from exc
    return report


def merge_reports(reports: Sequence[Mapping]) -> dict:
    """One report dict of `reports` (each valid), as the module docstring says."""
    if not reports:
        raise ReportError("nothing to merge: give report.json files or stores")
    if len(reports) == 1:
        return dict(reports[0])
    rows, shards, seen, dropped = [], [], set(), 0
    for rep in reports:
        keep = set()
        for row in rep["rows"]:
            key = (row["dataset"], row["array"], row["codec"])
            if key in seen:
                dropped += 1
                continue
            keep.add(key)
            rows.append(row)
        shards += [s for s in rep["shards"] if (s["dataset"], s["array"], s["codec"]) in keep]
        seen |= keep
    first = dict(reports[0]["reproducibility"])
    for key in ("models", "datasets"):
        first[key] = {k: v for rep in reports for k, v in rep["reproducibility"][key].items()}
    first["command"] = "; ".join(dict.fromkeys(rep["reproducibility"]["command"] for rep in reports))
    first["merged"] = f"{len(reports)} runs; {dropped} repeated row(s) left out"
    first["runs"] = [dict(rep["reproducibility"]) for rep in reports]
    out = {"schema": SCHEMA, "version": SCHEMA_VERSION, "rows": rows, "shards": shards, "reproducibility": first}
    validate_report(out)
    return out
