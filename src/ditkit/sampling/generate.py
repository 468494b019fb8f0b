"""Image generation: the one seeded, batched sampling routine, and resumable, sharded 50K .npz jobs.

Each image i of a job has its own seed and label, so a result depends only on (seed, index, settings):
never on batch size, on the order of batches, or on the number of processes. The .npz follows the
ADM evaluator layout (`arr_0`: uint8 (N, H, W, C)) and adds `labels`.
"""

from __future__ import annotations

import json
import logging
import shutil
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ditkit.config import DiffusionConfig, SampleConfig, check_sampler, default_diffusion
from ditkit.data.autoencoder import Autoencoder, to_uint8
from ditkit.diffusion.samplers import SeedNoise, initial_noise, make_denoiser, sample_loop
from ditkit.flow.objective import flow_from_config
from ditkit.flow.samplers import sample_flow
from ditkit.model.dit import DiT
from ditkit.runtime import backend, distributed
from ditkit.runtime.distributed import DistInfo
from ditkit.runtime.errors import InputError
from ditkit.runtime.files import check_free_space, save_npz, write_json
from ditkit.runtime.seeds import Stream, image_seeds, stream_rng
from ditkit.runtime.stopping import StopSignal, stopped
from ditkit.sampling.grid import save_labelled_grid

log = logging.getLogger(__name__)

Labels = Sequence[int] | Tensor | None  # class ids (N,), soft labels (N, rows), or None (unconditional)


@dataclass(frozen=True)
class SamplingModel:
    """A DiT with what sampling it needs: the process it was trained with (diffusion or flow) and its VAE (None:
    pixels).

    What `ditkit.training.run.open_for_sampling` returns and the sampling jobs below take.
    """

    model: DiT
    diffusion: DiffusionConfig
    vae: Autoencoder | None
    class_names: tuple[str, ...] | None = None  # class i's name, from its run; None: ImageNet's or "class i"

    @property
    def pixel_space(self) -> bool:
        return self.vae is None


def job_labels(num: int, num_classes: int, seed: int, class_balanced: bool) -> np.ndarray:
    """Labels of a sampling job: uniform draws, or each class equally often in a seeded order."""
    if num_classes == 0:
        return np.zeros(num, dtype=np.int64)
    rng = stream_rng(seed, Stream.JOB_LABELS)
    if class_balanced:
        return rng.permutation(np.arange(num) % num_classes).astype(np.int64)
    return rng.integers(0, num_classes, num).astype(np.int64)


# Sampling.


_COMPILED: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


def network(model: nn.Module, precision: str, device: torch.device, compile: bool = False) -> Callable[..., Tensor]:
    """model(x, t, y) in the resolved `precision` (compiled once per model when asked); outputs are fp32,
    so the diffusion arithmetic stays fp32 whatever the network runs in."""
    if compile:
        if model not in _COMPILED:
            _COMPILED[model] = torch.compile(model, dynamic=False)  # shapes repeat every step of the loop
        model = _COMPILED[model]
    if precision != "bf16":
        return model

    def forward(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        with backend.autocast(device, precision):
            out = model(x, t) if y is None else model(x, t, y)
        return out.float()

    return forward


def generate(
    model: DiT,
    labels: Labels,
    seeds: Sequence[int],
    config: SampleConfig,
    *,
    diffusion: DiffusionConfig | None = None,
    vae: Autoencoder | None = None,
    device: torch.device | str | None = None,
    noise: Tensor | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Sample one image per seed: uint8 (N, H, W, C), decoded through `vae` when the model is latent.

    The one sampling routine of ditkit (the CLI, training grids and evaluation, walks, the demo, the web
    page and the studies call it). Image i depends only on (seeds[i], labels[i], config, diffusion), not
    on the batch size. `noise` (N, C, H, W) replaces the seeds' x_T (walks interpolate it); `diffusion`
    is the process the model was trained with (default: the paper's): a flow model (objective "flow") samples
    with the flow samplers (`ditkit.flow.samplers`), a diffusion model with `sample_loop`; config.sampler must
    be of its kind (`ditkit.config.for_process` picks one). x_0 predictions are clamped in pixel space unless
    `config.clip_denoised` says otherwise (diffusion only).
    """
    model_config = model.config
    device = torch.device(device) if device is not None else next(model.parameters()).device
    diffusion = diffusion or default_diffusion(model_config)
    check_sampler(config.sampler, diffusion)
    if config.clip_denoised is None:  # "on in pixel space only"
        config = config.replace(clip_denoised=vae is None)
    shape = (model_config.in_channels, model_config.input_size, model_config.input_size)
    precision = backend.resolve_precision(config.precision, device)
    forward = network(model, precision, device, config.compile)
    batch = config.batch_size_on(device.type)
    if labels is not None and model_config.num_classes > 0:
        label_tensor = torch.as_tensor(labels if isinstance(labels, Tensor) else list(labels), device=device)
    else:
        label_tensor = None
    out = []
    with backend.precision_scope(precision, device):
        for start in range(0, len(seeds), batch):
            batch_seeds = list(seeds[start : start + batch])
            rows = slice(start, start + len(batch_seeds))
            x_T = noise[rows].to(device) if noise is not None else initial_noise(batch_seeds, shape, device)
            batch_labels = label_tensor[rows] if label_tensor is not None else None
            if diffusion.is_flow:
                x = _flow_batch(model, x_T, batch_labels, config, batch_seeds, diffusion, forward)
            else:
                x = sample_loop(
                    model,
                    x_T,
                    batch_labels,
                    config,
                    seeds=batch_seeds,
                    diffusion=diffusion,
                    progress=progress,
                    forward=forward,
                )
            if vae is not None:
                x = vae.decode(x)  # fp32 (TF32 under "tf32"/"bf16" on CUDA): decoding is ~2% of a 250-step image
            out.append(to_uint8(x).cpu().numpy())
    channels = 3 if vae is not None else shape[0]
    return np.concatenate(out) if out else np.zeros((0, *shape[1:], channels), np.uint8)


@torch.no_grad()
def _flow_batch(
    model: DiT,
    x_0: Tensor,
    labels: Tensor | None,
    config: SampleConfig,
    seeds: list[int],
    process: DiffusionConfig,
    forward: Callable[..., Tensor],
) -> Tensor:
    """One batch of a flow model from its noise x_0 (N, C, H, W) to data: guidance as for diffusion
    (`make_denoiser`), SDE step noise continuing each seed's stream after x_0; logs the model evaluations."""
    assert process.flow is not None  # DiffusionConfig fills it for objective "flow"
    denoise = make_denoiser(model, labels, config, forward=forward)
    step_noise = SeedNoise.after_initial(seeds, x_0.shape[1:], x_0.device).randn_like
    result = sample_flow(flow_from_config(process.flow), denoise, x_0, config, step_noise)
    log.debug("%s: %d model evaluations for %d images", config.sampler, result.nfe, len(seeds))
    return result.x


def sample_npz(
    model: DiT,
    out_path: str | Path,
    num: int,
    config: SampleConfig,
    *,
    seed: int = 0,
    class_balanced: bool = False,
    diffusion: DiffusionConfig | None = None,
    vae: Autoencoder | None = None,
    device: torch.device | str | None = None,
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
        raise InputError(f"num must be >= 1; got {num}", setting="num")
    out_path = Path(out_path)
    parts = _parts_dir(out_path)
    parts.mkdir(parents=True, exist_ok=True)
    chunk = chunk_size or config.batch_size_on(torch.device(device or next(model.parameters()).device).type) * 4
    model_config = model.config
    diffusion = diffusion or default_diffusion(model_config)
    labels = job_labels(num, model_config.num_classes, seed, class_balanced)
    job = {
        "num": num,
        "seed": seed,
        "class_balanced": class_balanced,
        "chunk": chunk,
        "settings": asdict(config),
        "diffusion": asdict(diffusion),
    }
    _check_job(parts, job, rank)
    chunks = [(c, s, min(s + chunk, num)) for c, s in enumerate(range(0, num, chunk)) if c % world_size == rank]
    # SIGINT/SIGTERM stop between chunks: each chunk is saved atomically, so a rerun redoes none of them.
    stop_signal = StopSignal("stopping after the chunk being sampled")
    try:
        for c, start, stop in chunks:
            path = parts / f"chunk_{c:06d}.npz"
            if path.exists():
                continue
            if stop_signal.signum:  # this rank's own flag (ranks have different chunk counts: no collective)
                done = sum((parts / f"chunk_{i:06d}.npz").exists() for i in range(-(-num // chunk)))
                raise stopped(stop_signal.signum, f"with {done} of {-(-num // chunk)} chunks in {str(parts)!r}")
            seeds = image_seeds(seed, stop - start, start)
            images = generate(
                model,
                labels[start:stop].tolist(),
                seeds,
                config,
                diffusion=diffusion,
                vae=vae,
                device=device,
                progress=progress,
            )
            save_npz(path, images=images, labels=labels[start:stop], start=start)
            log.info("rank %d: images %d..%d done", rank, start, stop - 1)
    finally:
        stop_signal.restore()
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
            raise InputError(f"chunk {c} of {out_path} is missing: re-run the same sample command to finish it")
        with np.load(path) as data:
            images.append(data["images"])
            labels.append(data["labels"])
    return save_npz(out_path, arr_0=np.concatenate(images), labels=np.concatenate(labels))


def _parts_dir(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".parts")


def _check_job(parts: Path, job: dict[str, Any], rank: int) -> None:
    """A resumed job must have the same settings, or its chunks would mix two different jobs."""
    path = parts / "job.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(job)):
            raise InputError(
                f"{parts} holds chunks of a different sampling job ({old}); delete that folder or use another npz path",
                setting="npz",
            )
    elif rank == 0:
        write_json(path, job)


# The `ditkit sample` jobs.


def sample_grid(
    opened: SamplingModel,
    out_dir: str | Path,
    classes: list[int],
    per_class: int,
    config: SampleConfig,
    *,
    seed: int = 0,
) -> tuple[Path, int]:
    """`per_class` images of each class (image i has seed image_seed(seed, i)) as a captioned grid with the
    images beside it in `out_dir`; returns (grid path, number of images)."""
    num_classes = opened.model.config.num_classes
    labels = [c for c in classes for _ in range(per_class)]
    images = generate(
        opened.model,
        labels if num_classes else None,
        image_seeds(seed, len(labels)),
        config,
        diffusion=opened.diffusion,
        vae=opened.vae,
        progress=True,
    )
    path = save_labelled_grid(
        images, labels, out_dir, nrow=per_class, num_classes=num_classes, class_names=opened.class_names
    )
    return path, len(images)


def sample_npz_job(
    opened: SamplingModel,
    npz: str | Path,
    num: int,
    config: SampleConfig,
    info: DistInfo,
    *,
    seed: int = 0,
    class_balanced: bool = False,
    overwrite: bool = False,
) -> Path | None:
    """`num` samples into an ADM-layout .npz, sharded over the ranks of a torchrun job, resumable; rank 0
    assembles the file, removes its parts folder and returns its path (None on other ranks). `info` is the
    caller's `distributed.init(device)`: its device (the one `opened` was loaded on) takes every tensor.

    `overwrite` replaces a finished .npz: the parts an older ditkit left beside it are deleted first (a job
    still unfinished has no .npz yet and resumes). The old .npz stays until the new one replaces it."""
    parts = _parts_dir(Path(npz))
    if info.is_main:  # the parts and the assembled file (uint8), before any sampling
        vae, config_ = opened.vae, opened.model.config
        side = config_.input_size * (vae.downsample if vae is not None else 1)
        channels = int(getattr(vae.vae.config, "out_channels", 3)) if vae is not None else config_.in_channels
        check_free_space(Path(npz).parent, 2 * num * side * side * channels + (1 << 20), f"{num:,} samples")
    if overwrite and info.is_main and Path(npz).is_file() and parts.is_dir():
        shutil.rmtree(parts)
    distributed.barrier()
    sample_npz(
        opened.model,
        npz,
        num,
        config,
        seed=seed,
        class_balanced=class_balanced,
        diffusion=opened.diffusion,
        vae=opened.vae,
        device=info.device,
        rank=info.rank,
        world_size=info.world_size,
        progress=info.is_main,
    )
    distributed.barrier()
    path = None
    if info.is_main:
        path = assemble_npz(npz)
        shutil.rmtree(parts, ignore_errors=True)  # after the .npz is written and fsynced: no leftovers
    distributed.shutdown()
    return path
