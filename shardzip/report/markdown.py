"""The report as Markdown, for reading: one table per dataset, baseline settings, reproducibility."""

from __future__ import annotations

import re
from collections.abc import Mapping

from shardzip.report import tables

__all__ = ["render_markdown"]

_TEXT = ("array", "codec", "kind", "device")  # left-aligned columns


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
    lines = ["# shardzip evaluation report", ""] + _summary(report["rows"])
    for dataset, rows in tables.by_dataset(report["rows"]).items():
        best = tables.best_bpd(rows)
        lines += [f"## {_md_cell(dataset)}", "", "| " + " | ".join(h for h, _ in tables.COLUMNS) + " |",
                  "|" + "|".join("---" if h in _TEXT else "---:" for h, _ in tables.COLUMNS) + "|"]
        for r in rows:
            cells = [_md_cell(get(r)) for _, get in tables.COLUMNS]
            if tables.is_best(r, best):
                cells[3] = f"**{cells[3]}**"
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Bits per dimension (bpd): coded bits / values, lower is better; best per array in **bold**. "
                 "Overhead: coded bpd over the model's NLL. Ratio: raw bytes / coded bytes. "
                 "95% CI: normal approximation over per-image bpd.")
    lines.append("")
    settings = tables.baseline_settings(report["rows"])
    if settings:
        lines += ["### Baseline settings", ""] + [f"- **{n}**: {_md_cell(s)}" for n, s in settings.items()] + [""]
    lines += ["## Reproducibility", ""]
    for label, text in tables.repro_items(report["reproducibility"]):
        if "\n" in text:  # e.g. a multi-line command: a fenced block inside the list item
            fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
            lines += [f"- **{label}**:", "", f"  {fence}text"] + [f"  {t}" for t in text.splitlines()] + [f"  {fence}"]
        else:
            lines.append(f"- **{label}**: {_md_code(text)}")
    return "\n".join(lines) + "\n"


def _summary(rows) -> list[str]:
    """The table across datasets: bpd per codec and dataset over the arrays each codec coded."""
    datasets, codecs, cells = tables.summary(rows)
    if not rows:
        return []
    out = ["## Summary", "", "| codec | kind | " + " | ".join(_md_cell(d) for d in datasets) + " |",
           "|---|---|" + "---:|" * len(datasets)]
    for name, kind in codecs:
        cells_text = [tables.summary_cell(cells[(d, name)]) for d in datasets]
        out.append(f"| {_md_cell(name)} | {kind} | " + " | ".join(cells_text) + " |")
    return out + ["", "Bits per dimension over the arrays each codec coded (arrays coded / arrays of the dataset).",
                  ""]
