"""Improved precision and recall (Kynkaenniemi et al. 2019) as ADM's evaluator computes them.

ADM's `ManifoldEstimator` (openai/guided-diffusion `evaluations/evaluator.py`): k = 3 nearest neighbours,
squared Euclidean distances max(|u|^2 - 2 u.v + |v|^2, 0) computed in float16 in blocks of 10,000 x 10,000
(a block falls back to float32 when any of its float16 distances is not finite), radius of a point = the 4th
smallest distance to its own set (the point itself included, i.e. its 3rd neighbour), `<=` to count a point
inside a ball, all reference and all sample features (10K reference images, 50K samples for ImageNet-256).

The float16 arithmetic is emulated with float16 tensors: every elementwise op rounds to float16, the sums and the
matrix product accumulate in float32 and are rounded once (as TF's GPU reductions and cuBLAS with fp32 compute).
This matters: float16 spacing at a squared distance of ~300 is 0.25, so ties at a radius are common and a float32
port moves precision/recall by ~1e-3.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ditkit.runtime.errors import InputError

NUM_NEIGHBOURS = 3  # ADM's nhood_sizes=(3,)
BLOCK_SIZE = 10_000  # ADM's row_batch_size and col_batch_size


def _sq_distances_f32(u: Tensor, v: Tensor) -> Tensor:
    norm_u = (u * u).sum(1, keepdim=True)
    norm_v = (v * v).sum(1)[None, :]
    return (norm_u - 2.0 * (u @ v.T) + norm_v).clamp_min_(0.0)


def _sq_distances_f16(u: Tensor, v: Tensor) -> Tensor:
    """ADM's `_batch_pairwise_distances` on float16 inputs, op by op in float16 tensors (each result rounded to
    float16; the sums and the matrix product accumulate in float32 and are rounded once, as on TF's GPU)."""
    u16, v16 = u.half(), v.half()
    norm_u = (u16 * u16).float().sum(1, keepdim=True).half()  # tf.reduce_sum(tf.square(U), 1)
    norm_v = (v16 * v16).float().sum(1).half()[None, :]
    d = (u16.float() @ v16.float().T).half()  # tf.matmul(U, V, transpose_b=True)
    d = (norm_u - d * 2) + norm_v
    return d.clamp_min_(0).float()  # tf.maximum(..., 0.0); NaN stays NaN and triggers the float32 fallback


def pairwise_sq_distances(u: Tensor, v: Tensor, float16: bool = True) -> Tensor:
    """(A, B) float32 squared distances between rows of u (A, D) and v (B, D), as one ADM `DistanceBlock` call.

    With `float16` (ADM's default) the float16 result is used unless any entry is not finite; then the whole
    block is recomputed in float32, as ADM's `tf.cond` does.
    """
    if float16:
        d = _sq_distances_f16(u, v)
        if bool(torch.isfinite(d).all()):
            return d
    return _sq_distances_f32(u.float(), v.float())


def manifold_radii(
    feats: np.ndarray | Tensor,
    k: int = NUM_NEIGHBOURS,
    block_size: int = BLOCK_SIZE,
    float16: bool = True,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """(N,) float32 squared radius of each point's k-NN ball: the (k+1)-th smallest distance to its own set
    (self included, so the k-th neighbour), ADM's `manifold_radii` with blocks of `block_size` rows and columns.
    """
    x = _as_features(feats, device)
    if x.ndim != 2 or x.shape[0] <= k:
        raise InputError(f"manifold_radii needs features (N, D) with N > k={k}; got shape {tuple(x.shape)}")
    radii = []
    for i in range(0, len(x), block_size):
        rows = x[i : i + block_size]
        # The k+1 smallest of each column block, then of their union: the same value as a partition of the full row.
        smallest = [
            pairwise_sq_distances(rows, x[j : j + block_size], float16).topk(
                min(k + 1, len(x[j : j + block_size])), dim=1, largest=False
            )[0]
            for j in range(0, len(x), block_size)
        ]
        radii.append(torch.cat(smallest, dim=1).kthvalue(k + 1, dim=1).values)
    return torch.cat(radii).cpu().numpy()


def precision_recall(
    ref_feats: np.ndarray | Tensor,
    sample_feats: np.ndarray | Tensor,
    k: int = NUM_NEIGHBOURS,
    block_size: int = BLOCK_SIZE,
    float16: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """(precision, recall) of samples against a reference, ADM's `compute_prec_recall`.

    Args:
        ref_feats: (R, D) reference features (ADM: pool_3 of the 10K reference images).
        sample_feats: (S, D) sample features (ADM: all 50K samples).
    Precision: fraction of samples inside some reference ball; recall: fraction of reference points inside
    some sample ball; balls are k-NN radii within each set. Distances are d(ref_i, sample_j), in blocks.
    """
    ref, sample = _as_features(ref_feats, device), _as_features(sample_feats, device)
    if ref.ndim != 2 or sample.ndim != 2 or ref.shape[1] != sample.shape[1]:
        raise InputError(
            f"precision_recall needs (N, D) features of one D; got {tuple(ref.shape)} and {tuple(sample.shape)}"
        )
    ref_radii = torch.from_numpy(manifold_radii(ref, k, block_size, float16, device)).to(ref.device)
    sample_radii = torch.from_numpy(manifold_radii(sample, k, block_size, float16, device)).to(ref.device)
    ref_inside = torch.zeros(len(ref), dtype=torch.bool, device=ref.device)  # ref point in the sample manifold
    sample_inside = torch.zeros(len(sample), dtype=torch.bool, device=ref.device)
    for i in range(0, len(ref), block_size):
        for j in range(0, len(sample), block_size):
            d = pairwise_sq_distances(ref[i : i + block_size], sample[j : j + block_size], float16)
            ref_inside[i : i + block_size] |= (d <= sample_radii[None, j : j + block_size]).any(dim=1)
            sample_inside[j : j + block_size] |= (d <= ref_radii[i : i + block_size, None]).any(dim=0)
    return sample_inside.double().mean().item(), ref_inside.double().mean().item()


def _as_features(x: np.ndarray | Tensor, device: str | torch.device) -> Tensor:
    t = x.detach() if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(device=device, dtype=torch.float32)
