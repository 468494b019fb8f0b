"""ditkit: Diffusion Transformers (Peebles & Xie, ICCV 2023) to train, sample, evaluate and study.

The small public API is re-exported here lazily (so `ditkit --help` does not import torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "DiT": "ditkit.model.dit",
    "ModelConfig": "ditkit.config",
    "DiffusionConfig": "ditkit.config",
    "FlowConfig": "ditkit.config",
    "SampleConfig": "ditkit.config",
    "TrainConfig": "ditkit.config",
    "PRESETS": "ditkit.config",
    "get_preset": "ditkit.config",
    "load_dit": "ditkit.model.weights",
    "load_model": "ditkit.model.weights",
    "load_sit": "ditkit.model.weights",
    "open_for_sampling": "ditkit.training.run",
    "build_train_config": "ditkit.training.run",
    "create_diffusion": "ditkit.diffusion.gaussian",
    "sample_loop": "ditkit.diffusion.samplers",
    "generate": "ditkit.sampling.generate",
    "train": "ditkit.training.loop",
    "evaluate_samples": "ditkit.metrics.evaluate",
    "frechet_distance": "ditkit.metrics.statistics",
    "model_cost": "ditkit.model.flops",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ditkit' has no attribute {name!r}")
