"""Our diffusion and samplers against facebookresearch/DiT's ADM code (commit ed81ce2), fp32.

Everything runs with the official tiny_p2 weights; see shared/reference/README.md for the data. The
reference was made on an Intel CPU: tolerances are fp32 ulps of each reference's scale (tests/numerics.py).
"""

from __future__ import annotations

import json

import pytest
import torch

from ditkit.config import DiffusionConfig, SampleConfig
from ditkit.diffusion.gaussian import create_diffusion, space_timesteps
from ditkit.diffusion.samplers import ddpm_step, guided_denoiser, model_denoiser, sample_loop
from ditkit.model.dit import DiT
from numerics import OPS_ELEMENTWISE, OPS_FORWARD, OPS_PER_SAMPLING_STEP, assert_fp32_close

DDIM25_OPS = OPS_FORWARD + 25 * OPS_PER_SAMPLING_STEP  # 25 model calls, each feeding the next
DDIM25 = SampleConfig(sampler="ddim", num_steps=25, respacing="ddim25", cfg_scale=1.0, clip_denoised=False)


@pytest.fixture
def model(fixtures_dir, reference_configs) -> DiT:
    model = DiT(reference_configs["tiny_p2"]).eval()
    model.load_state_dict(torch.load(fixtures_dir / "tiny_p2.official.pt", weights_only=True), strict=True)
    return model


@pytest.fixture
def ref(load_fixture):
    return load_fixture("diffusion_1000.safetensors")


def test_schedule_matches_official(ref):
    """Bit for bit: numpy's linspace, then betas recomputed from the cumulative product (SpacedDiffusion)."""
    diffusion = create_diffusion("")
    torch.testing.assert_close(diffusion.betas, ref["betas"], rtol=0, atol=0)
    torch.testing.assert_close(diffusion.alphas_cumprod, ref["alphas_cumprod"], rtol=0, atol=0)


def test_q_sample_matches_official(ref):
    x_t = create_diffusion("").q_sample(ref["x_start"], ref["t"], noise=ref["noise"])
    assert_fp32_close(x_t, ref["x_t"], ops=OPS_ELEMENTWISE)


def test_q_posterior_matches_official(ref):
    mean, variance, log_variance = create_diffusion("").q_posterior_mean_variance(ref["x_start"], ref["x_t"], ref["t"])
    assert_fp32_close(mean, ref["q_post_mean"], ops=OPS_ELEMENTWISE)
    assert_fp32_close(variance.expand_as(mean), ref["q_post_variance"], ops=OPS_ELEMENTWISE)
    assert_fp32_close(log_variance.expand_as(mean), ref["q_post_log_variance_clipped"], ops=OPS_ELEMENTWISE)


def test_p_mean_variance_matches_official(ref, model):
    with torch.no_grad():
        out = create_diffusion("").p_mean_variance(model, ref["x_t"], ref["t"], {"y": ref["y"]}, clip_denoised=False)
    for key in ("mean", "variance", "log_variance", "pred_xstart"):
        assert_fp32_close(out[key], ref[f"p_{key}"], ops=OPS_FORWARD + OPS_ELEMENTWISE, msg=key)


def test_training_losses_match_official(ref, model):
    with torch.no_grad():
        terms = create_diffusion("").training_losses(
            model, ref["x_start"], ref["t"], {"y": ref["y"]}, noise=ref["noise"]
        )
    for key in ("loss", "mse", "vb"):
        assert_fp32_close(terms[key], ref[key], ops=OPS_FORWARD + OPS_ELEMENTWISE, msg=key)


@pytest.mark.parametrize("spec", ["250", "100", "50", "25", "ddim25", "ddim50", "10,15,20"])
def test_respacing_matches_official(spec, fixtures_dir):
    official = json.loads((fixtures_dir / "respacing.json").read_text())[spec]
    assert space_timesteps(1000, spec) == official["timestep_map"]
    diffusion = create_diffusion(spec)
    assert diffusion.timestep_map.tolist() == official["timestep_map"]
    torch.testing.assert_close(diffusion.betas, torch.tensor(official["betas"], dtype=torch.float64), rtol=0, atol=0)


def test_ddpm250_step_matches_official(load_fixture, model):
    step = load_fixture("ddpm250_step.safetensors")
    diffusion = create_diffusion("250")
    with torch.no_grad():
        out = ddpm_step(
            diffusion,
            model_denoiser(model, step["y"]),
            step["x_t"],
            step["t_respaced"],
            step["step_noise"],
            clip_denoised=False,
        )
    assert_fp32_close(out["sample"], step["sample"], ops=OPS_FORWARD + OPS_ELEMENTWISE)
    assert_fp32_close(out["pred_xstart"], step["pred_xstart"], ops=OPS_FORWARD + OPS_ELEMENTWISE)


def test_ddim25_loop_without_guidance_matches_official(load_fixture, model):
    loop = load_fixture("ddim25_loop.safetensors")
    samples = sample_loop(model, loop["noise"], loop["labels"], DDIM25, diffusion=DiffusionConfig())
    assert_fp32_close(samples, loop["samples_nocfg"], ops=DDIM25_OPS)


def test_ddim25_loop_with_3_channel_guidance_matches_official(load_fixture, model):
    loop = load_fixture("ddim25_loop.safetensors")
    guided = DDIM25.replace(cfg_scale=loop["cfg_scale"].item(), cfg_channels=3)
    samples = sample_loop(model, loop["noise"], loop["labels"], guided)
    assert_fp32_close(samples, loop["samples_cfg3ch"], ops=DDIM25_OPS)


def test_ddim25_guidance_through_guided_denoiser(load_fixture, model):
    """The same loop with the wrapper built by hand (null label 10, DiT's 3 guided channels)."""
    loop = load_fixture("ddim25_loop.safetensors")
    diffusion = create_diffusion("ddim25")
    denoise = guided_denoiser(model, loop["labels"], torch.full_like(loop["labels"], 10), 2.5, 3)
    x = loop["noise"]
    with torch.no_grad():
        for i in reversed(range(diffusion.num_timesteps)):
            t = torch.full((2,), i, dtype=torch.long)
            out = diffusion.p_mean_variance(denoise, x, t)
            eps = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
            abar_prev = diffusion._extract(diffusion.alphas_cumprod_prev, t, x)
            x = out["pred_xstart"] * abar_prev.sqrt() + (1 - abar_prev).sqrt() * eps
    assert_fp32_close(x, loop["samples_cfg3ch"], ops=DDIM25_OPS)
