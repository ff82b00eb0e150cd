"""Learned models: bit-exact round trips on real data, honest rates, clear failures.

Real data: the first 64 MNIST test images (tests/data) and scikit-image photographs. Untrained
models start as near-constants (zero-initialised heads), which would make round trips trivially
easy, so `perturbed` adds seeded noise to every weight: latents, translations and CDFs then vary
from pixel to pixel. The shipped checkpoints are exercised too (test_shipped_*).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TEST_DATA
from skimage import data as skdata

from shardzip.catalog import load_catalog
from shardzip.errors import (
    CheckpointError,
    CodingError,
    DecodeMismatchError,
    MessageFormatError,
    ModelParameterError,
    SymbolRangeError,
)
from shardzip.models import FAMILIES, build_model, load_catalog_model, load_weights, save_weights
from shardzip.models.codec import compress, decompress, read_header

DATA = TEST_DATA


def mnist(n: int = 64) -> torch.Tensor:
    return torch.from_numpy(np.load(DATA / "mnist_test_64.npy")[:n]).long()


def photo_crop(h: int = 45, w: int = 67, name: str = "chelsea") -> torch.Tensor:
    """A crop whose sides are not multiples of 8 (exercises padding and edge tiles)."""
    img = getattr(skdata, name)()
    return torch.from_numpy(np.ascontiguousarray(img[100:100 + h, 150:150 + w].transpose(2, 0, 1))).long()


def perturbed(family: str, seed: int = 0, **hparams):
    torch.manual_seed(seed)
    model = build_model(family, hparams).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


TINY = {
    "idf-gray": ("idf", dict(hidden=8, blocks=1, couplings=2, prior_hidden=8, top_splits=2)),
    "idf-rgb": ("idf", dict(channels=3, levels=3, hidden=8, blocks=1, couplings=1, prior_hidden=8, top_splits=3)),
    "bbans": ("bbans", dict(hidden=32, latent=8)),
    "hilloc": ("hilloc", dict(hidden=8, blocks=1, tile=32)),
    "causal": ("causal", dict(channels=3, hidden=8)),
    "causal-levels": ("causal", dict(channels=3, hidden=8, levels=True)),
}


def _data_for(name: str):
    return mnist(20) if name in ("idf-gray", "bbans") else [photo_crop(), photo_crop(33, 40, "astronaut")]


def _flat(items):
    return [x for x in items]


@pytest.mark.parametrize("name", sorted(TINY))
def test_round_trip_is_bit_exact_on_real_data(name):
    family, hp = TINY[name]
    model = perturbed(family, **hp)
    images = _data_for(name)
    blob = compress(model, images, batch=8)
    out = decompress(model, blob)
    expected = [images[i:i + 8] for i in range(0, len(images), 8)] if isinstance(images, torch.Tensor) \
        else [x[None] for x in images]
    assert len(out) == len(expected)
    for got, want in zip(out, expected, strict=True):
        assert got.shape == want.shape
        assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["idf-gray", "idf-rgb"])
def test_direct_coding_costs_the_nll_plus_lane_overhead(name):
    family, hp = TINY[name]
    model = perturbed(family, **hp)
    images = _data_for(name)
    blob = compress(model, images, batch=8)
    items = [images[i:i + 8] for i in range(0, len(images), 8)] if isinstance(images, torch.Tensor) \
        else [x[None] for x in images]
    nll = sum(float(model.nll_bits(x).sum()) for x in items)
    head = read_header(blob)
    lane_bits = 26 * head["lanes"] + 8 * 200  # cold lanes and headers
    # Lower bound loose: the coder floors every symbol's mass at 2**-precision, so the rare pixels that
    # these untrained models put far in a logistic tail cost fewer bits coded than their float NLL.
    assert nll * 0.95 <= len(blob) * 8 <= nll * 1.002 + lane_bits


def test_decoding_with_other_weights_is_detected():
    family, hp = TINY["idf-gray"]
    images = mnist(8)
    blob = compress(perturbed(family, seed=0, **hp), images, batch=8)
    with pytest.raises(CodingError):
        decompress(perturbed(family, seed=1, **hp), blob)


def test_decoding_with_another_family_is_refused():
    blob = compress(perturbed("idf", **TINY["idf-gray"][1]), mnist(8), batch=8)
    with pytest.raises(DecodeMismatchError, match="idf"):
        decompress(perturbed("bbans", **TINY["bbans"][1]), blob)


@pytest.mark.parametrize("cut", [3, 20, 60])
def test_truncated_or_damaged_container_is_a_format_error(cut):
    model = perturbed("idf", **TINY["idf-gray"][1])
    blob = compress(model, mnist(8), batch=8)
    with pytest.raises(MessageFormatError):
        decompress(model, blob[:cut])
    damaged = bytearray(blob)
    damaged[cut] ^= 0x10
    with pytest.raises(MessageFormatError):
        decompress(model, bytes(damaged))


def test_bad_input_is_named():
    model = perturbed("idf", **TINY["idf-gray"][1])
    with pytest.raises(ModelParameterError, match="channel"):
        compress(model, [photo_crop()])
    with pytest.raises(SymbolRangeError, match=r"\[0, 255\]"):
        compress(model, mnist(2) + 300)
    with pytest.raises(ModelParameterError, match="shape"):
        compress(perturbed("bbans", **TINY["bbans"][1]), mnist(2)[..., :20, :20])


def test_batch_order_and_threads_do_not_change_decoding():
    """Encode with 2 intra-op threads, decode with 1: the integer CDFs must come out the same."""
    model = perturbed("idf", **TINY["idf-gray"][1])
    images = mnist(16)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        blob = compress(model, images, batch=16)
        torch.set_num_threads(1)
        out = decompress(model, blob)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out[0], images)


def test_checkpoint_round_trip_and_sha_check(tmp_path):
    model = perturbed("bbans", **TINY["bbans"][1])
    path = tmp_path / "m.pt"
    save_weights(model, path)
    from shardzip.digest import sha256_file

    again = load_weights(path, sha256_file(path))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(),
                                                 strict=True))
    with pytest.raises(CheckpointError, match="sha256"):
        load_weights(path, "0" * 64)
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(tmp_path / "missing.pt")


@pytest.mark.parametrize("precision", ["float16", "int8"])
def test_compact_checkpoints_load_what_the_quantized_model_computes(tmp_path, precision):
    """float16 / int8 model files (what a store carries with the data): loaded back, the weights are exactly
    `quantize_weights`' values, so a model scored before saving codes the same after; the file is a fraction of
    the float32 one, and a changed weight is refused by the digest."""
    from shardzip.models import quantize_weights, read_checkpoint, write_compact

    model = perturbed("causal", channels=3, hidden=16, levels=True)
    model.calibrate([photo_crop(24, 30)[None].long()])
    full = tmp_path / "full.pt"
    save_weights(model, full)
    path = tmp_path / f"{precision}.pt"
    save_weights(model, path, {"fit": {"source": "test"}}, precision=precision)
    quantize_weights(model, precision)
    again = load_weights(path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(),
                                                 strict=True))
    x = photo_crop(24, 30)[None]
    assert torch.equal(model.nll_bits(x), again.nll_bits(x))
    params = sum(p.numel() for p in model.parameters())
    per = {"float16": 2, "int8": 1}[precision]
    assert path.stat().st_size < per * params + 2500 < full.stat().st_size  # packed: little beyond the weights
    blob = read_checkpoint(path)
    assert blob["fit"] == {"source": "test"} and blob["packed"]["precision"] == precision
    key = "int8" if precision == "int8" else "float16"
    blob["packed"][key][3] += 1
    write_compact(blob, path)
    with pytest.raises(CheckpointError, match="was altered"):
        load_weights(path)


def test_causal_model_trains_from_a_table_of_pixels_that_scores_what_it_codes(monkeypatch):
    """`fit` trains causal models from independent pixels of a precomputed table: drawn over every pixel, the
    table's loss is the model's NLL (less the one has-missing bit per image), holes included; a table too large
    for TRAIN_FLOATS is subsampled; steps on it lower the NLL."""
    from shardzip.models import causal

    model = perturbed("causal", channels=3, hidden=8, levels=True)
    x = torch.stack([photo_crop(20, 26), photo_crop(20, 26, "astronaut")]).long()
    x[1, :, 4:9, 3:12] = -1
    x[0, 1, 15:17, :] = -1
    gen = torch.Generator().manual_seed(0)
    table = model.training_sampler([x], gen, pixels=64)
    assert table.count == 2 * 20 * 26
    everything = causal.PixelBatch([b.take(torch.arange(table.count)) for b in table.bands], table.count)
    with torch.no_grad():
        expected = (float(model.train_bits(x).sum()) - 2) / x.numel()
        assert float(model.loss(everything)) == pytest.approx(expected, rel=1e-5)
    assert table.next().pixels == 64
    monkeypatch.setattr(causal, "TRAIN_FLOATS", 5000)
    small = model.training_sampler([x], gen)
    per_pixel = sum(len(causal.OWN) + b * (len(causal.EARLIER) + causal.DIFFS) + 2 for b in range(3))  # + level
    assert small.count == 5000 // per_pixel and small.bands[2].feats.shape[0] == small.count
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = float(model.nll_bits(x).sum())
    for _ in range(40):
        loss = model.loss(table.next())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(model.nll_bits(x).sum()) < before * 0.97


def test_every_family_is_registered():
    assert set(FAMILIES) == {"idf", "bbans", "hilloc", "msp", "causal"}


# ---------------------------------------------------------------- shipped checkpoints
CATALOG = load_catalog()
SHIPPED = sorted(n for n, e in CATALOG.models.items() if e.family != "msp")  # rasters: tests/models/test_rasters.py


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_round_trips_real_data(name):
    model = load_catalog_model(name, CATALOG)
    entry = CATALOG.model(name)
    images = mnist(16) if entry.test.startswith("mnist") else [photo_crop(64, 72, "coffee")]
    blob = compress(model, images, batch=16)
    out = decompress(model, blob)
    want = images if isinstance(images, torch.Tensor) else images[0][None]
    assert torch.equal(out[0], want)


@pytest.mark.parametrize("name", sorted(CATALOG.models))
def test_a_models_spec_is_known_without_building_it(name, tmp_path):
    """What planning asks of a model (`ModelSpec`: channels, bits, missing values, `fits`) comes from its family and
    hyper-parameters, the family's defaults filled in, and is what the built model says; a checkpoint's too."""
    from shardzip.models import checkpoint_spec, model_spec

    entry = CATALOG.model(name)
    model = load_catalog_model(name, CATALOG)
    spec = model_spec(entry.family, entry.hparams)
    assert spec == model.spec and spec.family == entry.family
    assert model_spec(entry.family, {}) == build_model(entry.family, {}).spec  # every default
    for dtype in ("uint8", "uint16", "float32", "int16", "complex64"):
        for bands in (1, 3, 6):
            assert spec.fits(dtype, bands) == model.fits(dtype, bands)
    path = tmp_path / "m.pt"
    save_weights(model, path)
    assert checkpoint_spec(path) == spec


def test_models_say_their_coding_batch():
    """The chunk code asks the model how many images to code per batch instead of testing families."""
    from shardzip.models import load_catalog_model

    assert load_catalog_model("bbans-mnist").coding_batch(1000, 784) == 32  # bits-back: small batches
    assert load_catalog_model("idf-mnist").coding_batch(1000, 784) == (1 << 20) // 784
    assert load_catalog_model("msp-radar-seq").coding_batch(11, 184 * 71) == 11  # a sequence: one batch
    assert load_catalog_model("msp-radar").coding_batch(11, 184 * 71) == (1 << 20) // (184 * 71)
    assert load_catalog_model("msp-radar-seq").sequence and not load_catalog_model("msp-radar").sequence



@pytest.mark.parametrize("levels", [False, True])
def test_causal_model_codes_missing_values_and_costs_its_nll(levels):
    """The causal family on a real photograph crop with holes (-1: a rectangle in one image, a row band in one
    band): bit-exact, each image's missing pixels restored, and the coded size within lane overhead of the NLL
    (the coder walks the same wavefronts as the decoder, so the NLL of the vectorised pass is what it codes)."""
    model = perturbed("causal", channels=3, hidden=8, levels=levels)
    clean = torch.stack([photo_crop(40, 52), photo_crop(40, 52, "astronaut")])
    model.calibrate([clean])
    holes = clean.clone()
    holes[1, :, 5:15, 8:30] = -1
    holes[0, 2, 30:33, :] = -1
    for x in (clean, holes):
        blob = compress(model, x, batch=2)
        (out,) = decompress(model, blob)
        assert torch.equal(out, x)
        nll = float(model.nll_bits(x).sum())
        assert nll < 8 * len(blob) < nll * 1.05 + 2000
    assert 8 * len(compress(model, holes, batch=2)) > 8 * len(compress(model, clean, batch=2)) * 0.5


def test_causal_levels_are_calibrated_on_present_values_and_inform_the_prediction():
    """A model with levels normalises each band's local mean by its training values' mean and deviation
    (missing values ignored, rounded to float16 as stored); the level is an input, so two patches alike in
    shape but at different brightness get different distributions; a model without levels ignores calibrate."""
    from shardzip.models import causal

    model = perturbed("causal", channels=3, hidden=8, levels=True)
    x = photo_crop(30, 40).long()[None]
    holes = x.clone()
    holes[0, 1, :10] = -1
    model.calibrate([holes])
    for b in range(3):
        v = holes[0, b][holes[0, b] >= 0].double()
        assert float(model.level_mean[b]) == float(torch.tensor(float(v.mean())).half())
        assert float(model.level_scale[b]) == float(torch.tensor(float(v.std())).half())
    assert model.n_inputs(0) == len(causal.OWN) + 2 and model.nets[2][0].in_features == model.n_inputs(2)
    flat = torch.full((1, 3, 8, 8), 40)
    rows, cols = torch.tensor([4]), torch.tensor([4])
    f_dark, *_ = model._features(model._padded(flat), None, 0, rows, cols)
    f_light, *_ = model._features(model._padded(flat + 150), None, 0, rows, cols)
    assert torch.equal(f_dark[..., :-1], f_light[..., :-1]) and float(f_light[0, 0, -1] - f_dark[0, 0, -1]) > 1
    plain = perturbed("causal", channels=3, hidden=8)
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    plain.calibrate([x])
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())
    assert "level_mean" not in before  # files of models without levels load as before


def test_causal_model_is_trained_by_its_nll_and_refuses_bad_input():
    torch.manual_seed(0)
    model = build_model("causal", {"channels": 1, "data_bits": 8, "hidden": 8})
    x = mnist(8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(model.loss(x))
    for _ in range(30):
        loss = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(model.loss(x)) < first - 0.2  # it learns
    with pytest.raises(SymbolRangeError, match="values must lie in"):
        model.nll_bits(x + 300)
    with pytest.raises(ModelParameterError, match="expected images"):
        model.nll_bits(x[:, 0])


@pytest.mark.parametrize("name", ["msp-radar", "idf-photos"])
def test_chunks_are_scored_by_the_coding_pass_alone(name, monkeypatch):
    """Issue 16: the NLL that reports print comes out of the pass that codes (the model's encode), not from a
    second forward: with nll_bits unavailable a chunk still codes, with the same per-image NLL, and decodes."""
    from shardzip.format.chunk import Packing, decode_chunk, encode_chunk
    from shardzip.format.layout import to_images
    from shardzip.format.packing import raster_symbols

    model = load_catalog_model(name)
    photos = np.stack([np.asarray(photo_crop(40, 56, n)) for n in ("chelsea", "astronaut")])
    packing = Packing(fill=0) if name == "msp-radar" else None
    if name == "msp-radar":  # 16-bit rasters with fill values: the masked path (method 5)
        chunk = photos[:, :1].astype(np.uint16) + 1000
        chunk[0, 0, :5, :7] = 0
        symbols = torch.from_numpy(to_images(raster_symbols(chunk, packing, 16)[0], "NCHW"))
    else:
        chunk = photos.astype(np.uint8)
        symbols = torch.from_numpy(chunk.astype(np.int64))
    with torch.no_grad():
        want = [float(v) for v in model.nll_bits(symbols)]
    monkeypatch.setattr(type(model), "nll_bits", lambda *a: (_ for _ in ()).throw(AssertionError("second pass")))
    data, stats = encode_chunk(chunk, model, "NCHW", packing=packing)
    assert stats.method in ("model", "masked-model")
    # the coding pass runs under exact-3, whose int16 convolution grids move the NLL by ~2e-5 from float's
    assert stats.image_nll_bits == pytest.approx(want, rel=1e-4)
    assert stats.nll_bits == pytest.approx(sum(want), rel=1e-4)
    back = decode_chunk(data, chunk.shape, chunk.dtype, "NCHW", lambda: model, packing=packing)
    assert np.array_equal(back, chunk)


def test_compiled_mixture_score_agrees_with_the_torch_one():
    """The compiled scorer (`shardzip.models.score`, probability space, float64) against mixture_log2prob's torch
    operations (log space, float32) under autograd: sharp and wide components, both edge bins, symbols far in
    the tails (scored in log space), per element and summed."""
    from shardzip.coding.jit import available
    from shardzip.models.base import mixture_log2prob
    from shardzip.models.score import log2prob

    if not available():
        pytest.skip("numba is not importable here: the torch operations score")
    gen = torch.Generator().manual_seed(5)
    shape, J, K = (2, 3, 30, 41), 5, 1536
    v = torch.randint(0, K, shape, generator=gen).float()
    v[0, 0, 0, :4] = torch.tensor([0.0, K - 1.0, 0.0, K - 1.0])
    means = torch.rand(shape + (J,), generator=gen) * K
    means[0, 0, 0, 2:4] = torch.tensor([K - 1.0, 0.0]).unsqueeze(-1)  # edge bins far from every component
    log_scales = torch.randn(shape + (J,), generator=gen) * 2.0 - 1.0
    logits = torch.randn(shape + (J,), generator=gen) * 3.0
    fast = log2prob(v, means, log_scales, logits, K)
    assert fast is not None and fast.dtype == torch.float32 and fast.shape == v.shape
    with torch.enable_grad():
        slow = mixture_log2prob(v, means.requires_grad_(), log_scales, logits, K).detach()
    assert torch.allclose(fast, slow, rtol=1e-5, atol=2e-3)
    assert float(fast.double().sum()) == pytest.approx(float(slow.double().sum()), rel=1e-6)
    assert float(fast[0, 0, 0, 2]) < -100  # the far tails took the log-space path and stayed finite
    assert torch.isfinite(fast).all()


@pytest.mark.parametrize("mixtures", [1, 3, 5])
def test_mixture_head_codes_the_same_integers_in_one_compiled_pass(mixtures):
    """MixtureHead.coder's compiled pass (`shardzip.models.mixture`) against base.mixture_coder of the head's float32
    parameters under exact numerics, integer for integer: raw outputs from tiny to beyond the clamps (log-scales
    both sides, locations past the coder's limit, logits far apart), constant rows; coder_scored's score against
    mixture_log2prob; a NaN leaves the torch path to say what is wrong."""
    from shardzip.coding.jit import available
    from shardzip.models.base import mixture_coder, mixture_log2prob
    from shardzip.models.mixture import MixtureHead
    from shardzip.numerics import dispatch, exact

    if not available():
        pytest.skip("numba is not importable here: the torch path is the only one")
    gen = torch.Generator().manual_seed(mixtures)
    groups = 4
    head = MixtureHead(groups, mixtures, 640.0, 16.0, 1.5, spread=0.4)
    c = groups * mixtures * 3
    gains = torch.tensor([1e-3, 0.3, 3.0, 40.0, 3e4])[torch.arange(c) % 5].view(1, c, 1, 1)
    raw = torch.randn(2, c, 29, 70, generator=gen) * gains
    raw[0, :, :2] = 0.0
    raw[1, :, 5, :7] = torch.tensor([-1e4, 1e4, -3.0, 2.5, 1e-7, -0.0, 7.0])
    with exact.exact_numerics():
        fused = head.coder(raw, 1536)
        torch_path = mixture_coder(*head.params(raw), 1536)
        assert head._compiled(raw, 1536) is not None  # the compiled pass did run
        assert fused.shape == torch_path.shape == (2, groups, 29, 70) and fused.kind == torch_path.kind
        for got, want in zip(fused.params, torch_path.params, strict=True):
            assert got.dtype == want.dtype and torch.equal(got, want)
        symbols = torch.randint(0, 1536, (2, groups, 29, 70), generator=gen)
        model, log2p = head.coder_scored(raw, symbols, 1536)  # the same model, and the float model's score
        assert all(torch.equal(a, b) for a, b in zip(model.params, fused.params, strict=True))
        with dispatch.suspended():
            want = mixture_log2prob(symbols.float(), *head.params(raw), 1536).double().flatten(1).sum(1)
            assert log2p.shape == (2,) and torch.allclose(log2p, want, rtol=1e-5)
        bad = raw.clone()
        bad[0, 1, 3, 4] = float("nan")
        assert head._compiled(bad, 1536) is None
        with pytest.raises(ModelParameterError):
            head.coder(bad, 1536)
