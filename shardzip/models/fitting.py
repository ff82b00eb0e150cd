"""Which model a fit trains (`shardzip fit`): the families it can train, their sizes for a dataset's weight budget,
and the model it starts from. The rest of the fit (sampling on the workers, the training loop) names no family:
it asks these functions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from shardzip.errors import FitError
from shardzip.models import FAMILIES, LosslessModel, build_model

FIT_FAMILY = "msp"  # the family fitted to rasters and images: coarse to fine, bands, missing values, 8-16 bits
# families `fit` can train: msp, and causal (band by band in raster order, a small MLP per band on each pixel's
# causal neighbourhood: few weights, no previous-frame context)
FIT_FAMILIES = ("msp", "causal")
FIT_HPARAMS = {"levels": 4, "hidden": 32, "blocks": 1, "mixtures": 3, "mask_hidden": 16, "norm": "pixel"}


@dataclass(frozen=True)
class DataProfile:
    """What a model must fit: bands per image, the bits of the packed values, whether values go missing, and
    whether the images are the frames of a sequence (each coded given the one before)."""

    bands: int
    bits: int
    missing: bool
    sequence: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def fitted_hparams(profile: DataProfile, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hyper-parameters of a model for `profile`: `base` (a starting model's, or a size from `sized_hparams`)
    over the defaults, with the bands, the previous frame as context for sequences, and an alphabet of the
    data's bits: 8 for up to 8 bits, else one bit more than the sample needed (up to 16), so chunks with a
    somewhat wider range than the sample's still fit the model (a chunk that does not is coded classically)."""
    base = dict(base or {})
    family = base.pop("family", FIT_FAMILY)
    bits = 8 if profile.bits <= 8 else min(16, profile.bits + 1)
    if family == "causal":
        # levels: a new fit's model sees the level of the signal (a starting model keeps what it had)
        return {"channels": profile.bands, "data_bits": bits, "hidden": int(base.get("hidden", 16)),
                "mixtures": int(base.get("mixtures", 3)), "levels": bool(base.get("levels", True))}
    hp = {**FIT_HPARAMS, **base}
    hp.update(channels=profile.bands, data_bits=bits, cond_channels=profile.bands if profile.sequence else 0)
    return hp


# fitted weights may cost this share of the expected coded bytes. msp: a guess, not tuned. causal (int8 weights):
# on the R/G/B/NIR scene (830 k values), 4-minute fits, width 16 (4.2 KB) coded at 0.917 x JPEG-XL with its file,
# width 32 (10 KB) at 0.921: the rate it gained did not pay for its weights
WEIGHT_SHARE = {"msp": 0.03, "causal": 0.015}
HIDDEN_SIZES = (32, 24, 16, 12, 8)


def weight_budget(values: int, itemsize: int, family: str = FIT_FAMILY) -> int:
    """Bytes of weights a model fitted to `values` values of `itemsize` bytes may have: the family's WEIGHT_SHARE
    of the coded bytes, taking the coded size as half the raw bytes (a rough learned rate)."""
    return int(values * itemsize * 0.5 * WEIGHT_SHARE[family])


CAUSAL_HIDDEN_SIZES = (64, 48, 32, 24, 16, 12, 8)


def n_params(hparams: dict[str, Any], family: str = FIT_FAMILY) -> int:
    return sum(p.numel() for p in build_model(family, hparams).parameters())


def width_hparams(hidden: int, family: str = FIT_FAMILY) -> dict[str, Any]:
    """The widths of a model of hidden width `hidden` (msp: its mask networks half as wide, at least 4)."""
    if family == "causal":
        return {"family": family, "hidden": hidden}
    return {"family": family, "hidden": hidden, "mask_hidden": max(4, hidden // 2)}


WEIGHT_BYTES = {"float32": 4, "float16": 2, "int8": 1}  # per parameter, by the family's stored precision


def sized_hparams(bands: int, sequence: bool, budget: int, family: str = FIT_FAMILY) -> dict[str, Any]:
    """The widest default-shaped model whose weights fit `budget` bytes at the family's stored precision (the
    narrowest when none does): the weights are stored with the data, so a small dataset gets a small model."""
    per = WEIGHT_BYTES[FAMILIES[family].stored_precision]
    for hidden in (CAUSAL_HIDDEN_SIZES if family == "causal" else HIDDEN_SIZES):
        size = width_hparams(hidden, family)
        if per * n_params(fitted_hparams(DataProfile(bands, 8, True, sequence), size), family) <= budget:
            break
    return size


def start_model(profile: DataProfile, start: LosslessModel | None, seed: int,
                size: dict[str, Any] | None = None) -> tuple[LosslessModel, str]:
    """The model training begins from: `start`'s weights in a model for `profile` (its alphabet may differ:
    msp weights do not depend on it), else a fresh one of `size` (hidden widths) from `seed`. Returns (model,
    how it started)."""
    torch.manual_seed(seed)
    family = (size or {}).get("family", FIT_FAMILY)
    if start is None:
        return build_model(family, fitted_hparams(profile, size)), "from scratch"
    if start.family == "causal" and family == "causal" and start.channels == profile.bands:
        model = build_model(family, fitted_hparams(profile, {"levels": False, **start.hparams, "family": family}))
        model.load_state_dict(start.state_dict())  # no weight depends on the alphabet
        return model, "fine-tuned"
    if start.family != FIT_FAMILY or family != FIT_FAMILY or start.channels != profile.bands:
        raise FitError(f"cannot start from a {start.family} model of {start.channels} band(s): the data has "
                       f"{profile.bands} band(s); start from an msp model of {profile.bands} band(s), or from scratch")
    if start.sequence != profile.sequence:
        what = "frames of a sequence" if profile.sequence else "independent images"
        raise FitError(f"cannot start from a model {'with' if start.sequence else 'without'} "
                       f"previous-frame context: this fit is for {what} (--frames)")
    hp = fitted_hparams(profile, {k: v for k, v in start.hparams.items()
                                  if k not in ("channels", "data_bits", "cond_channels")})
    model = FAMILIES[FIT_FAMILY](**hp)
    model.load_state_dict(start.state_dict())
    return model, "fine-tuned"


def closest_start(bands: int, itemsize: int, catalog=None, sequence: bool = False,
                  budget: int | None = None, family: str = FIT_FAMILY) -> str | None:
    """The shipped msp model of `bands` bands (with previous-frame context for a sequence) whose alphabet is
    nearest the data's bits and whose float16 weights fit `budget` bytes, or None (a user's own models are
    started from by name: --from NAME; a fit of another family starts from scratch)."""
    from shardzip.catalog import load_catalog

    if family != FIT_FAMILY:
        return None
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


def fit_family(family: str, sequence: bool, frames: str, start: LosslessModel | None, log) -> tuple[str, bool]:
    """The family a fit trains (`--family`; auto: `auto_family` of the starting model `start`) and whether it trains
    the items as the frames of a sequence: a family without previous-frame context (causal) fits a sequence's
    frames as independent images, and refuses `--frames sequence`."""
    if family == "auto":
        family = auto_family(sequence, start)
        log(f"  family {family} ({FAMILY_WHY[family]})")
    if family == "causal" and sequence:
        if frames == "sequence":
            raise FitError("--family causal codes each frame on its own (no previous-frame context): use "
                           "--frames independent, or --family msp for a sequence")
        log("  causal models code each frame on its own: the frames are fitted as independent images")
        sequence = False
    return family, sequence
