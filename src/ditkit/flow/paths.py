"""Interpolant paths x_t = alpha_t x_1 + sigma_t x_0 of SiT (Ma et al. 2024, https://arxiv.org/abs/2401.08740).

Conventions follow the official code (github.com/willisma/SiT, transport/path.py): t runs from 0 (pure noise
x_0 ~ N(0, I)) to 1 (data x_1); the model's velocity is d x_t / dt = alpha'_t x_1 + sigma'_t x_0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ditkit.config.constants import FLOW_PATHS as PATHS  # the string choices' one home
from ditkit.config.constants import SDE_DIFFUSION_FORMS as DIFFUSION_FORMS
from ditkit.config.constants import FlowPath as PathName
from ditkit.config.constants import SdeDiffusionForm as DiffusionForm
from ditkit.runtime.errors import InputError

__all__ = ["DIFFUSION_FORMS", "PATHS", "DiffusionForm", "PathName", "make_path"]


def expand_t(t: Tensor, x: Tensor) -> Tensor:
    """(N,) times -> (N, 1, ..., 1), broadcastable against x (N, C, H, W); already-expanded t passes through."""
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))


class InterpolantPath:
    """x_t = alpha_t x_1 + sigma_t x_0 and the SDE whose marginals it follows.

    Subclasses give alpha_t, sigma_t (with derivatives) and alpha'_t / alpha_t; every t below is either (N,)
    or already broadcast to (N, 1, 1, 1), and every x is (N, C, H, W).
    """

    name: PathName

    def alpha(self, t: Tensor) -> tuple[Tensor | float, Tensor | float]:
        """(alpha_t, d alpha_t / dt), the data coefficient."""
        raise NotImplementedError

    def sigma(self, t: Tensor) -> tuple[Tensor | float, Tensor | float]:
        """(sigma_t, d sigma_t / dt), the noise coefficient."""
        raise NotImplementedError

    def d_alpha_ratio(self, t: Tensor) -> Tensor | float:
        """alpha'_t / alpha_t in a form that stays finite where alpha_t is tiny."""
        raise NotImplementedError

    # SiT writes the SDE through (drift_mean, drift_var) = (-f_t x, g_t^2 / 2) with f_t = alpha'_t / alpha_t.

    def drift(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(drift_mean (N, C, H, W), drift_var (N, 1, 1, 1)): the probability-flow velocity is
        -drift_mean + drift_var * score (SiT's `compute_drift`, which returns (-f x, g^2 / 2))."""
        t = expand_t(t, x)
        ratio = self.d_alpha_ratio(t)
        sigma_t, d_sigma_t = self.sigma(t)
        # d/dt log p_t matching: velocity = ratio x + (ratio sigma^2 - sigma sigma') score (SiT Eq. 9).
        return -ratio * x, torch.as_tensor(ratio * sigma_t**2 - sigma_t * d_sigma_t)

    def diffusion(self, x: Tensor, t: Tensor, form: DiffusionForm, norm: float) -> Tensor | float:
        """w_t, the SDE sampler's diffusion coefficient (noise term sqrt(2 w_t) dW), (N, 1, 1, 1) or a float."""
        t = expand_t(t, x)
        if form == "constant":
            return norm
        if form == "SBDM":  # matches the score-based diffusion model's own SDE
            return norm * self.drift(x, t)[1]
        if form == "sigma":
            return norm * self.sigma(t)[0]
        if form == "linear":
            return norm * (1 - t)
        if form == "decreasing":  # SiT applies norm inside the square, as written here
            return 0.25 * (norm * torch.cos(math.pi * t) + 1) ** 2
        if form == "increasing-decreasing":
            return norm * torch.sin(math.pi * t) ** 2
        raise InputError(f"diffusion_form must be one of {DIFFUSION_FORMS}; got {form!r}", setting="diffusion_form")

    def x_t(self, t: Tensor, x0: Tensor, x1: Tensor) -> Tensor:
        """alpha_t x1 + sigma_t x0 (N, C, H, W), x0 the noise and x1 the data."""
        t = expand_t(t, x1)
        return self.alpha(t)[0] * x1 + self.sigma(t)[0] * x0

    def u_t(self, t: Tensor, x0: Tensor, x1: Tensor) -> Tensor:
        """The conditional velocity alpha'_t x1 + sigma'_t x0 (N, C, H, W), the regression target."""
        t = expand_t(t, x1)
        return self.alpha(t)[1] * x1 + self.sigma(t)[1] * x0

    # Conversions between parametrisations, as SiT writes them (path.py `get_*_from_*`).

    def score_from_velocity(self, velocity: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """grad log p_t(x) = (alpha/alpha' v - x) / (sigma^2 - alpha/alpha' sigma' sigma), (N, C, H, W)."""
        t = expand_t(t, x)
        alpha_t, d_alpha_t = self.alpha(t)
        sigma_t, d_sigma_t = self.sigma(t)
        reverse_ratio = alpha_t / d_alpha_t
        var = sigma_t**2 - reverse_ratio * d_sigma_t * sigma_t
        return (reverse_ratio * velocity - x) / var

    def noise_from_velocity(self, velocity: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The noise x_0 implied by a velocity: (alpha/alpha' v - x) / (alpha/alpha' sigma' - sigma)."""
        t = expand_t(t, x)
        alpha_t, d_alpha_t = self.alpha(t)
        sigma_t, d_sigma_t = self.sigma(t)
        reverse_ratio = alpha_t / d_alpha_t
        return (reverse_ratio * velocity - x) / (reverse_ratio * d_sigma_t - sigma_t)

    def velocity_from_score(self, score: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """v = drift_var * score - drift_mean (N, C, H, W), the probability-flow velocity of a score."""
        drift_mean, drift_var = self.drift(x, expand_t(t, x))
        return drift_var * score - drift_mean

    def score_from_noise(self, noise: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """grad log p_t = -x_0 / sigma_t, (N, C, H, W)."""
        return noise / -self.sigma(expand_t(t, x))[0]


class LinearPath(InterpolantPath):
    """alpha_t = t, sigma_t = 1 - t (SiT's ICPlan, rectified flow / stochastic interpolants)."""

    name: PathName = "linear"

    def alpha(self, t: Tensor) -> tuple[Tensor | float, Tensor | float]:
        return t, 1.0

    def sigma(self, t: Tensor) -> tuple[Tensor | float, Tensor | float]:
        return 1 - t, -1.0

    def d_alpha_ratio(self, t: Tensor) -> Tensor | float:
        return 1 / t


class GVPPath(InterpolantPath):
    """alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2): alpha^2 + sigma^2 = 1 (SiT's GVPCPlan)."""

    name: PathName = "gvp"

    def alpha(self, t: Tensor) -> tuple[Tensor | float, Tensor | float]:
        return torch.sin(t * math.pi / 2), math.pi / 2 * torch.cos(t * math.pi / 2)

    def sigma(self, t: Tensor) -> tuple[Tensor | float, Tensor | float]:
        return torch.cos(t * math.pi / 2), -math.pi / 2 * torch.sin(t * math.pi / 2)

    def d_alpha_ratio(self, t: Tensor) -> Tensor | float:
        return math.pi / (2 * torch.tan(t * math.pi / 2))


class VPPath(InterpolantPath):
    """The VP SDE's marginals with a linear beta from sigma_max (t = 0) to sigma_min (t = 1) (SiT's VPCPlan).

    log alpha_t = -(1 - t)^2 (beta_max - beta_min) / 4 - (1 - t) beta_min / 2, sigma_t = sqrt(1 - alpha_t^2).
    """

    name: PathName = "vp"

    def __init__(self, sigma_min: float = 0.1, sigma_max: float = 20.0):
        self.sigma_min = sigma_min  # beta at t = 1 (data end), SiT's default
        self.sigma_max = sigma_max  # beta at t = 0 (noise end)

    def log_mean_coeff(self, t: Tensor) -> Tensor:
        """log alpha_t."""
        return -0.25 * ((1 - t) ** 2) * (self.sigma_max - self.sigma_min) - 0.5 * (1 - t) * self.sigma_min

    def d_log_mean_coeff(self, t: Tensor) -> Tensor:
        """d log alpha_t / dt = beta_t / 2."""
        return 0.5 * (1 - t) * (self.sigma_max - self.sigma_min) + 0.5 * self.sigma_min

    def alpha(self, t: Tensor) -> tuple[Tensor | float, Tensor | float]:
        alpha_t = torch.exp(self.log_mean_coeff(t))
        return alpha_t, alpha_t * self.d_log_mean_coeff(t)

    def sigma(self, t: Tensor) -> tuple[Tensor | float, Tensor | float]:
        alpha_sq = torch.exp(2 * self.log_mean_coeff(t))
        sigma_t = torch.sqrt(1 - alpha_sq)
        return sigma_t, alpha_sq * (2 * self.d_log_mean_coeff(t)) / (-2 * sigma_t)

    def d_alpha_ratio(self, t: Tensor) -> Tensor | float:
        return self.d_log_mean_coeff(t)

    def drift(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        # Closed form of the VP SDE: f_t = -beta_t / 2, g_t^2 = beta_t.
        t = expand_t(t, x)
        beta_t = self.sigma_min + (1 - t) * (self.sigma_max - self.sigma_min)
        return -0.5 * beta_t * x, beta_t / 2


def make_path(name: PathName, *, sigma_min: float = 0.1, sigma_max: float = 20.0) -> InterpolantPath:
    """The path of a name; sigma_min / sigma_max only shape the VP path."""
    if name == "linear":
        return LinearPath()
    if name == "gvp":
        return GVPPath()
    if name == "vp":
        return VPPath(sigma_min, sigma_max)
    raise InputError(f"path must be one of {PATHS}; got {name!r}", setting="path")
