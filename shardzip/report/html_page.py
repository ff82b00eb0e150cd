"""The report as one self-contained HTML page: tables, plots as data: URIs, baseline settings and reproducibility;
it loads nothing from outside."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence

from shardzip.report.plots import Plot
from shardzip.report.tables import (
    COLUMNS,
    baseline_settings,
    best_bpd,
    by_dataset,
    is_best,
    repro_items,
    summary,
    summary_cell,
)

__all__ = ["render_html"]

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
    best = best_bpd(rows)
    head = "".join(f'<th class="{"t" if h in _TEXT_COLUMNS else "n"}">{html.escape(h)}</th>' for h, _ in COLUMNS)
    out = [f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>"]
    for r in rows:
        cells = []
        for h, get in COLUMNS:
            text = html.escape(get(r))
            cls = "t" if h in _TEXT_COLUMNS else "n"
            if h == "bpd" and not r["applicable"]:
                cls = "na"
            if h == "bpd" and is_best(r, best):
                text = f"<strong>{text}</strong>"
            if h == "verified" and r["verified"] is False:
                cls = "bad"
            cells.append(f'<td class="{cls}">{text}</td>')
        out.append(f'<tr class="{html.escape(r["kind"])}">' + "".join(cells) + "</tr>")
    out.append("</tbody>\n</table>")
    return "\n".join(out)


def _summary_table(rows: list[Mapping]) -> list[str]:
    """The table across datasets (`tables.summary`), with its heading."""
    if not rows:
        return []
    datasets, codecs, cells = summary(rows)
    head = '<th class="t">codec</th><th class="t">kind</th>' + "".join(f'<th class="n">{html.escape(d)}</th>'
                                                                       for d in datasets)
    body = [f'<tr class="{html.escape(kind)}"><td class="t">{html.escape(name)}</td><td class="t">{kind}</td>'
            + "".join(f'<td class="n">{html.escape(summary_cell(cells[(d, name)]))}</td>' for d in datasets) + "</tr>"
            for name, kind in codecs]
    return ['<h2>Summary</h2>', f'<table class="summary">\n<thead><tr>{head}</tr></thead>\n<tbody>', *body,
            "</tbody>\n</table>", "<p>Bits per dimension over the arrays each codec coded (arrays coded / arrays "
            "of the dataset).</p>"]


def render_html(report: Mapping, plots: Sequence[Plot]) -> str:
    """One self-contained page: tables, plots as data: URIs, baseline settings, reproducibility; no outside loads."""
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             "<title>shardzip evaluation report</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
             "<h1>shardzip evaluation report</h1>",
             "<p>Bits per dimension (bpd): coded bits / values, lower is better; best per array in <strong>bold"
             "</strong>; learned models shaded. Overhead: coded bpd over the model's NLL. Ratio: raw bytes / coded "
             "bytes. 95% CI: normal approximation over per-image bpd.</p>"]
    parts += _summary_table(report["rows"])
    for dataset, rows in by_dataset(report["rows"]).items():
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
    settings = baseline_settings(report["rows"])
    if settings:
        parts.append("<h2>Baseline settings</h2>\n<ul>")
        parts += [f"<li><strong>{html.escape(n)}</strong>: {html.escape(s)}</li>" for n, s in settings.items()]
        parts.append("</ul>")
    parts.append('<h2>Reproducibility</h2>\n<dl class="repro">')
    parts += [f"<dt>{html.escape(label)}</dt><dd>{html.escape(text)}</dd>"
              for label, text in repro_items(report["reproducibility"])]
    parts += ["</dl>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"
