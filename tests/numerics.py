"""The one home of numeric tolerances in the tests: fp32 results compared across machines.

Why a budget in ulps of the reference's scale: the same fp32 computation summed in another order (another
CPU vendor's kernels, another thread count, another batch size, gradients accumulated over micro-batches)
moves each result by about one unit in the last place (eps = 2**-23 ~ 1.19e-7) of the largest value that
the operation touched, per operation of the chain. Elementwise relative tolerances are meaningless for such
chains: a value near zero in a tensor whose scale is ~400 carries an absolute error of ~400 * eps. So a
comparison allows `ops` ulps of max|expected| (per tensor), with `ops` counted roughly as the sequential
operations of the chain and written next to each call. Measured on Intel Cascade Lake, AMD EPYC (Zen 3, AVX2)
and AMD EPYC (avx512_bf16), 1 and 2 threads: at most ~5 ulps of the scale for the longest chain here (a
25-step DDIM loop), so the budgets below keep >= 4x headroom while a real defect (a wrong timestep, a
missing term, another seed) moves results by orders of magnitude more.

Comparisons that are exact by construction (copies, integer maths, float64 schedules) stay exact, and
statistical bounds (sample means of N draws) say so where they are made.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from torch import Tensor

FP32_EPS = float(torch.finfo(torch.float32).eps)  # 2**-23

# Budgets (ulps of the reference's scale) for the chains the tests compare.
OPS_ELEMENTWISE = 8  # a handful of pointwise ops (q_sample, posterior, one sampler update)
OPS_FORWARD = 32  # one forward pass of a tiny DiT (2-3 blocks of matmul + layernorm + attention + softmax)
OPS_BACKWARD = 64  # a forward and backward pass (gradients), or one optimizer-free training step
OPS_PER_SAMPLING_STEP = 4  # added per step of a sampling loop that feeds its output back in


def fp32_atol(expected: Tensor | np.ndarray | float, ops: int) -> float:
    """Absolute tolerance of `ops` fp32 ulps at the scale of `expected` (max |expected|, at least 1e-30)."""
    scale = float(np.max(np.abs(np.asarray(expected, dtype=np.float64)))) if np.size(expected) else 0.0
    return ops * FP32_EPS * max(scale, 1e-30)


def assert_fp32_close(actual: Tensor, expected: Tensor, *, ops: int, msg: str | None = None) -> None:
    """actual == expected within `ops` ulps of max|expected| (see the module docstring)."""
    atol = fp32_atol(expected.detach().double().cpu().numpy(), ops)
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=atol, msg=msg)


def approx_fp32(expected: float | Sequence[float], *, ops: int) -> object:
    """pytest.approx for fp32 scalars (losses, norms): `ops` ulps of each value's own magnitude."""
    return pytest.approx(expected, rel=ops * FP32_EPS, abs=0.0)
