"""`shardzip train`: reproducible from its seed, resumable, and honest about its checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from shardzip.catalog import load_catalog
from shardzip.cli import main
from shardzip.digest import sha256_file
from shardzip.errors import CatalogError, CheckpointError
from shardzip.importers.datasets import write_stack
from shardzip.models import load_catalog_model, load_weights
from shardzip.train import train

DATA = Path(__file__).parent / "data"


@pytest.fixture
def catalog(tmp_path):
    x = np.load(DATA / "mnist_test_64.npy")
    write_stack(tmp_path / "tiny.zarr", {"train": x[:48], "test": x[48:]}, {"source": "MNIST test, first 64"})
    raw = {
        "datasets": {"tiny": {"description": "64 MNIST test digits", "store": "tiny.zarr", "kind": "stack",
                              "splits": {"train": "train", "test": "test"}, "importer": "tests", "source": "MNIST",
                              "licence": "CC BY-SA 3.0"}},
        "models": {"tiny-idf": {"family": "idf", "description": "tiny",
                                "hparams": {"hidden": 8, "blocks": 1, "couplings": 1, "prior_hidden": 8},
                                "checkpoint": "weights/tiny.pt",
                                "training": {"dataset": "tiny/train", "validation": "tiny/test", "steps": 4,
                                             "batch": 8, "lr": 0.001, "seed": 3, "command": "shardzip train tiny-idf"},
                                "test": "tiny/test"}},
    }
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_catalog(path)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(catalog, tmp_path):
    whole = train("tiny-idf", catalog, tmp_path / "run-a", progress=False, write_checkpoint=False)
    # run b also writes its validation curve (every step): the curve spans the interruption and changes nothing
    assert train("tiny-idf", catalog, tmp_path / "run-b", progress=False, write_checkpoint=False,
                 checkpoint_every=1, stop_after=2, validate_every=1) is None
    resumed = train("tiny-idf", catalog, tmp_path / "run-b", progress=False, write_checkpoint=False, resume=True,
                    validate_every=1)
    a, b = _weights(tmp_path / "run-a" / "weights.pt"), _weights(tmp_path / "run-b" / "weights.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole.validation_bpd == resumed.validation_bpd
    rows = [line.split("\t") for line in (tmp_path / "run-b" / "validation.tsv").read_text().splitlines()]
    assert rows[0] == ["step", "bpd", "seconds"] and [int(r[0]) for r in rows[1:]] == [1, 2, 3, 4]
    assert float(rows[-1][1]) == pytest.approx(resumed.validation_bpd, abs=1e-4)
    assert whole.sha256 == sha256_file(tmp_path / "run-a" / "weights.pt")


def test_shipped_checkpoint_is_recorded_and_checked(catalog, tmp_path):
    entry = train("tiny-idf", catalog, tmp_path / "run", progress=False)
    path = catalog.path(entry.checkpoint)
    assert entry.sha256 == sha256_file(path)
    assert 0 < entry.validation_bpd < 16
    model = load_weights(path, entry.sha256)
    assert model.hparams["hidden"] == 8
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(CheckpointError, match="sha256"):
        load_weights(path, entry.sha256)
    with pytest.raises(CheckpointError, match="no recorded sha256"):
        load_catalog_model("tiny-idf", catalog)  # the catalog file itself was not updated


def test_cli_train_prints_the_catalog_entry(catalog, tmp_path, capsys):
    code = main(["train", "tiny-idf", "--catalog", str(tmp_path / "catalog.yaml"), "--quiet",
                 "--run-dir", str(tmp_path / "run"), "--no-ship"])
    assert code == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out.split("catalog entry:\n", 1)[1])
    assert printed["models"]["tiny-idf"]["sha256"] == sha256_file(tmp_path / "run" / "weights.pt")


def test_unknown_model_and_bad_catalog_are_clear(catalog, tmp_path, capsys):
    with pytest.raises(CatalogError, match="tiny-idf"):
        catalog.model("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: {}\nmodels: {m: {family: idf}}\n")
    assert main(["train", "m", "--catalog", str(bad)]) == 1
    assert "invalid" in capsys.readouterr().err


def test_train_records_its_sha256_in_the_catalog_it_was_given_and_other_commands_take_it(catalog, tmp_path,
                                                                                         capsys, monkeypatch):
    """`train --catalog C` writes the weights' sha256 into C (comments kept), and eval / compress with
    `--catalog C` use the new model at once: no hash pasted by hand, no SHARDZIP_CATALOG. The workers get the
    unshipped checkpoint from the client (an empty weights cache: they cannot have it from elsewhere)."""
    monkeypatch.setenv("SHARDZIP_CACHE", str(tmp_path / "empty-cache"))
    cat = tmp_path / "catalog.yaml"
    cat.write_text("# my models\n" + cat.read_text().replace("models:", "models:  # trained here"))
    with pytest.raises(CheckpointError, match="no recorded sha256"):
        load_catalog_model("tiny-idf", load_catalog(cat))
    assert main(["train", "tiny-idf", "--catalog", str(cat), "--quiet", "--run-dir", str(tmp_path / "run")]) == 0
    assert f"recorded sha256 {sha256_file(tmp_path / 'weights' / 'tiny.pt')[:12]}" in capsys.readouterr().out
    text = cat.read_text()
    assert text.startswith("# my models\n") and "models:  # trained here" in text
    entry = load_catalog(cat).model("tiny-idf")
    assert entry.sha256 == sha256_file(tmp_path / "weights" / "tiny.pt") and 0 < entry.validation_bpd < 16
    assert load_catalog_model("tiny-idf", load_catalog(cat)).hparams["hidden"] == 8
    assert main(["eval", "tiny/test", "--model", "tiny-idf", "--catalog", str(cat), "--workers", "1", "--quiet",
                 "--baselines", "zstd", "--out", str(tmp_path / "report")]) == 0
    assert "tiny-idf" in (tmp_path / "report" / "report.md").read_text()
    dst = tmp_path / "tiny.szip"
    assert main(["compress", str(tmp_path / "tiny.zarr"), str(dst), "--model", "tiny-idf", "--catalog", str(cat),
                 "--workers", "1", "--quiet"]) == 0
    assert "model tiny-idf" in capsys.readouterr().out
    # recording again replaces the lines it wrote
    assert main(["train", "tiny-idf", "--catalog", str(cat), "--quiet", "--run-dir", str(tmp_path / "run2"),
                 "--steps", "2"]) == 0
    assert cat.read_text().count("sha256:") == 1
    assert load_catalog(cat).model("tiny-idf").sha256 == sha256_file(tmp_path / "weights" / "tiny.pt")


def test_a_model_file_given_by_path_needs_no_catalog_entry(catalog, tmp_path, capsys, monkeypatch):
    """`train --no-ship` writes RUN_DIR/weights.pt (family, hyper-parameters, weights): compress and eval take it
    by path, the store carries it and reads back; a file that is no checkpoint is refused by name."""
    monkeypatch.setenv("SHARDZIP_CACHE", str(tmp_path / "empty-cache"))
    assert main(["train", "tiny-idf", "--catalog", str(tmp_path / "catalog.yaml"), "--quiet", "--run-dir",
                 str(tmp_path / "run"), "--no-ship"]) == 0
    weights = tmp_path / "run" / "weights.pt"
    dst = tmp_path / "by-path.szip"
    assert main(["compress", str(tmp_path / "tiny.zarr"), str(dst), "--model", str(weights), "--workers", "1",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", str(dst), "--json"]) == 0
    info = yaml.safe_load(capsys.readouterr().out)
    assert info["model"] == {"name": str(weights), "sha256": sha256_file(weights), "family": "idf", "shipped": False}
    x = np.load(DATA / "mnist_test_64.npy")
    from shardzip.format.store import open_store

    assert np.array_equal(open_store(str(dst))["test"][...], x[48:])
    assert main(["eval", str(tmp_path / "tiny.zarr"), "--model", str(weights), "--workers", "1", "--quiet",
                 "--baselines", "zstd", "--out", str(tmp_path / "report")]) == 0
    assert str(weights) in (tmp_path / "report" / "report.md").read_text()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["compress", str(tmp_path / "tiny.zarr"), str(tmp_path / "x.szip"), "--model", str(junk),
                 "--workers", "1", "--quiet"]) == 1
    assert f"model file {junk} is not a shardzip checkpoint" in capsys.readouterr().err
    assert main(["compress", str(tmp_path / "tiny.zarr"), str(tmp_path / "x.szip"), "--model", "gone/w.pt",
                 "--workers", "1", "--quiet"]) == 1
    assert "no model file gone/w.pt either" in capsys.readouterr().err


def _with_init(catalog, tmp_path, **training) -> object:
    path = tmp_path / "catalog.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["models"]["tiny-idf"]["training"].update(training)
    path.write_text(yaml.safe_dump(raw))
    return load_catalog(path)


def test_a_run_can_start_from_another_checkpoint_and_refuses_one_that_does_not_fit(catalog, tmp_path):
    first = train("tiny-idf", catalog, tmp_path / "run-a", progress=False)  # writes weights/tiny.pt
    start = _weights(tmp_path / "weights" / "tiny.pt")
    tuned = _with_init(catalog, tmp_path, init="weights/tiny.pt", init_sha256=first.sha256, steps=1, lr=1e-9)
    train("tiny-idf", tuned, tmp_path / "run-b", progress=False, write_checkpoint=False)
    after = _weights(tmp_path / "run-b" / "weights.pt")
    # one step at lr 1e-9 leaves the weights where the init put them (a fresh start would be far away)
    assert all(torch.allclose(after[k], start[k], atol=1e-6) for k in start)
    bad = _with_init(catalog, tmp_path, init="weights/tiny.pt", init_sha256="0" * 64)
    with pytest.raises(CheckpointError):
        train("tiny-idf", bad, tmp_path / "run-c", progress=False, write_checkpoint=False)
    missing = _with_init(catalog, tmp_path, init="weights/none.pt", init_sha256=None)
    with pytest.raises(CatalogError, match="none.pt does not exist"):
        train("tiny-idf", missing, tmp_path / "run-d", progress=False, write_checkpoint=False)


def test_image_splits_join_with_plus_and_stacks_do_not(catalog, tmp_path):
    from shardzip.importers.datasets import write_images
    from shardzip.train import load_split

    rng = np.random.default_rng(0)
    imgs = {f"a{i}": rng.integers(0, 256, (3, 8, 8 + i), dtype=np.uint8) for i in range(2)}
    write_images(tmp_path / "imgs.zarr", "one", imgs, {})
    write_images(tmp_path / "imgs.zarr", "two", {"b": imgs["a0"]}, {})
    raw = yaml.safe_load((tmp_path / "catalog.yaml").read_text())
    raw["datasets"]["imgs"] = {"description": "x", "store": "imgs.zarr", "kind": "images",
                               "splits": {"one": "one", "two": "two"}, "importer": "tests", "source": "x",
                               "licence": "x"}
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(raw))
    cat = load_catalog(tmp_path / "catalog.yaml")
    joined = load_split(cat, "imgs/one+two")
    assert [tuple(x.shape) for x in joined] == [(3, 8, 8), (3, 8, 9), (3, 8, 8)]
    with pytest.raises(CatalogError, match="only image splits"):
        load_split(cat, "tiny/train+test")


def test_stack_splits_take_a_window_of_items(catalog, tmp_path):
    from shardzip.train import load_split

    raw = yaml.safe_load((tmp_path / "catalog.yaml").read_text())
    raw["datasets"]["tiny"]["splits"].update({"head": "train@t=0:40", "held": "train@t=40:48"})
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(raw))
    cat = load_catalog(tmp_path / "catalog.yaml")
    whole, head, held = (load_split(cat, f"tiny/{s}") for s in ("train", "head", "held"))
    assert tuple(head.shape) == (40, 1, 28, 28) and tuple(held.shape) == (8, 1, 28, 28)
    assert torch.equal(torch.cat([head, held]), whole)
