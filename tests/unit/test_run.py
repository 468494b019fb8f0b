"""Run folders (ditkit.training.run): the TrainConfig built from user choices, metrics.jsonl, opening a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ditkit.config import get_preset
from ditkit.config.recipes import demo_train_config
from ditkit.data.datasets import NpzDataset
from ditkit.data.latent_store import extract_latents
from ditkit.model.dit import DiT
from ditkit.model.weights import save_weights
from ditkit.training.loop import train
from ditkit.training.run import (
    append_metrics,
    build_train_config,
    open_for_sampling,
    read_metrics,
    trim_metrics,
)


def _npz(path: Path, channels: int, labels: bool) -> Path:
    shape = (32, 8, 8) if channels == 1 else (32, 8, 8, 3)
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    arrays = {"images": images, **({"labels": np.arange(32) % 4} if labels else {})}
    np.savez(path, **arrays)
    return path


def test_no_data_is_the_demo_recipe(tmp_path):
    assert build_train_config(tmp_path / "r") == demo_train_config(tmp_path / "r")


def test_a_preset_on_the_embedded_digits_keeps_the_data_geometry(tmp_path):
    cfg = build_train_config(tmp_path / "r", preset="DiT-T/2", image_size=32)
    m = cfg.model
    assert (m.depth, m.hidden_size, m.patch_size) == (2, 32, 2)  # the preset's size
    assert (m.in_channels, m.input_size, m.num_classes) == (1, 32, 10)  # the data's geometry
    assert not m.learn_sigma and not cfg.diffusion.learn_sigma  # the recipe's process has no VB term


@pytest.mark.parametrize(("channels", "labels"), [(1, True), (3, False)])
def test_pixel_space_on_any_npz_takes_channels_and_classes_from_the_data(tmp_path, channels, labels):
    data = _npz(tmp_path / "d.npz", channels, labels)
    cfg = build_train_config(
        tmp_path / "r",
        data=str(data),
        preset="DiT-T/2",
        vae="none",
        image_size=8,
        max_steps=1,
        global_batch_size=8,
        num_workers=0,
        sample_every_steps=1,
        num_grid_images=2,
        device="cpu",
    )
    assert (cfg.model.in_channels, cfg.model.input_size) == (channels, 8)
    assert cfg.model.num_classes == (4 if labels else 0)
    run_dir = train(cfg.replace(sample=cfg.sample.replace(num_steps=2)))
    assert read_metrics(run_dir)[-1]["step"] == 1 and (run_dir / "samples" / "step_0000001.png").is_file()


def test_a_latent_store_gives_the_latent_shape_and_image_size(tmp_path):
    data = NpzDataset(_npz(tmp_path / "d.npz", 3, True), flip=False)
    store = extract_latents(
        data, lambda x: (F.avg_pool2d(x, 2), torch.full((len(x), 3, 4, 4), 0.1)), tmp_path / "store", batch_size=8
    )
    cfg = build_train_config(tmp_path / "r", data=str(store), preset="DiT-T/2")
    assert (cfg.model.in_channels, cfg.model.input_size, cfg.model.num_classes, cfg.image_size) == (3, 4, 4, 8)


def test_model_overrides_win(tmp_path):
    cfg = build_train_config(tmp_path / "r", preset="DiT-T/2", model_overrides={"num_classes": 0, "block": "adaln"})
    assert cfg.model.num_classes == 0 and cfg.model.block == "adaln"


def test_metrics_keep_one_line_per_step_and_skip_a_cut_line(tmp_path):
    for step in (1, 2, 3):
        append_metrics(tmp_path, {"step": step, "loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # a line cut short by a crash
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    assert [r["step"] for r in trim_metrics(tmp_path, 2)] == [1, 2]
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_open_for_sampling_needs_a_vae_for_latent_models(tmp_path):
    config = get_preset("DiT-T/2")  # 4 latent channels
    weights = save_weights(DiT(config).state_dict(), config, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="4-channel latent space: pass vae="):
        open_for_sampling(weights)
    pixel = get_preset("DiT-T/2", in_channels=3)
    opened = open_for_sampling(save_weights(DiT(pixel).state_dict(), pixel, tmp_path / "p.safetensors"))
    assert opened.pixel_space and opened.diffusion.learn_sigma == pixel.learn_sigma


def test_run_folder_checks_refuse_what_is_not_a_ditkit_run_and_change_nothing(tmp_path):
    from ditkit.training.run import CONFIG_FILE, LOCK_FILE, LOG_FILE, prepare_run_dir, write_run_config

    cfg = demo_train_config(tmp_path / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"is not a ditkit run folder \(no config.json\) and not empty"):
        prepare_run_dir(cfg, is_main=True)
    (tmp_path / "run" / "photo.jpg").unlink()
    (tmp_path / "run" / CONFIG_FILE).write_text('{"epochs": 3}')  # someone else's config.json
    with pytest.raises(ValueError, match="is not the config of a ditkit run"):
        prepare_run_dir(cfg, is_main=True)
    assert (tmp_path / "run" / CONFIG_FILE).read_text() == '{"epochs": 3}'
    (tmp_path / "run" / CONFIG_FILE).unlink()
    for name in (LOCK_FILE, LOG_FILE, ".tmp-0123-config.json"):  # what a run killed at its start leaves
        (tmp_path / "run" / name).write_text("")
    prepare_run_dir(cfg, is_main=True)
    assert json.loads((tmp_path / "run" / CONFIG_FILE).read_text()) == json.loads(json.dumps(cfg.to_dict()))
    assert not (tmp_path / "run" / ".tmp-0123-config.json").exists()
    write_run_config(cfg.replace(lr=1e-5), is_main=True)  # a resumable change is recorded once resumed
    assert json.loads((tmp_path / "run" / CONFIG_FILE).read_text())["lr"] == 1e-5
    with pytest.raises(ValueError, match="is a file; choose another folder"):
        prepare_run_dir(cfg.replace(out_dir=str(tmp_path / "run" / LOG_FILE)), is_main=True)


def test_run_folder_preparation_removes_half_written_folders_and_restores_kept_ones(tmp_path):
    from ditkit.runtime.files import KEPT_PREFIX
    from ditkit.training.run import prepare_run_dir

    cfg = demo_train_config(tmp_path / "run")
    prepare_run_dir(cfg, is_main=True)  # a new run: nothing to clean
    ckpts = tmp_path / "run" / "checkpoints"
    half = ckpts / ".tmp-0123-step_0000004"  # a checkpoint folder whose write was killed
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"half")
    kept = ckpts / f"{KEPT_PREFIX}step_0000002"  # killed between atomic_dir's two renames: the old one aside
    kept.mkdir()
    (kept / "state.json").write_text("{}")
    prepare_run_dir(cfg, is_main=True)
    assert not half.exists() and not kept.exists()
    assert (ckpts / "step_0000002" / "state.json").read_text() == "{}"
