"""Image generation at scale: class ids and names, batched seeded sampling, grids, resumable 50K .npz.

Each image i of a job has its own seed and label, so a result depends only on (seed, index, settings):
never on batch size, on the order of batches, or on the number of processes. The .npz follows the
ADM evaluator layout (`arr_0`: uint8 (N, H, W, C)) and adds `labels`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ditkit.autoencoder import to_uint8
from ditkit.config import DiffusionConfig
from ditkit.sample import SAMPLERS, initial_noise, sample_loop

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SampleSettings:
    """How to sample. Defaults: the paper's evaluation (250 DDPM steps, cfg 1.5 on all channels)."""

    sampler: Literal["ddpm", "ddim", "dpm++2m"] = "ddpm"
    num_steps: int = 250  # respaced steps of the 1000-step chain
    cfg_scale: float = 1.5  # classifier-free guidance scale (1 = no guidance, no doubled batch)
    cfg_channels: Literal["all", 3] | int = "all"  # 3 = the official DiT variant, for published numbers
    eta: float = 0.0  # DDIM noise (0 = deterministic)
    clip_denoised: bool = False  # clamp x_0 predictions to [-1, 1] (pixel-space models)
    batch_size: int = 32  # images per forward pass (guidance doubles it)
    diffusion: DiffusionConfig | None = None  # the process the model was trained with; None = the paper's

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1; got {self.num_steps}")
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0; got {self.cfg_scale}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")


# Classes.


@lru_cache(maxsize=1)
def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in index order (first lemma of each synset)."""
    text = resources.files("ditkit").joinpath("assets", "imagenet_classes.txt").read_text()
    rows = [line.split("\t", 1)[1] for line in text.splitlines() if line and not line.startswith("#")]
    return [row.split(",")[0].strip() for row in rows]


def parse_classes(spec: str | Sequence[int | str] | None, num_classes: int) -> list[int]:
    """Class ids from "207,360", ImageNet names ("golden retriever,otter") or a list; None = every class."""
    if spec is None or spec == "":
        return list(range(num_classes))
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    ids = []
    for item in items:
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
            ids.append(int(item))
            continue
        names = [n.lower() for n in imagenet_class_names()] if num_classes == 1000 else []
        matches = [i for i, n in enumerate(names) if n == str(item).lower()]
        if not matches:
            raise ValueError(
                f"unknown class {item!r}: give ids in 0..{num_classes - 1}"
                + (" or ImageNet class names (see `ditkit classes`)" if num_classes == 1000 else "")
            )
        ids.append(matches[0])
    bad = [i for i in ids if not 0 <= i < num_classes]
    if bad:
        raise ValueError(f"class ids {bad} are out of range for a {num_classes}-class model (0..{num_classes - 1})")
    return ids


def image_seed(global_seed: int, index: int) -> int:
    """The seed of image `index` of a job: independent streams per (global_seed, index)."""
    return int(np.random.SeedSequence([global_seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def job_labels(num: int, num_classes: int, seed: int, class_balanced: bool) -> np.ndarray:
    """Labels of a sampling job: uniform draws, or each class equally often in a seeded order."""
    if num_classes == 0:
        return np.zeros(num, dtype=np.int64)
    rng = np.random.default_rng([seed, 1])
    if class_balanced:
        return rng.permutation(np.arange(num) % num_classes).astype(np.int64)
    return rng.integers(0, num_classes, num).astype(np.int64)


# Sampling.


def generate(
    model: nn.Module,
    labels: Sequence[int] | None,
    seeds: Sequence[int],
    settings: SampleSettings,
    *,
    vae: Any = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """Sample one image per seed (uint8 (N, H, W, C)), decoded through `vae` when the model is latent."""
    config = model.config  # type: ignore[attr-defined]
    diffusion = settings.diffusion or DiffusionConfig(learn_sigma=config.learn_sigma)
    shape = (config.in_channels, config.input_size, config.input_size)
    out = []
    for start in range(0, len(seeds), settings.batch_size):
        batch_seeds = list(seeds[start : start + settings.batch_size])
        noise = initial_noise(batch_seeds, shape, device)
        y = None
        if labels is not None and config.num_classes > 0:
            y = torch.as_tensor(list(labels[start : start + settings.batch_size]), device=device, dtype=torch.long)
        x = sample_loop(
            model,
            noise,
            y,
            sampler=settings.sampler,
            timestep_respacing=str(settings.num_steps),
            cfg_scale=settings.cfg_scale,
            cfg_channels=settings.cfg_channels,
            eta=settings.eta,
            seeds=batch_seeds,
            diffusion=diffusion,
            clip_denoised=settings.clip_denoised,
            progress=progress,
        )
        if vae is not None:
            with torch.no_grad():
                x = vae.decode(x)
        out.append(to_uint8(x).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *shape[1:], 3), np.uint8)


def sample_npz(
    model: nn.Module,
    out_path: str | Path,
    num: int,
    settings: SampleSettings,
    *,
    seed: int = 0,
    class_balanced: bool = False,
    vae: Any = None,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    chunk_size: int | None = None,
    progress: bool = False,
) -> Path:
    """Write `num` samples to an ADM-layout .npz (arr_0 uint8 NHWC + labels); resumable and shardable.

    Work is cut into fixed chunks of indices; rank r does the chunks c with c % world_size == r and saves
    each as it finishes (atomically) under `<out>.parts/`, so a killed job resumes where it stopped and no
    index is ever duplicated or missing. The caller assembles with `assemble_npz` after a barrier.
    """
    if num < 1:
        raise ValueError(f"--num must be >= 1; got {num}")
    out_path = Path(out_path)
    parts = _parts_dir(out_path)
    parts.mkdir(parents=True, exist_ok=True)
    chunk = chunk_size or settings.batch_size * 4
    num_classes = model.config.num_classes  # type: ignore[attr-defined]
    labels = job_labels(num, num_classes, seed, class_balanced)
    job = {"num": num, "seed": seed, "class_balanced": class_balanced, "chunk": chunk, "settings": asdict(settings)}
    _check_job(parts, job, rank)
    chunks = [(c, s, min(s + chunk, num)) for c, s in enumerate(range(0, num, chunk)) if c % world_size == rank]
    for c, start, stop in chunks:
        path = parts / f"chunk_{c:06d}.npz"
        if path.exists():
            continue
        seeds = [image_seed(seed, i) for i in range(start, stop)]
        images = generate(
            model, labels[start:stop].tolist(), seeds, settings, vae=vae, device=device, progress=progress
        )
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, images=images, labels=labels[start:stop], start=start)
        tmp.replace(path)
        log.info("rank %d: images %d..%d done", rank, start, stop - 1)
    return out_path


def assemble_npz(out_path: str | Path) -> Path:
    """Join the finished chunks of `sample_npz` into the final .npz; errors if any chunk is missing."""
    out_path = Path(out_path)
    parts = _parts_dir(out_path)
    job = json.loads((parts / "job.json").read_text())
    num, chunk = job["num"], job["chunk"]
    images, labels = [], []
    for c in range((num + chunk - 1) // chunk):
        path = parts / f"chunk_{c:06d}.npz"
        if not path.exists():
            raise ValueError(f"chunk {c} of {out_path} is missing: re-run the same sample command to finish it")
        with np.load(path) as data:
            images.append(data["images"])
            labels.append(data["labels"])
    tmp = out_path.with_name(out_path.stem + ".tmp.npz")
    np.savez(tmp, arr_0=np.concatenate(images), labels=np.concatenate(labels))
    tmp.replace(out_path)
    return out_path


def _parts_dir(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".parts")


def _check_job(parts: Path, job: dict[str, Any], rank: int) -> None:
    """A resumed job must have the same settings, or its chunks would mix two different jobs."""
    path = parts / "job.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(job)):
            raise ValueError(
                f"{parts} holds chunks of a different sampling job ({old}); "
                "delete that folder or use another --npz path"
            )
    elif rank == 0:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(job, indent=1))
        tmp.replace(path)
