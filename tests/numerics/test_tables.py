"""Lookup tables: every sampled entry is the correctly rounded exact value, and damage is detected."""

from __future__ import annotations

import importlib.util
import math
import random
from decimal import Decimal, localcontext

import numpy as np
import pytest
import torch
from conftest import ROOT

from shardzip.coding import tables
from shardzip.errors import NumericsError, ShardzipError

GEN_TABLES = ROOT / "tools" / "gen_tables.py"
NAMES = ("sigmoid", "normal_cdf", "exp_neg")
SAMPLES = 50


@pytest.fixture(scope="module")
def gen():
    """tools/gen_tables.py as a module (its exact-decimal formulas are the specification)."""
    spec = importlib.util.spec_from_file_location("shardzip_gen_tables", GEN_TABLES)
    module = importlib.util.module_from_spec(spec)
    with localcontext():  # the generator sets the decimal precision at import; keep it local
        spec.loader.exec_module(module)
    return module


def _sample_indices(length: int, seed: int, dense_below: int | None = None) -> list[int]:
    rng = random.Random(seed)
    picks = {0, 1, length - 2, length - 1}
    top = dense_below if dense_below is not None else length
    while len(picks) < SAMPLES:
        picks.add(rng.randrange(0, top) if rng.random() < 0.8 else rng.randrange(0, length))
    return sorted(picks)


def _exact_sigmoid(gen, j: int) -> int:
    z = Decimal(j) / Decimal(1 << tables.Z_FRAC)
    return gen.rounded(1 / (1 + (-z).exp()))


def _exact_normal_cdf(gen, j: int) -> int:
    x = Decimal(j) / Decimal(1 << tables.Z_FRAC)
    return gen.rounded(gen.HALF + gen.HALF * gen.erf(x / Decimal(2).sqrt()))


def _exact_exp_neg(gen, d: int) -> int:
    return gen.rounded((-(Decimal(d) / Decimal(1 << tables.EXP_FRAC))).exp())


def test_table_shapes_endpoints_and_monotonicity():
    sig, nrm, exp = (tables.table(name).numpy() for name in NAMES)
    assert sig.dtype == np.int64 and len(sig) == len(nrm) == tables.Z_LEN
    assert len(exp) == tables.EXP_LEN
    assert sig[0] == nrm[0] == tables.ONE // 2
    assert sig[-1] == nrm[-1] == tables.ONE
    assert exp[0] == tables.ONE
    assert np.all(np.diff(sig) >= 0) and np.all(np.diff(nrm) >= 0)
    assert np.all(np.diff(exp) <= 0) and exp[-1] >= 0
    assert np.all((sig >= 0) & (sig <= tables.ONE)) and np.all((nrm >= 0) & (nrm <= tables.ONE))


@pytest.mark.parametrize("name", NAMES)
def test_tables_match_their_recorded_sha256(name):
    assert tables.table_digest(tables.table(name).numpy()) == tables.TABLE_SHA256[name]


@pytest.mark.parametrize("name", NAMES)
def test_sampled_entries_equal_the_exact_decimal_formulas(gen, name):
    values = tables.table(name).tolist()
    with localcontext() as ctx:
        ctx.prec = 50
        if name == "sigmoid":
            idx = _sample_indices(tables.Z_LEN - 1, seed=1)
            want = [_exact_sigmoid(gen, j) for j in idx]
        elif name == "normal_cdf":
            # above z ~ 6.1 every entry is ONE: sample mostly where the values still move
            idx = _sample_indices(tables.Z_LEN - 1, seed=2, dense_below=7 << tables.Z_FRAC)
            want = [_exact_normal_cdf(gen, j) if j < (9 << tables.Z_FRAC) else tables.ONE for j in idx]
        else:
            idx = _sample_indices(tables.EXP_LEN, seed=3)
            want = [_exact_exp_neg(gen, d) for d in idx]
    got = [values[j] for j in idx]
    assert got == want, [(j, g, w) for j, g, w in zip(idx, got, want, strict=True) if g != w]


@pytest.mark.parametrize("name", NAMES)
def test_sampled_entries_agree_with_float_math_within_one_unit(name):
    values = tables.table(name).tolist()
    one = float(tables.ONE)
    if name == "sigmoid":
        idx = _sample_indices(tables.Z_LEN - 1, seed=4)
        want = [1 / (1 + math.exp(-j / 2**tables.Z_FRAC)) * one for j in idx]
    elif name == "normal_cdf":
        idx = _sample_indices(tables.Z_LEN - 1, seed=5, dense_below=7 << tables.Z_FRAC)
        want = [0.5 * (1 + math.erf(j / 2**tables.Z_FRAC / math.sqrt(2))) * one for j in idx]
    else:
        idx = _sample_indices(tables.EXP_LEN, seed=6)
        want = [math.exp(-d / 2**tables.EXP_FRAC) * one for d in idx]
    errors = [abs(values[j] - w) for j, w in zip(idx, want, strict=True)]
    assert max(errors) <= 1.0, max(errors)


def test_the_last_sigmoid_entry_is_saturated_and_the_normal_table_saturates_near_six_sigma():
    nrm = tables.table("normal_cdf").numpy()
    first_one = int(np.argmax(nrm == tables.ONE))
    assert 5.5 < first_one / 2**tables.Z_FRAC < 6.5
    assert np.all(nrm[first_one:] == tables.ONE)
    sig = tables.table("sigmoid").numpy()
    assert sig[-2] < tables.ONE and sig[-1] == tables.ONE  # sigmoid(16) is still below 1 at 30 bits


@pytest.mark.parametrize("name", ["sigmoid", "normal_cdf"])
def test_signed_table_mirrors_the_half_table(name):
    half = tables.table(name)
    signed = tables.signed_table(name)
    centre, length = tables.Z_LEN - 1, 2 * tables.Z_LEN - 1
    assert signed.dim() == 1 and signed.shape[0] == length + 1 == 131074, "one padding entry for interpolation"
    assert torch.equal(signed[centre:length], half)
    assert torch.equal(signed[:centre + 1].flip(0), tables.ONE - half)
    assert bool((signed[length:] == tables.ONE).all()), "entries past z = +Z_MAX (interpolation guard) saturate"


@pytest.fixture
def fresh_table_cache(monkeypatch):
    """Let a test load tables from another file; the real ones are reloaded afterwards."""
    tables._load_numpy.cache_clear()
    monkeypatch.setattr(tables, "_DEVICE_CACHE", {})
    yield
    tables._load_numpy.cache_clear()


def test_a_damaged_table_is_refused(tmp_path, monkeypatch, fresh_table_cache):
    with np.load(tables.TABLES_FILE) as data:
        arrays = {name: data[name].copy() for name in data.files}
    arrays["sigmoid"][12345] += 1  # one unit in one entry
    damaged = tmp_path / "tables.npz"
    np.savez_compressed(damaged, **arrays)
    monkeypatch.setattr(tables, "TABLES_FILE", damaged)
    with pytest.raises(NumericsError, match="sigmoid") as info:
        tables.table("sigmoid")
    assert isinstance(info.value, ShardzipError)
    assert torch.equal(tables.table("exp_neg"), torch.from_numpy(arrays["exp_neg"]))  # undamaged still loads


def test_a_missing_table_file_is_refused(tmp_path, monkeypatch, fresh_table_cache):
    monkeypatch.setattr(tables, "TABLES_FILE", tmp_path / "nothing.npz")
    with pytest.raises(NumericsError):
        tables.table("normal_cdf")
