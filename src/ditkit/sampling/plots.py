"""Line plots (loss curves, quality over steps or compute) and labelled scatter plots as PNGs, drawn with PIL
alone (no matplotlib): labelled axes with real tick values on log scales, error bars, a legend that fits."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ditkit.runtime.errors import InputError
from ditkit.runtime.files import atomic_path

_BACKGROUND = (255, 255, 255)
_AXIS = (60, 60, 60)
_GRIDLINE = (225, 225, 225)
_CONNECT = (150, 150, 150)
_TAB10 = "1f77b4 ff7f0e 2ca02c d62728 9467bd 8c564b e377c2 7f7f7f bcbd22 17becf"  # matplotlib's default colours
_COLORS = [tuple(bytes.fromhex(code)) for code in _TAB10.split()]
_PAD = 6  # pixels between the parts of a picture (title, legend, plot area, tick labels, axis labels)
_SWATCH = 20  # pixels of a legend entry taken by its colour sample and the gap after it
_DODGE = 4  # pixels between the bars of banded series drawn at the same x

_Box = tuple[int, int, int, int]  # left, top, right, bottom in pixels
_Color = tuple[int, ...]  # RGB
_Point = tuple[float, float]  # x, y in pixels
_Ticks = list[tuple[float, str]]  # (position in plotted units, label)


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
    bands: dict[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    y_label: str = "",
) -> Path:
    """Line plot of one or more series over `steps` (x axis) as a PNG; non-finite points are skipped.

    `bands` {name: (lo, hi)}, a pair per step, draws that series' interval (a 95% interval over seeds, say) as
    capped error bars inside the y range. A log y axis is used when `log_y` and every value and bar end is
    positive, a log x axis when `log_x` and every step is: otherwise the axis stays linear (a log axis has no
    place for 0). A log axis says "(log scale)" and its ticks read real values (1000, 1e4). With `smoothed`,
    each series is drawn pale with a centred moving average (`smooth`, in plotted units) over it; otherwise a
    line with a dot per point (short series, such as evaluations of a study), banded series a few pixels apart.
    """
    image = Image.new("RGB", size, _BACKGROUND)
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    xs = np.asarray(steps, dtype=np.float64)
    values = {name: np.asarray(v, dtype=np.float64) for name, v in series.items()}
    ends = _checked_bands(bands or {}, values, len(xs))
    every = _finite(*values.values(), *(end for pair in ends.values() for end in pair))
    if _finite(xs).size == 0 or every.size == 0:
        draw.text((70, size[1] // 2), "no data yet", fill=_AXIS, font=font)
        return save_png(image, path)
    x_log = log_x and bool((_finite(xs) > 0).all())
    y_log = log_y and bool((every > 0).all())
    fx = _plotted(xs, x_log)
    colors = {name: _COLORS[k % len(_COLORS)] for k, name in enumerate(values)}
    ranges = _span(_finite(fx), 0.0 if smoothed else 0.03), _span(_plotted(every, y_log), 0.05)
    frame = _plot_area(image, font, title, list(colors.items()), ranges, (x_log, y_log), (x_label, y_label))
    banded = [] if smoothed else [name for name in values if name in ends]
    for name, v in values.items():
        lo, hi = ends.get(name, (np.full_like(v, np.nan), np.full_like(v, np.nan)))
        curve = np.stack([fx, *(_plotted(u, y_log) for u in (v, lo, hi))])
        shift = (banded.index(name) - (len(banded) - 1) / 2) * _DODGE if name in banded else 0.0
        _draw_series(draw, replace(frame, shift=shift), curve, colors[name], smoothed)
    return save_png(image, path)


def plot_scatter(
    points: dict[str, tuple[float, float, float | tuple[float, float]]],
    path: str | os.PathLike,
    *,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    log_x: bool = True,
    fit: bool = True,
    size: tuple[int, int] = (800, 450),
    x_errors: dict[str, tuple[float, float]] | None = None,
    connect: bool = False,
) -> Path:
    """Labelled points {name: (x, y, y_spread)} as a PNG, with a y error bar of +-y_spread, or from lo to hi where
    the third element is a (lo, hi) interval (a 95% interval, say); `x_errors` {name: (lo, hi)} adds x error bars.

    With `fit`, the least-squares line of y on x (log10 x on a log axis); with `connect`, a thin line through
    the points in the given order (a trade-off curve over guidance scales, say). A log x axis is used when
    `log_x` and every x and x bar end is positive; it is labelled "(log scale)" and its ticks read real values.
    Point labels stay inside the picture: above right of the point, or on its left where the right has no room.
    """
    image = Image.new("RGB", size, _BACKGROUND)
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    if unknown := sorted(set(x_errors or {}) - set(points)):
        raise InputError(f"x_errors names points that are not plotted: {unknown}; points: {sorted(points)}")
    names = [name for name, p in points.items() if math.isfinite(p[0]) and math.isfinite(p[1])]
    if not names:
        draw.text((70, size[1] // 2), "no data yet", fill=_AXIS, font=font)
        return save_png(image, path)
    xs, ys = (np.asarray([points[n][i] for n in names], dtype=np.float64) for i in (0, 1))
    y_lo, y_hi = np.asarray([_interval(points[n][1], points[n][2]) for n in names]).T
    x_lo, x_hi = np.asarray([(x_errors or {}).get(n, (math.nan, math.nan)) for n in names], dtype=np.float64).T
    x_log = log_x and bool((_finite(xs, x_lo, x_hi) > 0).all())
    fx, fx_lo, fx_hi = (_plotted(v, x_log) for v in (xs, x_lo, x_hi))
    line = np.polyfit(fx, ys, 1) if fit and len(names) >= 2 and np.ptp(fx) > 0 else None
    legend = [] if line is None else [("least-squares line", _COLORS[3])]
    ranges = _span(_finite(fx, fx_lo, fx_hi), 0.05), _span(_finite(ys, y_lo, y_hi), 0.05)
    frame = _plot_area(image, font, title, legend, ranges, (x_log, False), (x_label, y_label))
    if line is not None:
        _draw_fit(draw, frame, float(line[0]), float(line[1]))
    centres = [(frame.px(x), frame.py(y)) for x, y in zip(fx, ys)]
    if connect and len(centres) > 1:
        draw.line(centres, fill=_CONNECT, width=1)
    for k, (name, (x, y)) in enumerate(zip(names, centres)):
        color = _COLORS[k % len(_COLORS)]
        if np.isfinite([y_lo[k], y_hi[k]]).all():
            _error_bar(draw, (x, frame.py(y_lo[k])), (x, frame.py(y_hi[k])), color, vertical=True)
        if np.isfinite([fx_lo[k], fx_hi[k]]).all():
            _error_bar(draw, (frame.px(fx_lo[k]), y), (frame.px(fx_hi[k]), y), color, vertical=False)
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=color)
        draw.text(_label_box(font, name, (x, y), frame)[:2], name, fill=_AXIS, font=font)
    return save_png(image, path)


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write a PNG atomically, so a reader (a browser refreshing samples/) never sees half a picture."""
    with atomic_path(path, durable=False) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


@dataclass
class _Frame:
    """The plot area of a picture and the data ranges it shows (in plotted units: log10 on a log axis)."""

    size: tuple[int, int]
    margins: tuple[int, int, int, int]  # left, right, top, bottom
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    shift: float = 0.0  # pixels added to every x (to set banded series at the same steps apart)

    def px(self, x: float) -> float:
        (width, _), (left, right, _, _), (lo, hi) = self.size, self.margins, self.x_range
        return self.shift + left + (x - lo) / (hi - lo) * (width - left - right)

    def py(self, y: float) -> float:
        (_, height), (_, _, top, bottom), (lo, hi) = self.size, self.margins, self.y_range
        return height - bottom - (y - lo) / (hi - lo) * (height - top - bottom)


def _plot_area(
    image: Image.Image,
    font: Any,
    title: str,
    legend: Sequence[tuple[str, _Color]],
    ranges: tuple[tuple[float, float], tuple[float, float]],
    logs: tuple[bool, bool],
    labels: tuple[str, str],
) -> _Frame:
    """Lay out and draw all but the data: the title, the legend in rows under it, the axes with their ticks and
    labels (x below, y turned on the left). `ranges`, `logs` and `labels` are (x, y) pairs; the ranges are in
    plotted units. Returns the frame the data goes in."""
    draw, (width, height), line_h = ImageDraw.Draw(image), image.size, _line_height(font)
    x_range, y_range = ranges
    x_ticks, y_ticks = _ticks(*x_range, log=logs[0]), _ticks(*y_range, log=logs[1])
    x_label, y_label = _axis_label(labels[0], logs[0]), _axis_label(labels[1], logs[1])
    tick_w = max((font.getlength(text) for _, text in y_ticks), default=0.0)
    left = math.ceil(2 * _PAD + tick_w + (line_h + _PAD if y_label else 0))
    right = max(3 * _PAD, math.ceil(font.getlength(x_ticks[-1][1]) / 2) + 2 if x_ticks else 0)
    bottom = 2 * _PAD + line_h + (line_h if x_label else 0)
    y = _PAD
    for line in _wrap(title, font, width - left - _PAD) if title else []:
        draw.text((left, y), line, fill=_AXIS, font=font)
        y += line_h
    entries = _legend_layout([name for name, _ in legend], font, left, width - right, y + (_PAD if title else 0))
    for ((x0, y0, _, _), lines), (_, color) in zip(entries, legend):
        draw.line([(x0, y0 + line_h / 2), (x0 + _SWATCH - _PAD, y0 + line_h / 2)], fill=color, width=3)
        for i, text in enumerate(lines):
            draw.text((x0 + _SWATCH, y0 + i * line_h), text, fill=_AXIS, font=font)
    top = max([y, *(box[3] for box, _ in entries)]) + _PAD
    frame = _Frame(image.size, (left, right, top, bottom), x_range, y_range)
    _draw_axes(draw, font, frame, x_ticks, y_ticks)
    if x_label:
        x = max(0.0, (left + width - right - font.getlength(x_label)) / 2)
        draw.text((x, height - _PAD - line_h), x_label, fill=_AXIS, font=font)
    if y_label:
        _draw_turned(image, font, y_label, (_PAD, (top + height - bottom) / 2))
    return frame


def _draw_axes(draw: ImageDraw.ImageDraw, font: Any, frame: _Frame, x_ticks: _Ticks, y_ticks: _Ticks) -> None:
    """Grid lines at the ticks, the tick labels (real values) and the box around the plot area."""
    (width, height), (left, right, top, bottom), line_h = frame.size, frame.margins, _line_height(font)
    for pos, text in y_ticks:
        y = frame.py(pos)
        draw.line([(left, y), (width - right, y)], fill=_GRIDLINE)
        draw.text((left - _PAD - font.getlength(text), y - line_h / 2), text, fill=_AXIS, font=font)
    for pos, text in x_ticks:
        x, text_w = frame.px(pos), font.getlength(text)
        draw.line([(x, top), (x, height - bottom)], fill=_GRIDLINE)
        draw.text((min(max(0.0, x - text_w / 2), width - text_w), height - bottom + 4), text, fill=_AXIS, font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline=_AXIS)


def _ticks(lo: float, hi: float, *, log: bool) -> _Ticks:
    """(position in plotted units, label) of the ticks of an axis showing [lo, hi], log10 units on a log axis whose
    labels still read real values (1000, never 3). If one label needs an exponent, all have one (1e3, 1e4, 1e5)."""
    values = _log_tick_values(lo, hi) if log else _nice_ticks(lo, hi)
    labels = [_fmt(v) for v in values]
    if any("e" in text for text in labels):
        labels = [_fmt(v, sci=True) for v in values]
    return [(math.log10(v) if log else v, text) for v, text in zip(values, labels)]


def _axis_label(label: str, log: bool) -> str:
    """The label of an axis, which says so when the axis is logarithmic: "training Gflops (log scale)"."""
    return f"{label} (log scale)".strip() if log else label


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round values (1, 2 or 5 times a power of ten apart) inside [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))  # (0.8 - 0.3) / 5 may round above 0.1
    first = math.ceil(lo / step - 1e-9)
    return [(first + i) * step for i in range(math.floor(hi / step + 1e-9) - first + 1)]


def _log_tick_values(lo: float, hi: float) -> list[float]:
    """Real tick values for a log axis showing [10**lo, 10**hi]: powers of ten where there are 3 or more, else
    1, 2 and 5 times them, else round linear steps (a range inside one decade)."""
    decades = range(math.floor(lo), math.ceil(hi) + 1)
    for mantissas in ((1,), (1, 2, 5)):
        values = [m * 10.0**e for e in decades for m in mantissas if lo - 1e-9 <= math.log10(m) + e <= hi + 1e-9]
        if len(values) >= 3:
            return values[:: math.ceil(len(values) / 8)]
    return [v for v in _nice_ticks(10**lo, 10**hi) if v > 0]


def _fmt(v: float, sci: bool = False) -> str:
    """A tick value as people write it, to 4 significant digits (0, 250, 0.05) or, with `sci` and for very large or
    small values, as a short power of ten (1.5e5, 2.5e-4)."""
    if v == 0 or not (sci or abs(v) >= 1e5 or abs(v) < 1e-3):
        return np.format_float_positional(v, precision=4, unique=False, fractional=False, trim="-")
    mantissa, exponent = f"{v:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _legend_layout(names: Sequence[str], font: Any, left: int, right: int, top: int) -> list[tuple[_Box, list[str]]]:
    """Each legend entry's (box in pixels, label lines), in rows from (left, top) that wrap before `right`; widths
    are measured with the font and a label wider than a row is broken into lines, so every label shows in full."""
    line_h, gap = _line_height(font), 3 * _PAD
    entries, x, y, row_h = [], left, top, 0
    for name in names:
        lines = _wrap(name, font, right - left - _SWATCH)
        entry_w = _SWATCH + math.ceil(max(font.getlength(text) for text in lines))
        if x > left and x + entry_w > right:
            x, y, row_h = left, y + row_h, 0
        entries.append(((x, y, x + entry_w, y + len(lines) * line_h), lines))
        x, row_h = x + entry_w + gap, max(row_h, len(lines) * line_h + 2)
    return entries


def _wrap(text: str, font: Any, width: float) -> list[str]:
    """`text` in lines no wider than `width` pixels, broken at spaces, and inside a word only if it is wider."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
            continue
        while len(word) > 1 and font.getlength(word) > width:
            cut = next((n for n in range(len(word) - 1, 1, -1) if font.getlength(word[:n]) <= width), 1)
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines


def _line_height(font: Any) -> int:
    """Pixels from one line of text to the next."""
    return font.getbbox("Ag")[3] + 2


def _draw_turned(image: Image.Image, font: Any, text: str, at: _Point) -> None:
    """`text` turned 90 degrees to read upwards, its left edge at at[0] and its middle at height at[1]."""
    mask = Image.new("L", (math.ceil(font.getlength(text)) + 2, _line_height(font)), 0)
    ImageDraw.Draw(mask).text((1, 0), text, fill=255, font=font)
    mask = mask.rotate(90, expand=True)
    x, y = round(at[0]), max(0, round(at[1] - mask.height / 2))
    image.paste(_AXIS, (x, y, x + mask.width, y + mask.height), mask)


def _draw_series(draw: ImageDraw.ImageDraw, frame: _Frame, curve: np.ndarray, color: _Color, smoothed: bool) -> None:
    """One series, `curve` (4, N) = its x, y and error bar ends lo, hi in plotted units (NaN: no bar): the bars,
    then its line (pale raw values under their moving average with `smoothed`, else a dot per point)."""
    for x, _, lo, hi in curve.T:
        if np.isfinite([x, lo, hi]).all():
            _error_bar(draw, (frame.px(x), frame.py(lo)), (frame.px(x), frame.py(hi)), color)
    xs, ys = curve[:2, np.isfinite(curve[0]) & np.isfinite(curve[1])]
    pale = tuple(int(c + (255 - c) * 0.6) for c in color)
    lines = [(ys, pale, 1), (np.asarray(smooth(ys.tolist())), color, 2)] if smoothed else [(ys, color, 2)]
    for line, shade, line_width in lines:
        centres = [(frame.px(x), frame.py(float(y))) for x, y in zip(xs, line)]
        if len(centres) > 1:
            draw.line(centres, fill=shade, width=line_width)
        if len(centres) == 1 or not smoothed:
            for x, y in centres:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=shade)


def _error_bar(draw: ImageDraw.ImageDraw, start: _Point, end: _Point, color: _Color, vertical: bool = True) -> None:
    """An error bar in pixels from `start` to `end`, with a short cap across each end."""
    draw.line([start, end], fill=color, width=1)
    for x, y in (start, end):
        draw.line([(x - 4, y), (x + 4, y)] if vertical else [(x, y - 4), (x, y + 4)], fill=color, width=1)


def _draw_fit(draw: ImageDraw.ImageDraw, frame: _Frame, slope: float, intercept: float) -> None:
    """The line y = slope * x + intercept (plotted units), cut where it leaves the plot area."""
    x0, x1 = frame.x_range
    if slope != 0:
        a, b = sorted((y - intercept) / slope for y in frame.y_range)
        x0, x1 = max(x0, a), min(x1, b)
    if x0 < x1:
        draw.line([(frame.px(x), frame.py(slope * x + intercept)) for x in (x0, x1)], fill=_COLORS[3], width=1)


def _label_box(font: Any, text: str, point: _Point, frame: _Frame) -> _Box:
    """Where a point's label goes: above and right of the point (clear of its error bars), left of it where the
    plot area has no room on the right, and inside the picture in any case."""
    (width, height), (_, right, top, bottom) = frame.size, frame.margins
    text_w, text_h = math.ceil(font.getlength(text)), _line_height(font)
    x = point[0] + 6 if point[0] + 6 + text_w <= width - right else point[0] - 6 - text_w
    x = round(min(max(0.0, x), width - text_w))
    y = round(min(max(float(top), point[1] - text_h - 1), height - bottom - text_h))
    return (x, y, x + text_w, y + text_h)


def _checked_bands(
    bands: dict[str, tuple[Sequence[float], Sequence[float]]], values: dict[str, np.ndarray], num_steps: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`bands` as arrays, after checking that each names a series and has a (lo, hi) pair per step."""
    ends = {name: (np.asarray(lo, np.float64), np.asarray(hi, np.float64)) for name, (lo, hi) in bands.items()}
    for name, (lo, hi) in ends.items():
        if name not in values or lo.shape != (num_steps,) or hi.shape != (num_steps,):
            expected = f"(lo, hi) with one value per step ({num_steps}) for one of the series {sorted(values)}"
            raise InputError(f"bands[{name!r}] must be {expected}; got {lo.shape}, {hi.shape}", setting="bands")
    return ends


def _interval(y: float, spread: float | tuple[float, float]) -> tuple[float, float]:
    """(lo, hi) of a point's y error bar from a (lo, hi) pair or a +- half-width; NaN where there is no bar."""
    lo, hi = (float(s) for s in spread) if np.ndim(spread) else (y - float(spread), y + float(spread))
    return (min(lo, hi), max(lo, hi)) if math.isfinite(lo) and math.isfinite(hi) and lo != hi else (math.nan, math.nan)


def _finite(*arrays: np.ndarray) -> np.ndarray:
    """The finite values of all `arrays`, in one flat array."""
    return np.concatenate([np.ravel(a)[np.isfinite(np.ravel(a))] for a in arrays]) if arrays else np.zeros(0)


def _plotted(values: np.ndarray, log: bool) -> np.ndarray:
    """Values in plotted units: log10 on a log axis (NaN for values <= 0, which it cannot show)."""
    return np.log10(np.where(values > 0, values, np.nan)) if log else values


def _span(values: np.ndarray, pad: float) -> tuple[float, float]:
    """[min, max] of `values` widened by `pad` of its width on each side (to a width of 1 if it has none)."""
    lo, hi = float(values.min()), float(values.max())
    pad = pad * (hi - lo) if hi - lo > 1e-12 else 0.5
    return lo - pad, hi + pad
