"""Your data's own shape: the image size comes from the images (or the autoencoder) unless asked for, is said in
one line before any work, and long jobs (extraction, evaluation, reference statistics) report their progress
with images/s and the time left, also off a terminal."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F
from PIL import Image

from ditkit.cli.main import main
from ditkit.config.recipes import shipped_mnist_vae
from ditkit.data.autoencoder import make_tiny_vae
from ditkit.data.datasets import NpzDataset
from ditkit.data.image_size import native_image_size, pick_image_size, vae_sample_size
from ditkit.data.latent_store import LatentStore, extract_latents
from ditkit.metrics.evaluate import evaluate_samples, ref_stats
from ditkit.runtime import progress
from ditkit.training.run import build_train_config
from stubs import RandomFeatureExtractor


def _folder(root: Path, size: int | tuple[int, int], count: int = 6, classes: tuple[str, ...] = ("a", "b")) -> Path:
    width, height = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(0)
    for label in classes:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def _messages(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


# The size of the data.


def test_native_size_is_the_most_common_short_side_of_a_folder_and_an_npz_header(tmp_path):
    folder = _folder(tmp_path / "imgs", 32)
    _folder(folder, (40, 48), count=2, classes=("c",))  # a minority of larger images
    (folder / "a" / "notes.txt").write_text("not an image")
    (folder / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    assert native_image_size(folder) == 32
    np.savez(tmp_path / "d.npz", images=np.zeros((3, 20, 24, 3), np.uint8))
    np.savez(tmp_path / "arr.npz", np.zeros((3, 28, 28), np.uint8))
    assert native_image_size(tmp_path / "d.npz") == 20 and native_image_size(tmp_path / "arr.npz") == 28
    (tmp_path / "junk.npz").write_bytes(b"junk")
    for spec in ("mnist", "digits", tmp_path / "junk.npz", tmp_path / "missing", None):
        assert native_image_size(spec) is None


def test_a_folder_of_32_px_images_trains_at_32_px_in_pixel_space(tmp_path, caplog):
    folder = _folder(tmp_path / "imgs", 32)
    with caplog.at_level(logging.INFO, logger="ditkit"):
        cfg = build_train_config(tmp_path / "run", data=str(folder), vae="none")
    assert (cfg.image_size, cfg.model.input_size, cfg.model.in_channels, cfg.model.num_classes) == (32, 32, 3, 2)
    assert cfg.model.input_size % cfg.model.patch_size == 0  # the patch fits
    assert f"image size 32 px (from the images in {folder})" in _messages(caplog)


def test_an_npz_trains_at_its_array_size(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 24, 24), np.uint8), labels=np.array([0, 1, 0, 1]))
    cfg = build_train_config(tmp_path / "run", data=str(tmp_path / "d.npz"), vae="none")
    assert (cfg.image_size, cfg.model.input_size, cfg.model.in_channels) == (24, 24, 1)


def test_an_asked_for_size_is_honoured_and_its_upscale_said(tmp_path, caplog):
    folder = _folder(tmp_path / "imgs", 32)
    with caplog.at_level(logging.INFO, logger="ditkit"):
        cfg = build_train_config(tmp_path / "run", data=str(folder), vae="none", image_size=64)
    assert (cfg.image_size, cfg.model.input_size) == (64, 64)
    line = next(m for m in _messages(caplog) if "upscaled" in m)
    assert "64 px as asked" in line and "32 px images" in line and "2x" in line
    assert not _messages(caplog, logging.WARNING)  # 2x is said, not warned about
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ditkit"):
        assert build_train_config(tmp_path / "r2", data=str(folder), vae="none", image_size=128).image_size == 128
    (warning,) = _messages(caplog, logging.WARNING)
    assert "128 px" in warning and "32 px" in warning and "4x" in warning


def test_large_images_are_capped_at_256_and_rounded_to_the_latent_grid(tmp_path, caplog):
    big = _folder(tmp_path / "big", (400, 300), count=2, classes=("x",))
    with caplog.at_level(logging.INFO, logger="ditkit"):
        assert pick_image_size(str(big), None) == 256
    assert "they are 300 px" in _messages(caplog)[-1] and "256" in _messages(caplog)[-1]
    odd = _folder(tmp_path / "odd", 28, count=2, classes=("x",))
    assert pick_image_size(str(odd), None, multiple=8) == 24  # cropped, never upscaled
    assert pick_image_size(str(odd), None, multiple=1) == 28
    assert pick_image_size(str(odd), 40) == 40  # as asked


def test_the_vae_sample_size_is_the_fallback_and_a_latent_run_fits_it(tmp_path, caplog):
    vae = make_tiny_vae(tmp_path / "vae")  # sample_size 32, downsampling 2
    assert vae_sample_size(str(vae)) == 32 and vae_sample_size("stabilityai/sd-vae-ft-ema") is None
    with caplog.at_level(logging.INFO, logger="ditkit"):
        assert pick_image_size("digits", None, vae=str(vae), multiple=4) == 32
    assert "sample_size 32 of the VAE" in _messages(caplog)[-1]
    assert pick_image_size("digits", None) is None  # the dataset's default
    folder = _folder(tmp_path / "imgs", 32)
    cfg = build_train_config(tmp_path / "run", data=str(folder), vae=str(vae), preset="DiT-S/2")
    assert (cfg.image_size, cfg.model.input_size, cfg.model.in_channels) == (32, 16, 4)


def test_extract_latents_without_a_size_uses_the_images_own(tmp_path, caplog):
    vae = shipped_mnist_vae()
    if vae is None:
        pytest.skip("no shipped MNIST autoencoder")
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32), dtype=np.uint8)  # grayscale: 1 channel
    np.savez(tmp_path / "d.npz", images=images)
    out = tmp_path / "lat"
    with caplog.at_level(logging.INFO, logger="ditkit"):
        argv = ["extract-latents", "--data", str(tmp_path / "d.npz"), "--vae", str(vae), "--out", str(out)]
        code = main([*argv, "--num-workers", "0", "--device", "cpu"])
    assert code in (0, None)
    store = LatentStore(out, flip=False)
    assert store.image_size == 32 and store.latent_shape[1:] == (8, 8)
    assert any(m.startswith("image size 32 px (from the images in") for m in _messages(caplog))


def test_extract_latents_of_an_image_folder_with_a_three_channel_vae(tmp_path):
    vae = make_tiny_vae(tmp_path / "vae")
    folder = _folder(tmp_path / "imgs", 32, count=2)
    out = tmp_path / "lat"
    argv = ["extract-latents", "--data", str(folder), "--vae", str(vae), "--out", str(out)]
    code = main([*argv, "--num-workers", "0", "--device", "cpu"])
    assert code in (0, None)
    store = LatentStore(out, flip=False)
    assert (store.image_size, store.latent_shape) == (32, (4, 16, 16))
    assert store.class_names is not None and len(store) == 4


# Progress off a terminal: a line per interval with images/s and the time left.


@pytest.fixture
def line_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    monkeypatch.setattr(progress, "LOG_INTERVAL_SECONDS", 0.0)


def _progress_lines(caplog: pytest.LogCaptureFixture, desc: str) -> list[str]:
    return [m for m in _messages(caplog) if m.startswith(f"{desc}: ")]


def _check_line(line: str, total: int) -> None:
    assert f"/{total} images" in line and "images/s" in line and "eta " in line, line


def test_latent_extraction_reports_its_progress(tmp_path, caplog, line_progress):
    np.savez(tmp_path / "d.npz", images=np.zeros((12, 8, 8, 3), np.uint8))

    def encoder(x):
        return F.avg_pool2d(x, 2), F.avg_pool2d(x, 2).abs() * 0 + 0.1

    with caplog.at_level(logging.INFO, logger="ditkit"):
        extract_latents(NpzDataset(tmp_path / "d.npz", flip=False), encoder, tmp_path / "store", batch_size=4)
    lines = _progress_lines(caplog, "extract-latents")
    assert len(lines) >= 3, _messages(caplog)  # one per batch at interval 0
    for line in lines:
        _check_line(line, 12)
    assert lines[-1].startswith("extract-latents: 12/12 images, 100%")


def test_evaluation_and_reference_statistics_report_their_progress(tmp_path, caplog, line_progress):
    rng = np.random.default_rng(0)
    real, fake = (rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8) for _ in range(2))
    extractor = RandomFeatureExtractor(seed=0, pool_dim=16)
    with caplog.at_level(logging.INFO, logger="ditkit"):
        stats = ref_stats(real, extractor, tmp_path / "ref.npz", batch_size=8)
        evaluate_samples(fake, stats, extractor, batch_size=8, metrics=("fid",))
    for desc in ("ref-stats", "samples"):
        lines = _progress_lines(caplog, desc)
        assert len(lines) >= 3, _messages(caplog)
        for line in lines:
            _check_line(line, 24)


def test_a_long_interval_writes_only_the_closing_line(caplog, monkeypatch):
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    with caplog.at_level(logging.INFO, logger="ditkit"):
        bar = progress.progress(total=10, desc="job", unit="images")
        for _ in range(10):
            bar.update(1)
        bar.close()
    assert len(_progress_lines(caplog, "job")) == 1
