#!/usr/bin/env bash
# GPU checks of issue 16, a few minutes on one GPU: the CUDA tests, CPU/CUDA byte identity of every shipped
# model's messages (both ways), and compress/decompress MB/s per GPU. Run from the repository root where
# shardzip and a CUDA build of torch are installed (deploy/Dockerfile's image, or `pip install -e .` with
# torch for CUDA); the figures are in its output.
#
#     bash benchmarks/device_check.sh            # PY=python by default
set -euo pipefail
PY=${PY:-python}
$PY -c "import torch, sys; ok = torch.cuda.is_available(); print('device:', torch.cuda.get_device_name(0) if ok else 'none', '| torch', torch.__version__); sys.exit(0 if ok else 1)" \
  || { echo "no CUDA device: nothing to check here"; exit 1; }
echo "== 1. CUDA tests (tests/test_gpu.py: coder kernels, models, CPU/CUDA bytes)"
$PY -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
echo "== 2. every shipped model: CUDA and CPU write the same bytes and decode each other's"
$PY tools/cross_decode.py --configs cpu/best,cuda --threads 1 --same-bytes
echo "== 3. compress / decompress MB/s per GPU (same bytes: the CPU's)"
$PY benchmarks/codec.py --device cuda
