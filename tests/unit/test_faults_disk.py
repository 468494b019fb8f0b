"""Fault suite, storage: a full disk stops the run before a checkpoint that cannot fit (old ones are pruned
first) and the rerun resumes; a damaged run folder resumes from its newest good checkpoint, or is refused with
one line and left as it was. Trainings run in this process (`invoke`) on the fault suites' tiny run
(tests/fault_harness.py); the slow set adds a real full tmpfs (as root).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ditkit.training import checkpoint, run
from fault_harness import FAULT_STEPS as STEPS
from fault_harness import assert_intact, leftovers, metrics_lines
from fault_harness import fault_argv as argv
from smoke.test_cli import invoke

pytestmark = pytest.mark.xdist_group("faults")


# A full disk.


def test_a_full_disk_leaves_the_last_checkpoint_and_the_rerun_resumes(tmp_path, fault_reference):
    out, at_fault = tmp_path / "run", []

    def disk_full(obj, path, *args, **kwargs):  # the optimizer file: after both weights files
        at_fault.append(sorted(p.name for p in Path(path).parent.iterdir()))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    invoke(*argv(out, 2))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint.torch, "save", disk_full)
        proc = invoke(*argv(out), check=False)
    assert at_fault == [[checkpoint.EMA_FILE, checkpoint.MODEL_FILE]]  # the disk filled mid-checkpoint, once
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("ditkit train: error: no space left on the device of")
    assert [s for s, _ in checkpoint.list_checkpoints(out)] == [2] and leftovers(out) == []
    asked = []
    with pytest.MonkeyPatch.context() as mp:  # the free-space check refuses before writing anything
        mp.setattr(checkpoint, "free_bytes", lambda path: asked.append(path) or 1000)
        proc = invoke(*argv(out), check=False)
    assert asked and proc.returncode == 2
    assert "no space for checkpoint step_0000004" in proc.stderr and "resume from step_0000002" in proc.stderr
    assert [s for s, _ in checkpoint.list_checkpoints(out)] == [2] and leftovers(out) == []
    invoke(*argv(out))
    assert_intact(out, fault_reference)


def test_checkpoints_are_pruned_before_the_new_one_is_written(tmp_path, monkeypatch):
    seen, real = [], checkpoint._write_files

    def write_files(tmp: Path, *args) -> None:
        seen.append([s for s, _ in checkpoint.list_checkpoints(tmp.parent.parent)])
        real(tmp, *args)

    monkeypatch.setattr(checkpoint, "_write_files", write_files)
    invoke(*argv(tmp_path / "run", 6))
    assert seen == [[], [2], [4]]  # keep_last 2: one old checkpoint beside the one being written


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_real_full_disk(tmp_path, fault_reference):
    """A 2.2 MB tmpfs holds two checkpoints of the tiny model (0.83 MB each) but not three: pruning first
    keeps the run going; with the disk filled up, the run stops with one line and resumes once there is room."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2200k", "tmpfs", str(mnt)], check=False).returncode:
        pytest.skip("mount -t tmpfs failed here")
    try:
        out = mnt / "run"
        invoke(*argv(out))
        assert_intact(out, fault_reference)
        (mnt / "ballast").write_bytes(b"\0" * (shutil.disk_usage(mnt).free - 100_000))  # now the disk is full
        proc = invoke(*argv(out, STEPS + 2), check=False)
        assert proc.returncode == 2 and "no space" in proc.stderr.strip().splitlines()[-1]
        assert checkpoint.list_checkpoints(out)[-1][0] == STEPS and leftovers(out) == []
        (mnt / "ballast").unlink()
        invoke(*argv(out, STEPS + 2))
        assert [m["step"] for m in metrics_lines(out)] == list(range(1, STEPS + 3))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# Damaged run folders: resume from the newest good checkpoint, or one line and nothing changed.


def _evil_pickle(path: Path, flag: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (open, (str(flag), "w"))

    torch.save({"state": {0: {"x": Evil()}}, "param_groups": []}, path)


def _resize(ckpt: Path) -> None:
    """Make state.json record the files' new sizes (so only their content is wrong)."""
    state = json.loads((ckpt / checkpoint.STATE_FILE).read_text())
    state["files"] = {name: (ckpt / name).stat().st_size for name in state["files"]}
    (ckpt / checkpoint.STATE_FILE).write_text(json.dumps(state))


def _poison_optimizer(ckpt: Path) -> None:
    state = torch.load(ckpt / checkpoint.OPTIMIZER_FILE, weights_only=True)
    next(iter(state["state"].values()))["exp_avg_sq"].fill_(float("inf"))
    torch.save(state, ckpt / checkpoint.OPTIMIZER_FILE)
    _resize(ckpt)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated weights": lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:99]),
    "malicious optimizer.pt": lambda c: (_evil_pickle(c / checkpoint.OPTIMIZER_FILE, c.parent / "pwned"), _resize(c)),
    "inf optimizer state": _poison_optimizer,
    "garbage state.json": lambda c: (c / checkpoint.STATE_FILE).write_text("{not json"),
    "empty checkpoint folder": lambda c: [p.unlink() for p in c.iterdir()],
    "latest points outside": lambda c: (c.parent / "latest").write_text("../../../etc\n"),
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    invoke(*argv(out, 4))
    return out


@pytest.mark.parametrize(
    "damage", [pytest.param(name, marks=[pytest.mark.slow] if i >= 3 else []) for i, name in enumerate(DAMAGE)]
)
def test_a_damaged_newest_checkpoint_is_skipped(tmp_path, finished, damage):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    DAMAGE[damage](out / "checkpoints" / "step_0000004")
    if damage == "malicious optimizer.pt":
        shutil.copy(out / "checkpoints" / "step_0000004" / checkpoint.OPTIMIZER_FILE, tmp_path / "evil.pt")
    proc = invoke(*argv(out, 6))
    resumed = 4 if damage == "latest points outside" else 2
    assert f"from step {resumed} to 6" in proc.stderr
    if resumed == 2:  # the damage was seen: the newest checkpoint was skipped for it
        assert "skipping checkpoint step_0000004" in proc.stderr
    assert [m["step"] for m in metrics_lines(out)] == list(range(1, 7))
    if damage == "malicious optimizer.pt":  # nothing ran; an unsafe load would have run it
        assert not (out / "checkpoints" / "pwned").exists()
        torch.load(tmp_path / "evil.pt", weights_only=False)
        assert (out / "checkpoints" / "pwned").exists()


REFUSE: dict[str, Callable[[Path], None]] = {
    "garbage config.json": lambda out: (out / run.CONFIG_FILE).write_text("[1, 2"),
    "every checkpoint broken": lambda out: [
        (c / checkpoint.STATE_FILE).write_text("") for _, c in checkpoint.list_checkpoints(out)
    ],
}


@pytest.mark.parametrize("damage", list(REFUSE))
def test_a_run_folder_that_cannot_resume_is_refused_and_left_as_it_was(tmp_path, finished, damage):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    REFUSE[damage](out)
    files = lambda: {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != run.LOG_FILE}  # noqa: E731
    before = files()
    proc = invoke(*argv(out, 6), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("ditkit train: error: ")
    assert files() == before  # the log may gain the warnings; nothing else changes


def test_metrics_lines_past_the_checkpoint_and_a_cut_line_are_dropped_on_resume(tmp_path, finished, fault_reference):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    with open(out / run.METRICS_FILE, "a") as f:
        f.write('{"step": 5, "loss": 1.0}\n{"step": 6, "lo')  # written by a run killed before its checkpoint
    assert "resumed from step 4" in invoke(*argv(out, 6)).stderr
    assert [m["step"] for m in metrics_lines(out)] == [1, 2, 3, 4, 5, 6] and metrics_lines(out)[4]["loss"] != 1.0
    assert [m["loss"] for m in metrics_lines(out)][:4] == fault_reference
