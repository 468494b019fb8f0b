"""ditkit.flow against the official SiT transport code (github.com/willisma/SiT, commit 947f95b), fp32.

tests/fixtures/sit_reference.safetensors was made by scripts/make_sit_reference.py: the official code driving
ditkit's own DiT-T/2 (tests/fixtures/sit_model.safetensors) as SiT drives its SiT. Tolerances are fp32 ulps of
each reference's scale (tests/numerics.py), growing with the model calls a loop feeds back.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor

from ditkit.config import get_preset
from ditkit.diffusion.samplers import guided_denoiser, model_denoiser
from ditkit.flow.objective import FlowMatching
from ditkit.flow.paths import make_path
from ditkit.flow.samplers import sample_ode, sample_sde
from ditkit.model.dit import DiT
from numerics import OPS_ELEMENTWISE, OPS_FORWARD, OPS_PER_SAMPLING_STEP, assert_fp32_close

PATHS = ("linear", "gvp", "vp")
PREDICTIONS = ("velocity", "score", "noise")
ODE_STEPS, SDE_STEPS = 6, 5  # grid points, as in the script
SDE_CASES = [
    ("linear", "velocity", "euler", "sigma", "mean"),
    ("linear", "velocity", "euler", "sigma", None),
    ("linear", "velocity", "euler", "sigma", "tweedie"),
    ("linear", "velocity", "euler", "sigma", "euler"),
    ("linear", "velocity", "heun", "sigma", "mean"),
    ("gvp", "score", "euler", "SBDM", "mean"),
    ("vp", "noise", "euler", "SBDM", "mean"),
    ("vp", "velocity", "euler", "linear", "tweedie"),
    ("linear", "noise", "heun", "decreasing", "mean"),
]


def loop_ops(nfe: int) -> int:
    """The budget of a loop of `nfe` model calls, each feeding the next (as the DDIM loop's in numerics.py)."""
    return OPS_FORWARD + nfe * OPS_PER_SAMPLING_STEP


@pytest.fixture
def ref(load_fixture) -> dict[str, Tensor]:
    return load_fixture("sit_reference.safetensors")


@pytest.fixture
def model(load_fixture) -> DiT:
    model = DiT(get_preset("DiT-T/2")).eval()  # learn_sigma: the flow drops the second half, as SiT's forward
    model.load_state_dict(load_fixture("sit_model.safetensors"), strict=True)
    return model


@pytest.mark.parametrize("name", PATHS)
def test_paths_match_official(ref, name):
    path = make_path(name)
    t, x0, x1, v = ref["t_path"], ref["x0"], ref["x1"], ref["v"]
    assert_fp32_close(path.x_t(t, x0, x1), ref[f"path/{name}/x_t"], ops=OPS_ELEMENTWISE)
    assert_fp32_close(path.u_t(t, x0, x1), ref[f"path/{name}/u_t"], ops=OPS_ELEMENTWISE)
    drift_mean, drift_var = path.drift(x1, t)
    assert_fp32_close(drift_mean, ref[f"path/{name}/drift_mean"], ops=OPS_ELEMENTWISE)
    assert_fp32_close(drift_var, ref[f"path/{name}/drift_var"], ops=OPS_ELEMENTWISE)
    for conversion in ("score_from_velocity", "noise_from_velocity", "velocity_from_score"):
        ours = getattr(path, conversion)(v, x1, t)
        assert_fp32_close(ours, ref[f"path/{name}/{conversion}"], ops=OPS_ELEMENTWISE, msg=conversion)
    for form in ("sigma", "SBDM", "linear", "decreasing"):
        ours = torch.as_tensor(path.diffusion(x1, t, form, 0.7))
        assert_fp32_close(ours, ref[f"path/{name}/diffusion/{form}"], ops=OPS_ELEMENTWISE, msg=form)


@pytest.mark.parametrize(("name", "prediction"), list(itertools.product(PATHS, PREDICTIONS)))
def test_intervals_match_official(ref, name, prediction):
    """SiT's default eps and check_interval for training, ODE sampling (both ways) and two SDE settings."""
    flow = FlowMatching(name, prediction)
    ours = [
        flow.check_interval(),
        flow.check_interval(sample=True),
        flow.check_interval(sample=True, reverse=True),
        flow.check_interval(sde=True, sample=True, diffusion_form="sigma"),
        flow.check_interval(sde=True, sample=True, last_step_size=0.04),
    ]
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64), ref[f"interval/{name}/{prediction}"])


LOSS_CASES = [
    (name, prediction, weight)
    for name, prediction in itertools.product(PATHS, PREDICTIONS)
    for weight in ((None, "velocity", "likelihood") if prediction != "velocity" else (None,))
]


@pytest.mark.parametrize(("name", "prediction", "weight"), LOSS_CASES)
def test_training_losses_match_official(ref, model, name, prediction, weight):
    flow = FlowMatching(name, prediction, weight)
    key = f"loss/{name}/{prediction}/{weight}"
    t0, t1 = flow.check_interval()
    torch.testing.assert_close(ref["u"] * (t1 - t0) + t0, ref[f"{key}/t"], rtol=0, atol=0)  # same training times
    with torch.no_grad():
        out = flow.training_losses(model, ref["x1"], ref[f"{key}/t"], {"y": ref["y"]}, noise=ref["x0"])
    assert out["loss"].shape == (4,)
    assert_fp32_close(out["loss"], ref[key], ops=OPS_FORWARD + OPS_ELEMENTWISE)


@pytest.mark.parametrize(
    ("name", "prediction", "method"), list(itertools.product(PATHS, PREDICTIONS, ("euler", "heun")))
)
def test_ode_loops_match_official(ref, model, name, prediction, method):
    flow = FlowMatching(name, prediction)
    key = f"ode/{name}/{prediction}/{method}"
    with torch.no_grad():
        out = sample_ode(
            flow,
            model_denoiser(model, ref["y"]),
            ref["z"],
            num_steps=ODE_STEPS,
            method=method,
            atol=0.0,
            rtol=0.0,
            reverse=False,
        )
    assert out.nfe == int(ref[f"{key}/nfe"])  # SiT's fixed grids: 5 steps of 1 (euler) or 2 (heun) calls
    assert_fp32_close(out.x, ref[key], ops=loop_ops(out.nfe))


@pytest.mark.parametrize(("name", "prediction"), [("linear", "velocity"), ("gvp", "score")])
def test_dopri5_matches_official(ref, model, name, prediction):
    pytest.importorskip("torchdiffeq")
    with torch.no_grad():
        out = sample_ode(
            FlowMatching(name, prediction),
            model_denoiser(model, ref["y"]),
            ref["z"],
            num_steps=2,
            method="dopri5",
            atol=1e-6,
            rtol=1e-3,
            reverse=False,
        )
    # The same solver on the same function: the adaptive steps are taken alike.
    assert_fp32_close(out.x, ref[f"ode/{name}/{prediction}/dopri5"], ops=loop_ops(out.nfe))


def test_three_channel_guidance_matches_official(ref, model):
    """SiT's forward_with_cfg (guidance on 3 of 4 channels) is diffusion's guided_denoiser with 3 channels."""
    y = ref["y"]
    guided = guided_denoiser(model, y, torch.full_like(y, model.config.num_classes), 4.0, 3)
    with torch.no_grad():
        out = sample_ode(
            FlowMatching(), guided, ref["z"], num_steps=ODE_STEPS, method="euler", atol=0.0, rtol=0.0, reverse=False
        )
    assert_fp32_close(out.x, ref["ode/linear/velocity/euler/cfg3"], ops=loop_ops(out.nfe))


@pytest.mark.parametrize(("name", "prediction", "method", "form", "last_step"), SDE_CASES)
def test_sde_loops_match_official(ref, model, name, prediction, method, form, last_step):
    noises = iter(ref["sde_noise"])  # the draws SiT made from torch's global RNG, in order
    with torch.no_grad():
        out = sample_sde(
            FlowMatching(name, prediction),
            model_denoiser(model, ref["y"]),
            ref["z"],
            num_steps=SDE_STEPS,
            method=method,
            diffusion_form=form,
            diffusion_norm=1.0,
            last_step=last_step,
            last_step_size=0.04,
            step_noise=lambda x: next(noises),
        )
    key = f"sde/{name}/{prediction}/{method}/{form}/{str(last_step).lower()}"
    # SiT calls the model twice per SDE drift (once for the velocity, once for the score); ditkit once.
    sit_nfe = int(ref[f"{key}/nfe"])
    calls_per_step = 1 if method == "euler" else 2
    assert out.nfe == (SDE_STEPS - 1) * calls_per_step + (last_step is not None) <= sit_nfe
    assert_fp32_close(out.x, ref[key], ops=loop_ops(sit_nfe))
