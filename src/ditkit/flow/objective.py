"""Flow-matching training objective of SiT (Ma et al. 2024, https://arxiv.org/abs/2401.08740).

Follows the official `Transport` (github.com/willisma/SiT, transport/transport.py): a path, what the model
predicts (velocity, score or noise), the loss weight, and the time interval each use may touch (`check_interval`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ditkit.config import FlowConfig
from ditkit.config.constants import FLOW_LOSS_WEIGHTS, FLOW_PREDICTIONS, FlowLossWeight, FlowPrediction
from ditkit.flow.paths import DIFFUSION_FORMS, PATHS, DiffusionForm, InterpolantPath, PathName, expand_t, make_path
from ditkit.runtime.errors import InputError

Prediction = FlowPrediction
PREDICTIONS = FLOW_PREDICTIONS
LossWeight = FlowLossWeight
LOSS_WEIGHTS = FLOW_LOSS_WEIGHTS

ModelFn = Callable[..., Tensor]  # model(x_t (N, C, H, W), t (N,) in [0, 1], **model_kwargs) -> (N, C', H, W)
FlowModelFn = Callable[[Tensor, Tensor], Tensor]  # labels already bound: (x_t, t) -> model output

# SiT's create_transport defaults: the VP path and the score / noise predictions avoid the singular ends.
VP_TRAIN_EPS = 1e-5
DEFAULT_EPS = 1e-3


def mean_flat(x: Tensor) -> Tensor:
    """Mean over all but the batch dimension: (N, ...) -> (N,)."""
    return x.mean(dim=list(range(1, x.ndim)))


def default_eps(path: PathName, prediction: Prediction) -> tuple[float, float]:
    """(train_eps, sample_eps) as SiT's create_transport picks them when none are given."""
    if path == "vp":
        return VP_TRAIN_EPS, DEFAULT_EPS
    if prediction != "velocity":
        return DEFAULT_EPS, DEFAULT_EPS
    return 0.0, 0.0  # a velocity on the linear / GVP path is finite on all of [0, 1]


class FlowMatching:
    """SiT's transport: x_t = alpha_t x_1 + sigma_t x_0, t in [0, 1] from noise (0) to data (1).

    The model is a callable (x_t, t, **model_kwargs); its output's channels past x's own (a DiT with
    learn_sigma) are dropped, as SiT's `forward` does.
    """

    def __init__(
        self,
        path: PathName = "linear",
        prediction: Prediction = "velocity",
        loss_weight: LossWeight = None,
        train_eps: float | None = None,
        sample_eps: float | None = None,
        *,
        sigma_min: float = 0.1,
        sigma_max: float = 20.0,
    ):
        if path not in PATHS:
            raise InputError(f"path must be one of {PATHS}; got {path!r}", setting="path")
        if prediction not in PREDICTIONS:
            raise InputError(f"prediction must be one of {PREDICTIONS}; got {prediction!r}", setting="prediction")
        if loss_weight not in LOSS_WEIGHTS:
            raise InputError(f"loss_weight must be one of {LOSS_WEIGHTS}; got {loss_weight!r}", setting="loss_weight")
        # Deliberate deviation: each eps left None takes SiT's default on its own (SiT ignores a sample_eps
        # given without a train_eps, and forces both to 0 for a velocity on the linear / GVP path).
        default_train, default_sample = default_eps(path, prediction)
        self.train_eps = default_train if train_eps is None else float(train_eps)
        self.sample_eps = default_sample if sample_eps is None else float(sample_eps)
        for name, eps in (("train_eps", self.train_eps), ("sample_eps", self.sample_eps)):
            if not 0.0 <= eps < 0.5:
                raise InputError(f"{name} must be in [0, 0.5); got {eps}", setting=name)
        self.path_name: PathName = path
        self.path: InterpolantPath = make_path(path, sigma_min=sigma_min, sigma_max=sigma_max)
        self.prediction: Prediction = prediction
        self.loss_weight: LossWeight = loss_weight

    def check_interval(
        self,
        *,
        sde: bool = False,
        sample: bool = False,
        reverse: bool = False,
        diffusion_form: DiffusionForm = "SBDM",
        last_step_size: float = 0.0,
    ) -> tuple[float, float]:
        """(t0, t1), the times a use may touch (SiT's `check_interval`; `sample` is its `eval`).

        The VP path stops eps short of t = 1; linear / GVP keep clear of both ends unless a velocity is
        integrated by an ODE (or by an SDE whose diffusion is finite at t = 0). An SDE with a last step
        ends last_step_size before 1 so that the last step lands on 1. `reverse` swaps to data -> noise.
        """
        t0, t1 = 0.0, 1.0
        eps = self.sample_eps if sample else self.train_eps
        end = 1 - eps if (not sde or last_step_size == 0) else 1 - last_step_size
        if self.path_name == "vp":
            t1 = end
        elif self.prediction != "velocity" or sde:
            singular_start = (diffusion_form == "SBDM" and sde) or self.prediction != "velocity"
            t0 = eps if singular_start else 0.0
            t1 = end
        if reverse:
            t0, t1 = 1 - t0, 1 - t1
        return t0, t1

    def sample_t(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> Tensor:
        """(n,) training times, uniform on the training interval (drawn on the CPU, as SiT does)."""
        t0, t1 = self.check_interval()
        return (torch.rand((n,), generator=generator) * (t1 - t0) + t0).to(device)

    def run_model(self, model: ModelFn, x: Tensor, t: Tensor, model_kwargs: dict[str, Any] | None = None) -> Tensor:
        """model(x, t, **model_kwargs) cut to x's channels (N, C, H, W): a learned variance is meaningless here."""
        out = model(x, t, **(model_kwargs or {}))
        if out.shape[0] != x.shape[0] or out.shape[2:] != x.shape[2:] or out.shape[1] < x.shape[1]:
            raise ValueError(f"model output {tuple(out.shape)} does not fit its input {tuple(x.shape)}")
        return out[:, : x.shape[1]]

    def training_losses(
        self,
        model: ModelFn,
        x1: Tensor,
        t: Tensor | None = None,
        model_kwargs: dict[str, Any] | None = None,
        noise: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Per-sample losses of data x1 (N, C, H, W): {"loss" (N,), "pred", "x_t", "t"}.

        t (N,) and noise (N, C, H, W) are drawn (noise first, then t, from `generator`) unless given.
        Velocity: |v - u_t|^2. Noise: w |eps - x_0|^2. Score: w |s sigma_t + x_0|^2, with w = 1, or
        (g^2/2 / sigma)^2 ("velocity"), or g^2/2 / sigma^2 ("likelihood").
        """
        if noise is None:
            noise = torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device="cpu").to(x1.device)
        if t is None:
            t = self.sample_t(x1.shape[0], generator=generator, device=x1.device)
        t = t.to(x1)
        x_t = self.path.x_t(t, noise, x1)
        u_t = self.path.u_t(t, noise, x1)
        pred = self.run_model(model, x_t, t, model_kwargs)
        if self.prediction == "velocity":
            loss = mean_flat((pred - u_t) ** 2)
        else:
            _, drift_var = self.path.drift(x_t, t)
            sigma_t = self.path.sigma(expand_t(t, x_t))[0]
            if self.loss_weight == "velocity":
                weight: Tensor | float = (drift_var / sigma_t) ** 2
            elif self.loss_weight == "likelihood":
                weight = drift_var / sigma_t**2
            else:
                weight = 1.0
            target = (pred - noise) if self.prediction == "noise" else (pred * sigma_t + noise)
            loss = mean_flat(weight * target**2)
        return {"loss": loss, "pred": pred, "x_t": x_t, "t": t}

    # What samplers need: the velocity (probability-flow drift) and the score, from one model output.

    def velocity_from_output(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The probability-flow ODE's velocity (N, C, H, W) from a model output (SiT's `get_drift`)."""
        if self.prediction == "velocity":
            return out
        score = self.score_from_output(out, x, t)
        drift_mean, drift_var = self.path.drift(x, t)
        return -drift_mean + drift_var * score

    def score_from_output(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """grad log p_t(x) (N, C, H, W) from a model output (SiT's `get_score`)."""
        if self.prediction == "score":
            return out
        if self.prediction == "noise":
            return self.path.score_from_noise(out, x, t)
        return self.path.score_from_velocity(out, x, t)

    def velocity(self, model: FlowModelFn, x: Tensor, t: Tensor) -> Tensor:
        """One model call -> the ODE velocity at (x (N, C, H, W), t (N,))."""
        return self.velocity_from_output(self.run_model(model, x, t), x, t)

    def velocity_and_score(self, model: FlowModelFn, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """One model call -> (velocity, score), each (N, C, H, W); SiT calls the model once for each."""
        out = self.run_model(model, x, t)
        return self.velocity_from_output(out, x, t), self.score_from_output(out, x, t)

    def diffusion(self, x: Tensor, t: Tensor, form: DiffusionForm, norm: float) -> Tensor | float:
        """The SDE sampler's diffusion coefficient w_t, (N, 1, 1, 1) or a float."""
        if form not in DIFFUSION_FORMS:
            raise InputError(f"diffusion_form must be one of {DIFFUSION_FORMS}; got {form!r}", setting="diffusion_form")
        return self.path.diffusion(x, t, form, norm)

    def __repr__(self) -> str:
        return (
            f"FlowMatching(path={self.path_name!r}, prediction={self.prediction!r}, loss_weight={self.loss_weight!r}, "
            f"train_eps={self.train_eps}, sample_eps={self.sample_eps})"
        )


def flow_from_config(config: FlowConfig) -> FlowMatching:
    """The FlowMatching of a run's recorded FlowConfig (what `diffusion_from_config` is to a diffusion)."""
    return FlowMatching(config.path, config.prediction, config.loss_weight, config.train_eps, config.sample_eps)
