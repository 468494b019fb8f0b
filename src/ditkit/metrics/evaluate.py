"""Sample-quality evaluation of uint8 NHWC images: features from a pluggable `FeatureExtractor`, `ref_stats` and
`evaluate_samples` (FID, sFID, IS, precision/recall, KID) as ADM's evaluator (openai/guided-diffusion
`evaluations/evaluator.py`); the maths is in `ditkit.metrics.statistics`, what differs in docs/evaluation.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from torch import Tensor

from ditkit.data.image_files import ImageSet, ImageSource, open_images
from ditkit.metrics.precision_recall import precision_recall
from ditkit.metrics.statistics import ActivationStats, frechet_distance, inception_score, kernel_inception_distance
from ditkit.runtime.errors import InputError
from ditkit.runtime.files import save_npz
from ditkit.runtime.progress import progress

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
    desc: str = "features",
) -> _Features:
    """Run the extractor over the first `limit` images, streaming statistics and keeping what is asked; a
    progress bar (a line per interval off a terminal) shows images/s and the time left."""
    limit = images.num_images if limit is None else limit
    keep = np.ones(limit, dtype=bool)  # which images' pool features to keep: a seeded subset past max_pool
    if max_pool is not None and limit > max_pool:
        keep[:] = False
        keep[np.random.default_rng(seed).choice(limit, max_pool, replace=False)] = True
    out, pools, logits, start = _Features({k: ActivationStats() for k in stat_kinds}), [], [], 0
    bar = progress(total=limit, desc=desc, unit="images", leave=False)
    for batch in images.batches(batch_size, limit):
        feats = {k: v.detach().float().cpu().numpy() for k, v in extractor(batch).items()}
        for kind, stats in out.stats.items():
            stats.update(feats[kind])
        if keep_pool:
            pools.append(feats["pool"][keep[start : start + len(batch)]].astype(np.float32))
        if keep_logits:
            logits.append(feats["logits"].astype(np.float32))
        start += len(batch)
        bar.update(len(batch))
    bar.close()
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
    feats = _extract(
        src, extractor, kinds, batch_size, keep_pool="pool" in kinds, max_pool=max_features, seed=seed, desc="ref-stats"
    )
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
            names = [name for kind in stats for name in _STAT_KEYS[kind]] + ["pool_features"] * (pool is not None)
            _check_finite(ref, {name: data[name] for name in names})
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
            pool = _extract(
                open_images(ref), extractor, [], batch_size, keep_pool=True, max_pool=max_features, desc="reference"
            ).pool
        return stats, pool
    feats = _extract(
        open_images(ref), extractor, kinds, batch_size, keep_pool=need_pool, max_pool=max_features, desc="reference"
    )
    return {k: (s.mean, s.cov) for k, s in feats.stats.items()}, feats.pool


def _check_finite(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Refuse stored statistics holding NaN or inf: every metric computed from them would be nan."""
    for name, array in arrays.items():
        finite = np.isfinite(array)
        if not finite.all():
            raise InputError(
                f"reference statistics {str(path)!r}: array {name!r} holds {finite.size - int(finite.sum())} "
                f"non-finite values (NaN or inf) of {finite.size}, so every score would be nan; the file is "
                "damaged: recompute it from the reference images (`ref_stats`, the `ditkit ref-stats` command)",
                setting="ref",
            )


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
        desc="samples",
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
