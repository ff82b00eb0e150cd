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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shardzip.errors import FitError, ShardzipError
from shardzip.fit import FitSettings
from shardzip.format.layout import canonical, channels_of
from shardzip.models.fitting import (
    FIT_FAMILIES,
    FIT_FAMILY,
    WEIGHT_SHARE,
    closest_start,
    fit_family,
    sized_hparams,
    weight_budget,
    width_hparams,
)
from shardzip.pipeline.cluster import AUTO, format_resources
from shardzip.pipeline.fit_sample import choose_arrays, is_sequence, plan_sample, sample_specs
from shardzip.pipeline.plan import open_source, resolve_source

SAMPLE_MB = 64.0          # raw bytes of the source read for a fit (training + validation regions)
VALIDATION = 0.2          # fraction of the sampled regions held out for validation


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
    from shardzip.catalog import load_catalog
    from shardzip.pipeline.run import job_cluster

    settings = settings or FitSettings(minutes=10.0)
    _check_options(settings, family, validation, sample_mb, frames)
    out_path, run = _fit_paths(out, run_dir, overwrite, resume)
    cat = catalog or load_catalog()
    if name is not None and name in cat.models:  # refuse a bad name before training, not after
        from shardzip.errors import CatalogError

        raise CatalogError(f"--name {name!r} is a model shipped with shardzip; choose another name")
    src_url = resolve_source(src, cat)
    data = _fit_data(src_url, open_source(src_url, storage_options), arrays, frames, family, start, cat, log)
    budget = weight_budget(data.values, data.itemsize, data.family)
    size = (sized_hparams(data.bands, data.sequence, budget, data.family) if hidden is None
            else width_hparams(hidden, data.family))
    start_name, start_bytes = _start_model(start, data, cat, budget if hidden is None else None)
    regions = plan_sample(data.chosen, settings.seed, sample_mb, validation)
    specs = sample_specs(data.chosen, regions, src_url, storage_options)
    n_val = sum(1 for r in regions if r["role"] == "validation")
    log(f"fit {src_url}: {len(data.chosen)} array(s) ({', '.join(p or '/' for p, _, _ in data.chosen)}), "
        f"{data.bands} band(s), layout {data.layout}{', frames of a sequence' if data.sequence else ''}; sample of "
        f"{len(regions) - n_val} training and {n_val} validation regions; starting "
        + (f"from {start_name}" if start_name else f"from scratch, hidden width {size['hidden']} (weights of at most "
                                                  f"~{100 * WEIGHT_SHARE[data.family]:g} % of {data.values} values "
                                                  "coded)"))
    fit_spec = {"settings": settings.as_dict(), "run_dir": str(run), "resume": resume, "start": start_bytes,
                "start_path": str(run / "start.pt"), "start_name": start_name, "source": src_url,
                "arrays": [p or "/" for p, _, _ in data.chosen], "layout": data.layout,
                "sequence": data.sequence, "size": size,
                "command": " ".join(command or ["shardzip", "fit", src, "--out", out]), "stop_after": stop_after}
    with job_cluster(scheduler, workers, resources) as cluster:
        log(f"training on a worker with resources {format_resources(cluster.resources)}; device {cluster.device}; "
            f"run directory {run}")
        result = _train_on_worker(cluster, specs, fit_spec, settings, progress)
    if result.get("stopped"):
        return {"stopped": True, "run_dir": str(run)}
    return _write_model(result, out_path, run, name, data.family, src_url, cat)


def _check_options(settings: FitSettings, family: str, validation: float, sample_mb: float, frames: str) -> None:
    settings.check()
    if family != "auto" and family not in FIT_FAMILIES:
        raise FitError(f"--family {family!r}: fit trains {' or '.join(FIT_FAMILIES)} (or auto)")
    if not 0 < validation < 1:
        raise FitError(f"--validation must lie between 0 and 1, got {validation}")
    if not sample_mb > 0:
        raise FitError(f"--sample-mb must be more than 0, got {sample_mb}")
    if frames not in ("auto", "sequence", "independent"):
        raise FitError(f"--frames {frames!r}: auto, sequence or independent")


def _fit_paths(out: str, run_dir: str | None, overwrite: bool, resume: bool) -> tuple[Path, Path]:
    """The model file to write (checked writable) and the run directory of the fit's checkpoints."""
    out_path = Path(out).expanduser().resolve()
    _check_out(out_path, overwrite, resume)
    run = Path(run_dir).expanduser().resolve() if run_dir else out_path.with_name(out_path.name + ".run")
    if resume and not (run / "last.pt").is_file():
        raise FitError(f"nothing to resume: {run}/last.pt does not exist (give the --run-dir of the interrupted "
                       "fit, or leave --resume out)")
    return out_path, run


@dataclass(frozen=True)
class _FitData:
    """The arrays a fit trains on, as (path, array, layout), and what the model must be for them."""

    chosen: list
    layout: str
    bands: int
    itemsize: int
    values: int
    sequence: bool
    family: str


def _fit_data(src_url: str, root, arrays: list[str] | None, frames: str, family: str, start: str, cat,
              log) -> _FitData:
    """The arrays to fit, whether their items are frames of a sequence, and the family to train."""
    from shardzip.pipeline.refs import load_model

    chosen = choose_arrays(root, src_url, arrays, log)
    layouts = {canonical(lay) for _, _, lay in chosen}
    if frames == "sequence" and not all(canonical(lay).startswith("N") for _, _, lay in chosen):
        raise FitError("--frames sequence: the arrays have no frame axis first (layout "
                       f"{'/'.join(sorted(layouts))}); set their shardzip_layout attribute (e.g. TYX)")
    sequence = frames == "sequence" or (frames == "auto" and all(is_sequence(a, lay) for _, a, lay in chosen))
    starting = None if family != "auto" or start in ("auto", "scratch") else load_model(start, cat)[0]
    family, sequence = fit_family(family, sequence, frames, starting, log)
    return _FitData(chosen, "/".join(sorted(layouts)), channels_of(tuple(chosen[0][1].shape), chosen[0][2]),
                    max(np.dtype(a.dtype).itemsize for _, a, _ in chosen),
                    sum(int(np.prod(a.shape)) for _, a, _ in chosen), sequence, family)


def _start_model(start: str, data: _FitData, cat, budget: int | None) -> tuple[str | None, bytes | None]:
    """The model a fit starts from (`--from`; auto: a shipped model to fine-tune, where the data is large enough to
    carry its weights) and its checkpoint's bytes; (None, None) from scratch."""
    from shardzip.pipeline.refs import load_model

    if start == "auto":
        name = closest_start(data.bands, data.itemsize, cat, data.sequence, budget, data.family)
    else:
        name = None if start == "scratch" else start
    if name is None:
        return None, None
    smodel, ref = load_model(name, cat)
    if smodel.family != data.family or smodel.channels != data.bands:
        raise FitError(f"--from {name}: a {smodel.family} model of {smodel.channels} band(s) cannot start a fit "
                       f"of {data.bands}-band data (--family {data.family}); give a {data.family} model of "
                       f"{data.bands} band(s), or --from scratch")
    if smodel.sequence != data.sequence:
        context = "with" if smodel.sequence else "without"
        raise FitError(f"--from {name}: a model {context} previous-frame context cannot start a fit of "
                       f"{'a sequence' if data.sequence else 'independent images'} (--frames)")
    return name, ref.checkpoint.read_bytes()


def _train_on_worker(cluster, specs: list[dict], fit_spec: dict, settings: FitSettings, progress: bool) -> dict:
    """Sample the regions on the workers and train on one of them, following its events: the task's result."""
    from shardzip.workers.fit import fit_task, sample_region

    client = cluster.client
    topic = f"shardzip-fit-{uuid.uuid4().hex[:8]}"
    fit_spec = {**fit_spec, "topic": topic, "device": cluster.device}
    samples = client.map(sample_region, specs, pure=False, key=[f"shardzip-fit-sample-{i}-{uuid.uuid4().hex[:6]}"
                                                                for i in range(len(specs))])
    future = client.submit(fit_task, fit_spec, samples, pure=False, resources=cluster.resources,
                           key=f"shardzip-fit-train-{uuid.uuid4().hex[:6]}")
    bar = _FitProgress(settings, progress)
    try:
        while not future.done():
            time.sleep(0.5)
            bar.drain(client, topic)
        bar.drain(client, topic)
        return future.result()
    except (ShardzipError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a worker raised: name the fit and the way on
        raise FitError(f"the fit of {fit_spec['source']} failed on its worker: {type(exc).__name__}: {exc}; "
                       f"checkpoints are in {fit_spec['run_dir']}: run the same command with --resume to continue"
                       ) from exc
    finally:
        bar.close()
        future.cancel()
        for f in samples:
            f.cancel()


def _write_model(result: dict, out_path: Path, run: Path, name: str | None, family: str, src_url: str, cat) -> dict:
    """Write the fitted checkpoint to `out_path` (atomically), install it for this machine's readers and name it
    in the user catalog when asked."""
    from shardzip.catalog import UserModelEntry, register_user_model
    from shardzip.digest import sha256_file
    from shardzip.format.weights import install_weights

    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(result["checkpoint"])
    tmp.replace(out_path)
    sha = sha256_file(out_path)
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
