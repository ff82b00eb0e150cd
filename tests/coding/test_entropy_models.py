"""Entropy models: integer CDFs are valid, close to the distributions they quantize, and robust at extremes."""

from __future__ import annotations

import math
import time

import pytest
import torch
from conftest import (
    KINDS,
    bucket_edges_float,
    build_model,
    coding_cases,
    encode_header_bits,
    examples,
    full_cdf,
    sample,
)
from hypothesis import given
from hypothesis import strategies as st

from shardzip.coding import (
    EntropyModel,
    bucket_centres,
    bucket_edges,
    categorical,
    decode,
    discretized_gaussian,
    discretized_logistic,
    encode,
    gaussian_buckets,
    ideal_bits,
    mixture_discretized_logistic,
    uniform,
)
from shardzip.errors import ModelParameterError, ShardzipError, SymbolRangeError


def logistic_cdf(z: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(z)


def normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def float_pmf(F, mean: torch.Tensor, scale: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """pmf of a location-scale law on bins between `edges` (K + 1 values), outer bins open."""
    c = F((edges - mean[..., None]) / scale[..., None])
    c[..., 0] = 0.0
    c[..., -1] = 1.0
    return c[..., 1:] - c[..., :-1]


def integer_edges(K: int) -> torch.Tensor:
    return torch.arange(K + 1, dtype=torch.float64) - 0.5


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return 0.5 * (p - q).abs().sum(-1)


def kl_bits(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(q || p) in bits, q the float distribution and p the quantized one (p > 0 everywhere)."""
    return torch.where(q > 0, q * (torch.log2(q.clamp(min=1e-300)) - torch.log2(p)), 0.0).sum(-1)


# ----------------------------------------------------------------------------- CDF validity
@given(coding_cases(max_numel=40, max_alphabet=4096))
@examples(50)
def test_cdf_is_valid_for_every_kind(case):
    kind, shape, K, precision, seed = case
    model = build_model(kind, shape, K, precision, seed)
    assert isinstance(model, EntropyModel)
    assert model.shape == shape and model.alphabet_size == K and model.precision == precision
    c = full_cdf(model)
    assert c.dtype == torch.int64 and c.shape == shape + (K + 1,)
    assert bool((c[..., 0] == 0).all()), "c(0) must be 0"
    assert bool((c[..., -1] == 1 << precision).all()), "c(K) must be 2**precision"
    assert bool((c.diff(dim=-1) >= 1).all()), "every symbol needs a frequency of at least 1"


@given(coding_cases(max_numel=40, max_alphabet=1024))
@examples(50)
def test_start_freq_log2_prob_and_probabilities_agree_with_cdf(case):
    kind, shape, K, precision, seed = case
    model = build_model(kind, shape, K, precision, seed)
    c = full_cdf(model)
    symbols = sample(model, seed + 1)
    start, freq = model.start_freq(symbols)
    flat_c = c.reshape(-1, K + 1)
    flat_s = symbols.reshape(-1, 1)
    assert torch.equal(start, flat_c.gather(1, flat_s).squeeze(1))
    assert torch.equal(freq, flat_c.gather(1, flat_s + 1).squeeze(1) - start)
    logp = model.log2_prob(symbols)
    assert logp.shape == shape and logp.dtype == torch.float64
    assert torch.equal(logp.reshape(-1), freq.double().log2() - precision)
    assert ideal_bits(symbols, model) == pytest.approx(float(-logp.sum()), rel=1e-12, abs=1e-9)
    pmf = model.probabilities()
    assert pmf.shape == shape + (K,)
    assert torch.equal(pmf, c.diff(dim=-1).double() / 2**precision)


@given(st.sampled_from(["logistic", "gaussian", "mixture", "buckets"]),
       st.sampled_from([256, 65536]), st.integers(0, 2**32 - 1))
@examples(24)
def test_cdf_is_valid_over_a_full_16_bit_alphabet(kind, K, seed):
    """Location-scale CDFs evaluated at all 65537 edges at once (parameters broadcast over k)."""
    gen = torch.Generator().manual_seed(seed)
    precision = 28 if K == 65536 else 24
    mean = float(torch.rand((), generator=gen)) * K
    scale = math.exp(float(torch.rand((), generator=gen)) * 14 - 6)
    n = K + 1
    if kind == "logistic":
        model = discretized_logistic(torch.full((n,), mean), torch.full((n,), scale), K, precision)
    elif kind == "gaussian":
        model = discretized_gaussian(torch.full((n,), mean), torch.full((n,), scale), K, precision)
    elif kind == "mixture":
        model = mixture_discretized_logistic(torch.tensor([mean, K - mean]).expand(n, 2),
                                             torch.tensor([scale, 3.0]).expand(n, 2),
                                             weights=torch.tensor([0.7, 0.3]), alphabet_size=K,
                                             precision=precision)
    else:
        model = gaussian_buckets(torch.full((n,), mean / K * 4 - 2), torch.full((n,), scale / 100),
                                 K, precision)
    c = model.cdf(torch.arange(n))
    assert c[0] == 0 and c[-1] == 1 << precision
    assert bool((c.diff() >= 1).all())


# -------------------------------------------------------------- closeness to the float law
@given(st.sampled_from(["logistic", "gaussian"]), st.integers(2, 1024), st.integers(16, 28),
       st.integers(0, 2**32 - 1))
@examples(40)
def test_location_scale_pmf_matches_float_distribution(kind, K, precision, seed):
    """Locations on the model's 1/256 grid, scales >= 0.5: TV distance to the float law < 1e-3.

    The only allowed extra distortion is the frequency floor: each symbol is given one unit of 2**-precision.
    """
    gen = torch.Generator().manual_seed(seed)
    N = 16
    mean = torch.round((torch.rand(N, generator=gen, dtype=torch.float64) * (K + 10) - 5) * 256) / 256
    scale = torch.exp(torch.rand(N, generator=gen, dtype=torch.float64) * math.log(4 * K / 0.5)) * 0.5
    make, F = (discretized_logistic, logistic_cdf) if kind == "logistic" else (discretized_gaussian, normal_cdf)
    model = make(mean, scale, alphabet_size=K, precision=precision)
    tv = total_variation(model.probabilities(), float_pmf(F, mean, scale, integer_edges(K)))
    assert float(tv.max()) < 1e-3 + K / 2**precision


@pytest.mark.parametrize("kind", ["logistic", "gaussian"])
@pytest.mark.parametrize("scale", [0.7, 3.0, 50.0, 1000.0, 4000.0])
def test_16_bit_pmf_matches_float_distribution_from_narrow_to_wide(kind, scale):
    """K = 65536 at precision 28: bins far narrower than a table step (scale 4000) stay accurate too."""
    K, n = 65536, 65537
    mean = 30000.3
    make, F = (discretized_logistic, logistic_cdf) if kind == "logistic" else (discretized_gaussian, normal_cdf)
    model = make(torch.full((n,), mean, dtype=torch.float64), torch.full((n,), scale, dtype=torch.float64), K, 28)
    c = model.cdf(torch.arange(n))  # element k of the batch evaluates c(k): one pass over the alphabet
    assert c[0] == 0 and c[-1] == 1 << 28 and bool((c.diff() >= 1).all())
    pmf = c.diff().double() / 2**28
    reference = float_pmf(F, torch.tensor(mean, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64),
                          integer_edges(K))
    assert float(total_variation(pmf, reference)) < 1e-3
    assert float(kl_bits(reference, pmf)) < 1e-3


@pytest.mark.parametrize("kind", ["logistic", "gaussian"])
def test_off_grid_locations_stay_close_for_moderate_scales(kind):
    """Arbitrary float means (quantized by the model): TV < 1e-3 once scale >= 2."""
    gen = torch.Generator().manual_seed(3)
    N, K = 300, 256
    mean = torch.rand(N, generator=gen, dtype=torch.float64) * 300 - 20
    scale = torch.exp(torch.rand(N, generator=gen, dtype=torch.float64) * math.log(150)) * 2
    make, F = (discretized_logistic, logistic_cdf) if kind == "logistic" else (discretized_gaussian, normal_cdf)
    model = make(mean, scale, alphabet_size=K)
    tv = total_variation(model.probabilities(), float_pmf(F, mean, scale, integer_edges(K)))
    assert float(tv.max()) < 1e-3


@given(st.integers(2, 512), st.integers(1, 5), st.booleans(), st.integers(0, 2**32 - 1))
@examples(30)
def test_mixture_pmf_matches_float_mixture(K, J, use_logits, seed):
    gen = torch.Generator().manual_seed(seed)
    N = 8
    means = torch.round((torch.rand(N, J, generator=gen, dtype=torch.float64) * K) * 256) / 256
    scales = torch.exp(torch.rand(N, J, generator=gen, dtype=torch.float64) * math.log(2 * K)) * 0.5
    raw = torch.rand(N, J, generator=gen, dtype=torch.float64) + 0.05
    if use_logits:
        model = mixture_discretized_logistic(means, scales, logit_weights=raw.log(), alphabet_size=K)
    else:
        model = mixture_discretized_logistic(means, scales, weights=raw, alphabet_size=K)
    assert model.shape == (N,)
    w = raw / raw.sum(-1, keepdim=True)
    component = float_pmf(logistic_cdf, means, scales, integer_edges(K))  # [N, J, K]
    reference = (w[..., None] * component).sum(-2)
    tv = total_variation(model.probabilities(), reference)
    assert float(tv.max()) < 1e-3


@given(st.sampled_from([2, 3, 16, 255, 256, 1000]), st.integers(0, 2**32 - 1))
@examples(30)
def test_gaussian_buckets_pmf_matches_float_gaussian_over_the_bucket_edges(K, seed):
    gen = torch.Generator().manual_seed(seed)
    N = 12
    mean = torch.round(torch.randn(N, generator=gen, dtype=torch.float64) * 2**16) / 2**16
    scale = torch.exp(torch.rand(N, generator=gen, dtype=torch.float64) * math.log(60)) * 0.05
    model = gaussian_buckets(mean, scale, alphabet_size=K)
    reference = float_pmf(normal_cdf, mean, scale, bucket_edges_float(K))
    tv = total_variation(model.probabilities(), reference)
    assert float(tv.max()) < 1e-3


def test_gaussian_buckets_under_the_prior_are_uniform():
    """N(0, 1) over buckets of equal N(0, 1) mass is the uniform prior, up to table resolution:
    edges and CDF values sit on a 2**-12 grid, so each bucket's mass is off by at most ~2 * 2**-12 * 0.4."""
    for K in (2, 16, 256, 4096):
        pmf = gaussian_buckets(torch.zeros(()), torch.ones(()), alphabet_size=K).probabilities()
        assert float((pmf - 1 / K).abs().max()) < 2 * 2**-12 * 0.4 + K / 2**24, K
        if K <= 256:  # for thousands of buckets the 2**-12 grid is coarse next to a bucket's width
            assert float(total_variation(pmf, torch.full((K,), 1 / K, dtype=torch.float64))) < 0.01


def test_categorical_probs_and_logits_describe_the_same_distribution():
    gen = torch.Generator().manual_seed(11)
    probs = torch.rand(50, 40, generator=gen, dtype=torch.float64) + 1e-3
    probs = probs / probs.sum(-1, keepdim=True)
    a = categorical(probs=probs).probabilities()
    b = categorical(logits=probs.log() + 7.0).probabilities()  # logits are shift-invariant
    assert float(total_variation(a, probs).max()) < 1e-5
    assert float(total_variation(b, probs).max()) < 1e-3


def test_categorical_probabilities_need_not_be_normalized():
    probs = torch.tensor([1.0, 2.0, 3.0, 2.0])
    a = categorical(probs=probs).probabilities()
    b = categorical(probs=probs * 1000).probabilities()
    assert torch.equal(a, b)
    assert torch.allclose(a, (probs / probs.sum()).double(), atol=1e-6)


# ------------------------------------------------------------------------------ extremes
@pytest.mark.parametrize("K,precision", [(2, 24), (256, 24), (256, 16), (65536, 28)])
def test_categorical_near_certain_symbol_keeps_others_codable(K, precision):
    probs = torch.full((K,), 1e-30, dtype=torch.float64)
    probs[K // 3] = 1.0
    model = categorical(probs=probs, precision=precision)
    pmf = model.probabilities() if K <= 4096 else None
    certain = torch.tensor(K // 3)
    cost = -float(model.log2_prob(certain))
    assert cost < 0.01, cost
    assert cost == pytest.approx(-math.log2(1 - (K - 1) / 2**precision), rel=1e-9)
    for k in (0, K - 1, (K // 3 + 1) % K):
        if k != K // 3:
            assert -float(model.log2_prob(torch.tensor(k))) == precision, "others keep exactly one unit"
    if pmf is not None:
        assert bool((pmf > 0).all())
    # and every symbol codes
    symbols = torch.tensor([K // 3, 0, K - 1, K // 3])
    batch = categorical(probs=probs.expand(4, K), precision=precision)
    assert torch.equal(decode(encode(symbols, batch), batch), symbols)


@pytest.mark.parametrize("make", [discretized_logistic, discretized_gaussian])
@pytest.mark.parametrize("scale", [1e-6, 2.0**-8, 0.03])
def test_tiny_scale_puts_almost_all_mass_on_one_symbol(make, scale):
    K = 256
    means = torch.tensor([0.0, 17.2, 128.0, 254.9, 255.0, -30.0, 300.0])
    model = make(means, torch.full_like(means, scale), alphabet_size=K)
    certain = means.round().clamp(0, K - 1).long()
    cost = -model.log2_prob(certain)
    assert float(cost.max()) < 0.01
    c = full_cdf(model)
    assert bool((c.diff(dim=-1) >= 1).all())
    outliers = (certain + 100) % K
    assert torch.equal(-model.log2_prob(outliers), torch.full((len(means),), 24.0, dtype=torch.float64))
    both = torch.stack([certain, outliers])
    batch = make(means.expand(2, -1), torch.full((2, len(means)), scale), alphabet_size=K)
    assert torch.equal(decode(encode(both, batch), batch), both)


def test_uniform_over_65536_at_precision_24_costs_exactly_16_bits():
    n = 5000
    model = uniform(65536, (n,), precision=24)
    symbols = torch.randint(0, 65536, (n,), generator=torch.Generator().manual_seed(0))
    assert ideal_bits(symbols, model) == 16.0 * n
    assert torch.equal(model.log2_prob(symbols), torch.full((n,), -16.0, dtype=torch.float64))
    data = encode(symbols, model)
    assert torch.equal(decode(data, model), symbols)
    assert 8 * len(data) < 16 * n + encode_header_bits() + 64


@pytest.mark.parametrize("K", [2, 3, 5, 7, 100, 1000, 65535])
def test_uniform_over_non_powers_of_two_is_close_to_uniform(K):
    model = uniform(K, (), precision=24)
    c = model.cdf(torch.tensor(0)), model.cdf(torch.tensor(K))
    assert int(c[0]) == 0 and int(c[1]) == 1 << 24
    freqs = torch.stack([model.cdf(torch.tensor(k + 1)) - model.cdf(torch.tensor(k)) for k in (0, K // 2, K - 1)])
    assert int(freqs.max() - freqs.min()) <= 1


@pytest.mark.parametrize("make,name", [(discretized_logistic, "logistic"), (discretized_gaussian, "gaussian")])
def test_16_bit_alphabet_codes_without_per_symbol_tables(make, name):
    """65536-symbol models for 16-bit data: parameters stay O(N), coding is exact and near the ideal."""
    N, K = 20_000, 65536
    gen = torch.Generator().manual_seed(5)
    mean = torch.rand(N, generator=gen, dtype=torch.float64) * K
    scale = torch.exp(torch.rand(N, generator=gen, dtype=torch.float64) * math.log(2000)) * 0.5
    t0 = time.perf_counter()
    model = make(mean, scale, alphabet_size=K)
    built = time.perf_counter() - t0
    stored = sum(p.numel() for p in model.params) + (0 if model.edges is None else model.edges.numel())
    assert stored <= 4 * N, f"{name} model stores {stored} numbers for {N} symbols: a table over the alphabet?"
    assert built < 2.0
    noise = torch.randn(N, generator=gen, dtype=torch.float64) if name == "gaussian" else torch.logit(
        torch.rand(N, generator=gen, dtype=torch.float64).clamp(1e-9, 1 - 1e-9))
    symbols = (mean + scale * noise).round().clamp(0, K - 1).long()
    data = encode(symbols, model)
    assert torch.equal(decode(data, model), symbols)
    ideal = ideal_bits(symbols, model)
    assert 8 * len(data) < ideal * 1.01 + encode_header_bits() + 1000


# ------------------------------------------------------------------------- Gaussian buckets
@pytest.mark.parametrize("K", [1, 2, 3, 4, 7, 16, 255, 256, 257, 4096, 65536])
def test_bucket_edges_and_centres_are_monotone_symmetric_and_nested(K):
    edges = bucket_edges(K)
    centres = bucket_centres(K)
    assert edges.shape == (K + 1,) and centres.shape == (K,)
    assert edges.dtype == torch.int64 and centres.dtype == torch.float32
    assert bool((edges.diff() >= 0).all()), "edges must be non-decreasing (ties allowed for huge K)"
    assert torch.equal(edges, -edges.flip(0)), "edges[k] == -edges[K - k]"
    assert torch.equal(centres, -centres.flip(0)), "centres[k] == -centres[K - 1 - k]"
    assert bool((centres.diff() >= 0).all())
    fixed = centres.double() * 2**16
    assert bool((edges[:-1] <= fixed).all() and (fixed <= edges[1:]).all()), "each centre lies in its bucket"
    if K % 2 == 0:
        assert int(edges[K // 2]) == 0
    else:
        assert float(centres[K // 2]) == 0.0


@pytest.mark.parametrize("K", [2, 3, 16, 256, 4096])
def test_bucket_edges_split_the_standard_normal_into_equal_masses(K):
    inner = bucket_edges_float(K)[1:-1]
    mass_below = normal_cdf(inner)
    target = torch.arange(1, K, dtype=torch.float64) / K
    # edges sit on a 2**-12 grid: error at most one grid step times the density
    assert float((mass_below - target).abs().max()) <= 2**-12 * 0.4 + 1e-9
    centres = bucket_centres(K).double()
    assert float((normal_cdf(centres) - (torch.arange(K) + 0.5) / K).abs().max()) <= 2**-12 * 0.4 + 1e-7


def test_bucket_centres_are_identical_however_computed():
    """Centres are integer-derived: the same floats for every call and from a float64 round trip."""
    a = bucket_centres(256)
    b = bucket_centres(256)
    assert torch.equal(a, b)
    assert torch.equal((a.double() * 2**16).round() / 2**16, a.double())


# ------------------------------------------------------------------ quantisation loss
@pytest.mark.parametrize("kind", ["logistic", "gaussian"])
def test_quantisation_loss_is_small(kind, record_property):
    """KL(float || quantized) in bits/symbol at precision 24: the rate cost of integer CDFs."""
    gen = torch.Generator().manual_seed(7)
    N, K = 2000, 256
    mean = torch.rand(N, generator=gen, dtype=torch.float64) * 276 - 10
    scale = torch.exp(torch.rand(N, generator=gen, dtype=torch.float64) * math.log(400)) * 0.25
    make, F = (discretized_logistic, logistic_cdf) if kind == "logistic" else (discretized_gaussian, normal_cdf)
    model = make(mean, scale, alphabet_size=K, precision=24)
    kl = kl_bits(float_pmf(F, mean, scale, integer_edges(K)), model.probabilities())
    mean_kl, max_kl = float(kl.mean()), float(kl.max())
    print(f"\n{kind}: quantisation loss KL(float || quantized) = {mean_kl:.3e} bits/symbol "
          f"(max {max_kl:.3e}) at precision 24, K = 256")
    record_property(f"{kind}_quantisation_kl_bits_per_symbol", mean_kl)
    record_property(f"{kind}_quantisation_kl_bits_per_symbol_max", max_kl)
    assert mean_kl < 1e-3
    assert max_kl < 1e-3


# ------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("build", [
    lambda: uniform(256, (3,), precision=7),
    lambda: uniform(256, (3,), precision=29),
    lambda: uniform(0, (3,)),
    lambda: uniform(1, (3,)),
    lambda: categorical(probs=torch.ones(3, 1)),
    lambda: uniform(65537, (3,), precision=28),
    lambda: uniform(257, (3,), precision=8),  # K must be <= 2**precision / 2
    lambda: categorical(probs=torch.ones(129), precision=8),
    lambda: discretized_logistic(0.0, 1.0, alphabet_size=129, precision=8),
    lambda: categorical(probs=torch.tensor([0.5, 0.5]), precision=7),
    lambda: categorical(probs=torch.tensor([0.5, -0.1, 0.6])),
    lambda: categorical(probs=torch.tensor([0.5, float("nan")])),
    lambda: categorical(logits=torch.tensor([0.5, float("inf")])),
    lambda: categorical(),
    lambda: categorical(probs=torch.ones(3), logits=torch.ones(3)),
    lambda: categorical(probs=torch.tensor(1.0)),
    lambda: categorical(probs=torch.ones(200), precision=8),
    lambda: discretized_logistic(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0])),
    lambda: discretized_logistic(torch.zeros(3), torch.tensor([1.0, -2.0, 1.0])),
    lambda: discretized_logistic(torch.tensor([0.0, float("nan")]), torch.ones(2)),
    lambda: discretized_logistic(torch.zeros(2), torch.tensor([1.0, float("nan")])),
    lambda: discretized_logistic(torch.zeros(2), torch.tensor([1.0, float("inf")])),
    lambda: discretized_gaussian(torch.tensor([float("-inf")]), torch.ones(1)),
    lambda: discretized_gaussian(torch.zeros(2), torch.ones(2), alphabet_size=65537),
    lambda: discretized_gaussian(torch.zeros(2), torch.ones(2), alphabet_size=65536, precision=16),
    lambda: mixture_discretized_logistic(torch.zeros(2, 3), torch.ones(2, 3)),
    lambda: mixture_discretized_logistic(torch.zeros(2, 3), torch.ones(2, 3), weights=torch.ones(3),
                                         logit_weights=torch.ones(3)),
    lambda: mixture_discretized_logistic(torch.zeros(2, 3), torch.ones(2, 3), weights=torch.tensor([1.0, -1, 1])),
    lambda: mixture_discretized_logistic(torch.zeros(2, 3), torch.zeros(2, 3), weights=torch.ones(3)),
    lambda: mixture_discretized_logistic(torch.zeros(2, 3), torch.ones(2, 3),
                                         logit_weights=torch.tensor([0.0, float("nan"), 1.0])),
    lambda: gaussian_buckets(torch.zeros(2), torch.zeros(2)),
    lambda: gaussian_buckets(torch.zeros(2), torch.ones(2), alphabet_size=256, precision=8),
], ids=lambda _: "")
def test_bad_parameters_raise_model_parameter_error(build):
    with pytest.raises(ModelParameterError) as info:
        build()
    assert isinstance(info.value, ShardzipError)
    assert str(info.value), "errors carry a message a user can act on"


@pytest.mark.parametrize("K,precision", [(2, 8), (128, 8), (256, 9), (65536, 17), (65536, 28)])
def test_smallest_allowed_precision_for_an_alphabet_codes(K, precision):
    model = uniform(K, (50,), precision=precision)
    symbols = torch.randint(0, K, (50,), generator=torch.Generator().manual_seed(K))
    assert torch.equal(decode(encode(symbols, model), model), symbols)


_ONE_SYMBOL = {
    "uniform": lambda K: uniform(K, (3,)),
    "categorical": lambda K: categorical(probs=torch.ones(3, K)),
    "categorical_logits": lambda K: categorical(logits=torch.zeros(3, K)),
    "logistic": lambda K: discretized_logistic(torch.zeros(3), torch.ones(3), alphabet_size=K),
    "gaussian": lambda K: discretized_gaussian(torch.zeros(3), torch.ones(3), alphabet_size=K),
    "mixture": lambda K: mixture_discretized_logistic(torch.zeros(3, 2), torch.ones(3, 2), weights=torch.ones(2),
                                                      alphabet_size=K),
    "buckets": lambda K: gaussian_buckets(torch.zeros(3), torch.ones(3), alphabet_size=K),
}


@pytest.mark.parametrize("kind", list(_ONE_SYMBOL))
def test_alphabet_of_one_symbol_is_rejected_and_two_is_the_smallest(kind):
    """Once a repro (K = 1 was accepted and freq == 2**precision broke the coder): K is 2..65536 now."""
    with pytest.raises(ModelParameterError, match=r"alphabet size 1 is outside 2\.\.65536"):
        _ONE_SYMBOL[kind](1)
    model = _ONE_SYMBOL[kind](2)
    symbols = torch.tensor([0, 1, 1])
    assert 0 < ideal_bits(symbols, model)
    assert torch.equal(decode(encode(symbols, model), model), symbols)


@pytest.mark.parametrize("bad,index", [
    (torch.tensor([0, 1, 256, 3]), 2),
    (torch.tensor([-1, 1, 2, 3]), 0),
    (torch.tensor([0, 1, 2, 10**6]), 3),
])
def test_out_of_range_symbols_name_their_index(bad, index):
    model = discretized_logistic(torch.zeros(4), torch.ones(4))
    with pytest.raises(SymbolRangeError, match=f"index {index}"):
        model.log2_prob(bad)
    with pytest.raises(SymbolRangeError, match=f"index {index}"):
        encode(bad, model)


@pytest.mark.parametrize("symbols", [
    torch.tensor([0.0, 1.0, 2.0, 3.0]),
    torch.tensor([True, False, True, False]),
    torch.tensor([0, 1, 2]),
    torch.tensor([[0, 1], [2, 3]]),
])
def test_wrong_dtype_or_shape_raises_symbol_range_error(symbols):
    model = uniform(16, (4,))
    with pytest.raises(SymbolRangeError):
        encode(symbols, model)
    with pytest.raises(SymbolRangeError):
        model.start_freq(symbols)


@pytest.mark.parametrize("kind", KINDS)
def test_model_shapes_follow_the_batch_dimensions(kind):
    shape = (2, 3, 4)
    model = build_model(kind, shape, 16, 16, seed=1)
    assert model.shape == shape and model.numel == 24
    assert model.probabilities().shape == shape + (16,)
    assert full_cdf(model).shape == shape + (17,)


def test_models_are_elementwise_over_the_batch():
    """The CDF of an element depends only on its own parameters, not on the batch shape around it."""
    gen = torch.Generator().manual_seed(2)
    mean = torch.rand(2, 3, 4, generator=gen) * 256
    scale = torch.rand(2, 3, 4, generator=gen) * 10 + 0.1
    batch = full_cdf(discretized_logistic(mean, scale))
    flat = full_cdf(discretized_logistic(mean.reshape(-1), scale.reshape(-1)))
    single = full_cdf(discretized_logistic(mean[1, 2, 3], scale[1, 2, 3]))
    assert torch.equal(batch.reshape(24, -1), flat)
    assert torch.equal(batch[1, 2, 3], single)
    probs = torch.rand(2, 3, 10, generator=gen)
    table = full_cdf(categorical(probs=probs))
    assert torch.equal(table[1, 2], full_cdf(categorical(probs=probs[1, 2])))


def test_integer_symbol_dtypes_are_all_accepted():
    model = uniform(200, (5,))
    ref = model.start_freq(torch.tensor([0, 1, 2, 150, 199]))
    for dtype in (torch.uint8, torch.int16, torch.int32, torch.int64):
        got = model.start_freq(torch.tensor([0, 1, 2, 150, 199], dtype=dtype))
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])

