"""What the training loop reads: any dataset opened by name and checked against the model, the online
VAE, and deterministic, resumable batches for each rank.

Every batch is a function of (seed, step): the shuffle of each epoch, the rows of each rank and each item's
augmentation (flip, latent noise) come from generators seeded by tuples, so a resumed or re-sharded run
sees exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from ditkit.config import TrainConfig
from ditkit.data.autoencoder import Autoencoder, load_vae, vae_geometry
from ditkit.data.datasets import (
    STORE_META_FILE,
    BaseDataset,
    DigitsDataset,
    EmbeddedMNIST,
    ImageFolderDataset,
    NpzDataset,
    check_image_folder,
)
from ditkit.data.latent_store import LatentStore, usable_workers
from ditkit.data.workers import worker_batches
from ditkit.runtime.errors import InputError
from ditkit.runtime.seeds import Stream, mix_seed

logger = logging.getLogger(__name__)


def steps_per_epoch(num_items: int, global_batch_size: int) -> int:
    """Full global batches per epoch (the last partial batch of each epoch is dropped)."""
    return num_items // global_batch_size


class _StepBatchSampler:
    """Yields, from `start_step` on forever, rank r's slice of each global batch as (index, item seed)."""

    def __init__(self, num_items: int, global_batch: int, rank: int, world_size: int, seed: int, start_step: int):
        self.num_items, self.global_batch = num_items, global_batch
        self.seed, self.start_step = seed, start_step
        self.per_rank = global_batch // world_size
        self.offset = rank * self.per_rank

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_epoch = steps_per_epoch(self.num_items, self.global_batch)
        epoch, perm = -1, torch.empty(0, dtype=torch.long)
        step = self.start_step
        while True:
            if step // per_epoch != epoch:  # jump straight to the epoch of `step`: no replay
                epoch = step // per_epoch
                order = torch.Generator().manual_seed(mix_seed(self.seed, Stream.DATA_ORDER, epoch))
                perm = torch.randperm(self.num_items, generator=order)
            first = (step % per_epoch) * self.global_batch + self.offset
            indices = perm[first : first + self.per_rank].tolist()
            yield [(i, mix_seed(self.seed, Stream.DATA_ITEM, epoch, i)) for i in indices]
            step += 1


class _SeededItems(torch.utils.data.Dataset):
    """Map (index, item seed) -> dataset.get(index, generator seeded with item seed)."""

    def __init__(self, dataset: BaseDataset) -> None:
        self.dataset = dataset

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int]:
        index, seed = key
        return self.dataset.get(index, torch.Generator().manual_seed(seed))


def build_loader(
    dataset: BaseDataset,
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    start_step: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Infinite deterministic batches (x (B/W, C, H, W) float32, y (B/W,) int64) for rank r of W.

    `batch_size` is the GLOBAL batch B. Epoch e shuffles with a generator seeded from (seed, e) and drops
    its last partial batch; rank r takes rows [r B/W, (r+1) B/W) of each global batch. Item augmentation
    (flip, latent noise) uses a generator seeded from (seed, e, index), so batches depend on neither the
    world size nor the workers, and `start_step=k` yields exactly the batches an uninterrupted run sees
    from step k on, without touching earlier ones.
    """
    if batch_size < 1 or world_size < 1 or batch_size % world_size:
        raise InputError(
            f"global batch size {batch_size} must be a positive multiple of the world size {world_size}; "
            "change global_batch_size or the number of processes",
            setting="global_batch_size",
        )
    if not 0 <= rank < world_size or start_step < 0:
        raise ValueError(f"need 0 <= rank < world_size and start_step >= 0; got {rank}, {world_size}, {start_step}")
    if len(dataset) < batch_size:
        raise InputError(
            f"dataset has {len(dataset)} items, fewer than the global batch size {batch_size}; lower the batch size",
            setting="global_batch_size",
        )
    sampler = _StepBatchSampler(len(dataset), batch_size, rank, world_size, seed, start_step)
    # Workers ignore SIGINT/SIGTERM (ditkit.data.workers): the caller's StopSignal decides, then `close_batches`.
    return worker_batches(_SeededItems(dataset), sampler, usable_workers(num_workers), pin_memory)


# Opening by name.


def open_dataset(spec: str | None, image_size: int | None = None, flip: bool = True) -> BaseDataset:
    """Open a dataset from a spec.

    None or "mnist" (also "mnist:test", "mnist:all"): embedded MNIST (default 32 px, never flipped);
    "digits": sklearn digits (default 32 px); a folder with meta.json: LatentStore (image_size, if
    given, must match the store's); another folder: ImageFolderDataset (image_size required); a .npz
    file: NpzDataset.
    """
    name = (spec or "mnist").strip()
    if name.lower() in ("mnist", "mnist:train", "mnist:test", "mnist:all", "digits"):
        if flip:
            logger.info("random flips are off for %s (digits are not mirror symmetric)", name)
        if name.lower() == "digits":
            return DigitsDataset(image_size or 32)
        split = {"": "train", "train": "train", "test": "test", "all": "all"}[name.lower().partition(":")[2]]
        return EmbeddedMNIST(split, image_size or 32)
    path = Path(name).expanduser()
    if path.is_dir() and (path / STORE_META_FILE).exists():
        store = LatentStore(path, flip=flip)
        if image_size is not None and image_size != store.image_size:
            raise InputError(
                f"latent store {name!r} holds {store.image_size} px images, not {image_size}; "
                f"pass image_size={store.image_size} or extract a new store",
                setting="image_size",
            )
        return store
    if path.is_dir():
        if image_size is None:
            raise InputError(
                f"image folder {name!r} needs an image size; pass image_size (e.g. 256)", setting="image_size"
            )
        dataset = ImageFolderDataset(path, image_size, flip)
        check_image_folder(dataset)  # every file's header, before any VAE or model: the first bad one is named
        return dataset
    if path.suffix == ".npz" and path.is_file():
        return NpzDataset(path, image_size, flip)
    raise InputError(
        f"dataset {name!r} not found; pass 'mnist', 'digits', an image folder, a latent store folder or a .npz file",
        setting="data",
    )


def check_num_classes(dataset: BaseDataset, num_classes: int) -> None:
    """Raise if a class-conditional model's label count differs from the dataset's (0 = unconditional)."""
    if num_classes == 0 or dataset.num_classes == num_classes:
        return
    fix = (
        f"pass num_classes={dataset.num_classes}"
        if dataset.num_classes
        else "the data is unlabelled; pass num_classes=0 for an unconditional model"
    )
    raise InputError(
        f"dataset has {dataset.num_classes} classes but the model has {num_classes}; {fix} "
        "(or use a preset/dataset that agree)",
        setting="num_classes",
    )


# The training data of a run.


def check_training_data(cfg: TrainConfig) -> tuple[BaseDataset, tuple[int, int, int]]:
    """(dataset, model input shape): the data opened and checked against the model config before any VAE,
    model or run folder is touched. Every mismatch (files, classes, channels, size) is an InputError; a
    VAE's geometry is read from its config (`vae_geometry`), not loaded."""
    spec = cfg.data
    digits = spec is None or spec.strip().lower().partition(":")[0] in ("mnist", "digits")
    flip = not digits if cfg.flip is None else cfg.flip
    if cfg.flip is None and spec and (Path(spec) / STORE_META_FILE).is_file():
        flip = bool(LatentStore(spec, flip=False).meta.get("mirror", False))  # auto: if mirrors exist
    dataset = open_dataset(spec, cfg.image_size, flip)
    check_num_classes(dataset, cfg.model.num_classes)
    if dataset.is_latent:
        shape, what = dataset.item_shape, f"latents of latent store {spec!r}"
    elif cfg.is_latent:
        channels, downsample = vae_geometry(cfg.vae)
        check_downsampling(dataset.image_size, downsample)
        size = dataset.image_size // downsample
        shape, what = (channels, size, size), f"VAE latents of {dataset.image_size} px images"
    else:
        shape, what = dataset.item_shape, f"{dataset.image_size} px images (pixel space)"
    _check_model_shape(cfg, shape, what)
    return dataset, shape


def open_training_data(
    cfg: TrainConfig,
    device: torch.device,
    checked: tuple[BaseDataset, tuple[int, int, int]] | None = None,
) -> tuple[BaseDataset, Autoencoder | None, tuple[int, int, int]]:
    """(dataset, online VAE encoder or None, model input shape), checked against the model config.

    `checked` is `check_training_data(cfg)`'s answer when the caller checked first (else it runs here); the
    VAE is loaded only then, and its own channels and downsampling are checked again.
    """
    dataset, shape = checked or check_training_data(cfg)
    encoder = None
    if not dataset.is_latent and cfg.is_latent:
        encoder = load_vae(cfg.vae, device)
        assert encoder is not None
        shape = _latent_shape(cfg, dataset, encoder)
        _check_model_shape(cfg, shape, f"VAE latents of {dataset.image_size} px images")
    return dataset, encoder, shape


def _check_model_shape(cfg: TrainConfig, shape: tuple[int, int, int], what: str) -> None:
    m = cfg.model
    if shape != (m.in_channels, m.input_size, m.input_size):
        raise InputError(
            f"the model takes {m.in_channels}x{m.input_size}x{m.input_size} inputs but the data "
            f"give {'x'.join(map(str, shape))} ({what}); choose a preset, image_size or vae that match"
        )


def check_downsampling(image_size: int, downsample: int) -> None:
    """Raise unless a VAE with this downsampling encodes image_size px images into whole latents."""
    if image_size % downsample:
        fit = max(downsample, image_size // downsample * downsample)
        raise InputError(
            f"image_size {image_size} is not a multiple of the VAE downsampling {downsample}; pass image_size={fit}",
            setting="image_size",
        )


def _latent_shape(cfg: TrainConfig, dataset: BaseDataset, encoder: Autoencoder) -> tuple[int, int, int]:
    vae_in = int(encoder.vae.config.in_channels)
    if dataset.channels != vae_in:
        raise InputError(
            f"VAE {cfg.vae!r} encodes {vae_in}-channel images but the data have "
            f"{dataset.channels} channels; use vae='none' (pixel space) or another VAE",
            setting="vae",
        )
    check_downsampling(dataset.image_size, encoder.downsample)
    size = dataset.image_size // encoder.downsample
    return (encoder.latent_channels, size, size)


def encode_batch(encoder: Autoencoder, x: Tensor, noise: Tensor, chunk: int) -> Tensor:
    """Scaled VAE latents of images x: posterior mean + std * noise (the step's draw), `chunk` rows at a time."""
    return torch.cat([encoder.encode(x[i : i + chunk], noise=noise[i : i + chunk]) for i in range(0, len(x), chunk)])


Decoder = Autoencoder | None | Literal[False]
"""What decodes a run's samples: its VAE, None in pixel space, False when they cannot be decoded (no grids)."""


def decoder_for(
    cfg: TrainConfig,
    dataset: BaseDataset,
    encoder: Autoencoder | None,
    shape: tuple[int, int, int],
    device: torch.device,
) -> tuple[Decoder, tuple[int, int, int]]:
    """(VAE to decode samples, None for pixel space, or False when samples cannot be shown) and the
    (H, W, C) of decoded images. A latent store's own VAE is loaded only when grids or evaluation are on."""
    if encoder is not None:
        return encoder, (dataset.image_size, dataset.image_size, dataset.channels)
    if not isinstance(dataset, LatentStore):
        return None, (shape[1], shape[2], shape[0])
    image_shape = (dataset.image_size, dataset.image_size, int(dataset.meta.get("image_channels", 3)))
    if not (cfg.sample_every_steps or cfg.eval_every_steps):
        return False, image_shape
    spec = cfg.vae if cfg.is_latent else dataset.vae
    try:
        return load_vae(spec, device, scale=dataset.scale), image_shape
    except ValueError as err:
        logger.warning(
            "sample grids and evaluation off: cannot load the latent store's VAE %r (%s); pass vae (--vae)", spec, err
        )
        return False, image_shape
