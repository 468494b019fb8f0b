"""ditkit.flow: SiT's paths, the flow-matching objective and its samplers, on closed forms and a Gaussian toy."""

from __future__ import annotations

import itertools
import sys

import pytest
import torch
from torch import Tensor

from ditkit.diffusion.samplers import guided_denoiser, model_denoiser
from ditkit.flow.objective import FlowMatching
from ditkit.flow.paths import PATHS, make_path
from ditkit.flow.samplers import generator_noise, sample_ode, sample_sde
from ditkit.runtime.errors import InputError
from numerics import OPS_FORWARD, OPS_PER_SAMPLING_STEP, assert_fp32_close

PREDICTIONS = ("velocity", "score", "noise")
MU, STD = 2.0, 0.5  # the toy data distribution N(MU, STD^2) in every coordinate


def gaussian_toy(path_name: str, prediction: str):
    """The exact model output for data N(MU, STD^2): p_t = N(alpha MU, alpha^2 STD^2 + sigma^2) per coordinate."""
    path = make_path(path_name)

    def model(x: Tensor, t: Tensor) -> Tensor:
        tt = t.reshape(-1, *([1] * (x.ndim - 1))).to(torch.float64)
        alpha, d_alpha = path.alpha(tt)
        sigma, d_sigma = path.sigma(tt)
        var = alpha**2 * STD**2 + sigma**2
        score = -(x - alpha * MU) / var
        if prediction == "score":
            return score
        if prediction == "noise":
            return -sigma * score  # E[x_0 | x_t] = -sigma_t grad log p_t
        # E[alpha' x_1 + sigma' x_0 | x_t], with E[x_1 | x_t] = (x + sigma^2 score) / alpha
        mean_x1 = MU + alpha * STD**2 / var * (x - alpha * MU)
        mean_x0 = -sigma * score
        return d_alpha * mean_x1 + d_sigma * mean_x0

    return model


def ode(flow: FlowMatching, model, x: Tensor, num_steps: int, method: str = "heun", reverse: bool = False):
    return sample_ode(flow, model, x, num_steps=num_steps, method=method, atol=1e-6, rtol=1e-3, reverse=reverse)


def sde(flow: FlowMatching, model, x: Tensor, num_steps: int, seed: int = 0, **settings):
    options = {
        "method": "euler",
        "diffusion_form": "sigma",
        "diffusion_norm": 1.0,
        "last_step": "mean",
        "last_step_size": 0.04,
    }
    options.update(settings)
    noise = generator_noise(torch.Generator().manual_seed(seed))
    return sample_sde(flow, model, x, num_steps=num_steps, step_noise=noise, **options)


# Paths.


@pytest.mark.parametrize("name", ["linear", "gvp"])
def test_path_ends_are_noise_and_data(name):
    """SiT's direction: t = 0 is pure noise x_0, t = 1 is the data x_1."""
    path = make_path(name)
    x0, x1 = torch.randn(2, 3, 4, 4, 4, dtype=torch.float64).unbind(0)
    t = torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(path.x_t(0 * t, x0, x1), x0)
    torch.testing.assert_close(path.x_t(t, x0, x1), x1)


def test_vp_path_ends():
    """The VP path reaches the data exactly at t = 1 and is within alpha_0 ~ 7e-3 of pure noise at t = 0."""
    path = make_path("vp")
    alpha0, sigma0 = (v.item() for v in (path.alpha(torch.zeros(1))[0], path.sigma(torch.zeros(1))[0]))
    assert alpha0 == pytest.approx(torch.exp(torch.tensor(-0.25 * 19.9 - 0.05)).item()) and alpha0 < 1e-2
    assert sigma0 == pytest.approx((1 - alpha0**2) ** 0.5)
    assert path.alpha(torch.ones(1))[0].item() == 1.0 and path.sigma(torch.ones(1))[0].item() == 0.0


@pytest.mark.parametrize("name", PATHS)
def test_u_t_is_the_time_derivative_of_x_t(name):
    path = make_path(name)
    x0, x1 = torch.randn(2, 4, 2, 3, 3, dtype=torch.float64).unbind(0)
    t = torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=torch.float64, requires_grad=True)
    x_t = path.x_t(t, x0, x1)
    (grad,) = torch.autograd.grad(x_t, t, grad_outputs=torch.ones_like(x_t), is_grads_batched=False)
    # d/dt sum over a sample's coordinates of x_t, per sample, equals the sum of u_t's coordinates
    torch.testing.assert_close(grad, path.u_t(t.detach(), x0, x1).sum(dim=(1, 2, 3)))


@pytest.mark.parametrize("name", PATHS)
def test_conversions_round_trip(name):
    path = make_path(name)
    x, v = torch.randn(2, 4, 2, 3, 3, dtype=torch.float64).unbind(0)
    t = torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=torch.float64)
    score = path.score_from_velocity(v, x, t)
    torch.testing.assert_close(path.velocity_from_score(score, x, t), v)
    torch.testing.assert_close(path.score_from_noise(path.noise_from_velocity(v, x, t), x, t), score)


@pytest.mark.parametrize("name", PATHS)
def test_conversions_of_the_exact_fields_agree(name):
    """The toy's exact velocity, score and noise fields map onto each other through the path's conversions."""
    path = make_path(name)
    x = torch.randn(4, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64)
    v, s, n = (gaussian_toy(name, p)(x, t) for p in PREDICTIONS)
    torch.testing.assert_close(path.score_from_velocity(v, x, t), s)
    torch.testing.assert_close(path.noise_from_velocity(v, x, t), n)


# The objective.


@pytest.mark.parametrize(("name", "prediction"), list(itertools.product(PATHS, PREDICTIONS)))
def test_training_losses_shape_interval_and_determinism(tiny_model, name, prediction):
    flow = FlowMatching(name, prediction, "likelihood" if prediction != "velocity" else None)
    x1 = torch.randn(5, 4, 8, 8)
    kwargs = {"y": torch.arange(5)}
    with torch.no_grad():
        a = flow.training_losses(tiny_model, x1, model_kwargs=kwargs, generator=torch.Generator().manual_seed(3))
        b = flow.training_losses(tiny_model, x1, model_kwargs=kwargs, generator=torch.Generator().manual_seed(3))
    assert a["loss"].shape == (5,) and torch.isfinite(a["loss"]).all()
    assert a["pred"].shape == x1.shape  # the learned-sigma half is dropped
    torch.testing.assert_close(a["loss"], b["loss"], rtol=0, atol=0)
    t0, t1 = flow.check_interval()
    assert ((a["t"] >= t0) & (a["t"] <= t1)).all()


def test_exact_velocity_has_the_lowest_loss():
    """The loss of the exact field is below that of a perturbed one (it is the regression's minimiser)."""
    flow = FlowMatching("linear", "velocity")
    x1 = MU + STD * torch.randn(4096, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = gaussian_toy("linear", "velocity")
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(x1.shape, generator=gen, dtype=torch.float64)
    t = torch.rand(4096, generator=gen, dtype=torch.float64)
    best = flow.training_losses(lambda x, t_: exact(x, t_), x1, t, noise=noise)["loss"].mean()
    worse = flow.training_losses(lambda x, t_: exact(x, t_) + 0.1, x1, t, noise=noise)["loss"].mean()
    assert best < worse


def test_bad_settings_raise_input_errors():
    with pytest.raises(InputError, match="path"):
        FlowMatching("cosine")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="prediction"):
        FlowMatching("linear", "x0")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="loss_weight"):
        FlowMatching("linear", "score", "snr")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="SBDM"):  # infinite diffusion at t = 0 with SiT's velocity eps of 0
        sde(FlowMatching(), gaussian_toy("linear", "velocity"), torch.randn(2, 1, 2, 2), 5, diffusion_form="SBDM")


# Samplers on the Gaussian toy.


@pytest.mark.parametrize(("name", "prediction"), list(itertools.product(PATHS, PREDICTIONS)))
def test_ode_recovers_the_gaussian(name, prediction):
    """The exact field's flow maps N(0, 1) onto N(MU, STD^2): mean and standard deviation of 8192 samples."""
    z = torch.randn(2048, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = ode(FlowMatching(name, prediction), gaussian_toy(name, prediction), z, num_steps=101).x
    # statistical: 8192 draws give a mean within ~4 * STD / 90 and a std within ~4 * STD / 128
    assert out.mean().item() == pytest.approx(MU, abs=0.03)
    assert out.std().item() == pytest.approx(STD, abs=0.03)
    if name == "linear" and prediction == "velocity":  # the flow is the affine map z -> MU + STD z, on [0, 1]
        torch.testing.assert_close(out, MU + STD * z, rtol=0, atol=1e-4)


@pytest.mark.parametrize(("name", "prediction"), [("linear", "velocity"), ("gvp", "score"), ("vp", "noise")])
@pytest.mark.parametrize("method", ["euler", "heun"])
def test_sde_recovers_the_gaussian(name, prediction, method):
    z = torch.randn(2048, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    form = "sigma" if name == "linear" else "SBDM"
    out = sde(
        FlowMatching(name, prediction), gaussian_toy(name, prediction), z, 101, method=method, diffusion_form=form
    ).x
    assert out.mean().item() == pytest.approx(MU, abs=0.05)
    assert out.std().item() == pytest.approx(STD, abs=0.05)


def test_reverse_ode_inverts_the_forward_ode():
    flow, model = FlowMatching("gvp", "velocity"), gaussian_toy("gvp", "velocity")
    z = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = ode(flow, model, z, 201).x
    torch.testing.assert_close(ode(flow, model, x, 201, reverse=True).x, z, rtol=0, atol=1e-4)


def test_dopri5_recovers_the_exact_flow_and_needs_torchdiffeq(monkeypatch):
    pytest.importorskip("torchdiffeq")
    flow, model = FlowMatching("linear", "velocity"), gaussian_toy("linear", "velocity")
    z = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    adaptive = sample_ode(flow, model, z, num_steps=2, method="dopri5", atol=1e-9, rtol=1e-9, reverse=False)
    assert adaptive.nfe > 6  # adaptive: at least one accepted step of 6 stages
    torch.testing.assert_close(adaptive.x, MU + STD * z, rtol=0, atol=1e-6)
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)  # as if not installed
    with pytest.raises(InputError, match="torchdiffeq"):
        ode(flow, model, z, 2, method="dopri5")


# Counts, determinism, guidance.


@pytest.mark.parametrize("num_steps", [2, 5, 11])
def test_nfe_counts(num_steps):
    flow, model = FlowMatching(), gaussian_toy("linear", "velocity")
    z = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    assert ode(flow, model, z, num_steps, method="euler").nfe == num_steps - 1  # SiT: num_steps grid points
    assert ode(flow, model, z, num_steps, method="heun").nfe == 2 * (num_steps - 1)
    assert sde(flow, model, z, num_steps).nfe == num_steps  # num_steps - 1 steps, then the last step
    assert sde(flow, model, z, num_steps, last_step=None).nfe == num_steps - 1
    assert sde(flow, model, z, num_steps, method="heun").nfe == 2 * (num_steps - 1) + 1


def test_sde_is_deterministic_given_its_generator(tiny_model):
    flow, model = FlowMatching(), model_denoiser(tiny_model, torch.arange(3))
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b, c = (sde(flow, model, z, 6, seed=s).x for s in (7, 7, 8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("channels", [4, 3])
def test_guidance_at_scale_one_is_no_guidance(tiny_model, channels):
    """diffusion's guided_denoiser serves the flow: model output in, model output out (velocity here)."""
    labels = torch.tensor([1, 2, 3])
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    flow = FlowMatching()
    guided = guided_denoiser(tiny_model, labels, torch.full_like(labels, 10), 1.0, channels)
    with torch.no_grad():
        plain = ode(flow, model_denoiser(tiny_model, labels), z, 6, method="euler")
        cfg = ode(flow, guided, z, 6, method="euler")
    assert cfg.nfe == plain.nfe  # one (doubled-batch) call per step
    # u + 1 (c - u) rounds differently from c, and the batch of 6 may take other kernels than the batch of 3
    assert_fp32_close(cfg.x, plain.x, ops=OPS_FORWARD + 5 * OPS_PER_SAMPLING_STEP)
