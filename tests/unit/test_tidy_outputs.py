"""Tidy outputs: --overwrite replaces a sample output whole, finished .npz jobs leave no parts folder, a walk
says when it skips the MP4, training grids reach TensorBoard, the autoencoder's grid shows every class, help
texts show real defaults, and a stopped autoencoder folder is refused instead of scaled by 0.18215."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ditkit.cli.main import main
from ditkit.config import SampleConfig, TrainConfig, VAETrainConfig, default_diffusion, get_preset
from ditkit.model.dit import DiT
from ditkit.model.weights import save_weights
from ditkit.runtime import distributed, stopping
from ditkit.sampling import walk
from ditkit.sampling.generate import sample_npz, sample_npz_job
from ditkit.training import monitor

SETTINGS = SampleConfig(sampler="ddim", num_steps=2, cfg_scale=1.0, batch_size=4, precision="fp32")


@pytest.fixture(scope="module")
def model() -> DiT:
    torch.manual_seed(0)
    m = DiT(get_preset("DiT-T/2", in_channels=1, input_size=8)).eval()
    for p in m.parameters():
        p.data.normal_(0, 0.05)
    return m


@pytest.fixture
def weights(model: DiT, tmp_path: Path) -> Path:
    return save_weights(model.state_dict(), model.config, tmp_path / "tiny.safetensors")


def run_cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(argv))
    return code, err.getvalue()


# `ditkit sample --overwrite` and .npz jobs.


def test_sample_overwrite_replaces_the_grid_and_every_image(weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    common = ("sample", "--ckpt", str(weights), "--out", str(out), "--steps", "2", "--sampler", "ddim")
    assert run_cli(*common, "--classes", "1,2,3", "--per-class", "2")[0] == 0
    assert len(list((out / "images").iterdir())) == 6
    code, err = run_cli(*common, "--classes", "4", "--per-class", "1")
    assert code == 2 and "exists" in err and "--overwrite" in err
    assert run_cli(*common, "--classes", "4", "--per-class", "1", "--overwrite")[0] == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000_class4.png"]  # no stale image left
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "images"]


def test_an_images_folder_without_a_grid_needs_overwrite(weights: Path, tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "mine.png").write_bytes(b"x")
    code, err = run_cli("sample", "--ckpt", str(weights), "--out", str(tmp_path), "--steps", "2")
    assert code == 2 and "images" in err and (tmp_path / "images" / "mine.png").is_file()


def _opened(model: DiT) -> SimpleNamespace:  # what sample_npz_job reads of a SamplingModel
    return SimpleNamespace(model=model, diffusion=default_diffusion(model.config), vae=None)


def test_a_finished_npz_job_leaves_no_parts_folder(model: DiT, tmp_path: Path) -> None:
    npz = tmp_path / "samples.npz"
    info = distributed.init("cpu")
    assert sample_npz_job(_opened(model), npz, 5, SETTINGS, info, seed=1) == npz
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.npz"]
    with np.load(npz) as data:
        assert data["arr_0"].shape == (5, 8, 8, 1)


def test_npz_overwrite_drops_parts_an_older_job_left(model: DiT, tmp_path: Path) -> None:
    npz = tmp_path / "samples.npz"
    sample_npz(model, npz, 3, SETTINGS, seed=0)  # an older ditkit's leftovers: parts of another job...
    npz.write_bytes(b"old")  # ...beside its finished .npz
    info = distributed.init("cpu")
    with pytest.raises(ValueError, match="different sampling job"):  # not asked to replace: refused
        sample_npz_job(_opened(model), npz, 4, SETTINGS, info, seed=2)
    assert sample_npz_job(_opened(model), npz, 4, SETTINGS, info, seed=2, overwrite=True) == npz
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.npz"]
    with np.load(npz) as data:
        assert len(data["arr_0"]) == 4


# Walks without ffmpeg.


def test_a_walk_without_ffmpeg_says_it_skips_the_mp4_once(model: DiT, tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(walk.shutil, "which", lambda name: None)
    config = SampleConfig(sampler="ddim", num_steps=2, cfg_scale=1.0, precision="fp32")
    with caplog.at_level(logging.WARNING, logger=walk.__name__):
        made = walk.make_walks(model, tmp_path, classes=[1, 2], num_frames=2, config=config)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "MP4" in warnings[0].getMessage() and "install ffmpeg" in warnings[0].getMessage()
    assert all(set(paths) == {"gif", "strip"} for paths in made.values())
    caplog.clear()
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    with caplog.at_level(logging.WARNING, logger=walk.__name__):
        walk.save_walk(frames, tmp_path, "w", formats=("gif",))  # mp4 not asked for: nothing to say
        assert not caplog.records
        walk.save_walk(frames, tmp_path, "w")
    assert len(caplog.records) == 1


# Training grids in TensorBoard.


class FakeWriter:
    def __init__(self) -> None:
        self.images: list[tuple[str, np.ndarray, int, str]] = []

    def add_image(self, tag: str, image: np.ndarray, step: int, dataformats: str = "CHW") -> None:
        self.images.append((tag, image, step, dataformats))

    def add_scalar(self, *args: object) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_training_grids_go_to_tensorboard_as_hwc_images(tmp_path: Path, monkeypatch) -> None:
    from ditkit.training.loop import train

    writer = FakeWriter()
    monkeypatch.setattr(monitor, "_tensorboard_writer", lambda run_dir, start_step: writer)
    cfg = TrainConfig(
        out_dir=str(tmp_path / "run"),
        data="digits",
        model=get_preset("DiT-T/2", in_channels=1),
        image_size=8,
        vae="none",
        max_steps=4,
        global_batch_size=8,
        num_workers=0,
        log_every_steps=2,
        ckpt_every_steps=4,
        sample_every_steps=2,
        num_grid_images=4,
        sample=SampleConfig(sampler="ddim", num_steps=2, cfg_scale=1.0, batch_size=4),
        num_threads=1,
        device="cpu",
        precision="fp32",
    )
    train(cfg)
    assert [(tag, step, fmt) for tag, _, step, fmt in writer.images] == [("samples", 2, "HWC"), ("samples", 4, "HWC")]
    image = writer.images[-1][1]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.shape[0] > 8


# Help texts.


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from ditkit.cli import flags

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    handlers = dict.fromkeys(flags.HELP, print)
    flags.add_flags(sub, handlers, presets=["DiT-S/2"], blocks=["adaln_zero"], samplers=["ddpm"], precisions=["auto"])
    return dict(sub.choices)


def test_help_texts_show_values_not_class_names() -> None:
    for name, parser in _subparsers().items():
        text = parser.format_help()
        assert "ditkit.config" not in text, name
    text = " ".join(_subparsers()["train-vae"].format_help().split())
    defaults = VAETrainConfig(out_dir="x")
    for flag, value in (("--max-steps", defaults.max_steps), ("--batch-size", defaults.batch_size)):
        assert f"{flag} {flag[2:].upper().replace('-', '_')} default {value}" in text
    assert f"default {defaults.lr:g}" in text and f"default {defaults.kl_weight:g}" in text


# The autoencoder: its grid and a stopped folder.


def test_the_reconstruction_grid_shows_every_class() -> None:
    pytest.importorskip("diffusers", reason="needs the vae extra (diffusers)")
    from ditkit.training.autoencoder_training import grid_indices

    labels = torch.tensor([3, 3, 3, 0, 1, 1, 2, 0, 5, 4, 6, 7, 8, 9])
    dataset = type("Labelled", (), {"labels": labels, "__len__": lambda self: len(labels)})()
    picked = grid_indices(dataset, 8)
    assert [int(labels[i]) for i in picked] == [0, 1, 2, 3, 4, 5, 6, 7]
    two_classes = type("Two", (), {"labels": np.array([1, 1, 0, 1]), "__len__": lambda self: 4})()
    assert grid_indices(two_classes, 3) == [2, 0, 1]  # one of each class, then the next images in order
    unlabelled = type("Folder", (), {"samples": [("a", 0)] * 5, "__len__": lambda self: 5})()
    assert grid_indices(unlabelled, 8) == [0, 1, 2, 3, 4]


def test_a_stopped_autoencoder_folder_is_refused_until_it_finishes(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("diffusers", reason="needs the vae extra (diffusers)")
    from ditkit.data.autoencoder import load_vae
    from ditkit.training.autoencoder_training import train_vae

    cfg = VAETrainConfig(
        out_dir=str(tmp_path / "vae"),
        data="digits",
        image_size=8,
        block_out_channels=(16, 16),
        norm_num_groups=8,
        max_steps=4,
        batch_size=16,
        log_every_steps=2,
        ckpt_every_steps=2,
        num_scale_images=64,
        device="cpu",
        num_threads=1,
    )
    calls = {"n": 0}

    def stop_at_step_2(self: stopping.StopSignal) -> int:
        calls["n"] += 1
        return int(signal.SIGTERM) if calls["n"] == 2 else 0

    with monkeypatch.context() as patch:
        patch.setattr(stopping.StopSignal, "requested", stop_at_step_2)
        with pytest.raises(stopping.Interrupted):
            train_vae(cfg)
    out = Path(cfg.out_dir)
    assert json.loads((out / "config.json").read_text())["scaling_factor"] is None  # never SD's 0.18215
    with pytest.raises(ValueError, match=r"training did not finish \(step 2 of 4\).*rerun train-vae.*scale="):
        load_vae(str(out))
    assert load_vae(str(out), scale=0.5).scale == 0.5  # a scale given by the caller is used
    code, err = run_cli(
        "extract-latents", "--data", "digits", "--out", str(tmp_path / "z"), "--vae", str(out), "--image-size", "8"
    )
    assert code == 2 and "did not finish (step 2 of 4)" in err and err.count("\n") == 1
    train_vae(cfg)  # resumes and finishes
    report = json.loads((out / "report.json").read_text())
    assert load_vae(str(out)).scale == pytest.approx(report["scaling_factor"])
    assert json.loads((out / "training" / "state.json").read_text()) == {"step": 4, "max_steps": 4, "finished": True}
