"""Exact numerics (`shardzip.numerics`): elementary functions, exact sums of products, the dispatch mode,
numerics recorded in model containers, legacy containers, and what it is all for: every shipped model's
code decodes under every thread count, CPU kernel set and oneDNN setting (tools/cross_decode.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib
from decimal import Decimal, getcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TEST_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from shardzip.catalog import load_catalog
from shardzip.errors import DecodeMismatchError, MessageFormatError, NumericsError
from shardzip.models import load_catalog_model
from shardzip.models.codec import compress, decode_notes, decompress, read_header
from shardzip.numerics import EXACT, FLOAT, exact_numerics
from shardzip.numerics import elementary as E
from shardzip.numerics.sums import exact_convolution, exact_matmul, exact_sum, quantize_weights

ROOT = ROOT
sys.path.insert(0, str(ROOT / "tools"))
import cross_decode  # noqa: E402

MNIST = torch.from_numpy(np.load(TEST_DATA / "mnist_test_64.npy")).long()
SHIPPED = sorted(n for n, e in load_catalog().models.items() if e.sha256)


@pytest.fixture
def threads():
    """Restore torch's thread count after a test that changes it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------ elementary functions
def _ulps(got: torch.Tensor, ref: list[Decimal], eps: float) -> float:
    worst = 0.0
    for g, r in zip(got.double().tolist(), ref, strict=True):
        if r != 0:
            worst = max(worst, float(abs((Decimal(g) - r) / r)) / eps)
    return worst


REF = {"exp": lambda d: d.exp(), "log": lambda d: d.ln(), "log2": lambda d: d.ln() / Decimal(2).ln(),
       "log1p": lambda d: (1 + d).ln(), "sigmoid": lambda d: 1 / (1 + (-d).exp()),
       "tanh": lambda d: (1 - (-2 * d).exp()) / (1 + (-2 * d).exp()), "expm1": lambda d: d.exp() - 1}


@pytest.mark.parametrize("name", sorted(REF))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_elementary_functions_are_accurate_to_a_few_units_in_the_last_place(name, dtype):
    getcontext().prec = 40
    gen = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(300, generator=gen, dtype=torch.float64) * 8,
                   torch.randn(100, generator=gen, dtype=torch.float64) * 1e-4,
                   torch.linspace(-60, 60, 101, dtype=torch.float64)]).to(dtype)
    if name in ("log", "log2"):
        x = x.abs() + 1e-30
    if name == "log1p":
        x = x.abs()
    got = getattr(E, name)(x)
    ref = [REF[name](Decimal(v)) for v in x.double().tolist()]
    eps = 2.0**-52 if got.dtype == torch.float64 else 2.0**-23
    assert _ulps(got, ref, eps) < 4, name


def test_elementary_special_values():
    assert E.exp(torch.tensor([0.0], dtype=torch.float64)).item() == 1.0
    assert E.log(torch.tensor([1.0], dtype=torch.float64)).item() == 0.0
    powers = torch.tensor([2.0**k for k in range(-30, 31)], dtype=torch.float64)
    assert torch.equal(E.log2(powers), torch.arange(-30, 31, dtype=torch.float64))
    assert torch.equal(E.exp2(torch.arange(-30, 31, dtype=torch.float64)), powers)
    specials = E.log(torch.tensor([0.0, -1.0, float("inf")], dtype=torch.float64))
    assert specials[0] == float("-inf") and torch.isnan(specials[1]) and specials[2] == float("inf")
    assert E.sigmoid(torch.tensor([0.0, 1e4, -1e4])).tolist() == [0.5, 1.0, 0.0]
    assert E.power(torch.tensor([3.0], dtype=torch.float64), 2).item() == 9.0


_ELEMENTARY_PROBE = """
import hashlib, sys, torch
from shardzip.numerics import elementary as E
torch.set_num_threads(int(sys.argv[1]))
gen = torch.Generator().manual_seed(7)
x = torch.randn(1 << 16, generator=gen, dtype=torch.float64) * 10
h = hashlib.sha256()
for dtype in (torch.float64, torch.float32):
    v = x.to(dtype)
    for f in (E.exp, E.log1p, E.sigmoid, E.tanh, E.softplus, E.expm1):
        h.update(f(v.abs() if f is E.log1p else v).contiguous().numpy().tobytes())
    h.update(E.log(v.abs() + 1e-3).contiguous().numpy().tobytes())
print(h.hexdigest())
"""


def test_elementary_functions_give_the_same_bits_under_every_cpu_kernel_set_and_thread_count():
    outs = set()
    for capability in ("default", None):
        for n in ("1", "2"):
            env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
            if capability:
                env["ATEN_CPU_CAPABILITY"] = capability
            outs.add(subprocess.run([sys.executable, "-c", _ELEMENTARY_PROBE, n], env=env, capture_output=True,
                                    text=True, check=True).stdout)
    assert len(outs) == 1


# ------------------------------------------------------------------------------ exact sums of products
def _int_reference_conv(xq: torch.Tensor, wq: torch.Tensor, stride, padding, dilation, groups) -> torch.Tensor:
    """The same convolution in int64 (im2col + integer matrix product): exact by construction."""
    n, c, h, w = xq.shape
    o, cg, kh, kw = wq.shape
    cols = torch.nn.functional.unfold(xq, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    oh = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    ow = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    cols = cols.long().view(n, groups, cg * kh * kw, oh * ow)
    wmat = wq.long().view(groups, o // groups, cg * kh * kw)
    out = torch.einsum("gok,ngkl->ngol", wmat, cols)  # int64: no rounding
    return out.reshape(n, o, oh, ow)


def numerics_version(version: int):
    """exact_convolution called directly (outside the dispatch mode) computes as exact-`version` does."""
    from shardzip.numerics.versions import in_force

    return in_force(version)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9),
       st.sampled_from([1, 3]), st.integers(1, 2), st.integers(0, 2), st.integers(1, 2), st.booleans(),
       st.floats(-6, 6), st.integers(0, 2**31 - 1))
def test_exact_convolution_is_the_exact_sum_of_products_of_its_quantized_operands(
        n, groups, cg, h, w, k, stride, padding, dilation, bias, log_scale, seed):
    """exact-2 (and exact-3's grouped convolutions): one float64 grid per tensor, every partial sum below 2**53."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, groups * cg, h + dilation * k, w + dilation * k, generator=gen) * 10.0**log_scale
    wt = torch.randn(2 * groups, cg, k, k, generator=gen)
    b = torch.randn(2 * groups, generator=gen) if bias else None
    with numerics_version(2 if groups == 1 else 3):
        got = exact_convolution(x, wt, b, [stride] * 2, [padding] * 2, [dilation] * 2, False, [0, 0], groups)
    wq, wbits = quantize_weights(wt)
    assert float(wq.abs().max()) <= 2**20
    from shardzip.numerics.sums import _amax, _grid_bits, _on_grid

    l1 = float(wq.abs().flatten(1).sum(1).amax())
    xbits = _grid_bits(_amax(x), l1)
    ref = _int_reference_conv(_on_grid(x, xbits), wq, stride, padding, dilation, groups)
    assert int(ref.abs().max()) < 2**53
    want = ref.double() * 2.0**-(xbits + wbits)
    if b is not None:
        want = want + b.double().view(1, -1, 1, 1)
    assert torch.equal(got, want.float())


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 2), st.integers(1, 40), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9),
       st.sampled_from([1, 2, 3, 5]), st.integers(1, 2), st.integers(0, 2), st.booleans(), st.floats(-6, 6),
       st.floats(-3, 3), st.booleans(), st.integers(0, 2**31 - 1))
def test_exact_3_convolution_is_the_exact_sum_of_its_int16_operands(
        n, cin, cout, h, w, k, stride, padding, bias, log_scale, spread, worst, seed):
    """exact-3's grids (`_pair_grids`): weights of at most 12 bits per output channel, activations of at most 14
    bits, every sum over a run of 16 input channels below 2**31 even for the worst input (|x| at its maximum
    everywhere, with the weights' signs), and the result the exact integer sum, scaled per output channel."""
    from shardzip.numerics.sums import PAIR_CHANNELS, _pair_grids

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h + k, w + k, generator=gen) * 10.0**log_scale
    wt = torch.randn(cout, cin, k, k, generator=gen) * 10.0**(spread * torch.rand(cout, 1, 1, 1, generator=gen))
    if worst:
        wt = wt.abs()
        x = torch.full_like(x, float(x.abs().max()))
    b = torch.randn(cout, generator=gen) if bias else None
    with numerics_version(3):
        got = exact_convolution(x, wt, b, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1)
        xbits, grid, _ = _pair_grids(x, wt)
    wq, bits = grid.wq, grid.bits
    assert float(wq.abs().max()) <= 2**12 and all(-200 < v < 200 for v in bits)
    for o in range(cout):
        if float(wt[o].abs().max()) > 0:
            assert float(wq[o].abs().max()) >= 2**11  # each channel uses its grid
    xq = torch.round(x.double() * 2.0**xbits)
    assert float(xq.abs().max()) <= 2**14
    for c0 in range(0, cin, PAIR_CHANNELS):
        part = _int_reference_conv(xq[:, c0:c0 + PAIR_CHANNELS], wq[:, c0:c0 + PAIR_CHANNELS], stride, padding, 1, 1)
        assert int(part.abs().max()) < 2**31
    ref = _int_reference_conv(xq, wq, stride, padding, 1, 1)
    want = ref.double() * torch.tensor([2.0**-(xbits + v) for v in bits], dtype=torch.float64).view(1, -1, 1, 1)
    if b is not None:
        want = want + b.double().view(1, -1, 1, 1)
    assert torch.equal(got, want.float())


def test_exact_3_weight_grids_are_kept_only_while_the_weights_stay_the_same():
    """A weight tensor's exact-3 grid is computed once and kept on it; a change of its values in place (a
    training step, load_state_dict) or of its storage computes it again, so no pass uses stale weights."""
    from shardzip.numerics.sums import _pair_weights

    conv = torch.nn.Conv2d(4, 3, 3, padding=1)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    args = ([1, 1], [1, 1], [1, 1], False, [0, 0], 1)
    with torch.no_grad(), numerics_version(3):
        first = exact_convolution(x, conv.weight, conv.bias, *args)
        assert _pair_weights(conv.weight) is _pair_weights(conv.weight)
        conv.weight.mul_(2.0)  # in place: the version counter moves
        doubled = exact_convolution(x, conv.weight, conv.bias, *args)
        conv.weight.data = conv.weight.data * 0.5  # new storage, version reset with it
        back = exact_convolution(x, conv.weight, conv.bias, *args)
    assert not torch.equal(first, doubled)
    assert torch.equal(first.view(torch.int32), back.view(torch.int32))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 300), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_exact_matmul_equals_integer_arithmetic_and_sums_ignore_order(m, k, n, seed):
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(m, k, generator=gen, dtype=torch.float64), torch.randn(k, n, generator=gen)
    got = exact_matmul(a, b)
    bq, bbits = quantize_weights(b)
    from shardzip.numerics.sums import _grid_bits, _on_grid

    abits = _grid_bits(float(a.abs().max()), float(bq.abs().sum(0).max()))
    ref = _on_grid(a, abits).long() @ bq.long()
    assert torch.equal(got, ref.double() * 2.0**-(abits + bbits))
    flat = a.flatten()
    perm = torch.randperm(flat.numel(), generator=gen)
    assert torch.equal(exact_sum(flat), exact_sum(flat[perm]))


def test_exact_operations_do_not_depend_on_the_thread_count(threads):
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(2, 64, 96, 96, generator=gen), torch.randn(64, 64, 3, 3, generator=gen) * 0.05
    outs = []
    for n in (1, 2, 4):
        torch.set_num_threads(n)
        with exact_numerics():
            y = torch.nn.functional.silu(torch.nn.functional.conv2d(x, w, padding=1))
            outs.append((y, y.mean(1), torch.nn.functional.group_norm(y, 8), torch.logsumexp(y, 1)))
    for other in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outs[0], other, strict=True))


# ------------------------------------------------------------------------------ the dispatch mode
def test_float_operations_without_an_exact_implementation_are_refused_by_name():
    x = torch.rand(4)
    with exact_numerics():
        with pytest.raises(NumericsError, match="erf"):
            torch.erf(x)
        with pytest.raises(NumericsError, match="randn"):
            torch.randn(3)
        with pytest.raises(NumericsError, match="index_add"):
            torch.zeros(2).index_add_(0, torch.tensor([0, 0, 1, 1]), x)
        with pytest.raises(NumericsError, match="NaN or infinite"):
            torch.tensor([float("nan")]).long()
        assert torch.equal(torch.arange(5) * 3 // 2, torch.tensor([0, 1, 3, 4, 6]))  # integers pass
        with exact_numerics():  # re-entrant
            assert torch.equal(torch.exp(torch.zeros(2)), torch.ones(2))


@pytest.mark.parametrize("version,tolerance", [(2, 1e-6), (3, 2e-4)])
@pytest.mark.parametrize("name", ["idf-photos", "msp-radar", "idf-mnist"])
def test_exact_numerics_change_a_models_likelihood_by_a_hair(name, version, tolerance):
    """The portable mode computes the trained float function to within rounding (exact-2: float64 sums, the NLL
    within a millionth) or to within int16 grids (exact-3: within 0.02 %)."""
    model = load_catalog_model(name)
    if name == "idf-photos":
        import skimage.data as skdata

        x = torch.from_numpy(np.ascontiguousarray(skdata.astronaut()[:64, :96].transpose(2, 0, 1))).long()[None]
    elif name == "msp-radar":
        x = torch.from_numpy(np.random.default_rng(0).integers(-3, 4, (1, 1, 64, 64)).cumsum(-1).cumsum(-2)
                              + 3000).long()
        x[..., :16, :24] = -1
    elif name == "idf-mnist":
        x = MNIST[:16]
    float_nll = float(model.nll_bits(x).sum())
    with exact_numerics(version):
        exact_nll = float(model.nll_bits(x).sum())
    assert abs(exact_nll - float_nll) < tolerance * float_nll


# ------------------------------------------------------------------------------ containers
def test_containers_record_their_numerics_and_float_ones_their_thread_count(threads):
    model = load_catalog_model("bbans-mnist")
    torch.set_num_threads(1)
    exact, floats = compress(model, MNIST[:8], numerics=EXACT), compress(model, MNIST[:8], numerics=FLOAT)
    assert read_header(exact)["numerics"] == EXACT and read_header(exact)["threads"] == 0
    assert read_header(floats)["numerics"] == FLOAT and read_header(floats)["threads"] == 1
    torch.set_num_threads(2)  # the decoder repeats the float encoder's thread count, then restores this one
    with decode_notes() as notes:
        assert torch.equal(decompress(model, floats)[0], MNIST[:8])
        assert torch.equal(decompress(model, exact)[0], MNIST[:8])
    assert torch.get_num_threads() == 2
    assert notes == [{"numerics": FLOAT, "threads": 1, "attempts": 1}, {"numerics": EXACT, "threads": None,
                                                                          "attempts": 1}]
    with pytest.raises(NumericsError, match="unknown numerics"):
        compress(model, MNIST[:8], numerics="fast")


def _as_version_1(blob: bytes) -> bytes:
    """The same container as shardzip wrote it before numerics were recorded (version 1 layout)."""
    head = read_header(blob)
    n = blob[6]
    start = 7 + n  # magic, version, flags, family length, family
    body = blob[:4] + bytes([1]) + blob[5:start] + blob[start + 3:head["message_offset"] - 4]
    return body + struct.pack("<I", zlib.crc32(body)) + blob[head["message_offset"]:]


def test_legacy_containers_decode_by_trying_the_thread_counts_their_encoder_may_have_used(threads):
    """Containers written before this change (float networks, thread count not recorded) still decode: the
    decoder tries this process's thread count, then 1 ... cores, and says which worked."""
    model = load_catalog_model("bbans-mnist")
    torch.set_num_threads(1)
    one = _as_version_1(compress(model, MNIST[:32], numerics=FLOAT))
    torch.set_num_threads(2)
    two = _as_version_1(compress(model, MNIST[:32], numerics=FLOAT))
    assert read_header(one)["version"] == 1 and read_header(one)["numerics"] == FLOAT
    if one == two:
        pytest.skip("on this machine 1 and 2 torch threads give the same floats for this model")
    with decode_notes() as notes:  # this process runs 2 threads: the 1-thread container needs a second try
        assert torch.equal(torch.cat(decompress(model, one)), MNIST[:32])
        assert torch.equal(torch.cat(decompress(model, two)), MNIST[:32])
    assert notes == [{"numerics": FLOAT, "threads": 1, "attempts": 2, "legacy": True},
                     {"numerics": FLOAT, "threads": 2, "attempts": 1, "legacy": True}]
    damaged = bytearray(one)
    damaged[-5] ^= 0x40
    with pytest.raises(MessageFormatError, match="CRC32"):  # damage is found before decoding: no retries
        decompress(model, bytes(damaged))
    other = load_catalog_model("bbans-mnist")
    with torch.no_grad():
        other.decoder[-1].bias.add_(0.05)  # other weights: no thread count can help, and the error says so
    with pytest.raises(DecodeMismatchError, match="does not decode with 2, 1 torch threads"):
        decompress(other, one)


LEGACY = TEST_DATA / "legacy"


def _machine() -> dict:
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__.split("+")[0], "machine": platform.machine()}


def test_a_store_written_before_numerics_were_recorded_still_reads_back(tmp_path):
    """A real store of the previous release (float networks, version-1 containers): plain zarr reads it
    bit-exactly and verify says how its chunks decoded. Float numerics decode only on the kind of machine that
    wrote them, so elsewhere this is skipped, saying so."""
    import shutil

    import skimage.data as skdata
    import zarr

    from shardzip.pipeline import jobs

    meta = json.loads((LEGACY / "coffee-idf-photos.json").read_text())
    if meta["machine"] != _machine():
        pytest.skip(f"the legacy store was written on {meta['machine']}, this is {_machine()}: float numerics "
                    "from another kind of machine need not decode here")
    store = tmp_path / "legacy.szip"
    shutil.copytree(LEGACY / "coffee-idf-photos.szip", store)
    want = np.ascontiguousarray(skdata.coffee()[100:196, 200:328].transpose(2, 0, 1))
    assert np.array_equal(zarr.open(str(store), mode="r")["coffee"][...], want)
    out = jobs.verify(str(store), workers=1, progress=False)
    assert out["bad"] == [] and len(out["decoded"]) == 1
    assert next(iter(out["decoded"])).startswith("float (threads not recorded), decoded with")
    assert "float" in jobs.format_summary(jobs.info(str(store)))


# ------------------------------------------------------------------------------ across configurations
def test_every_shipped_model_decodes_under_every_thread_count_cpu_kernel_set_and_onednn_setting(tmp_path):
    """Bytes written (exact-3) under {1, 2, 4 threads} x {default CPU kernels with baseline convolution kernels,
    best CPU kernels, best without oneDNN, another vendor's sqrt} decode under every other combination, for every
    shipped model, on real data (and are in fact the same bytes)."""
    out = cross_decode.cross_decode(SHIPPED, list(cross_decode.DEFAULT_CONFIGS), "1,2,4", work=tmp_path,
                                    log=lambda *_: None)
    failed = {m: r["failed"][:2] for m, r in out["rows"].items() if r["failed"]}
    assert not failed
    writers = 3 * len(cross_decode.DEFAULT_CONFIGS)
    assert all(r["writers"] == writers and r["decodes"] == writers * r["distinct_bytes"] for r in out["rows"].values())
    assert out["same_bytes"], {m: r["distinct_bytes"] for m, r in out["rows"].items()}


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() == "DEFAULT",
                    reason="this CPU has no vector kernel set to compare the scalar kernels with")
def test_the_cross_check_catches_what_plain_float_numerics_do(tmp_path):
    """The same check with plain floats fails: it can tell (the bug it guards against is real)."""
    out = cross_decode.cross_decode(["bbans-mnist", "idf-photos"], ["cpu/default", "cpu/best"], "1,2",
                                    numerics=FLOAT, work=tmp_path, log=lambda *_: None)
    assert not out["ok"] and not out["same_bytes"]


@pytest.mark.parametrize("numerics", ["exact-2", "exact-3"])
@pytest.mark.parametrize("name", ["idf-mnist", "msp-radar"])
def test_exact_numerics_bytes_are_stable(name, numerics):
    """Exact numerics are part of the format: a change that alters what a version computes changes these bytes,
    and must then be a new numerics version (old stores keep decoding with the old one). The same bytes on every
    machine: exact-2's were first taken on an AMD EPYC, exact-3's on an Intel Xeon; cpu/othersqrt stands in for
    the other vendors' sqrt."""
    model = load_catalog_model(name)
    x = MNIST[:8] if name == "idf-mnist" else MNIST[8:10] * 200  # real digits, as 16-bit values for msp
    digest = hashlib.sha256(compress(model, x, batch=8, numerics=numerics)).hexdigest()
    assert digest == GOLDEN[name, numerics], digest
    with cross_decode.other_vendor_sqrt_in():
        assert hashlib.sha256(compress(model, x, batch=8, numerics=numerics)).hexdigest() == GOLDEN[name, numerics]


GOLDEN = {("idf-mnist", "exact-2"): "5375b1638154563f15b3f6a5fe63bd9cd12336ade9d6522f4a95d6808272bd32",
          ("msp-radar", "exact-2"): "542671f144392fc243e225b06143ab23d2f3312a6ca299baa665b20b3cd6d264",
          ("idf-mnist", "exact-3"): "9f2ff0ae54ca728e69344ce860f56a99910b3ebaecd03c19edd7fe7fa88cfd71",
          ("msp-radar", "exact-3"): "64b4e02d6b3ee085476ba9e84a96264baf78e4621cda9ed9f1504e3008783fce"}


# ------------------------------------------------------------------------------ sqrt (exact-2)
def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int32 if x.dtype == torch.float32 else torch.int64)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([torch.float32, torch.float64]), st.integers(0, 2**31 - 1))
def test_sqrt_is_correctly_rounded_at_every_magnitude_whatever_the_first_guess(dtype, seed):
    """E.sqrt equals IEEE's correctly rounded square root (Python's math.sqrt, numpy's) on random bit patterns of
    the whole range, subnormals and specials, and does not depend on torch's kernel: a first guess one unit in
    the last place off (as MKL's is on some CPUs) corrects to the same bits."""
    import math

    gen = torch.Generator().manual_seed(seed)
    n = 4000
    if dtype == torch.float32:
        x = torch.randint(0, 0x7F800000, (n,), generator=gen, dtype=torch.int64).to(torch.int32).view(torch.float32)
    else:
        x = torch.randint(0, 0x7FF0000000000000, (n,), generator=gen, dtype=torch.int64).view(torch.float64)
    specials = torch.tensor([0.0, -0.0, float("inf"), float("nan"), -2.0, 1.0, 4.0, torch.finfo(dtype).max,
                             torch.finfo(dtype).tiny, torch.finfo(dtype).tiny / 2**10], dtype=dtype)
    x = torch.cat([x, specials])
    got = E.sqrt(x)
    with np.errstate(invalid="ignore"):  # sqrt(-2) is nan, as it should be
        want = torch.from_numpy(np.sqrt(x.numpy()))
    assert torch.equal(_bits(got)[~torch.isnan(want)], _bits(want)[~torch.isnan(want)])
    assert torch.isnan(got[torch.isnan(want)]).all()
    if dtype == torch.float64:
        assert all(math.sqrt(v) == g for v, g in zip(x[:50].tolist(), got[:50].tolist(), strict=True))
    with cross_decode.other_vendor_sqrt_in():
        assert torch.equal(_bits(E.sqrt(x))[~torch.isnan(want)], _bits(want)[~torch.isnan(want)])


def test_torch_sqrt_under_exact_numerics_is_the_correctly_rounded_one_and_exact_1_keeps_torchs():
    """exact-2 and later route every sqrt (sqrt, rsqrt, norms) through E.sqrt; exact-1 kept torch's, as its
    stores need."""
    from shardzip.numerics.versions import version

    x = torch.rand(100_000, generator=torch.Generator().manual_seed(3)) * 1000
    want = torch.from_numpy(np.sqrt(x.numpy()))
    for v in (2, 3):
        with exact_numerics(v):
            assert version() == v
            assert torch.equal(torch.sqrt(x), want) and torch.equal(x.rsqrt(), 1.0 / want)
    with exact_numerics():
        assert version() == 3
    with exact_numerics(1):
        assert version() == 1
        assert torch.equal(torch.sqrt(x), torch.sqrt(x.clone()))  # torch's kernel, whatever it rounds to
    with pytest.raises(NumericsError, match="unknown"):
        with exact_numerics(9):
            pass


def test_exact_1_containers_still_decode_and_are_not_portable(tmp_path):
    """Containers and stores written under exact-1 (before exact-2) decode under exact-1 again, on the device
    kind that wrote them; `info` says they are not portable."""
    from shardzip.format.weights import numerics_profile, portable

    model = load_catalog_model("msp-radar")
    blob = compress(model, MNIST[8:10] * 200, batch=8, numerics="exact-1")
    assert read_header(blob)["numerics"] == "exact-1"
    with decode_notes() as notes:
        assert torch.equal(decompress(model, blob)[0], MNIST[8:10] * 200)
    assert notes == [{"numerics": "exact-1", "threads": None, "attempts": 1}]
    assert not portable(numerics_profile("cpu", "exact-1")) and portable(numerics_profile("cpu", EXACT))


def test_the_cross_check_catches_what_exact_1_numerics_do_on_another_cpu_vendor(tmp_path):
    """exact-1 under a sqrt kernel that rounds like another CPU's MKL: its bytes do not decode there. This is the
    data loss exact-2 removes (the same check under exact-2 is part of the test above)."""
    out = cross_decode.cross_decode(["msp-radar"], ["cpu/best", "cpu/othersqrt"], "1", numerics="exact-1",
                                    work=tmp_path, log=lambda *_: None)
    assert not out["ok"] and not out["same_bytes"]


def test_compiled_float32_sigmoid_equals_the_torch_steps_bit_for_bit():
    """shardzip.numerics.compiled.sigmoid32 against elementary.sigmoid's torch operations: every scale a network
    produces, random bit patterns (subnormals, huge values) and the edges of exp's clamp, as bits."""
    from conftest import kernel_mode

    from shardzip.numerics import compiled
    from shardzip.numerics import elementary as E

    if not compiled.available():
        pytest.skip("numba is not importable here: elementary's torch steps run")
    rng = np.random.default_rng(7)
    special = np.array([0.0, -0.0, 1e-45, -1e-45, 1.2e-38, -87.0, -87.00001, -86.99999, 87.0, 88.0, 88.1, -88.1,
                        1e30, -1e30, np.inf, -np.inf, 0.5, -0.5, 16.0, -16.0], np.float32)
    patterns = rng.integers(0, 2**32, 400_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([special, patterns[np.isfinite(patterns)]]
                       + [(rng.standard_normal(200_000) * s).astype(np.float32) for s in (0.05, 1.0, 8.0, 60.0)])
    with kernel_mode("scripted"):
        want = E.sigmoid(torch.from_numpy(x)).numpy()
    with kernel_mode("native"):
        got = E.sigmoid(torch.from_numpy(x)).numpy()
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    nan = compiled.sigmoid32(np.array([np.nan], np.float32))
    assert np.isnan(nan).all()


def test_compiled_float64_exp_equals_the_torch_steps_bit_for_bit():
    """shardzip.numerics.compiled.exp64 (the coders' mixture scales) against elementary.exp's float64 torch steps:
    random bit patterns, every scale of log-scales and the edges of the clamp, as bits."""
    from conftest import kernel_mode

    from shardzip.numerics import compiled
    from shardzip.numerics import elementary as E

    if not compiled.available():
        pytest.skip("numba is not importable here: elementary's torch steps run")
    rng = np.random.default_rng(8)
    special = np.array([0.0, -0.0, 5e-324, -5e-324, 2.2e-308, -700.0, np.nextafter(-700.0, -1e3), -699.9999999,
                        709.0, np.nextafter(709.0, 1e3), -745.2, 1e300, -1e300, np.inf, -np.inf, 0.5, -0.5])
    patterns = rng.integers(0, 2**63, 300_000, dtype=np.int64).view(np.float64) * rng.choice([-1.0, 1.0], 300_000)
    x = np.concatenate([special, patterns[np.isfinite(patterns)]]
                       + [rng.standard_normal(200_000) * s for s in (0.01, 1.0, 10.0, 300.0)])
    with kernel_mode("scripted"):
        want = E.exp(torch.from_numpy(x)).numpy()
    with kernel_mode("native"):
        got = E.exp(torch.from_numpy(x)).numpy()
    assert np.array_equal(got.view(np.int64), want.view(np.int64))
    assert np.isnan(compiled.exp64(np.array([np.nan]))).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 2), st.integers(1, 40), st.integers(1, 10), st.integers(1, 12), st.integers(1, 40),
       st.sampled_from([2, 3, 5]), st.integers(0, 2), st.booleans(), st.floats(-6, 6), st.integers(1, 3),
       st.sampled_from([2, 3]), st.integers(0, 2**31 - 1))
def test_compiled_convolution_equals_the_torch_one_bit_for_bit(n, cin, cout, h, w, k, padding, bias, log_scale,
                                                                threads, version, seed):
    """shardzip.numerics.convolution (the direct loops exact_convolution uses on CPUs: float64 for exact-2, int16
    pairs for exact-3) against aten's exact sums: every output-channel remainder of its blocks of eight, odd
    channel counts and runs of 16 channels, 3 x 3 and other kernels, paddings, thread counts, as bits."""
    from conftest import kernel_mode

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h + k, w + k, generator=gen) * 10.0**log_scale
    x[:, :, 0] = 0.0  # exact zeros, as masked inputs have
    wt = torch.randn(cout, cin, k, k, generator=gen)
    b = torch.randn(cout, generator=gen) if bias else None
    args = ([1, 1], [padding] * 2, [1, 1], False, [0, 0], 1)
    with kernel_mode("scripted"), numerics_version(version):
        want = exact_convolution(x, wt, b, *args)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with kernel_mode("native"), numerics_version(version):
            got = exact_convolution(x, wt, b, *args)
    finally:
        torch.set_num_threads(before)
    assert got.dtype == want.dtype == torch.float32
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("scale", [1e-3, 1.0, 300.0])
def test_compiled_pixel_norm_and_silu_equal_the_torch_steps_bit_for_bit(scale):
    """PixelNorm and SiLU under exact numerics, compiled (shardzip.numerics.compiled) against the torch steps of
    the dispatch mode, as bits: random activations with constant pixels (variance 0) and zero channels."""
    from conftest import kernel_mode

    from shardzip.models.layers import Chain, PixelNorm

    gen = torch.Generator().manual_seed(3)
    norm = PixelNorm(24)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(norm.weight.shape, generator=gen))
        norm.bias.copy_(torch.randn(norm.bias.shape, generator=gen))
    x = torch.randn(2, 24, 40, 37, generator=gen) * scale
    x[0, :, :3] = 1.5  # a constant pixel: variance 0, the norm is eps alone
    x[1, 5] = 0.0
    chain = Chain(norm, torch.nn.SiLU(), torch.nn.Identity())  # the fused pass: PixelNorm and SiLU as one call
    outs = {}
    for mode in ("scripted", "native"):
        with kernel_mode(mode), exact_numerics():
            y = norm(x)
            outs[mode] = (y, torch.nn.functional.silu(y), norm(x, silu=True), chain(x))
    bits = {mode: [t.view(torch.int32) for t in ts] for mode, ts in outs.items()}
    norm_bits, silu_bits = bits["scripted"][:2]
    assert torch.equal(bits["native"][0], norm_bits)
    for got in (*bits["native"][1:], *bits["scripted"][2:]):
        assert torch.equal(got, silu_bits)
    assert not torch.equal(norm_bits, silu_bits)  # the two references differ: each was checked
    with exact_numerics():  # outside the compiled switch's reach nothing changes: training runs plain torch
        assert norm(x).dtype == torch.float32


@pytest.mark.parametrize("k,width", [(3, 2100), (3, 700), (3, 7), (2, 520), (5, 9)])
def test_compiled_convolution_segments_wide_and_narrow_images_alike(k, width):
    """conv2d cuts each image into runs of whole rows (one row when it is wider than a segment, many when narrow;
    conv2d_pairs' segments are longer): every cut gives aten's exact integer sums, on one thread and on three."""
    from shardzip.numerics import compiled, convolution

    if not compiled.available():
        pytest.skip("numba is not importable here")
    gen = torch.Generator().manual_seed(width)
    x = torch.randint(-2**20, 2**20, (2, 3, 5, width), generator=gen).float()
    w = torch.randint(-2**20, 2**20, (6, 3, k, k), generator=gen).double()
    want = torch.nn.functional.conv2d(x.double(), w, padding=k // 2)
    x16 = torch.randint(-2**14, 2**14, (2, 3, 5, width), generator=gen).float()
    w16 = torch.randint(-2**12, 2**12, (6, 3, k, k), generator=gen).double()
    want16 = torch.nn.functional.conv2d(x16.double(), w16, padding=k // 2)
    for threads in (1, 3):
        got = convolution.conv2d(x.numpy(), w.numpy(), threads, (k // 2, k // 2))
        assert np.array_equal(got, want.numpy()[..., :got.shape[2], :got.shape[3]])
        assert got.shape == (2, 6, 5 + 2 * (k // 2) - k + 1, width + 2 * (k // 2) - k + 1)
        got = convolution.conv2d_pairs(x16.numpy(), w16.numpy(), threads, (k // 2, k // 2))
        assert np.array_equal(got, want16.numpy()[..., :got.shape[2], :got.shape[3]])


@pytest.mark.parametrize("lanes,registers,generic", [(8, 32, False), (4, 16, False), (2, 8, False), (4, 16, True)])
def test_convolution_micro_kernels_of_every_vector_width_give_the_exact_sums(lanes, registers, generic):
    """The micro-kernels that other CPUs compile (AVX2: 4 doubles, 16 registers; NEON: 2; the architecture's
    baseline) give aten's exact float64 sums: every group size of 1 to 8 output channels, 2 x 2, 3 x 3 and 5 x 5
    kernels, runs shorter than a vector and masked tails."""
    from shardzip.numerics import compiled, convolution, direct

    if not compiled.available():
        pytest.skip("numba is not importable here")
    engine, blocks = direct.build(lanes, registers, generic)  # noqa: F841 - the engine owns the code
    gen = torch.Generator().manual_seed(lanes * 100 + registers + generic)
    for cout, k, h, w in [(17, 3, 9, 13), (8, 3, 3, 3), (7, 2, 5, 30), (3, 5, 6, 1), (12, 3, 40, 41)]:
        x = torch.randint(-2**20, 2**20, (2, 5, h, w), generator=gen).float()
        wt = torch.randint(-2**20, 2**20, (cout, 5, k, k), generator=gen).double()
        got = convolution.conv2d(x.numpy(), wt.numpy(), 1, (k // 2, k // 2), blocks=blocks)
        want = torch.nn.functional.conv2d(x.double(), wt, padding=k // 2).numpy()
        assert np.array_equal(got, want[..., :got.shape[2], :got.shape[3]]), (cout, k, h, w)
        # the int16 pair kernels of the same width (vectors of as many bytes): channel 0 at the grids' limits
        # (output channel 0's sums up to 25 * 2**26, near 2**31), the others where no sum of 2 or 6 overflows
        x16 = torch.randint(-2**10, 2**10 + 1, (2, 5, h, w), generator=gen).float()
        w16 = torch.randint(-2**8, 2**8 + 1, (cout, 5, k, k), generator=gen).double()
        x16[0, 0, : min(h, 3)] = 2.0**14
        w16[0, 0] = 2.0**12
        for chunk in (1, 3):
            got = convolution.conv2d_pairs(x16.numpy(), w16.numpy(), 1, (k // 2, k // 2), blocks=blocks, chunk=chunk)
            want = torch.nn.functional.conv2d(x16.double(), w16, padding=k // 2).numpy()
            assert np.array_equal(got, want[..., :got.shape[2], :got.shape[3]]), (cout, k, h, w, chunk)


@pytest.mark.parametrize("version", [2, 3])
def test_exact_convolutions_without_the_micro_kernels_take_aten_s_path(monkeypatch, version):
    """Where llvmlite cannot build the micro-kernels, exact convolutions run aten's float64 sums: the same bits."""
    from conftest import kernel_mode

    from shardzip.numerics import direct

    gen = torch.Generator().manual_seed(11)
    x, wt, b = torch.randn(2, 36, 20, 24, generator=gen), torch.randn(9, 36, 3, 3, generator=gen), torch.randn(9)
    args = ([1, 1], [1, 1], [1, 1], False, [0, 0], 1)
    with kernel_mode("native"), numerics_version(version):
        fast = exact_convolution(x, wt, b, *args)
        monkeypatch.setattr(direct, "kernels", lambda: None)
        slow = exact_convolution(x, wt, b, *args)
    assert torch.equal(fast.view(torch.int32), slow.view(torch.int32))


EXACT2 = TEST_DATA / "exact2"


@pytest.mark.parametrize("name,array", [("coffee-idf-photos", "coffee"), ("radar-msp-radar", "DBZH")])
def test_exact_2_stores_written_before_the_compiled_numerics_still_decode(name, array, tmp_path):
    """Committed stores written at commit 7d9fd95 (exact-2, before issue 16's compiled convolutions, PixelNorm
    and SiLU): plain zarr reads them bit-exactly with today's code, with the compiled loops and without, and
    verify decodes their model chunks under exact-2."""
    import shutil

    import skimage.data as skdata
    import zarr
    from conftest import kernel_mode

    from shardzip.pipeline import jobs

    store = tmp_path / f"{name}.szip"
    shutil.copytree(EXACT2 / f"{name}.szip", store)
    if array == "coffee":
        want = np.ascontiguousarray(skdata.coffee()[100:164, 200:296].transpose(2, 0, 1))
    else:
        want = np.load(EXACT2 / "radar-DBZH-crop.npy")
        assert (want == -9999).any() and (want != -9999).any()
    manifest = jobs.info(str(store))
    assert manifest["arrays"][array]["chunks_by_method"]["model" if array == "coffee" else "masked-model"] == 1
    for mode in ("native", "scripted"):
        with kernel_mode(mode):
            got = zarr.open(str(store), mode="r")[array][...]
        assert got.tobytes() == want.tobytes(), mode
    out = jobs.verify(str(store), workers=1, progress=False)
    assert out["bad"] == [] and out["decoded"] == {"exact-2": 1}
