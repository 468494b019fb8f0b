"""Frechet distance (FID, sFID), Inception Score and KID of feature arrays, and `ActivationStats` (streamed float64
mean and covariance): FID and IS as ADM's evaluator computes them (openai/guided-diffusion `evaluations/evaluator.py`),
KID as Binkowski et al. 2018 (arXiv:1801.01401) define it.
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import torch
from scipy import linalg
from torch import Tensor

from ditkit.runtime.errors import InputError

logger = logging.getLogger(__name__)


# Frechet distance and streaming statistics.


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians, as ADM computes it.

    ADM passes the samples' statistics first and the reference's second. (S1 S2)^(1/2) is scipy's `sqrtm`;
    if that is not finite, `eps` is added to both diagonals and it is taken again; a complex result is
    accepted when its diagonal's imaginary part is within 1e-3 of zero (then the real part is used), else
    ValueError, as in ADM's `FIDStatistics.frechet_distance`. Arithmetic in float64 (ADM's mean term: float32).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise InputError(
            f"frechet_distance needs mu (D,) and sigma (D, D) of one D; got {mu1.shape}, "
            f"{sigma1.shape}, {mu2.shape}, {sigma2.shape}: were both computed by the same extractor?"
        )
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        logger.warning("Frechet distance: singular covariance product; adding %g to the diagonals (as ADM)", eps)
        offset = np.eye(d) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise InputError(
                f"Frechet distance: the covariance square root has an imaginary part up to "
                f"{np.abs(covmean.imag).max():.3g} (ADM's evaluator stops here too): the statistics are too "
                f"degenerate; use more images (at least the feature dimension, {d})"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """scipy.linalg.sqrtm without its singular-matrix warning (ADM calls it with disp=False: no message)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        return linalg.sqrtm(a)


class ActivationStats:
    """Running mean and covariance of feature vectors, accumulated in float64 batch by batch.

    Sums are taken around a shift (the first batch's mean) so the covariance does not lose precision
    when the mean is large; no feature array is ever kept.
    """

    def __init__(self) -> None:
        self.count = 0
        self.shift: np.ndarray | None = None  # (D,)
        self.sum: np.ndarray | None = None  # (D,) sum of (x - shift)
        self.sum_outer: np.ndarray | None = None  # (D, D) sum of (x - shift)(x - shift)^T

    @property
    def dim(self) -> int | None:
        return None if self.shift is None else int(self.shift.shape[0])

    def update(self, feats: np.ndarray | Tensor) -> None:
        """Add a batch of features (N, D)."""
        x = _to_numpy(feats, np.float64)
        if x.ndim != 2:
            raise InputError(f"ActivationStats.update expects features (N, D); got shape {x.shape}")
        if self.shift is None:
            self.shift = x.mean(axis=0)
            self.sum = np.zeros_like(self.shift)
            self.sum_outer = np.zeros((x.shape[1], x.shape[1]))
        elif x.shape[1] != self.dim:
            raise InputError(f"ActivationStats.update: feature dim changed from {self.dim} to {x.shape[1]}")
        xc = x - self.shift
        self.count += x.shape[0]
        self.sum += xc.sum(axis=0)
        self.sum_outer += xc.T @ xc

    def merge(self, other: ActivationStats) -> None:
        """Add another accumulator's samples (e.g. from another rank) into this one."""
        if other.count == 0:
            return
        if self.count == 0:
            self.count, self.shift = other.count, other.shift.copy()
            self.sum, self.sum_outer = other.sum.copy(), other.sum_outer.copy()
            return
        if other.dim != self.dim:
            raise InputError(f"ActivationStats.merge: dims differ ({self.dim} vs {other.dim})")
        # Move other's sums from its shift to ours: x - s = (x - t) + (t - s).
        delta = other.shift - self.shift
        self.sum_outer += (
            other.sum_outer
            + np.outer(other.sum, delta)
            + np.outer(delta, other.sum)
            + other.count * np.outer(delta, delta)
        )
        self.sum += other.sum + other.count * delta
        self.count += other.count

    @property
    def mean(self) -> np.ndarray:
        """(D,) sample mean."""
        if self.count == 0:
            raise InputError("ActivationStats.mean: no features were added; call update() first")
        return self.shift + self.sum / self.count

    @property
    def cov(self) -> np.ndarray:
        """(D, D) unbiased sample covariance (as np.cov with rowvar=False)."""
        if self.count < 2:
            raise InputError(f"ActivationStats.cov needs at least 2 samples; got {self.count}")
        centered_sum = self.sum_outer - np.outer(self.sum, self.sum) / self.count
        return centered_sum / (self.count - 1)

    def save(self, path: str | os.PathLike) -> None:
        """Write the raw sums (resumable with `load` + `update`) to an .npz file."""
        if self.count == 0:
            raise InputError(f"ActivationStats.save: nothing to save to {path}; call update() first")
        np.savez(path, count=self.count, shift=self.shift, sum=self.sum, sum_outer=self.sum_outer)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ActivationStats:
        with np.load(path) as data:
            missing = {"count", "shift", "sum", "sum_outer"} - set(data.files)
            if missing:
                raise InputError(f"{path} is not an ActivationStats file (missing {sorted(missing)})")
            stats = cls()
            stats.count = int(data["count"])
            stats.shift, stats.sum, stats.sum_outer = data["shift"], data["sum"], data["sum_outer"]
        return stats


# Inception Score and KID (precision/recall: ditkit.metrics.precision_recall).


def inception_score(logits: np.ndarray | Tensor, split_size: int = 5000) -> float:
    """Inception Score exp(E_x KL(p(y|x) || p(y))), averaged over contiguous splits of `split_size` (ADM: 5000).

    Args:
        logits: (N, K) pre-softmax scores (for Inception: pool_3 @ W, 1008 classes, no bias).
    As ADM's `compute_inception_score`: float32 softmax and float32 numpy arithmetic, splits in order, the last
    one shorter when N is not a multiple (50K samples: 10 splits). A probability that underflows to 0 counts
    as 0 * log 0 = 0 (ADM gets NaN).
    """
    x = torch.as_tensor(_to_numpy(logits, np.float32))
    if x.ndim != 2 or x.shape[0] < 1 or split_size < 1:
        raise InputError(
            f"inception_score needs logits (N, K) and split_size >= 1; got shape {tuple(x.shape)}, "
            f"split_size={split_size}"
        )
    preds = torch.softmax(x, dim=1).numpy()
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i : i + split_size]
        with np.errstate(divide="ignore", invalid="ignore"):  # 0 * log 0 -> 0 below
            kl = np.where(part > 0, part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0))), 0.0)
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def kernel_inception_distance(
    feats1: np.ndarray | Tensor,
    feats2: np.ndarray | Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> float:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel (x.y / D + 1)^3, averaged over subsets."""
    x_all, y_all = _to_numpy(feats1, np.float64), _to_numpy(feats2, np.float64)
    m = min(len(x_all), len(y_all), subset_size)
    if m < 2 or x_all.shape[1] != y_all.shape[1]:
        raise InputError(
            f"kernel_inception_distance needs >= 2 samples per set of one dim; got {x_all.shape} and {y_all.shape}"
        )
    rng, d, total = np.random.default_rng(seed), x_all.shape[1], 0.0
    for _ in range(num_subsets):
        x = x_all[rng.choice(len(x_all), m, replace=False)]
        y = y_all[rng.choice(len(y_all), m, replace=False)]
        k_xx, k_yy, k_xy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        total += within - 2.0 * k_xy.mean()
    return float(total / num_subsets)


def _to_numpy(x: np.ndarray | Tensor, dtype: type) -> np.ndarray:
    arr = x.numpy(force=True) if isinstance(x, Tensor) else np.asarray(x)
    return arr.astype(dtype, copy=False)
