"""The report's PNG figures (for slides, and embedded in the HTML): bpd per codec, per-image bpd, bpd per shard
and throughput. matplotlib is imported only when a figure is drawn, without pyplot's global state."""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shardzip.report.tables import by_dataset

__all__ = ["Plot", "make_plots"]


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

    for dataset, rows in by_dataset(report["rows"]).items():
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
    for dataset, rows in by_dataset(report["rows"]).items():
        timed = [r for r in rows if r["encode_mbps"] or r["decode_mbps"]]
        if timed:
            add("throughput", ["throughput", dataset], f"{dataset}: encode/decode MB/s",
                _throughput_plot(dataset, timed))
    return plots
