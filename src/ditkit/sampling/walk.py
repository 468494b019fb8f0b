"""Latent walks of the DiT paper: slerp between initial noises, and interpolation between class embeddings.

Frames are decoded with a deterministic sampler (DDIM, eta = 0, by default) through `ditkit.sampling.generate`, so
a frame is a smooth function of its inputs.
The class walk mixes two rows of the label table (soft labels), giving the paper's "dog-ball hybrids".
Output: an animated GIF, a frame-strip PNG, and an MP4 when ffmpeg is on the PATH.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ditkit.config import WALK_SAMPLING, DiffusionConfig, ModelConfig, SampleConfig
from ditkit.data.autoencoder import Autoencoder
from ditkit.diffusion.samplers import initial_noise
from ditkit.model.dit import DiT
from ditkit.runtime.errors import InputError
from ditkit.runtime.files import atomic_path
from ditkit.runtime.seeds import image_seed
from ditkit.sampling.generate import generate

log = logging.getLogger(__name__)

FORMATS = ("gif", "strip", "mp4")


def slerp(a: Tensor, b: Tensor, weight: float) -> Tensor:
    """Spherical interpolation between two noise tensors (keeps the Gaussian norm, unlike lerp)."""
    a_flat, b_flat = a.flatten(), b.flatten()
    cos = torch.dot(a_flat, b_flat) / (a_flat.norm() * b_flat.norm())
    omega = torch.arccos(cos.clamp(-1, 1))
    if omega.abs() < 1e-6:
        return (1 - weight) * a + weight * b
    return (torch.sin((1 - weight) * omega) * a + torch.sin(weight * omega) * b) / torch.sin(omega)


def _check_deterministic(config: SampleConfig) -> None:
    if config.sampler == "ddpm" or (config.sampler == "ddim" and config.eta > 0):
        raise InputError(
            f"a walk needs a deterministic sampler (ddim with eta 0, or dpm++2m); got {config.sampler} "
            f"with eta {config.eta}: frames would jump with the sampler's noise",
            setting="sampler",
        )


def _one_hot_rows(config: ModelConfig, classes: list[int]) -> Tensor:
    rows = config.num_classes + int(config.has_null_class)
    out = torch.zeros(len(classes), rows)
    out[torch.arange(len(classes)), torch.tensor(classes)] = 1.0
    return out


def noise_walk(
    model: DiT,
    class_id: int | None,
    seed_a: int,
    seed_b: int,
    num_frames: int = 16,
    config: SampleConfig = WALK_SAMPLING,
    *,
    diffusion: DiffusionConfig | None = None,
    vae: Autoencoder | None = None,
) -> np.ndarray:
    """Frames (F, H, W, C) uint8 decoded from slerp(noise(seed_a), noise(seed_b), w), w in [0, 1]."""
    _check_deterministic(config)
    model_config = model.config
    shape = (model_config.in_channels, model_config.input_size, model_config.input_size)
    a, b = initial_noise([image_seed(seed_a, 0), image_seed(seed_b, 0)], shape)
    noise = torch.stack([slerp(a, b, float(w)) for w in np.linspace(0.0, 1.0, num_frames)])
    conditional = model_config.num_classes > 0 and class_id is not None
    labels = _one_hot_rows(model_config, [class_id] * num_frames) if conditional and class_id is not None else None
    seeds = [image_seed(seed_a, 0)] * num_frames  # deterministic samplers draw nothing from them
    return generate(model, labels, seeds, config, diffusion=diffusion, vae=vae, noise=noise)


def class_walk(
    model: DiT,
    class_a: int,
    class_b: int,
    seed: int,
    num_frames: int = 16,
    config: SampleConfig = WALK_SAMPLING,
    *,
    diffusion: DiffusionConfig | None = None,
    vae: Autoencoder | None = None,
) -> np.ndarray:
    """Frames decoded from one noise with the label embedding moved linearly from class_a to class_b."""
    _check_deterministic(config)
    model_config = model.config
    if model_config.num_classes == 0:
        raise InputError("a class walk needs a class-conditional model; this one is unconditional")
    shape = (model_config.in_channels, model_config.input_size, model_config.input_size)
    noise = initial_noise([image_seed(seed, 0)], shape).expand(num_frames, *shape).clone()
    ends = _one_hot_rows(model_config, [class_a, class_b])
    weights = torch.linspace(0.0, 1.0, num_frames)[:, None]
    labels = (1 - weights) * ends[0] + weights * ends[1]
    seeds = [image_seed(seed, 0)] * num_frames
    return generate(model, labels, seeds, config, diffusion=diffusion, vae=vae, noise=noise)


def make_walks(
    model: DiT,
    out_dir: str | Path,
    *,
    kinds: tuple[str, ...] = ("noise", "class"),
    classes: list[int] | None = None,
    seeds: tuple[int, int] = (0, 1),
    num_frames: int = 16,
    config: SampleConfig = WALK_SAMPLING,
    diffusion: DiffusionConfig | None = None,
    vae: Autoencoder | None = None,
) -> dict[str, dict[str, Path]]:
    """`ditkit walk`: a noise walk from seeds[0] to seeds[1] in class classes[0], and/or a class walk from
    classes[0] to classes[1]; each saved by `save_walk` as OUT/<kind>_walk.* . Returns {kind: paths}."""
    pair = (classes[0], classes[1]) if classes and len(classes) >= 2 else None
    if "class" in kinds and pair is None:
        raise InputError(f"a class walk needs two classes A,B; got classes={classes!r}", setting="classes")
    _check_deterministic(config)  # every input checked before the first word about outputs
    made = {}
    formats = FORMATS if _ffmpeg() else tuple(f for f in FORMATS if f != "mp4")  # one warning for all walks
    if "noise" in kinds:
        frames = noise_walk(
            model,
            classes[0] if classes else None,
            seeds[0],
            seeds[-1],
            num_frames,
            config,
            diffusion=diffusion,
            vae=vae,
        )
        made["noise"] = save_walk(frames, out_dir, "noise_walk", formats=formats)
    if "class" in kinds and pair is not None:
        frames = class_walk(model, pair[0], pair[1], seeds[0], num_frames, config, diffusion=diffusion, vae=vae)
        made["class"] = save_walk(frames, out_dir, "class_walk", formats=formats)
    return made


def save_walk(
    frames: np.ndarray, out_dir: str | Path, name: str, fps: int = 8, formats: Sequence[str] = FORMATS
) -> dict[str, Path]:
    """Write `name`.gif, `name`_strip.png and, when ffmpeg exists, `name`.mp4 (each atomically; those of
    `formats`); returns {format: path}. A format skipped for want of ffmpeg is logged in one WARNING line."""
    out_dir = Path(out_dir)
    images = [Image.fromarray(f.squeeze(-1) if f.shape[-1] == 1 else f) for f in frames]
    paths = {}
    if "gif" in formats:
        paths["gif"] = out_dir / f"{name}.gif"
        with atomic_path(paths["gif"], durable=False) as tmp:
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    if "strip" in formats:
        paths["strip"] = out_dir / f"{name}_strip.png"
        strip = np.concatenate(list(frames), axis=1)
        with atomic_path(paths["strip"], durable=False) as tmp:
            Image.fromarray(strip.squeeze(-1) if strip.shape[-1] == 1 else strip).save(tmp, format="PNG")
    ffmpeg = _ffmpeg() if "mp4" in formats else None
    if ffmpeg:
        mp4 = _encode_mp4(ffmpeg, images, out_dir / f"{name}.mp4", fps)
        if mp4 is not None:
            paths["mp4"] = mp4
    return paths


def _ffmpeg() -> str | None:
    """The ffmpeg executable, or None after a WARNING that names the skipped format and the fix."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        log.warning("walk: skipping the MP4 (ffmpeg is not on the PATH); install ffmpeg to get it")
    return ffmpeg


def _encode_mp4(ffmpeg: str, images: list[Image.Image], path: Path, fps: int) -> Path | None:
    with tempfile.TemporaryDirectory() as frames_dir, atomic_path(path, durable=False) as tmp:
        for i, img in enumerate(images):
            img.convert("RGB").save(Path(frames_dir) / f"{i:05d}.png")
        cmd = [
            ffmpeg,
            "-y",
            "-loglevel",
            "error",
            "-framerate",
            str(fps),
            "-i",
            str(Path(frames_dir) / "%05d.png"),
            "-vf",
            "scale=trunc(iw/2)*2:trunc(ih/2)*2",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "mp4",
            str(tmp),
        ]
        if subprocess.run(cmd, check=False).returncode != 0:
            return None
    return path
