"""MNIST digit metrics: a small CNN classifier shipped with ditkit, class accuracy and a Frechet distance
in its penultimate (128-d) feature space, for class-conditional DiTs trained on the bundled MNIST digits.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import weakref
from collections.abc import Set as AbstractSet
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ditkit.data.datasets import MNIST_MIN_FRAME, load_mnist_arrays
from ditkit.metrics.statistics import ActivationStats, frechet_distance
from ditkit.runtime.errors import InputError

logger = logging.getLogger(__name__)

NUM_DIGIT_CLASSES: int = 10
DIGIT_SIZE: int = 32  # classifier input side: 28x28 MNIST padded by 2 on each side
FEATURE_DIM: int = 128  # penultimate features
NUM_HELDOUT: int = 1000  # held-out digits (data.load_mnist_arrays("test"))
_WEIGHTS = "mnist_classifier.safetensors"


class DigitClassifier(nn.Module):
    """Three conv blocks (conv3x3, BatchNorm, ReLU, 2x2 max-pool), global average pool, linear head."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        channels = (1, width, 2 * width, FEATURE_DIM)
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(channels):
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(FEATURE_DIM, NUM_DIGIT_CLASSES)

    def features(self, x: Tensor) -> Tensor:
        """(N, 1, 32, 32) in [-1, 1] -> (N, 128) penultimate features."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, 32, 32) in [-1, 1] -> (N, 10) logits."""
        return self.head(self.features(x))


def to_digit_tensor(images: np.ndarray | Tensor) -> Tensor:
    """uint8 (N, H, W) or (N, H, W, 1|3) -> float (N, 1, 32, 32) in [-1, 1] (RGB -> luma).

    Digits framed like MNIST (28x28, or 20..30 px crops of it) are zero-padded to 32; other sizes are resized.
    """
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images)
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3) or x.shape[1] != x.shape[2]:
        raise InputError(
            f"digit images must be uint8 (N, H, W[, 1|3]) and square; got dtype {x.dtype}, "
            f"shape {tuple(x.shape)}: convert with ((x + 1) * 127.5).round().clip(0, 255)",
            setting="samples",
        )
    x = x.permute(0, 3, 1, 2).float()
    if x.shape[1] == 3:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)  # ITU-R 601
    size = x.shape[-1]
    if MNIST_MIN_FRAME <= size < DIGIT_SIZE and (DIGIT_SIZE - size) % 2 == 0:
        x = F.pad(x, ((DIGIT_SIZE - size) // 2,) * 4)  # a framed digit (28, 24, ...): pad, never rescale
    elif size != DIGIT_SIZE:
        x = F.interpolate(x, size=(DIGIT_SIZE, DIGIT_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x / 127.5 - 1.0


def _load_mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The embedded MNIST with the project's held-out split: (train_x, train_y, test_x, test_y)."""
    train_x, train_y = load_mnist_arrays("train")
    test_x, test_y = load_mnist_arrays("test")
    return train_x, train_y, test_x, test_y


def _random_affine(
    x: Tensor,
    gen: torch.Generator,
    max_degrees: float = 12.0,
    max_shift_px: float = 2.5,
    scale_range: float = 0.1,
    max_shear: float = 0.1,
) -> Tensor:
    """Light augmentation: a random rotation, scale, shear and shift per image (N, 1, H, W)."""
    n, size = x.shape[0], x.shape[-1]
    u = torch.rand(n, 5, generator=gen) * 2 - 1  # uniform in [-1, 1]
    angle = u[:, 0] * max_degrees * torch.pi / 180
    scale = 1 + u[:, 1] * scale_range
    shear = u[:, 2] * max_shear
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos, -sin + shear, u[:, 3] * 2 * max_shift_px / size], 1),
            torch.stack([sin, cos, u[:, 4] * 2 * max_shift_px / size], 1),
        ],
        1,
    )  # (N, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1  # background stays -1


@torch.no_grad()
def classifier_accuracy(
    classifier: nn.Module, images: np.ndarray | Tensor, labels: np.ndarray | Tensor, batch_size: int = 1000
) -> float:
    """Top-1 accuracy of `classifier` on uint8 digit images."""
    preds = _predict(classifier, images, batch_size)[1].argmax(1)
    return float((preds == torch.as_tensor(np.asarray(labels), dtype=torch.long)).float().mean())


def train_classifier(
    out_path: str | os.PathLike | None = None,
    num_epochs: int = 12,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    seed: int = 0,
    num_threads: int | None = 2,
) -> tuple[DigitClassifier, float]:
    """Train the digit classifier on the 9,000 training digits; returns (model, held-out accuracy).

    AdamW with a one-cycle schedule and light affine augmentation (generated digits are imperfect).
    Writes safetensors weights to `out_path` when given. About 2 minutes on 2 CPU cores.
    """
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        train_x, train_y, test_x, test_y = _load_mnist()
        x_all, y_all = to_digit_tensor(train_x), torch.from_numpy(train_y)
        model = DigitClassifier()
        steps_per_epoch = len(x_all) // batch_size
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=num_epochs * steps_per_epoch)
        start = time.perf_counter()
        for epoch in range(num_epochs):
            model.train()
            order = torch.randperm(len(x_all), generator=gen)
            for step in range(steps_per_epoch):
                idx = order[step * batch_size : (step + 1) * batch_size]
                loss = F.cross_entropy(model(_random_affine(x_all[idx], gen)), y_all[idx], label_smoothing=0.05)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            model.eval()
            acc = classifier_accuracy(model, test_x, test_y)
            logger.info(
                "epoch %d/%d: loss %.4f, held-out accuracy %.4f, %.0f s",
                epoch + 1,
                num_epochs,
                loss.item(),
                acc,
                time.perf_counter() - start,
            )
        if out_path is not None:
            state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
            save_file(state, str(out_path), metadata={"heldout_accuracy": f"{acc:.4f}", "seed": str(seed)})
        return model, acc
    finally:
        torch.set_num_threads(previous_threads)


def load_digit_classifier(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> DigitClassifier:
    """The digit classifier in eval mode, from `path` or the weights shipped in ditkit/assets."""
    if path is None:
        asset = resources.files("ditkit").joinpath(f"assets/{_WEIGHTS}")
        if not asset.is_file():
            raise RuntimeError(
                f"shipped classifier weights ditkit/assets/{_WEIGHTS} are missing; "
                "run scripts/train_mnist_classifier.py to create them"
            )
        state = load_file(str(asset))
    else:
        if not Path(path).is_file():
            raise InputError(
                f"classifier weights not found at {path}; train with scripts/train_mnist_classifier.py", setting="path"
            )
        state = load_file(str(path))
    model = DigitClassifier()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise InputError(
            f"classifier weights do not match DigitClassifier: missing {missing}, unexpected "
            f"{unexpected}; retrain with scripts/train_mnist_classifier.py",
            setting="path",
        )
    return model.to(device).eval()


@torch.no_grad()
def _predict(classifier: nn.Module, images: np.ndarray | Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """(features (N, 128), logits (N, 10)) on CPU, for uint8 digit images."""
    device = next(classifier.parameters()).device
    x = to_digit_tensor(images)
    feats, logits = [], []
    for i in range(0, len(x), batch_size):
        f = classifier.features(x[i : i + batch_size].to(device))
        feats.append(f.cpu())
        logits.append(classifier.head(f).cpu())
    return torch.cat(feats), torch.cat(logits)


_REAL_STATS: weakref.WeakKeyDictionary[nn.Module, tuple[np.ndarray, np.ndarray]] = weakref.WeakKeyDictionary()


def real_digit_stats(classifier: DigitClassifier) -> tuple[np.ndarray, np.ndarray]:
    """(mu (128,), sigma (128, 128)) of the 1,000 held-out real digits; computed once per classifier."""
    if classifier not in _REAL_STATS:
        _, _, test_x, _ = _load_mnist()
        stats = ActivationStats()
        stats.update(_predict(classifier, test_x)[0])
        _REAL_STATS[classifier] = (stats.mean, stats.cov)
    return _REAL_STATS[classifier]


def digits_metrics(
    samples: np.ndarray | Tensor, labels: np.ndarray | Tensor, classifier: DigitClassifier | None = None
) -> dict:
    """Class accuracy and Frechet distance (classifier features) of generated digits.

    Args:
        samples: uint8 (N, 32, 32[, 1|3]) or (N, 28, 28) generated digits.
        labels: (N,) the classes the samples were generated for.
        classifier: default: `load_digit_classifier()`.
    Returns:
        "accuracy" (fraction classified as the requested class), "accuracy_per_class" (10 floats, NaN for
        classes with no samples), "fd" (Frechet distance to the held-out real digits' statistics; biased
        upwards for small N, use >= 1,000 samples to compare runs) and "num_samples".
    """
    classifier = load_digit_classifier() if classifier is None else classifier
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long).flatten()
    if len(labels_t) != len(samples) or len(labels_t) < 2:
        raise InputError(
            f"digits_metrics needs >= 2 samples and one label per sample; got {len(samples)} "
            f"samples and {len(labels_t)} labels",
            setting="samples",
        )
    if labels_t.min() < 0 or labels_t.max() >= NUM_DIGIT_CLASSES:
        raise InputError(
            f"labels must be digit classes 0-9; got range [{labels_t.min()}, {labels_t.max()}]", setting="labels"
        )
    feats, logits = _predict(classifier, samples)
    correct = (logits.argmax(1) == labels_t).float()
    per_class = [
        float(correct[labels_t == c].mean()) if (labels_t == c).any() else float("nan")
        for c in range(NUM_DIGIT_CLASSES)
    ]
    stats = ActivationStats()
    stats.update(feats)
    fd = frechet_distance(stats.mean, stats.cov, *real_digit_stats(classifier))
    return {
        "accuracy": float(correct.mean()),
        "accuracy_per_class": per_class,
        "fd": fd,
        "num_samples": len(labels_t),
    }


class DigitFeatureExtractor:
    """The digit classifier as a `FeatureExtractor` ("pool": 128-d features, "logits": 10 classes), so that
    `evaluate_samples` gives FID/IS/precision/recall in digit-feature space."""

    available: AbstractSet[str] = frozenset({"pool", "logits"})
    name = "mnist-classifier"

    def __init__(self, classifier: DigitClassifier | None = None) -> None:
        self.classifier = load_digit_classifier() if classifier is None else classifier

    def __call__(self, images: np.ndarray) -> dict[str, Tensor]:
        feats, logits = _predict(self.classifier, images)
        return {"pool": feats, "logits": logits}
