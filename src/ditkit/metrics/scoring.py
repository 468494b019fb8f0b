"""Which metric scores which images: the shipped digit classifier for MNIST-framed digits, the FID family
(Inception features, ADM's definitions) for everything else. Used by `ditkit evaluate`, training-time
evaluation, the demo and the studies.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ditkit.data.autoencoder import to_uint8
from ditkit.data.datasets import MNIST_MIN_FRAME
from ditkit.data.image_files import open_images
from ditkit.metrics.digit_classifier import DigitFeatureExtractor, digits_metrics, load_digit_classifier
from ditkit.metrics.evaluate import FeatureExtractor, evaluate_samples, extractor_name, fid, ref_stats, stats_extractor
from ditkit.metrics.inception import load_inception
from ditkit.metrics.resize import ResizeMode
from ditkit.runtime.errors import InputError

logger = logging.getLogger(__name__)

Metric = Literal["digits", "inception"]
Scorer = Callable[[np.ndarray, np.ndarray], dict[str, float]]  # (uint8 (N, H, W, C), labels (N,)) -> metrics


def is_digit_images(num_classes: int, image_shape: tuple[int, int, int]) -> bool:
    """True for 10-class gray square images of 20-32 px: what the digit classifier can score."""
    height, width, channels = image_shape
    return num_classes == 10 and channels == 1 and height == width and MNIST_MIN_FRAME <= height <= 32


def feature_extractor(
    metric: Metric,
    *,
    inception: str | os.PathLike | None = None,
    allow_download: bool = False,
    device: str | torch.device = "cpu",
    resize: ResizeMode = "adm",
) -> FeatureExtractor:
    """The digit classifier's features, or the FID Inception network (see `load_inception`; `resize`: "adm"
    reproduces ADM's evaluator, "pytorch-fid" pytorch-fid's numbers)."""
    if metric == "digits":
        return DigitFeatureExtractor()
    return load_inception(inception, allow_download=allow_download, device=device, resize=resize)


def score_samples(
    samples: str | os.PathLike,
    *,
    metric: Metric = "inception",
    ref: str | os.PathLike | None = None,
    inception: str | os.PathLike | None = None,
    allow_download: bool = False,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    resize: ResizeMode = "adm",
) -> dict[str, Any]:
    """Metrics of a samples .npz (arr_0 uint8 NHWC, + labels): `ditkit evaluate`.

    "digits": accuracy on the requested classes and the Frechet distance in the classifier's feature
    space (needs `labels`), plus the FID family in that space when `ref` is given. "inception": FID,
    sFID, IS, precision and recall against `ref` (a ref-stats file, an ADM reference batch or images).
    """
    result: dict[str, Any] = {}
    if metric == "digits":
        with np.load(samples) as data:
            if "labels" not in data.files:
                raise InputError(
                    f"{samples} has no 'labels' array: the digits metric needs the requested classes "
                    "(sample_npz_job, behind `ditkit sample`, writes them)",
                    setting="samples",
                )
            result.update(digits_metrics(data["arr_0"], data["labels"]))
    if ref is not None or metric == "inception":
        if ref is None:
            raise InputError(
                "metric 'inception' needs ref=REF.npz (reference images or ditkit ref-stats output)", setting="ref"
            )
        images = open_images(samples)  # missing, empty or unreadable images fail here, before the network loads
        if Path(ref).is_dir():
            open_images(ref)  # the same for a reference folder (its check is remembered for the real read)
        extractor = feature_extractor(
            metric, inception=inception, allow_download=allow_download, device=device, resize=resize
        )
        result.update(evaluate_samples(images, ref, extractor, batch_size=batch_size))
    return result


def make_scorer(
    num_classes: int,
    image_shape: tuple[int, int, int],
    *,
    device: torch.device,
    eval_ref: str | os.PathLike | None = None,
    reference_images: Callable[[], np.ndarray] | None = None,
    reference_cache: str | os.PathLike | None = None,
) -> Scorer | None:
    """The training-time metric: digits accuracy + FD for digit images, else Inception FID.

    None (with a logged note) when the classifier or Inception weights or a FID reference are missing.
    Without `eval_ref`, FID compares with statistics of `reference_images()`, cached in `reference_cache`.
    """
    if is_digit_images(num_classes, image_shape):
        try:
            classifier = load_digit_classifier(device=device)
        except ValueError as err:
            logger.warning("evaluation off: %s", err)
            return None

        def digits_score(images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
            result = digits_metrics(images, labels, classifier)
            return {"eval_accuracy": result["accuracy"], "eval_fd": result["fd"]}

        return digits_score
    try:
        extractor = load_inception(device=device)
    except InputError as err:  # no weights here: score nothing, say why; anything else is a bug
        logger.warning("evaluation off: %s", err)
        return None
    ref: Any = eval_ref
    if ref is None:
        if reference_images is None or reference_cache is None:
            logger.warning(
                "evaluation off: no images for FID reference statistics (a latent store holds none); "
                "pass eval_ref (--eval-ref, a ref-stats .npz or reference images)"
            )
            return None
        ref = Path(reference_cache)
        if not ref.is_file() or stats_extractor(ref) != extractor_name(extractor):  # missing, or an older input path
            ref_stats(reference_images(), extractor, ref)
    return lambda images, labels: {"eval_fid": fid(images, ref, extractor)}


def dataset_reference_images(dataset: Any, count: int, seed: int) -> np.ndarray:
    """uint8 (count, H, W, C) training images in a seeded order (the default FID reference)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    chosen = order[: min(len(dataset), max(count, 2))].tolist()
    return to_uint8(torch.stack([dataset.get(i, torch.Generator().manual_seed(i))[0] for i in chosen])).numpy()


def format_scores(result: dict[str, Any]) -> str:
    """`ditkit evaluate`'s table: one metric per line."""
    return "\n".join(f"{k:>20}: {v:.4f}" if isinstance(v, float) else f"{k:>20}: {v}" for k, v in result.items())
