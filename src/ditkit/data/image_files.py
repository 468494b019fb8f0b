"""uint8 image sets in the layouts ditkit reads and writes: arrays, ADM's .npz (`arr_0`, streamed batch by
batch so 50K x 256 x 256 x 3 never sits in memory), .npy and folders of PNG/JPEG files.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image
from torch import Tensor

from ditkit.runtime.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
ImageSource = np.ndarray | Tensor | str | os.PathLike


@dataclass
class ImageSet:
    """A uint8 NHWC image source that can be read batch by batch."""

    num_images: int
    source: np.ndarray | Path
    kind: str  # "array", "npz", "folder"
    files: list[Path] = field(default_factory=list)

    def batches(self, batch_size: int, limit: int) -> Iterator[np.ndarray]:
        if self.kind == "array":
            for i in range(0, limit, batch_size):
                yield check_images(np.asarray(self.source[i : min(i + batch_size, limit)]))
        elif self.kind == "npz":
            yield from _npz_batches(self.source, batch_size, limit)
        else:
            for i in range(0, limit, batch_size):
                yield check_images(np.stack([_read_image(p) for p in self.files[i : min(i + batch_size, limit)]]))


def check_images(images: np.ndarray | Tensor) -> np.ndarray:
    x = images.numpy(force=True) if isinstance(images, Tensor) else np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if not x.flags.writeable:  # memory-mapped or streamed bytes; torch warns on read-only arrays
        x = x.copy()
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise InputError(
            f"images must be uint8 (N, H, W, C) with C in {{1, 3}} (the ADM npz layout); got "
            f"dtype {x.dtype}, shape {x.shape}: convert with ((x + 1) * 127.5).round().clip(0, 255)"
        )
    return x


def _read_image(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        arr = np.asarray(img.convert("L" if img.mode in ("L", "I", "I;16", "1") else "RGB"))
    return arr[..., None] if arr.ndim == 2 else arr


def _read_npy_header(f: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = reader(f)
    if fortran_order:
        raise InputError("Fortran-ordered image arrays are not supported; save with np.savez(path, arr_0=x)")
    return shape, dtype


def _npz_image_key(path: Path) -> str:
    with zipfile.ZipFile(path) as zf:
        names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    if "arr_0" in names:
        return "arr_0"
    if "images" in names:
        return "images"
    raise InputError(
        f"{path} holds no images under 'arr_0' or 'images' (keys: {names}); save with np.savez(path, arr_0=uint8_nhwc)"
    )


def _npz_batches(path: Path, batch_size: int, limit: int) -> Iterator[np.ndarray]:
    """Stream an .npz member batch by batch, so a 50K x 256 x 256 x 3 array never sits in memory."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{_npz_image_key(path)}.npy") as f:
        shape, dtype = _read_npy_header(f)
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        for i in range(0, limit, batch_size):
            n = min(batch_size, limit - i)
            buf = f.read(n * row_bytes)
            if len(buf) != n * row_bytes:
                raise InputError(f"{path}: array data ends early (corrupt or truncated file)")
            yield check_images(np.frombuffer(buf, dtype=dtype).reshape(n, *shape[1:]))


def open_images(source: ImageSource) -> ImageSet:
    """Wrap an array, an .npz (`arr_0`), an .npy or a folder of images as a batch-readable source."""
    if isinstance(source, (np.ndarray, Tensor)):
        arr = check_images(source)
        return ImageSet(num_images=len(arr), source=arr, kind="array")
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        return ImageSet(num_images=len(files), source=path, kind="folder", files=files)
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r")
        check_images(arr[:1])
        return ImageSet(num_images=len(arr), source=arr, kind="array")
    if path.suffix == ".npz" and path.is_file():
        with zipfile.ZipFile(path) as zf, zf.open(f"{_npz_image_key(path)}.npy") as f:
            shape, _ = _read_npy_header(f)
        return ImageSet(num_images=int(shape[0]), source=path, kind="npz")
    raise InputError(
        f"cannot read images from {source!r}: pass a uint8 NHWC array, an .npz with arr_0, "
        "an .npy, or a folder of PNG/JPEG files"
    )
