"""Write an evaluation report dict (schema "shardzip.report", version 1) as JSON, Markdown, LaTeX, CSV and HTML.

The dict is what `shardzip eval` and `shardzip report` produce (see `REPORT_SCHEMA_DOC`); it is checked
first so a malformed one fails with a message naming the row and field, not with a stack trace halfway
through writing. JSON keeps the dict as given (the record to rerun and compare); Markdown and HTML are
for reading; the LaTeX tables (booktabs) are for `\\input` in a paper; the CSV is for spreadsheets;
PNG plots go to `plots/` for slides and are embedded in the HTML, which loads nothing from outside.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import numbers
import re
import unicodedata
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
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

__all__ = ["SCHEMA", "SCHEMA_VERSION", "ReportError", "validate_report", "write_report", "render_markdown",
           "render_latex", "render_csv", "render_html", "render_json", "make_plots", "Plot", "tex_escape"]

# ---------------------------------------------------------------------------------------------------------------
# validation

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


# ---------------------------------------------------------------------------------------------------------------
# table contents shared by the writers


def _num(v: Any, fmt: str) -> str:
    return "-" if v is None else format(float(v), fmt)


def _ci(v: Any) -> str:
    return "-" if v is None else f"[{float(v[0]):.3f}, {float(v[1]):.3f}]"


def _verified(v: Any) -> str:
    return {True: "yes", False: "NO", None: "-"}[v]


def _reason(row: Mapping) -> str:
    return " ".join(str(row.get("reason") or "no reason given").split())


def _bpd_text(row: Mapping) -> str:
    """The bpd cell: the value, or "n/a (reason)" for a codec that does not apply."""
    if row["applicable"]:
        return _num(row["bpd"], ".3f")
    if row["bpd"] is None:
        return f"n/a ({_reason(row)})"
    return f"{float(row['bpd']):.3f} (n/a: {_reason(row)})"  # e.g. an array stored with the fallback


# (header, cell text) for Markdown, HTML and the CSV-free readers; LaTeX picks a narrower subset below
_COLUMNS: list[tuple[str, Callable[[Mapping], str]]] = [
    ("array", lambda r: r["array"]),
    ("codec", lambda r: r["codec"]),
    ("kind", lambda r: r["kind"]),
    ("bpd", _bpd_text),
    ("NLL bpd", lambda r: _num(r["nll_bpd"], ".3f")),
    ("overhead %", lambda r: _num(r["overhead_pct"], ".2f")),
    ("ratio", lambda r: _num(r["ratio"], ".2f")),
    ("bpd std", lambda r: _num(r["bpd_std"], ".3f")),
    ("95% CI", lambda r: _ci(r["bpd_ci95"])),
    ("images", lambda r: str(int(r["images"]))),
    ("dims", lambda r: str(int(r["dims"]))),
    ("enc MB/s", lambda r: _num(r["encode_mbps"], ".3g")),
    ("dec MB/s", lambda r: _num(r["decode_mbps"], ".3g")),
    ("device", lambda r: r["device"] or "-"),
    ("verified", lambda r: _verified(r["verified"])),
]


def _by_dataset(rows: Sequence[Mapping]) -> dict[str, list[Mapping]]:
    """Rows per dataset (first-seen order), within a dataset grouped by array (first-seen order)."""
    out: dict[str, dict[str, list[Mapping]]] = {}
    for row in rows:
        out.setdefault(row["dataset"], {}).setdefault(row["array"], []).append(row)
    return {ds: [r for group in arrays.values() for r in group] for ds, arrays in out.items()}


def _best_bpd(rows: Sequence[Mapping]) -> dict[str, float]:
    """The lowest bpd of an applicable codec, per array (ties are all "best")."""
    best: dict[str, float] = {}
    for r in rows:
        if r["applicable"] and r["bpd"] is not None:
            best[r["array"]] = min(best.get(r["array"], math.inf), float(r["bpd"]))
    return best


def _is_best(row: Mapping, best: Mapping[str, float]) -> bool:
    return bool(row["applicable"]) and row["bpd"] is not None and float(row["bpd"]) == best.get(row["array"])


def _baseline_settings(rows: Sequence[Mapping]) -> dict[str, str]:
    from shardzip.report.baselines import BASELINE_SETTINGS

    names = dict.fromkeys(r["codec"] for r in rows if r["kind"] == "baseline")
    return {n: BASELINE_SETTINGS[n] for n in names if n in BASELINE_SETTINGS}


def _repro_items(repro: Mapping) -> list[tuple[str, str]]:
    """(label, text) lines of the reproducibility block, maps flattened as "name: value; ...". Extra keys kept."""
    def flat(v: Any) -> str:
        if isinstance(v, Mapping):
            return "; ".join(f"{k}: {e}" for k, e in v.items()) or "-"
        return str(v)

    order = ["command", "code_version", "date", "hardware", "models", "datasets", "libraries"]
    keys = order + [k for k in repro if k not in order]
    return [(k.replace("_", " "), flat(repro[k])) for k in keys if k in repro]


# ---------------------------------------------------------------------------------------------------------------
# Markdown


def _md_cell(text: str) -> str:
    """`text` as literal Markdown inline text: table pipes, HTML-like tags, code and emphasis marks escaped."""
    text = " ".join(text.split())
    return re.sub(r"([\\|<>*`\[\]])", r"\\\1", text)


def _md_code(text: str) -> str:
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def render_markdown(report: Mapping) -> str:
    """One table per dataset (best bpd per array in bold), baseline settings, then the reproducibility block."""
    lines = ["# shardzip evaluation report", ""]
    for dataset, rows in _by_dataset(report["rows"]).items():
        best = _best_bpd(rows)
        lines += [f"## {_md_cell(dataset)}", "", "| " + " | ".join(h for h, _ in _COLUMNS) + " |",
                  "|" + "|".join("---" if h in ("array", "codec", "kind", "device") else "---:" for h, _ in _COLUMNS)
                  + "|"]
        for r in rows:
            cells = [_md_cell(get(r)) for _, get in _COLUMNS]
            if _is_best(r, best):
                cells[3] = f"**{cells[3]}**"
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Bits per dimension (bpd): coded bits / values, lower is better; best per array in **bold**. "
                 "Overhead: coded bpd over the model's NLL. Ratio: raw bytes / coded bytes. "
                 "95% CI: normal approximation over per-image bpd.")
    lines.append("")
    settings = _baseline_settings(report["rows"])
    if settings:
        lines += ["### Baseline settings", ""] + [f"- **{n}**: {_md_cell(s)}" for n, s in settings.items()] + [""]
    lines += ["## Reproducibility", ""]
    for label, text in _repro_items(report["reproducibility"]):
        if "\n" in text:  # e.g. a multi-line command: a fenced block inside the list item
            fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
            lines += [f"- **{label}**:", "", f"  {fence}text"] + [f"  {t}" for t in text.splitlines()] + [f"  {fence}"]
        else:
            lines.append(f"- **{label}**: {_md_code(text)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# LaTeX

_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}
_TEX_UNICODE = {"×": r"$\times$", "–": "--", "—": "---", "…": r"\ldots{}", "µ": r"$\mu$", "±": r"$\pm$",
                "≤": r"$\leq$", "≥": r"$\geq$", "’": "'", "‘": "`", "“": "``", "”": "''"}


def tex_escape(text: str) -> str:
    """`text` safe in LaTeX text mode under pdflatex: specials escaped, non-ASCII spelled out or replaced by '?'."""
    out = []
    for ch in str(text):
        if ch in _TEX_SPECIAL:
            out.append(_TEX_SPECIAL[ch])
        elif ch in _TEX_UNICODE:
            out.append(_TEX_UNICODE[ch])
        elif ord(ch) < 128:
            out.append(ch if ch.isprintable() else " ")
        else:
            plain = "".join(c for c in unicodedata.normalize("NFKD", ch) if ord(c) < 128)
            out.append(tex_escape(plain) if plain else "?")
    return "".join(out)


_TEX_COLUMNS: list[tuple[str, str, Callable[[Mapping], str]]] = [
    ("bpd", "r", lambda r: _num(r["bpd"], ".3f")),
    ("NLL", "r", lambda r: _num(r["nll_bpd"], ".3f")),
    (r"Ovh.\,\%", "r", lambda r: _num(r["overhead_pct"], ".2f")),
    (r"95\,\% CI", "c", lambda r: "-" if r["bpd_ci95"] is None else
     f"{float(r['bpd_ci95'][0]):.2f}--{float(r['bpd_ci95'][1]):.2f}"),
    ("Enc.", "r", lambda r: _num(r["encode_mbps"], ".3g")),
    ("Dec.", "r", lambda r: _num(r["decode_mbps"], ".3g")),
    ("Device", "l", lambda r: r["device"] or "--"),
    ("Ver.", "c", lambda r: {True: "yes", False: r"\textbf{NO}", None: "--"}[r["verified"]]),
]
_TEX_REASON_CHARS = 56


def _tex_cell(header: str, text: str) -> str:
    if text == "-":
        return "--"
    return text if header in ("Ver.", r"95\,\% CI") else tex_escape(text)


def _tex_slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "data"


def render_latex(report: Mapping) -> str:
    """A booktabs table per dataset for `\\input` (needs only \\usepackage{booktabs}); reproducibility as % comments.

    Fits an article's text width at \\small; the compression ratio is left to the other outputs (it is
    8 x bytes per value / bpd).

    Best (lowest) bpd per array in \\textbf; a codec that does not apply spans the numeric columns with its
    reason (shortened; the full reason is in report.md/html/json).
    """
    lines = ["% shardzip evaluation report -- generated; \\input{report.tex} with \\usepackage{booktabs}", "%"]
    for label, text in _repro_items(report["reproducibility"]):
        for part in str(text).splitlines() or [""]:
            lines.append(f"% {label}: {part}")
    for name, setting in _baseline_settings(report["rows"]).items():
        lines.append(f"% baseline {name}: {setting}")
    ncols = 2 + len(_TEX_COLUMNS)
    spec = "ll" + "".join(a for _, a, _ in _TEX_COLUMNS)
    header = " & ".join(["Array", "Codec"] + [h for h, _, _ in _TEX_COLUMNS]) + r" \\"
    for dataset, rows in _by_dataset(report["rows"]).items():
        best = _best_bpd(rows)
        lines += ["", r"\begin{table}[t]", r"\centering", r"\small", r"\setlength{\tabcolsep}{3pt}",
                  rf"\caption{{Lossless compression of {tex_escape(dataset)}: bits per dimension (bpd; lower is "
                  r"better; best per array in bold), NLL bpd and coding overhead of the learned models "
                  r"(\emph{italic}), 95\,\% confidence interval of the bpd over images, "
                  r"encode/decode throughput in MB/s, bit-exact decode verified.}",
                  rf"\label{{tab:shardzip-{_tex_slug(dataset)}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
                  header, r"\midrule"]
        previous = None
        for r in rows:
            if previous is not None and r["array"] != previous:
                lines.append(r"\midrule")
            array = tex_escape(r["array"]) if r["array"] != previous else ""
            previous = r["array"]
            codec = tex_escape(r["codec"])
            codec = rf"\emph{{{codec}}}" if r["kind"] == "model" else codec
            if not r["applicable"] and r["bpd"] is None:
                why = _reason(r)
                why = why if len(why) <= _TEX_REASON_CHARS else why[:_TEX_REASON_CHARS - 3] + "..."
                cells = [array, codec, rf"\multicolumn{{{ncols - 2}}}{{l}}{{n/a: {tex_escape(why)}}}"]
            else:
                cells = [array, codec] + [_tex_cell(h, get(r)) for h, _, get in _TEX_COLUMNS]
                if _is_best(r, best):
                    cells[2] = rf"\textbf{{{cells[2]}}}"
                elif not r["applicable"]:
                    cells[2] += r"$^\dagger$"
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    if any(not r["applicable"] and r["bpd"] is not None for r in report["rows"]):
        lines += ["", r"% \dagger: the codec did not apply to that array; the bpd is that of the fallback that "
                      r"stored it (reason in report.md)"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# CSV

_CSV_FIELDS = ["dataset", "array", "codec", "kind", "applicable", "reason", "bpd", "nll_bpd", "overhead_pct", "ratio",
               "bpd_std", "bpd_ci95_lo", "bpd_ci95_hi", "images", "dims", "encode_mbps", "decode_mbps", "device",
               "verified"]


def render_csv(report: Mapping) -> str:
    """One line per row, flat columns (the CI split in lo/hi; per-image bpd left to report.json); empty = null."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_CSV_FIELDS)
    for r in report["rows"]:
        ci = r["bpd_ci95"] or (None, None)
        values = {**{k: r[k] for k in _CSV_FIELDS if k in r}, "bpd_ci95_lo": ci[0], "bpd_ci95_hi": ci[1]}
        writer.writerow(["" if values[k] is None else values[k] for k in _CSV_FIELDS])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# plots


@dataclass(frozen=True)
class Plot:
    """One PNG figure: `kind` is "bpd", "per_image", "shards" or "throughput"; `stem` its file name without .png."""

    kind: str
    stem: str
    title: str
    png: bytes


def _slug(text: str) -> str:
    """`text` as part of a file name: letters, digits, '.', '_', '-' (may be empty, e.g. for the root array "/")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _figure(width: float, height: float):
    """A figure on its own Agg canvas: no pyplot, so no global backend or figure state, and no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _row_labels(rows: Sequence[Mapping]) -> list[str]:
    several = len({r["array"] for r in rows}) > 1
    return [f"{r['array']}\n{r['codec']}" if several else r["codec"] for r in rows]


def _bpd_plot(dataset: str, rows: list[Mapping]) -> bytes:
    fig, ax = _figure(max(4.0, 0.55 * len(rows) + 1.5), 3.6)
    labels = _row_labels(rows)
    heights = [float(r["bpd"]) if r["applicable"] and r["bpd"] is not None else 0.0 for r in rows]
    colors = ["tab:blue" if r["kind"] == "model" else "tab:gray" for r in rows]
    bars = ax.bar(range(len(rows)), heights, color=colors)
    top = max(heights, default=1.0) or 1.0
    for bar, r, h in zip(bars, rows, heights, strict=True):
        text = f"{h:.2f}" if r["applicable"] and r["bpd"] is not None else "n/a"
        ax.text(bar.get_x() + bar.get_width() / 2, h + 0.01 * top, text, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("bits per dimension")
    ax.set_ylim(0, top * 1.18)
    from matplotlib.patches import Patch

    kinds = [("model", "tab:blue", "learned model"), ("baseline", "tab:gray", "classical baseline")]
    fig.legend(handles=[Patch(color=c, label=lab) for k, c, lab in kinds if any(r["kind"] == k for r in rows)],
               fontsize=7, loc="outside lower center", ncols=2, frameon=False)
    ax.set_title(f"{dataset}: bits per dimension (lower is better)", fontsize=9)
    return _png(fig)


def _per_image_plot(dataset: str, rows: list[Mapping]) -> bytes:
    import numpy as np

    fig, ax = _figure(max(4.0, 0.55 * len(rows) + 1.5), 3.6)
    data = [np.asarray(r["per_image_bpd"], dtype=float) for r in rows]
    positions = list(range(1, len(rows) + 1))
    ax.boxplot(data, positions=positions, widths=0.6, showfliers=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same report gives the same picture
    for pos, values in zip(positions, data, strict=True):
        if len(values) <= 500:
            ax.scatter(pos + rng.uniform(-0.18, 0.18, len(values)), values, s=4, alpha=0.4, color="tab:blue")
    ax.set_xticks(positions, _row_labels(rows), rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("bits per dimension, per image")
    ax.set_title(f"{dataset}: per-image bpd", fontsize=9)
    return _png(fig)


def _shard_map(group: list[Mapping]) -> tuple[Any, list[int], list[int]] | None:
    """The bpd per shard as a 2-D map over the last two grid axes with more than one cell (others averaged;
    missing shards NaN), with the kept axes and the averaged ones."""
    import numpy as np

    grid = list(group[-1]["grid"])
    axes = [i for i, g in enumerate(grid) if g > 1]
    if len(axes) < 2:
        return None
    values = np.full(grid, np.nan)
    for s in group:
        if list(s["grid"]) == grid:
            values[tuple(s["index"])] = float(s["bpd"])
    keep = axes[-2:]
    averaged = [i for i in range(len(grid)) if i not in keep]
    if averaged:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices (missing shards) stay NaN
            values = np.nanmean(values, axis=tuple(averaged))
    return values, keep, [i for i in averaged if grid[i] > 1]


def _shards_plot(dataset: str, array: str, codec: str, values, kept: list[int], averaged: list[int]) -> bytes:
    import numpy as np

    fig, ax = _figure(min(9.0, 2.5 + 0.5 * values.shape[1]), min(8.0, 1.8 + 0.45 * values.shape[0]))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="bpd")
    if values.size <= 144:
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white")
    ax.set_xticks(range(values.shape[1]))
    ax.set_yticks(range(values.shape[0]))
    ax.set_xlabel(f"shard index along grid axis {kept[1]}")
    ax.set_ylabel(f"shard index along grid axis {kept[0]}")
    note = f" (mean over grid axes {averaged})" if averaged else ""
    ax.set_title(f"{dataset} {array} {codec}: bpd per shard{note}", fontsize=9)
    return _png(fig)


def _throughput_plot(dataset: str, rows: list[Mapping]) -> bytes:
    import numpy as np

    fig, ax = _figure(6.0, max(2.5, 0.32 * len(rows) + 1.2))
    y = np.arange(len(rows))
    enc = [float(r["encode_mbps"]) if r["encode_mbps"] else 0.0 for r in rows]
    dec = [float(r["decode_mbps"]) if r["decode_mbps"] else 0.0 for r in rows]
    measured = [v for v in enc + dec if v > 0]
    log = bool(measured) and max(measured) / min(measured) > 20  # speeds spanning decades: keep all visible
    left = min(measured) / 2 if log else 0.0
    for offset, values, label, color in ((-0.2, enc, "encode", "tab:orange"), (0.2, dec, "decode", "tab:green")):
        widths = [v - left if v else 0.0 for v in values]  # bars from the axis' left edge (> 0 on a log axis)
        bars = ax.barh(y + offset, widths, height=0.4, left=left, label=label, color=color)
        for bar, v in zip(bars, values, strict=True):
            ax.text(v if v else left, bar.get_y() + bar.get_height() / 2, f" {v:.3g}" if v else " not measured",
                    va="center", fontsize=7)
    labels = [f"{lab.replace(chr(10), ' / ')} ({r['device'] or '?'})" for lab, r in zip(_row_labels(rows), rows,
                                                                                      strict=True)]
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
        ax.set_xlim(left, max(measured) * 8)
    else:
        ax.set_xlim(0, max(measured, default=1.0) * 1.3)
    ax.set_xlabel("MB/s of raw data")
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"{dataset}: throughput", fontsize=9)
    return _png(fig)


def make_plots(report: Mapping) -> list[Plot]:
    """PNG figures: bpd per codec and per-image bpd per dataset, bpd per shard over the chunk grid (grids with at
    least two axes of more than one shard), and encode/decode throughput per dataset where measured."""
    plots: list[Plot] = []
    used: set[str] = set()

    def add(kind: str, parts: list[str], title: str, png: bytes) -> None:
        base = "-".join(p for p in (_slug(part) for part in parts) if p)
        stem, n = base, 2
        while stem in used:  # names that differ only in characters a file name cannot hold
            stem, n = f"{base}-{n}", n + 1
        used.add(stem)
        plots.append(Plot(kind, stem, title, png))

    for dataset, rows in _by_dataset(report["rows"]).items():
        add("bpd", ["bpd", dataset], f"{dataset}: bpd per codec", _bpd_plot(dataset, rows))
        spread = [r for r in rows if r["per_image_bpd"]]
        if spread:
            add("per_image", ["per-image", dataset], f"{dataset}: per-image bpd", _per_image_plot(dataset, spread))
    groups: dict[tuple[str, str, str], list[Mapping]] = {}
    for s in report["shards"]:
        groups.setdefault((s["dataset"], s["array"], s["codec"]), []).append(s)
    for (dataset, array, codec), group in groups.items():
        mapped = _shard_map(group)
        if mapped is not None:
            add("shards", ["shards", dataset, array, codec], f"{dataset} {array} {codec}: bpd per shard",
                _shards_plot(dataset, array, codec, *mapped))
    for dataset, rows in _by_dataset(report["rows"]).items():
        timed = [r for r in rows if r["encode_mbps"] or r["decode_mbps"]]
        if timed:
            add("throughput", ["throughput", dataset], f"{dataset}: encode/decode MB/s",
                _throughput_plot(dataset, timed))
    return plots


# ---------------------------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em;max-width:80em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}
th,td{border-bottom:1px solid #ccc;padding:0.25em 0.6em;text-align:right;vertical-align:top}
th{border-bottom:2px solid #444}
td.t,th.t{text-align:left}
td.na{color:#777;text-align:left;max-width:30em}
tr.model td{background:#eef4fb}
td.bad{color:#b00;font-weight:bold}
figure{display:inline-block;margin:0.5em 1em 1em 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:0.85em;color:#555}
dl.repro dt{font-weight:bold;margin-top:0.4em}
dl.repro dd{font-family:ui-monospace,monospace;font-size:0.85em;white-space:pre-wrap;word-break:break-all}
"""

_PLOT_SECTIONS = [("bpd", "Bits per dimension per codec"), ("per_image", "Per-image bpd distribution"),
                  ("shards", "Bits per dimension per shard"), ("throughput", "Throughput")]
_TEXT_COLUMNS = {"array", "codec", "kind", "device"}


def _html_table(rows: list[Mapping]) -> str:
    best = _best_bpd(rows)
    head = "".join(f'<th class="{"t" if h in _TEXT_COLUMNS else "n"}">{html.escape(h)}</th>' for h, _ in _COLUMNS)
    out = [f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>"]
    for r in rows:
        cells = []
        for h, get in _COLUMNS:
            text = html.escape(get(r))
            cls = "t" if h in _TEXT_COLUMNS else "n"
            if h == "bpd" and not r["applicable"]:
                cls = "na"
            if h == "bpd" and _is_best(r, best):
                text = f"<strong>{text}</strong>"
            if h == "verified" and r["verified"] is False:
                cls = "bad"
            cells.append(f'<td class="{cls}">{text}</td>')
        out.append(f'<tr class="{html.escape(r["kind"])}">' + "".join(cells) + "</tr>")
    out.append("</tbody>\n</table>")
    return "\n".join(out)


def render_html(report: Mapping, plots: Sequence[Plot]) -> str:
    """One self-contained page: tables, plots as data: URIs, baseline settings, reproducibility; no outside loads."""
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             "<title>shardzip evaluation report</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
             "<h1>shardzip evaluation report</h1>",
             "<p>Bits per dimension (bpd): coded bits / values, lower is better; best per array in <strong>bold"
             "</strong>; learned models shaded. Overhead: coded bpd over the model's NLL. Ratio: raw bytes / coded "
             "bytes. 95% CI: normal approximation over per-image bpd.</p>"]
    for dataset, rows in _by_dataset(report["rows"]).items():
        parts += [f"<h2>{html.escape(dataset)}</h2>", _html_table(rows)]
    if plots:
        parts.append("<h2>Plots</h2>")
    for kind, heading in _PLOT_SECTIONS:
        chosen = [p for p in plots if p.kind == kind]
        if not chosen:
            continue
        parts.append(f"<h3>{html.escape(heading)}</h3>")
        for p in chosen:
            data = base64.b64encode(p.png).decode("ascii")
            parts.append(f'<figure class="plot plot-{kind}"><img src="data:image/png;base64,{data}" '
                         f'alt="{html.escape(p.title)}"><figcaption>{html.escape(p.title)} '
                         f"(plots/{html.escape(p.stem)}.png)</figcaption></figure>")
    settings = _baseline_settings(report["rows"])
    if settings:
        parts.append("<h2>Baseline settings</h2>\n<ul>")
        parts += [f"<li><strong>{html.escape(n)}</strong>: {html.escape(s)}</li>" for n, s in settings.items()]
        parts.append("</ul>")
    parts.append('<h2>Reproducibility</h2>\n<dl class="repro">')
    parts += [f"<dt>{html.escape(label)}</dt><dd>{html.escape(text)}</dd>"
              for label, text in _repro_items(report["reproducibility"])]
    parts += ["</dl>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"


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
