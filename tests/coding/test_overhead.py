"""Rate: the coded size stays within 0.1 % of the ideal sum(-log2 p) plus a small fixed header.

Fixed framing, from the documented layouts: encode()'s container is 26 bytes of fields (magic 4,
version 1, mode 1, symbols 8, prefix symbols 8, symbol CRC32 4) plus a CRC32; a Message header is
30 bytes (magic 4, version 1, flags 1, lanes 4, ops 8, words 8, tail bytes 4) plus a CRC32. In the
bootstrapped mode the prefix message's own header sits inside the lanes' initial states, so it is
paid out of the lanes' payload (and must fit in the 0.1 %), not as extra framing.
"""

from __future__ import annotations

import time

import torch
from conftest import encode_header_bits

from shardzip.coding import Message, decode, describe, discretized_logistic, encode, ideal_bits
from shardzip.coding.container import _CONTAINER
from shardzip.coding.message_format import _CRC, _HEADER

CONTAINER_BITS = 8 * (_CONTAINER.size + _CRC.size)
MESSAGE_HEADER_BITS = 8 * (_HEADER.size + _CRC.size)
HEADER_BITS = CONTAINER_BITS + MESSAGE_HEADER_BITS  # the fixed framing of every encode() output


def test_fixed_headers_are_small():
    assert CONTAINER_BITS == 8 * ((4 + 1 + 1 + 8 + 8 + 4) + 4) == 8 * 30
    assert MESSAGE_HEADER_BITS == 8 * ((4 + 1 + 1 + 4 + 8 + 8 + 4) + 4) == 8 * 34
    assert 8 * len(Message(1).to_bytes()) == MESSAGE_HEADER_BITS + 8, "an empty one-lane message: one tail byte"
    assert encode_header_bits() == HEADER_BITS + 8, "encode() of nothing: the framing and one tail byte"


def _logistic_data(n: int, seed: int):
    """Per-symbol random mean and scale, symbols drawn from the float logistic (clipped to 0..255)."""
    gen = torch.Generator().manual_seed(seed)
    mean = torch.rand(n, generator=gen) * 255
    scale = torch.exp(torch.rand(n, generator=gen) * 4 - 1.5)  # 0.22 .. 12
    u = torch.rand(n, generator=gen, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    symbols = (mean + scale * torch.logit(u)).round().clamp(0, 255).long()
    return discretized_logistic(mean, scale), symbols


def test_one_million_symbols_cost_at_most_0_1_percent_over_ideal(record_property):
    n = 1_000_000
    model, symbols = _logistic_data(n, seed=0)
    t0 = time.perf_counter()
    data = encode(symbols, model)
    t1 = time.perf_counter()
    decoded = decode(data, model)
    t2 = time.perf_counter()
    assert torch.equal(decoded, symbols)
    ideal = ideal_bits(symbols, model)
    coded = 8 * len(data)
    overhead = (coded - HEADER_BITS) / ideal - 1
    print(f"\n1M logistic symbols: ideal {ideal / n:.4f} bits/symbol, coded {coded / n:.4f} bits/symbol, "
          f"overhead {100 * overhead:.4f} % beyond the header; encode {t1 - t0:.2f} s, decode {t2 - t1:.2f} s")
    record_property("overhead_fraction_1M", overhead)
    record_property("encode_seconds_1M", t1 - t0)
    record_property("decode_seconds_1M", t2 - t1)
    assert ideal > 2 * n, "the test data must carry real information"
    assert describe(data)["mode"] == "bootstrapped", "a million symbols take the default, bootstrapped lanes"
    assert coded <= 1.001 * ideal + HEADER_BITS
    assert coded >= ideal, "no code beats the information content"


def test_a_small_single_lane_message_has_overhead_of_a_few_hundred_bits_at_most(record_property):
    n = 2000
    model, symbols = _logistic_data(n, seed=1)
    data = encode(symbols, model, lanes=1)
    assert torch.equal(decode(data, model), symbols)
    overhead = 8 * len(data) - ideal_bits(symbols, model)
    record_property("overhead_bits_2000_symbols_1_lane", overhead)
    assert 0 <= overhead, "no code beats the information content (the framing included)"
    assert overhead - HEADER_BITS < 64, "beyond the framing: a lane tail of tens of bits at most"


def test_overhead_does_not_grow_with_the_number_of_pushes():
    """Many small pushes onto one message cost about the same as one big push (no per-push header)."""
    n, parts = 4000, 40
    model, symbols = _logistic_data(n, seed=2)
    one_msg = Message(4)
    one_msg.push(symbols, model)
    one = one_msg.num_bits()
    msg = Message(4)
    gen = torch.Generator().manual_seed(2)  # the same parameters as _logistic_data(n, seed=2)
    means = torch.rand(n, generator=gen) * 255
    scales = torch.exp(torch.rand(n, generator=gen) * 4 - 1.5)
    step = n // parts
    for i in range(parts):
        part = slice(i * step, (i + 1) * step)
        msg.push(symbols[part], discretized_logistic(means[part], scales[part]))
    many = msg.num_bits()
    assert abs(many - one) <= 64, (many, one)
