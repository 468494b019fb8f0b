"""Checkpoints: bit-exact round trips, atomic writes, corrupt-copy fallback, pruning, EMA export."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch

from ditkit.config import get_preset
from ditkit.model.dit import DiT
from ditkit.model.weights import load_dit
from ditkit.training import checkpoint
from ditkit.training.non_finite import non_finite


def _trained_triplet(seed: int = 0) -> tuple[DiT, DiT, torch.optim.Optimizer]:
    """A tiny model, a different EMA and an AdamW with state after one step."""
    torch.manual_seed(seed)
    model = DiT(get_preset("DiT-T/2"))
    ema = DiT(get_preset("DiT-T/2")).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0, fused=True)
    model(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 3])).square().mean().backward()
    opt.step()
    return model, ema, opt


def _save(run_dir, step: int, model, ema, opt, **kwargs):
    return checkpoint.save(run_dir, step=step, model=model, ema=ema, optimizer=opt, config={"note": "test"}, **kwargs)


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_save_load_round_trips_bit_exactly(tmp_path):
    model, ema, opt = _trained_triplet()
    torch.manual_seed(123), np.random.seed(5), random.seed(7)
    path = _save(tmp_path, 5, model, ema, opt, extra={"images_seen": 40})
    expected_draws = (torch.rand(3), np.random.rand(2), random.random())
    model2, ema2, opt2 = _trained_triplet(seed=1)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    state = checkpoint.load(path, model2, ema2, opt2)
    assert state["step"] == 5 and state["images_seen"] == 40 and state["config"] == {"note": "test"}
    assert _same_tensors(model.state_dict(), model2.state_dict())
    assert _same_tensors(ema.state_dict(), ema2.state_dict())
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for k in s1["state"]:
        assert _same_tensors(s1["state"][k], s2["state"][k])
    draws = (torch.rand(3), np.random.rand(2), random.random())  # RNG states restored
    assert torch.equal(draws[0], expected_draws[0]) and np.array_equal(draws[1], expected_draws[1])
    assert draws[2] == expected_draws[2]


def test_files_are_safe_formats(tmp_path):
    model, ema, opt = _trained_triplet()
    path = _save(tmp_path, 1, model, ema, opt)
    torch.load(path / checkpoint.OPTIMIZER_FILE, weights_only=True)  # no pickled code needed
    state = json.loads((path / checkpoint.STATE_FILE).read_text())
    assert state["schema"] == checkpoint.SCHEMA_VERSION and set(state["files"]) == {
        "model.safetensors",
        "ema.safetensors",
        "optimizer.pt",
    }
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_0000001"


def test_leftover_temp_folder_is_ignored_and_cleaned(tmp_path):
    model, ema, opt = _trained_triplet()
    _save(tmp_path, 1, model, ema, opt)
    partial = tmp_path / "checkpoints" / ".tmp-deadbeef-step_0000002"  # a crash mid-write
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half a file")
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [1]
    assert checkpoint.load_latest(tmp_path, *_trained_triplet(1))["step"] == 1
    _save(tmp_path, 2, model, ema, opt)
    assert not partial.exists()


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    model, ema, opt = _trained_triplet()
    _save(tmp_path, 1, model, ema, opt)
    newest = _save(tmp_path, 2, model, ema, opt)
    weights = newest / checkpoint.EMA_FILE
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    target = _trained_triplet(1)
    with caplog.at_level("WARNING"):
        state = checkpoint.load_latest(tmp_path, *target)
    assert state["step"] == 1 and "skipping checkpoint step_0000002" in caplog.text
    assert _same_tensors(target[0].state_dict(), model.state_dict())
    assert checkpoint.newest_readable(tmp_path).name == "step_0000001"


def test_garbage_state_file_is_corrupt_and_nothing_readable_raises(tmp_path):
    model, ema, opt = _trained_triplet()
    path = _save(tmp_path, 1, model, ema, opt)
    (path / checkpoint.STATE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="no readable checkpoint in"):
        checkpoint.load_latest(tmp_path, *_trained_triplet(1))
    assert checkpoint.load_latest(tmp_path / "elsewhere", *_trained_triplet(1)) is None


def test_wrong_model_is_an_error_not_a_fallback(tmp_path):
    model, ema, opt = _trained_triplet()
    _save(tmp_path, 1, model, ema, opt)
    other = DiT(get_preset("DiT-T/4"))
    with pytest.raises(ValueError, match="does not fit this DiT"):
        checkpoint.load_latest(tmp_path, other)


def test_prune_keeps_last_k_and_milestones(tmp_path):
    model, ema, opt = _trained_triplet()
    for step in range(1, 8):
        _save(tmp_path, step, model, ema, opt, keep_last=2, milestone_every=3)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [3, 6, 7]


def test_resave_same_step_replaces_it(tmp_path):
    model, ema, opt = _trained_triplet()
    _save(tmp_path, 4, model, ema, opt)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    path = _save(tmp_path, 4, model, ema, opt)
    restored = DiT(get_preset("DiT-T/2"))
    checkpoint.load(path, restored)
    assert _same_tensors(restored.state_dict(), model.state_dict())
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")] == []


def test_export_ema_is_readable_by_load_dit(tmp_path):
    model, ema, opt = _trained_triplet()
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.5)
    _save(tmp_path / "run", 3, model, ema, opt)
    out = checkpoint.export_ema(tmp_path / "run", tmp_path / "export" / "dit.safetensors")
    loaded = load_dit(out)
    assert loaded.config == ema.config and _same_tensors(loaded.state_dict(), ema.state_dict())
    assert _same_tensors(load_dit(tmp_path / "run").state_dict(), ema.state_dict())  # run folders load too
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_0000003")
    with pytest.raises(ValueError, match="has no readable checkpoint"):
        checkpoint.export_ema(tmp_path / "run", tmp_path / "x.safetensors")


def test_a_failed_write_keeps_the_checkpoint_the_run_resumed_from(tmp_path, monkeypatch):
    """Pruning before a write never removes the newest earlier checkpoint, even when a newer broken one
    exists (the run resumed from step 2 because step 4 is corrupt, and now re-saves step 4 on a full disk)."""
    model, ema, opt = _trained_triplet()
    for step in (2, 4):
        _save(tmp_path, step, model, ema, opt)
    (tmp_path / "checkpoints" / "step_0000004" / checkpoint.STATE_FILE).write_text("")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError):
        _save(tmp_path, 4, model, ema, opt)
    assert checkpoint.newest_readable(tmp_path).name == "step_0000002"
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


def test_non_finite_state_is_found_and_such_a_checkpoint_is_skipped(tmp_path):
    model, ema, opt = _trained_triplet()
    assert non_finite(model, ema, opt) == ""
    _save(tmp_path, 1, model, ema, opt)
    next(iter(opt.state.values()))["exp_avg_sq"].view(-1)[0] = float("nan")
    with torch.no_grad():
        next(ema.parameters()).view(-1)[0] = float("inf")
    assert non_finite(model, ema, opt) == "the EMA weights, the optimizer state"
    _save(tmp_path, 2, model, ema, opt)  # as an older ditkit could have written it
    assert checkpoint.load_latest(tmp_path, *_trained_triplet(1))["step"] == 1
