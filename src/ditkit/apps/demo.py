"""The CPU demo: train a small class-conditional DiT on the embedded MNIST, sample, score, report.

The training recipe is `ditkit.config.recipes.demo_train_config`; sampling uses the run's own `sample` config
(DPM-Solver++(2M), 10 steps) with and without guidance, and the shipped digit classifier scores it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ditkit.config import DEMO_SAMPLING, TrainConfig
from ditkit.config.recipes import (
    DEMO_REPORT_IMAGE_SIZE,
    demo_train_config,
    latent_demo_train_config,
    latent_demo_vae_config,
    objective_fields,
    shipped_mnist_vae,
)
from ditkit.data.autoencoder import load_vae
from ditkit.data.datasets import STORE_META_FILE, EmbeddedMNIST, frame_digits
from ditkit.data.latent_store import extract_latents, store_progress
from ditkit.metrics.digit_classifier import digits_metrics, load_digit_classifier
from ditkit.runtime.files import save_npz, write_json
from ditkit.runtime.seeds import image_seeds
from ditkit.sampling.generate import generate, job_labels
from ditkit.sampling.grid import save_labelled_grid
from ditkit.training.autoencoder_training import train_vae
from ditkit.training.loop import train
from ditkit.training.run import open_for_sampling, with_vae_record

log = logging.getLogger(__name__)

REPORT_FILE = "demo_report.json"
DEMO_NUM_SAMPLES = 1000  # per setting (with and without guidance), class balanced


def run_demo(
    out_dir: str | Path,
    *,
    num_samples: int = DEMO_NUM_SAMPLES,
    seed: int = 0,
    objective: str = "diffusion",
    **train_overrides: Any,
) -> dict[str, Any]:
    """Train (or resume), then sample with and without guidance, score with the digit classifier, report.

    `objective` "flow" trains with SiT's flow matching and samples with its Heun ODE (`objective_fields`);
    `train_overrides` replace fields of the recipe (e.g. max_steps); a `precision` override applies to
    sampling too.
    """
    out_dir = Path(out_dir)
    start = time.perf_counter()
    cfg = demo_train_config(out_dir, **{"eval_every_steps": 0, **objective_fields(objective), **train_overrides})
    train(cfg)
    report: dict[str, Any] = {"route": "pixel", "train_seconds": round(time.perf_counter() - start, 1)}
    return _sample_and_score(cfg, out_dir, report, start, num_samples, seed)


def run_latent_demo(
    out_dir: str | Path,
    *,
    num_samples: int = DEMO_NUM_SAMPLES,
    seed: int = 0,
    train_autoencoder: bool = False,
    objective: str = "diffusion",
    **train_overrides: Any,
) -> dict[str, Any]:
    """The paper's route on the embedded MNIST: a small KL autoencoder (32 px -> 8x8x4; the one ditkit ships,
    or trained here with `train_autoencoder`), the digits encoded once into a latent store, a DiT on 2x2
    latent patches, then sampling, decoding and scoring as `run_demo` (`objective` as there). Every stage
    resumes on a rerun; `train_overrides` replace fields of the DiT's recipe."""
    out_dir = Path(out_dir)
    start = time.perf_counter()
    vae_dir, store = latent_digits(out_dir, train_autoencoder=train_autoencoder)
    vae_seconds = time.perf_counter() - start
    cfg = with_vae_record(
        latent_demo_train_config(
            out_dir / "dit", store, vae_dir, **{"eval_every_steps": 0, **objective_fields(objective), **train_overrides}
        )
    )
    train(cfg)
    report: dict[str, Any] = {
        "route": "latent",
        "vae_seconds": round(vae_seconds, 1),
        "vae_folder": str(vae_dir),
        "vae": json.loads((vae_dir / "report.json").read_text()),
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    return _sample_and_score(cfg, out_dir, report, start, num_samples, seed)


def latent_digits(folder: str | Path, *, train_autoencoder: bool = False) -> tuple[Path, Path]:
    """(autoencoder folder, latent store) of the latent route: the shipped autoencoder (or one trained in
    folder/vae), and the embedded MNIST's training digits encoded once into folder/latents (resumed if partial)."""
    folder = Path(folder)
    shipped = None if train_autoencoder else shipped_mnist_vae()
    vae_dir = shipped or train_vae(latent_demo_vae_config(folder / "vae"))
    store = folder / "latents"
    written, total = store_progress(store) if (store / STORE_META_FILE).is_file() else (0, 1)
    if written < total:
        vae = load_vae(str(vae_dir))
        extract_latents(EmbeddedMNIST("train", DEMO_REPORT_IMAGE_SIZE), vae, store, batch_size=500, mirror=False)
    return vae_dir, store


def _sample_and_score(
    cfg: TrainConfig, out_dir: Path, report: dict[str, Any], start: float, num_samples: int, seed: int
) -> dict[str, Any]:
    """Sample `num_samples` class-balanced digits with and without guidance, score them, write the report."""
    opened = open_for_sampling(cfg.out_dir)
    sampling = cfg.sample.replace(precision=cfg.precision, batch_size=DEMO_SAMPLING.batch_size)
    classifier = load_digit_classifier()
    labels = job_labels(num_samples, 10, seed, class_balanced=True)
    seeds = image_seeds(seed, num_samples)
    report["train_steps"] = cfg.max_steps
    for key, scale in (("cfg", sampling.cfg_scale), ("nocfg", 1.0)):
        t0 = time.perf_counter()
        images = generate(
            opened.model,
            labels.tolist(),
            seeds,
            sampling.replace(cfg_scale=scale),
            diffusion=opened.diffusion,
            vae=opened.vae,
        )
        images = frame_digits(images, DEMO_REPORT_IMAGE_SIZE)
        metrics = digits_metrics(images, labels, classifier)
        save_npz(out_dir / f"samples_{key}.npz", arr_0=images, labels=labels)
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
        objective=cfg.diffusion.objective,
        num_samples=num_samples,
        cfg_scale=sampling.cfg_scale,
        sampler=sampling.sampler,
        num_sampling_steps=sampling.num_steps,
        seconds=round(time.perf_counter() - start, 1),
    )
    write_json(out_dir / REPORT_FILE, report)
    return report


def summary(report: dict[str, Any], out_dir: str | Path) -> str:
    """What `ditkit demo` prints at the end: the scores and where everything is."""
    out = Path(out_dir)
    run = out / "dit" if report.get("route") == "latent" else out  # the DiT's run folder
    route = "latent route (autoencoder + DiT on latent patches)" if report.get("route") == "latent" else "pixel route"
    return (
        f"demo ({route}) finished in {report['seconds']:.0f} s: accuracy on the requested digit "
        f"{report['accuracy_cfg']:.3f} with guidance (scale {report['cfg_scale']}), {report['accuracy_nocfg']:.3f} "
        f"without, over {report['num_samples']} samples each\n"
        f"  grids:      {out / 'grid_cfg' / 'grid.png'}  {out / 'grid_nocfg' / 'grid.png'}\n"
        f"  loss curve: {run / 'loss_curve.png'}\n"
        f"  report:     {out / REPORT_FILE}\n"
        f"  weights:    {run / 'checkpoints'} (sample more: ditkit sample --ckpt {run} --out {out / 'more'})\n"
        f"  try it in a browser: ditkit serve --ckpt {run}  (then open http://127.0.0.1:7860; "
        "needs pip install 'ditkit[web]')"
    )
