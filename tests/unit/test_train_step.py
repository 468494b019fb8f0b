"""One training step and its pure pieces on a tiny model (CPU): update_ema, the EMA and lr warm-ups,
train_step's statistics, micro-batch accumulation, label dropout and gradient clipping."""

from __future__ import annotations

import pytest
import torch

from ditkit.config import DiffusionConfig, TrainConfig, get_preset
from ditkit.diffusion.gaussian import diffusion_from_config
from ditkit.model.dit import DiT
from ditkit.training.step import draw_step, ema_decay_at, lr_at, train_step, update_ema
from numerics import OPS_BACKWARD, OPS_ELEMENTWISE, approx_fp32, assert_fp32_close


def test_update_ema_math():
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in ema.parameters()]
    update_ema(ema, model, 0.9)
    for e, b, m in zip(ema.parameters(), before, model.parameters()):
        assert_fp32_close(e, 0.9 * b + 0.1 * m, ops=OPS_ELEMENTWISE)
    update_ema(ema, model, 0.0)  # decay 0 copies exactly
    assert all(torch.equal(e, m) for e, m in zip(ema.parameters(), model.parameters()))
    snapshot = [p.detach().clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    update_ema(ema, model, 1.0)  # decay 1 keeps the EMA
    assert all(torch.equal(e, s) for e, s in zip(ema.parameters(), snapshot))


def test_ema_warmup_and_lr_warmup():
    cfg = TrainConfig(out_dir="x", ema_warmup=True, warmup_steps=4)
    assert ema_decay_at(cfg, 0) == pytest.approx(0.1) and ema_decay_at(cfg, 10**7) == 0.9999
    assert ema_decay_at(cfg.replace(ema_warmup=False), 0) == 0.9999
    assert [lr_at(cfg, s) for s in range(5)] == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4, 1e-4])


def _tiny_model() -> tuple[DiT, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = DiT(get_preset("DiT-T/2", in_channels=1)).train()
    with torch.no_grad():  # leave the adaLN-Zero init, so every parameter gets a gradient
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0, fused=True)


def test_train_step_returns_finite_stats_and_updates_params():
    model, opt = _tiny_model()
    diffusion = diffusion_from_config(DiffusionConfig())
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    stats = train_step(model, diffusion, opt, x, y, generator=torch.Generator().manual_seed(0))
    assert set(stats) == {"loss", "mse", "vb", "grad_norm"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in stats.values())
    assert float(stats["loss"]) == approx_fp32(float(stats["mse"] + stats["vb"]), ops=OPS_ELEMENTWISE)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_micro_batches_accumulate_to_the_full_batch_gradient():
    """Gradients (not post-Adam parameters: Adam divides by sqrt(v) ~ 0 and magnifies rounding) are equal."""
    diffusion = diffusion_from_config(DiffusionConfig())
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    draws = draw_step(torch.Generator().manual_seed(1), 8, (1, 8, 8), diffusion.num_timesteps, label_dropout=0.5)
    results = []
    for micro in (8, 2):
        model, _ = _tiny_model()
        frozen = torch.optim.SGD(model.parameters(), lr=0.0)  # the step leaves weights and gradients as they are
        stats = train_step(model, diffusion, frozen, x, y, draws=draws, micro_batch_size=micro)
        results.append((stats, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (full, g_full), (acc, g_acc) = results
    assert_fp32_close(acc["loss"], full["loss"], ops=OPS_BACKWARD)
    assert_fp32_close(acc["grad_norm"], full["grad_norm"], ops=OPS_BACKWARD)
    assert float(full["grad_norm"]) > 0 and all(bool(g.abs().sum() > 0) for g in g_full.values())
    for name, grad in g_full.items():
        assert_fp32_close(g_acc[name], grad, ops=OPS_BACKWARD, msg=name)


def test_label_dropout_is_drawn_by_the_step_and_uses_the_null_class():
    model, opt = _tiny_model()
    draws = draw_step(torch.Generator().manual_seed(0), 1000, (1,), 1000, label_dropout=0.1)
    assert 50 < int(draws["drop"].sum()) < 150
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["y"].clone()), with_kwargs=True)
    diffusion = diffusion_from_config(DiffusionConfig())
    y = torch.arange(8) % 10
    drop = torch.tensor([True, False] * 4)
    draws = draw_step(torch.Generator().manual_seed(0), 8, (1, 8, 8), 1000)
    train_step(model, diffusion, opt, torch.randn(8, 1, 8, 8), y, draws={**draws, "drop": drop})
    assert torch.equal(seen[0], torch.where(drop, torch.full_like(y, 10), y))  # null id 10 where dropped


def test_max_grad_norm_clips():
    diffusion = diffusion_from_config(DiffusionConfig())
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    model, opt = _tiny_model()
    stats = train_step(model, diffusion, opt, x, y, generator=torch.Generator().manual_seed(0), max_grad_norm=1e-3)
    assert float(stats["grad_norm"]) > 1e-3  # reported before clipping
    total = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    assert float(total) == pytest.approx(1e-3, rel=1e-3)
