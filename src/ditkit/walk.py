"""Latent walks of the DiT paper: slerp between initial noises, and interpolation between class embeddings.

Frames are decoded with deterministic DDIM (eta = 0) so a frame is a smooth function of its inputs.
The class walk mixes two rows of the label table (soft labels), giving the paper's "dog-ball hybrids".
Output: an animated GIF, a frame-strip PNG, and an MP4 when ffmpeg is on the PATH.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ditkit.autoencoder import to_uint8
from ditkit.config import DiffusionConfig
from ditkit.diffusion import diffusion_from_config
from ditkit.generate import image_seed
from ditkit.sample import GlobalNoise, ddim_sample, guided_denoiser, initial_noise, model_denoiser


def slerp(a: Tensor, b: Tensor, weight: float) -> Tensor:
    """Spherical interpolation between two noise tensors (keeps the Gaussian norm, unlike lerp)."""
    a_flat, b_flat = a.flatten(), b.flatten()
    cos = torch.dot(a_flat, b_flat) / (a_flat.norm() * b_flat.norm())
    omega = torch.arccos(cos.clamp(-1, 1))
    if omega.abs() < 1e-6:
        return (1 - weight) * a + weight * b
    return (torch.sin((1 - weight) * omega) * a + torch.sin(weight * omega) * b) / torch.sin(omega)


def _decode_frames(
    model: nn.Module,
    noise: Tensor,
    soft_labels: Tensor | None,
    *,
    num_steps: int,
    cfg_scale: float,
    clip_denoised: bool,
    vae: Any,
    diffusion: DiffusionConfig | None,
) -> np.ndarray:
    config = model.config  # type: ignore[attr-defined]
    process = diffusion or DiffusionConfig(learn_sigma=config.learn_sigma)
    diffusion_chain = diffusion_from_config(process, str(num_steps))
    if soft_labels is None:
        denoise = model_denoiser(model, None)
    elif cfg_scale != 1.0 and config.has_null_class:
        null = torch.zeros_like(soft_labels)
        null[:, config.null_class] = 1.0
        denoise = guided_denoiser(model, soft_labels, null, cfg_scale, config.in_channels)
    else:
        denoise = model_denoiser(model, soft_labels)
    with torch.no_grad():
        # eta = 0 draws no noise, so the noise source is never used.
        x = ddim_sample(diffusion_chain, denoise, noise, GlobalNoise(None), eta=0.0, clip_denoised=clip_denoised)
        if vae is not None:
            x = vae.decode(x)
    return to_uint8(x).cpu().numpy()


def _one_hot_rows(config: Any, classes: list[int]) -> Tensor:
    rows = config.num_classes + int(config.has_null_class)
    out = torch.zeros(len(classes), rows)
    out[torch.arange(len(classes)), torch.tensor(classes)] = 1.0
    return out


def noise_walk(
    model: nn.Module,
    class_id: int | None,
    seed_a: int,
    seed_b: int,
    num_frames: int = 16,
    *,
    num_steps: int = 50,
    cfg_scale: float = 4.0,
    clip_denoised: bool = False,
    vae: Any = None,
    diffusion: DiffusionConfig | None = None,
) -> np.ndarray:
    """Frames (F, H, W, C) uint8 decoded from slerp(noise(seed_a), noise(seed_b), w), w in [0, 1]."""
    config = model.config  # type: ignore[attr-defined]
    shape = (config.in_channels, config.input_size, config.input_size)
    a, b = initial_noise([image_seed(seed_a, 0), image_seed(seed_b, 0)], shape)
    weights = np.linspace(0.0, 1.0, num_frames)
    noise = torch.stack([slerp(a, b, float(w)) for w in weights])
    labels = _one_hot_rows(config, [class_id] * num_frames) if config.num_classes > 0 and class_id is not None else None
    return _decode_frames(
        model,
        noise,
        labels,
        num_steps=num_steps,
        cfg_scale=cfg_scale,
        clip_denoised=clip_denoised,
        vae=vae,
        diffusion=diffusion,
    )


def class_walk(
    model: nn.Module,
    class_a: int,
    class_b: int,
    seed: int,
    num_frames: int = 16,
    *,
    num_steps: int = 50,
    cfg_scale: float = 4.0,
    clip_denoised: bool = False,
    vae: Any = None,
    diffusion: DiffusionConfig | None = None,
) -> np.ndarray:
    """Frames decoded from one noise with the label embedding moved linearly from class_a to class_b."""
    config = model.config  # type: ignore[attr-defined]
    if config.num_classes == 0:
        raise ValueError("a class walk needs a class-conditional model; this one is unconditional")
    shape = (config.in_channels, config.input_size, config.input_size)
    noise = initial_noise([image_seed(seed, 0)], shape).expand(num_frames, *shape).clone()
    ends = _one_hot_rows(config, [class_a, class_b])
    weights = torch.linspace(0.0, 1.0, num_frames)[:, None]
    labels = (1 - weights) * ends[0] + weights * ends[1]
    return _decode_frames(
        model,
        noise,
        labels,
        num_steps=num_steps,
        cfg_scale=cfg_scale,
        clip_denoised=clip_denoised,
        vae=vae,
        diffusion=diffusion,
    )


def save_walk(frames: np.ndarray, out_dir: str | Path, name: str, fps: int = 8) -> dict[str, Path]:
    """Write `name`.gif, `name`_strip.png and, when ffmpeg exists, `name`.mp4; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f.squeeze(-1) if f.shape[-1] == 1 else f) for f in frames]
    paths = {"gif": out_dir / f"{name}.gif", "strip": out_dir / f"{name}_strip.png"}
    images[0].save(paths["gif"], save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    strip = np.concatenate(list(frames), axis=1)
    Image.fromarray(strip.squeeze(-1) if strip.shape[-1] == 1 else strip).save(paths["strip"])
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg:
        with tempfile.TemporaryDirectory() as tmp:
            for i, img in enumerate(images):
                img.convert("RGB").save(Path(tmp) / f"{i:05d}.png")
            mp4 = out_dir / f"{name}.mp4"
            cmd = [
                ffmpeg,
                "-y",
                "-loglevel",
                "error",
                "-framerate",
                str(fps),
                "-i",
                str(Path(tmp) / "%05d.png"),
                "-vf",
                "scale=trunc(iw/2)*2:trunc(ih/2)*2",
                "-pix_fmt",
                "yuv420p",
                str(mp4),
            ]
            if subprocess.run(cmd, check=False).returncode == 0:
                paths["mp4"] = mp4
    return paths
