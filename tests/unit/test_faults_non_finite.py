"""Fault suite, non-finite numbers: a loss, a gradient norm or an optimizer state that turns inf or NaN stops
the run with exit code 3 before any checkpoint holds it; a rerun with safer settings resumes from the last
finite checkpoint. Trainings run in this process (`invoke`) on the fault suites' tiny run (tests/fault_harness.py).
"""

from __future__ import annotations

import json

import pytest
import torch

from ditkit.runtime import stopping
from ditkit.training import checkpoint, run
from ditkit.training import loop as train_mod
from ditkit.training.step import build_model_and_optimizer
from fault_harness import FAULT_STEPS as STEPS
from fault_harness import fault_argv as argv
from fault_harness import metrics_lines
from smoke.test_cli import invoke

pytestmark = pytest.mark.xdist_group("faults")


def _triplet() -> tuple:
    from ditkit.training.run import build_train_config

    cfg = build_train_config("unused", data="digits", preset="DiT-T/2", image_size=8, vae="none")
    return build_model_and_optimizer(cfg, torch.device("cpu"))


def test_non_finite_run_exits_3_and_keeps_only_finite_checkpoints(tmp_path):
    out = tmp_path / "run"
    proc = invoke(*argv(out, STEPS, "--lr", "1e30", "--ckpt-every", "1"), check=False)
    assert proc.returncode == stopping.EXIT_NON_FINITE == 3
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ditkit train: loss is nan at step 2; training stopped (the last good checkpoint step_00")
    assert "--lr" in last and "--max-grad-norm" in last
    assert [s for s, _ in checkpoint.list_checkpoints(out)] == [1]
    model, ema, opt = _triplet()
    assert checkpoint.load(out / "checkpoints" / "step_0000001", model, ema, opt)["step"] == 1  # finite: it loads
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_diverged_run_resumes_with_a_lower_lr_and_clipping(tmp_path, monkeypatch):
    """A run whose lr is too high (here: NaN from step 3 while lr > 1e-3) stops with exit code 3; rerun with a
    lower --lr and a --max-grad-norm, it resumes from the kept checkpoint and finishes."""
    real = train_mod.train_step

    def diverging(model, diffusion, optimizer, *args, **kwargs):
        stats = real(model, diffusion, optimizer, *args, **kwargs)
        if optimizer.param_groups[0]["lr"] > 1e-3 and int(next(iter(optimizer.state.values()))["step"]) >= 3:
            stats["loss"] = torch.tensor(float("nan"))
        return stats

    monkeypatch.setattr(train_mod, "train_step", diverging)
    out = tmp_path / "run"
    diverged = invoke(*argv(out, STEPS, "--lr", "1e-2"), check=False)
    assert diverged.returncode == 3 and "loss is nan at step 3" in diverged.stderr
    assert [s for s, _ in checkpoint.list_checkpoints(out)] == [2]
    done = invoke(*argv(out, STEPS, "--lr", "1e-4", "--max-grad-norm", "1"))  # may change on resume
    assert "resumed from step 2" in done.stderr
    assert [m["step"] for m in metrics_lines(out)] == list(range(1, STEPS + 1))
    stored = json.loads((out / run.CONFIG_FILE).read_text())
    assert (stored["lr"], stored["max_grad_norm"]) == (1e-4, 1.0)


@pytest.mark.parametrize("poison", ["grad_norm", "optimizer_state"])
def test_inf_gradients_or_optimizer_state_stop_before_any_checkpoint_holds_them(tmp_path, poison):
    """A finite loss with an inf gradient norm, or an AdamW moment that overflowed: caught at step 3, so
    the kept checkpoint is step 2 and no later one; the rerun resumes from it."""
    real = train_mod.train_step

    def poisoned(model, diffusion, optimizer, *args, **kwargs):
        stats = real(model, diffusion, optimizer, *args, **kwargs)
        if int(next(iter(optimizer.state.values()))["step"]) == 3:
            if poison == "grad_norm":
                stats["grad_norm"] = torch.tensor(float("inf"))
            else:
                next(iter(optimizer.state.values()))["exp_avg_sq"].fill_(float("inf"))
        return stats

    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod, "train_step", poisoned)
        proc = invoke(*argv(out), check=False)
    assert proc.returncode == 3
    expected = (
        "gradient norm is inf at step 3" if poison == "grad_norm" else "inf or NaN in the optimizer state after step 3"
    )
    assert expected in proc.stderr
    assert [s for s, _ in checkpoint.list_checkpoints(out)] == [2]
    assert "resumed from step 2" in invoke(*argv(out)).stderr
    assert [m["step"] for m in metrics_lines(out)] == list(range(1, STEPS + 1))
