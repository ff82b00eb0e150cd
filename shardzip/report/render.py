"""Write an evaluation report dict (schema "shardzip.report", version 1) as JSON, Markdown, LaTeX, CSV and HTML.

The dict is what `shardzip eval` and `shardzip report` produce (see `shardzip.report.schema`); it is checked
first so a malformed one fails with a message naming the row and field, not with a stack trace halfway
through writing. JSON keeps the dict as given (the record to rerun and compare); Markdown and HTML are
for reading; the LaTeX tables (booktabs) are for `\\input` in a paper; the CSV is for spreadsheets;
PNG plots go to `plots/` for slides and are embedded in the HTML, which loads nothing from outside.
Each format has its module (`markdown`, `latex`, `html_page`, `plots`); the flat ones, JSON and CSV, are here.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shardzip.errors import ReportError
from shardzip.report.html_page import render_html
from shardzip.report.latex import render_latex
from shardzip.report.markdown import render_markdown
from shardzip.report.plots import make_plots
from shardzip.report.schema import validate_report
from shardzip.report.tables import model_chunks

__all__ = ["write_report", "render_json", "render_csv"]

# ---------------------------------------------------------------------------------------------------------------
# CSV

_CSV_FIELDS = ["dataset", "array", "codec", "kind", "applicable", "reason", "bpd", "nll_bpd", "overhead_pct", "ratio",
               "bpd_std", "bpd_ci95_lo", "bpd_ci95_hi", "images", "dims", "encode_mbps", "decode_mbps", "device",
               "chunks_model", "chunks", "parameters", "weight_bytes", "verified"]


def render_csv(report: Mapping) -> str:
    """One line per row, flat columns (the CI split in lo/hi; per-image bpd left to report.json); empty = null."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_CSV_FIELDS)
    for r in report["rows"]:
        ci = r["bpd_ci95"] or (None, None)
        counted = model_chunks(r) or (None, None)
        values = {**{k: r.get(k) for k in _CSV_FIELDS}, "bpd_ci95_lo": ci[0], "bpd_ci95_hi": ci[1],
                  "chunks_model": counted[0], "chunks": counted[1]}
        writer.writerow(["" if values[k] is None else values[k] for k in _CSV_FIELDS])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# JSON and the entry point


def _json_default(obj: Any) -> Any:
    """numpy scalars and arrays (a report built with numpy values) as plain JSON values."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"report holds a {type(obj).__name__}, which JSON cannot store")


def render_json(report: Mapping) -> str:
    """The report dict as given, pretty-printed standard JSON (no NaN)."""
    return json.dumps(report, indent=2, allow_nan=False, default=_json_default) + "\n"


def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """Validate `report` and write report.{json,md,tex,csv,html} and plots/*.png into `out_dir` (created if needed).

    Returns the written paths by kind: "json", "markdown", "latex", "csv", "html", then "plot:<stem>" per PNG.
    Raises ReportError for a malformed report, before anything is written.
    """
    validate_report(report)
    try:
        text_json = render_json(report)
    except (TypeError, ValueError) as exc:
        raise ReportError(f"the report cannot be written as JSON: {exc}") from exc
    out = Path(out_dir)
    plots = make_plots(report)
    texts = {"json": ("report.json", text_json), "markdown": ("report.md", render_markdown(report)),
             "latex": ("report.tex", render_latex(report)), "csv": ("report.csv", render_csv(report)),
             "html": ("report.html", render_html(report, plots))}
    try:
        (out / "plots").mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        for kind, (name, text) in texts.items():
            paths[kind] = out / name
            paths[kind].write_text(text, encoding="utf-8")
        for p in plots:
            path = out / "plots" / f"{p.stem}.png"
            path.write_bytes(p.png)
            paths[f"plot:{p.stem}"] = path
    except OSError as exc:
        raise ReportError(f"cannot write the report into {out}: {exc}; choose a writable --out directory") from exc
    return paths
