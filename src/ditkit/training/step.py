"""One training step and its pieces, usable without `train()`: the step's random draws, the step itself
(MSE + VLB, micro-batches, clipping, AdamW), the EMA and LR schedules, and building the model + optimizer.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from ditkit.config import DiffusionConfig, TrainConfig
from ditkit.diffusion.gaussian import GaussianDiffusion, diffusion_from_config
from ditkit.flow.objective import FlowMatching, flow_from_config
from ditkit.model.dit import DiT

Process = GaussianDiffusion | FlowMatching  # what a run trains with: ADM's diffusion or SiT's flow matching


def build_process(config: DiffusionConfig) -> Process:
    """The training process of a run's recorded config: its objective's."""
    if config.is_flow:
        assert config.flow is not None  # DiffusionConfig fills it for objective "flow"
        return flow_from_config(config.flow)
    return diffusion_from_config(config)


def process_times(process: Process) -> int | tuple[float, float]:
    """What `draw_step` draws t from: a diffusion's chain length, or a flow's training interval (t0, t1)."""
    return process.check_interval() if isinstance(process, FlowMatching) else process.num_timesteps


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and torch.compile wrappers (what checkpoints and the EMA see)."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model over the parameters (one foreach kernel); decay 0 copies."""
    ema_params = list(ema.parameters())
    model_params = list(unwrap(model).parameters())
    if decay == 0.0:
        torch._foreach_copy_(ema_params, model_params)
    else:
        torch._foreach_lerp_(ema_params, model_params, 1.0 - decay)


def ema_decay_at(cfg: TrainConfig, step: int) -> float:
    """EMA decay for the update after optimizer step `step` (0-based); warm-up caps it: (1 + s) / (10 + s)."""
    return min(cfg.ema_decay, (1 + step) / (10 + step)) if cfg.ema_warmup else cfg.ema_decay


LR_DECAY_FLOOR = 0.1  # a cosine decay ends at lr x this at max_steps


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then constant or a cosine decay
    from lr to lr x LR_DECAY_FLOOR at max_steps (so a run extended by a larger max_steps decays anew)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "none":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (LR_DECAY_FLOOR + (1 - LR_DECAY_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))


def draw_step(
    generator: torch.Generator | None,
    batch_size: int,
    shape: tuple[int, ...],
    times: int | tuple[float, float],
    *,
    label_dropout: float = 0.0,
    latent_noise: bool = False,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """All random draws of one optimizer step for `batch_size` rows, in a fixed order.

    "t" (N,) timesteps: integers in [0, times) for a diffusion chain of `times` steps, or for a flow's
    interval times = (t0, t1) floats uniform on it (`process_times`); "noise" (N, *shape), "drop" (N,) bool
    label-dropout mask when label_dropout > 0, "latent_noise" (N, *shape) VAE posterior noise when asked.
    generator None: torch's global RNG.
    """
    device = generator.device if generator is not None else torch.device(device)
    if isinstance(times, tuple):
        t0, t1 = times
        t = torch.rand((batch_size,), generator=generator, device=device) * (t1 - t0) + t0
    else:
        t = torch.randint(0, times, (batch_size,), generator=generator, device=device)
    draws = {"t": t, "noise": torch.randn((batch_size, *shape), generator=generator, device=device)}
    if label_dropout > 0:
        draws["drop"] = torch.rand((batch_size,), generator=generator, device=device) < label_dropout
    if latent_noise:
        draws["latent_noise"] = torch.randn((batch_size, *shape), generator=generator, device=device)
    return draws


def train_step(
    model: nn.Module,
    diffusion: Process,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    draws: dict[str, Tensor] | None = None,
    micro_batch_size: int | None = None,
    max_grad_norm: float | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """One optimizer step on x (N, C, H, W), labels y (N,): forward, MSE + VLB, backward, clip, AdamW.

    `diffusion` is the run's process (`build_process`): with a FlowMatching the loss is its flow-matching
    loss (reported as "mse"; "vb" is 0) and the model sees t in [0, 1].

    Randomness: `draws` from `draw_step` ("t", "noise", and "drop": labels replaced by the null class for
    classifier-free guidance), or else drawn here from `generator` with the model's class_dropout_prob.
    Micro-batches of `micro_batch_size` rows accumulate gradients (DDP syncs only on the last). Returns
    detached 0-dim tensors "loss", "mse", "vb" (batch means) and "grad_norm" (before clipping): no host
    sync, read them when logging.
    """
    n = x.shape[0]
    inner = unwrap(model)
    assert isinstance(inner, DiT), f"train_step needs a DiT (or a wrapper of one); got {type(inner).__name__}"
    config = inner.config
    if draws is None:
        dropout = config.class_dropout_prob if y is not None and config.has_null_class else 0.0
        draws = draw_step(
            generator, n, tuple(x.shape[1:]), process_times(diffusion), label_dropout=dropout, device=x.device
        )
    if y is not None and "drop" in draws:
        y = torch.where(draws["drop"], torch.full_like(y, config.null_class), y)
    micro = micro_batch_size or n
    starts = range(0, n, micro)
    autocast = torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()

    def forward(x_t: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        return model(x_t, t, **kwargs).float()  # loss math in fp32 even under autocast

    optimizer.zero_grad(set_to_none=True)
    sums = {k: torch.zeros((), device=x.device) for k in ("loss", "mse", "vb")}
    for i, start in enumerate(starts):
        rows = slice(start, start + micro)
        last = i == len(starts) - 1
        no_sync = getattr(model, "no_sync", None)
        with no_sync() if no_sync is not None and not last else nullcontext():
            kwargs = {"y": y[rows]} if y is not None else {}
            with autocast:
                terms = diffusion.training_losses(
                    forward, x[rows], draws["t"][rows], kwargs, noise=draws["noise"][rows]
                )
            (terms["loss"].mean() * (terms["loss"].shape[0] / n)).backward()
        terms.setdefault("mse", terms["loss"])  # a flow's one term
        for k in sums:
            if k in terms:
                sums[k] += terms[k].detach().sum()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if max_grad_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(params, max_grad_norm, grad_norm)
    optimizer.step()
    return {**{k: v / n for k, v in sums.items()}, "grad_norm": grad_norm.detach()}


def build_model_and_optimizer(cfg: TrainConfig, device: torch.device) -> tuple[DiT, DiT, torch.optim.Optimizer]:
    """The DiT (seeded init, identical on every rank), its EMA copy (eval, no grad) and AdamW (fused)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = DiT(cfg.model)
    model = model.to(device).train()
    model.grad_checkpointing = cfg.grad_checkpointing
    ema = copy.deepcopy(model).eval().requires_grad_(False)  # = update_ema(ema, model, 0)
    optimizer = adamw(model, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    return model, ema, optimizer


def adamw(model: nn.Module, **kwargs: Any) -> torch.optim.Optimizer:
    """AdamW over model's parameters: fused kernels, or foreach where this device / torch build has none."""
    try:
        return torch.optim.AdamW(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), foreach=True, **kwargs)
