"""Unit tests for ditkit.metrics.digit_classifier: the shipped MNIST classifier and the digit metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditkit.metrics import digit_classifier as clf
from ditkit.metrics.evaluate import evaluate_samples, ref_stats


@pytest.fixture(scope="module")
def model() -> clf.DigitClassifier:
    return clf.load_digit_classifier()


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return clf._load_mnist()


def test_split_is_the_project_split(mnist) -> None:
    train_x, _, test_x, test_y = mnist
    assert train_x.shape == (9000, 28, 28) and test_x.shape == (1000, 28, 28)
    perm = np.random.default_rng(0).permutation(10000)
    assert perm[:1000].size == len(test_y) and set(np.unique(test_y)) == set(range(10))


def test_shipped_weights_reach_98_percent_on_heldout_digits(model, mnist) -> None:
    _, _, test_x, test_y = mnist
    assert clf.classifier_accuracy(model, test_x, test_y) >= 0.98


def test_input_layouts_agree(model, mnist) -> None:
    digits = mnist[2][:16]
    padded = np.pad(digits, ((0, 0), (2, 2), (2, 2)))  # (N, 32, 32), how DiT samples MNIST
    ref = clf.to_digit_tensor(digits)
    assert ref.shape == (16, 1, 32, 32) and ref.min() >= -1 and ref.max() <= 1
    for layout in (
        padded,
        padded[..., None],
        np.repeat(padded[..., None], 3, axis=-1),
        torch.from_numpy(padded),
    ):
        torch.testing.assert_close(clf.to_digit_tensor(layout), ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="uint8"):
        clf.to_digit_tensor(padded.astype(np.float32) / 255)


def test_digits_metrics_on_real_digits(model, mnist) -> None:
    train_x, train_y, _, _ = mnist
    pick = np.random.default_rng(1).permutation(len(train_x))[:500]  # the arrays are grouped by class
    x, y = np.pad(train_x[pick], ((0, 0), (2, 2), (2, 2))), train_y[pick]
    real = clf.digits_metrics(x, y, model)
    assert set(real) == {"accuracy", "accuracy_per_class", "fd", "num_samples"}
    assert real["accuracy"] >= 0.98 and real["num_samples"] == 500
    assert len(real["accuracy_per_class"]) == 10 and min(real["accuracy_per_class"]) >= 0.9
    shuffled = clf.digits_metrics(x, np.random.default_rng(0).permutation(y), model)
    assert 0.05 < shuffled["accuracy"] < 0.17
    assert shuffled["fd"] == pytest.approx(real["fd"])  # labels do not enter the distance
    noise = np.random.default_rng(1).integers(0, 256, size=(200, 32, 32, 1), dtype=np.uint8)
    noise_fd = clf.digits_metrics(noise, y[:200], model)["fd"]
    assert real["fd"] < 0.05 * noise_fd
    one_class = clf.digits_metrics(x[y == 3], y[y == 3], model)["accuracy_per_class"]
    assert np.isnan(one_class[0]) and one_class[3] >= 0.98
    with pytest.raises(ValueError, match="one label per sample"):
        clf.digits_metrics(x, y[:10], model)


def test_classifier_as_feature_extractor(tmp_path, model, mnist) -> None:
    train_x, _, test_x, _ = mnist
    extractor = clf.DigitFeatureExtractor(model)
    stats = ref_stats(test_x, extractor, tmp_path / "mnist_ref.npz", batch_size=500)
    pick = np.random.default_rng(1).permutation(len(train_x))[:500]  # the arrays are grouped by class
    real = evaluate_samples(train_x[pick], stats, extractor, batch_size=500)
    assert real["unavailable"] == ["sfid"] and real["is"] > 5.0 and real["precision"] > 0.8
    blank = evaluate_samples(np.zeros((500, 32, 32, 1), np.uint8), stats, extractor, batch_size=500)
    assert blank["fid"] > 10 * real["fid"] and blank["is"] < 1.5


def test_missing_weights_name_the_script(tmp_path) -> None:
    with pytest.raises(ValueError, match="train_mnist_classifier"):
        clf.load_digit_classifier(tmp_path / "missing.safetensors")


@pytest.mark.slow
def test_train_classifier_learns(tmp_path) -> None:
    model, acc = clf.train_classifier(tmp_path / "w.safetensors", num_epochs=1)
    assert acc > 0.5
    reloaded = clf.load_digit_classifier(tmp_path / "w.safetensors")
    x = clf.to_digit_tensor(clf._load_mnist()[2][:8])
    torch.testing.assert_close(reloaded(x), model.eval()(x))
