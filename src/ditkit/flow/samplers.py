"""ODE and SDE samplers of SiT (Ma et al. 2024, https://arxiv.org/abs/2401.08740) over a model callable.

Follows github.com/willisma/SiT (transport/integrators.py, `Sampler` in transport/transport.py): fixed-step
Euler / Heun (torchdiffeq's `euler` / `heun2`) or adaptive dopri5 for the probability-flow ODE; Euler-Maruyama
or stochastic Heun for the SDE, with its diffusion-coefficient forms and last steps. Time runs noise (0) -> data
(1). `num_steps` counts grid points as SiT does: an ODE takes num_steps - 1 steps, an SDE num_steps - 1 steps
plus its last step. Guidance is the caller's: pass a guided model callable (classifier-free guidance wrapper).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ditkit.config import SampleConfig
from ditkit.flow.objective import FlowMatching, FlowModelFn
from ditkit.flow.paths import DiffusionForm, expand_t
from ditkit.runtime.errors import InputError

OdeMethod = Literal["euler", "heun", "dopri5"]  # SampleConfig.sampler "euler" / "heun" / "dopri5"
ODE_METHODS: tuple[OdeMethod, ...] = ("euler", "heun", "dopri5")
SdeMethod = Literal["euler", "heun"]  # SampleConfig.sampler "sde-euler" / "sde-heun"
SDE_METHODS: tuple[SdeMethod, ...] = ("euler", "heun")
LastStep = Literal["mean", "tweedie", "euler"] | None
LAST_STEPS: tuple[LastStep, ...] = (None, "mean", "tweedie", "euler")

VelocityFn = Callable[[Tensor, Tensor], Tensor]  # (x (N, C, H, W), t (N,)) -> dx/dt (N, C, H, W)
StepNoise = Callable[[Tensor], Tensor]  # x (N, C, H, W) -> a standard normal draw shaped like x


@dataclass
class FlowSample:
    """A sampler's result: the final x (N, C, H, W) and the number of model evaluations (NFE)."""

    x: Tensor
    nfe: int


class _Counted:
    """A model callable that counts its calls."""

    def __init__(self, model: FlowModelFn):
        self.model = model
        self.calls = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.model(x, t)


def time_grid(t0: float, t1: float, num_steps: int) -> Tensor:
    """(num_steps,) float32 times from t0 to t1, both ends included (SiT's torch.linspace)."""
    if num_steps < 2:
        raise InputError(f"num_steps must be >= 2 (grid points, ends included); got {num_steps}", setting="num_steps")
    return torch.linspace(t0, t1, num_steps)


def _batch_t(t: Tensor | float, x: Tensor) -> Tensor:
    return torch.ones(x.shape[0], device=x.device, dtype=x.dtype) * t


def ode_integrate(
    velocity: VelocityFn, x: Tensor, ts: Tensor, method: OdeMethod, *, atol: float, rtol: float
) -> Tensor:
    """Integrate dx/dt = velocity(x, t) from ts[0] to ts[-1], x (N, C, H, W) -> (N, C, H, W).

    euler: x += dt v(x, t). heun: the explicit trapezoid (torchdiffeq's heun2, 2 calls a step, the last step
    included). dopri5: torchdiffeq's adaptive Dormand-Prince with atol / rtol (needs `torchdiffeq`).
    """
    if method == "dopri5":
        return _dopri5(velocity, x, ts, atol=atol, rtol=rtol)
    if method not in ODE_METHODS:
        raise InputError(f"ODE method must be one of {ODE_METHODS}; got {method!r}", setting="sampler")
    ts = ts.to(x.device)
    for i in range(len(ts) - 1):
        t_cur, dt = ts[i], ts[i + 1] - ts[i]
        k1 = velocity(x, _batch_t(t_cur, x))
        if method == "euler":
            x = x + dt * k1
        else:
            k2 = velocity(x + dt * k1, _batch_t(ts[i + 1], x))
            x = x + dt * (0.5 * k1 + 0.5 * k2)
    return x


def _dopri5(velocity: VelocityFn, x: Tensor, ts: Tensor, *, atol: float, rtol: float) -> Tensor:
    try:
        from torchdiffeq import odeint
    except ImportError as err:  # an optional dependency: only the adaptive sampler needs it
        raise InputError(
            "the dopri5 sampler needs torchdiffeq: pip install torchdiffeq (or use euler / heun)", setting="sampler"
        ) from err

    def f(t: Tensor, y: Tensor) -> Tensor:
        return velocity(y, _batch_t(t, y))

    # Only the end matters; the whole grid is passed so torchdiffeq starts from SiT's first step size.
    return odeint(f, x, ts.to(x.device), method="dopri5", atol=[atol], rtol=[rtol])[-1]


def sample_ode(
    flow: FlowMatching,
    model: FlowModelFn,
    noise: Tensor,
    *,
    num_steps: int,
    method: OdeMethod,
    atol: float,
    rtol: float,
    reverse: bool,
) -> FlowSample:
    """Probability-flow ODE from noise (N, C, H, W) at t0 to data at t1 (SiT's `sample_ode`).

    With `reverse`, `noise` is data and the ODE runs from t = 1 to t = 0 (encoding). NFE: euler num_steps - 1,
    heun 2 (num_steps - 1), dopri5 adaptive.
    """
    counted = _Counted(model)
    t0, t1 = flow.check_interval(sde=False, sample=True, reverse=reverse)
    x = ode_integrate(
        lambda x_, t_: flow.velocity(counted, x_, t_),
        noise,
        time_grid(t0, t1, num_steps),
        method,
        atol=atol,
        rtol=rtol,
    )
    return FlowSample(x, counted.calls)


def generator_noise(generator: torch.Generator | None) -> StepNoise:
    """Step noise from one generator (None: torch's global RNG), drawn on the generator's device as SiT does."""
    device = generator.device if generator is not None else torch.device("cpu")
    return lambda x: torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def sde_drift_and_diffusion(
    flow: FlowMatching, model: FlowModelFn, x: Tensor, t: Tensor, form: DiffusionForm, norm: float
) -> tuple[Tensor, Tensor | float]:
    """(v + w_t score, w_t): the reverse SDE's drift (N, C, H, W) and its diffusion coefficient w_t, from one call."""
    velocity, score = flow.velocity_and_score(model, x, t)
    w_t = flow.diffusion(x, t, form, norm)
    return velocity + w_t * score, w_t


def sample_sde(
    flow: FlowMatching,
    model: FlowModelFn,
    noise: Tensor,
    *,
    num_steps: int,
    method: SdeMethod,
    diffusion_form: DiffusionForm,
    diffusion_norm: float,
    last_step: LastStep,
    last_step_size: float,
    step_noise: StepNoise,
) -> FlowSample:
    """The SDE dx = (v + w_t s) dt + sqrt(2 w_t) dW from noise (N, C, H, W) (SiT's `sample_sde`).

    num_steps - 1 steps of size dt on linspace(t0, t1, num_steps), each drawing step_noise(x), then the last
    step from t1 = 1 - last_step_size to 1: "mean" (the SDE drift, no noise), "euler" (the ODE velocity),
    "tweedie" (E[x_1 | x_t] = (x + sigma^2 s) / alpha), or None (stop at t1 = 1 - sample_eps). One model call
    per drift (SiT makes two, one for the velocity and one for the score): NFE euler num_steps - 1, heun
    2 (num_steps - 1), plus one for a last step.
    """
    if method not in SDE_METHODS:
        raise InputError(f"SDE method must be one of {SDE_METHODS}; got {method!r}", setting="sampler")
    if last_step not in LAST_STEPS:
        raise InputError(f"last_step must be one of {LAST_STEPS}; got {last_step!r}", setting="last_step")
    if last_step is None:
        last_step_size = 0.0
    counted = _Counted(model)
    t0, t1 = flow.check_interval(sde=True, sample=True, diffusion_form=diffusion_form, last_step_size=last_step_size)
    if t0 == 0.0 and diffusion_form == "SBDM" and flow.path_name != "vp":
        raise InputError(
            "diffusion_form 'SBDM' is infinite at t = 0 on the linear / GVP path: set sample_eps > 0 "
            "or use another diffusion_form",
            setting="diffusion_form",
        )
    ts = time_grid(t0, t1, num_steps).to(noise.device)
    dt = ts[1] - ts[0]  # SiT steps with the first interval throughout

    def drift(x_: Tensor, t_: Tensor) -> tuple[Tensor, Tensor | float]:
        return sde_drift_and_diffusion(flow, counted, x_, t_, diffusion_form, diffusion_norm)

    x = noise
    for t_cur in ts[:-1]:
        t = _batch_t(t_cur, x)
        dw = step_noise(x) * torch.sqrt(dt)
        if method == "euler":  # Euler-Maruyama
            k1, w_t = drift(x, t)
            x = x + k1 * dt + torch.sqrt(torch.as_tensor(2 * w_t)) * dw
        else:  # Heun: add the noise first, then a trapezoid step of the drift (SiT's stochastic Heun)
            w_t = flow.diffusion(x, t, diffusion_form, diffusion_norm)
            x_hat = x + torch.sqrt(torch.as_tensor(2 * w_t)) * dw
            k1 = drift(x_hat, t)[0]
            k2 = drift(x_hat + dt * k1, t + dt)[0]
            x = x_hat + 0.5 * dt * (k1 + k2)
    x = _last_step(flow, counted, x, _batch_t(t1, x), last_step, last_step_size, diffusion_form, diffusion_norm)
    return FlowSample(x, counted.calls)


def _last_step(
    flow: FlowMatching,
    model: FlowModelFn,
    x: Tensor,
    t: Tensor,
    last_step: LastStep,
    size: float,
    form: DiffusionForm,
    norm: float,
) -> Tensor:
    """SiT's last step from t1 to 1, without noise (see `sample_sde`)."""
    if last_step is None:
        return x
    if last_step == "mean":
        return x + sde_drift_and_diffusion(flow, model, x, t, form, norm)[0] * size
    if last_step == "euler":
        return x + flow.velocity(model, x, t) * size
    # Tweedie's formula for x_t = alpha x_1 + sigma x_0: E[x_1 | x_t] = (x_t + sigma^2 grad log p_t) / alpha.
    score = flow.score_from_output(flow.run_model(model, x, t), x, t)
    alpha_t = flow.path.alpha(expand_t(t, x))[0]
    sigma_t = flow.path.sigma(expand_t(t, x))[0]
    return x / alpha_t + sigma_t**2 / alpha_t * score


def sample_flow(
    flow: FlowMatching, model: FlowModelFn, noise: Tensor, config: SampleConfig, step_noise: StepNoise
) -> FlowSample:
    """Sample with the flow sampler config.sampler ("euler", "heun", "dopri5": the ODE; "sde-euler", "sde-heun":
    the SDE, drawing step_noise) on config.num_steps grid points, with config's SDE and ODE settings."""
    sampler = config.sampler
    if sampler in ODE_METHODS:
        return sample_ode(
            flow,
            model,
            noise,
            num_steps=config.num_steps,
            method=sampler,  # type: ignore[arg-type]  # checked just above
            atol=config.ode_atol,
            rtol=config.ode_rtol,
            reverse=False,
        )
    method = sampler.removeprefix("sde-")
    if not sampler.startswith("sde-") or method not in SDE_METHODS:
        raise InputError(f"{sampler!r} is not a flow sampler", setting="sampler")
    return sample_sde(
        flow,
        model,
        noise,
        num_steps=config.num_steps,
        method=method,  # type: ignore[arg-type]
        diffusion_form=config.sde_diffusion_form,
        diffusion_norm=config.sde_diffusion_norm,
        last_step=config.sde_last_step,
        last_step_size=config.sde_last_step_size,
        step_noise=step_noise,
    )
