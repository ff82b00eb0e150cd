"""The report as LaTeX: booktabs tables for `\\input` in a paper, reproducibility as % comments."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping

from shardzip.report.tables import (
    baseline_settings,
    best_bpd,
    by_dataset,
    is_best,
    model_chunks,
    number_text,
    reason_text,
    repro_items,
    summary,
    summary_cell,
)

__all__ = ["render_latex", "tex_escape"]

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
    ("bpd", "r", lambda r: "n/a" if r["bpd"] is None else number_text(r["bpd"], ".3f")),  # n/a: NLL-only
    ("NLL", "r", lambda r: number_text(r["nll_bpd"], ".3f")),
    (r"Ovh.\,\%", "r", lambda r: number_text(r["overhead_pct"], ".2f")),
    (r"95\,\% CI", "c", lambda r: "-" if r["bpd_ci95"] is None else
     f"{float(r['bpd_ci95'][0]):.2f}--{float(r['bpd_ci95'][1]):.2f}"),
    ("Enc.", "r", lambda r: number_text(r["encode_mbps"], ".3g")),
    ("Dec.", "r", lambda r: number_text(r["decode_mbps"], ".3g")),
    ("Device", "l", lambda r: r["device"] or "--"),
    ("Chunks", "r", lambda r: "--" if model_chunks(r) is None else "{}/{}".format(*model_chunks(r))),
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
    for label, text in repro_items(report["reproducibility"]):
        for part in str(text).splitlines() or [""]:
            lines.append(f"% {label}: {part}")
    for name, setting in baseline_settings(report["rows"]).items():
        lines.append(f"% baseline {name}: {setting}")
    ncols = 2 + len(_TEX_COLUMNS)
    spec = "ll" + "".join(a for _, a, _ in _TEX_COLUMNS)
    header = " & ".join(["Array", "Codec"] + [h for h, _, _ in _TEX_COLUMNS]) + r" \\"
    for dataset, rows in by_dataset(report["rows"]).items():
        best = best_bpd(rows)
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
                why = reason_text(r)
                why = why if len(why) <= _TEX_REASON_CHARS else why[:_TEX_REASON_CHARS - 3] + "..."
                cells = [array, codec, rf"\multicolumn{{{ncols - 2}}}{{l}}{{n/a: {tex_escape(why)}}}"]
            else:
                cells = [array, codec] + [_tex_cell(h, get(r)) for h, _, get in _TEX_COLUMNS]
                if is_best(r, best):
                    cells[2] = rf"\textbf{{{cells[2]}}}"
                elif not r["applicable"]:
                    cells[2] += r"$^\dagger$"
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    lines += _summary_table(report["rows"])
    if any(not r["applicable"] and r["bpd"] is not None for r in report["rows"]):
        lines += ["", r"% \dagger: the codec did not apply to that array; the bpd is that of the fallback that "
                      r"stored it (reason in report.md)"]
    return "\n".join(lines) + "\n"


def _summary_table(rows) -> list[str]:
    """The table across datasets (`tables.summary`): a codec per row, a dataset per column; only for two or more
    datasets (with one, the dataset's own table says it all)."""
    datasets, codecs, cells = summary(rows)
    if len(datasets) < 2:
        return []
    out = ["", r"\begin{table}[t]", r"\centering", r"\small",
           r"\caption{Lossless compression across datasets: bits per dimension over the arrays each codec coded "
           r"(arrays coded / arrays of the dataset); learned models in \emph{italic}.}",
           r"\label{tab:shardzip-summary}", rf"\begin{{tabular}}{{l{'r' * len(datasets)}}}", r"\toprule",
           " & ".join(["Codec"] + [tex_escape(d) for d in datasets]) + r" \\", r"\midrule"]
    for name, kind in codecs:
        label = rf"\emph{{{tex_escape(name)}}}" if kind == "model" else tex_escape(name)
        out.append(" & ".join([label] + [tex_escape(summary_cell(cells[(d, name)])) for d in datasets]) + r" \\")
    return out + [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
