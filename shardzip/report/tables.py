"""What every table of the report shows: its columns and their cell text, rows per dataset, the best bpd per array,
the baseline settings and the reproducibility lines; the Markdown, LaTeX and HTML writers share them."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["COLUMNS", "MODEL_METHODS", "model_chunks", "number_text", "reason_text", "by_dataset", "best_bpd",
           "is_best", "baseline_settings", "repro_items", "summary", "summary_cell"]


def number_text(v: Any, fmt: str) -> str:
    """`v` formatted with `fmt`, or "-" for null."""
    return "-" if v is None else format(float(v), fmt)


def _ci(v: Any) -> str:
    return "-" if v is None else f"[{float(v[0]):.3f}, {float(v[1]):.3f}]"


def _verified(v: Any) -> str:
    return {True: "yes", False: "NO", None: "-"}[v]


def reason_text(row: Mapping) -> str:
    """Why a codec does not apply, on one line."""
    return " ".join(str(row.get("reason") or "no reason given").split())


MODEL_METHODS = ("model", "masked-model")  # chunk methods that hold the model's code (others: a fallback)


def model_chunks(row: Mapping) -> tuple[int, int] | None:
    """(chunks the model coded, chunks) of a model row that counted its chunks by method, else None."""
    methods = row.get("chunks_by_method")
    if not methods:
        return None
    return sum(int(n) for m, n in methods.items() if m in MODEL_METHODS), sum(int(n) for n in methods.values())


def _chunks_text(row: Mapping) -> str:
    """"19/30": chunks the model coded of all (the rest went to the fallback), or "-"."""
    found = model_chunks(row)
    return "-" if found is None else f"{found[0]}/{found[1]}"


def _size_text(row: Mapping) -> str:
    """A model's parameters and the bytes of its weights file, e.g. "193k / 780 KB", or "-"."""
    n, b = row.get("parameters"), row.get("weight_bytes")
    if n is None:
        return "-"
    count = f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)
    return count if b is None else f"{count} / {b / 1e3:.0f} KB"


def _bpd_text(row: Mapping) -> str:
    """The bpd cell: the value, or "n/a (reason)" for a codec that does not apply or a model that codes nothing
    (an NLL-only model: its NLL stands in its own column)."""
    if row["applicable"] and row["bpd"] is None:
        return f"n/a ({reason_text(row)})"
    if row["applicable"]:
        return number_text(row["bpd"], ".3f")
    if row["bpd"] is None:
        return f"n/a ({reason_text(row)})"
    return f"{float(row['bpd']):.3f} (n/a: {reason_text(row)})"  # e.g. an array stored with the fallback


# (header, cell text) for Markdown, HTML and the CSV-free readers; LaTeX picks a narrower subset (latex.py)
COLUMNS: list[tuple[str, Callable[[Mapping], str]]] = [
    ("array", lambda r: r["array"]),
    ("codec", lambda r: r["codec"]),
    ("kind", lambda r: r["kind"]),
    ("bpd", _bpd_text),
    ("NLL bpd", lambda r: number_text(r["nll_bpd"], ".3f")),
    ("overhead %", lambda r: number_text(r["overhead_pct"], ".2f")),
    ("ratio", lambda r: number_text(r["ratio"], ".2f")),
    ("bpd std", lambda r: number_text(r["bpd_std"], ".3f")),
    ("95% CI", lambda r: _ci(r["bpd_ci95"])),
    ("images", lambda r: str(int(r["images"]))),
    ("dims", lambda r: str(int(r["dims"]))),
    ("enc MB/s", lambda r: number_text(r["encode_mbps"], ".3g")),
    ("dec MB/s", lambda r: number_text(r["decode_mbps"], ".3g")),
    ("device", lambda r: r["device"] or "-"),
    ("model chunks", _chunks_text),
    ("params / weights", _size_text),
    ("verified", lambda r: _verified(r["verified"])),
]


def by_dataset(rows: Sequence[Mapping]) -> dict[str, list[Mapping]]:
    """Rows per dataset (first-seen order), within a dataset grouped by array (first-seen order)."""
    out: dict[str, dict[str, list[Mapping]]] = {}
    for row in rows:
        out.setdefault(row["dataset"], {}).setdefault(row["array"], []).append(row)
    return {ds: [r for group in arrays.values() for r in group] for ds, arrays in out.items()}


def best_bpd(rows: Sequence[Mapping]) -> dict[str, float]:
    """The lowest bpd of an applicable codec, per array (ties are all "best")."""
    best: dict[str, float] = {}
    for r in rows:
        if r["applicable"] and r["bpd"] is not None:
            best[r["array"]] = min(best.get(r["array"], math.inf), float(r["bpd"]))
    return best


def is_best(row: Mapping, best: Mapping[str, float]) -> bool:
    return bool(row["applicable"]) and row["bpd"] is not None and float(row["bpd"]) == best.get(row["array"])


def baseline_settings(rows: Sequence[Mapping]) -> dict[str, str]:
    from shardzip.report.baselines import BASELINE_SETTINGS

    names = dict.fromkeys(r["codec"] for r in rows if r["kind"] == "baseline")
    return {n: BASELINE_SETTINGS[n] for n in names if n in BASELINE_SETTINGS}


def repro_items(repro: Mapping) -> list[tuple[str, str]]:
    """(label, text) lines of the reproducibility block, maps flattened as "name: value; ...". Extra keys kept."""
    def flat(v: Any) -> str:
        if isinstance(v, Mapping):
            return "; ".join(f"{k}: {e}" for k, e in v.items()) or "-"
        return str(v)

    order = ["command", "code_version", "date", "hardware", "models", "datasets", "libraries"]
    keys = order + [k for k in repro if k not in order]
    return [(k.replace("_", " "), flat(repro[k])) for k in keys if k in repro]


def summary(rows: Sequence[Mapping]) -> tuple[list[str], list[tuple[str, str]], dict[tuple[str, str], tuple]]:
    """The table across datasets: (datasets, codecs as (name, kind), cells). A cell (bpd, arrays coded, arrays) per
    codec and dataset: its coded bits over the values of the arrays it applies to, on how many of the dataset's
    arrays (a codec compared on fewer arrays than another is compared on other data: the count says so)."""
    rows = [r for r in rows if r["array"] != "(all)"]  # the aggregates would count their arrays twice
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    codecs = list(dict.fromkeys((r["codec"], r["kind"]) for r in rows))
    codecs.sort(key=lambda c: c[1] != "model")  # models first, in their order, then the baselines
    arrays = {ds: len({r["array"] for r in rows if r["dataset"] == ds}) for ds in datasets}
    cells = {}
    for ds in datasets:
        for name, _ in codecs:
            got = [r for r in rows if r["dataset"] == ds and r["codec"] == name and r["applicable"]
                   and r["bpd"] is not None and r["dims"]]
            dims = sum(int(r["dims"]) for r in got)
            bpd = sum(float(r["bpd"]) * int(r["dims"]) for r in got) / dims if dims else None
            cells[(ds, name)] = (bpd, len(got), arrays[ds])
    return datasets, codecs, cells


def summary_cell(cell: tuple) -> str:
    """"1.213 (3/3 arrays)", or "-" where the codec coded none of the dataset's arrays."""
    bpd, coded, total = cell
    return "-" if bpd is None else f"{bpd:.3f} ({coded}/{total})"
