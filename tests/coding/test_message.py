"""rANS message: exact round trips for every model kind, shape, lane count and precision; LIFO semantics."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    KERNELS,
    KINDS,
    build_model,
    coding_cases,
    encode_header_bits,
    examples,
    kernel_mode,
    lane_counts,
    min_precision,
    same_coded_intervals,
    sample,
)
from hypothesis import event, given
from hypothesis import strategies as st

from shardzip.coding import (
    Message,
    categorical,
    decode,
    default_lanes,
    discretized_gaussian,
    discretized_logistic,
    encode,
    gaussian_buckets,
    ideal_bits,
    mixture_discretized_logistic,
    uniform,
)
from shardzip.coding.container import _CONTAINER, BOOTSTRAPPED_LANE_BITS, MIN_BOOTSTRAP_LANES, describe
from shardzip.coding.message_format import _CRC, _HEADER
from shardzip.errors import (
    DecodeMismatchError,
    MessageUnderflowError,
    ModelParameterError,
    ShardzipError,
    SymbolRangeError,
)


def roundtrip_message(symbols, model, lanes: int) -> tuple[bytes, torch.Tensor]:
    msg = Message(lanes)
    msg.push(symbols, model)
    data = msg.to_bytes()
    assert msg.num_bits() == 8 * len(data)
    back, used = Message.from_bytes(data)
    assert used == len(data)
    out = back.pop(model)
    back.check_empty()
    return data, out


# ------------------------------------------------------------------------ round trips
@given(coding_cases(), st.data())
@examples(120)
def test_roundtrip_every_kind_shape_lane_count_and_precision(case, data):
    kind, shape, K, precision, seed = case
    model = build_model(kind, shape, K, precision, seed)
    symbols = sample(model, seed + 1)
    lanes = data.draw(lane_counts(model.numel), label="lanes")

    encoded = encode(symbols, model, lanes=lanes)
    decoded = decode(encoded, model)
    assert decoded.shape == shape and decoded.dtype == torch.int64
    assert torch.equal(decoded, symbols)

    _, popped = roundtrip_message(symbols, model, lanes)
    assert torch.equal(popped, symbols)


@given(coding_cases(max_numel=200), st.data())
@examples(60)
def test_every_kernel_writes_identical_bytes_and_decodes_the_others(case, data):
    """The compiled, TorchScript and eager loops: the same bytes, and each decodes what the others wrote."""
    kind, shape, K, precision, seed = case
    model = build_model(kind, shape, K, precision, seed)
    symbols = sample(model, seed + 7)
    lanes = data.draw(lane_counts(model.numel), label="lanes")
    written = {}
    for kernel in KERNELS:
        with kernel_mode(kernel):
            written[kernel] = encode(symbols, model, lanes=lanes)
    assert written["native"] == written["scripted"] == written["eager"]
    for kernel in KERNELS:
        with kernel_mode(kernel):
            assert torch.equal(decode(written[KERNELS[(KERNELS.index(kernel) + 1) % 3]], model), symbols)


@given(coding_cases(max_numel=300))
@examples(40)
def test_default_lane_count_roundtrips(case):
    kind, shape, K, precision, seed = case
    model = build_model(kind, shape, K, precision, seed)
    symbols = sample(model, seed + 3)
    assert torch.equal(decode(encode(symbols, model), model), symbols)


@st.composite
def push_sequences(draw):
    lanes = draw(st.one_of(st.integers(1, 4), st.integers(1, 64)))
    cases = draw(st.lists(coding_cases(max_numel=120), min_size=1, max_size=5))
    cut = draw(st.integers(0, len(cases)))  # serialize after this many pops
    return lanes, cases, cut


@given(push_sequences())
@examples(60)
def test_several_pushes_pop_in_reverse_order_across_serialization(sequence):
    lanes, cases, cut = sequence
    models = [build_model(kind, shape, K, p, seed) for kind, shape, K, p, seed in cases]
    batches = [sample(m, i + 11) for i, m in enumerate(models)]
    msg = Message(lanes)
    for symbols, model in zip(batches, models, strict=True):
        msg.push(symbols, model)
    for i, (symbols, model) in enumerate(zip(reversed(batches), reversed(models), strict=True)):
        if i == cut:
            data = msg.to_bytes()
            msg, used = Message.from_bytes(data)
            assert used == len(data)
            assert msg.to_bytes() == data, "serialization is canonical"
        assert torch.equal(msg.pop(model), symbols)
    if cut == len(cases):
        msg, _ = Message.from_bytes(msg.to_bytes())
    msg.check_empty()


def test_interleaved_pushes_and_pops_behave_like_a_stack():
    gen = torch.Generator().manual_seed(0)
    a = discretized_logistic(torch.rand(300, generator=gen) * 255, torch.rand(300, generator=gen) * 5 + 0.5)
    b = categorical(logits=torch.randn(70, 10, generator=gen))
    c = uniform(1000, (5, 5))
    xa, xb, xc = sample(a, 1), sample(b, 2), sample(c, 3)
    msg = Message(16)
    msg.push(xa, a)
    msg.push(xb, b)
    assert torch.equal(msg.pop(b), xb)
    msg.push(xc, c)
    msg.push(xb, b)
    assert torch.equal(msg.pop(b), xb)
    assert torch.equal(msg.pop(c), xc)
    msg2, _ = Message.from_bytes(msg.to_bytes())
    assert torch.equal(msg2.pop(a), xa)
    msg2.check_empty()
    assert torch.equal(msg.pop(a), xa)
    msg.check_empty()


def test_message_of_only_pushed_then_popped_batches_serializes_like_a_new_one():
    model = discretized_gaussian(torch.full((100,), 50.0), torch.full((100,), 3.0))
    msg = Message(8)
    msg.push(sample(model, 1), model)
    msg.pop(model)
    assert msg.to_bytes() == Message(8).to_bytes()


# ------------------------------------------------------------------------- edge sizes
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 5, 2)])
def test_empty_batches_encode_and_decode(kind, shape):
    model = build_model(kind, shape, 256, 24, seed=3)
    symbols = torch.zeros(shape, dtype=torch.int64)
    data = encode(symbols, model)
    out = decode(data, model)
    assert out.shape == shape and out.dtype == torch.int64
    msg = Message(3)
    msg.push(symbols, model)
    msg.check_empty()
    assert msg.pop(model).shape == shape


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(), (1,), (1, 1, 1)])
@pytest.mark.parametrize("lanes", [1, 7])
def test_a_single_symbol_roundtrips(kind, shape, lanes):
    for K, precision in ((2, 8), (256, 24), (65536, 28)):
        if kind.startswith("categorical") and K > 4096:
            continue
        model = build_model(kind, shape, K, precision, seed=K + lanes)
        for symbol in (0, K - 1, K // 2):
            symbols = torch.full(shape, symbol, dtype=torch.int64)
            assert torch.equal(decode(encode(symbols, model, lanes=lanes), model), symbols)


@pytest.mark.parametrize("lanes", [1, 2, 31, 300, 10_000])
def test_more_lanes_than_symbols(lanes):
    model = discretized_logistic(torch.linspace(0, 255, 30), torch.full((30,), 2.0))
    symbols = sample(model, 4)
    assert torch.equal(decode(encode(symbols, model, lanes=lanes), model), symbols)


def test_extreme_symbols_under_near_deterministic_models_roundtrip():
    """Frequency-1 outliers everywhere: the coder's worst case for state growth and renormalisation."""
    for precision in (8, 16, 24, 28):
        K = 2 ** min(precision - 1, 16)
        n = 400
        model = discretized_logistic(torch.zeros(n), torch.full((n,), 1e-3), alphabet_size=K, precision=precision)
        symbols = torch.full((n,), K - 1, dtype=torch.int64)  # each costs precision bits
        for lanes in (1, 7):
            data = encode(symbols, model, lanes=lanes)
            assert torch.equal(decode(data, model), symbols)
            assert 8 * len(data) >= ideal_bits(symbols, model)


# --------------------------------------------------------------- wrong models and misuse
@given(coding_cases(max_numel=300, max_alphabet=4096), st.data())
@examples(80)
def test_decoding_with_another_model_never_returns_wrong_symbols(case, data):
    """decode() under another model raises DecodeMismatchError, or returns exactly the encoded symbols.

    Decoded symbols are checked against the CRC32 stored by encode(), so a wrong model can never
    return wrong data (but for a 2**-32 chance). A model that gives every coded symbol the same
    integer interval (the encoder's own, or one that quantizes to it) must decode correctly.
    """
    kind, shape, K, precision, seed = case
    model = build_model(kind, shape, K, precision, seed)
    symbols = sample(model, seed + 5)
    other_precision = data.draw(st.sampled_from([precision, max(min_precision(K), precision - 1),
                                                 min(28, precision + 1)]), label="other precision")
    other = build_model(kind, shape, K, other_precision, seed + data.draw(st.integers(0, 1), label="other seed"))
    encoded = encode(symbols, model, lanes=data.draw(lane_counts(model.numel), label="lanes"))
    if same_coded_intervals(model, other, symbols):
        event("same intervals: decodes")
        assert torch.equal(decode(encoded, other), symbols)
        return
    try:
        out = decode(encoded, other)
    except DecodeMismatchError:
        event("other intervals: DecodeMismatchError")
        return
    event("other intervals: decoded the same symbols")
    assert torch.equal(out, symbols), "decode() returned different symbols without raising"


@pytest.mark.parametrize("case", ["uniform-precision", "mixture"])
def test_wrong_model_is_always_detected(case):
    """Once the repros of wrong models decoding silently (only final lane states and word counts were
    checked then): for uniform models at another precision about half the inputs went unnoticed."""
    if case == "uniform-precision":
        encoded_with = uniform(250, (8,), precision=9)
        decoded_with = uniform(250, (8,), precision=10)
        inputs = [torch.randint(0, 250, (8,), generator=torch.Generator().manual_seed(s)) for s in range(20)]
    else:  # found by hypothesis: 80 symbols, 201 bits, precision 17
        encoded_with = build_model("mixture_logits", (8, 10), 109, 17, 304984)
        decoded_with = build_model("mixture_logits", (8, 10), 109, 17, 304985)
        inputs = [sample(encoded_with, 304989)]
    for symbols in inputs:
        assert not same_coded_intervals(encoded_with, decoded_with, symbols)
        with pytest.raises(DecodeMismatchError):
            decode(encode(symbols, encoded_with, lanes=1), decoded_with)


def test_wrong_model_with_seeded_lanes_is_reported_as_a_mismatch():
    """Once a repro: garbage prefix-message bytes from a wrong model surfaced as MessageFormatError."""
    symbols = torch.randint(0, 2, (1445,), generator=torch.Generator().manual_seed(0))
    data = encode(symbols, uniform(2, (1445,), precision=12), lanes=9)
    assert describe(data)["mode"] == "bootstrapped"
    with pytest.raises(DecodeMismatchError):
        decode(data, uniform(2, (1445,), precision=13))


@pytest.mark.parametrize("lanes", [1, 4, 64])
@pytest.mark.parametrize("change", ["mean", "scale", "alphabet", "precision", "kind"])
def test_decode_with_a_slightly_different_model_raises(lanes, change):
    gen = torch.Generator().manual_seed(lanes)
    n = 2000
    mean = torch.rand(n, generator=gen) * 200 + 20
    scale = torch.rand(n, generator=gen) * 6 + 1
    model = discretized_logistic(mean, scale)
    symbols = sample(model, 9)
    data = encode(symbols, model, lanes=lanes)
    wrong = {
        "mean": lambda: discretized_logistic(mean + 0.1, scale),
        "scale": lambda: discretized_logistic(mean, scale * 1.02),
        "alphabet": lambda: discretized_logistic(mean, scale, alphabet_size=257),
        "precision": lambda: discretized_logistic(mean, scale, precision=23),
        "kind": lambda: discretized_gaussian(mean, scale * 1.7),
    }[change]()
    assert not same_coded_intervals(model, wrong, symbols), "the change must reach the integer model"
    with pytest.raises(DecodeMismatchError):
        decode(data, wrong)
    # a bare (cold) Message has no symbol CRC: a wrong model shows as an impossible lane state during the
    # pop (MessageUnderflowError) or as a message that is not empty afterwards (DecodeMismatchError)
    msg = Message(lanes)
    msg.push(symbols, model)
    with pytest.raises((MessageUnderflowError, DecodeMismatchError)):
        out = msg.pop(wrong)
        assert not torch.equal(out, symbols)
        msg.check_empty()


@pytest.mark.parametrize("lanes", [1, 64])
@pytest.mark.parametrize("n_other", [1, 999, 1001, 3000])
def test_decode_with_a_model_of_another_size_raises(n_other, lanes):
    model = discretized_logistic(torch.full((1000,), 100.0), torch.full((1000,), 10.0))
    data = encode(sample(model, 1), model, lanes=lanes)
    other = discretized_logistic(torch.full((n_other,), 100.0), torch.full((n_other,), 10.0))
    with pytest.raises(DecodeMismatchError, match=f"holds 1000 symbols but the model describes {n_other}"):
        decode(data, other)


def test_check_empty_raises_while_symbols_remain():
    model = uniform(10, (5,))
    msg = Message(2)
    msg.push(torch.arange(5), model)
    msg.push(torch.arange(5), model)
    msg.pop(model)
    with pytest.raises(DecodeMismatchError):
        msg.check_empty()
    msg.pop(model)
    msg.check_empty()


def test_popping_more_than_was_pushed_raises_underflow():
    model = uniform(10, (5,))
    msg = Message(1)
    with pytest.raises(MessageUnderflowError):
        msg.pop(model)
    msg.push(torch.arange(5), model)
    with pytest.raises(MessageUnderflowError):
        msg.pop(uniform(10, (6,)))
    assert torch.equal(msg.pop(model), torch.arange(5)), "a refused pop leaves the message untouched"
    with pytest.raises(MessageUnderflowError):
        msg.pop(model)


@pytest.mark.parametrize("make", [
    lambda: uniform(16, (3, 4)),
    lambda: categorical(probs=torch.ones(3, 4, 16)),
    lambda: discretized_logistic(torch.zeros(3, 4), torch.ones(3, 4), alphabet_size=16),
    lambda: discretized_gaussian(torch.zeros(3, 4), torch.ones(3, 4), alphabet_size=16),
    lambda: mixture_discretized_logistic(torch.zeros(3, 4, 2), torch.ones(3, 4, 2), weights=torch.ones(2),
                                         alphabet_size=16),
    lambda: gaussian_buckets(torch.zeros(3, 4), torch.ones(3, 4), alphabet_size=16),
])
@pytest.mark.parametrize("value,flat_index", [(16, 7), (-1, 0), (99, 11), (-5, 5)])
def test_out_of_range_symbols_raise_and_name_the_index(make, value, flat_index):
    model = make()
    symbols = torch.zeros(3, 4, dtype=torch.int64)
    symbols.view(-1)[flat_index] = value
    msg = Message(3)
    with pytest.raises(SymbolRangeError, match=rf"\bindex {flat_index}\b") as info:
        msg.push(symbols, model)
    assert str(value) in str(info.value)
    with pytest.raises(SymbolRangeError, match=rf"\bindex {flat_index}\b"):
        encode(symbols, model)
    msg.check_empty()  # nothing was pushed


def test_symbols_of_wrong_dtype_or_shape_raise():
    model = uniform(16, (4,))
    msg = Message(2)
    for bad in (torch.zeros(4), torch.zeros(5, dtype=torch.int64), torch.zeros(2, 2, dtype=torch.int64),
                torch.zeros(4, dtype=torch.bool)):
        with pytest.raises(SymbolRangeError):
            msg.push(bad, model)
    msg.check_empty()


@pytest.mark.parametrize("lanes", [0, -1, 2**24 + 1])
def test_lane_count_out_of_range_raises(lanes):
    with pytest.raises(ModelParameterError):
        Message(lanes)
    model = uniform(4, (3,))
    with pytest.raises(ModelParameterError):
        encode(torch.zeros(3, dtype=torch.int64), model, lanes=lanes)


def test_largest_and_smallest_lane_counts_are_accepted():
    assert Message(1).lanes == 1
    assert Message(2**24).lanes == 2**24


# ------------------------------------------------------------------------ lanes and rate
@pytest.mark.parametrize("n,bits", [(0, 0.0), (1, 8.0), (1000, 8000.0), (10**6, 8e6), (10**8, 8e8), (100, 1e9)])
def test_default_lanes_is_at_least_one_and_no_larger_than_the_batch(n, bits):
    lanes = default_lanes(n, bits)
    assert isinstance(lanes, int)
    assert 1 <= lanes <= max(n, 1)


def test_default_lanes_grow_with_the_payload():
    counts = [default_lanes(10**7, bits) for bits in (1e2, 1e4, 1e6, 1e8)]
    assert counts == sorted(counts) and counts[-1] > counts[0]


def test_more_lanes_cost_a_bounded_number_of_bits_each():
    """Lane overhead: every lane's tail costs tens of bits, not a fixed 64-bit state."""
    gen = torch.Generator().manual_seed(1)
    n = 8192
    model = discretized_logistic(torch.rand(n, generator=gen) * 255, torch.rand(n, generator=gen) * 8 + 0.5)
    symbols = sample(model, 2)
    ideal = ideal_bits(symbols, model)
    sizes = {lanes: 8 * len(encode(symbols, model, lanes=lanes)) for lanes in (1, 64, 512)}
    header = encode_header_bits()
    for lanes, bits in sizes.items():
        per_lane = (bits - ideal - header) / lanes
        assert per_lane < 48, (lanes, per_lane)
    assert sizes[1] <= sizes[64] <= sizes[512]


def test_symbols_are_coded_at_close_to_their_information_content():
    gen = torch.Generator().manual_seed(2)
    n = 20_000
    for model in (
        discretized_logistic(torch.rand(n, generator=gen) * 255, torch.rand(n, generator=gen) * 20 + 0.3),
        categorical(logits=torch.randn(n, 20, generator=gen) * 2),
        gaussian_buckets(torch.randn(n, generator=gen), torch.rand(n, generator=gen) + 0.1, alphabet_size=64),
    ):
        symbols = sample(model, 3, outliers=0.0)
        ideal = ideal_bits(symbols, model)
        coded = 8 * len(encode(symbols, model, lanes=4))
        assert ideal <= coded <= ideal * 1.001 + encode_header_bits() + 4 * 64, (coded, ideal)


def test_bits_per_symbol_sanity_against_the_float_entropy():
    """A Gaussian of scale s over integers carries ~log2(s * sqrt(2 pi e)) bits: the coder is near it.

    The fixed framing (container and message headers with their CRCs, 64 bytes) is not per-symbol
    cost: it is left out, so the bound speaks of the coder alone.
    """
    n, s = 50_000, 10.0
    model = discretized_gaussian(torch.full((n,), 128.0), torch.full((n,), s))
    symbols = sample(model, 5, outliers=0.0)
    framing = 8 * (_CONTAINER.size + _CRC.size + _HEADER.size + _CRC.size)
    coded = (8 * len(encode(symbols, model)) - framing) / n
    entropy = math.log2(s * math.sqrt(2 * math.pi * math.e))
    assert abs(coded - entropy) < 0.02, (coded, entropy)


@pytest.mark.parametrize("n,scale", [(300, 3.0), (20_000, 1.0), (200_000, 8.0)])
def test_encode_picks_the_default_lane_count_and_bootstraps_from_eight_lanes(n, scale):
    """encode() takes default_lanes(n, ideal, BOOTSTRAPPED_LANE_BITS) and bootstraps when that is >= 8
    lanes; otherwise it codes plainly over default_lanes(n, ideal) cold lanes."""
    gen = torch.Generator().manual_seed(n)
    model = discretized_logistic(torch.rand(n, generator=gen) * 255, torch.full((n,), scale))
    symbols = sample(model, 1)
    _, freq = model.start_freq(symbols)
    ideal = float((model.precision - freq.double().log2()).sum())
    info = describe(encode(symbols, model))
    bootstrapped = default_lanes(n, ideal, BOOTSTRAPPED_LANE_BITS)
    if bootstrapped >= MIN_BOOTSTRAP_LANES:
        assert (info["mode"], info["lanes"]) == ("bootstrapped", bootstrapped)
        assert 0 < info["prefix_symbols"] < n
    else:
        assert (info["mode"], info["lanes"]) == ("plain", default_lanes(n, ideal))
    assert info["symbols"] == n


@pytest.mark.parametrize("lane_bits", [26, 9, 1.5])
@pytest.mark.parametrize("n,bits", [(10**6, 26e6), (10**6, 1e8), (100, 1e9), (10**9, 1e12), (10, 1.0), (5000, 3e5)])
def test_default_lanes_are_the_most_whose_overhead_stays_within_the_target(n, bits, lane_bits):
    """lane_bits per lane at most TARGET_OVERHEAD (0.06 %) of the ideal bits, capped by n and 4096, at least 1."""
    target = 0.0006 * bits
    lanes = default_lanes(n, bits, lane_bits)
    assert 1 <= lanes <= min(n, 4096)
    assert lanes == 1 or lanes * lane_bits <= target * (1 + 1e-9)
    assert lanes == min(n, 4096) or (lanes + 1) * lane_bits > target * (1 - 1e-9)
    if lane_bits == 26:
        assert default_lanes(n, bits) == lanes, "26 bits per lane is the default"


@pytest.mark.parametrize("lanes,n", [(5, 2), (4, 7), (3, 3), (7, 1)])
def test_a_partial_last_row_codes_only_its_own_lanes(lanes, n):
    """N symbols over L lanes: the N % L lanes of the last row are coded on their own, the rest sit it out."""
    model = uniform(1 << 12, (n,), precision=16)
    symbols = 1 + torch.arange(n) * 97 % 4000  # start > 0: every coded symbol moves its lane's state
    msg = Message(lanes)
    msg.push(symbols, model)
    full, rest = divmod(n, lanes)
    assert msg.ops == full + (1 if rest else 0)
    used = lanes if full else rest
    assert bool((msg.state[used:] == 1).all()), "lanes without a symbol keep their initial state"
    assert bool((msg.state[:used] > 1).all())
    assert torch.equal(msg.pop(model), symbols)
    msg.check_empty()


def test_errors_are_all_shardzip_errors():
    for exc in (DecodeMismatchError, MessageUnderflowError, ModelParameterError, SymbolRangeError):
        assert issubclass(exc, ShardzipError)
