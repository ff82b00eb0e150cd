"""CPU/CUDA byte identity: the same symbols under the same models give the same bytes on either device.

Integer kernels make this possible; these tests are what shows it. Without a CUDA device they skip.
"""

from __future__ import annotations

import pytest
import torch
from conftest import KINDS, build_model, coder_mode, coding_cases, examples, full_cdf, sample
from hypothesis import given
from hypothesis import strategies as st

from shardzip.coding import Message, bucket_centres, bucket_edges, decode, encode, uniform
from shardzip.errors import ModelParameterError

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: CPU/GPU byte-identity not checked here"),
]

CUDA = "cuda"


def _pair(kind: str, shape, K: int, precision: int, seed: int):
    return build_model(kind, shape, K, precision, seed, "cpu"), build_model(kind, shape, K, precision, seed, CUDA)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("K,precision", [(2, 8), (256, 24), (1000, 12), (65536, 28)])
@pytest.mark.parametrize("lanes", [1, 7, 256])
def test_cpu_and_cuda_write_identical_bytes_and_read_each_other(kind, K, precision, lanes):
    if kind.startswith("categorical") and K > 4096:
        pytest.skip("categorical tables over 65536 symbols are too large for this test")
    cpu, gpu = _pair(kind, (3, 200), K, precision, seed=K + lanes)
    symbols = sample(cpu, seed=lanes)
    on_cpu = encode(symbols, cpu, lanes=lanes)
    on_gpu = encode(symbols.to(CUDA), gpu, lanes=lanes)
    assert on_cpu == on_gpu
    assert torch.equal(decode(on_gpu, cpu), symbols)
    back = decode(on_cpu, gpu)
    assert back.device.type == "cuda"
    assert torch.equal(back.cpu(), symbols)


@pytest.mark.parametrize("kind", KINDS)
def test_cpu_and_cuda_cdfs_are_identical(kind):
    cpu, gpu = _pair(kind, (5, 7), 300, 20, seed=3)
    assert torch.equal(full_cdf(gpu).cpu(), full_cdf(cpu))  # what the coder uses: identical integers
    symbols = sample(cpu, seed=4)
    # -log2 p is a reported figure, never coded: the log2 of the same integer frequencies, which CUDA's log2 (not
    # correctly rounded) may place one unit in the last place away from the CPU's (seen on an H200)
    torch.testing.assert_close(gpu.log2_prob(symbols.to(CUDA)).cpu(), cpu.log2_prob(symbols), rtol=1e-12, atol=1e-12)


@given(coding_cases(max_numel=400), st.integers(1, 300))
@examples(40)
def test_cpu_and_cuda_agree_on_random_cases(case, lanes):
    kind, shape, K, precision, seed = case
    cpu, gpu = _pair(kind, shape, K, precision, seed)
    symbols = sample(cpu, seed + 1)
    on_cpu = encode(symbols, cpu, lanes=lanes)
    assert encode(symbols.to(CUDA), gpu, lanes=lanes) == on_cpu
    assert torch.equal(decode(on_cpu, gpu).cpu(), symbols)


@pytest.mark.parametrize("scripted", [True, False])
def test_message_stack_is_identical_on_both_devices(scripted):
    cases = [("logistic", (300,), 256, 24, 1), ("categorical_logits", (40, 3), 50, 16, 2),
             ("buckets", (128,), 256, 24, 3), ("mixture", (2, 64), 1024, 20, 4)]
    messages = {}
    with coder_mode(scripted=scripted):
        for device in ("cpu", CUDA):
            msg = Message(64, device)
            for kind, shape, K, precision, seed in cases:
                model = build_model(kind, shape, K, precision, seed, device)
                msg.push(sample(model, seed), model)
            messages[device] = msg.to_bytes()
        assert messages["cpu"] == messages[CUDA]
        msg, _ = Message.from_bytes(messages["cpu"], CUDA)
        for kind, shape, K, precision, seed in reversed(cases):
            model = build_model(kind, shape, K, precision, seed, CUDA)
            assert torch.equal(msg.pop(model).cpu(), sample(build_model(kind, shape, K, precision, seed), seed))
        msg.check_empty()


@pytest.mark.parametrize("start", ["clean_bits", "cold_prefix"])
def test_bits_back_on_cuda_matches_cpu_bytes(start):
    from coding.test_bitsback import Start, ToyLatentModel, bits_back_decode, bits_back_encode

    lanes, rounds = 32, 30
    results = {}
    for device in ("cpu", CUDA):
        means = 60 + 8.0 * torch.arange(8, dtype=torch.float64)
        model = ToyLatentModel(means.to(device), 4.0, lanes)
        data = model.sample_data(rounds, seed=1)
        begin = Start(start, lanes)
        msg = begin.message(device)
        bits_back_encode(msg, model, data)
        results[device] = msg.to_bytes()
        decoder, _ = Message.from_bytes(results[device], device)
        assert torch.equal(bits_back_decode(decoder, model, rounds), data)
        if start == "clean_bits":
            begin.check(decoder)
    assert results["cpu"] == results[CUDA]


@pytest.mark.parametrize("scripted", [True, False])
def test_always_warm_pops_below_the_start_are_identical_on_both_devices(scripted):
    """Pops before any push (negative op counts, refills from the seeded words, a partial last row)."""
    messages = {}
    with coder_mode(scripted=scripted):
        for device in ("cpu", CUDA):
            msg = Message.with_clean_bits(16, 4, seed=3, device=device)
            for kind, shape, K, precision, seed in [("logistic", (40,), 256, 24, 1), ("buckets", (37,), 64, 20, 2)]:
                model = build_model(kind, shape, K, precision, seed, device)
                msg.pop(model)
            messages[device] = msg.to_bytes()
    assert messages["cpu"] == messages[CUDA]


def test_bucket_geometry_is_identical_on_both_devices():
    for K in (2, 255, 256, 4096):
        assert torch.equal(bucket_edges(K, CUDA).cpu(), bucket_edges(K))
        assert torch.equal(bucket_centres(K, CUDA).cpu(), bucket_centres(K))


def test_models_and_messages_on_different_devices_are_refused():
    cpu_model = uniform(16, (4,))
    msg = Message(2, CUDA)
    with pytest.raises(ModelParameterError):
        msg.push(torch.zeros(4, dtype=torch.int64), cpu_model)
    cpu_msg = Message(2)
    cpu_msg.push(torch.zeros(4, dtype=torch.int64), cpu_model)
    with pytest.raises(ModelParameterError):
        cpu_msg.pop(uniform(16, (4,), device=CUDA))


def test_every_shipped_model_decodes_across_cuda_and_cpu(tmp_path):
    """Exact numerics: bytes written on CUDA decode on the CPU and the reverse, for every shipped model
    (tools/cross_decode.py, the script to run on any GPU machine)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import cross_decode

    from shardzip.catalog import load_catalog

    models = sorted(n for n, e in load_catalog().models.items() if e.sha256)
    out = cross_decode.cross_decode(models, ["cpu/best", "cuda"], "1,2", work=tmp_path, log=print)
    assert out["ok"], {m: r["failed"][:2] for m, r in out["rows"].items() if r["failed"]}
