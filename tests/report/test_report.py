"""The evaluation report: classical baselines on real images (lossless, bpd bookkeeping, "not applicable" with
reasons) and the writers (JSON round trip, Markdown, LaTeX, CSV, self-contained HTML with plots, validation)."""

from __future__ import annotations

import base64
import copy
import csv
import json
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import TEST_DATA

from shardzip.errors import ReportError
from shardzip.report import baselines as bl
from shardzip.report.baselines import BASELINES, BaselineResult, baseline_bytes
from shardzip.report.latex import render_latex
from shardzip.report.markdown import render_markdown
from shardzip.report.render import write_report
from shardzip.report.schema import validate_report
from shardzip.report.tables import COLUMNS

DATA = TEST_DATA
IMAGE_CODECS = ("png", "webp", "jpegxl", "jpegls", "jpeg2000")
STREAM_CODECS = ("zstd", "lzma", "bz2", "blosc2", "blosc2-bitshuffle", "pcodec")


def _mnist(n: int = 16) -> list[np.ndarray]:
    return list(np.load(DATA / "mnist_test_64.npy")[:n])  # uint8 [1, 28, 28] each


def _chelsea() -> list[np.ndarray]:
    skdata = pytest.importorskip("skimage.data")
    cat = skdata.chelsea()[100:164, 150:214]  # 64x64 RGB crop around the cat's face
    return [np.ascontiguousarray(cat.transpose(2, 0, 1))]


def _uint16() -> list[np.ndarray]:
    """A real photo spread over 16 bits, once in native and once in big-endian byte order (as zarr may store it)."""
    skdata = pytest.importorskip("skimage.data")
    cam = skdata.camera()[200:248, 200:248].astype(np.uint16) * 257 + np.arange(48, dtype=np.uint16)
    return [cam[None], cam[None].astype(">u2")]


def _check_bookkeeping(r: BaselineResult, images: list[np.ndarray]) -> None:
    assert r.dims_per_image == [im.size for im in images]
    assert len(r.bytes_per_image) == len(images) and all(b > 0 for b in r.bytes_per_image)
    assert r.bpd == pytest.approx(8 * sum(r.bytes_per_image) / sum(im.size for im in images), rel=1e-12)
    assert r.per_image_bpd == pytest.approx([8 * b / im.size for b, im in zip(r.bytes_per_image, images,
                                                                               strict=True)])
    assert r.encode_seconds > 0 and r.decode_seconds > 0
    assert r.raw_bytes == sum(im.nbytes for im in images)


@pytest.mark.parametrize("images_of", [_mnist, _chelsea, _uint16], ids=["mnist-uint8-grey", "chelsea-uint8-rgb",
                                                                          "camera-uint16"])
def test_every_applicable_baseline_is_lossless_on_real_images(images_of):
    images = images_of()
    for name in BASELINES:
        r = baseline_bytes(name, images)
        assert r.name == name
        if name == "webp" and images[0].dtype.itemsize == 2:
            assert not r.applicable and "uint8" in r.reason and r.bpd is None and r.verified is None
            continue
        assert r.applicable, f"{name}: {r.reason}"
        assert r.reason is None
        assert r.verified is True and r.mismatched_images == [], name
        _check_bookkeeping(r, images)
        # real images have structure: every codec beats storing the raw bits
        assert r.bpd < 8 * images[0].dtype.itemsize, (name, r.bpd)


def test_grey_webp_counts_the_grey_dims_not_the_replicated_rgb():
    images = _mnist(4)
    r = baseline_bytes("webp", images)
    assert r.verified is True
    assert r.dims_per_image == [28 * 28] * 4


def test_float_and_odd_shapes_are_not_applicable_with_reasons_never_raising():
    rng = np.random.default_rng(1)
    floats = [rng.standard_normal((1, 16, 16)).astype(np.float32) for _ in range(2)]
    for name in ("png", "webp", "jpegls", "jpeg2000"):
        r = baseline_bytes(name, floats)
        assert not r.applicable and "float32" in r.reason, (name, r.reason)
        assert r.bpd is None and r.per_image_bpd == [] and r.verified is None
    for name in ("jpegxl", *STREAM_CODECS):  # JPEG XL keeps float32 bit-exactly; stream codecs take any bytes
        r = baseline_bytes(name, floats)
        assert r.applicable and r.verified is True, (name, r.reason)
        _check_bookkeeping(r, floats)

    five = [np.zeros((5, 8, 8), np.uint8)]  # e.g. a 5-band satellite tile
    for name in IMAGE_CODECS:
        r = baseline_bytes(name, five)
        assert not r.applicable and "C=5" in r.reason
    flat = [np.arange(100, dtype=np.int32)]
    assert all(not baseline_bytes(n, flat).applicable for n in IMAGE_CODECS)
    assert all(baseline_bytes(n, flat).verified for n in STREAM_CODECS)

    mixed = _mnist(2) + [np.zeros((1, 8, 8), np.float32)]  # one bad image makes the codec n/a, naming it
    r = baseline_bytes("png", mixed)
    assert not r.applicable and r.reason.startswith("image 2:")
    objects = [np.array([[[None]]], dtype=object)]
    assert all(not baseline_bytes(n, objects).applicable for n in BASELINES)
    assert not baseline_bytes("zstd", []).applicable


def test_a_decode_that_differs_is_reported_not_hidden(monkeypatch):
    real = bl._codec

    def corrupting(name):
        codec = real(name)

        def decode(data, image):
            out = np.array(codec.decode(data, image))
            if out.size and image is images[1]:
                out.flat[0] ^= 1
            return out

        return bl._Codec(codec.check, codec.encode, decode)

    images = _mnist(3)
    monkeypatch.setattr(bl, "_codec", corrupting)
    for name in ("png", "zstd"):
        r = baseline_bytes(name, images)
        assert r.applicable and r.verified is False and r.mismatched_images == [1]


def test_unknown_baseline_name_raises():
    with pytest.raises(ReportError, match="unknown baseline 'gif'"):
        baseline_bytes("gif", _mnist(1))


# ------------------------------------------------------------------------------------------------ render


def _row(dataset: str, array: str, r: BaselineResult) -> dict:
    per = r.per_image_bpd
    std = float(np.std(per, ddof=1)) if len(per) > 1 else None
    ci = [r.bpd - 1.96 * std / math.sqrt(len(per)), r.bpd + 1.96 * std / math.sqrt(len(per))] if std else None
    return {"dataset": dataset, "array": array, "codec": r.name, "kind": "baseline", "applicable": r.applicable,
            "reason": r.reason, "bpd": r.bpd, "nll_bpd": None, "overhead_pct": None,
            "ratio": r.raw_bytes / sum(r.bytes_per_image) if r.applicable else None, "bpd_std": std,
            "bpd_ci95": ci, "per_image_bpd": per, "images": len(r.bytes_per_image), "dims": sum(r.dims_per_image),
            "encode_mbps": r.raw_bytes / r.encode_seconds / 1e6 if r.encode_seconds else None,
            "decode_mbps": r.raw_bytes / r.decode_seconds / 1e6 if r.decode_seconds else None,
            "device": "cpu", "verified": r.verified}


def _report() -> dict:
    rows = [{"dataset": "mnist_test", "array": "/", "codec": "bbans_mnist", "kind": "model", "applicable": True,
             "reason": None, "bpd": 1.41, "nll_bpd": 1.40, "overhead_pct": 0.71, "ratio": 5.67, "bpd_std": 0.2,
             "bpd_ci95": [1.36, 1.46], "per_image_bpd": [1.2, 1.4, 1.6, 1.45], "images": 4, "dims": 3136,
             "encode_mbps": 0.8, "decode_mbps": 0.7, "device": "cuda", "verified": True,
             "chunks_by_method": {"model": 5, "zstd": 1}, "parameters": 193_412, "weight_bytes": 780_100}]
    rows += [_row("mnist_test", "/", baseline_bytes(n, _mnist(8))) for n in ("png", "jpegxl", "zstd")]
    rows += [_row("camera16", "image", baseline_bytes(n, _uint16())) for n in ("webp", "png", "lzma")]
    rows.append({**rows[0], "dataset": "camera16", "array": "image", "codec": "idf_photos", "applicable": False,
                 "reason": "model idf_photos takes uint8 images; array 'image' is uint16 | stored with zstd",
                 "bpd": None, "nll_bpd": None, "overhead_pct": None, "ratio": None, "bpd_std": None,
                 "bpd_ci95": None, "per_image_bpd": [], "images": 0, "dims": 0, "encode_mbps": None,
                 "decode_mbps": None, "device": None, "verified": None, "chunks_by_method": {}})
    rows.append({**rows[-1], "dataset": "mnist_test", "array": "/", "codec": "bfn_nll_only", "applicable": True,
                 "reason": "NLL only: the model has no coder", "nll_bpd": 1.05, "images": 4, "dims": 3136,
                 "parameters": 12_000_000, "weight_bytes": None})
    shards = [{"dataset": "mnist_test", "array": "/", "codec": "bbans_mnist", "grid": [2, 3], "index": [i, j],
               "bpd": 1.3 + 0.05 * i + 0.01 * j} for i in range(2) for j in range(3)]
    shards += [{"dataset": "camera16", "array": "image", "codec": "lzma", "grid": [4], "index": [i], "bpd": 4.0}
               for i in range(4)]  # one axis only: no map
    repro = {"command": "shardzip eval mnist/test --model bbans-mnist --out rep", "code_version": "0.4.0",
             "models": {"bbans_mnist": "ab" * 32}, "datasets": {"mnist_test": "0123456789abcdef"},
             "hardware": "x86_64 2 cores; NVIDIA H100", "libraries": {"numpy": np.__version__, "torch": "2.13.0"},
             "date": "2026-01-02T03:04:05+00:00"}
    return {"schema": "shardzip.report", "version": 1, "rows": rows, "shards": shards, "reproducibility": repro}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    report = _report()
    original = copy.deepcopy(report)
    out = tmp_path_factory.mktemp("report")
    paths = write_report(report, out)
    assert report == original, "write_report must not change the dict it is given"
    return report, out, paths


def test_all_outputs_are_written_and_json_round_trips(written):
    report, out, paths = written
    for kind, name in [("json", "report.json"), ("markdown", "report.md"), ("latex", "report.tex"),
                       ("csv", "report.csv"), ("html", "report.html")]:
        assert paths[kind] == out / name and paths[kind].stat().st_size > 0
    assert json.loads((out / "report.json").read_text()) == report
    pngs = sorted((out / "plots").glob("*.png"))
    assert pngs and all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert {p for k, p in paths.items() if k.startswith("plot:")} == set(pngs)


def test_html_is_self_contained_with_every_plot_kind(written):
    report, out, _ = written
    page = (out / "report.html").read_text()
    for kind in ("bpd", "per_image", "shards", "throughput"):
        imgs = re.findall(rf'<figure class="plot plot-{kind}"><img src="data:image/png;base64,([A-Za-z0-9+/=]+)"',
                          page)
        assert imgs, f"no embedded {kind} plot"
        assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in imgs)
    # one shard map: the [2, 3] grid; the one-axis [4] grid has none
    assert len(re.findall(r'class="plot plot-shards"', page)) == 1
    assert "<img src=\"data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(script|link|iframe)\b", page) and "url(" not in page
    assert page.count("<img ") == page.count('<img src="data:image/png;base64,')
    assert "Reproducibility" in page and report["reproducibility"]["models"]["bbans_mnist"] in page


def _best_per_array(report: dict) -> dict[tuple[str, str], float]:
    best: dict[tuple[str, str], float] = {}
    for r in report["rows"]:
        if r["applicable"] and r["bpd"] is not None:
            key = (r["dataset"], r["array"])
            best[key] = min(best.get(key, math.inf), r["bpd"])
    return best


def test_latex_has_booktabs_tables_bold_best_and_escaped_names(written):
    report, out, _ = written
    tex = (out / "report.tex").read_text()
    # a table per dataset, then the summary across the two datasets
    assert tex.count(r"\begin{table}") == 3 and tex.count(r"\toprule") == 3 and tex.count(r"\bottomrule") == 3
    assert r"\label{tab:shardzip-summary}" in tex and r"\emph{bbans\_mnist} & 1.410 (1/1) & - \\" in tex
    assert r"\midrule" in tex
    best = _best_per_array(report)
    bold = re.findall(r"\\textbf\{([0-9.]+)\}", tex)
    assert sorted(bold) == sorted(f"{v:.3f}" for v in best.values())
    assert best[("mnist_test", "/")] == 1.41  # the model is best on MNIST in this report
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    assert r"mnist\_test" in body and r"bbans\_mnist" in body
    assert not re.search(r"(?<!\\)[_#$%]", body), "unescaped LaTeX special character"
    body = body.split(r"\label{tab:shardzip-summary}")[0]  # the tables per dataset
    rows = [line for line in body.splitlines() if line.endswith(r"\\")]
    assert len(rows) == len(report["rows"]) + 2  # + one header per table
    ncols = len(re.search(r"\\begin\{tabular\}\{(\w+)\}", body).group(1))
    for line in rows:  # every row fills all columns, or spans the numeric ones with "n/a: reason"
        seps = len(re.findall(r"(?<!\\)&", line))
        assert seps == ncols - 1 or (seps == 2 and rf"\multicolumn{{{ncols - 2}}}{{l}}{{n/a: " in line), line
    assert "n/a: model idf\\_photos takes uint8" in body
    repro = [line for line in tex.splitlines() if line.startswith("% ")]
    assert any("command: shardzip eval mnist/test" in line for line in repro)


def test_latex_compiles_with_pdflatex(written, tmp_path):
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed: the LaTeX table was checked textually only")
    report, _, _ = written
    report = copy.deepcopy(report)
    nasty = {**report["rows"][1], "dataset": "s3://bkt/a_b&c%#~^{}\\ é→×", "array": "radar/dbz_h", "codec": "z<1>",
             "applicable": False, "reason": "stored with the fallback: model needs uint8 × 3 — got int16 (é → ß)"}
    report["rows"] += [nasty, {**nasty, "bpd": None, "array": "x_$y"}]
    report["reproducibility"]["command"] = "shardzip eval 'a b' \\ 100% #1\nsecond line"
    (tmp_path / "report.tex").write_text(render_latex(report))
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                                      "\\input{report.tex}\n\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


def test_markdown_tables_show_na_with_reason_and_best_in_bold(written):
    report, out, _ = written
    md = (out / "report.md").read_text()
    assert md == render_markdown(report)
    assert "## mnist_test" in md and "## camera16" in md
    webp = next(r for r in report["rows"] if r["codec"] == "webp")
    assert f"n/a ({webp['reason']})" in md
    assert "n/a (model idf_photos takes uint8 images; array 'image' is uint16 \\| stored with zstd)" in md
    assert "| **1.410** |" in md
    summary, _, per_dataset = md.partition("\n## mnist_test")
    # the table across datasets: a codec's bpd over the arrays it coded, per dataset
    assert "## Summary" in summary and "| bbans_mnist | model | 1.410 (1/1) | - |" in summary
    codecs = {r["codec"] for r in report["rows"]}
    assert len([line for line in summary.splitlines() if line.startswith("| ") and "---" not in line]) == \
        len(codecs) + 1
    table_lines = [line for line in per_dataset.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table_lines) == len(report["rows"]) + 2  # one header per dataset
    assert all(len(re.split(r"(?<!\\)\|", line)) == len(COLUMNS) + 2 for line in table_lines)  # every column
    # the model's share of chunks and its size; an NLL-only model's row: its NLL, and why it has no coded rate
    assert "| 5/6 | 193k / 780 KB |" in md
    assert "| n/a (NLL only: the model has no coder) | 1.050 |" in md and "| 12.00M |" in md
    assert "## Reproducibility" in md and "ab" * 32 in md


def test_csv_has_one_flat_line_per_row(written):
    report, out, _ = written
    with open(out / "report.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == len(report["rows"])
    for line, row in zip(lines, report["rows"], strict=True):
        assert (line["dataset"], line["codec"]) == (row["dataset"], row["codec"])
        assert (float(line["bpd"]) == pytest.approx(row["bpd"])) if row["bpd"] is not None else line["bpd"] == ""
        if row["bpd_ci95"]:
            assert float(line["bpd_ci95_lo"]) == pytest.approx(row["bpd_ci95"][0])
    assert "per_image_bpd" not in lines[0]


def test_higher_dimensional_shard_grids_are_mapped(tmp_path):
    report = _report()
    report["rows"] = report["rows"][:1]
    cells = [(i, j) for i in range(2) for j in range(3) if (i, j) != (1, 2)]  # one shard missing: a blank cell
    report["shards"] = [{"dataset": "mnist_test", "array": "/", "codec": "bbans_mnist", "grid": [2, 1, 3],
                         "index": [i, 0, j], "bpd": 1.0 + i + j} for i, j in cells]
    paths = write_report(report, tmp_path)
    assert [k for k in paths if k.startswith("plot:shards")] == ["plot:shards-mnist_test-bbans_mnist"]


def _malformed():
    def drop(key):
        return lambda r: r.pop(key)

    def set_row(key, value, i=0):
        return lambda r: r["rows"][i].__setitem__(key, value)

    return [
        ("not a shardzip report", lambda r: r.__setitem__("schema", "other")),
        ("version 2 is not supported", lambda r: r.__setitem__("version", 2)),
        ("'rows' must be a list", drop("rows")),
        ("'reproducibility' must be an object", drop("reproducibility")),
        ("'bpd' must be a finite number or null", set_row("bpd", "1.4")),
        ("'bpd' must be a finite number or null", set_row("bpd", float("nan"))),
        ("'kind' must be \"model\" or \"baseline\"", set_row("kind", "learned")),
        ("'bpd_ci95' must be", set_row("bpd_ci95", [1.0, 2.0, 3.0])),
        ("'images' must be a non-negative integer", set_row("images", -1)),
        ("'verified' must be true, false or null", set_row("verified", "yes")),
        ("lacks 'dims'", lambda r: r["rows"][2].pop("dims")),
        ("outside the shard grid", lambda r: r["shards"][0].__setitem__("index", [5, 0])),
        ("'libraries' must be an object of string to string",
         lambda r: r["reproducibility"].__setitem__("libraries", ["numpy"])),
    ]


@pytest.mark.parametrize(("message", "break_it"), _malformed(), ids=[m for m, _ in _malformed()])
def test_malformed_reports_raise_report_error_before_writing(tmp_path, message, break_it):
    report = _report()
    break_it(report)
    with pytest.raises(ReportError, match=re.escape(message)):
        write_report(report, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_report_error_names_the_row():
    report = _report()
    report["rows"][3]["ratio"] = "high"
    with pytest.raises(ReportError, match=r"rows\[3\] \(dataset 'mnist_test', array '/', codec 'zstd'\)"):
        validate_report(report)
    assert issubclass(ReportError, __import__("shardzip.errors", fromlist=["ShardzipError"]).ShardzipError)
    with pytest.raises(ReportError):
        validate_report([])


def test_extra_keys_are_kept_and_numpy_values_are_written(tmp_path):
    report = _report()
    report["rows"][0]["chunks_by_method"] = {"model": 3, "zstd": 1}  # what `shardzip eval` adds to model rows
    report["rows"][0]["images"] = np.int64(4)
    report["rows"][0]["bpd"] = np.float64(1.41)
    write_report(report, tmp_path)
    back = json.loads((tmp_path / "report.json").read_text())
    assert back["rows"][0]["chunks_by_method"] == {"model": 3, "zstd": 1}
    assert back["rows"][0]["images"] == 4 and back["rows"][0]["bpd"] == 1.41
    assert r"\textbf{1.410}" in render_latex(report)


def test_merged_reports_keep_every_run_and_drop_repeated_rows(tmp_path):
    from shardzip.report.merge import merge_reports, read_report

    a = _report()
    b = _report()
    for row in b["rows"]:
        row["codec"] = row["codec"] + "_v2" if row["kind"] == "model" else row["codec"]
    models = {r["codec"] for r in a["rows"] if r["kind"] == "model"}
    for shard in b["shards"]:
        shard["codec"] += "_v2" if shard["codec"] in models else ""
    b["reproducibility"]["command"] = "shardzip eval second-run"
    merged = merge_reports([a, b])
    models_b = [r for r in b["rows"] if r["kind"] == "model"]
    assert merged["rows"] == a["rows"] + models_b  # b's baselines repeat a's (same data): left out
    assert merged["shards"] == a["shards"] + [s for s in b["shards"] if s["codec"].endswith("_v2")]
    assert merged["reproducibility"]["runs"] == [a["reproducibility"], b["reproducibility"]]
    assert "second-run" in merged["reproducibility"]["command"]
    assert f"{len(b['rows']) - len(models_b)} repeated row(s) left out" in merged["reproducibility"]["merged"]
    write_report(merged, tmp_path / "m")
    assert read_report(str(tmp_path / "m")) == json.loads((tmp_path / "m" / "report.json").read_text())
    with pytest.raises(ReportError, match="not a readable report.json"):
        read_report(str(tmp_path / "missing.json"))


def test_an_nll_only_model_has_its_row_in_all_five_formats(written):
    report, out, _ = written
    row = next(r for r in report["rows"] if r["codec"] == "bfn_nll_only")
    assert json.loads((out / "report.json").read_text())["rows"][report["rows"].index(row)] == row
    with open(out / "report.csv", newline="") as f:
        line = next(r for r in csv.DictReader(f) if r["codec"] == "bfn_nll_only")
    assert line["bpd"] == "" and float(line["nll_bpd"]) == 1.05 and line["parameters"] == "12000000"
    assert "| n/a (NLL only: the model has no coder) | 1.050 |" in (out / "report.md").read_text()
    tex = (out / "report.tex").read_text()
    assert r"\emph{bfn\_nll\_only} & n/a & 1.050 &" in tex  # the LaTeX row: no coded bpd, its NLL
    page = (out / "report.html").read_text()
    assert "bfn_nll_only" in page and "n/a (NLL only: the model has no coder)" in page
