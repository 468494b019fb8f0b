"""ditkit: Diffusion Transformers (Peebles & Xie, ICCV 2023) to train, sample, evaluate and study.

The small public API is re-exported here lazily (so `ditkit --help` does not import torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "DiT": "ditkit.model",
    "ModelConfig": "ditkit.config",
    "DiffusionConfig": "ditkit.config",
    "SampleConfig": "ditkit.config",
    "TrainConfig": "ditkit.config",
    "PRESETS": "ditkit.config",
    "get_preset": "ditkit.config",
    "load_dit": "ditkit.loading",
    "load_model": "ditkit.loading",
    "open_for_sampling": "ditkit.run",
    "build_train_config": "ditkit.run",
    "create_diffusion": "ditkit.diffusion",
    "sample_loop": "ditkit.sample",
    "generate": "ditkit.generate",
    "train": "ditkit.train",
    "evaluate_samples": "ditkit.evaluate",
    "frechet_distance": "ditkit.evaluate",
    "model_cost": "ditkit.flops",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ditkit' has no attribute {name!r}")
