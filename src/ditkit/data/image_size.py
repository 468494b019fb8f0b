"""The image size of a job when the user names none: the data's own (an image folder's or .npz's images), else the
size the autoencoder was trained at (its config.json's `sample_size`), read from headers without decoding a pixel
or loading a model, and said in one log line before any work starts.

A size the user asks for is used as asked; when it upscales the data's images, a log line says so (a warning past
`UPSCALE_WARNING`x). Images larger than `NATIVE_SIZE_CAP` (ImageNet's) are center-cropped and downscaled to it,
the paper's size.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from ditkit.data.datasets import IMAGE_EXTENSIONS, STORE_META_FILE

logger = logging.getLogger(__name__)

NATIVE_SIZE_CAP = 256  # the paper's size: larger images are center-cropped and downscaled to it
NATIVE_SIZE_FILES = 100  # image headers read to find an image folder's size
UPSCALE_WARNING = 2.0  # a requested size more than this many times the images' own is a warning


def native_image_size(spec: str | os.PathLike | None) -> int | None:
    """The size of an image folder's or .npz's images, from headers only: the most common short side among a
    folder's first `NATIVE_SIZE_FILES` images (a sorted walk; the larger size on a tie), an .npz array's short
    side. The short side, since ADM's center crop to that size never upscales. None for anything else (MNIST,
    digits, a latent store, a missing path) or when no header is readable (opening the data then says why)."""
    if not spec:
        return None
    path = Path(spec).expanduser()
    if path.suffix == ".npz" and path.is_file():
        return _npz_side(path)
    if not path.is_dir() or (path / STORE_META_FILE).exists():
        return None
    sides: Counter[int] = Counter()
    for folder, dirs, names in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(n for n in names if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")):
            try:
                with Image.open(Path(folder) / name) as image:
                    sides[min(image.size)] += 1
            except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
                continue  # an unreadable file: the folder's check names it when the data are opened
            if sides.total() >= NATIVE_SIZE_FILES:
                return _most_common(sides)
    return _most_common(sides)


def _most_common(sides: Counter[int]) -> int | None:
    return max(sides, key=lambda side: (sides[side], side)) if sides else None


def _npz_side(path: Path) -> int | None:
    """The short side of the `images` (else `arr_0`) array of an .npz, from its .npy header (nothing loaded)."""
    try:
        with zipfile.ZipFile(path) as archive:
            key = next((k for k in ("images.npy", "arr_0.npy") if k in archive.namelist()), None)
            if key is None:
                return None
            with archive.open(key) as fh:
                major, _ = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape = read(fh)[0]
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    return int(min(shape[1:3])) if len(shape) in (3, 4) and min(shape[1:3]) > 0 else None


def vae_sample_size(spec: str | None) -> int | None:
    """The `sample_size` in a local diffusers VAE folder's config.json (the size it was trained at), without
    loading it; None for hub ids, 'none' and configs without one."""
    if not spec:
        return None
    path = Path(spec).expanduser()
    for config_file in (path / "config.json", path / "vae" / "config.json"):
        if config_file.is_file():
            try:
                size = json.loads(config_file.read_text()).get("sample_size")
            except (OSError, ValueError, AttributeError):
                return None  # vae_geometry, which every job runs, names the unreadable file
            size = size[0] if isinstance(size, list) and size else size
            return int(size) if isinstance(size, int) and size > 0 else None
    return None


def pick_image_size(
    spec: str | None, requested: int | None, *, vae: str | None = None, multiple: int = 1
) -> int | None:
    """The image size of a job on the data `spec` (one log line says which and why).

    `requested` (the user's) is used as asked; an upscale of the data's images is logged, past
    `UPSCALE_WARNING`x as a warning naming both sizes. Else the data's own size (`native_image_size`), at most
    `NATIVE_SIZE_CAP`, rounded down to a multiple of `multiple` (a VAE's downsampling times the patch); else the
    `sample_size` of the VAE `vae` (the same rounding); else None: the dataset's default (MNIST and digits
    32 px, a latent store its own size; `NATIVE_SIZE_CAP` for a folder without a readable image).
    """
    native = native_image_size(spec)
    if requested is not None:
        if native and requested > native:
            log = logger.warning if requested > UPSCALE_WARNING * native else logger.info
            log(
                "image size %d px as asked: the %d px images in %s are upscaled %.3gx (omit image_size to use %d)",
                requested,
                native,
                spec,
                requested / native,
                min(native, NATIVE_SIZE_CAP),
            )
        return requested
    trained = vae_sample_size(vae)
    if native is None and trained is None:  # a folder without a readable header: opening it names the bad files
        folder = Path(spec).expanduser() if spec else None
        return NATIVE_SIZE_CAP if folder and folder.is_dir() and not (folder / STORE_META_FILE).exists() else None
    base = min(native, NATIVE_SIZE_CAP) if native else trained
    assert base is not None
    size = max(multiple, base // multiple * multiple)
    if native is None:
        logger.info("image size %d px (the sample_size %d of the VAE %s)", size, trained, vae)
        return size
    notes = []
    if native > NATIVE_SIZE_CAP:
        notes.append(f"they are {native} px: center-cropped and downscaled to {NATIVE_SIZE_CAP}, the paper's size")
    if size != base:
        cropped = "center-cropped" if size < base else "upscaled"
        notes.append(f"{cropped} from {base} px to a multiple of {multiple} (the patch, times a VAE's downsampling)")
    if trained and trained != size:
        notes.append(f"the VAE was trained at {trained} px")
    notes.append("pass image_size for another" if notes else "")
    logger.info("image size %d px (from the images in %s%s)", size, spec, "".join(f"; {n}" for n in notes if n))
    return size
