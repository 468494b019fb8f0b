"""PNG image grids, line plots (loss curves, quality over steps) and labelled scatter plots, drawn with PIL
alone (no matplotlib)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ditkit.data.class_names import caption
from ditkit.runtime.errors import InputError
from ditkit.runtime.files import atomic_dir, atomic_path

_BACKGROUND = (255, 255, 255)
_AXIS = (60, 60, 60)
_GRIDLINE = (225, 225, 225)
_COLORS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


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
    return _save(picture, path)


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
    return _save(canvas, out_dir / "grid.png")


def smooth(values: Sequence[float], half_width: int | None = None) -> list[float]:
    """Centred moving average (window 2 * half_width + 1, shrinking at the ends) of a series.

    A centred window follows the series without lag; the default width is ~5% of the points on each side.
    (An EMA over the raw loss lags, and after the large early losses of a run sits far above it.)
    """
    v = np.asarray(values, dtype=np.float64)
    k = max(1, len(v) // 20) if half_width is None else half_width
    csum = np.concatenate([[0.0], np.cumsum(v)])
    lo = np.clip(np.arange(len(v)) - k, 0, None)
    hi = np.clip(np.arange(len(v)) + k + 1, None, len(v))
    return ((csum[hi] - csum[lo]) / (hi - lo)).tolist()


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    if abs(v) < 1e6 and float(v).is_integer():
        return str(int(v))
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


@dataclass
class _Frame:
    """The plot area of a picture and the data ranges it shows (y in plotted units: log10 on a log axis)."""

    size: tuple[int, int]
    margins: tuple[int, int, int, int]  # left, right, top, bottom
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    def px(self, x: float) -> float:
        (width, _), (left, right, _, _), (lo, hi) = self.size, self.margins, self.x_range
        return left + (x - lo) / (hi - lo) * (width - left - right)

    def py(self, y: float) -> float:
        (_, height), (_, _, top, bottom), (lo, hi) = self.size, self.margins, self.y_range
        return height - bottom - (y - lo) / (hi - lo) * (height - top - bottom)


def plot_curves(
    steps: Sequence[float],
    series: dict[str, Sequence[float]],
    path: str | os.PathLike,
    *,
    title: str = "",
    log_y: bool = True,
    size: tuple[int, int] = (800, 450),
    smoothed: bool = True,
    x_label: str = "step",
    log_x: bool = False,
) -> Path:
    """Line plot of one or more series over `steps` (x axis) as a PNG; non-finite points are skipped.

    A log y axis is used when `log_y` and every value is positive (a log x axis with `log_x`). With `smoothed`,
    each series is drawn pale with a centred moving average (`smooth`, taken in the plotted space) over it;
    otherwise plain lines with a dot per point (short series, such as evaluations of a study).
    """
    width, height = size
    margins = (70, 20, 30 if title else 15, 40)
    image = Image.new("RGB", size, _BACKGROUND)
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    xs = np.asarray(steps, dtype=np.float64)
    xs = np.log10(xs) if log_x else xs
    finite = [np.asarray(v, dtype=np.float64) for v in series.values()]
    every = np.concatenate([v[np.isfinite(v)] for v in finite]) if finite else np.zeros(0)
    if len(xs) == 0 or every.size == 0:
        draw.text((margins[0], height // 2), "no data yet", fill=_AXIS, font=font)
        return _save(image, path)
    use_log = log_y and bool((every > 0).all())
    fy = np.log10 if use_log else np.asarray
    y_lo, y_hi = float(fy(every.min())), float(fy(every.max()))
    if y_hi - y_lo < 1e-12:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    x_lo, x_hi = float(xs.min()), float(xs.max())
    frame = _Frame(size, margins, (x_lo, x_hi if x_hi > x_lo else x_lo + 1.0), (y_lo, y_hi))
    _draw_axes(draw, font, frame, use_log, x_log=log_x)
    for k, (name, values) in enumerate(series.items()):
        color = _COLORS[k % len(_COLORS)]
        v = np.asarray(values, dtype=np.float64)
        ok = np.isfinite(v)
        pale = tuple(int(c + (255 - c) * 0.6) for c in color)
        y = fy(v[ok])
        lines = [(y, pale, 1), (np.asarray(smooth(y.tolist())), color, 2)] if smoothed else [(y, color, 2)]
        for line, shade, line_width in lines:
            pts = [(frame.px(x), frame.py(float(y))) for x, y in zip(xs[ok], line)]
            if len(pts) > 1:
                draw.line(pts, fill=shade, width=line_width)
            if len(pts) == 1 or not smoothed:
                for px_, py_ in pts:
                    draw.ellipse([px_ - 3, py_ - 3, px_ + 3, py_ + 3], fill=shade)
        draw.text((width - margins[1] - 150, margins[2] + 5 + 14 * k), name, fill=color, font=font)
    if title:
        draw.text((margins[0], 8), title, fill=_AXIS, font=font)
    draw.text((width // 2 - 10, height - 16), x_label, fill=_AXIS, font=font)
    return _save(image, path)


def plot_scatter(
    points: dict[str, tuple[float, float, float]],
    path: str | os.PathLike,
    *,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    log_x: bool = True,
    fit: bool = True,
    size: tuple[int, int] = (800, 450),
) -> Path:
    """Labelled points {name: (x, y, y_spread)} with error bars of +-y_spread and, with `fit`, the least-squares
    line of y on x (log10 x when `log_x`), as a PNG."""
    width, height = size
    margins = (70, 20, 30 if title else 15, 40)
    image = Image.new("RGB", size, _BACKGROUND)
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    names = list(points)
    xs = np.asarray([points[n][0] for n in names], dtype=np.float64)
    ys = np.asarray([points[n][1] for n in names], dtype=np.float64)
    spread = np.nan_to_num(np.asarray([points[n][2] for n in names], dtype=np.float64))
    fx = np.log10(xs) if log_x else xs
    y_lo, y_hi = float((ys - spread).min()), float((ys + spread).max())
    pad_x, pad_y = 0.05 * max(float(np.ptp(fx)), 1e-6), 0.05 * max(y_hi - y_lo, 1e-6)
    frame = _Frame(size, margins, (float(fx.min()) - pad_x, float(fx.max()) + pad_x), (y_lo - pad_y, y_hi + pad_y))
    _draw_axes(draw, font, frame, use_log=False, x_log=log_x)
    if fit and len(names) >= 2 and np.ptp(fx) > 0:
        slope, intercept = np.polyfit(fx, ys, 1)
        ends = [(frame.px(x), frame.py(slope * x + intercept)) for x in frame.x_range]
        draw.line(ends, fill=_COLORS[3], width=1)
    for k, name in enumerate(names):
        px_, py_ = frame.px(float(fx[k])), frame.py(float(ys[k]))
        color = _COLORS[k % len(_COLORS)]
        if spread[k] > 0:
            draw.line([(px_, frame.py(ys[k] - spread[k])), (px_, frame.py(ys[k] + spread[k]))], fill=color, width=1)
        draw.ellipse([px_ - 4, py_ - 4, px_ + 4, py_ + 4], fill=color)
        draw.text((px_ + 6, py_ - 6), name, fill=_AXIS, font=font)
    if title:
        draw.text((margins[0], 8), title, fill=_AXIS, font=font)
    draw.text((width // 2 - 40, height - 16), x_label, fill=_AXIS, font=font)
    draw.text((4, 2 if not title else 18), y_label, fill=_AXIS, font=font)
    return _save(image, path)


def _draw_axes(draw: ImageDraw.ImageDraw, font: Any, frame: _Frame, use_log: bool, x_log: bool = False) -> None:
    (width, height), (left, right, top, bottom) = frame.size, frame.margins
    y_lo, y_hi = frame.y_range
    if use_log and y_hi - y_lo >= 1:  # a decade or more: powers of ten
        y_ticks = [float(e) for e in range(math.ceil(y_lo), math.floor(y_hi) + 1)]
    elif use_log:  # less than a decade: round values, placed on the log axis
        y_ticks = [math.log10(v) for v in _nice_ticks(10**y_lo, 10**y_hi) if v > 0]
    else:
        y_ticks = _nice_ticks(y_lo, y_hi)
    for y in y_ticks:
        draw.line([(left, frame.py(y)), (width - right, frame.py(y))], fill=_GRIDLINE)
        draw.text((4, frame.py(y) - 6), _fmt(10**y if use_log else y), fill=_AXIS, font=font)
    x_lo, x_hi = frame.x_range
    whole_decades = x_log and x_hi - x_lo >= 1
    for x in (
        [float(e) for e in range(math.ceil(x_lo), math.floor(x_hi) + 1)] if whole_decades else _nice_ticks(x_lo, x_hi)
    ):
        draw.line([(frame.px(x), top), (frame.px(x), height - bottom)], fill=_GRIDLINE)
        draw.text((frame.px(x) - 10, height - bottom + 6), _fmt(10**x if x_log else x), fill=_AXIS, font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline=_AXIS)


def _save(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write a PNG atomically, so a reader (a browser refreshing samples/) never sees half a picture."""
    with atomic_path(path, durable=False) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
