"""Shared fixtures: a tiny config and model, a seeded generator, a few small images, the reference data."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

from ditkit.config import ModelConfig, get_preset
from ditkit.model.dit import DiT

FIXTURES_DIR = Path(__file__).parent / "fixtures"


def pytest_configure(config: pytest.Config) -> None:
    # Test tensors are tiny: intra-op threads gain nothing, and on a shared machine the thread pool's
    # synchronisation cost ~5 ms per op (a 100-step sampling loop ran 20x slower with 2 threads).
    # DITKIT_TEST_THREADS=2 runs the suite with another thread count (results must hold for both).
    torch.set_num_threads(int(os.environ.get("DITKIT_TEST_THREADS", "1")))


@pytest.fixture
def fixtures_dir() -> Path:
    """tests/fixtures: reference tensors produced by facebookresearch/DiT (see its README in shared/)."""
    return FIXTURES_DIR


@pytest.fixture
def load_fixture() -> Callable[[str], dict[str, Tensor]]:
    """Load tests/fixtures/<name> (a .safetensors file) as a dict of tensors."""
    from safetensors.torch import load_file

    return lambda name: load_file(str(FIXTURES_DIR / name))


@pytest.fixture
def reference_configs() -> dict[str, ModelConfig]:
    """The ModelConfig of each reference model in tests/fixtures/models.json."""
    entries = json.loads((FIXTURES_DIR / "models.json").read_text())
    return {name: ModelConfig(**entry["config"]) for name, entry in entries.items()}


@pytest.fixture
def tiny_config() -> ModelConfig:
    """DiT-T/2: 8x8x4 input, patch 2, width 32, depth 2, 2 heads, 10 classes, learned sigma."""
    return get_preset("DiT-T/2")


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture
def images(generator: torch.Generator) -> Tensor:
    """Four 32x32 RGB images in [-1, 1], (4, 3, 32, 32)."""
    return torch.rand(4, 3, 32, 32, generator=generator) * 2 - 1


@pytest.fixture
def make_model() -> Callable[..., DiT]:
    """Build a DiT in eval mode; with perturb > 0 every parameter gets perturb x N(0, 1) noise.

    The official initialisation zeroes the output layer (the model predicts exactly 0), so tests that
    need a non-trivial function perturb it, as the reference data did (0.05).
    """

    def build(config: ModelConfig, perturb: float = 0.05, seed: int = 0) -> DiT:
        torch.manual_seed(seed)
        model = DiT(config).eval()
        if perturb:
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for param in model.parameters():
                    param.add_(perturb * torch.randn(param.shape, generator=gen))
        return model

    return build


@pytest.fixture
def tiny_model(tiny_config: ModelConfig, make_model: Callable[..., DiT]) -> DiT:
    """A perturbed DiT-T/2 (non-zero outputs) in eval mode."""
    return make_model(tiny_config)


@pytest.fixture(scope="session")
def fault_reference(tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    """The losses of an uninterrupted fault-suite run (tests/fault_harness.py), after a warm-up run: the imports and
    first-use caches it leaves are what the fault suites' forked children inherit."""
    from fault_harness import fault_argv, metrics_lines
    from smoke.test_cli import invoke

    out = tmp_path_factory.mktemp("fault_reference") / "run"
    invoke(*fault_argv(out))
    shutil.rmtree(out)
    invoke(*fault_argv(out))
    return [m["loss"] for m in metrics_lines(out)]
