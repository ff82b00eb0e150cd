"""Array layouts: which axis of an array is the image batch, the channels, the rows and the columns.

A layout is a string over the letters N (items), C (channels), H (rows) and W (columns), one per
axis, e.g. "NCHW", "NHWC", "NHW", "CHW", "HW"; rasters use T/Y/X for N/H/W ("TYX", "TCYX").
Models see images as [B, C, H, W]; `to_images` and `from_images` convert a chunk both ways.
"""

from __future__ import annotations

import numpy as np

from shardzip.errors import SourceError

_CANON = {"T": "N", "Y": "H", "X": "W"}
KNOWN = ("NCHW", "NHWC", "NHW", "CHW", "HWC", "HW", "TYX", "TCYX", "TYXC")


def canonical(layout: str) -> str:
    """The layout with raster letters mapped to image letters (T->N, Y->H, X->W)."""
    return "".join(_CANON.get(ch, ch) for ch in layout.upper())


def infer_layout(shape: tuple[int, ...], channel_hint: int | None = None) -> str | None:
    """A plausible image layout for `shape`, or None when the array does not look like images.

    Channels are an axis of size 1, 3 or 4 next to the spatial axes (C first wins over C last);
    spatial axes are the last two others and must be at least 8 x 8.
    """
    nd = len(shape)
    small = {1, 3, 4} if channel_hint is None else {channel_hint}
    if nd == 2:
        layout = "HW"
    elif nd == 3:
        layout = "CHW" if shape[0] in small else ("HWC" if shape[2] in small else "NHW")
    elif nd == 4:
        layout = "NCHW" if shape[1] in small else ("NHWC" if shape[3] in small else None)
        if layout is None:
            return None
    else:
        return None
    hw = [shape[i] for i, ch in enumerate(layout) if ch in "HW"]
    return layout if min(hw) >= 8 else None


def _check(layout: str, ndim: int) -> str:
    lay = canonical(layout)
    if len(lay) != ndim or sorted(set(lay)) != sorted(lay) or not {"H", "W"} <= set(lay) or set(lay) - set("NCHW"):
        raise SourceError(f"layout {layout!r} does not describe a {ndim}-d image array (use letters N, C, H, W "
                          f"or T, Y, X once each, e.g. one of {', '.join(KNOWN)})")
    return lay


def channels_of(shape: tuple[int, ...], layout: str) -> int:
    lay = _check(layout, len(shape))
    return shape[lay.index("C")] if "C" in lay else 1


def to_images(chunk: np.ndarray, layout: str) -> np.ndarray:
    """A chunk in `layout` as images [B, C, H, W] (a view where possible)."""
    lay = _check(layout, chunk.ndim)
    x = chunk
    for ch in "NC":
        if ch not in lay:
            x = x[np.newaxis]
            lay = ch + lay
    return np.ascontiguousarray(np.transpose(x, [lay.index(ch) for ch in "NCHW"]))


def from_images(images: np.ndarray, layout: str) -> np.ndarray:
    """Images [B, C, H, W] back in `layout` (the inverse of `to_images`)."""
    lay = _check(layout, len(canonical(layout)))
    full = "NCHW"
    target = "".join(ch for ch in full if ch not in lay) + lay  # missing axes first, then the layout
    x = np.transpose(images, [full.index(ch) for ch in target])
    for _ in range(len(full) - len(lay)):
        x = x[0]
    return np.ascontiguousarray(x)
