"""What every learned model offers: per-sample NLL in bits, encode/decode on a coder message, a loss.

A model is a `torch.nn.Module` whose hyper-parameters are plain keyword arguments (kept in
`self.hparams`, stored beside the weights in a checkpoint). Images are int64 tensors [B, C, H, W]
of values in [0, 2**bits). Coding pushes onto / pops from a `shardzip.coding.Message`; the
decoder repeats the encoder's network evaluations on tensors of the same shapes and values, so
with the same device kind, dtype and deterministic algorithms it rebuilds the same integer CDFs
(DESIGN.md, "Rules that make decoding possible").

Float likelihoods (`nll_bits`, training) and the coder's integer models describe the same
distributions: discretized logistic mixtures on unit bins whose first and last bins are open.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shardzip.coding import EntropyModel, Message, mixture_discretized_logistic
from shardzip.errors import ModelParameterError, SymbolRangeError

LN2 = math.log(2.0)
MIN_LOG_SCALE = -4.5  # scales below ~0.011 buy nothing on unit bins and destabilise training
MAX_LOG_SCALE = 8.0
PARAM_GAIN = 4.0


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a model codes, known from its family and hyper-parameters alone: all that planning asks of it (which
    arrays it fits, its channel count, whether it codes missing values). A client plans with it and never builds
    the network (`shardzip.models.model_spec`); a built model gives the same one (`LosslessModel.spec`)."""

    family: str
    channels: int
    data_bits: int
    codes_missing: bool
    codes: bool = True  # False: an NLL-only model (no encode/decode): rates in reports, nothing to store

    def fits(self, dtype: np.dtype | str, bands: int) -> str | None:
        """Why the model cannot code images of `dtype` with `bands` bands per image; None when it can.

        The planner, `fit` and `--model auto` ask the model this instead of testing family names."""
        dt = np.dtype(dtype)
        if self.codes_missing:
            if dt.kind not in "uif" or dt.itemsize > 8:
                return f"model {self.family!r} codes numeric rasters, the array is {dt}"
        elif dt != np.dtype(np.uint8 if self.data_bits <= 8 else np.uint16):
            return f"model {self.family!r} codes {self.data_bits}-bit unsigned images, the array is {dt}"
        if bands != self.channels:
            what = "band(s)" if self.codes_missing else "channel(s)"
            return f"model {self.family!r} has {self.channels} {what}, the array's images have {bands}"
        return None


class LosslessModel(nn.Module):
    """Base class of every learned lossless model: shardzip's families and other packages' (plugins).

    The protocol. A family is a subclass with a class attribute `family` (its name, stored in checkpoints and
    containers) whose constructor takes its hyper-parameters as keyword arguments (`channels` and `data_bits`
    among them) and passes them to `LosslessModel.__init__`. It implements:

    - `nll_bits(x)`: -log2 p(x) per image, float64 [B], for int64 images [B, C, H, W] in [0, 2**data_bits)
      (-1 where a value is missing, if the class sets `codes_missing`). Required: it is the NLL of every report.
    - `encode(message, x)` and `decode(message, shape)`: push the batch onto a `shardzip.coding.Message` and pop
      it back. Optional: a model without them is NLL-only (its report rows say "coded: n/a"). `encode` may
      return the per-image bits of the pass that built the CDFs (else None).
    - `train_bits(x)` (default `nll_bits`): the differentiable bits `loss` trains on.
    - optionally `fits`, `coding_batch`, `coding_lanes`, `sequence`, `bits_back` with `initial_words`,
      `training_sampler`, `calibrate`, and a classmethod `pretrained()` returning the path of a checkpoint
      its package ships (`shardzip.models.plugins`).

    The rules a coding model must keep (DESIGN.md, "Rules that make decoding possible"); a break is data loss:

    1. The decoder rebuilds every CDF the encoder used from what it has decoded so far, bit for bit. Build the
       coder's entropy models with `shardzip.coding` (integer CDFs from quantized parameters) and compute what
       feeds them under shardzip's exact numerics (`shardzip.models.codec` runs `encode`/`decode` under them),
       or from integers and parameters only: never from float arithmetic whose rounding may differ with thread
       count, CPU kernels, device or library version.
    2. An image's probabilities must not depend on the other images of its batch, nor on the batch size (no
       batch statistics, no padding or normalisation across images): the decoder's batches are not the
       encoder's.
    3. Pop in exactly the reverse order of the pushes, with models of the same shapes; the same images must
       give the same bytes on every run (no random state outside bits-back's coded choices).

    `shardzip.models.check.check_model` tests a model against rules 2 and 3 and that its bytes decode under
    another thread count; `tools/cross_decode.py` tests rule 1 across machines for the shipped models.
    """

    family: ClassVar[str] = ""
    bits_back: ClassVar[bool] = False  # True: decoding needs initial bits (Message.with_clean_bits)
    # True: codes rasters of any numeric dtype packed to integers with -1 where a value is missing
    # (`shardzip.format.learned`'s masked-model method); False: unsigned images of data_bits, every value present
    codes_missing: ClassVar[bool] = False
    # the precision of a fitted model's file (`shardzip.models.save_weights`): what a store carries with the data
    stored_precision: ClassVar[str] = "float16"

    def __init__(self, **hparams: Any) -> None:
        super().__init__()
        self.hparams = dict(hparams)

    # -- to be provided by each family -------------------------------------------------------
    def nll_bits(self, x: torch.Tensor) -> torch.Tensor:
        """-log2 p(x) per sample (float64, [B]); for VAEs the negative ELBO of the coded model."""
        raise NotImplementedError

    def train_bits(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable per-sample bits used by `loss` (defaults to `nll_bits`)."""
        return self.nll_bits(x)

    def encode(self, message: Message, x: torch.Tensor) -> torch.Tensor | None:
        """Push the batch `x` onto `message` (bits-back models also pop from it). Families that can return the
        batch's -log2 p per image (float64, [B]) from the network pass that made the CDFs, so that reports need
        no second pass (`shardzip.models.codec.compress_scored`); None where they cannot."""
        raise NotImplementedError

    def decode(self, message: Message, shape: tuple[int, ...]) -> torch.Tensor:
        """Pop a batch of `shape` from `message`: the inverse of `encode`."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Training loss: bits per dimension of the batch (differentiable)."""
        return self.train_bits(x).sum() / x[0].numel() / x.shape[0]

    @property
    def data_bits(self) -> int:
        return int(self.hparams.get("data_bits", 8))

    @property
    def channels(self) -> int:
        return int(self.hparams.get("channels", 1))

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(self.family, self.channels, self.data_bits, self.codes_missing, self.has_coder())

    @property
    def codes(self) -> bool:
        """Whether the model codes (has a coder), as `ModelSpec.codes` says for a spec."""
        return self.has_coder()

    @classmethod
    def has_coder(cls) -> bool:
        """Whether the family implements `encode` and `decode` (else it is NLL-only)."""
        return cls.encode is not LosslessModel.encode and cls.decode is not LosslessModel.decode

    def fits(self, dtype: np.dtype | str, bands: int) -> str | None:
        """Why this model cannot code images of `dtype` with `bands` bands per image; None when it can
        (`ModelSpec.fits`)."""
        return self.spec.fits(dtype, bands)

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Validate an image batch: int tensor [B, C, H, W] with this model's channels and value range (-1 too,
        for a missing value, where the model codes them)."""
        if x.dim() != 4:
            raise ModelParameterError(f"{self.family}: expected images [B, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.channels:
            raise ModelParameterError(
                f"{self.family}: model has {self.channels} channel(s) but the images have {x.shape[1]};"
                " pick a model trained for this channel count")
        if x.dtype.is_floating_point:
            raise ModelParameterError(f"{self.family}: images must be integers, got {x.dtype}")
        hi = (1 << self.data_bits) - 1
        lo = -1 if self.codes_missing else 0  # -1: a missing value, for models that code them
        if x.numel() and (int(x.min()) < lo or int(x.max()) > hi):
            raise SymbolRangeError(
                f"{self.family}: values must lie in [0, {hi}]{' (or -1 for missing)' if lo else ''} for this "
                f"{self.data_bits}-bit model, got [{int(x.min())}, {int(x.max())}]")
        return x.long()

    # Images per coding batch of a bits-back model: only the first batch needs initial bits, the others pop
    # the bits the batch before pushed (one batch of a whole 1 MB MNIST chunk costs 2.03 bpd, batches of 32 1.51).
    BITS_BACK_BATCH: ClassVar[int] = 32

    @property
    def sequence(self) -> bool:
        """Whether the model codes a batch as a sequence, each image given the one before (a chunk's frames must
        then stay one batch, in order)."""
        return False

    def coding_batch(self, images: int, image_values: int) -> int:
        """Images per batch when a chunk of `images` images of `image_values` values each is coded: the chunk
        code asks the model (a sequence is one batch; bits-back models code small batches; others ~1 Mi
        values per batch)."""
        if self.sequence:
            return max(1, images)
        if self.bits_back:
            return self.BITS_BACK_BATCH
        return max(1, (1 << 20) // max(1, image_values))

    def calibrate(self, tiles: list[torch.Tensor]) -> None:
        """Set data-dependent constants (normalisations) from the training tiles ([N, C, H, W], -1 where
        missing) before a fit from scratch trains; a fine-tune keeps its start's. Default: none to set."""

    def training_sampler(self, tiles: list[torch.Tensor], generator: torch.Generator, pixels: int | None = None):
        """Where a family trains better from something else than random crops: an object whose `next()` gives
        what `loss` takes, drawn from the training `tiles` ([N, C, H, W], -1 where missing) with `generator`
        (`pixels` per step, None: the family's choice), and whose `validate_every` is the steps between
        validations. None (the default): random crops."""
        return None

    def initial_words(self, shape: tuple[int, ...], lanes: int) -> int:
        """Clean 32-bit words per lane that the first batch's bits-back pops may need."""
        return 0

    def coding_lanes(self, shape: tuple[int, ...]) -> int:
        """A lane count for coding one batch of `shape`: more lanes code faster, but each ends with a
        32-bit state, so numel // 4096 lanes keep that under ~0.5 % of the bits at >= 1.5 bpd."""
        return max(1, min(4096, math.prod(shape) // 4096))


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer with a straight-through gradient (IDF)."""
    return x + (torch.round(x) - x).detach()


def _log_sigmoid_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(sigmoid(a) - sigmoid(b)) for a > b, accurate in both tails."""
    upper = (a + b) > 0  # right tail: use survival functions, sigmoid(-b) - sigmoid(-a)
    hi = torch.where(upper, -b, a)
    lo = torch.where(upper, -a, b)
    lhi, llo = F.logsigmoid(hi), F.logsigmoid(lo)
    return lhi + torch.log(-torch.expm1((llo - lhi).clamp(max=-1e-6)))


def mixture_log2prob(v: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, logits: torch.Tensor,
                     alphabet_size: int) -> torch.Tensor:
    """log2 P(v) under a mixture of logistics on unit bins over symbols {0..K-1}, edge bins open.

    `v` holds symbols (float, integer-valued) of shape S; the parameters have shape S + (J,). Outside autograd
    on the CPU a compiled pass computes it (`shardzip.models.score`, float64 inside, ~1e-6 relative).
    """
    from shardzip.models import score

    fast = score.log2prob(v, means, log_scales, logits, alphabet_size)
    if fast is not None:
        return fast
    inv = torch.exp(-log_scales)
    c = v.unsqueeze(-1) - means
    a, b = (c + 0.5) * inv, (c - 0.5) * inv
    mid = _log_sigmoid_diff(a, b)
    first = F.logsigmoid(a)
    last = F.logsigmoid(-b)
    vv = v.unsqueeze(-1)
    logp = torch.where(vv <= 0, first, torch.where(vv >= alphabet_size - 1, last, mid))
    return torch.logsumexp(logp + F.log_softmax(logits, -1), -1) / LN2


def mixture_params(raw: torch.Tensor, groups: int, mixtures: int, mean_offset: float, mean_scale: float,
                   scale_offset: float, spread: float = 1.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a conv output [B, groups * mixtures * 3, H, W] into (means, log_scales, logits) [B, groups, H, W, J]."""
    b, _, h, w = raw.shape
    r = raw.view(b, 3, mixtures, groups, h, w).permute(0, 1, 3, 4, 5, 2)
    # Components start spread over the range (a zero-initialised head would keep them identical forever).
    offsets = torch.linspace(-spread, spread, mixtures, device=raw.device, dtype=raw.dtype) if mixtures > 1 else 0.0
    means = mean_offset + mean_scale * (r[:, 0] + offsets)
    # Gains on the raw outputs: Adam moves each weight by ~lr per step, and scales must travel several
    # nats (from the initial guess down to sub-pixel widths) within the first few hundred steps.
    log_scales = (PARAM_GAIN * r[:, 1] + scale_offset).clamp(MIN_LOG_SCALE, MAX_LOG_SCALE)
    return means, log_scales, PARAM_GAIN * r[:, 2]


def mixture_coder(means: torch.Tensor, log_scales: torch.Tensor, logits: torch.Tensor,
                  alphabet_size: int) -> EntropyModel:
    """The coder's integer model of `mixture_log2prob` (parameters detached, in float64)."""
    with torch.no_grad():
        return mixture_discretized_logistic(means.double(), torch.exp(log_scales.double()),
                                            logit_weights=logits.double(), alphabet_size=alphabet_size)


def to_symbols(z: torch.Tensor, offset: int, alphabet_size: int, what: str) -> torch.Tensor:
    """Integer latents -> coder symbols z + offset, with a clear error when one falls outside the alphabet."""
    s = z.long() + offset
    if s.numel() and (int(s.min()) < 0 or int(s.max()) >= alphabet_size):
        raise SymbolRangeError(
            f"{what}: latent values [{int(z.min())}, {int(z.max())}] fall outside the model's latent alphabet "
            f"[{-offset}, {alphabet_size - offset - 1}]; this data is out of the model's range, store it with the "
            "classical fallback")
    return s


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad the bottom and right edges of [B, C, H, W] up to multiples of `multiple`.

    The padded rows/columns are copies of the last real ones; they are coded with the image (cheap,
    being predictable) and cropped on decode, so the round trip stays bit-exact.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x.double(), (0, pw, 0, ph), mode="replicate").to(x.dtype)
