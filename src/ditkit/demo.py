"""The CPU demo: train a small class-conditional DiT on the embedded MNIST, sample, score, report.

The recipe departs from the paper where a 2-core CPU and ~10 minutes demand it (each choice was
measured; see benchmarks/demo.md): a small, wide-patch DiT in pixel space, x_0 prediction on a cosine
schedule, a higher learning rate with warm-up, an EMA with warm-up, and a fast solver for sampling.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ditkit.config import PRESETS, DiffusionConfig, ModelConfig, TrainConfig

log = logging.getLogger(__name__)

DEMO_IMAGE_SIZE = 24  # MNIST digits cropped 28 -> 24 (every digit stays whole: 36 tokens at patch 4)
REPORT_IMAGE_SIZE = 32  # samples are framed back to 32 px (the classifier's and the usual MNIST-32 layout)
REPORT_FILE = "demo_report.json"


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    """Sampling and scoring of the demo (the training recipe is `demo_train_config`)."""

    num_samples: int = 1000  # per setting (with and without guidance), class balanced
    sampler: str = "dpm++2m"
    num_steps: int = 20
    cfg_scale: float = 3.0
    batch_size: int = 250
    seed: int = 0


def demo_model_config() -> ModelConfig:
    """The demo's model: the DiT-Demo/4 preset (adaLN-Zero, 6 x 128, patch 4 on 24x24 digits)."""
    return PRESETS["DiT-Demo/4"]


def demo_train_config(out_dir: str | Path, **overrides: Any) -> TrainConfig:
    """The demo's training run on the embedded MNIST (pixel space, no VAE); `overrides` replace fields."""
    model = demo_model_config()
    fields: dict[str, Any] = {
        "out_dir": str(out_dir),
        "model": model,
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
        "sampler": "dpm++2m",
        "num_sampling_steps": 20,
        "cfg_scale": 3.0,
        "eval_every_steps": 900,
        "num_eval_samples": 200,
        "eval_batch_size": 200,
    }
    fields.update(overrides)
    return TrainConfig(**fields)


def run_demo(out_dir: str | Path, settings: DemoSettings | None = None, **train_overrides: Any) -> dict[str, Any]:
    """Train (or resume), then sample with and without guidance, score with the digit classifier, report."""
    from ditkit.classifier import digits_metrics, load_digit_classifier
    from ditkit.data import frame_digits
    from ditkit.generate import SampleSettings, generate, image_seed, job_labels
    from ditkit.grid import save_labelled_grid
    from ditkit.loading import load_dit, read_diffusion_config
    from ditkit.train import train

    settings = settings or DemoSettings()
    out_dir = Path(out_dir)
    start = time.perf_counter()
    cfg = demo_train_config(out_dir, **train_overrides)
    train(cfg)
    train_seconds = time.perf_counter() - start
    model = load_dit(out_dir)
    classifier = load_digit_classifier()
    report: dict[str, Any] = {"train_seconds": round(train_seconds, 1), "train_steps": cfg.max_steps}
    labels = job_labels(settings.num_samples, 10, settings.seed, class_balanced=True)
    seeds = [image_seed(settings.seed, i) for i in range(settings.num_samples)]
    for key, scale in (("cfg", settings.cfg_scale), ("nocfg", 1.0)):
        t0 = time.perf_counter()
        sample_settings = SampleSettings(
            sampler=settings.sampler,
            num_steps=settings.num_steps,
            cfg_scale=scale,  # type: ignore[arg-type]
            clip_denoised=True,
            batch_size=settings.batch_size,
            diffusion=read_diffusion_config(out_dir, model.config),  # x_0 prediction on a cosine schedule
        )
        images = frame_digits(generate(model, labels.tolist(), seeds, sample_settings), REPORT_IMAGE_SIZE)
        metrics = digits_metrics(images, labels, classifier)
        np.savez(out_dir / f"samples_{key}.npz", arr_0=images, labels=labels)
        report[f"accuracy_{key}"] = metrics["accuracy"]
        report[f"fd_{key}"] = metrics["fd"]
        report[f"accuracy_per_class_{key}"] = metrics["accuracy_per_class"]
        report[f"sampling_seconds_{key}"] = round(time.perf_counter() - t0, 1)
        grid_idx = np.concatenate([np.flatnonzero(labels == c)[:10] for c in range(10)])
        save_labelled_grid(
            images[grid_idx],
            labels[grid_idx].tolist(),
            out_dir / f"grid_{key}",
            nrow=10,
            num_classes=10,
            write_images=False,
        )
    report.update(
        num_samples=settings.num_samples,
        cfg_scale=settings.cfg_scale,
        sampler=settings.sampler,
        num_sampling_steps=settings.num_steps,
        seconds=round(time.perf_counter() - start, 1),
    )
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=1))
    return report
