"""`shardzip train`: train a catalog model on its catalog dataset, with checkpoints and resume.

Reproducible: the seed fixes initialisation and the batch order (a torch.Generator of its own);
a resumed run continues the same sequence. Every `checkpoint_every` steps the full state (model,
optimizer, generator, step) is written atomically to `<run dir>/last.pt`; `--resume` picks it up.
At the end the weights alone are written to the catalog's checkpoint path, validated on the
validation split, and the catalog entry (with sha256 and validation bpd) is printed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shardzip.catalog import Catalog, ModelEntry, entry_yaml
from shardzip.digest import sha256_file
from shardzip.errors import CatalogError
from shardzip.fit import optimise
from shardzip.importers.datasets import read_split
from shardzip.models import LosslessModel, build_model, load_weights, save_weights


@dataclass
class Batches:
    """Random training batches: whole items of a stack, or random crops of a set of images."""

    stack: torch.Tensor | None
    images: list[torch.Tensor]
    batch: int
    crop: int | None
    generator: torch.Generator

    def next(self) -> torch.Tensor:
        g = self.generator
        if self.stack is not None:
            idx = torch.randint(0, self.stack.shape[0], (self.batch,), generator=g)
            return self.stack[idx].long()
        c = self.crop
        if self.images[0].dim() == 4:  # sequences [T, C, H, W]: `batch` consecutive frames, one crop window
            seq = self.images[int(torch.randint(0, len(self.images), (1,), generator=g))]
            t = int(torch.randint(0, seq.shape[0] - self.batch + 1, (1,), generator=g))
            i = int(torch.randint(0, seq.shape[2] - c + 1, (1,), generator=g))
            j = int(torch.randint(0, seq.shape[3] - c + 1, (1,), generator=g))
            return seq[t:t + self.batch, :, i:i + c, j:j + c].long()
        out = []
        for _ in range(self.batch):
            img = self.images[int(torch.randint(0, len(self.images), (1,), generator=g))]
            i = int(torch.randint(0, img.shape[1] - c + 1, (1,), generator=g))
            j = int(torch.randint(0, img.shape[2] - c + 1, (1,), generator=g))
            patch = img[:, i:i + c, j:j + c]
            if int(torch.randint(0, 2, (1,), generator=g)):
                patch = patch.flip(-1)
            out.append(patch)
        return torch.stack(out).long()


def load_split(catalog: Catalog, ref: str) -> torch.Tensor | list[torch.Tensor]:
    """A catalog split as a [N, C, H, W] tensor (stack) or a list of [C, H, W] tensors (images). Image splits
    of one dataset join with "+": "photo-train/train+debian"."""
    name, _, splits = ref.partition("/")
    if "+" in splits:
        parts = [load_split(catalog, f"{name}/{s}") for s in splits.split("+")]
        if not all(isinstance(p, list) for p in parts):
            raise CatalogError(f"{ref}: only image splits (lists of images) join with '+'")
        return [img for p in parts for img in p]
    entry, store, name = catalog.split(ref)
    data = read_split(store, name, entry.kind)
    if isinstance(data, dict):
        return [torch.from_numpy(np.ascontiguousarray(v)) for v in data.values()]
    return torch.from_numpy(data)


def evaluate_bpd(model: LosslessModel, data: torch.Tensor | list[torch.Tensor], batch: int = 500) -> float:
    """NLL bits per dimension of `data` under `model` (whole images; stacks in batches)."""
    model.eval()
    bits, dims = 0.0, 0
    with torch.no_grad():
        if isinstance(data, list):
            for img in data:  # an image [C, H, W], or a sequence [T, C, H, W] scored as one
                bits += float(model.nll_bits((img if img.dim() == 4 else img[None]).long()).sum())
                dims += img.numel()
        else:
            for i in range(0, data.shape[0], batch):
                x = data[i:i + batch].long()
                bits += float(model.nll_bits(x).sum())
                dims += x.numel()
    model.train()
    return bits / dims


def _validation_point(model, catalog: Catalog, split: str, run_dir: Path, step: int, seconds: float) -> None:
    """Append (step, validation bpd, seconds since this run started) to RUN_DIR/validation.tsv; the model is left
    training."""
    bpd = evaluate_bpd(model, load_split(catalog, split))  # in eval mode, without gradients
    model.train()
    curve = run_dir / "validation.tsv"
    if not curve.exists():
        curve.write_text("step\tbpd\tseconds\n")
    with curve.open("a") as f:
        f.write(f"{step}\t{bpd:.4f}\t{seconds:.0f}\n")


def train(name: str, catalog: Catalog, run_dir: Path, steps: int | None = None, resume: bool = False,
          device: str = "cpu", checkpoint_every: int = 500, log_every: int = 50, progress: bool = True,
          write_checkpoint: bool = True, stop_after: int | None = None,
          validate_every: int = 0) -> ModelEntry | None:
    """Train catalog model `name`; returns its updated catalog entry (sha256, validation bpd).

    `validate_every` > 0: every so many steps, the validation split's bpd is appended to RUN_DIR/validation.tsv
    (step, bpd, seconds since this run started): the validation curve, kept across resumed runs.

    `stop_after` ends the run early, as an interruption would (after that step's checkpoint if one
    falls due), and returns None: the run is then continued with `resume=True`.
    """
    entry = catalog.model(name)
    cfg = entry.training
    steps = steps or cfg.steps
    torch.manual_seed(cfg.seed)
    model = build_model(entry.family, entry.hparams).to(device)
    if cfg.init and not resume:
        model.load_state_dict(_initial_weights(catalog, name, cfg.init, cfg.init_sha256, entry, model))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 200) * 0.5 *
                                              (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = _batches(catalog, name, gen)
    run_dir.mkdir(parents=True, exist_ok=True)
    last = run_dir / "last.pt"
    step = _resume(last, name, model, opt, sched, gen, device) if resume and last.is_file() else 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=step, desc=f"train {name}", unit="step")
    model.train()
    started, running = time.time(), None
    while step < steps:
        value = optimise(model, opt, batches.next().to(device))
        sched.step()
        step += 1
        running = value if running is None else 0.98 * running + 0.02 * value
        if bar is not None:
            bar.update(1)
            if step % log_every == 0:
                bar.set_postfix(bpd=f"{running:.3f}")
        if validate_every and step % validate_every == 0:
            _validation_point(model, catalog, cfg.validation, run_dir, step, time.time() - started)
        if step % checkpoint_every == 0 or step == steps:
            _save_state(last, name, model, opt, sched, gen, step)
        if stop_after is not None and step >= stop_after:
            if bar is not None:
                bar.close()
            return None
    if bar is not None:
        bar.close()
    target = catalog.path(entry.checkpoint) if write_checkpoint else run_dir / "weights.pt"
    return _finish(model.cpu(), catalog, entry, target, steps, time.time() - started)


def _batches(catalog: Catalog, name: str, gen: torch.Generator) -> Batches:
    """Training batches of catalog model `name`: crops of its dataset's images, or items of its stack."""
    cfg = catalog.model(name).training
    data = load_split(catalog, cfg.dataset)
    if isinstance(data, list) and not cfg.crop:
        raise CatalogError(f"model {name!r}: training on a set of images needs training.crop in the catalog")
    return Batches(data if not isinstance(data, list) else None, data if isinstance(data, list) else [],
                   cfg.batch, cfg.crop, gen)


def _initial_weights(catalog: Catalog, name: str, init: str, sha256: str | None, entry: ModelEntry,
                     model: LosslessModel) -> dict:
    """The state dict that starts model `name` (training.init), checked: sha256, family and hyper-parameters."""
    path = catalog.path(init)
    if not path.is_file():
        raise CatalogError(f"model {name!r}: training.init {path} does not exist")
    start = load_weights(path, sha256)
    shape = {k: tuple(v.shape) for k, v in start.state_dict().items()}
    if start.family != entry.family or shape != {k: tuple(v.shape) for k, v in model.state_dict().items()}:
        raise CatalogError(f"model {name!r}: training.init {path} is a {start.family} model with "
                           f"{start.hparams}, whose weights do not fit {entry.family} with {entry.hparams}")
    return start.state_dict()


def _resume(last: Path, name: str, model, opt, sched, gen: torch.Generator, device: str) -> int:
    """Load the state a run left in `last` (model, optimizer, schedule, batch generator, RNG); its step."""
    state = torch.load(last, map_location=device, weights_only=False)
    if state["name"] != name:
        raise CatalogError(f"{last} belongs to model {state['name']!r}, not {name!r}; use another --run-dir")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])  # VAEs draw their posterior samples from it
    return state["step"]


def _save_state(last: Path, name: str, model, opt, sched, gen: torch.Generator, step: int) -> None:
    """Everything a resumed run needs, written atomically to `last`."""
    tmp = last.with_name(last.name + ".tmp")
    torch.save({"name": name, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(), "step": step}, tmp)
    tmp.replace(last)


def _finish(model, catalog: Catalog, entry: ModelEntry, target: Path, steps: int, seconds: float) -> ModelEntry:
    """Validate the trained model, write its weights to `target` and return its catalog entry (sha256,
    validation bpd, the steps actually run)."""
    validation = evaluate_bpd(model, load_split(catalog, entry.training.validation))
    save_weights(model, target, {"trained_steps": steps, "seconds": round(seconds, 1)})
    training = entry.training.model_copy(update={"steps": steps})
    return entry.model_copy(update={"sha256": sha256_file(target), "validation_bpd": round(validation, 4),
                                    "training": training})


__all__ = ["Batches", "evaluate_bpd", "load_split", "train", "entry_yaml"]
