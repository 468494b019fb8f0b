"""Throughput benchmarks of a training step and of sampling, reported beside a same-run matmul probe.

This machine class is shared and drifts by up to 1.5x within an hour, so every figure comes with the
GFLOP/s of a 2048^2 fp32 matmul timed between repetitions, and the model's achieved GFLOP/s as a
fraction of it (3 x forward multiply-adds x 2 per image for training, 1 x for sampling).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from ditkit.config import VAE_DOWNSAMPLE, ModelConfig, get_preset
from ditkit.diffusion import create_diffusion
from ditkit.flops import model_cost
from ditkit.model import DiT
from ditkit.train import update_ema


def matmul_probe(size: int = 2048, reps: int = 3) -> float:
    """Median GFLOP/s of a size^2 fp32 matmul (2 FLOPs per multiply-add)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * size**3 / statistics.median(times) / 1e9


def bench_train_step(
    config: ModelConfig, batch_size: int, steps: int = 5, warmup: int = 1, device: str = "cpu"
) -> dict[str, Any]:
    """Time fwd + loss + bwd + fused AdamW + EMA of `config` at `batch_size` (random latents)."""
    torch.manual_seed(0)
    model = DiT(config).to(device).train()
    ema = DiT(config).to(device).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    diffusion = create_diffusion("", learn_sigma=config.learn_sigma)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0, fused=device == "cpu" or None)
    x = torch.randn(batch_size, config.in_channels, config.input_size, config.input_size, device=device)
    y = torch.randint(0, max(config.num_classes, 1), (batch_size,), device=device)
    kwargs = {"y": y} if config.num_classes > 0 else {}
    step_times, probes = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        t = torch.randint(0, diffusion.num_timesteps, (batch_size,), device=device)
        loss = diffusion.training_losses(model, x, t, kwargs)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        update_ema(ema, model, 0.9999)
        loss.item()
        if i >= warmup:
            step_times.append(time.perf_counter() - t0)
            probes.append(matmul_probe())
    return _report(config, batch_size, step_times, probes, passes=3)


def bench_sampling_step(
    config: ModelConfig, batch_size: int, steps: int = 5, warmup: int = 1, device: str = "cpu"
) -> dict[str, Any]:
    """Time one no-grad network evaluation at `batch_size` rows (a sampling step; CFG doubles rows)."""
    model = DiT(config).to(device).eval()
    x = torch.randn(batch_size, config.in_channels, config.input_size, config.input_size, device=device)
    t = torch.randint(0, 1000, (batch_size,), device=device)
    y = torch.randint(0, max(config.num_classes, 1), (batch_size,), device=device) if config.num_classes else None
    step_times, probes = [], []
    with torch.no_grad():
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            model(x, t, y).sum().item()
            if i >= warmup:
                step_times.append(time.perf_counter() - t0)
                probes.append(matmul_probe())
    return _report(config, batch_size, step_times, probes, passes=1)


def _report(
    config: ModelConfig, batch_size: int, step_times: list[float], probes: list[float], passes: int
) -> dict[str, Any]:
    step = statistics.median(step_times)
    gflops = model_cost(config).gflops
    achieved = passes * 2 * gflops * batch_size / step  # FLOPs = 2 x multiply-adds
    probe = statistics.median(probes)
    return {
        "s_per_step": step,
        "img_per_s": batch_size / step,
        "achieved_gflop_s": achieved,
        "probe_gflop_s": probe,
        "fraction_of_probe": achieved / probe,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "steps": len(step_times),
    }


def run_bench(
    what: str, *, preset: str, image_size: int, vae_latents: bool, channels: int | None, batch_size: int, steps: int
) -> dict[str, Any]:
    """`ditkit bench train|sample`: one model's step time beside the matmul probe, as a dict."""
    size = image_size // VAE_DOWNSAMPLE if vae_latents else image_size
    overrides: dict[str, Any] = {"input_size": size}
    if channels:
        overrides["in_channels"] = channels
    config = get_preset(preset, **overrides)
    fn = bench_train_step if what == "train" else bench_sampling_step
    result = fn(config, batch_size, steps=steps)
    result.update(preset=preset, what=what, input_size=size)
    return result
