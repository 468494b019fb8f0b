"""`ditkit train-vae`: a small KL autoencoder (diffusers' AutoencoderKL) trained on any ditkit dataset, so that
DiT can run in a latent space where SD's VAE does not fit (digits, medical, satellite, spectrograms).

Layout of the output folder (a diffusers VAE folder: `--vae DIR` and `AutoencoderKL.from_pretrained(DIR)` read it):
    config.json, diffusion_pytorch_model.safetensors   the newest weights; config.json's `scaling_factor` is
                                                       1 / std of the latents, measured when training ends
                                                       (null before: `load_vae` refuses a stopped folder)
    vae_train_config.json   the VAETrainConfig; a rerun must match it (lengths and cadences may change)
    training/               optimizer.pt and state.json (step, max_steps, finished) of the newest checkpoint
    metrics.jsonl           loss, L1, KL and PSNR per report; samples/  reconstruction grids
    report.json             scaling factor, PSNR and (for digits) classifier accuracy on held-out reconstructions
"""

from __future__ import annotations

import errno
import importlib.util
import json
import logging
import math
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ditkit.config import VAETrainConfig
from ditkit.data.autoencoder import TRAINING_STATE_FILE, to_uint8, unfinished_training
from ditkit.data.datasets import BaseDataset
from ditkit.data.image_size import pick_image_size
from ditkit.data.loader import build_loader, open_dataset
from ditkit.metrics.digit_classifier import classifier_accuracy, load_digit_classifier
from ditkit.metrics.scoring import is_digit_images
from ditkit.runtime import backend, distributed
from ditkit.runtime.errors import InputError
from ditkit.runtime.files import TEMP_PREFIX, atomic_dir, check_free_space, check_output_dir, recover_dir, write_json
from ditkit.runtime.progress import progress
from ditkit.runtime.seeds import Stream, mix_seed
from ditkit.runtime.stopping import NonFiniteLoss, StopSignal, interrupted, one_line
from ditkit.sampling.grid import save_grid
from ditkit.training import run

if TYPE_CHECKING:
    from diffusers import AutoencoderKL  # the optional `vae` extra, imported where it runs

logger = logging.getLogger(__name__)

TRAIN_CONFIG_FILE = "vae_train_config.json"
STATE_DIR = "training"
REPORT_FILE = "report.json"
RESUMABLE = frozenset({"out_dir", "max_steps", "lr", "log_every_steps", "ckpt_every_steps", "device", "num_threads"})
NUM_REPORT_IMAGES = 1000  # held-out images scored at the end (PSNR, classifier accuracy)
NUM_GRID_IMAGES = 8  # originals (top row) over their reconstructions, one class each where the data has them


def build_vae(cfg: VAETrainConfig, channels: int) -> AutoencoderKL:
    """A fresh AutoencoderKL of `cfg`'s shape for `channels`-channel images (seeded by cfg.seed)."""
    from diffusers import AutoencoderKL  # the optional `vae` extra

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return AutoencoderKL(
            in_channels=channels,
            out_channels=channels,
            down_block_types=("DownEncoderBlock2D",) * len(cfg.block_out_channels),
            up_block_types=("UpDecoderBlock2D",) * len(cfg.block_out_channels),
            block_out_channels=cfg.block_out_channels,
            layers_per_block=cfg.layers_per_block,
            latent_channels=cfg.latent_channels,
            norm_num_groups=cfg.norm_num_groups,
            sample_size=cfg.image_size,
        )


def vae_loss(vae: AutoencoderKL, x: Tensor, kl_weight: float, generator: torch.Generator | None) -> dict[str, Tensor]:
    """L1 reconstruction (mean per pixel) + kl_weight x KL to N(0, I) (summed per image, mean over images)."""
    posterior = vae.encode(x).latent_dist
    reconstruction = vae.decode(posterior.sample(generator)).sample
    l1 = (reconstruction - x).abs().mean()
    kl = posterior.kl().mean()
    return {"loss": l1 + kl_weight * kl, "l1": l1, "kl": kl, "psnr": psnr(reconstruction.clamp(-1, 1), x)}


def psnr(reconstruction: Tensor, x: Tensor) -> Tensor:
    """Mean PSNR (dB) over images in [-1, 1] (peak-to-peak 2)."""
    mse = ((reconstruction - x) ** 2).mean(dim=(1, 2, 3))
    return (10 * torch.log10(4.0 / mse.clamp_min(1e-10))).mean()


def reconstruct(vae: AutoencoderKL, x: Tensor) -> Tensor:
    """The decoded posterior mean of `x` (what a reconstruction grid and the report show)."""
    return vae.decode(vae.encode(x).latent_dist.mode()).sample


def vae_train_config(out_dir: str | os.PathLike, **fields: Any) -> VAETrainConfig:
    """`ditkit train-vae`'s VAETrainConfig: without image_size, the data's own (an image folder's or .npz's
    images, at most 256 px, a multiple of twice the downsampling; `pick_image_size`), else the default 32."""
    cfg = VAETrainConfig(out_dir=str(out_dir), **{k: v for k, v in fields.items() if k != "image_size"})
    size = pick_image_size(cfg.data, fields.get("image_size"), multiple=2 * cfg.downsample)  # logs the choice
    return cfg if size is None else cfg.replace(image_size=size)


def train_vae(cfg: VAETrainConfig) -> Path:
    """Train (or resume) the autoencoder in cfg.out_dir; returns the VAE folder. ValueError on bad input."""
    out = Path(cfg.out_dir)
    device = distributed.resolve_device(cfg.device)
    restore = backend.configure(num_threads=cfg.num_threads)
    stop = StopSignal()
    try:
        dataset = open_dataset(cfg.data, cfg.image_size, flip=False)
        _check_resume(out, cfg)  # reads only: a start that fails leaves the folder as it was
        vae, optimizer, start = _load_or_build(out, cfg, dataset.channels, device)
        params = sum(p.numel() * p.element_size() for p in vae.parameters())  # weights + AdamW's two moments
        check_free_space(out, 3 * params + (1 << 20), "the autoencoder's checkpoints")
        write_json(out / TRAIN_CONFIG_FILE, cfg.to_dict())
        latent = f"{cfg.latent_channels}x{cfg.image_size // cfg.downsample}x{cfg.image_size // cfg.downsample}"
        logger.info(
            "%s a VAE in %s at step %d: %.2fM parameters, %d px -> %s latents",
            "resuming" if start else "training",
            out,
            start,
            sum(p.numel() for p in vae.parameters()) / 1e6,
            cfg.image_size,
            latent,
        )
        batches = build_loader(dataset, batch_size=cfg.batch_size, seed=cfg.seed, start_step=start)
        bar = progress(total=cfg.max_steps, initial=start, desc="train-vae", unit="step")
        step, rows = start, []
        while step < cfg.max_steps:
            x = next(batches)[0].to(device)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.max_steps // 20))
            generator = torch.Generator(device).manual_seed(mix_seed(cfg.seed, Stream.VAE_STEP, step))
            terms = vae_loss(vae, x, cfg.kl_weight, generator)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            rows.append(torch.stack([terms[k].detach() for k in ("loss", "l1", "kl", "psnr")]))
            step += 1
            bar.update(1)
            signum = stop.requested()
            if step % cfg.log_every_steps == 0 or step == cfg.max_steps or signum:
                _report(out, step, rows, bar)
                rows = []
            if step % cfg.ckpt_every_steps == 0 or step == cfg.max_steps or signum:
                _save(out, vae, optimizer, step, dataset, cfg.max_steps)
            if signum:
                raise interrupted(signum, step)
        bar.close()
        if step > start or unfinished_training(out) or not (out / REPORT_FILE).is_file():  # a larger --max-steps too
            _finish(out, vae, dataset, cfg, device, step)
        return out
    finally:
        stop.restore()
        restore()


def _check_resume(out: Path, cfg: VAETrainConfig) -> None:
    check_output_dir(out)
    recover_dir(out)  # a kill between the renames of a folder swap left it aside
    stored_path = out / TRAIN_CONFIG_FILE
    if stored_path.is_file():
        stored = _read_json(stored_path, "the settings")
        new = json.loads(json.dumps(cfg.to_dict()))
        conflicts = [
            f"{k}: {stored.get(k)!r} -> {v!r}" for k, v in new.items() if k not in RESUMABLE and stored.get(k) != v
        ]
        if conflicts:
            raise InputError(
                f"VAE folder {str(out)!r} was trained with other settings ({'; '.join(conflicts)}); rerun with "
                "the original settings to resume, or pass a new out_dir",
                setting="out_dir",
            )
    elif out.exists() and any(out.iterdir()):
        raise InputError(
            f"{str(out)!r} exists and is not a ditkit VAE folder; pass a new or empty out_dir", setting="out_dir"
        )


def _read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object train-vae wrote, or InputError naming the file (damaged, or not what train-vae writes)."""
    try:
        value: Any = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        value = f"{type(err).__name__}: {err}"
    if not isinstance(value, dict):
        raise InputError(
            f"cannot resume: {str(path)!r} is damaged ({str(value)[:80]}), not {what} train-vae writes; restore "
            "it from a backup, or pass a new out_dir",
            setting="out_dir",
        )
    return value


def _unreadable(path: Path, err: BaseException) -> InputError:
    """A damaged checkpoint file of a VAE folder, named; never torch's advice to load untrusted pickles."""
    return InputError(
        f"cannot resume from {str(path)!r} ({type(err).__name__}): damaged, truncated or not written by train-vae "
        "(ditkit never unpickles objects); restore the folder from a backup, or pass a new out_dir",
        setting="out_dir",
    )


def _load_or_build(
    out: Path, cfg: VAETrainConfig, channels: int, device: torch.device
) -> tuple[AutoencoderKL, torch.optim.Optimizer, int]:
    state_file = out / TRAINING_STATE_FILE
    if state_file.is_file():
        from diffusers import AutoencoderKL  # the optional `vae` extra

        start, weights = _read_json(state_file, "the state").get("step"), out / "diffusion_pytorch_model.safetensors"
        if not isinstance(start, int) or start < 0:
            raise _unreadable(state_file, ValueError(f"step {start!r}"))
        _read_json(out / "config.json", "the autoencoder config")
        low_mem = importlib.util.find_spec("accelerate") is not None  # without it diffusers prints a notice
        optimizer_file = out / STATE_DIR / "optimizer.pt"
        with warnings.catch_warnings():  # torch's pickle-protocol warnings: the file is refused in one line
            warnings.simplefilter("ignore")
            try:
                vae = AutoencoderKL.from_pretrained(str(out), low_cpu_mem_usage=low_mem).to(device).train()
            except (OSError, ValueError, RuntimeError) as err:
                raise _unreadable(weights, err) from None
            optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
            try:
                optimizer.load_state_dict(torch.load(optimizer_file, map_location=device, weights_only=True))
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError, EOFError, pickle.UnpicklingError) as err:
                raise _unreadable(optimizer_file, err) from None
        return vae, optimizer, start
    vae = build_vae(cfg, channels).to(device).train()
    return vae, torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0), 0


def _report(out: Path, step: int, rows: list[Tensor], bar: Any) -> None:
    loss, l1, kl, psnr = torch.stack(rows).float().mean(0).tolist()
    if not math.isfinite(loss):
        raise NonFiniteLoss(
            f"the VAE loss is {loss} at step {step}; lower lr (--lr; a rerun resumes from the last checkpoint)"
        )
    run.append_metrics(out, {"step": step, "loss": loss, "l1": l1, "kl": kl, "psnr": psnr})
    bar.set_postfix(l1=f"{l1:.4f}", psnr=f"{psnr:.1f}")


def _save(
    out: Path, vae: AutoencoderKL, optimizer: torch.optim.Optimizer, step: int, dataset: BaseDataset, max_steps: int
) -> None:
    """The weights (diffusers layout), the optimizer and the step in one folder swap, then a reconstruction grid.

    Until `_finish` measures it, config.json's scaling_factor is null and state.json says finished: false, so
    `load_vae` refuses the folder instead of using SD's 0.18215 or an older measurement."""
    vae.register_to_config(scaling_factor=None)
    _save_pretrained(vae, out, optimizer, {"step": step, "max_steps": max_steps, "finished": False})
    with torch.no_grad():
        x = torch.stack([dataset.get(i)[0] for i in grid_indices(dataset)]).to(vae.device)
        reconstruction = reconstruct(vae, x)
    grid = out / run.SAMPLES_DIR / f"recon_step_{step:07d}.png"
    save_grid(to_uint8(torch.cat([x, reconstruction])), grid, nrow=len(x))


def grid_indices(dataset: BaseDataset, size: int = NUM_GRID_IMAGES) -> list[int]:
    """Images of a reconstruction grid: the first image of each class (up to `size`), then the next images in
    order until the grid is full (fewer classes than `size`, or unlabelled data)."""
    labels = getattr(dataset, "labels", None)
    if labels is None and hasattr(dataset, "samples"):  # an image folder: (path, label) pairs
        labels = [label for _, label in dataset.samples]
    count = min(size, len(dataset))
    picked = [] if labels is None else np.unique(np.asarray(labels), return_index=True)[1].tolist()[:count]
    taken = set(picked)
    rest = (i for i in range(len(dataset)) if i not in taken)
    return picked + [next(rest) for _ in range(count - len(picked))]


def _save_pretrained(
    vae: AutoencoderKL, out: Path, optimizer: torch.optim.Optimizer | None = None, state: dict | None = None
) -> None:
    """Replace the whole folder (`atomic_dir`): new weights, with `optimizer` a new training/optimizer.pt, and
    with `state` a new training/state.json (step, max_steps, finished).

    A kill leaves the old folder or the new one (`recover_dir` puts a folder left aside back), never new weights
    beside an old config or state. The other entries carry over as hard links (copies where links fail).
    """
    with atomic_dir(out) as tmp:
        try:
            vae.save_pretrained(str(tmp))
        except Exception as err:  # safetensors' writer reports a full disk as SafetensorError, not OSError
            if type(err).__name__ != "SafetensorError":
                raise
            raise OSError(
                errno.EIO,
                f"cannot write the autoencoder's weights in {str(out)!r} ({one_line(err)}); free some space, then "
                "rerun the same command to resume",
            ) from None
        if optimizer is not None:
            (tmp / STATE_DIR).mkdir()
            torch.save(optimizer.state_dict(), tmp / STATE_DIR / "optimizer.pt")
        for entry in out.iterdir():
            if not (tmp / entry.name).exists() and not entry.name.startswith(TEMP_PREFIX):
                if entry.is_dir():
                    shutil.copytree(entry, tmp / entry.name, copy_function=_link)
                else:
                    _link(entry, tmp / entry.name)
        if state is not None:  # replaces a carried-over link, never the old folder's file
            (tmp / STATE_DIR).mkdir(exist_ok=True)
            write_json(tmp / TRAINING_STATE_FILE, state, durable=False)  # atomic_dir fsyncs it


def _link(source: str | os.PathLike, target: str | os.PathLike) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copy2(source, target)


@torch.no_grad()
def _finish(
    out: Path, vae: AutoencoderKL, dataset: BaseDataset, cfg: VAETrainConfig, device: torch.device, step: int
) -> None:
    """Set the latent scaling factor (1 / std of posterior samples) and score held-out reconstructions; the
    factor and state.json's finished: true land in one folder swap (what makes the folder loadable)."""
    vae.eval()
    generator = torch.Generator(device).manual_seed(cfg.seed)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.num_scale_images]
    latents = []
    for chunk in order.split(256):
        x = torch.stack([dataset.get(i)[0] for i in chunk.tolist()]).to(device)
        latents.append(vae.encode(x).latent_dist.sample(generator))
    std = float(torch.cat(latents).std())
    vae.register_to_config(scaling_factor=1.0 / std)
    _save_pretrained(vae, out, state={"step": step, "max_steps": cfg.max_steps, "finished": True})
    report = {"scaling_factor": 1.0 / std, "latent_std": std, **reconstruction_report(vae, cfg, device)}
    write_json(out / REPORT_FILE, report)
    scores = ", ".join(f"{k} {v:.4g}" for k, v in report.items() if k not in ("latent_std", "scaling_factor"))
    logger.info("VAE %s: scaling factor %.4f; %s", out, 1.0 / std, scores)


@torch.no_grad()
def reconstruction_report(vae: AutoencoderKL, cfg: VAETrainConfig, device: torch.device) -> dict[str, float]:
    """PSNR of held-out reconstructions (posterior means), and for digits the classifier's accuracy on them."""
    held_out = "mnist:test" if cfg.data in (None, "mnist") else cfg.data
    dataset = open_dataset(held_out, cfg.image_size, flip=False)
    count = min(len(dataset), NUM_REPORT_IMAGES)
    originals, reconstructions, labels = [], [], []
    bar = progress(total=count, desc="autoencoder report", unit="images", leave=False)
    for start in range(0, count, 250):
        items = [dataset.get(i) for i in range(start, min(start + 250, count))]
        x = torch.stack([item[0] for item in items]).to(device)
        originals.append(x.cpu())
        reconstructions.append(reconstruct(vae, x).clamp(-1, 1).cpu())
        labels += [item[1] for item in items]
        bar.update(len(items))
    bar.close()
    x, r = torch.cat(originals), torch.cat(reconstructions)
    report = {"psnr": float(psnr(r, x)), "num_images": count}
    if is_digit_images(dataset.num_classes, (cfg.image_size, cfg.image_size, dataset.channels)):
        classifier, targets = load_digit_classifier(), np.asarray(labels)
        report["digit_accuracy"] = classifier_accuracy(classifier, to_uint8(r).numpy(), targets)
        report["digit_accuracy_originals"] = classifier_accuracy(classifier, to_uint8(x).numpy(), targets)
    return report
