"""Gaussian diffusion as DiT trains it: ADM's process with eps prediction and learned-range variance.

Follows Ho et al. 2020 (https://arxiv.org/abs/2006.11239) and Nichol & Dhariwal 2021
(https://arxiv.org/abs/2102.09672): linear betas 1e-4..0.02 over 1000 steps, variance
interpolated between beta_t and the clipped posterior variance, loss = MSE(eps) + VLB, and
timestep respacing. Schedules are computed once in float64; coefficients are gathered in float64
and cast to float32 before they touch a tensor, exactly as the official code does. The model is a
callable `model(x_t, t, **model_kwargs)` that receives the ORIGINAL 1000-step timestep.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ditkit.config import NUM_DIFFUSION_STEPS, DiffusionConfig
from ditkit.runtime.errors import InputError

ModelFn = Callable[..., Tensor]


# Schedules and respacing (pure functions).


def linear_beta_schedule(num_steps: int = NUM_DIFFUSION_STEPS) -> Tensor:
    """Ho et al.'s linear betas 1e-4..0.02, rescaled so any length covers the same noise range (float64)."""
    scale = NUM_DIFFUSION_STEPS / num_steps
    # numpy's linspace (start + i * step), as ADM computes it: torch.linspace rounds ~1e-16 differently.
    return torch.from_numpy(np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64))


def cosine_beta_schedule(num_steps: int, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal's cosine schedule: alpha_bar(t) = cos^2((t + 0.008) / 1.008 * pi / 2)."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float64)


def space_timesteps(num_steps: int, spec: str) -> list[int]:
    """Steps kept by a respacing spec, sorted: "" (all), "250", "ddim50", or sections "10,15,20".

    Sections split the chain into equal parts and take evenly strided steps (fractional stride,
    Python rounding) in each; "ddimN" takes range(0, num_steps, k) for the k giving exactly N steps.
    """
    spec = str(spec).strip()
    if spec == "":
        return list(range(num_steps))
    if spec.startswith("ddim"):
        desired = _parse_count(spec[4:], spec)
        for stride in range(1, num_steps):
            if len(range(0, num_steps, stride)) == desired:
                return list(range(0, num_steps, stride))
        raise InputError(
            f"cannot take exactly {desired} evenly strided steps of {num_steps} ({spec!r}); try another N",
            setting="timestep_respacing",
        )
    counts = [_parse_count(part, spec) for part in spec.split(",")]
    size_per, extra = divmod(num_steps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise InputError(
                f"cannot take {count} steps from a section of {size} in respacing {spec!r}",
                setting="timestep_respacing",
            )
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        # Accumulate the fractional index by repeated addition, as ADM does: j * stride rounds differently
        # at float ties (e.g. "21": 10 * 49.95 = 499.5 -> 500, the running sum 499.4999... -> 499).
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


def _parse_count(text: str, spec: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InputError(
            f"bad timestep respacing {spec!r}: use '' (all steps), a count like '250', 'ddim50', "
            "or section counts like '10,15,20'",
            setting="timestep_respacing",
        ) from None
    if value < 1:
        raise InputError(f"respacing counts must be >= 1; got {spec!r}", setting="timestep_respacing")
    return value


def respace_betas(alphas_cumprod: Tensor, kept: list[int]) -> Tensor:
    """Betas of the chain that visits only `kept` steps: 1 - abar_i / abar_prev_kept (float64)."""
    kept_abar = alphas_cumprod[kept]
    prev = torch.cat([torch.ones(1, dtype=torch.float64), kept_abar[:-1]])
    return 1 - kept_abar / prev


# Distribution helpers.


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """A fast tanh approximation of the standard normal CDF (as in ADM)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Log-likelihood of data in [-1, 1] quantised to 256 bins under N(means, e^(2 log_scales))."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch: (N, ...) -> (N,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))


# The process.


class GaussianDiffusion:
    """A (possibly respaced) Gaussian diffusion holding its float64 schedule tables.

    Indices t passed to the methods run over this chain (0..num_timesteps-1); the model is called with
    `timestep_map[t]`, the step of the original training chain.
    """

    def __init__(
        self,
        betas: Tensor,
        *,
        timestep_map: list[int] | None = None,
        learn_sigma: bool = True,
        predict_xstart: bool = False,
    ):
        betas = betas.to(torch.float64)
        if betas.ndim != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise InputError("betas must be a 1-D tensor with values in (0, 1]", setting="betas")
        self.learn_sigma = learn_sigma
        self.predict_xstart = predict_xstart
        self.num_timesteps = len(betas)
        self.timestep_map = torch.tensor(timestep_map if timestep_map is not None else range(len(betas)))
        self.betas = betas
        self._device_tables: dict[tuple[int, torch.device], tuple[Tensor, Tensor]] = {}
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.alphas_cumprod_next = torch.cat([self.alphas_cumprod[1:], torch.zeros(1, dtype=torch.float64)])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1).sqrt()
        # Posterior q(x_{t-1} | x_t, x_0) (Eq. 6-7 of Ho et al.).
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The variance is 0 at t = 0, so the log is clipped to the t = 1 value there.
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        )
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)
        # Fixed "large" variance for models without learned sigma: beta_t, with the posterior at t = 0.
        self.fixed_large_variance = torch.cat([self.posterior_variance[1:2], betas[1:]])
        self.log_fixed_large_variance = torch.log(self.fixed_large_variance)
        self.log_betas = torch.log(self.betas)
        self.one_minus_alphas_cumprod = 1.0 - self.alphas_cumprod
        self.log_one_minus_alphas_cumprod = torch.log(self.one_minus_alphas_cumprod)

    # Tables and the model call.

    def _extract(self, table: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """table[t] as float32, shaped (N, 1, ..., 1) to broadcast over `like`.

        Casting the float64 table to float32 before gathering gives the same values as the official
        gather-then-cast; the float32 copy is kept per device, so GPU (and MPS, which has no float64)
        steps do no host-to-device copy of the tables.
        """
        key = (id(table), like.device)
        cached = self._device_tables.get(key)
        if cached is None or cached[0] is not table:
            cached = (table, table.float().to(like.device))
            self._device_tables[key] = cached
        return cached[1][t.to(like.device)].reshape(-1, *([1] * (like.ndim - 1)))

    def run_model(self, model: ModelFn, x_t: Tensor, t: Tensor, model_kwargs: dict[str, Any] | None = None) -> Tensor:
        """Call the model at the original-chain timestep of respaced index t."""
        return model(x_t, self.timestep_map.to(t.device)[t], **(model_kwargs or {}))

    # Forward process.

    def q_sample(
        self, x_start: Tensor, t: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw x_t ~ q(x_t | x_0) = N(sqrt(abar) x_0, (1 - abar) I)."""
        if noise is None:
            noise = torch.randn(x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype)
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )

    def q_mean_variance(self, x_start: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mean = self._extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
        variance = self._extract(self.one_minus_alphas_cumprod, t, x_start)
        log_variance = self._extract(self.log_one_minus_alphas_cumprod, t, x_start)
        return mean, variance, log_variance

    def q_posterior_mean_variance(self, x_start: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = (
            self._extract(self.posterior_mean_coef1, t, x_t) * x_start
            + self._extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        return (
            mean,
            self._extract(self.posterior_variance, t, x_t),
            self._extract(self.posterior_log_variance_clipped, t, x_t),
        )

    # Reverse process.

    def predict_xstart_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return (
            self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def predict_eps_from_xstart(self, x_t: Tensor, t: Tensor, pred_xstart: Tensor) -> Tensor:
        return (self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - pred_xstart) / self._extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def p_mean_variance_from_output(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool = False
    ) -> dict[str, Tensor]:
        """Mean, variance, log-variance and x_0 prediction of p(x_{t-1} | x_t) from a model output."""
        channels = x_t.shape[1]
        if self.learn_sigma:
            if model_output.shape[1] != 2 * channels:
                raise InputError(
                    f"a learned-sigma diffusion needs {2 * channels} output channels; "
                    f"got {model_output.shape[1]} (set learn_sigma to match the model)",
                    setting="learn_sigma",
                )
            model_output, var_values = model_output[:, :channels], model_output[:, channels:]
            min_log = self._extract(self.posterior_log_variance_clipped, t, x_t)
            max_log = self._extract(self.log_betas, t, x_t)
            frac = (var_values + 1) / 2  # the model's v in [-1, 1] -> [0, 1]
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            model_output = model_output[:, :channels]
            variance = self._extract(self.fixed_large_variance, t, x_t)
            log_variance = self._extract(self.log_fixed_large_variance, t, x_t)
        if self.predict_xstart:
            pred_xstart = model_output
        else:
            pred_xstart = self.predict_xstart_from_eps(x_t, t, model_output)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart}

    def p_mean_variance(
        self,
        model: ModelFn,
        x_t: Tensor,
        t: Tensor,
        model_kwargs: dict[str, Any] | None = None,
        clip_denoised: bool = False,
    ) -> dict[str, Tensor]:
        return self.p_mean_variance_from_output(self.run_model(model, x_t, t, model_kwargs), x_t, t, clip_denoised)

    # Training.

    def vb_terms_bpd(self, out: dict[str, Tensor], x_start: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Per-sample VLB term in bits/dim: KL to the posterior, or the decoder NLL at t = 0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        decoder_nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, decoder_nll, kl)

    def training_losses(
        self,
        model: ModelFn,
        x_start: Tensor,
        t: Tensor,
        model_kwargs: dict[str, Any] | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Per-sample losses (N,): "loss" = "mse" (+ "vb" with learned sigma, mean prediction detached)."""
        if noise is None:
            noise = torch.randn(x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype)
        x_t = self.q_sample(x_start, t, noise=noise)
        model_output = self.run_model(model, x_t, t, model_kwargs)
        channels = x_start.shape[1]
        target = x_start if self.predict_xstart else noise
        terms = {"mse": mean_flat((target - model_output[:, :channels]) ** 2)}
        if self.learn_sigma:
            # The VLB trains only the variance: gradients through the mean come from the MSE alone.
            frozen = torch.cat([model_output[:, :channels].detach(), model_output[:, channels:]], dim=1)
            out = self.p_mean_variance_from_output(frozen, x_t, t, clip_denoised=False)
            terms["vb"] = self.vb_terms_bpd(out, x_start, x_t, t)
            terms["loss"] = terms["mse"] + terms["vb"]
        else:
            terms["vb"] = torch.zeros_like(terms["mse"])
            terms["loss"] = terms["mse"]
        return terms


def create_diffusion(
    timestep_respacing: str | int = "",
    *,
    noise_schedule: Literal["linear", "cosine"] = "linear",
    learn_sigma: bool = True,
    predict_xstart: bool = False,
    diffusion_steps: int = NUM_DIFFUSION_STEPS,
) -> GaussianDiffusion:
    """The diffusion DiT trains and samples with; timestep_respacing "" keeps all steps ("250", "ddim50")."""
    config = DiffusionConfig(
        num_train_steps=diffusion_steps,
        noise_schedule=noise_schedule,
        learn_sigma=learn_sigma,
        predict_xstart=predict_xstart,
    )
    return diffusion_from_config(config, str(timestep_respacing))


def diffusion_from_config(config: DiffusionConfig, timestep_respacing: str = "") -> GaussianDiffusion:
    """The process of `config`, respaced by an ADM spec ("" keeps every step; "250", "ddim50", "10,15,20")."""
    if config.noise_schedule == "linear":
        betas = linear_beta_schedule(config.num_train_steps)
    else:
        betas = cosine_beta_schedule(config.num_train_steps)
    kept = space_timesteps(config.num_train_steps, timestep_respacing)
    # Always through the respacing, even when every step is kept: ADM's SpacedDiffusion recomputes
    # betas = 1 - abar_t / abar_{t-1}, which differs from the linspace by ~1e-13 (relative).
    betas = respace_betas(torch.cumprod(1.0 - betas, dim=0), kept)
    return GaussianDiffusion(
        betas, timestep_map=kept, learn_sigma=config.learn_sigma, predict_xstart=config.predict_xstart
    )
