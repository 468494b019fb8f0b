"""The latent store: VAE posteriors of a dataset, encoded once, read memory-mapped while training.

fast-DiT's idea (https://github.com/chuanyangjin/fast-DiT) without its loss of augmentation: the store keeps
the posterior mean and std of each image and of its mirror image, so every read draws a fresh flip and a
fresh posterior sample, exactly as online encoding would. Written in shards, resumable, safe under torchrun.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ditkit.config import NO_VAE, VAE_LATENT_SCALE
from ditkit.data.autoencoder import check_vae_channels, load_vae, vae_geometry
from ditkit.data.class_names import readable_names
from ditkit.data.datasets import STORE_META_FILE, BaseDataset, draw_flip
from ditkit.data.image_size import pick_image_size
from ditkit.data.provenance import VaeRecord, recorded_spec, vae_fingerprint
from ditkit.data.workers import close_batches, worker_batches
from ditkit.runtime import distributed
from ditkit.runtime.errors import InputError
from ditkit.runtime.files import write_json
from ditkit.runtime.progress import progress
from ditkit.runtime.stopping import StopSignal, stopped

logger = logging.getLogger(__name__)

LATENT_SHARD_SIZE = 4096  # images per latent-store shard (the unit of work and of resume)
_CAPPED_WORKERS: set[tuple[int, int]] = set()  # (requested, usable) reductions already logged


def usable_workers(requested: int) -> int:
    """`requested` DataLoader workers, at most the CPUs this process may use (torch warns past that, with the
    same count); a reduction is logged once, at INFO."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this OS
        cpus = os.cpu_count() or 1
    if requested <= cpus:
        return requested
    if (requested, cpus) not in _CAPPED_WORKERS:
        _CAPPED_WORKERS.add((requested, cpus))
        logger.debug("data loading: %d workers, not %d (this machine lets ditkit use %d CPUs)", cpus, requested, cpus)
    return cpus


# Latent store.
#
# Layout of a store folder (written by `extract_latents`, read by `LatentStore`):
#   meta.json            header: count, latent_shape, scale, image_size, vae (absolute path or hub id), vae_sha256
#                        (its fingerprint), num_classes, class_names, shard_size, ...
#   mean-00000.npy ...   (n, V, C, h, w) unscaled posterior means; V = 2 (image, mirror image) or 1
#   std-00000.npy ...    (n, V, C, h, w) posterior stds, same dtype (float16 by default: half the disk,
#                        ~3 significant digits, far below the posterior noise)
#   labels-00000.npy ... (n,) int64
#   done-00000.json      {"written": k}: the first k rows of the shard are on disk (updated after a flush)
# Shard s holds images [s * shard_size, (s + 1) * shard_size). Rank r of W handles shards r, r + W, ...,
# each shard has exactly one writer, and resume continues each shard at its `written` count.

_META = STORE_META_FILE
_STORE_FORMAT = "ditkit-latent-store"
_META_MUST_MATCH = (
    "count",
    "latent_shape",
    "scale",
    "image_size",
    "vae",
    "vae_sha256",
    "mirror",
    "dtype",
    "shard_size",
)


def _shard_path(root: Path, kind: str, shard: int) -> Path:
    return root / f"{kind}-{shard:05d}.{'json' if kind == 'done' else 'npy'}"


def _read_meta(root: Path) -> dict[str, Any]:
    try:
        meta = json.loads((root / _META).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(
            f"{str(root)!r} is not a latent store ({err}); run extract-latents to create one", setting="data"
        ) from None
    if meta.get("format") != _STORE_FORMAT:
        raise InputError(
            f"{str(root / _META)!r} is not a ditkit latent-store header; pass another folder", setting="data"
        )
    return meta


def _shard_written(root: Path, shard: int) -> int:
    path = _shard_path(root, "done", shard)
    return int(json.loads(path.read_text())["written"]) if path.exists() else 0


def _shard_len(meta: dict[str, Any], shard: int) -> int:
    return min(meta["shard_size"], meta["count"] - shard * meta["shard_size"])


def store_vae(root: str | Path) -> VaeRecord:
    """The autoencoder the store at root was made with (path, fingerprint, scale), from its header alone."""
    return VaeRecord.from_config(_read_meta(Path(root)))


def store_progress(root: str | Path) -> tuple[int, int]:
    """(latents written, latents in total) of the store at root."""
    root = Path(root)
    meta = _read_meta(root)
    return sum(_shard_written(root, s) for s in range(meta["num_shards"])), meta["count"]


class LatentStore(BaseDataset):
    """Stored VAE posteriors; each `get` draws a fresh flip and a fresh posterior sample, times `scale`.

    This equals online encoding (DiT) in distribution, unlike fast-DiT's one frozen sample per image.
    `image_size` is the pixel size the latents came from; `latent_shape` is (C, h, w).
    """

    is_latent = True

    def __init__(self, root: str | Path, flip: bool = True) -> None:
        self.root = Path(root)
        self.meta = meta = _read_meta(self.root)
        written, total = store_progress(self.root)
        if written < total:
            raise InputError(
                f"latent store {str(root)!r} is incomplete: {written} of {total} latents written; "
                "rerun extract-latents with the same arguments to resume it",
                setting="data",
            )
        if flip and not meta["mirror"]:
            raise InputError(
                f"latent store {str(root)!r} holds no mirror images; pass flip=False or re-extract", setting="flip"
            )
        self._open_memmaps()
        labels = [_load(_shard_path(self.root, "labels", s), None) for s in range(meta["num_shards"])]
        self.labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        self.flip, self.scale, self.vae = flip, float(meta["scale"]), meta["vae"]
        self.vae_record = VaeRecord.from_config(meta)  # the autoencoder that made these latents
        self.class_names = readable_names(meta["class_names"]) if meta.get("class_names") else None
        c, h, w = (int(n) for n in meta["latent_shape"])
        self.latent_shape = (c, h, w)
        self.channels, self.image_size = self.latent_shape[0], int(meta["image_size"])
        self.num_classes = int(meta["num_classes"])

    def _open_memmaps(self) -> None:
        shards = range(self.meta["num_shards"])
        self.means = [_load(_shard_path(self.root, "mean", s)) for s in shards]
        self.stds = [_load(_shard_path(self.root, "std", s)) for s in shards]

    def __getstate__(self) -> dict[str, Any]:
        # Pickled memmaps carry their whole data: send paths to spawned workers, reopen there.
        return {k: v for k, v in self.__dict__.items() if k not in ("means", "stds")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open_memmaps()

    @property
    def item_shape(self) -> tuple[int, int, int]:
        return self.latent_shape

    def __len__(self) -> int:
        return int(self.meta["count"])

    def moments(self, index: int, mirror: bool = False) -> tuple[Tensor, Tensor]:
        """Stored unscaled posterior (mean, std), float32 (C, h, w), of image `index` or its mirror image."""
        shard, row = divmod(index, self.meta["shard_size"])
        view = 1 if mirror else 0
        mean = torch.from_numpy(self.means[shard][row, view].astype(np.float32))
        return mean, torch.from_numpy(self.stds[shard][row, view].astype(np.float32))

    def get(self, index: int, generator: torch.Generator | None = None) -> tuple[Tensor, int]:
        mean, std = self.moments(index, mirror=draw_flip(self.flip, generator))
        eps = torch.randn(mean.shape, generator=generator)
        return (mean + std * eps) * self.scale, int(self.labels[index])


def _load(path: Path, mmap_mode: Literal["r"] | None = "r", **memmap: Any) -> np.ndarray:
    """A shard's array (np.load, or with `memmap` np.lib.format.open_memmap), or InputError naming the file."""
    try:
        return np.lib.format.open_memmap(path, **memmap) if memmap else np.load(path, mmap_mode=mmap_mode)
    except (ValueError, EOFError) as err:  # numpy names no file: "mmap length is greater than file size"
        fix = f"({err}); delete the store folder and rerun extract-latents to make it again"
        raise InputError(f"latent-store file {str(path)!r} is damaged or truncated {fix}", setting="data") from None


Encoder = Callable[[Tensor], tuple[Tensor, Tensor]]


def _open_shard(root: Path, shard: int, shape: tuple[int, ...], dtype: str) -> tuple[np.ndarray, ...]:
    """Memmaps (mean, std, labels) of one shard: created empty when it has no progress yet."""
    mode = "r+" if _shard_written(root, shard) > 0 else "w+"
    mean = _load(_shard_path(root, "mean", shard), mode=mode, dtype=np.dtype(dtype), shape=shape)
    std = _load(_shard_path(root, "std", shard), mode=mode, dtype=np.dtype(dtype), shape=shape)
    labels = _load(_shard_path(root, "labels", shard), mode=mode, dtype=np.int64, shape=shape[:1])
    if mean.shape != shape or std.shape != shape:
        raise InputError(f"shard {shard} of {str(root)!r} has shape {mean.shape}, expected {shape}; delete the store")
    return mean, std, labels


def _prepare_store(root: Path, header: dict[str, Any]) -> dict[str, Any]:
    """Write meta.json, or check that an existing one describes the same extraction (for resume)."""
    root.mkdir(parents=True, exist_ok=True)
    if (root / _META).exists():
        meta = _read_meta(root)
        for key in _META_MUST_MATCH:
            if meta.get(key) != header[key]:
                raise InputError(
                    f"latent store {str(root)!r} was made with {key}={meta.get(key)!r}, now {header[key]!r}; "
                    "use a new output folder or delete the old one",
                    setting="out_dir",
                )
        return meta
    write_json(root / _META, header)  # every rank writes the same bytes; the rename makes it atomic
    return header


class _Plain(torch.utils.data.Dataset):
    """Items without augmentation randomness (extraction reads an un-flipped dataset)."""

    def __init__(self, dataset: BaseDataset) -> None:
        self.dataset = dataset

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.dataset.get(index, None)


def _extraction_plan(
    meta: dict[str, Any], root: Path, rank: int, world_size: int, batch_size: int
) -> list[tuple[int, int, int]]:
    """(shard, first row, stop row) of each batch still to encode by this rank; batches never cross shards."""
    plan = []
    for shard in range(rank, meta["num_shards"], world_size):
        length = _shard_len(meta, shard)
        for row in range(_shard_written(root, shard), length, batch_size):
            plan.append((shard, row, min(row + batch_size, length)))
    return plan


@torch.inference_mode()
def extract_latents(
    dataset: BaseDataset,
    encoder: Encoder | Any,
    out_dir: str | Path,
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    scale: float | None = None,
    vae_id: str | None = None,
    mirror: bool = True,
    dtype: Literal["float16", "float32"] = "float16",
    shard_size: int = LATENT_SHARD_SIZE,
) -> Path:
    """Encode every image (and its mirror image) of an un-flipped dataset into a latent store at out_dir.

    `encoder` maps images (N, C, H, W) in [-1, 1] to the unscaled posterior (mean, std), float (N, c, h, w);
    an object with `encode_moments` (an `Autoencoder`) also works and then gives `scale` and `vae_id`.
    Rank r of world_size writes shards r, r + world_size, ...; rerunning with any world size resumes
    each shard where it stopped. The store is complete once every rank has returned (`store_progress`).
    `num_workers` decode images in parallel (torch DataLoader workers).
    """
    if getattr(dataset, "flip", False):
        raise InputError(
            "extract_latents needs an un-flipped dataset (the store keeps mirror images); pass flip=False",
            setting="flip",
        )
    if len(dataset) == 0 or batch_size < 1 or shard_size < 1 or not 0 <= rank < world_size:
        raise InputError(
            f"need a non-empty dataset, batch_size and shard_size >= 1 and 0 <= rank < world_size; got "
            f"{len(dataset)} items, {batch_size}, {shard_size}, {rank}, {world_size}"
        )
    encode = getattr(encoder, "encode_moments", encoder)
    vae = vae_id if vae_id is not None else str(getattr(encoder, "name", ""))
    x0 = dataset.get(0)[0]
    probe_mean, _ = encode(x0[None].to(device))  # the latent shape, whatever the VAE
    header = {
        "format": _STORE_FORMAT,
        "version": 1,
        "count": len(dataset),
        "latent_shape": list(probe_mean.shape[1:]),
        "num_shards": math.ceil(len(dataset) / shard_size),
        "scale": float(scale if scale is not None else getattr(encoder, "scale", VAE_LATENT_SCALE)),
        "vae": recorded_spec(vae) if vae else "",  # absolute: the store is read from other folders
        "vae_sha256": vae_fingerprint(vae) if vae else None,  # which autoencoder, whatever its path
        "image_size": dataset.image_size,
        "image_channels": x0.shape[0],
        "num_classes": dataset.num_classes,
        "class_names": list(getattr(dataset, "class_names", None) or []) or None,  # folders, npz key, labels file
        "mirror": mirror,
        "dtype": dtype,
        "shard_size": shard_size,
    }
    root = Path(out_dir)
    meta = _prepare_store(root, header)
    views, plan = (2 if mirror else 1), _extraction_plan(meta, root, rank, world_size, batch_size)
    batches = [list(range(s * shard_size + row, s * shard_size + stop)) for s, row, stop in plan]
    # SIGINT/SIGTERM (to the group too: the workers ignore them) stop after the batch being written.
    stop_signal = StopSignal("stopping after the batch being written")
    loader = worker_batches(_Plain(dataset), batches, usable_workers(num_workers))
    current, memmaps = -1, ()  # the shard being written and its (mean, std, labels) memmaps
    bar = progress(total=sum(map(len, batches)), desc="extract-latents", unit="images", disable=rank != 0)
    try:
        for (shard, row, stop), (x, y) in zip(plan, loader, strict=True):
            if shard != current:
                shape = (_shard_len(meta, shard), views, *meta["latent_shape"])
                current, memmaps = shard, _open_shard(root, shard, shape, dtype)
            mean_mm, std_mm, labels_mm = memmaps
            x = x.to(device)
            mean, std = encode(torch.cat([x, x.flip(-1)]) if mirror else x)  # (V n, C, h, w): images, then mirrors
            mean_mm[row:stop] = mean.unflatten(0, (views, stop - row)).transpose(0, 1).cpu().numpy()
            std_mm[row:stop] = std.unflatten(0, (views, stop - row)).transpose(0, 1).cpu().numpy()
            labels_mm[row:stop] = y.numpy()
            for mm in memmaps:
                mm.flush()  # the data reaches the file before the progress count claims it
            write_json(_shard_path(root, "done", shard), {"written": stop})
            bar.update(stop - row)
            if stop_signal.signum:  # this rank's own flag: ranks write different numbers of batches (no collective)
                break
    finally:
        close_batches(loader)
        stop_signal.restore()
    bar.close()
    if stop_signal.signum:
        done, total = store_progress(root)
        raise stopped(stop_signal.signum, f"with {done} of {total} latents written (every batch kept)")
    written, total = store_progress(root)
    logger.info("latent store %s: %d of %d latents written (rank %d done)", root, written, total, rank)
    return root


def extraction_image_size(data: str, image_size: int | None, vae: str) -> int | None:
    """The image size of `ditkit extract-latents` on `data` (logged before any work): `image_size` as asked,
    else the images' own (at most 256 px, a multiple of twice the VAE's downsampling so that /2 models fit),
    else the VAE's config.json `sample_size`, else the dataset's default (`pick_image_size`)."""
    pixel = vae.strip().lower() == NO_VAE  # refused by extract_latents_job, after the data's own checks
    multiple = 1 if pixel else 2 * vae_geometry(vae)[1]
    return pick_image_size(data, image_size, vae=None if pixel else vae, multiple=multiple)


def extract_latents_job(
    dataset: BaseDataset,
    vae: str,
    out_dir: str | Path,
    *,
    batch_size: int = 32,
    num_workers: int = 4,
    device: str = "auto",
) -> tuple[int, int] | None:
    """`ditkit extract-latents`: this rank's share of the store of an un-flipped dataset (one process or
    torchrun); rank 0 returns (latents written, total) once every rank is done, other ranks None.

    The VAE and the image size are checked before any process group, network or VAE: the size must be a
    multiple of the VAE's downsampling (`vae_geometry` reads it from the VAE's config without loading it).
    """
    if vae.strip().lower() == NO_VAE:
        raise InputError(
            "extract-latents needs a VAE: vae=FOLDER_OR_HUB_ID (e.g. stabilityai/sd-vae-ft-ema)", setting="vae"
        )
    _, downsample = vae_geometry(vae)
    check_vae_channels(vae, dataset)
    if dataset.image_size % downsample:
        fit = max(downsample, dataset.image_size // downsample * downsample)
        raise InputError(
            f"image_size {dataset.image_size} is not a multiple of the downsampling {downsample} of VAE {vae!r} "
            f"(its latents would cover {dataset.image_size // downsample * downsample} px); pass image_size={fit}",
            setting="image_size",
        )
    info = distributed.init(device)
    encoder = load_vae(vae, info.device)
    assert encoder is not None  # not "none": checked above
    extract_latents(
        dataset,
        encoder,
        out_dir,
        batch_size=batch_size,
        rank=info.rank,
        world_size=info.world_size,
        device=info.device,
        num_workers=num_workers,
    )
    distributed.barrier()
    done = store_progress(out_dir) if info.is_main else None
    distributed.shutdown()
    return done
