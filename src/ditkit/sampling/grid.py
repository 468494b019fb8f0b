"""PNG image grids (tiled, captioned or labelled by class), drawn with PIL alone. The line and scatter plots
live in `ditkit.sampling.plots` and are re-exported here."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ditkit.data.class_names import caption
from ditkit.runtime.errors import InputError
from ditkit.runtime.files import atomic_dir
from ditkit.sampling.plots import plot_curves, plot_scatter, save_png, smooth

__all__ = ["make_grid", "plot_curves", "plot_scatter", "save_grid", "save_labelled_grid", "smooth"]

_BACKGROUND = (255, 255, 255)
_AXIS = (60, 60, 60)


def make_grid(
    images: np.ndarray | torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: int = 0
) -> Image.Image:
    """Tile uint8 images (N, H, W[, C]), C in {1, 3}, into one picture with `nrow` images per row.

    nrow defaults to ceil(sqrt(N)); gray images give an "L" picture, RGB an "RGB" one.
    """
    arr = images.numpy(force=True) if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] not in (1, 3) or len(arr) == 0:
        raise InputError(
            f"make_grid needs uint8 images (N, H, W[, 1|3]) with N >= 1; got {arr.dtype} {arr.shape}", setting="images"
        )
    n, h, w, c = arr.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c), pad_value, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        canvas[top : top + h, left : left + w] = arr[i]
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas, mode="L" if c == 1 else "RGB")


def save_grid(
    images: np.ndarray | torch.Tensor,
    path: str | os.PathLike,
    nrow: int | None = None,
    scale: int = 1,
    captions: Sequence[str] | None = None,
) -> Path:
    """Write `make_grid(images, nrow)` as a PNG (enlarged `scale` times with nearest neighbours); `captions`,
    one per image (e.g. its class), are written under the images."""
    if captions is not None:
        images, scale = _captioned_tiles(images, captions, scale), 1
    picture = make_grid(images, nrow)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    return save_png(picture, path)


def _captioned_tiles(images: np.ndarray | torch.Tensor, captions: Sequence[str], scale: int) -> np.ndarray:
    """RGB uint8 (N, H * scale + 12, W * scale, 3): each image enlarged, its caption (cut to fit) in a strip below."""
    arr = images.numpy(force=True) if isinstance(images, torch.Tensor) else np.asarray(images)
    arr = arr[..., None] if arr.ndim == 3 else arr
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] not in (1, 3) or len(captions) != len(arr):
        raise InputError(
            f"captioned grids need uint8 images (N, H, W[, 1|3]) and N captions; got {arr.dtype} {arr.shape} "
            f"and {len(captions)} captions",
            setting="images",
        )
    arr = np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr
    arr = arr.repeat(scale, axis=1).repeat(scale, axis=2) if scale > 1 else arr
    font, height, width = ImageFont.load_default(), arr.shape[1], arr.shape[2]
    tiles = []
    for image, text in zip(arr, captions):
        tile = Image.new("RGB", (width, height + 12), _BACKGROUND)
        tile.paste(Image.fromarray(image), (0, 0))
        draw = ImageDraw.Draw(tile)
        while len(text) > 1 and draw.textlength(text, font=font) > width - 2:
            text = text[:-1]
        draw.text((2, height), text, fill=_AXIS, font=font)
        tiles.append(np.asarray(tile))
    return np.stack(tiles)


def save_labelled_grid(
    images: np.ndarray,
    labels: Sequence[int],
    out_dir: str | os.PathLike,
    *,
    nrow: int,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    write_images: bool = True,
    scale: int | None = None,
) -> Path:
    """Write `out_dir`/grid.png (rows of `nrow` images, each row captioned with its class) and, with
    `write_images`, every image as `out_dir`/images/NNNNNN_classC.png. Returns the grid's path.
    Both replace what an earlier call wrote there (images/ as a whole), so no stale image remains.

    Captions are the model's `class_names` (its run's), else ImageNet names for 1000-class models, else ids.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(images)
    if arr.ndim == 4 and arr.shape[-1] not in (1, 3):
        arr = arr[..., :3] if arr.shape[-1] > 3 else arr[..., :1]  # latents without a VAE: first channels
    if write_images:
        with atomic_dir(out_dir / "images") as images_dir:  # replaces an older images/ whole: no stale image stays
            for i, (img, label) in enumerate(zip(arr, labels)):
                Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img).save(
                    images_dir / f"{i:06d}_class{label}.png"
                )
    scale = scale or max(1, 96 // arr.shape[1])
    picture = make_grid(arr, nrow).convert("RGB")
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    row_labels = [labels[i] for i in range(0, len(labels), nrow)]
    font = ImageFont.load_default()
    captions = [caption(label, num_classes, class_names) for label in row_labels]
    caption_w = 12 + max(len(text) for text in captions) * 7
    canvas = Image.new("RGB", (picture.width + caption_w, picture.height), _BACKGROUND)
    canvas.paste(picture, (caption_w, 0))
    draw = ImageDraw.Draw(canvas)
    row_h = picture.height / max(1, len(row_labels))
    for r, text in enumerate(captions):
        draw.text((6, int(r * row_h + row_h / 2 - 6)), text, fill=_AXIS, font=font)
    return save_png(canvas, out_dir / "grid.png")
