#!/usr/bin/env bash
# The GPU checks of one device session (one card), in two parts that fit one call each.
# Part 1: per-step sampling speed, official sample.py vs ditkit; `ditkit bench` of a bf16 + compile XL/2
# training step; the test suite on CUDA (fast set and the gpu marker). Part 2: a kernel profile of the
# compiled training step. JSON and logs go to $OUT.  Usage: bash benchmarks/gpu_check.sh 1|2 [OFFICIAL_DIR]
set -uo pipefail
PART=${1:-1}
OFFICIAL=${2:-.official}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
step() { echo "=== $1 ($(date +%T))"; }
if [ "$PART" = 1 ]; then
  step "sampling per step: official sample.py vs ditkit"
  timeout 170 python3 benchmarks/gpu_sampling.py --official "$OFFICIAL" --json "$OUT/sampling.json" 2>&1 | tail -32
  step "ditkit bench: XL/2 training, bf16 + compile, batch 256"
  timeout 170 ditkit bench --preset DiT-XL/2 --what train --precision bf16 --compile --batch-size 256 --steps 6 \
      --out "$OUT/bench_train.json" 2>&1 | tail -10
  step "tests on CUDA: fast set, then the gpu marker"
  timeout 110 python3 -m pytest -q -n 12 --dist loadgroup -p no:cacheprovider 2>&1 | tail -8 | tee "$OUT/pytest.txt"
  timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tail -4 | tee -a "$OUT/pytest.txt"
else
  step "kernel profile of the compiled bf16 step"
  timeout 200 python3 benchmarks/gpu_profile_train.py --batch-size 256 --json "$OUT/profile.json" 2>&1 | tail -40
  step "ditkit bench: XL/2 sampling, default (auto) and compiled"
  timeout 150 ditkit bench --preset DiT-XL/2 --what sample --compile --steps 3 --out "$OUT/bench_sample.json" 2>&1 | tail -8
fi
step "done"
