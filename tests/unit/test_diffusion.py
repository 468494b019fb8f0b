"""Gaussian diffusion (ditkit.diffusion.gaussian): schedules, the forward process, losses and respacing."""

from __future__ import annotations

import math

import pytest
import torch

from ditkit.diffusion.gaussian import (
    GaussianDiffusion,
    cosine_beta_schedule,
    create_diffusion,
    linear_beta_schedule,
    normal_kl,
    space_timesteps,
)

# Schedules.


@pytest.mark.parametrize("num_steps", [1000, 250, 50])
def test_linear_betas_monotone_in_unit_interval(num_steps):
    betas = linear_beta_schedule(num_steps)
    assert betas.dtype == torch.float64 and betas.shape == (num_steps,)
    assert (betas > 0).all() and (betas < 1).all()
    assert (betas[1:] > betas[:-1]).all()
    scale = 1000 / num_steps  # the same noise range whatever the length
    assert betas[0].item() == pytest.approx(scale * 1e-4) and betas[-1].item() == pytest.approx(scale * 0.02)


@pytest.mark.parametrize("num_steps", [1000, 100])
def test_cosine_betas_monotone_in_unit_interval(num_steps):
    betas = cosine_beta_schedule(num_steps)
    assert betas.dtype == torch.float64 and betas.shape == (num_steps,)
    assert (betas > 0).all() and (betas <= 0.999).all()
    assert (betas[1:] >= betas[:-1]).all()
    abar = torch.cumprod(1 - betas, 0)
    expected = torch.cos(torch.tensor(1 / num_steps + 0.008, dtype=torch.float64) / 1.008 * math.pi / 2) ** 2
    expected = expected / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    assert abar[0].item() == pytest.approx(expected.item())


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_alphas_cumprod_decrease(schedule):
    diffusion = create_diffusion(noise_schedule=schedule)
    abar = diffusion.alphas_cumprod
    assert (abar[1:] < abar[:-1]).all() and abar[0] < 1 and abar[-1] > 0
    assert diffusion.alphas_cumprod_prev[0] == 1 and diffusion.alphas_cumprod_next[-1] == 0


def test_rejects_bad_betas():
    with pytest.raises(ValueError, match="betas"):
        GaussianDiffusion(torch.tensor([0.1, 0.0, 0.2]))
    with pytest.raises(ValueError, match="betas"):
        GaussianDiffusion(torch.ones(2, 2) * 0.1)


# Forward process.


def test_q_sample_matches_closed_form(generator):
    diffusion = create_diffusion()
    n = 20000
    x_start = torch.tensor([-1.0, 0.0, 0.5, 1.0]).reshape(1, 4, 1, 1).expand(n, 4, 1, 1)
    for step in (0, 10, 250, 700, 999):
        t = torch.full((n,), step)
        x_t = diffusion.q_sample(x_start, t, generator=generator)
        abar = diffusion.alphas_cumprod[step].item()
        mean, var = x_t.mean(0).flatten(), x_t.var(0).flatten()
        torch.testing.assert_close(mean, math.sqrt(abar) * x_start[0].flatten(), rtol=0, atol=0.03)
        torch.testing.assert_close(var, torch.full((4,), 1 - abar), rtol=0.05, atol=2e-5)
        q_mean, q_var, q_log_var = diffusion.q_mean_variance(x_start[:1], t[:1])
        torch.testing.assert_close(q_mean, math.sqrt(abar) * x_start[:1])
        torch.testing.assert_close(q_var.flatten(), torch.tensor([1 - abar]))
        torch.testing.assert_close(q_log_var.flatten(), torch.tensor([math.log(1 - abar)]))


def test_q_sample_uses_given_noise():
    diffusion = create_diffusion()
    x_start, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([3, 600])
    abar = diffusion.alphas_cumprod[t].float().reshape(2, 1, 1, 1)
    expected = abar.sqrt() * x_start + (1 - abar).sqrt() * noise
    torch.testing.assert_close(diffusion.q_sample(x_start, t, noise=noise), expected)


def test_posterior_at_t0_returns_x_start():
    """q(x_{-1} | x_0, x_0): coefficient 1 on x_start, 0 on x_t."""
    diffusion = create_diffusion()
    x_start, x_t = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    mean, variance, _ = diffusion.q_posterior_mean_variance(x_start, x_t, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(mean, x_start)
    assert (variance == 0).all()


def test_posterior_matches_bayes_rule():
    """Posterior mean/variance from the product of q(x_t | x_{t-1}) and q(x_{t-1} | x_0) (Ho et al. Eq. 7)."""
    diffusion = create_diffusion()
    x_start, x_t = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    t = torch.tensor([1, 400, 999])
    mean, variance, _ = diffusion.q_posterior_mean_variance(x_start, x_t, t)
    beta = diffusion.betas[t].reshape(3, 1, 1, 1)
    abar_prev = diffusion.alphas_cumprod_prev[t].reshape(3, 1, 1, 1)
    precision = (1 - beta) / beta + 1 / (1 - abar_prev)  # 1/var of the product of the two Gaussians
    expected_mean = (1 - beta).sqrt() / beta * x_t.double() + abar_prev.sqrt() / (1 - abar_prev) * x_start.double()
    torch.testing.assert_close(
        variance.double().expand(3, 1, 2, 2), (1 / precision).expand(3, 1, 2, 2), rtol=1e-6, atol=0
    )
    torch.testing.assert_close(mean.double(), expected_mean / precision, rtol=1e-5, atol=1e-6)


def test_eps_and_xstart_predictions_invert_each_other():
    diffusion = create_diffusion()
    x_t, eps, t = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4), torch.tensor([5, 500, 990])
    x_start = diffusion.predict_xstart_from_eps(x_t, t, eps)
    torch.testing.assert_close(diffusion.predict_eps_from_xstart(x_t, t, x_start), eps, rtol=1e-4, atol=1e-4)


def test_normal_kl_zero_for_equal_gaussians():
    mean, logvar = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(normal_kl(mean, logvar, mean, logvar), torch.zeros(5))
    assert (normal_kl(mean, logvar, mean + 1, logvar) > 0).all()


# Training losses.


def _linear_model(out_channels):
    """A differentiable stand-in model: a fixed linear map of x_t plus a t-dependent offset."""
    weight = torch.randn(out_channels, 4, generator=torch.Generator().manual_seed(1)) * 0.1

    def model(x, t, y=None):
        return torch.einsum("oc,nchw->nohw", weight, x) + (t.float() / 1000).reshape(-1, 1, 1, 1)

    return model


@pytest.mark.parametrize("predict_xstart", [False, True])
@pytest.mark.parametrize("learn_sigma", [True, False])
def test_training_losses_finite_per_sample(learn_sigma, predict_xstart, generator):
    diffusion = create_diffusion(learn_sigma=learn_sigma, predict_xstart=predict_xstart)
    model = _linear_model(8 if learn_sigma else 4)
    x_start = torch.rand(6, 4, 8, 8, generator=generator) * 2 - 1
    t = torch.tensor([0, 1, 10, 250, 700, 999])
    noise = torch.randn(x_start.shape, generator=generator)
    terms = diffusion.training_losses(model, x_start, t, noise=noise)
    for key in ("loss", "mse", "vb"):
        assert terms[key].shape == (6,) and torch.isfinite(terms[key]).all(), key
    x_t = diffusion.q_sample(x_start, t, noise=noise)
    target = x_start if predict_xstart else noise
    torch.testing.assert_close(terms["mse"], ((target - model(x_t, t)[:, :4]) ** 2).mean(dim=(1, 2, 3)))
    if learn_sigma:
        assert (terms["vb"] > 0).all()
        torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    else:
        assert (terms["vb"] == 0).all() and torch.equal(terms["loss"], terms["mse"])


def test_training_losses_draw_noise_from_generator():
    diffusion = create_diffusion()
    model = _linear_model(8)
    x_start, t = torch.randn(4, 4, 8, 8), torch.tensor([1, 2, 3, 4])
    first = diffusion.training_losses(model, x_start, t, generator=torch.Generator().manual_seed(3))["loss"]
    second = diffusion.training_losses(model, x_start, t, generator=torch.Generator().manual_seed(3))["loss"]
    assert torch.equal(first, second)


def test_vb_trains_only_the_variance_channels():
    diffusion = create_diffusion()
    x_start, t = torch.randn(2, 4, 4, 4), torch.tensor([10, 600])
    output = torch.randn(2, 8, 4, 4, requires_grad=True)
    terms = diffusion.training_losses(lambda x, t_: output, x_start, t, noise=torch.randn(2, 4, 4, 4))
    terms["vb"].sum().backward()
    assert (output.grad[:, :4] == 0).all() and (output.grad[:, 4:] != 0).any()


def test_learned_sigma_needs_double_channels():
    diffusion = create_diffusion()
    with pytest.raises(ValueError, match="8 output channels; got 4"):
        diffusion.p_mean_variance(lambda x, t: x, torch.randn(1, 4, 2, 2), torch.tensor([3]))


def test_learned_variance_interpolates_between_bounds():
    diffusion = create_diffusion()
    x_t, t = torch.randn(1, 4, 2, 2), torch.tensor([500])
    for v, table in ((1.0, torch.log(diffusion.betas)), (-1.0, diffusion.posterior_log_variance_clipped)):
        out = diffusion.p_mean_variance(lambda x, t_, v=v: torch.cat([x, torch.full_like(x, v)], 1), x_t, t)
        torch.testing.assert_close(out["log_variance"], torch.full_like(x_t, table[500].item()))


# Respacing.


def test_space_timesteps_counts_and_order():
    assert space_timesteps(1000, "") == list(range(1000))
    for spec, count in (
        ("250", 250),
        ("100", 100),
        ("ddim50", 50),
        ("10,15,20", 45),
        ("1000", 1000),
        ("1", 1),
    ):
        kept = space_timesteps(1000, spec)
        assert len(kept) == count and kept == sorted(set(kept)) and 0 <= kept[0] and kept[-1] < 1000, spec
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "250")[-1] == 999 and space_timesteps(1000, "250")[0] == 0


def test_space_timesteps_rounds_like_adm():
    """ADM accumulates the fractional stride; for "21" step 10 lands on 499 (sum 499.4999...), not 500."""
    kept = space_timesteps(1000, "21")
    assert 499 in kept and 500 not in kept and len(kept) == 21


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("abc", "bad timestep respacing 'abc'"),
        ("ddimx", "bad timestep respacing 'ddimx'"),
        ("10,,20", "bad timestep respacing '10,,20'"),
        ("0", "respacing counts must be >= 1"),
        ("-5", "respacing counts must be >= 1"),
        ("ddim0", "respacing counts must be >= 1"),
        ("1001", "cannot take 1001 steps from a section of 1000"),
        ("600,600", "cannot take 600 steps from a section of 500"),
        ("ddim400", "cannot take exactly 400 evenly strided steps of 1000"),
    ],
)
def test_space_timesteps_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        space_timesteps(1000, spec)


@pytest.mark.parametrize("spec", ["250", "ddim50", "10,15,20", "21", "7"])
def test_respaced_alphas_cumprod_equal_originals(spec):
    base = create_diffusion()
    respaced = create_diffusion(spec)
    kept = space_timesteps(1000, spec)
    assert respaced.num_timesteps == len(kept) and respaced.timestep_map.tolist() == kept
    torch.testing.assert_close(respaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-12, atol=0)


def test_respaced_model_sees_original_timesteps():
    diffusion = create_diffusion("250")
    seen = []

    def model(x, t):
        seen.append(t.clone())
        return torch.cat([x, x], 1)

    diffusion.p_mean_variance(model, torch.randn(3, 4, 2, 2), torch.tensor([249, 1, 0]))
    assert seen[0].tolist() == [999, 4, 0]
