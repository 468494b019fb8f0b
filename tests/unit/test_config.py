"""ModelConfig / DiffusionConfig validation and presets (ditkit.config)."""

from __future__ import annotations

import re

import pytest

from ditkit.config import (
    IMAGE_SAMPLING,
    PRESETS,
    TRAIN_SAMPLING,
    WALK_SAMPLING,
    DiffusionConfig,
    ModelConfig,
    SampleConfig,
    get_preset,
)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"patch_size": 3}, "patch_size must be one of (1, 2, 4, 8); got 3"),
        ({"patch_size": 0}, "patch_size must be one of"),
        (
            {"input_size": 30, "patch_size": 4},
            "input_size must be a positive multiple of patch_size 4; got 30",
        ),
        ({"input_size": 0}, "input_size must be a positive multiple"),
        (
            {"hidden_size": 64, "num_heads": 5},
            "hidden_size must be divisible by num_heads; got hidden_size=64, num_heads=5",
        ),
        ({"hidden_size": 64, "num_heads": 0}, "hidden_size must be divisible by num_heads"),
        ({"hidden_size": 0}, "hidden_size must be divisible by num_heads"),
        (
            {"hidden_size": 6, "num_heads": 2},
            "hidden_size must be a multiple of 4 (2D sin-cos positions); got 6",
        ),
        ({"depth": 0}, "depth must be >= 1; got 0"),
        ({"mlp_ratio": 0.0}, "mlp_ratio must give an MLP width >= 1"),
        ({"in_channels": 0}, "in_channels must be >= 1; got 0"),
        ({"num_classes": -1}, "num_classes must be >= 0 (0 = unconditional); got -1"),
        ({"class_dropout_prob": 1.0}, "class_dropout_prob must be in [0, 1); got 1.0"),
        ({"class_dropout_prob": -0.1}, "class_dropout_prob must be in [0, 1); got -0.1"),
        (
            {"block": "adaLN-Zero"},
            "block must be one of adaln_zero, adaln, cross_attn, in_context; got 'adaLN-Zero'",
        ),
    ],
)
def test_model_config_validation(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelConfig(**fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_train_steps": 1}, "num_train_steps must be an integer >= 2; got 1"),
        ({"noise_schedule": "quadratic"}, "noise_schedule must be 'linear' or 'cosine'; got 'quadratic'"),
    ],
)
def test_diffusion_config_validation(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        DiffusionConfig(**fields)


def test_replace_validates():
    with pytest.raises(ValueError, match="patch_size"):
        get_preset("DiT-S/2").replace(patch_size=5)


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="unknown preset 'DiT-XXL/2'") as err:
        get_preset("DiT-XXL/2")
    for name in PRESETS:
        assert name in str(err.value)


def test_defaults_are_the_paper_model():
    config = ModelConfig()
    assert (config.depth, config.hidden_size, config.num_heads, config.patch_size) == (28, 1152, 16, 2)
    assert (config.input_size, config.in_channels, config.num_classes) == (32, 4, 1000)
    assert config.class_dropout_prob == 0.1 and config.learn_sigma and config.block == "adaln_zero"
    assert config.out_channels == 8 and config.num_tokens == 256
    assert config.null_class == 1000 and config.has_null_class
    assert get_preset("DiT-XL/2") == config
    diffusion = DiffusionConfig()
    assert (diffusion.num_train_steps, diffusion.noise_schedule, diffusion.learn_sigma) == (1000, "linear", True)


def test_paper_presets_table():
    sizes = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
    for size, (depth, width, heads) in sizes.items():
        for patch in (2, 4, 8):
            config = get_preset(f"DiT-{size}/{patch}")
            assert (config.depth, config.hidden_size, config.num_heads, config.patch_size) == (
                depth,
                width,
                heads,
                patch,
            )


def test_preset_overrides_and_derived_fields():
    config = get_preset("DiT-T/2", num_classes=0, learn_sigma=False, in_channels=1)
    assert config.out_channels == 1 and not config.has_null_class
    assert not get_preset("DiT-T/2", class_dropout_prob=0.0).has_null_class
    assert get_preset("DiT-T/4").num_tokens == 4


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"sampler": "lms"}, "sampler must be one of ddpm, ddim, dpm\\+\\+2m, euler, heun, .*; got 'lms'"),
        ({"num_steps": 1}, "num_steps must be an integer >= 2; got 1"),
        ({"cfg_scale": -0.5}, "cfg_scale must be a finite number >= 0"),
        ({"cfg_scale": float("nan")}, "cfg_scale must be a finite number >= 0"),
        ({"cfg_scale": float("inf")}, "cfg_scale must be a finite number >= 0"),
        ({"cfg_channels": 0}, "cfg_channels must be 'all' or an integer >= 1"),
        ({"eta": 1.5}, "eta must be in \\[0, 1\\]"),
        ({"eta": float("nan")}, "eta must be in \\[0, 1\\]"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"precision": "fp8"}, "precision must be one of"),
    ],
)
def test_sample_config_validation(fields, match):
    with pytest.raises(ValueError, match=match):
        SampleConfig(**fields)


def test_sample_config_defaults_are_the_paper_evaluation():
    config = SampleConfig()
    assert (config.sampler, config.num_steps, config.cfg_scale, config.timestep_respacing) == ("ddpm", 250, 1.5, "250")
    assert IMAGE_SAMPLING.cfg_scale == 4.0 and WALK_SAMPLING.sampler == "ddim" and TRAIN_SAMPLING.cfg_scale == 1.0
