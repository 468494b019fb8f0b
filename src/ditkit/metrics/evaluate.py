"""Sample-quality metrics: FID, sFID, Inception Score, precision/recall and KID on uint8 NHWC images.

Definitions and numerics follow ADM's evaluator (Dhariwal & Nichol 2021, openai/guided-diffusion
`evaluations/evaluator.py`, the suite DiT's FID-50K 2.27 was measured with): FID/sFID through scipy's `sqrtm`
with its retry and complex-part check, IS over contiguous splits of 5000,
precision/recall in `ditkit.metrics.precision_recall`.
Statistics stream in float64 and the feature network is pluggable (`FeatureExtractor`); docs/evaluation.md
lists what differs from ADM and from other FID libraries.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from scipy import linalg
from torch import Tensor

from ditkit.data.image_files import ImageSet, ImageSource, open_images
from ditkit.metrics.precision_recall import precision_recall
from ditkit.runtime.errors import InputError
from ditkit.runtime.files import save_npz

logger = logging.getLogger(__name__)

FEATURE_KINDS: tuple[str, ...] = ("pool", "spatial", "logits")
METRICS: tuple[str, ...] = ("fid", "sfid", "is", "precision", "recall", "kid")
DEFAULT_METRICS: tuple[str, ...] = ("fid", "sfid", "is", "precision", "recall")
_FEATURE_FOR_METRIC = {
    "fid": "pool",
    "sfid": "spatial",
    "is": "logits",
    "precision": "pool",
    "recall": "pool",
    "kid": "pool",
}
_STAT_KEYS = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}  # ADM reference-batch names


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


# Feature extractors.


@runtime_checkable
class FeatureExtractor(Protocol):
    """What the metrics need from a feature network (InceptionExtractor, DigitFeatureExtractor).

    `__call__` takes a uint8 batch (N, H, W, C), C in {1, 3}, and returns CPU or device tensors for a
    subset of FEATURE_KINDS: "pool" (N, D) for FID / precision / recall / KID, "spatial" (N, Ds) for sFID,
    "logits" (N, K) for IS. `available` names the kinds it returns. An optional `name` attribute is
    stored in reference files so statistics from different networks are never compared; an optional
    `matches_adm` (True for Inception with ADM's input path) says that ADM's precomputed reference
    statistics are comparable with its features; an optional `device` is where precision/recall runs.
    """

    available: AbstractSet[str]

    def __call__(self, images: np.ndarray) -> dict[str, Tensor]: ...


def extractor_name(extractor: FeatureExtractor) -> str:
    return str(getattr(extractor, "name", type(extractor).__name__))


def stats_extractor(path: str | os.PathLike) -> str | None:
    """The extractor name stored in a `ref_stats` file; None for files without one (ADM reference batches)."""
    with np.load(path) as data:
        return str(data["extractor"]) if "extractor" in data.files else None


# Feature extraction and the entry points.


@dataclass
class _Features:
    stats: dict[str, ActivationStats]  # kind -> streamed statistics
    pool: np.ndarray | None = None  # (M, D) float32 pool features kept for precision/recall/KID
    logits: np.ndarray | None = None  # (N, K) float32


def _extract(
    images: ImageSet,
    extractor: FeatureExtractor,
    stat_kinds: Sequence[str],
    batch_size: int,
    *,
    keep_pool: bool = False,
    keep_logits: bool = False,
    limit: int | None = None,
    max_pool: int | None = None,
    seed: int = 0,
) -> _Features:
    """Run the extractor over the first `limit` images, streaming statistics and keeping what is asked."""
    limit = images.num_images if limit is None else limit
    keep = np.ones(limit, dtype=bool)  # which images' pool features to keep: a seeded subset past max_pool
    if max_pool is not None and limit > max_pool:
        keep[:] = False
        keep[np.random.default_rng(seed).choice(limit, max_pool, replace=False)] = True
    out, pools, logits, start = _Features({k: ActivationStats() for k in stat_kinds}), [], [], 0
    for batch in images.batches(batch_size, limit):
        feats = {k: v.detach().float().cpu().numpy() for k, v in extractor(batch).items()}
        for kind, stats in out.stats.items():
            stats.update(feats[kind])
        if keep_pool:
            pools.append(feats["pool"][keep[start : start + len(batch)]].astype(np.float32))
        if keep_logits:
            logits.append(feats["logits"].astype(np.float32))
        start += len(batch)
        logger.debug("features: %d / %d images", start, limit)
    out.pool = np.concatenate(pools) if keep_pool else None
    out.logits = np.concatenate(logits) if keep_logits else None
    return out


def ref_stats(
    images: ImageSource,
    extractor: FeatureExtractor,
    out_path: str | os.PathLike,
    batch_size: int = 64,
    max_features: int = 10_000,
    seed: int = 0,
) -> Path:
    """Write a reference-statistics .npz for `evaluate_samples`.

    Keys: `mu`/`sigma` (pool) and `mu_s`/`sigma_s` (spatial) with the ADM reference-batch names, as far as
    the extractor gives them; `pool_features` (M, D) float32, a seeded random subset of at most
    `max_features` images (ADM's reference batches hold 10K) for precision/recall/KID; `num_images`;
    `extractor` (its name, checked when the file is used).
    """
    src = open_images(images)
    kinds = [k for k in ("pool", "spatial") if k in extractor.available]
    if not kinds:
        raise InputError(
            f"extractor {extractor_name(extractor)} gives no pool or spatial features "
            f"(available: {sorted(extractor.available)})",
            setting="extractor",
        )
    feats = _extract(src, extractor, kinds, batch_size, keep_pool="pool" in kinds, max_pool=max_features, seed=seed)
    arrays = {"num_images": np.int64(src.num_images), "extractor": np.array(extractor_name(extractor))}
    for kind in kinds:
        mu_key, sigma_key = _STAT_KEYS[kind]
        arrays[mu_key], arrays[sigma_key] = feats.stats[kind].mean, feats.stats[kind].cov
    if feats.pool is not None:
        arrays["pool_features"] = feats.pool
    out_path = save_npz(out_path, **arrays)
    logger.info("reference statistics of %d images (%s) -> %s", src.num_images, ", ".join(kinds), out_path)
    return out_path


def _load_reference(
    ref: ImageSource,
    extractor: FeatureExtractor,
    kinds: list[str],
    need_pool: bool,
    batch_size: int,
    max_features: int | None,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray | None]:
    """({kind: (mu, sigma)}, pool features or None) from a stats file (ours or ADM's) or from images.

    An ADM reference batch (arr_0 images + mu/sigma/mu_s/sigma_s) is read as ADM reads it: the stored
    statistics for FID/sFID, the features of its images (all of them unless `max_features`) for P/R.
    """
    stats, pool = {}, None
    is_npz = not isinstance(ref, (np.ndarray, Tensor)) and Path(ref).suffix == ".npz" and Path(ref).is_file()
    if is_npz:
        with np.load(ref) as data:
            stored = str(data["extractor"]) if "extractor" in data.files else None
            if stored is not None and stored != extractor_name(extractor):
                raise InputError(
                    f"{ref} was computed with extractor {stored!r} but evaluation uses "
                    f"{extractor_name(extractor)!r}: rebuild it with ditkit ref-stats, or evaluate with the "
                    "extractor it was made with (files named 'inception-2015-12-05' need resize='pytorch-fid')"
                )
            stats = {k: (data[m], data[s]) for k, (m, s) in _STAT_KEYS.items() if {m, s} <= set(data.files)}
            pool = data["pool_features"] if "pool_features" in data.files else None
            has_images = "arr_0" in data.files or "images" in data.files
        if stats and stored is None and not getattr(extractor, "matches_adm", False):
            logger.warning(
                "%s holds precomputed statistics without an extractor name (an ADM reference batch): they come "
                "from ADM's evaluator, but %s is not its input path; FID/sFID mix the two",
                ref,
                extractor_name(extractor),
            )
    if is_npz and stats:
        if pool is None and need_pool and has_images:
            # An ADM reference batch: mu/sigma are stored, its images give the precision/recall features.
            pool = _extract(open_images(ref), extractor, [], batch_size, keep_pool=True, max_pool=max_features).pool
        return stats, pool
    feats = _extract(open_images(ref), extractor, kinds, batch_size, keep_pool=need_pool, max_pool=max_features)
    return {k: (s.mean, s.cov) for k, s in feats.stats.items()}, feats.pool


def evaluate_samples(
    samples: ImageSource,
    ref: ImageSource,
    extractor: FeatureExtractor,
    batch_size: int = 64,
    metrics: Sequence[str] = DEFAULT_METRICS,
    num_samples: int | None = None,
    max_ref_features: int | None = None,
    is_split_size: int = 5000,
) -> dict:
    """Score generated images against a reference.

    Args:
        samples: uint8 (N, H, W, C) array, .npz (`arr_0`, the ADM layout), .npy or folder of images.
        ref: a `ref_stats` file, an ADM reference batch (arr_0 + mu/sigma/mu_s/sigma_s), or reference
            images in any `samples` form.
        metrics: any of METRICS; "kid" is off by default (it costs 100 subset MMDs).
        num_samples: use only the first this many samples (default: all). All their pool features are
            kept for precision/recall (50K x 2048 float32 = 400 MB).
        max_ref_features: reference images used for precision/recall; default all of them (ADM; its
            ImageNet batches hold 10K), else a seeded random subset.
        is_split_size: Inception Score split length (ADM: 5000, so 10 splits for 50K samples).
    Returns:
        {"fid", "sfid", "is", "precision", "recall", "kid"}: floats for the metrics computed, plus
        "num_samples" and "unavailable": the requested metrics that the extractor or reference cannot give.
    """
    if set(metrics) - set(METRICS):
        raise InputError(
            f"unknown metrics {sorted(set(metrics) - set(METRICS))}; choose from {', '.join(METRICS)}",
            setting="metrics",
        )
    src = open_images(samples)
    n = src.num_images if num_samples is None else num_samples
    if not 2 <= n <= src.num_images:
        raise InputError(
            f"num_samples must be in [2, {src.num_images}] (the images available); got {n}", setting="num_samples"
        )
    wanted = [m for m in metrics if _FEATURE_FOR_METRIC[m] in extractor.available]
    kinds = [kind for metric, kind in (("fid", "pool"), ("sfid", "spatial")) if metric in wanted]
    need_pool = bool({"precision", "recall", "kid"} & set(wanted))
    ref_moments, ref_pool = _load_reference(ref, extractor, kinds, need_pool, batch_size, max_ref_features)
    for m in [m for m in wanted if m in ("fid", "sfid") and _FEATURE_FOR_METRIC[m] not in ref_moments]:
        logger.warning("%s skipped: the reference has no %s statistics", m, _FEATURE_FOR_METRIC[m])
        wanted.remove(m)
    for m in [m for m in wanted if m in ("precision", "recall", "kid") and ref_pool is None]:
        logger.warning("%s skipped: the reference has no pool_features (rebuild it with ref_stats)", m)
        wanted.remove(m)
    kinds = [k for k in kinds if k in ref_moments]
    feats = _extract(
        src,
        extractor,
        kinds,
        batch_size,
        keep_pool=need_pool and ref_pool is not None,
        keep_logits="is" in wanted,
        limit=n,
    )
    result: dict = {}
    for metric, kind in (("fid", "pool"), ("sfid", "spatial")):
        if metric in wanted:
            result[metric] = frechet_distance(feats.stats[kind].mean, feats.stats[kind].cov, *ref_moments[kind])
    if "is" in wanted:
        result["is"] = inception_score(feats.logits, split_size=is_split_size)
    if "precision" in wanted or "recall" in wanted:
        precision, recall = precision_recall(ref_pool, feats.pool, device=getattr(extractor, "device", "cpu"))
        result.update({m: v for m, v in (("precision", precision), ("recall", recall)) if m in wanted})
    if "kid" in wanted:
        result["kid"] = kernel_inception_distance(ref_pool, feats.pool)
    result["num_samples"] = n
    result["unavailable"] = [m for m in metrics if m not in wanted]
    return result


def fid(samples: ImageSource, ref: ImageSource, extractor: FeatureExtractor, batch_size: int = 64) -> float:
    """FID of `samples` against `ref` (see `evaluate_samples` for the accepted forms)."""
    result = evaluate_samples(samples, ref, extractor, batch_size=batch_size, metrics=("fid",))
    if "fid" not in result:
        raise InputError(
            f"extractor {extractor_name(extractor)} gives no pool features, so no FID; "
            f"available: {sorted(extractor.available)}",
            setting="extractor",
        )
    return result["fid"]


def _to_numpy(x: np.ndarray | Tensor, dtype: type) -> np.ndarray:
    arr = x.numpy(force=True) if isinstance(x, Tensor) else np.asarray(x)
    return arr.astype(dtype, copy=False)
