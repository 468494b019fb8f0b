"""A study's final scoring of generated digits: two disjoint sample sets of one model, scored in the digit
classifier's feature space (accuracy, FD, its sampling noise and bootstrap interval, precision / recall) and in a
second feature space that shares nothing with the classifier (pixels, or the FID Inception network).
"""

from __future__ import annotations

import weakref
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ditkit.data.datasets import frame_digits
from ditkit.metrics.digit_classifier import (
    DIGIT_SIZE,
    DigitClassifier,
    _load_mnist,
    _predict,
    load_digit_classifier,
    real_digit_stats,
    to_digit_tensor,
)
from ditkit.metrics.intervals import BOOTSTRAP_RESAMPLES, bootstrap_fd_interval
from ditkit.metrics.precision_recall import precision_recall
from ditkit.metrics.statistics import ActivationStats, frechet_distance
from ditkit.runtime.errors import InputError

SecondView = Literal["pixels", "inception", "none"]
SECOND_VIEWS: tuple[str, ...] = ("pixels", "inception", "none")
PIXEL_POOL = 4  # "pixels": 32 x 32 digits average-pooled 4 x 4 -> 8 x 8 = 64 features

_REAL_FEATURES: weakref.WeakKeyDictionary[nn.Module, Tensor] = weakref.WeakKeyDictionary()
_REAL_VIEWS: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def pixel_features(images: np.ndarray | Tensor) -> Tensor:
    """uint8 digits (N, H, W[, C]) -> (N, 64): the framed 32 px digit average-pooled to 8 x 8 in [-1, 1]."""
    return F.avg_pool2d(to_digit_tensor(images), PIXEL_POOL).flatten(1)


def _real_features(classifier: DigitClassifier) -> Tensor:
    """The classifier's (1000, 128) features of the held-out real digits (precision / recall's reference)."""
    if classifier not in _REAL_FEATURES:
        _REAL_FEATURES[classifier] = _predict(classifier, _load_mnist()[2])[0]
    return _REAL_FEATURES[classifier]


def _view_features(view: SecondView, images: np.ndarray) -> Tensor:
    if view == "pixels":
        return pixel_features(images)
    from ditkit.metrics.inception import load_inception  # only this view needs the network

    return load_inception(None)(np.asarray(images))["pool"]


def _real_view_stats(view: SecondView) -> tuple[np.ndarray, np.ndarray]:
    if view not in _REAL_VIEWS:
        stats = ActivationStats()  # framed to 32 px like the samples (Inception resizes, so 28 px would differ)
        stats.update(_view_features(view, frame_digits(_load_mnist()[2], DIGIT_SIZE)))
        _REAL_VIEWS[view] = (stats.mean, stats.cov)
    return _REAL_VIEWS[view]


def _fd(features: Tensor, ref: tuple[np.ndarray, np.ndarray]) -> float:
    stats = ActivationStats()
    stats.update(features)
    return frechet_distance(stats.mean, stats.cov, *ref)


def score_digit_sets(
    first: np.ndarray,
    second: np.ndarray | None,
    labels: np.ndarray,
    *,
    classifier: DigitClassifier | None = None,
    second_view: SecondView = "pixels",
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, float]:
    """Scores of two disjoint sample sets of one model (uint8 digits, the same `labels`), all against the 1,000
    held-out real digits:

    accuracy (first set, on the requested class); fd, and with `resamples` >= 2 fd_lo / fd_hi (first set, its
    bootstrap interval over the samples); fd_second (the second set: |fd - fd_second| is FD's own sampling
    noise); precision and recall (first set, digit features, k = 3 as ADM); fd_<view> (first set in the second
    feature space).
    `second` may be None (no second set: no fd_second).
    """
    if second_view not in SECOND_VIEWS:
        raise InputError(f"second_view must be one of {SECOND_VIEWS}; got {second_view!r}", setting="second_view")
    classifier = load_digit_classifier() if classifier is None else classifier
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long).flatten()
    if len(labels_t) != len(first) or (second is not None and len(second) != len(first)) or len(first) < 2:
        raise InputError(
            f"score_digit_sets needs two sets of one size >= 2 with a label each; got {len(first)}, "
            f"{None if second is None else len(second)} samples and {len(labels_t)} labels",
            setting="samples",
        )
    feats, logits = _predict(classifier, first)
    ref = real_digit_stats(classifier)
    precision, recall = precision_recall(_real_features(classifier), feats, float16=False)
    scores = {
        "num_samples": float(len(first)),
        "accuracy": float((logits.argmax(1) == labels_t).float().mean()),
        "fd": _fd(feats, ref),
        "precision": precision,
        "recall": recall,
    }
    if resamples >= 2:
        lo, hi = bootstrap_fd_interval(feats.double().numpy(), *ref, resamples=resamples, seed=seed)
        scores.update(fd_lo=lo, fd_hi=hi)
    if second is not None:
        scores["fd_second"] = _fd(_predict(classifier, second)[0], ref)
    if second_view != "none":
        scores[f"fd_{second_view}"] = _fd(_view_features(second_view, first), _real_view_stats(second_view))
    return scores
