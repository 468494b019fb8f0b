"""`ditkit train-vae` (ditkit.training.autoencoder_training): layout, resume, the recorded scaling factor, its use."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers", reason="needs the vae extra (diffusers)")

from ditkit.config import VAETrainConfig
from ditkit.data.autoencoder import load_vae, vae_geometry
from ditkit.training.autoencoder_training import train_vae
from ditkit.training.run import read_metrics


def tiny(tmp_path, **changes) -> VAETrainConfig:
    fields = {
        "out_dir": str(tmp_path / "vae"),
        "data": "digits",
        "image_size": 8,
        "block_out_channels": (16, 16),
        "norm_num_groups": 8,
        "max_steps": 4,
        "batch_size": 16,
        "log_every_steps": 2,
        "ckpt_every_steps": 2,
        "num_scale_images": 64,
        "device": "cpu",
        "num_threads": 1,
    }
    fields.update(changes)
    return VAETrainConfig(**fields)


def test_folder_is_a_diffusers_vae_with_its_scaling_factor(tmp_path):
    out = train_vae(tiny(tmp_path))
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "diffusion_pytorch_model.safetensors", "vae_train_config.json", "report.json"} <= names
    report = json.loads((out / "report.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["scaling_factor"] == pytest.approx(report["scaling_factor"]) and report["scaling_factor"] > 0
    assert report["scaling_factor"] == pytest.approx(1 / report["latent_std"])
    assert [r["step"] for r in read_metrics(out)] == [2, 4]
    assert vae_geometry(str(out)) == (4, 2)
    vae = load_vae(str(out))  # what extract-latents, train and sample use
    assert vae.scale == pytest.approx(report["scaling_factor"]) and vae.downsample == 2
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert vae.encode(x, torch.Generator().manual_seed(0)).shape == (2, 4, 4, 4)


def test_rerun_resumes_and_other_settings_are_refused(tmp_path):
    cfg = tiny(tmp_path, max_steps=2)
    train_vae(cfg)
    first = json.loads((tmp_path / "vae" / "report.json").read_text())
    train_vae(cfg.replace(max_steps=4))
    assert [r["step"] for r in read_metrics(cfg.out_dir)] == [2, 4]
    report = json.loads((tmp_path / "vae" / "report.json").read_text())  # the report and the scaling factor follow
    assert report != first  # the continued weights, not the first run's
    assert json.loads((tmp_path / "vae" / "config.json").read_text())["scaling_factor"] == report["scaling_factor"]
    with pytest.raises(ValueError, match="trained with other settings .*kl_weight"):
        train_vae(cfg.replace(kl_weight=0.1))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"image_size": 9}, "image_size 9 is not a multiple of the downsampling 2"),
        ({"block_out_channels": (16, 20)}, "multiples of norm_num_groups 8"),
        ({"lr": 0.0}, "lr must be > 0"),
    ],
)
def test_config_errors(tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        tiny(tmp_path, **changes)


def test_a_folder_that_is_not_a_vae_run_is_refused(tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a ditkit VAE folder"):
        train_vae(tiny(tmp_path))
    assert (tmp_path / "vae" / "notes.txt").read_text() == "mine"


def test_an_output_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "vae").write_text("mine")
    with pytest.raises(ValueError, match="is a file; choose another folder"):
        train_vae(tiny(tmp_path))
    assert (tmp_path / "vae").read_text() == "mine"
