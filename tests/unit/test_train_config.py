"""Training settings: TrainConfig's defaults, JSON round trip, validation errors, older layouts, and the
checks against the number of processes (validate_for_world)."""

from __future__ import annotations

import json

import pytest

from ditkit.config import DiffusionConfig, SampleConfig, TrainConfig, get_preset, validate_for_world


def test_train_config_defaults_are_the_paper_run():
    cfg = TrainConfig(out_dir="x")
    assert (cfg.model.depth, cfg.model.hidden_size, cfg.model.patch_size) == (28, 1152, 2)
    assert (cfg.image_size, cfg.model.input_size, cfg.global_batch_size) == (256, 32, 256)
    assert (cfg.lr, cfg.weight_decay, cfg.ema_decay, cfg.warmup_steps) == (1e-4, 0.0, 0.9999, 0)
    assert cfg.diffusion.num_train_steps == 1000 and cfg.diffusion.learn_sigma and cfg.model.class_dropout_prob == 0.1


def test_train_config_round_trips_through_json():
    cfg = TrainConfig(out_dir="x", model=get_preset("DiT-T/2"), micro_batch_size=4, max_grad_norm=1.0)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"global_batch_size": 0}, "global_batch_size must be an integer >= 1; got 0"),
        ({"lr": -1.0}, "lr must be a positive number; got -1.0"),
        ({"ema_decay": 1.5}, "ema_decay must be in"),
        ({"precision": "fp16"}, "precision must be one of auto, fp32, tf32, bf16; got 'fp16'"),
        ({"adam_betas": (0.9, 1.0)}, "adam_betas must be two numbers"),
        ({"micro_batch_size": 0}, "micro_batch_size must be an integer >= 1"),
        ({"max_grad_norm": 0.0}, "max_grad_norm must be > 0"),
        ({"device": "tpu"}, "device must be one of"),
        (
            {"model": get_preset("DiT-T/2", class_dropout_prob=0.0), "sample": SampleConfig(cfg_scale=2.0)},
            "needs a class-conditional model with label dropout",
        ),
        ({"out_dir": " "}, "out_dir must name a run directory"),
        (
            {"diffusion": DiffusionConfig(learn_sigma=False)},
            "model.learn_sigma=True but diffusion.learn_sigma=False",
        ),
    ],
)
def test_train_config_validation_errors(changes, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{"out_dir": "x", **changes})


def test_configs_from_before_sample_config_still_load():
    """config.json of 0.1 runs: flat sampling fields and the diffusion's `num_steps`."""
    old = TrainConfig(out_dir="x", model=get_preset("DiT-T/2")).to_dict()
    del old["sample"]
    old.update(sampler="dpm++2m", num_sampling_steps=20, cfg_scale=3.0, eval_batch_size=7)
    old["diffusion"]["num_steps"] = old["diffusion"].pop("num_train_steps")
    cfg = TrainConfig.from_dict(old)
    assert cfg.sample == SampleConfig(sampler="dpm++2m", num_steps=20, cfg_scale=3.0, batch_size=7)
    assert cfg.diffusion.num_train_steps == 1000


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['bogus'\]"):
        TrainConfig.from_dict({"out_dir": "x", "bogus": 1})


def test_validate_for_world():
    cfg = TrainConfig(out_dir="x", global_batch_size=6, micro_batch_size=2)
    validate_for_world(cfg, 3)
    with pytest.raises(ValueError, match="global_batch_size 6 is not divisible by the 4 processes"):
        validate_for_world(cfg, 4)
    with pytest.raises(ValueError, match="micro_batch_size 2 must divide the per-process batch 3"):
        validate_for_world(cfg, 2)
