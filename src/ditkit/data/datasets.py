"""Datasets: image folders, .npz arrays, the embedded MNIST and sklearn's digits (latent stores: `latent_store`).

Preprocessing follows ADM / DiT (`center_crop_arr`, random flip, [-1, 1]; openai/guided-diffusion
`image_datasets.py`, facebookresearch/DiT `train.py`). The latent store keeps fast-DiT's speed
(https://github.com/chuanyangjin/fast-DiT) without freezing flips and VAE noise.

Item format: every dataset returns `(x, y)` with x a float32 tensor (C, H, W) (pixels in [-1, 1], or
scaled latents) and y an int label (0 for unlabelled data). Randomness comes only from the generator
passed to `get(index, generator)`, so the loader makes every batch a function of (seed, epoch, index).
"""

from __future__ import annotations

import hashlib
import logging
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ditkit.data.class_names import LABEL_FILES, check_class_names, npz_class_names, read_labels_file, readable_names
from ditkit.runtime.errors import InputError

logger = logging.getLogger(__name__)

STORE_META_FILE = "meta.json"  # marks a folder as a latent store (ditkit.data.latent_store)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_BAD_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


# Preprocessing.


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """ADM's center crop: (S, S[, C]) uint8 from a PIL image of any size.

    Reimplements `center_crop_arr` of openai/guided-diffusion `image_datasets.py`, as DiT uses it.

    Halve with BOX filtering while the short side is at least 2S, resize the short side to S with
    BICUBIC (sides rounded with Python's round), then crop the centre (floor offsets).
    """
    image = pil_image
    while min(image.size) >= 2 * image_size:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.Resampling.BOX)
    ratio = image_size / min(image.size)
    new_size = (round(image.width * ratio), round(image.height * ratio))
    arr = np.asarray(image.resize(new_size, resample=Image.Resampling.BICUBIC))
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return np.ascontiguousarray(arr[top : top + image_size, left : left + image_size])  # a writable copy


def _to_tensor(arr: np.ndarray) -> Tensor:
    """uint8 (H, W[, C]) -> float32 (C, H, W) in [-1, 1], the same arithmetic as ToTensor + Normalize(0.5)."""
    x = torch.from_numpy(np.array(arr))  # a copy: torch wants writable arrays (PIL's and memmaps are not)
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    return (x.float() / 255.0 - 0.5) / 0.5


def draw_flip(flip: bool, generator: torch.Generator | None) -> bool:
    return flip and bool(torch.rand((), generator=generator) < 0.5)


class BaseDataset(torch.utils.data.Dataset):
    """Shared interface: `num_classes`, `class_names`, `channels`, `image_size`, `flip`, `item_shape`, `get`."""

    num_classes: int  # distinct labels; 0 for unlabelled data (labels are then all 0)
    class_names: tuple[str, ...] | None = None  # class i's name (ditkit.data.class_names); None: ids only
    channels: int  # channels of x as the model sees it (latent channels for a latent store)
    image_size: int  # side of the (pixel) images, in pixels
    flip: bool = False  # random horizontal flip with p = 0.5
    is_latent: bool = False  # True when items are VAE latents rather than pixels

    def get(self, index: int, generator: torch.Generator | None = None) -> tuple[Tensor, int]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.get(index, None)  # global RNG; the loader passes seeded generators instead

    @property
    def item_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of x."""
        return (self.channels, self.image_size, self.image_size)


# Image datasets.


def _load_rgb(path: Path) -> Image.Image:
    """Decode now (a truncated file fails here, not later) and convert L/P/CMYK/RGBA to RGB."""
    with Image.open(path) as image:
        image.load()
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")  # PIL warns when converting such palettes straight to RGB
        return image.convert("RGB")


def _unreadable(what: str, err: OSError) -> InputError:
    """The one line of a folder or file that cannot be read (never skipped: a class would go missing)."""
    why = "permission denied; change its permissions" if isinstance(err, PermissionError) else err.strerror
    return InputError(f"cannot read {what} {str(err.filename)!r}: {why} or remove it", setting="data")


def _listing_failed(err: OSError) -> None:
    """os.walk's onerror: a folder it cannot list is an error (os.walk alone skips it without a word)."""
    raise _unreadable("folder", err) from err


def _list_images(folder: Path) -> list[Path]:
    files = [
        Path(d) / name
        for d, _, names in os.walk(folder, followlinks=True, onerror=_listing_failed)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
    ]
    return sorted(files)


class ImageFolderDataset(BaseDataset):
    """ImageNet-style `root/<class>/**/<image>` (class ids = sorted folder names) -> RGB (3, S, S).

    A folder of images without class subfolders is read as unlabelled (num_classes 0). Files that PIL
    cannot decode are logged, counted in `num_skipped` and replaced by the next good index; images
    smaller than S are upscaled by the crop. `scan()` checks every file up front.
    """

    def __init__(self, root: str | Path, image_size: int, flip: bool = True) -> None:
        self.root, self.image_size, self.flip, self.channels = Path(root), int(image_size), flip, 3
        if not self.root.is_dir():
            raise InputError(
                f"image folder {str(root)!r} does not exist; pass a folder of class subfolders", setting="data"
            )
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if self.classes:
            self.samples = [(p, i) for i, c in enumerate(self.classes) for p in _list_images(self.root / c)]
        else:
            self.samples = [(p, 0) for p in _list_images(self.root)]
        if not self.samples:
            raise InputError(
                f"image folder {str(root)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "pass a folder laid out as root/<class>/<image>",
                setting="data",
            )
        self.num_classes = len(self.classes)
        if self.classes:  # a labels file in the folder names the classes, else their folders do
            self.class_names = read_labels_file(self.root, self.num_classes) or readable_names(self.classes)
        self._bad: set[int] = set()

    @property
    def num_skipped(self) -> int:
        """Files found unreadable so far (in this process)."""
        return len(self._bad)

    def __len__(self) -> int:
        return len(self.samples)

    def _try_load(self, index: int) -> Image.Image | None:
        path = self.samples[index][0]
        try:
            return _load_rgb(path)
        except PermissionError as err:  # not a bad image but a setup to fix: never skipped
            raise _unreadable("image file", err) from err
        except _BAD_IMAGE_ERRORS as err:
            self._bad.add(index)
            logger.warning("skipping unreadable image %s (%s)", path, err)
            return None

    def get(self, index: int, generator: torch.Generator | None = None) -> tuple[Tensor, int]:
        flip = draw_flip(self.flip, generator)
        for offset in range(len(self)):
            j = (index + offset) % len(self)
            image = None if j in self._bad else self._try_load(j)
            if image is not None:
                x = _to_tensor(center_crop_arr(image, self.image_size))
                return (x.flip(-1) if flip else x), self.samples[j][1]
        raise InputError(f"no readable image in {str(self.root)!r}; check the files (all {len(self)} failed)")

    def scan(self) -> int:
        """Decode every file once, remember the bad ones and return how many there are."""
        for index in range(len(self)):
            if index not in self._bad:
                self._try_load(index)
        return self.num_skipped


# Checking a folder before any work: every file a readable image, judged from its header and its end.

_TAIL_BYTES = 1024  # the end of a file, where PNG's IEND chunk and JPEG's end-of-image marker sit
_CHECKED: dict[str, str] = {}  # folder -> fingerprint of the listing that passed (a folder is checked once)


def image_file_problem(path: Path) -> str | None:
    """Why the file at `path` is not a readable image, or None. Cheap: PIL's header read (format, size) and
    the end marker of a PNG, JPEG or WebP; only a file whose marker is missing (truncated, or with data
    appended) is decoded to tell which."""
    try:
        with open(path, "rb") as fh, Image.open(fh) as image:
            (width, height), kind = image.size, image.format
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - _TAIL_BYTES))
            tail = fh.read()
            fh.seek(4)
            riff = int.from_bytes(fh.read(4), "little") + 8  # WebP: the RIFF chunk's length
        if width < 1 or height < 1:
            return f"{width}x{height} pixels"
        if (kind == "PNG" and b"IEND" not in tail) or (kind == "JPEG" and b"\xff\xd9" not in tail):
            _load_rgb(path)  # no end marker: decode to tell a truncated file from one with data appended
        elif kind == "WEBP" and riff > size:
            return f"truncated WEBP ({size} of {riff} bytes)"
    except PermissionError as err:  # the caller's setup, not a bad image: `check_image_folder` says so
        raise _unreadable("image file", err) from err
    except Image.UnidentifiedImageError:
        return "not an image PIL can read"
    except _BAD_IMAGE_ERRORS as err:
        return f"{type(err).__name__}: {err}"
    return None


def check_image_folder(dataset: ImageFolderDataset | Path) -> None:
    """Raise InputError naming the first file of the folder that is not a readable image (path and reason).

    Every non-hidden file must be an image with a known extension whose header PIL reads and, for PNG,
    JPEG and WebP, whose end is there: about 0.15 s per 1,000 JPEGs and 0.05 s per 1,000 PNGs, no pixel
    decoded. A folder whose listing (paths, sizes, mtimes) passed once in this process is not read again.
    `dataset` is an image folder dataset or the folder itself (the image sets of `ditkit.data.image_files`).
    """
    root = dataset if isinstance(dataset, Path) else dataset.root
    files = sorted(
        Path(d) / name
        for d, _, names in os.walk(root, followlinks=True, onerror=_listing_failed)
        for name in names
        if not name.startswith(".") and not any(part.startswith(".") for part in Path(d).relative_to(root).parts)
    )
    try:
        stats = [(str(p), s.st_size, s.st_mtime_ns) for p in files for s in (p.stat(),)]
    except OSError:
        stats = None  # a dangling link: the loop below names it
    fingerprint = hashlib.sha256(repr(stats).encode()).hexdigest()
    if stats is not None and _CHECKED.get(str(root.resolve())) == fingerprint:
        return
    if len(files) > 20_000:
        logger.info("checking the %d files of %s (about %d s)", len(files), root, len(files) // 7_000 + 1)
    for path in files:
        if path.parent == root and path.name in LABEL_FILES:
            continue  # the class names (ditkit.data.class_names)
        if not path.name.lower().endswith(IMAGE_EXTENSIONS):
            problem = f"not an image file: ditkit reads {', '.join(IMAGE_EXTENSIONS)}"
        else:
            problem = image_file_problem(path)
        if problem:
            raise InputError(
                f"image folder {str(root)!r}: {str(path)!r} is not a readable image ({problem}); remove it "
                "(or move it out of the folder) or convert it to PNG or JPEG, then rerun",
                setting="data",
            )
    if stats is not None:
        _CHECKED[str(root.resolve())] = fingerprint


class NpzDataset(BaseDataset):
    """Images from an .npz: `images` or `arr_0` uint8 (N, H, W[, C]) and `labels` or `arr_1` (optional).

    Arrays of another size are center-cropped to S (default: the short side). Without labels the data
    is unlabelled (num_classes 0).
    """

    def __init__(self, path: str | Path, image_size: int | None = None, flip: bool = True) -> None:
        with np.load(path) as f:
            key = "images" if "images" in f else "arr_0"
            if key not in f:
                raise InputError(f"{str(path)!r} has no 'images' or 'arr_0' array; save images under 'images'")
            images = f[key]
            label_key = next((k for k in ("labels", "arr_1") if k in f), None)
            labels = f[label_key].astype(np.int64) if label_key else np.zeros(len(images), np.int64)
            names = npz_class_names(f, path) if label_key else None
        if (
            images.dtype != np.uint8
            or images.ndim not in (3, 4)
            or (images.ndim == 4 and images.shape[3] not in (1, 3))
        ):
            raise InputError(
                f"{str(path)!r}: images must be uint8 (N, H, W) or (N, H, W, 1|3); got {images.dtype} "
                f"{images.shape}; convert them to 0-255 uint8 in that layout"
            )
        if labels.shape != (len(images),):
            raise InputError(f"{str(path)!r}: {len(images)} images but labels of shape {labels.shape}")
        self.images = images[..., 0] if images.ndim == 4 and images.shape[3] == 1 else images
        self.labels, self.flip = labels, flip
        self.channels = 1 if self.images.ndim == 3 else 3
        self.image_size = int(image_size or min(images.shape[1:3]))
        self.num_classes = int(labels.max()) + 1 if label_key and len(labels) else 0
        if names is not None:  # the names may count classes no image has
            self.num_classes = max(self.num_classes, len(names))
            self.class_names = check_class_names(names, self.num_classes, f"{str(path)!r} (class_names)")
        elif self.num_classes:
            self.class_names = read_labels_file(Path(path).parent, self.num_classes)

    def __len__(self) -> int:
        return len(self.images)

    def get(self, index: int, generator: torch.Generator | None = None) -> tuple[Tensor, int]:
        flip = draw_flip(self.flip, generator)
        arr = self.images[index]
        if arr.shape[:2] != (self.image_size, self.image_size):
            arr = center_crop_arr(Image.fromarray(arr), self.image_size)
        x = _to_tensor(arr)
        return (x.flip(-1) if flip else x), int(self.labels[index])


@lru_cache(maxsize=1)
def _mnist_all() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with resources.files("ditkit").joinpath("assets/mnist10k.npz").open("rb") as fh, np.load(fh) as f:
        return f["images"], f["labels"].astype(np.int64), f["test_indices"].astype(np.int64)


def load_mnist_arrays(split: Literal["train", "test", "all"] = "train") -> tuple[np.ndarray, np.ndarray]:
    """The embedded 10,000 MNIST digits: images uint8 (N, 28, 28) and labels int64 (N,), fresh copies.

    Split: "test" is the 1,000 digits listed in the asset's `test_indices` (a seeded random choice made
    once by scripts/convert_mnist.py), "train" the other 9,000, "all" all 10,000.
    """
    images, labels, test_indices = _mnist_all()
    is_test = np.zeros(len(images), dtype=bool)
    is_test[test_indices] = True
    masks = {"train": ~is_test, "test": is_test, "all": np.ones_like(is_test)}
    if split not in masks:
        raise InputError(f"MNIST split must be one of {', '.join(masks)}; got {split!r}", setting="split")
    return images[masks[split]].copy(), labels[masks[split]].copy()


MNIST_MIN_FRAME = 20  # MNIST digits are centred in a 20x20 box of the 28x28 image


def frame_digits(images: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop or zero-pad square images (N, S, S[, C]) to (N, size, size[, C]) without resampling."""
    diff = size - images.shape[1]
    if diff % 2:
        raise InputError(
            f"can only frame to a size that differs by an even number; got {images.shape[1]} -> {size}",
            setting="image_size",
        )
    if diff >= 0:
        pad = [(0, 0), (diff // 2, diff // 2), (diff // 2, diff // 2)] + [(0, 0)] * (images.ndim - 3)
        return np.pad(images, pad)
    cut = -diff // 2
    return images[:, cut : images.shape[1] - cut, cut : images.shape[2] - cut].copy()


class EmbeddedMNIST(BaseDataset):
    """The shipped MNIST digits, 1 channel, [-1, 1], never flipped (digits are not mirror symmetric).

    With pad=True, sizes from 20 to 32 (differing from 28 by an even number) are framed without resampling:
    MNIST digits sit in a centred 20x20 box, so 32 zero-pads 2 px a side and 24 crops 2 px a side, both
    keeping every digit whole. Other sizes (or pad=False) resize the 28x28 digits bilinearly.
    """

    def __init__(
        self, split: Literal["train", "test", "all"] = "train", image_size: int = 32, pad: bool = True
    ) -> None:
        images, self.labels = load_mnist_arrays(split)
        if pad and MNIST_MIN_FRAME <= image_size <= 32 and (image_size - 28) % 2 == 0:
            images = frame_digits(images, image_size)
        if images.shape[1] != image_size:
            size = (image_size, image_size)
            images = np.stack([np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BILINEAR)) for a in images])
        self.images = torch.from_numpy(images)
        self.split, self.image_size, self.channels, self.num_classes = split, image_size, 1, 10

    def __len__(self) -> int:
        return len(self.images)

    def get(self, index: int, generator: torch.Generator | None = None) -> tuple[Tensor, int]:
        return (self.images[index][None].float() / 255.0 - 0.5) / 0.5, int(self.labels[index])


class DigitsDataset(BaseDataset):
    """scikit-learn's 1,797 8x8 digits (0-16) bilinearly upsampled to S; 1 channel, [-1, 1], no flip."""

    def __init__(self, image_size: int = 32) -> None:
        try:
            from sklearn.datasets import load_digits  # scikit-learn is optional (the `dev` extra)
        except ImportError:
            raise InputError("the 'digits' dataset needs scikit-learn; pip install scikit-learn or use mnist") from None
        digits = load_digits()
        x = torch.from_numpy(digits.images / 16.0).float()[:, None]  # (N, 1, 8, 8) in [0, 1]
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        self.images, self.labels = x * 2.0 - 1.0, torch.from_numpy(digits.target).long()
        self.image_size, self.channels, self.num_classes = image_size, 1, 10

    def __len__(self) -> int:
        return len(self.images)

    def get(self, index: int, generator: torch.Generator | None = None) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])
