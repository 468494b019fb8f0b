"""A run folder: its layout, its config.json and metrics.jsonl, the TrainConfig built from a user's choices,
and a trained model opened for sampling.

Layout of `out_dir`:
    config.json          the TrainConfig (TrainConfig.to_dict); a rerun must match it (see RESUMABLE_FIELDS)
    log.txt              the run's log (rank 0)
    metrics.jsonl        one JSON object per report: "step", "loss", ... and "eval_*" metrics
    loss_curve.png       the loss over steps (raw and smoothed)
    checkpoints/         step_XXXXXXX/ folders and `latest` (ditkit.checkpoint)
    samples/             step_XXXXXXX.png EMA sample grids
    tensorboard/         event files (with the `tensorboard` extra)
    eval/                cached FID reference statistics
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ditkit import checkpoint, distributed
from ditkit.autoencoder import Autoencoder, load_vae, vae_geometry
from ditkit.config import NO_VAE, RESUMABLE_FIELDS, DiffusionConfig, TrainConfig, get_preset
from ditkit.files import write_json, write_text
from ditkit.loader import open_dataset
from ditkit.loading import load_model
from ditkit.model import DiT
from ditkit.recipes import demo_train_config

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
LOG_FILE = "log.txt"
METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
SAMPLES_DIR = "samples"
TENSORBOARD_DIR = "tensorboard"
EVAL_DIR = "eval"


def grid_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / SAMPLES_DIR / f"step_{step:07d}.png"


def eval_reference_path(run_dir: str | os.PathLike, num_images: int) -> Path:
    return Path(run_dir) / EVAL_DIR / f"ref_stats_{num_images}.npz"


# config.json


def read_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The TrainConfig stored in a run's config.json."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"cannot read {str(path)!r} ({err}); pass a ditkit run folder") from None


def resume_conflicts(stored: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """'field: old -> new' for every setting that may not change when a run resumes."""
    try:
        stored = TrainConfig.from_dict(stored).to_dict()  # older layouts compare in today's terms
    except (ValueError, TypeError):
        pass
    old, new = json.loads(json.dumps(stored)), json.loads(json.dumps(cfg.to_dict()))
    return [
        f"{k}: {old[k]!r} -> {new[k]!r}"
        for k in sorted(new)
        if k not in RESUMABLE_FIELDS and k in old and new[k] != old[k]
    ]


def prepare_run_dir(cfg: TrainConfig, is_main: bool) -> Path:
    """Check that an existing run was started with compatible settings; rank 0 writes config.json."""
    run_dir = Path(cfg.out_dir)
    if checkpoint.list_checkpoints(run_dir) and (run_dir / CONFIG_FILE).is_file():
        try:
            stored = json.loads((run_dir / CONFIG_FILE).read_text())
        except ValueError:
            stored = {}
        conflicts = resume_conflicts(stored, cfg)
        if conflicts:
            raise ValueError(
                f"run folder {str(run_dir)!r} was started with other settings "
                f"({'; '.join(conflicts)}); rerun with the original settings to resume, "
                "or pass a new --out"
            )
    if is_main:
        write_json(run_dir / CONFIG_FILE, cfg.to_dict())
    distributed.barrier()
    return run_dir


# metrics.jsonl


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of metrics.jsonl, skipping a last line cut short by a crash."""
    path = Path(run_dir) / METRICS_FILE
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def trim_metrics(run_dir: str | os.PathLike, up_to_step: int) -> list[dict[str, Any]]:
    """Keep the records of steps <= up_to_step (a resumed run repeats the later ones); returns them."""
    kept = [r for r in read_metrics(run_dir) if r.get("step", float("inf")) <= up_to_step]
    if (Path(run_dir) / METRICS_FILE).is_file():
        write_text(Path(run_dir) / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def append_metrics(run_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    with open(Path(run_dir) / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


# Building a TrainConfig from a user's choices.


def build_train_config(
    out_dir: str | os.PathLike,
    *,
    data: str | None = None,
    preset: str | None = None,
    model_overrides: dict[str, Any] | None = None,
    sample_overrides: dict[str, Any] | None = None,
    **fields: Any,
) -> TrainConfig:
    """The TrainConfig of `ditkit train`'s choices (a Python caller gets the same decisions).

    Without `data` (or "mnist"): the demo recipe on the embedded MNIST. With `data`: the paper run. A
    `preset` picks the model's size and patch; the input shape and class count come from the data (a
    latent store's latent shape; in pixel space the images' channels; through a VAE its latent channels
    and downsampling), `model_overrides` (block, num_classes, learn_sigma, num_heads, ...) win over both.
    The diffusion's learned sigma follows the model's.
    """
    embedded = data is None or data.strip().lower().partition(":")[0] == "mnist"
    base = demo_train_config(out_dir) if embedded else TrainConfig(out_dir=str(out_dir))
    base = base.replace(data=data, **fields)
    model = get_preset(preset) if preset else base.model
    model_fields, image_size = _data_geometry(base)
    base = base.replace(image_size=image_size)
    if preset and embedded:
        model_fields["learn_sigma"] = base.model.learn_sigma  # the recipe's diffusion has no VB term
    model_fields.update(model_overrides or {})
    model = model.replace(**model_fields)
    diffusion = dataclasses.replace(base.diffusion, learn_sigma=model.learn_sigma)
    sample_fields = dict(sample_overrides or {})
    if not model.has_null_class:
        sample_fields.setdefault("cfg_scale", 1.0)  # no null class, no guidance (the recipe guides digits)
    sample = base.sample.replace(**sample_fields)
    return base.replace(model=model, diffusion=diffusion, sample=sample)


def _data_geometry(cfg: TrainConfig) -> tuple[dict[str, Any], int]:
    """The model fields the data decide (input channels and size, class count), and the image size."""
    dataset = open_dataset(cfg.data, None if cfg.data and _is_store(cfg.data) else cfg.image_size, flip=False)
    if dataset.is_latent:
        channels, size, _ = dataset.item_shape
    elif cfg.is_latent:
        channels, downsample = vae_geometry(cfg.vae)
        size = cfg.image_size // downsample
    else:
        channels, size = dataset.channels, cfg.image_size
    return {"in_channels": channels, "input_size": size, "num_classes": dataset.num_classes}, dataset.image_size


def _is_store(spec: str) -> bool:
    return (Path(spec).expanduser() / "meta.json").is_file()


# A trained model, opened for sampling.


@dataclass
class SamplingModel:
    """A DiT with what sampling it needs: the diffusion it was trained with and its VAE (None: pixels)."""

    model: DiT
    diffusion: DiffusionConfig
    vae: Autoencoder | None

    @property
    def pixel_space(self) -> bool:
        return self.vae is None


def open_for_sampling(
    path: str | os.PathLike,
    *,
    vae: str | None = None,
    device: str | torch.device = "cpu",
    num_heads: int | None = None,
) -> SamplingModel:
    """Open weights or a run folder to sample from (EMA weights of a run's newest checkpoint).

    The VAE is `vae` when given, else the run's (its config.json), else none (pixel space); a latent
    model without one is an error, since its samples could not be decoded.
    """
    overrides = {"num_heads": num_heads} if num_heads else {}
    model, diffusion = load_model(path, device=device, **overrides)
    spec = vae
    if spec is None and (Path(path) / CONFIG_FILE).is_file():
        spec = json.loads((Path(path) / CONFIG_FILE).read_text()).get("vae", NO_VAE)
    autoencoder = load_vae(spec or NO_VAE, device)
    if autoencoder is None and model.config.in_channels not in (1, 3):
        raise ValueError(
            f"this model works in a {model.config.in_channels}-channel latent space: pass --vae FOLDER_OR_HUB_ID "
            "(e.g. a local copy of stabilityai/sd-vae-ft-mse) to decode its samples"
        )
    return SamplingModel(model, diffusion, autoencoder)
