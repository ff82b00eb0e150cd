"""Model families from other packages (`shardzip.models.plugins`) and the rules check (`shardzip.models.check`),
with the example plugin `examples/shardzip-toy`, which `make install` installs as a researcher's package would be.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import zarr
from conftest import ROOT, TEST_DATA

from shardzip.errors import CatalogError
from shardzip.models import build_model, load_weights, save_weights
from shardzip.models.check import check_model
from shardzip.models.plugins import import_family, plugin_names

MNIST = np.load(TEST_DATA / "mnist_test_64.npy")
sys.path.insert(0, str(ROOT / "examples" / "shardzip-toy"))


from shardzip_toy import ToyPixel, ToyPixelNLL  # noqa: E402 - the example plugin, installed by make install


class BatchDependent(ToyPixel):
    """The example with a rule broken, as batch statistics or cross-image padding break it."""

    family = "toy-batch-dependent"

    def _row_logits(self, ctx):
        return super()._row_logits(ctx) * (1 + 0.05 * ctx.shape[0])

    def train_bits(self, x):
        return super().train_bits(x) * (1 + 0.05 * x.shape[0])


def _trained(steps: int = 15):
    import train_toy

    return train_toy.train(train_toy.mnist_train_head(400), steps=steps)[0]


def test_the_example_plugin_is_a_family_found_by_its_entry_point():
    assert "toy-pixel" in plugin_names()
    model = build_model("toy-pixel", {})
    assert type(model).__module__ == "shardzip_toy" and model.family == "toy-pixel"
    assert import_family("shardzip_toy:ToyPixel") is type(model)
    with pytest.raises(CatalogError, match="not a shardzip.models.LosslessModel subclass"):
        import_family("torch.nn:Linear")
    with pytest.raises(CatalogError, match="cannot be imported"):
        import_family("no_such_package.models:Model")
    with pytest.raises(CatalogError, match="unknown model family 'nope'.*toy-pixel"):
        build_model("nope", {})


def test_a_trained_plugin_model_keeps_the_rules_and_its_file_loads_by_family(tmp_path):
    model = _trained()
    check = check_model(model, torch.from_numpy(MNIST[:16]).long())
    assert check.ok and check.codes, check.problems
    assert 0 < check.nll_bpd and abs(check.coded_bpd / check.nll_bpd - 1) < 0.1  # coded from integer CDFs
    save_weights(model, tmp_path / "toy.pt")
    back = load_weights(tmp_path / "toy.pt")
    x = torch.from_numpy(MNIST[:4]).long()
    assert torch.equal(back.nll_bits(x), model.nll_bits(x))


def test_a_plugin_whose_probabilities_depend_on_the_batch_is_caught():
    model = BatchDependent()
    model.load_state_dict(_trained(steps=5).state_dict())
    check = check_model(model, torch.from_numpy(MNIST[:8]).long())
    assert not check.ok and "depends on the batch" in check.problems[0]


def test_eval_and_compress_code_with_the_plugin_by_name_and_zarr_reads_it_back(scheduler_address, tmp_path):
    from shardzip_toy import ToyPixel

    from shardzip.errors import ModelRulesError
    from shardzip.pipeline import jobs
    from shardzip.pipeline.evaluate import evaluate

    src = tmp_path / "mnist.zarr"
    zarr.open_group(str(src), mode="w").create_array("images", data=MNIST, chunks=(16, 1, 28, 28))
    nll_only, bad = tmp_path / "nll.pt", tmp_path / "bad.pt"
    trained = _trained(steps=5).state_dict()
    for cls, path in ((ToyPixelNLL, nll_only), (BatchDependent, bad)):
        model = cls()
        model.load_state_dict(trained)
        save_weights(model, path)
    report = evaluate([str(src)], ["toy-pixel", str(nll_only), str(bad)], baselines=("zstd",),
                      scheduler=scheduler_address, progress=False, command=["test"])
    row = next(r for r in report["rows"] if r["codec"] == "toy-pixel")
    assert row["applicable"] and row["verified"] and row["dims"] == MNIST.size
    assert row["parameters"] == 17 * 256 and row["weight_bytes"] == ToyPixel.pretrained().stat().st_size
    # an NLL-only model: its NLL, no coded rate; a model that breaks the rules: no row of its code, and why
    nll_row = next(r for r in report["rows"] if r["codec"] == str(nll_only))
    assert nll_row["applicable"] and nll_row["bpd"] is None and 0 < nll_row["nll_bpd"] < 8
    assert nll_row["reason"].startswith("NLL only")
    bad_row = next(r for r in report["rows"] if r["codec"] == str(bad))
    assert not bad_row["applicable"] and "depends on the batch" in bad_row["reason"]
    with pytest.raises(ModelRulesError, match="depends on the batch"):
        jobs.compress(str(src), str(tmp_path / "bad.szip"), str(bad), scheduler=scheduler_address, progress=False,
                      log=lambda *_: None)
    assert not (tmp_path / "bad.szip").exists()  # refused before anything was written
    dst = tmp_path / "m.szip"
    m = jobs.compress(str(src), str(dst), "toy-pixel", scheduler=scheduler_address, progress=False,
                      log=lambda *_: None)
    assert row["chunks_by_method"] == m["arrays"]["images"]["chunks_by_method"]  # eval counts what compress writes
    on_disk = sum(p.stat().st_size for p in (dst / "images" / "c").rglob("*") if p.is_file())
    assert row["bpd"] == pytest.approx(8 * on_disk / MNIST.size, rel=1e-12)  # eval's rate is the bytes written
    assert row["bpd"] < 0.9 * next(r for r in report["rows"] if r["codec"] == "zstd")["bpd"]
    assert np.array_equal(zarr.open_group(str(dst), mode="r")["images"][...], MNIST)


def test_an_nll_only_model_scores_chunks_and_codes_none():
    from shardzip.format.chunk import decode_chunk, encode_chunk

    model = ToyPixelNLL()
    model.load_state_dict(_trained(steps=5).state_dict())
    assert not model.has_coder() and not model.spec.codes and build_model("toy-pixel", {}).spec.codes
    check = check_model(model, torch.from_numpy(MNIST[:4]).long())
    assert check.ok and not check.codes and check.coded_bpd is None and check.nll_bpd > 0
    data, stats = encode_chunk(MNIST[:4], model, "NCHW")
    assert stats.method in ("zstd", "raw") and stats.model_bytes is None  # stored by the fallback
    expected = model.nll_bits(torch.from_numpy(MNIST[:4]).long())
    assert stats.image_nll_bits == pytest.approx(expected.tolist()) and stats.nll_bits == pytest.approx(
        float(expected.sum()))
    assert np.array_equal(decode_chunk(data, MNIST[:4].shape, MNIST.dtype, "NCHW"), MNIST[:4])
