"""Fitting a model to the user's own data (`shardzip fit`): the parts that know nothing of Dask or zarr.

A fit trains one model on integer tiles sampled from a source (`shardzip.pipeline.fit` samples them
on the workers and runs `run_fit` as a task on one of them). Tiles are [B, C, H, W] int tensors with
-1 where a value is missing, packed exactly as the compressed format packs a chunk
(`shardzip.format.packing.raster_symbols`), so the model learns what it will code.

Training draws random crops of the training tiles, seeded (or what the model's `training_sampler`
draws: independent pixels for causal models), runs under a budget of steps or of minutes (the
learning-rate schedule follows whichever ends first), scores the validation tiles
(other regions or frames than the training tiles) every `validate_every` steps and keeps the
weights that scored best there. Every `checkpoint_every` steps the whole state is written
atomically to `<run dir>/last.pt`, with the fingerprint of the sample it trained on; `resume`
continues from it, and refuses a checkpoint of another sample.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from shardzip.errors import FitError
from shardzip.models import LosslessModel
from shardzip.models.fitting import DataProfile

WARMUP_STEPS = 100
VALIDATE_EVERY = 250  # steps of crops between validations (and checkpoints) unless told otherwise


@dataclass
class FitSettings:
    """How to train: budget (steps and/or minutes), optimiser, crops, validation and checkpoint cadence."""

    steps: int | None = None
    minutes: float | None = None
    lr: float = 2e-3
    batch: int = 8
    crop: int = 64
    seed: int = 0
    validate_every: int | None = None  # None: every 250 steps of crops, or what the model's training sampler says
    checkpoint_every: int | None = None  # None: as validate_every
    threads: int | None = None
    pixels: int | None = None  # pixels per step of a family trained from independent pixels (causal); None: its own

    def check(self) -> None:
        if self.steps is None and self.minutes is None:
            raise FitError("give a budget: --steps N or --minutes M")
        if self.steps is not None and self.steps < 1:
            raise FitError(f"--steps must be at least 1, got {self.steps}")
        if self.minutes is not None and not self.minutes > 0:
            raise FitError(f"--minutes must be more than 0, got {self.minutes}")
        for what in ("batch", "crop", "validate_every", "checkpoint_every", "pixels"):
            if getattr(self, what) is not None and getattr(self, what) < 1:
                raise FitError(f"{what} must be at least 1, got {getattr(self, what)}")
        if self.crop < 8:
            raise FitError(f"--crop must be at least 8 pixels, got {self.crop}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class FitResult:
    """What a fit produced: the chosen weights' model, its validation bpd and the run's history."""

    model: LosslessModel
    validation_bpd: float
    steps: int
    seconds: float
    best_step: int
    history: list[dict] = field(default_factory=list)


def profile_of(tiles: list[np.ndarray], sequence: bool = False) -> DataProfile:
    """The data profile of sampled tiles ([B, C, H, W], -1 missing): bands, bits of the largest value."""
    if not tiles:
        raise FitError("no tiles were sampled")
    top = max(int(t.max()) for t in tiles)
    bits = max(1, (max(top, 1)).bit_length())
    return DataProfile(bands=int(tiles[0].shape[1]), bits=bits, missing=any(bool((t < 0).any()) for t in tiles),
                       sequence=sequence)


def fingerprint(keys: list[str], tiles: list[np.ndarray]) -> str:
    """sha256 over the tiles' source keys, shapes and values: which sample a model or checkpoint was fitted to."""
    h = hashlib.sha256()
    for key, t in zip(keys, tiles, strict=True):
        arr = np.ascontiguousarray(t.astype("<i4"))
        h.update(f"{key}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


class Crops:
    """Random training crops of a set of tiles: `batch` crops of `crop` x `crop` per step, seeded; for a
    sequence, `batch` consecutive frames of one tile under one crop window (each frame's context is the one
    before, as the coder chains them)."""

    def __init__(self, tiles: list[torch.Tensor], crop: int, batch: int, generator: torch.Generator,
                 sequence: bool = False) -> None:
        # The crop side is `crop`, or the largest tile's side where no tile is that large. Tiles smaller than the
        # side are left out: the sample's edge regions can be slivers (19 rows of a 403-row scene cut into
        # 128-row regions), and shrinking every crop to the smallest tile made whole fits train on 19 x 19 crops.
        side = min(crop, max(min(t.shape[-2:]) for t in tiles))
        usable = [t for t in tiles if min(t.shape[-2:]) >= side and bool((t >= 0).any())]
        if sequence:
            usable = [t for t in usable if t.shape[0] >= 2]
        if not usable:
            raise FitError("the training tiles hold no valid values" + (" in sequences of 2 frames or more"
                                                                        if sequence else ""))
        self.tiles = usable
        self.images = [t[i] for t in usable for i in range(t.shape[0])]  # [C, H, W] each
        self.crop, self.batch, self.generator, self.sequence = side, batch, generator, sequence

    def next(self) -> torch.Tensor:
        g, c = self.generator, self.crop
        if self.sequence:
            seq = self.tiles[int(torch.randint(0, len(self.tiles), (1,), generator=g))]
            n = min(self.batch, seq.shape[0])
            t = int(torch.randint(0, seq.shape[0] - n + 1, (1,), generator=g))
            i = int(torch.randint(0, seq.shape[2] - c + 1, (1,), generator=g))
            j = int(torch.randint(0, seq.shape[3] - c + 1, (1,), generator=g))
            return seq[t:t + n, :, i:i + c, j:j + c].long()
        out = []
        for _ in range(self.batch):
            img = self.images[int(torch.randint(0, len(self.images), (1,), generator=g))]
            i = int(torch.randint(0, img.shape[1] - c + 1, (1,), generator=g))
            j = int(torch.randint(0, img.shape[2] - c + 1, (1,), generator=g))
            out.append(img[:, i:i + c, j:j + c])
        return torch.stack(out).long()


def validation_bpd(model: LosslessModel, tiles: list[torch.Tensor]) -> float:
    """NLL bits per value of whole validation tiles (missing values count as values: the store's bpd does too)."""
    was = model.training
    model.eval()
    bits, dims = 0.0, 0
    sequence = model.sequence
    with torch.no_grad():
        for t in tiles:
            if sequence:  # the tile's frames in order, each given the one before (frame 0 given nothing)
                bits += float(model.nll_bits(t.long()).sum())
            else:
                for i in range(t.shape[0]):
                    bits += float(model.nll_bits(t[i:i + 1].long()).sum())
            dims += t.numel()
    model.train(was)
    return bits / max(1, dims)


def _schedule(settings: FitSettings, step: int, elapsed: float) -> float:
    """Learning-rate factor: linear warm-up, then a cosine over the budget's progress (steps or time)."""
    progress = 0.0
    if settings.steps:
        progress = step / settings.steps
    if settings.minutes:
        progress = max(progress, elapsed / (60 * settings.minutes))
    return min(1.0, (step + 1) / WARMUP_STEPS) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _done(settings: FitSettings, step: int, elapsed: float) -> bool:
    return bool((settings.steps and step >= settings.steps) or (settings.minutes and elapsed >= 60 * settings.minutes))


def run_fit(model: LosslessModel, train: list[np.ndarray], validation: list[np.ndarray], settings: FitSettings,
            run_dir: str | Path, sample: str, resume: bool = False, report: Callable[[dict], None] | None = None,
            stop_after: int | None = None, device: str | torch.device = "cpu") -> FitResult | None:
    """Train `model` on crops of `train` tiles within the budget of `settings`; the best weights on `validation`.

    `sample` is the fingerprint of the tiles (checkpoints of another sample are refused on resume);
    `report(event)` receives {"step", "steps", "elapsed", "loss"} every few steps and {"validation_bpd"} at each
    validation. `stop_after` ends the run after that step (and its checkpoint, when one falls due), as an
    interruption would, returning None: the run is continued with `resume=True`."""
    settings.check()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = torch.device(device)
    model.to(device)
    train_t = [torch.from_numpy(np.ascontiguousarray(t)).long().to(device) for t in train]
    val_t = [torch.from_numpy(np.ascontiguousarray(t)).long().to(device) for t in validation]
    gen = torch.Generator().manual_seed(settings.seed)
    crops = _sampler(model, train_t, settings, gen)
    validate_every = settings.validate_every or getattr(crops, "validate_every", VALIDATE_EVERY)
    checkpoint_every = settings.checkpoint_every or validate_every
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    run_dir = Path(run_dir)
    step, elapsed, history, best = _resume(run_dir / "last.pt", sample, model, opt, gen) if resume else _fresh_state()
    run_dir.mkdir(parents=True, exist_ok=True)
    if best["state"] is None:  # the starting point is a candidate too: a fine-tune never ends worse than it began
        best = {"bpd": validation_bpd(model, val_t), "step": step, "state": _copy(model)}
        history.append({"step": step, "validation_bpd": best["bpd"]})
        if report:
            report({"step": step, "validation_bpd": best["bpd"]})
    model.train()
    running = None
    t0 = time.perf_counter() - elapsed
    while not _done(settings, step, elapsed):
        value = _step(model, opt, crops, settings.lr * _schedule(settings, step, elapsed))
        step += 1
        elapsed = time.perf_counter() - t0
        running = value if running is None else 0.95 * running + 0.05 * value
        done = _done(settings, step, elapsed)
        if report and (step % 10 == 0 or done):
            report({"step": step, "steps": settings.steps, "elapsed": elapsed, "minutes": settings.minutes,
                    "loss": running})
        if step % validate_every == 0 or done:
            bpd = validation_bpd(model, val_t)
            history.append({"step": step, "validation_bpd": bpd, "train_bpd": running})
            if bpd < best["bpd"]:
                best = {"bpd": bpd, "step": step, "state": _copy(model)}
            if report:
                report({"step": step, "validation_bpd": bpd})
        if step % checkpoint_every == 0 or done:
            _checkpoint(run_dir / "last.pt", model, opt, gen, {"step": step, "elapsed": elapsed, "history": history,
                                                                "best": best, "sample": sample})
        if stop_after is not None and step >= stop_after and not done:
            return None
    model.load_state_dict(best["state"])
    model.cpu().eval()
    return FitResult(model, float(best["bpd"]), step, elapsed, int(best["step"]), history)


def _fresh_state() -> tuple[int, float, list, dict]:
    return 0, 0.0, [], {"bpd": math.inf, "step": 0, "state": None}


def _sampler(model: LosslessModel, train_t: list[torch.Tensor], settings: FitSettings, gen: torch.Generator):
    """What training draws its batches from: crops, or what the family trains from instead (causal: independent
    pixels of a precomputed table)."""
    try:
        return model.training_sampler(train_t, gen, settings.pixels) \
            or Crops(train_t, settings.crop, settings.batch, gen, sequence=model.sequence)
    except ValueError as exc:
        raise FitError(str(exc)) from exc


def _step(model: LosslessModel, opt: torch.optim.Optimizer, crops, lr: float) -> float:
    """One optimiser step at learning rate `lr` on the next batch: its loss."""
    for group in opt.param_groups:
        group["lr"] = lr
    return optimise(model, opt, crops.next())


def optimise(model: LosslessModel, opt: torch.optim.Optimizer, batch: torch.Tensor) -> float:
    """One optimiser step on `batch` (gradients clipped to norm 100): its loss. Catalog training
    (`shardzip.train`) steps the same way."""
    loss = model.loss(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
    opt.step()
    return float(loss.detach())


def _resume(last: Path, sample: str, model: LosslessModel, opt: torch.optim.Optimizer,
            gen: torch.Generator) -> tuple[int, float, list, dict]:
    """Load the checkpoint `last` (when there is one) into the model, optimiser and generators: (step, elapsed,
    history, best); a checkpoint of another sample is refused."""
    if not last.is_file():
        return _fresh_state()
    state = torch.load(last, map_location="cpu", weights_only=False)
    if state.get("sample") != sample:
        raise FitError(f"{last} was fitted to another sample (other source, arrays, seed or sample size); "
                       "fit again without --resume, or give the run directory of that fit")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return state["step"], state["elapsed"], state["history"], state["best"]


def _checkpoint(last: Path, model: LosslessModel, opt: torch.optim.Optimizer, gen: torch.Generator,
                run: dict) -> None:
    """The whole state, written atomically (a temporary file, then a rename)."""
    tmp = last.with_name(last.name + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(), **run, "hparams": model.hparams}, tmp)
    tmp.replace(last)


def _copy(model: LosslessModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


__all__ = ["Crops", "DataProfile", "FitError", "FitResult", "FitSettings", "fingerprint", "profile_of", "run_fit",
           "validation_bpd"]
