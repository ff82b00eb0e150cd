"""Checking a model against the rules a coding model must keep (`LosslessModel`'s docstring), on real images.

A model from another package (`shardzip.models.plugins`) is checked before a job trusts its code: an error in
its determinism is data loss, found here rather than when a store fails to read back. `check_model` finds:

- a probability that depends on the batch an image is scored in (batch statistics, padding across images):
  the decoder scores other batches than the encoder did (its -log2 p per image, alone and in the batch, must
  agree);
- an encoder that writes other bytes on a second run (random state, uninitialised memory);
- bytes that do not decode to the images, or not under another torch thread count.

A model that implements `nll_bits` but no coder is NLL-only: it is checked for the first rule and reported
without coded rates, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from shardzip.models.base import LosslessModel
from shardzip.numerics import EXACT


@dataclass
class ModelCheck:
    """What `check_model` found: whether the model codes at all, the problems (empty: it keeps the rules), and its
    NLL and coded rate on the images, in bits per value."""

    codes: bool
    problems: list[str] = field(default_factory=list)
    nll_bpd: float | None = None
    coded_bpd: float | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def check_model(model: LosslessModel, images: torch.Tensor, numerics: str = EXACT,
                rtol: float = 1e-6) -> ModelCheck:
    """Check `model` on `images` [N, C, H, W] (N >= 2: the batch rule needs two images)."""
    from shardzip.models.codec import compress, decompress

    model.eval()
    x = images.long()
    out = ModelCheck(codes=model.has_coder())
    with torch.no_grad():
        whole = model.nll_bits(x).double().cpu()
        alone = torch.cat([model.nll_bits(x[i:i + 1]).double().cpu() for i in range(x.shape[0])])
    out.nll_bpd = float(whole.sum()) / x.numel()
    if not torch.allclose(whole, alone, rtol=rtol, atol=1e-6):
        worst = int((whole - alone).abs().argmax())
        out.problems.append(f"its -log2 p of an image depends on the batch it is scored in (image {worst}: "
                            f"{float(whole[worst]):.4f} bits in a batch of {x.shape[0]}, {float(alone[worst]):.4f} "
                            "alone): the decoder sees other batches than the encoder, so its code cannot be trusted")
    if not out.codes:
        return out
    batch = x.shape[0]
    try:
        data = compress(model, x, batch=batch, numerics=numerics)
        again = compress(model, x, batch=batch, numerics=numerics)
    except Exception as exc:  # noqa: BLE001 - a plugin's encoder failing: say how
        out.problems.append(f"its encoder failed: {type(exc).__name__}: {exc}")
        return out
    out.coded_bpd = 8 * len(data) / x.numel()
    if again != data:
        out.problems.append("its encoder wrote other bytes on a second run over the same images (random state?)")
    before = torch.get_num_threads()
    for threads in (before, 1 if before > 1 else 2):
        torch.set_num_threads(threads)
        try:
            back = torch.cat(decompress(model, data))
            if not torch.equal(back.cpu(), x.cpu()):
                out.problems.append(f"its code decodes to other values under {threads} torch thread(s)")
        except Exception as exc:  # noqa: BLE001 - a decoder failing on its own bytes: say how
            out.problems.append(f"its code does not decode under {threads} torch thread(s): "
                                f"{type(exc).__name__}: {exc}")
        finally:
            torch.set_num_threads(before)
    return out
