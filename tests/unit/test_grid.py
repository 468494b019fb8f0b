"""PNG grids and the loss-curve plot (PIL only)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from ditkit.sampling.grid import make_grid, plot_curves, save_grid, smooth


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
