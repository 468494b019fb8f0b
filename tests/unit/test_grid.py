"""PNG grids, line plots and scatter plots (PIL only)."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

from ditkit.sampling.grid import make_grid, plot_curves, plot_scatter, save_grid, smooth
from ditkit.sampling.plots import _COLORS, _axis_label, _Frame, _label_box, _legend_layout, _ticks


def test_make_grid_places_images_row_major():
    images = np.stack([np.full((4, 5, 3), 10 * (i + 1), np.uint8) for i in range(5)])
    grid = make_grid(images, nrow=3, padding=1, pad_value=255)
    assert grid.mode == "RGB" and grid.size == (3 * 6 + 1, 2 * 5 + 1)
    arr = np.asarray(grid)
    assert (arr[1:5, 1:6] == 10).all() and (arr[1:5, 7:12] == 20).all() and (arr[6:10, 1:6] == 40).all()
    assert (arr[0] == 255).all() and (arr[6:10, 13:18] == 255).all()  # padding and the empty last cell


def test_make_grid_gray_and_tensor_input():
    grid = make_grid(torch.zeros(4, 8, 8, 1, dtype=torch.uint8))
    assert grid.mode == "L" and grid.size == (2 * 10 + 2, 2 * 10 + 2)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 4, 4, 3), np.float32), np.zeros((2, 4, 4, 2), np.uint8), np.zeros((0, 4, 4, 3), np.uint8)],
)
def test_make_grid_rejects_bad_input(bad):
    with pytest.raises(ValueError, match="make_grid needs uint8 images"):
        make_grid(bad)


def test_save_grid_writes_a_png(tmp_path):
    path = save_grid(np.zeros((3, 8, 8, 1), np.uint8), tmp_path / "a" / "g.png", scale=2)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (2 * (2 * 10 + 2), 2 * (2 * 10 + 2))
    assert [p.name for p in path.parent.iterdir()] == ["g.png"]


def test_smooth_tracks_the_series():
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    assert smooth([1.0, 3.0, 5.0, 7.0], half_width=1) == pytest.approx([2.0, 3.0, 5.0, 6.0])
    # A fast-falling loss (the first reports of a run): the smoothed line stays within the raw range nearby.
    loss = [10.0 * 0.8**i + 0.1 for i in range(40)]
    smoothed = smooth(loss)
    assert all(abs(s - r) <= 0.5 * r for s, r in zip(smoothed[5:], loss[5:]))


@pytest.mark.parametrize("values", [[1.0, 0.5, 0.2, 0.1, 0.05], [0.3, -0.1, math.nan, 0.2], [0.7], []])
def test_plot_curves_writes_a_png(tmp_path, values):
    path = plot_curves(list(range(len(values))), {"loss": values}, tmp_path / "curve.png", title="t", size=(320, 200))
    with Image.open(path) as image:
        assert image.size == (320, 200) and image.mode == "RGB"
        assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 1  # something was drawn


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _rows_of(arr: np.ndarray, color) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) indices of the pixels of exactly `color`."""
    return np.nonzero((arr == np.asarray(color, np.uint8)).all(axis=-1))


def test_plot_curves_draws_bands_as_error_bars_inside_the_picture(tmp_path):
    # A flat series at 1 with a band from 0.5 to 3: the bar at each step rises 4x farther above the line than below.
    series, bands = {"a": [1.0, 1.0, 1.0]}, {"a": ([0.5] * 3, [3.0] * 3)}
    path = plot_curves([0, 1, 2], series, tmp_path / "c.png", bands=bands, smoothed=False, log_y=False)
    arr = _pixels(path)
    rows, cols = _rows_of(arr, _COLORS[0])
    middle = np.abs(cols - arr.shape[1] / 2) < arr.shape[1] / 6  # the middle step, away from the legend
    rows, cols = rows[middle], cols[middle]
    column = np.bincount(cols).argmax()  # its bar: the tallest column of the series colour
    line_row = np.bincount(rows).argmax()  # the flat line: the widest row
    above, below = line_row - rows[cols == column].min(), rows[cols == column].max() - line_row
    assert above > 2.5 * below > 0 and rows.min() > 0  # the band's top is plotted, inside the picture


def test_plot_curves_band_ends_at_or_below_zero_give_a_linear_axis(tmp_path):
    series, bands = {"a": [1.0, 2.0, 3.0]}, {"a": ([-1.0, 1.0, 2.0], [2.0, 3.0, math.nan])}
    log = plot_curves([1, 2, 3], series, tmp_path / "log.png", bands=bands, y_label="FD", log_y=True)
    linear = plot_curves([1, 2, 3], series, tmp_path / "lin.png", bands=bands, y_label="FD", log_y=False)
    assert np.array_equal(_pixels(log), _pixels(linear))  # same picture: "(log scale)" nowhere, bars drawn linearly


@pytest.mark.parametrize(
    "bands", [{"b": ([0.0], [1.0])}, {"a": ([0.0, 1.0], [1.0, 2.0])}], ids=["unknown series", "wrong length"]
)
def test_plot_curves_rejects_bad_bands(tmp_path, bands):
    with pytest.raises(ValueError, match=r"bands\[.*\] must be \(lo, hi\) with one value per step \(1\)"):
        plot_curves([0], {"a": [1.0]}, tmp_path / "c.png", bands=bands)


LONG_NAMES = [
    "adaLN-Zero (12 x 64, 4 seeds)",
    "cross-attention (12 x 64, 4 seeds)",
    "in-context (12 x 64, 4 seeds)",
    "adaLN (6 x 128, 4 seeds)",
    "adaLN-Zero (24 x 32, 2 seeds)",
    "one_unbroken_label_wider_than_the_whole_legend_row_of_a_small_picture",
]


def test_legend_shows_every_label_in_full_inside_the_picture():
    font = ImageFont.load_default()
    left, right, width = 40, 302, 320
    entries = _legend_layout(LONG_NAMES, font, left, right, top=20)
    for (x0, y0, x1, y1), lines in entries:
        assert left <= x0 < x1 <= right <= width and 20 <= y0 < y1
        assert all(font.getlength(line) <= right - left for line in lines)
    assert [" ".join(lines).replace(" ", "") for _, lines in entries] == [n.replace(" ", "") for n in LONG_NAMES]
    boxes = [box for box, _ in entries]  # no two entries overlap
    assert not any(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3] for a, b in combinations(boxes, 2))


def test_plot_curves_with_a_long_legend_keeps_its_size(tmp_path):
    series = {name: [3.0 + k, 2.0 + k, 1.5 + k] for k, name in enumerate(LONG_NAMES)}
    path = plot_curves([10, 100, 1000], series, tmp_path / "c.png", log_x=True, smoothed=False, size=(320, 240))
    assert _pixels(path).shape == (240, 320, 3)


def test_axis_and_tick_labels_of_log_axes_read_real_values():
    assert _axis_label("training Gflops", log=True) == "training Gflops (log scale)"
    assert _axis_label("FD", log=False) == "FD" and _axis_label("", log=True) == "(log scale)"
    assert _ticks(3.0, 5.0, log=True) == [(3.0, "1e3"), (4.0, "1e4"), (5.0, "1e5")]
    assert [text for _, text in _ticks(0.9, 2.1, log=True)] == ["10", "20", "50", "100"]
    assert [text for _, text in _ticks(math.log10(0.3), math.log10(0.8), log=True)] == [
        "0.3",
        "0.4",
        "0.5",
        "0.6",
        "0.7",
        "0.8",
    ]
    assert [text for _, text in _ticks(0.0, 1.0, log=False)] == ["0", "0.2", "0.4", "0.6", "0.8", "1"]
    assert [text for _, text in _ticks(0.0, 1.5e5, log=False)] == ["0", "5e4", "1e5", "1.5e5"]


def test_plot_scatter_draws_asymmetric_intervals_and_connects_points(tmp_path):
    points = {"a": (1.0, 5.0, (4.0, 9.0)), "b": (10.0, 6.0, 0.5), "c": (100.0, 7.0, math.nan)}
    path = plot_scatter(points, tmp_path / "s.png", x_label="Gflops", y_label="FD", x_errors={"b": (5.0, 20.0)})
    rows, cols = _rows_of(_pixels(path), _COLORS[0])
    column = np.bincount(cols).argmax()  # the bar of "a": 4x longer above its dot than below
    near = np.abs(cols - column) <= 4
    wide_rows = np.nonzero(np.bincount(rows[near]) >= 7)[0]  # the dot's rows, and its caps
    dot_row = np.median(wide_rows)
    above, below = dot_row - rows[cols == column].min(), rows[cols == column].max() - dot_row
    assert above > 2.5 * below > 0
    connected = plot_scatter(points, tmp_path / "t.png", log_x=False, fit=False, connect=True)
    assert _pixels(connected).shape == (450, 800, 3)
    with pytest.raises(ValueError, match=r"x_errors names points that are not plotted: \['z'\]"):
        plot_scatter(points, tmp_path / "u.png", x_errors={"z": (1.0, 2.0)})


def test_point_labels_stay_inside_the_picture():
    font, frame = ImageFont.load_default(), _Frame((320, 200), (40, 18, 20, 40), (0.0, 1.0), (0.0, 1.0))
    for point in [(300.0, 100.0), (41.0, 21.0), (200.0, 159.0), (60.0, 100.0)]:
        x0, y0, x1, y1 = _label_box(font, LONG_NAMES[0], point, frame)
        assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 200
        assert not x0 <= point[0] <= x1 or not y0 <= point[1] <= y1  # beside the point, not over it
