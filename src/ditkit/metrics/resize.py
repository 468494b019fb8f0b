"""The resize to Inception's 299 x 299 input, in the two conventions FID numbers are published with.

- "adm" (the default): TensorFlow 1's legacy bilinear resize, the `ResizeBilinear` node inside the 2015 Inception
  graph that ADM's evaluator (openai/guided-diffusion `evaluations/evaluator.py`, used for DiT's FID-50K 2.27)
  feeds with raw [0, 255] pixels. That op predates `half_pixel_centers`, so output pixel i samples the input at
  i * in / out (no half-pixel offset; the last rows and columns clamp to the edge). `tf1_resize_bilinear` is
  bit-exact against TensorFlow's CPU kernel (tests/unit/test_adm_evaluator.py holds the hashes of its outputs).
- "pytorch-fid": `F.interpolate(mode="bilinear", align_corners=False)`, half-pixel centres
  (src = (i + 0.5) * in / out - 0.5), as pytorch-fid resizes. For 256 -> 299 it samples 0.07 px from the TF
  grid, for 32 -> 299 0.45 px: enough to move FID by several percent on small or noisy images.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ditkit.runtime.errors import InputError

ResizeMode = Literal["adm", "pytorch-fid"]
RESIZE_MODES: tuple[str, ...] = get_args(ResizeMode)


def check_resize(mode: str) -> None:
    """ValueError naming `mode` and the choices unless it is one of RESIZE_MODES."""
    if mode not in RESIZE_MODES:
        raise InputError(f"unknown resize {mode!r}; choose from {', '.join(RESIZE_MODES)}", setting="resize")


def _legacy_taps(n_in: int, n_out: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(lo, hi, frac) per output index along one axis, in TF's float32 arithmetic (LegacyScaler).

    scale = float32(n_in) / float32(n_out); src = float32(i) * scale; lo = floor(src), hi = min(ceil(src),
    n_in - 1); frac = src - floor(src). Computed in numpy float32 so every step rounds as TF's C++ does.
    """
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.arange(n_out, dtype=np.float32) * scale
    floor = np.floor(src)
    lo = np.maximum(floor, 0).astype(np.int64)
    hi = np.minimum(np.ceil(src), n_in - 1).astype(np.int64)
    frac = (src - floor).astype(np.float32)
    return (torch.from_numpy(lo).to(device), torch.from_numpy(hi).to(device), torch.from_numpy(frac).to(device))


def tf1_resize_bilinear(x: Tensor, size: int | tuple[int, int] = 299) -> Tensor:
    """TF1 `tf.image.resize_bilinear(x, size)` (align_corners=False, no half-pixel centres) in float32.

    Args:
        x: (N, C, H, W) any real dtype; values are interpolated as they are (ADM feeds 0..255).
        size: output (height, width), or one int for a square.
    Returns:
        (N, C, out_h, out_w) float32. When the size does not change the input is only cast, as in TF.
    """
    if x.ndim != 4:
        raise InputError(f"tf1_resize_bilinear expects (N, C, H, W); got shape {tuple(x.shape)}", setting="x")
    out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    x = x.to(torch.float32)
    if (x.shape[-2], x.shape[-1]) == (out_h, out_w):
        return x.clone()
    y_lo, y_hi, fy = _legacy_taps(x.shape[-2], out_h, x.device)
    x_lo, x_hi, fx = _legacy_taps(x.shape[-1], out_w, x.device)
    top_rows, bottom_rows = x.index_select(2, y_lo), x.index_select(2, y_hi)  # (N, C, out_h, W)
    top_left, top_right = top_rows.index_select(3, x_lo), top_rows.index_select(3, x_hi)
    bottom_left, bottom_right = bottom_rows.index_select(3, x_lo), bottom_rows.index_select(3, x_hi)
    fx, fy = fx.view(1, 1, 1, out_w), fy.view(1, 1, out_h, 1)
    # TF's compute_lerp: along x first, then y, each as a + (b - a) * t with separate multiply and add.
    top = top_left + (top_right - top_left) * fx
    bottom = bottom_left + (bottom_right - bottom_left) * fx
    return top + (bottom - top) * fy


def resize_for_inception(x: Tensor, mode: ResizeMode, size: int = 299) -> Tensor:
    """(N, C, H, W) pixels in [0, 255] -> (N, C, size, size) float32 with the `mode` resize (see module doc)."""
    check_resize(mode)
    if mode == "adm":
        return tf1_resize_bilinear(x, size)
    x = x.to(torch.float32)  # pytorch-fid
    if (x.shape[-2], x.shape[-1]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
