"""Training recipes besides the paper run (whose settings are the config defaults): the CPU demo on the
embedded MNIST. A recipe is a TrainConfig (plus how its model is sampled when scored); `ditkit train`
with no --data, `ditkit demo` and the studies start from here.

The demo departs from the paper where a 2-core CPU and a few minutes demand it (each choice was measured;
see benchmarks/demo.md): a small, wide-patch DiT in pixel space, x_0 prediction on a cosine schedule, a
higher learning rate with warm-up, an EMA with warm-up, and a fast solver for sampling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ditkit.config import PRESETS, DiffusionConfig, ModelConfig, SampleConfig, TrainConfig

DEMO_IMAGE_SIZE = 24  # MNIST digits cropped 28 -> 24 (every digit stays whole: 36 tokens at patch 4)
DEMO_REPORT_IMAGE_SIZE = 32  # samples are framed back to 32 px (the classifier's and the usual MNIST-32 layout)
DEMO_SAMPLING = SampleConfig(sampler="dpm++2m", num_steps=20, cfg_scale=3.0, batch_size=250)
"""How the demo samples (training grids and evaluation too): DPM-Solver++(2M), 20 steps, guidance 3."""


def demo_model_config() -> ModelConfig:
    """The demo's model: the DiT-Demo/4 preset (adaLN-Zero, 6 x 128, patch 4 on 24x24 digits)."""
    return PRESETS["DiT-Demo/4"]


def demo_train_config(out_dir: str | Path, **overrides: Any) -> TrainConfig:
    """The demo's training run on the embedded MNIST (pixel space, no VAE); `overrides` replace fields."""
    fields: dict[str, Any] = {
        "out_dir": str(out_dir),
        "model": demo_model_config(),
        "diffusion": DiffusionConfig(learn_sigma=False, noise_schedule="cosine", predict_xstart=True),
        "data": None,
        "image_size": DEMO_IMAGE_SIZE,
        "vae": "none",
        "flip": False,
        "num_workers": 0,
        "max_steps": 1800,
        "global_batch_size": 64,
        "lr": 2e-3,
        "warmup_steps": 100,
        "adam_betas": (0.9, 0.99),
        "ema_decay": 0.999,
        "ema_warmup": True,
        "log_every_steps": 50,
        "ckpt_every_steps": 250,
        "keep_last_ckpts": 1,
        "sample_every_steps": 600,
        "num_grid_images": 30,
        "sample": DEMO_SAMPLING.replace(batch_size=200),
        "eval_every_steps": 900,
        "num_eval_samples": 200,
    }
    fields.update(overrides)
    return TrainConfig(**fields)
