"""Samplers and guidance (ditkit.diffusion.samplers): seeds, batch independence, Gaussian data, inversion, CFG."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math

import pytest
import torch

from ditkit.config import DiffusionConfig, SampleConfig, get_preset
from ditkit.diffusion import samplers
from ditkit.diffusion.gaussian import create_diffusion
from ditkit.diffusion.samplers import (
    GlobalNoise,
    SeedNoise,
    ddim_invert,
    ddim_sample,
    guided_denoiser,
    initial_noise,
    make_denoiser,
    model_denoiser,
    sample_loop,
)
from numerics import OPS_FORWARD, OPS_PER_SAMPLING_STEP, assert_fp32_close

SAMPLER_CASES = [  # (sampler, respacing, eta)
    ("ddpm", "10", 0.0),
    ("ddim", "ddim10", 0.0),
    ("ddim", "ddim10", 1.0),
    ("dpm++2m", "10", 0.0),
]
LOOP = SampleConfig(cfg_scale=1.0, clip_denoised=False)  # the loop as these tests drive it: no guidance, no clamp


def _config(sampler: str, spec: str, eta: float = 0.0, **changes: object) -> SampleConfig:
    """LOOP with a sampler and an ADM respacing spec ("10": 10 even steps, "ddim10": the DDIM stride)."""
    respacing = spec if spec.startswith("ddim") else None
    steps = int(spec.removeprefix("ddim"))
    return LOOP.replace(sampler=sampler, num_steps=steps, respacing=respacing, eta=eta, **changes)


# Seeds and batches.


@pytest.mark.parametrize(("sampler", "spec", "eta"), SAMPLER_CASES)
def test_per_sample_seeds_independent_of_batch(sampler, spec, eta, tiny_model, tiny_config):
    shape = (tiny_config.in_channels, tiny_config.input_size, tiny_config.input_size)
    label_of = {5: 1, 7: 3, 9: 8}

    def run(seeds):
        labels = torch.tensor([label_of[s] for s in seeds])
        return sample_loop(tiny_model, initial_noise(seeds, shape), labels, _config(sampler, spec, eta), seeds=seeds)

    alone = run([5])
    assert torch.equal(run([5]), alone)  # deterministic
    batch = run([7, 5, 9])
    shuffled = run([9, 7, 5])
    # Batched matmuls may round differently from single ones, so close rather than bitwise.
    ops = OPS_FORWARD + int(spec.removeprefix("ddim")) * OPS_PER_SAMPLING_STEP
    assert_fp32_close(batch[1:2], alone, ops=ops)
    assert_fp32_close(shuffled[2:3], alone, ops=ops)
    assert_fp32_close(shuffled[0], batch[2], ops=ops)
    assert not torch.allclose(batch[0], batch[1])


def test_initial_noise_is_per_seed():
    both = initial_noise([3, 4], (1, 2, 2))
    assert torch.equal(both[1], initial_noise([4], (1, 2, 2))[0])
    assert torch.equal(both[0], torch.randn((1, 2, 2), generator=torch.Generator().manual_seed(3)))


def test_step_noise_is_independent_of_initial_noise():
    """With seeds, x_T is each seed's first draw; the first step's noise must be a fresh draw, not x_T."""
    seeds = list(range(8))
    x_T = initial_noise(seeds, (1, 8, 8))
    seen = []

    def model(x, t, y=None):  # eps = 0: the step is mean(x_T) + sigma z with a known mean
        seen.append(x.clone())
        return torch.zeros_like(x)

    config = DiffusionConfig(learn_sigma=False)
    sample_loop(model, x_T, None, _config("ddpm", "2"), seeds=seeds, diffusion=config)
    out = create_diffusion("2", learn_sigma=False).p_mean_variance(model, x_T, torch.ones(8, dtype=torch.long))
    z = (seen[1] - out["mean"]) / torch.exp(0.5 * out["log_variance"])
    correlation = torch.corrcoef(torch.stack([z.flatten(), x_T.flatten()]))[0, 1]
    assert abs(correlation) < 0.2


def test_global_generator_is_deterministic(tiny_model):
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 2])
    runs = [
        sample_loop(tiny_model, noise, labels, _config("ddpm", "5"), generator=torch.Generator().manual_seed(1))
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize(("sampler", "spec", "eta"), SAMPLER_CASES)
def test_progress_bar_changes_nothing(sampler, spec, eta, tiny_model):
    noise, labels = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    runs = [
        sample_loop(tiny_model, noise, labels, _config(sampler, spec, eta), seeds=[1, 2], progress=progress)
        for progress in (False, True)
    ]
    assert torch.equal(runs[0], runs[1])


def test_seed_noise_rows_follow_their_seed():
    rows = SeedNoise([11, 12]).randn((3,))
    assert torch.equal(rows[1], torch.randn(3, generator=torch.Generator().manual_seed(12)))


def test_sample_loop_input_errors(tiny_model):
    noise = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match="sampler must be one of ddpm, ddim, dpm\\+\\+2m, .*; got 'lms'"):
        LOOP.replace(sampler="lms")
    with pytest.raises(ValueError, match="sampler 'euler' is a flow-matching sampler .* trained with diffusion"):
        sample_loop(tiny_model, noise, torch.tensor([0, 1]), LOOP.replace(sampler="euler"), seeds=[1, 2])
    with pytest.raises(ValueError, match="need one seed per image: got 3 seeds for 2 images"):
        sample_loop(tiny_model, noise, torch.tensor([0, 1]), LOOP, seeds=[1, 2, 3])
    with pytest.raises(ValueError, match="need clip_denoised set"):  # only generate knows pixels from latents
        sample_loop(tiny_model, noise, torch.tensor([0, 1]), LOOP.replace(clip_denoised=None))
    with pytest.raises(ValueError, match="respacing must be an ADM spec of num_steps=10 steps"):
        LOOP.replace(num_steps=10, respacing="ddim25")


def test_sampling_settings_have_no_defaults_outside_sample_config():
    """Every named default of a sampling setting lives in ditkit.config.sampling: no sampler function restates one."""
    settings = {f.name for f in dataclasses.fields(SampleConfig)} | {"timestep_respacing", "guided_channels"}
    for name, function in inspect.getmembers(samplers, inspect.isfunction):
        if function.__module__ != samplers.__name__:
            continue
        defaults = [p for p in inspect.signature(function).parameters.values() if p.default is not p.empty]
        assert not [p.name for p in defaults if p.name in settings], name


def test_respacing_spec_is_a_sample_config_field(tiny_model):
    """Respacing "ddim10" (the official DDIM stride) and "10" (even spacing) are different 10-step processes."""
    noise, labels = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    strided = sample_loop(tiny_model, noise, labels, _config("ddim", "ddim10"))
    even = sample_loop(tiny_model, noise, labels, _config("ddim", "10"))
    assert _config("ddim", "ddim10").timestep_respacing == "ddim10" and LOOP.timestep_respacing == "250"
    assert not torch.allclose(strided, even)


class _CallRecorder(torch.nn.Module):
    """Wraps a DiT and records the batch size of each call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.in_channels, self.batch_sizes = (
            model,
            model.config,
            model.in_channels,
            [],
        )

    def forward(self, x, t, y=None):
        self.batch_sizes.append(x.shape[0])
        return self.model(x, t, y)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m"])
def test_guidance_doubles_batch_only_when_on(sampler, tiny_model):
    recorder = _CallRecorder(tiny_model)
    noise, labels = torch.randn(3, 4, 8, 8), torch.tensor([0, 1, 2])
    sample_loop(recorder, noise, labels, _config(sampler, "6", cfg_scale=1.0))
    assert recorder.batch_sizes == [3] * 6
    recorder.batch_sizes.clear()
    sample_loop(recorder, noise, labels, _config(sampler, "6", cfg_scale=4.0))
    assert recorder.batch_sizes == [6] * 6


# Gaussian data: for x_0 ~ N(MU, S^2) per pixel the optimal eps predictor is known in closed form.

MU, S = 0.3, 0.5
FULL_ALPHAS_CUMPROD = create_diffusion().alphas_cumprod


def gaussian_model(learn_sigma: bool = False, v: float = 1.0):
    """eps*(x_t, t) = (x_t - sqrt(abar) MU) sqrt(1 - abar) / (abar S^2 + 1 - abar), t in 0..999."""

    def model(x, t, y=None):
        abar = FULL_ALPHAS_CUMPROD[t].reshape(-1, 1, 1, 1)
        eps = ((x.double() - abar.sqrt() * MU) * (1 - abar).sqrt() / (abar * S**2 + 1 - abar)).float()
        return torch.cat([eps, torch.full_like(eps, v)], dim=1) if learn_sigma else eps

    return model


def _gaussian_samples(sampler, spec, eta=0.0, learn_sigma=False, v=1.0, n=2048):
    noise = torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    out = sample_loop(
        gaussian_model(learn_sigma, v),
        noise,
        None,
        _config(sampler, spec, eta),
        generator=torch.Generator().manual_seed(1),
        diffusion=DiffusionConfig(learn_sigma=learn_sigma),
    )
    return noise, out


@pytest.mark.parametrize(("learn_sigma", "v"), [(False, 0.0), (True, 1.0), (True, 0.0)])
@pytest.mark.parametrize("spec", ["250", "100"])
def test_gaussian_data_recovered_ddpm(spec, learn_sigma, v):
    """Ancestral sampling reproduces the data law with fixed or learned (any v in [-1, 1]) variance."""
    _, out = _gaussian_samples("ddpm", spec, learn_sigma=learn_sigma, v=v)
    assert abs(out.mean().item() - MU) < 0.03  # 8192 values: standard errors ~0.006
    assert abs(out.std().item() - S) < 0.03


@pytest.mark.parametrize(
    ("sampler", "spec", "eta"), [("ddim", "ddim100", 0.0), ("ddim", "ddim250", 1.0), ("dpm++2m", "100", 0.0)]
)
def test_gaussian_data_recovered(sampler, spec, eta):
    """With enough steps DDIM and DPM-Solver++ reproduce it too (fewer steps: see the exact tests below)."""
    _, out = _gaussian_samples(sampler, spec, eta)
    assert abs(out.mean().item() - MU) < 0.03
    assert abs(out.std().item() - S) < 0.03


def _affine_prediction(sampler, spec, eta=0.0):
    """The sampler on Gaussian data, done in float64 scalars: output = a x_T + b + N(0, var) noise.

    Every step is affine in x (the optimal eps is), so tracking (a, b, var) gives the exact law of the
    discretised sampler: this pins down its few-step error, which differs from the data law.
    """
    abar = create_diffusion(spec, learn_sigma=False).alphas_cumprod.tolist()

    def x0_and_eps(k):  # x0_pred = A x + B, eps = E x + F at respaced index k
        e_slope = math.sqrt(1 - abar[k]) / (abar[k] * S**2 + 1 - abar[k])
        e_off = -math.sqrt(abar[k]) * MU * e_slope
        return (
            (1 - math.sqrt(1 - abar[k]) * e_slope) / math.sqrt(abar[k]),
            -math.sqrt(1 - abar[k]) * e_off / math.sqrt(abar[k]),
            e_slope,
            e_off,
        )

    a, b, var = 1.0, 0.0, 0.0
    order = list(range(len(abar)))[::-1]
    if sampler == "ddim":  # Song et al. Eq. 12
        for k in order:
            A, B, E, F = x0_and_eps(k)
            prev = abar[k - 1] if k > 0 else 1.0
            sigma = eta * math.sqrt((1 - prev) / (1 - abar[k]) * (1 - abar[k] / prev))
            c = math.sqrt(1 - prev - sigma**2)
            slope, offset = math.sqrt(prev) * A + c * E, math.sqrt(prev) * B + c * F
            a, b, var = slope * a, slope * b + offset, slope**2 * var + sigma**2
        return a, b, var
    # DPM-Solver++(2M), Lu et al. 2022 Alg. 2, ending with the x_0 prediction at the last step.
    lam = [0.5 * math.log(ab / (1 - ab)) for ab in abar]
    prev_x0, prev_h = None, 0.0
    for n, k in enumerate(order):
        A, B, _, _ = x0_and_eps(k)
        x0 = (A * a, A * b + B)
        if n == len(order) - 1:
            return x0[0], x0[1], 0.0
        j = order[n + 1]
        h = lam[j] - lam[k]
        d = (
            x0
            if prev_x0 is None or n == len(order) - 2  # first order on the first and last updates
            else tuple(x0[i] + (x0[i] - prev_x0[i]) * h / (2 * prev_h) for i in range(2))
        )
        ratio, scale = math.sqrt((1 - abar[j]) / (1 - abar[k])), math.sqrt(abar[j]) * math.expm1(-h)
        a, b = ratio * a - scale * d[0], ratio * b - scale * d[1]
        prev_x0, prev_h = x0, h
    raise AssertionError("unreachable")


@pytest.mark.parametrize(("sampler", "spec"), [("ddim", "ddim50"), ("dpm++2m", "20"), ("dpm++2m", "10")])
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_deterministic_samplers_exact_on_gaussian_data(sampler, spec, learn_sigma):
    noise, out = _gaussian_samples(sampler, spec, learn_sigma=learn_sigma, n=64)
    a, b, _ = _affine_prediction(sampler, spec)
    torch.testing.assert_close(out, a * noise + b, rtol=1e-4, atol=1e-4)


def test_few_step_errors_on_gaussian_data():
    """Known discretisation: 50-step DDIM and 20-step DPM-Solver++(2M) under-disperse a bit."""
    assert abs(_affine_prediction("ddim", "ddim50")[0] - S) < 0.03
    assert _affine_prediction("dpm++2m", "20")[0] == pytest.approx(0.48, abs=0.01)
    assert _affine_prediction("dpm++2m", "100")[0] == pytest.approx(S, abs=0.01)


def test_stochastic_ddim_law_on_gaussian_data():
    noise, out = _gaussian_samples("ddim", "ddim50", eta=1.0)
    a, b, var = _affine_prediction("ddim", "ddim50", eta=1.0)
    residual = out - (a * noise + b)  # the injected noise alone
    assert abs(residual.mean().item()) < 4 * math.sqrt(var / residual.numel())
    assert residual.std().item() == pytest.approx(math.sqrt(var), rel=0.03)
    assert abs(out.mean().item() - MU) < 0.03 and abs(out.std().item() - S) < 0.06


def test_learned_large_variance_equals_fixed_large_variance():
    _, fixed = _gaussian_samples("ddpm", "50", learn_sigma=False, n=256)
    _, learned = _gaussian_samples("ddpm", "50", learn_sigma=True, v=1.0, n=256)
    torch.testing.assert_close(learned, fixed, rtol=1e-4, atol=1e-4)


def test_ddim_inversion_round_trip():
    x_start = MU + S * torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    diffusion = create_diffusion("ddim250", learn_sigma=False)
    denoise = model_denoiser(gaussian_model(), None)
    x_T = ddim_invert(diffusion, denoise, x_start, clip_denoised=False)
    # The ODE maps N(MU, S^2) to N(0, 1) along (x - MU) / S; DDIM's first-order error is ~0.04 at 250 steps.
    torch.testing.assert_close(x_T, (x_start - MU) / S, rtol=0, atol=0.06)
    recovered = ddim_sample(diffusion, denoise, x_T, GlobalNoise(), _config("ddim", "ddim250"))
    torch.testing.assert_close(recovered, x_start, rtol=0, atol=0.06)


# Classifier-free guidance.


def _analytic_conditional_model(x, t, y):
    """Output channel c of sample i: (c + 1) * (y_i + 1) + x; the null class 10 gives (c + 1) * 11 + x."""
    channels = torch.arange(1, 9, dtype=x.dtype).reshape(1, 8, 1, 1)
    return channels * (y.to(x.dtype) + 1).reshape(-1, 1, 1, 1) + torch.cat([x, x], dim=1)


@pytest.mark.parametrize("guided", [3, 4])
def test_guided_denoiser_formula(guided):
    x, t = torch.randn(2, 4, 2, 2), torch.tensor([5, 6])
    labels, null = torch.tensor([2, 7]), torch.tensor([10, 10])
    out = guided_denoiser(_analytic_conditional_model, labels, null, 4.0, guided)(x, t)
    cond = _analytic_conditional_model(x, t, labels)
    uncond = _analytic_conditional_model(x, t, null)
    expected = torch.cat([uncond[:, :guided] + 4.0 * (cond[:, :guided] - uncond[:, :guided]), cond[:, guided:]], 1)
    torch.testing.assert_close(out, expected)


def test_make_denoiser_cfg_channels(tiny_model):
    x, t, labels = torch.randn(2, 4, 8, 8), torch.tensor([3, 900]), torch.tensor([1, 2])
    with torch.no_grad():
        cond = tiny_model(x, t, labels)
        uncond = tiny_model(x, t, torch.full_like(labels, 10))
        guided_all = make_denoiser(tiny_model, labels, LOOP.replace(cfg_scale=3.0))(x, t)
        guided_3 = make_denoiser(tiny_model, labels, LOOP.replace(cfg_scale=3.0, cfg_channels=3))(x, t)
        plain = make_denoiser(tiny_model, labels, LOOP)(x, t)
    torch.testing.assert_close(plain, cond)
    torch.testing.assert_close(guided_all[:, :4], uncond[:, :4] + 3.0 * (cond[:, :4] - uncond[:, :4]))
    torch.testing.assert_close(guided_all[:, 4:], cond[:, 4:])
    torch.testing.assert_close(guided_3[:, 3:], cond[:, 3:])
    torch.testing.assert_close(guided_3[:, :3], guided_all[:, :3])


@pytest.mark.parametrize("cfg_channels", [0, -1, "three", 2.5])
def test_sample_config_rejects_bad_cfg_channels(cfg_channels):
    with pytest.raises(ValueError, match="cfg_channels must be 'all' or an integer >= 1"):
        LOOP.replace(cfg_scale=2.0, cfg_channels=cfg_channels)


def test_make_denoiser_rejects_more_cfg_channels_than_the_model_has(tiny_model):
    with pytest.raises(ValueError, match="cfg_channels must be 'all' or an int in 1..4"):
        make_denoiser(tiny_model, torch.tensor([1]), LOOP.replace(cfg_scale=2.0, cfg_channels=5))


def test_guidance_needs_a_null_class(make_model):
    model = make_model(get_preset("DiT-T/2", class_dropout_prob=0.0))
    with pytest.raises(ValueError, match="cfg_scale=4.0 needs a model trained with label dropout"):
        make_denoiser(model, torch.tensor([1]), LOOP.replace(cfg_scale=4.0))
    make_denoiser(model, torch.tensor([1]), LOOP)  # no guidance: fine


def test_guidance_on_unconditional_model_warns(make_model, caplog):
    model = make_model(get_preset("DiT-T/2", num_classes=0))
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([10])
    with caplog.at_level(logging.WARNING, logger="ditkit.diffusion.samplers"):
        denoise = make_denoiser(model, None, LOOP.replace(cfg_scale=4.0))
    assert "no effect" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(denoise(x, t), model(x, t))
