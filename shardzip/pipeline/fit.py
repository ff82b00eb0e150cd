"""Client side of `shardzip fit SRC --out MODEL`: sample a source on the workers, train on one of them.

The client opens the source's metadata only: it chooses the arrays to fit (numeric rasters and
images of one band count), cuts them into regions of at most 256 x 256 pixels (all bands; along an
item or time axis, groups of frames), shuffles the regions with the seed, holds out a fraction of
them for validation (other regions or frames than the training ones), and keeps as many as the
sample budget allows. Workers read the regions (`workers.fit.sample_region`); the training task
(`workers.fit.fit_task`, on a GPU worker where there is one) receives them from the workers, trains,
and returns the fitted checkpoint, which the client writes to `--out`: one self-describing file
(family, hyper-parameters, weights and their digest, and a `fit` record: source, arrays, sample
fingerprint, validation bpd next to zstd and JPEG-XL on the same regions, the command).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shardzip.errors import ShardzipError, SourceError
from shardzip.fit import (
    FIT_FAMILIES,
    FIT_FAMILY,
    WEIGHT_SHARE,
    FitError,
    FitSettings,
    n_params,
    sized_hparams,
    weight_budget,
    width_hparams,
)
from shardzip.format.layout import canonical, channels_of
from shardzip.pipeline.cluster import AUTO, format_resources
from shardzip.pipeline.plan import open_source, raster_tiles, resolve_source, source_arrays

if TYPE_CHECKING:
    from shardzip.models import LosslessModel

SAMPLE_MB = 64.0          # raw bytes of the source read for a fit (training + validation regions)
VALIDATION = 0.2          # fraction of the sampled regions held out for validation
VALIDATION_VALUES = 1 << 19  # at most this many values in the held-out regions (scored every few hundred steps)
REGION_BYTES = 1 << 18    # ~raw bytes of frames per region along an item axis (as the store's tiles)
TIME_NAMES = ("time", "t", "frame", "frames", "sweep", "step")  # first dimensions read as frames of a sequence
MIN_REGIONS = 20        # fewer: cut smaller regions (a held-out fifth of a handful of regions is one tile)


def fit_layout(shape: tuple[int, ...], attrs: dict, dims: list[str] | None = None) -> str | None:
    """How a fit reads an array's images: its `shardzip_layout` attribute; frames first where the first dimension
    is named like time (`dims`); else bands first or last where an axis is small (<= 16) beside two spatial axes
    of at least 16, else a stack of one-band images, else None."""
    given = attrs.get("shardzip_layout") or attrs.get("layout")
    if given:
        return str(given)
    nd = len(shape)
    if nd == 3 and dims and str(dims[0]).lower() in TIME_NAMES and min(shape[1:]) >= 16:
        return "NHW"
    if nd == 2:
        return "HW" if min(shape) >= 16 else None
    if nd == 3:
        if shape[0] <= 16 and min(shape[1:]) >= 16:
            return "CHW"
        if shape[2] <= 16 and min(shape[:2]) >= 16:
            return "HWC"
        return "NHW" if min(shape[1:]) >= 16 else None
    if nd == 4:
        if shape[1] <= 16 and min(shape[2:]) >= 16:
            return "NCHW"
        if shape[3] <= 16 and min(shape[1:3]) >= 16:
            return "NHWC"
    return None


def _regions(shape: tuple[int, ...], layout: str, itemsize: int, side: int) -> list[tuple[tuple[int, int], ...]]:
    """The array cut into regions of at most `side` x `side` pixels with every band (along an item or time axis,
    ~REGION_BYTES of frames per region, as the store's tiles)."""
    lay = canonical(layout)
    chunks = list(raster_tiles(shape, layout, itemsize, REGION_BYTES)[0])
    for axis in (lay.index("H"), lay.index("W")):
        chunks[axis] = min(side, shape[axis])
    grid = [range(0, s, c) for s, c in zip(shape, chunks, strict=True)]
    return [tuple((a, min(a + c, s)) for a, c, s in zip(start, chunks, shape, strict=True))
            for start in np.array(np.meshgrid(*grid, indexing="ij")).reshape(len(shape), -1).T.tolist()]


def plan_sample(arrays: list[tuple[str, Any, str]], seed: int, sample_mb: float, validation: float
                ) -> list[dict]:
    """Regions to read: [{array, region, role}], validation regions disjoint from training ones."""
    regions = []
    for side in (256, 128, 64):  # too few regions for a fair validation split: cut smaller ones
        regions = []
        for path, arr, layout in arrays:
            for reg in _regions(tuple(arr.shape), layout, np.dtype(arr.dtype).itemsize, side):
                regions.append((path, reg, math.prod(b - a for a, b in reg) * np.dtype(arr.dtype).itemsize))
        if len(regions) >= MIN_REGIONS:
            break
    if len(regions) < 2:
        raise FitError("the source is too small to hold out validation regions from training ones (2 regions at "
                       "least); fit on a larger sample of the data")
    order = np.random.default_rng(seed).permutation(len(regions))
    budget = sample_mb * 1e6
    n_val = max(1, round(len(regions) * validation))
    out, used, val_values = [], 0, 0
    for rank, i in enumerate(order):
        path, reg, nbytes = regions[i]
        role = "validation" if rank < n_val else "train"
        values = math.prod(b - a for a, b in reg)
        if role == "validation" and rank > 0 and (used + nbytes > validation * budget
                                                  or val_values + values > VALIDATION_VALUES):
            continue  # validation within its share of the budget, and quick to score every few hundred steps
        if role == "train" and used + nbytes > budget and any(r["role"] == "train" for r in out):
            break
        out.append({"array": path, "region": [list(r) for r in reg], "role": role})
        used += nbytes
        val_values += values if role == "validation" else 0
    return out


def choose_arrays(root, src_url: str, wanted: list[str] | None, log) -> list[tuple[str, Any, str]]:
    """(path, array, layout) of the arrays to fit: those named, else every numeric image/raster array of the band
    count that holds the most values (the others are listed with the reason)."""
    arrays = source_arrays(root)
    if arrays and arrays[0][0] == "":
        arrays = [(src_url.rstrip("/").rpartition("/")[2].removesuffix(".zarr") or "data", arrays[0][1])]
        single = True
    else:
        single = False
    by_path = dict(arrays)
    if wanted:
        missing = [w for w in wanted if w not in by_path]
        if missing:
            raise SourceError(f"source {src_url} has no array {', '.join(map(repr, missing))}; it has "
                              f"{', '.join(sorted(by_path)) or 'none'}")
    chosen = []
    for path, arr in arrays:
        if wanted and path not in wanted:
            continue
        dtype = np.dtype(arr.dtype)
        dims = getattr(arr.metadata, "dimension_names", None) or arr.attrs.get("_ARRAY_DIMENSIONS")
        layout = fit_layout(tuple(arr.shape), dict(arr.attrs), dims) if dtype.kind in "uif" else None
        if layout is None:
            why = (f"{dtype} values" if dtype.kind not in "uif" else f"shape {tuple(arr.shape)} is not an image or "
                   "raster (two axes of at least 16, bands <= 16; or set its shardzip_layout attribute)")
            if wanted:
                raise FitError(f"array {path!r} of {src_url} cannot be fitted: {why}")
            log(f"  {path}: skipped ({why})")
            continue
        chosen.append((path, arr, layout))
    if not chosen:
        raise FitError(f"no array of {src_url} is a numeric image or raster a model can fit (see above); name the "
                       "arrays with --array and set their shardzip_layout attribute")
    bands: dict[int, int] = {}
    for _, arr, layout in chosen:
        c = channels_of(tuple(arr.shape), layout)
        bands[c] = bands.get(c, 0) + int(np.prod(arr.shape))
    keep = max(bands, key=lambda c: bands[c])
    if len(bands) > 1:
        if wanted:
            counts = ", ".join(f"{p}: {channels_of(tuple(a.shape), lay)}" for p, a, lay in chosen)
            raise FitError(f"the arrays named have different band counts ({counts}); one model fits one band count: "
                           "fit them separately")
        for p, a, lay in chosen:
            if channels_of(tuple(a.shape), lay) != keep:
                log(f"  {p}: skipped ({channels_of(tuple(a.shape), lay)} band(s); this fit is for {keep})")
        chosen = [(p, a, lay) for p, a, lay in chosen if channels_of(tuple(a.shape), lay) == keep]
    return [("" if single else p, a, lay) for p, a, lay in chosen]


def closest_start(bands: int, itemsize: int, catalog=None, sequence: bool = False,
                  budget: int | None = None) -> str | None:
    """The shipped msp model of `bands` bands (with previous-frame context for a sequence) whose alphabet is
    nearest the data's bits and whose float16 weights fit `budget` bytes, or None (a user's own models are
    started from by name: --from NAME)."""
    from shardzip.catalog import load_catalog

    cat = catalog or load_catalog()
    candidates = [(name, e.hparams) for name, e in cat.models.items()
                  if e.family == FIT_FAMILY and e.sha256 and bool(e.hparams.get("cond_channels")) == sequence]
    best = None
    for name, hp in candidates:
        if int(hp.get("channels", 1)) != bands or (budget is not None and 2 * n_params(hp) > budget):
            continue
        score = abs(int(hp.get("data_bits", 16)) - 8 * itemsize)
        if best is None or score < best[0]:
            best = (score, name)
    return best[1] if best else None


def is_sequence(arr, layout: str) -> bool:
    """Whether an array's items are the frames of a sequence: an item axis first, and a TYX-style layout or a
    time-like first dimension name (time, t, frame, sweep, ...)."""
    if not canonical(layout).startswith("N"):
        return False
    if layout.upper().startswith("T"):
        return True
    names = getattr(arr.metadata, "dimension_names", None) or arr.attrs.get("_ARRAY_DIMENSIONS") or []
    return bool(names) and str(names[0]).lower() in TIME_NAMES


def _check_out(out: Path, overwrite: bool, resume: bool) -> None:
    if out.is_dir():
        raise FitError(f"--out {out} is a directory; give the path of the model file to write (e.g. {out}/model.pt)")
    if out.exists() and not (overwrite or resume):
        raise FitError(f"--out {out} already exists; pass --overwrite to replace it")
    probe = out.with_name(f".{out.name}.probe-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise FitError(f"cannot write the model file {out}: {exc.strerror or exc}; choose a writable --out") from exc


FAMILY_WHY = {"msp": "a sequence: each frame coded given the one before",
              "causal": "independent images: each pixel given its whole causal neighbourhood, few weights"}


def auto_family(sequence: bool, start: LosslessModel | None = None) -> str:
    """The family `fit` trains when not told (`--family auto`): the starting model's, else msp for the frames of
    a sequence (only msp sees the previous frame) and causal for independent images. Measured with 20-minute
    fits (README, "Fitted models"): causal beat msp on the aerial scene (0.92 against 1.06 x JPEG-XL with the
    weights counted) and on Landsat 8; msp with the previous frame reached 0.78 x on the sea-surface series.
    A starting model of a family fit does not train (idf, vae, ...) does not choose: the data's family does, and
    the start is then refused as of another family."""
    if start is not None and start.family in FIT_FAMILIES:
        return start.family
    return "msp" if sequence else "causal"


def fit(src: str, out: str, *, name: str | None = None, arrays: list[str] | None = None, start: str = "auto",
        family: str = "auto",
        settings: FitSettings | None = None, frames: str = "auto", hidden: int | None = None,
        resume: bool = False, overwrite: bool = False,
        run_dir: str | None = None, sample_mb: float = SAMPLE_MB, validation: float = VALIDATION,
        scheduler: str | None = None, workers: int | None = None, storage_options: dict | None = None,
        progress: bool = True, resources: dict | str | None = AUTO, catalog=None, command: list[str] | None = None,
        log=print, stop_after: int | None = None) -> dict:
    """Fit a model to the arrays of `src` and write it to `out` (and name it `name` in the user catalog).

    Returns {"path", "sha256", "fit" (the record saved in the file), "name"}; with `stop_after` (tests: an
    interruption after that step's checkpoint) {"stopped": True}."""
    from shardzip.catalog import UserModelEntry, load_catalog, register_user_model
    from shardzip.digest import sha256_file
    from shardzip.pipeline.cluster import job_client, placement
    from shardzip.pipeline.jobs import _load_model, _wait_for_workers
    from shardzip.workers.fit import fit_task, sample_region

    settings = settings or FitSettings(minutes=10.0)
    settings.check()
    if family != "auto" and family not in FIT_FAMILIES:
        raise FitError(f"--family {family!r}: fit trains {' or '.join(FIT_FAMILIES)} (or auto)")
    if not 0 < validation < 1:
        raise FitError(f"--validation must lie between 0 and 1, got {validation}")
    if not sample_mb > 0:
        raise FitError(f"--sample-mb must be more than 0, got {sample_mb}")
    out_path = Path(out).expanduser().resolve()
    _check_out(out_path, overwrite, resume)
    run = Path(run_dir).expanduser().resolve() if run_dir else out_path.with_name(out_path.name + ".run")
    if resume and not (run / "last.pt").is_file():
        raise FitError(f"nothing to resume: {run}/last.pt does not exist (give the --run-dir of the interrupted "
                       "fit, or leave --resume out)")
    cat = catalog or load_catalog()
    if name is not None:  # refuse a bad name before training, not after
        from shardzip.errors import CatalogError

        if name in cat.models:
            raise CatalogError(f"--name {name!r} is a model shipped with shardzip; choose another name")
    src_url = resolve_source(src, cat)
    root = open_source(src_url, storage_options)
    chosen = choose_arrays(root, src_url, arrays, log)
    layouts = {canonical(lay) for _, _, lay in chosen}
    bands = channels_of(tuple(chosen[0][1].shape), chosen[0][2])
    itemsize = max(np.dtype(a.dtype).itemsize for _, a, _ in chosen)
    if frames not in ("auto", "sequence", "independent"):
        raise FitError(f"--frames {frames!r}: auto, sequence or independent")
    if frames == "sequence" and not all(canonical(lay).startswith("N") for _, _, lay in chosen):
        raise FitError("--frames sequence: the arrays have no frame axis first (layout "
                       f"{'/'.join(sorted(layouts))}); set their shardzip_layout attribute (e.g. TYX)")
    sequence = frames == "sequence" or (frames == "auto" and all(is_sequence(a, lay) for _, a, lay in chosen))
    if family == "auto":
        family = auto_family(sequence, None if start in ("auto", "scratch") else _load_model(start, cat)[0])
        log(f"  family {family} ({FAMILY_WHY[family]})")
    if family == "causal" and sequence:
        if frames == "sequence":
            raise FitError("--family causal codes each frame on its own (no previous-frame context): use "
                           "--frames independent, or --family msp for a sequence")
        log("  causal models code each frame on its own: the frames are fitted as independent images")
        sequence = False
    values = sum(int(np.prod(a.shape)) for _, a, _ in chosen)
    budget = weight_budget(values, itemsize, family)
    size = sized_hparams(bands, sequence, budget, family) if hidden is None else width_hparams(hidden, family)
    if start == "auto":  # a shipped model to fine-tune, where the data is large enough to carry its weights
        start_name = (closest_start(bands, itemsize, cat, sequence, budget if hidden is None else None)
                      if family == FIT_FAMILY else None)
    else:
        start_name = None if start == "scratch" else start
    start_bytes = None
    if start_name is not None:
        smodel, ref = _load_model(start_name, cat)
        if smodel.family != family or smodel.channels != bands:
            raise FitError(f"--from {start_name}: a {smodel.family} model of {smodel.channels} band(s) cannot start "
                           f"a fit of {bands}-band data (--family {family}); give a {family} model of {bands} "
                           "band(s), or --from scratch")
        if smodel.sequence != sequence:
            context = "with" if smodel.sequence else "without"
            raise FitError(f"--from {start_name}: a model {context} previous-frame context cannot start a fit of "
                           f"{'a sequence' if sequence else 'independent images'} (--frames)")
        start_bytes = ref.checkpoint.read_bytes()
    regions = plan_sample(chosen, settings.seed, sample_mb, validation)
    paths = {p: (p if p else "") for p, _, _ in chosen}
    layout_of = {p: lay for p, _, lay in chosen}
    attrs_of = {p: dict(a.attrs) for p, a, _ in chosen}
    fills = {p: a.fill_value for p, a, _ in chosen}
    from shardzip.format.chunk import Packing

    specs = []
    for r in regions:
        fill = fills[r["array"]]
        packing = Packing.from_attrs(attrs_of[r["array"]], fill.item() if hasattr(fill, "item") else fill).as_dict()
        specs.append({"src": src_url, "src_options": storage_options or {}, "src_path": paths[r["array"]],
                      "region": r["region"], "role": r["role"], "layout": layout_of[r["array"]], "packing": packing,
                      "key": f"{r['array']}:{r['region']}"})
    n_val = sum(1 for r in regions if r["role"] == "validation")
    log(f"fit {src_url}: {len(chosen)} array(s) ({', '.join(p or '/' for p, _, _ in chosen)}), {bands} band(s), "
        f"layout {'/'.join(sorted(layouts))}{', frames of a sequence' if sequence else ''}; sample of "
        f"{len(regions) - n_val} training and {n_val} validation regions; starting "
        + (f"from {start_name}" if start_name else f"from scratch, hidden width {size['hidden']} (weights of at most "
                                                  f"~{100 * WEIGHT_SHARE[family]:g} % of {values} values coded)"))
    fit_spec = {"settings": settings.as_dict(), "run_dir": str(run), "resume": resume, "start": start_bytes,
                "start_path": str(run / "start.pt"), "start_name": start_name, "source": src_url,
                "arrays": [p or "/" for p, _, _ in chosen], "layout": "/".join(sorted(layouts)),
                "sequence": sequence, "size": size,
                "command": " ".join(command or ["shardzip", "fit", src, "--out", out]), "stop_after": stop_after}
    with job_client(scheduler, workers) as client:
        _wait_for_workers(client)
        resources, device = placement(client, resources)
        topic = f"shardzip-fit-{uuid.uuid4().hex[:8]}"
        fit_spec.update(topic=topic, device=device)
        log(f"training on a worker with resources {format_resources(resources)}; device {device}; run directory "
            f"{run}")
        samples = client.map(sample_region, specs, pure=False, key=[f"shardzip-fit-sample-{i}-{uuid.uuid4().hex[:6]}"
                                                                    for i in range(len(specs))])
        future = client.submit(fit_task, fit_spec, samples, pure=False, resources=resources,
                               key=f"shardzip-fit-train-{uuid.uuid4().hex[:6]}")
        bar = _FitProgress(settings, progress)
        try:
            while not future.done():
                time.sleep(0.5)
                bar.drain(client, topic)
            bar.drain(client, topic)
            result = future.result()
        except ShardzipError:
            raise
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a worker raised: name the fit and the way on
            raise FitError(f"the fit of {src_url} failed on its worker: {type(exc).__name__}: {exc}; checkpoints are "
                           f"in {run}: run the same command with --resume to continue") from exc
        finally:
            bar.close()
            future.cancel()
            for f in samples:
                f.cancel()
    if result.get("stopped"):
        return {"stopped": True, "run_dir": str(run)}
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(result["checkpoint"])
    tmp.replace(out_path)
    sha = sha256_file(out_path)
    from shardzip.format.weights import install_weights

    install_weights(sha, result["checkpoint"])  # stores coded with it read back on this machine in any process
    record = result["fit"]
    named = None
    if name is not None:
        named = register_user_model(name, UserModelEntry(
            family=family, path=str(out_path), sha256=sha, validation_bpd=record["validation_bpd"],
            source=src_url, fitted=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            command=record["command"]), cat)
    return {"path": str(out_path), "sha256": sha, "fit": record, "name": name, "user_catalog": named,
            "run_dir": str(run)}


class _FitProgress:
    """tqdm bar over steps (or seconds, for a --minutes budget) with the running loss and validation bpd."""

    def __init__(self, settings: FitSettings, enabled: bool) -> None:
        from tqdm import tqdm

        self.by_time = settings.steps is None
        total = int(60 * settings.minutes) if self.by_time else settings.steps
        self.bar = tqdm(total=total, unit="s" if self.by_time else "step", desc="fit", disable=not enabled,
                        file=sys.stderr, dynamic_ncols=True)
        self.post: dict[str, str] = {}
        self.last = -math.inf

    def drain(self, client, topic: str) -> None:
        """Show the training task's events (`Worker.log_event` on `topic`) not shown yet: those after the last
        one shown. The scheduler keeps only the latest events of a topic (`distributed.admin.low-level-log-length`,
        1000 by default), so counting them stalled the bar once that many had come (a causal fit's 10 000th
        step)."""
        try:
            events = client.get_events(topic)
        except Exception:  # noqa: BLE001 - progress is best effort: the job's outcome comes from its future
            return
        for stamp, event in events:
            if stamp > self.last:
                self.update(event)
                self.last = stamp

    def update(self, event: dict) -> None:
        if "validation_bpd" in event:
            self.post["val bpd"] = f"{event['validation_bpd']:.4f}"
        if event.get("loss") is not None:
            self.post["train bpd"] = f"{event['loss']:.4f}"
            self.post["step"] = str(event["step"])
        done = int(event.get("elapsed", 0)) if self.by_time else int(event.get("step", 0))
        if done > self.bar.n:
            self.bar.update(min(done, self.bar.total) - self.bar.n)
        self.bar.set_postfix(self.post, refresh=True)

    def close(self) -> None:
        self.bar.close()


def format_fit(result: dict) -> str:
    """What `shardzip fit` prints at the end: the model file, its sha256, and validation bpd next to the codecs."""
    rec = result["fit"]
    lines = [f"{result['path']}: {rec.get('family', FIT_FAMILY)} model of {rec['profile']['bands']} band(s), "
             f"{rec['profile']['bits']}-bit values, {rec['started']}"
             + (f" from {rec['start_model']}" if rec.get("start_model") else "")
             + f"; {rec['steps']} steps in {rec['seconds']:.0f} s (best at step {rec['best_step']})",
             f"  sha256 {result['sha256']}"]
    cl = rec["classical_bpd"]
    cells = [f"model {rec['validation_bpd']:.4f}"] + [f"{k} {v:.4f}" for k, v in cl.items() if v is not None]
    ratio = ""
    if cl.get("jpegxl"):
        ratio = f" ({rec['validation_bpd'] / cl['jpegxl']:.3f} x JPEG-XL)"
    lines.append(f"  validation bpd on {rec['validation_regions']} held-out region(s), {rec['validation_values']} "
                 f"values: {', '.join(cells)}{ratio}")
    if result.get("name"):
        lines.append(f"  named {result['name']!r} in {result['user_catalog']}: use --model {result['name']}")
    else:
        lines.append(f"  use it with --model {result['path']}")
    return "\n".join(lines)
