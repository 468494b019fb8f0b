"""uint8 image sets in the layouts ditkit reads and writes: arrays, ADM's .npz (`arr_0`, streamed batch by
batch so 50K x 256 x 256 x 3 never sits in memory), .npy and image folders in the layouts training reads
(flat, or `<class>/*.png`), checked like training data.
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

from ditkit.data.datasets import IMAGE_EXTENSIONS, _list_images, check_image_folder
from ditkit.runtime.errors import InputError


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
                yield check_images(_stack(self.files[i : min(i + batch_size, limit)]))


ImageSource = np.ndarray | Tensor | str | os.PathLike | ImageSet


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


def folder_images(folder: Path) -> list[Path]:
    """The images of `folder` as training reads them: `<class>/**/<image>` (classes in sorted order), else the
    folder's own images, recursively (the same extensions: `ditkit.data.datasets.IMAGE_EXTENSIONS`).

    Checked like training data before any image is used (`check_image_folder`): an empty folder, or the first
    file that is not a readable image, is an InputError naming it.
    """
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [p for d in (classes or [folder]) for p in _list_images(d)]
    if not files:
        raise InputError(
            f"image folder {str(folder)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}); pass a folder of "
            "images or of <class>/ subfolders of images, an .npz (arr_0) or an ADM reference batch"
        )
    check_image_folder(folder)
    return files


def _stack(files: list[Path]) -> np.ndarray:
    images = [_read_image(p) for p in files]
    for path, image in zip(files, images):
        if image.shape != images[0].shape:
            raise InputError(
                f"{str(path)!r} is {'x'.join(map(str, image.shape))} (height x width x channels) but "
                f"{str(files[0])!r} is {'x'.join(map(str, images[0].shape))}: the images of a set must share "
                "one size and color mode; resize or convert them, or pass an .npz"
            )
    return np.stack(images)


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
    """Wrap an array, an .npz (`arr_0`; ADM batches too), an .npy or an image folder (flat or `<class>/*.png`,
    see `folder_images`) as a batch-readable source; an ImageSet is returned as it is (opened before the work)."""
    if isinstance(source, ImageSet):
        return source
    if isinstance(source, (np.ndarray, Tensor)):
        arr = check_images(source)
        return ImageSet(num_images=len(arr), source=arr, kind="array")
    path = Path(source)
    if path.is_dir():
        files = folder_images(path)
        return ImageSet(num_images=len(files), source=path, kind="folder", files=files)
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r")
        check_images(arr[:1])
        return _not_empty(ImageSet(num_images=len(arr), source=arr, kind="array"), path)
    if path.suffix == ".npz" and path.is_file():
        with zipfile.ZipFile(path) as zf, zf.open(f"{_npz_image_key(path)}.npy") as f:
            shape, _ = _read_npy_header(f)
        return _not_empty(ImageSet(num_images=int(shape[0]), source=path, kind="npz"), path)
    raise InputError(
        f"cannot read images from {str(source)!r}: pass a uint8 NHWC array, an .npz with arr_0, "
        "an .npy, or a folder of images (flat or in <class>/ subfolders)"
    )


def _not_empty(images: ImageSet, path: Path) -> ImageSet:
    if not images.num_images:
        raise InputError(f"{str(path)!r} holds no images (an array of 0 rows); pass a non-empty image set")
    return images
