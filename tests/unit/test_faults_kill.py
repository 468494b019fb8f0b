"""Fault suite, kill -9: at the writes, at known points mid-step and mid-write, at random moments.

A forked child (tests/fault_harness.py) kills itself at the k-th call of a write primitive (os.replace,
os.rename, os.fsync, shutil.rmtree, the metrics append), before or after the call, or pauses at a known point
and is killed from here, or is killed from here at a random moment after it took the run folder. Every kill
must happen: a child that exits by itself fails the test. The run is then finished and must equal an
uninterrupted one: exactly one metrics line per step, in order, the same losses, no temp files, no lock left.
The slow set adds the sweep over every call and DITKIT_FAULT_TRIALS (default 25) random kills.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ditkit.training import checkpoint, loop, run
from fault_harness import FAULT_STEPS as STEPS
from fault_harness import (
    assert_intact,
    child_main,
    exited,
    fork,
    kill_paused,
    killed,
    metrics_lines,
    pause_at,
    report_figures,  # noqa: F401 (autouse)
    wait,
    wait_for,
)
from fault_harness import fault_argv as argv
from smoke.test_cli import invoke

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    pytest.mark.xdist_group("faults"),
]

OWNERS = {
    "replace": (os, "replace"),
    "rename": (os, "rename"),
    "fsync": (os, "fsync"),
    "rmtree": (shutil, "rmtree"),
    "metrics": (run, "append_metrics"),
}


def describe(target: str, args: tuple) -> list[str]:
    """The paths of a primitive's call (an fsync's fd is named by its file; metrics: the step of the line)."""
    if target == "metrics":
        return [str(args[1]["step"])]
    if target == "fsync":
        return [os.readlink(f"/proc/self/fd/{args[0]}") if os.path.exists("/proc/self/fd") else str(args[0])]
    return [str(a) for a in args if isinstance(a, (str, os.PathLike))]


def kill_at(target: str, k: int, when: str, marker: Path) -> Callable[[], None]:
    """A `prepare` hook: SIGKILL this process at the k-th call of `target`, before or after the call runs; the
    marker records the call's paths and whether each existed at the kill."""

    def prepare() -> None:
        owner, name = OWNERS[target]
        real, calls = getattr(owner, name), [0]

        def die(args: tuple) -> None:
            paths = describe(target, args)
            exist = [os.path.exists(p) for p in paths]
            marker.write_text(json.dumps({"target": target, "k": k, "when": when, "paths": paths, "exist": exist}))
            os.kill(os.getpid(), signal.SIGKILL)

        def hooked(*args, **kwargs):
            calls[0] += 1
            if calls[0] == k and when == "before":
                die(args)
            result = real(*args, **kwargs)
            if calls[0] == k and when == "after":
                die(args)
            return result

        setattr(owner, name, hooked)

    return prepare


def finish(out: Path, log: Path, steps: int = STEPS) -> None:
    assert wait(fork(child_main(argv(out, steps), log))) == 0, log.read_text()[-2000:]


# kill -9 at the writes: the child kills itself at the k-th call of a primitive.


def _config_mid_write(out: Path, m: dict) -> None:
    tmp, final = map(Path, m["paths"])
    assert final == out / run.CONFIG_FILE and tmp.name.startswith(".tmp-") and m["exist"] == [True, False]
    assert tmp.is_file() and not final.exists()


def _line_before_its_checkpoint(out: Path, m: dict) -> None:
    assert m["paths"] == ["2"] and [r["step"] for r in metrics_lines(out)] == [1, 2]
    assert checkpoint.list_checkpoints(out) == []


def _checkpoint_before_rename(out: Path, m: dict) -> None:
    tmp, final = map(Path, m["paths"])
    assert final == out / "checkpoints" / "step_0000002" and tmp.name.startswith(".tmp-")
    assert m["exist"] == [True, False] and (tmp / checkpoint.STATE_FILE).is_file()  # complete, not yet renamed
    assert checkpoint.list_checkpoints(out) == []


def _checkpoint_before_latest(out: Path, m: dict) -> None:
    assert Path(m["paths"][1]) == out / "checkpoints" / "step_0000002" and m["exist"] == [False, True]
    assert [s for s, _ in checkpoint.list_checkpoints(out)] == [2] and not (out / "checkpoints" / "latest").exists()


# (target, k, when) -> what the run folder holds after that kill (in this order, each child resuming the last)
WRITE_POINTS: list[tuple[tuple[str, int, str], Callable[[Path, dict], None] | None]] = [
    (("replace", 1, "before"), _config_mid_write),  # config.json of the new run
    (("metrics", 2, "after"), _line_before_its_checkpoint),  # step 2's line is written, its checkpoint is not
    (("rename", 1, "before"), _checkpoint_before_rename),  # a complete checkpoint folder, not yet renamed
    (("rename", 1, "after"), _checkpoint_before_latest),  # renamed, `latest` not yet written
    (("replace", 3, "after"), None),  # model.safetensors in place in the temp checkpoint folder
    (("fsync", 9, "before"), None),  # ema.safetensors written, not yet flushed
    (("rmtree", 1, "after"), None),  # the temp folder of the killed write
    (("metrics", 2, "before"), None),
]


@pytest.mark.parametrize("points", [WRITE_POINTS[:4], pytest.param(WRITE_POINTS[4:], marks=pytest.mark.slow)])
def test_kill_at_writes_then_resume_loses_and_repeats_nothing(tmp_path, fault_reference, points):
    """config.json mid-write, a metrics line before its checkpoint, a checkpoint before / after its rename,
    `latest`, a weights file before its fsync, the cleanup: each kill happens where named, each resumes."""
    out, log = tmp_path / "run", tmp_path / "log.txt"
    for i, ((target, k, when), check) in enumerate(points):
        marker = tmp_path / f"kill-{i}.json"
        killed(fork(child_main(argv(out), log, kill_at(target, k, when, marker))), log)
        facts = json.loads(marker.read_text())
        assert (facts["target"], facts["k"], facts["when"]) == (target, k, when)
        if check is not None:
            check(out, facts)
    finish(out, log)
    assert_intact(out, fault_reference)


def counting(args: list[str], log: Path, counts: Path) -> Callable[[], int]:
    """A child body: `ditkit ARGS` that counts the calls of each write primitive (into `counts`)."""
    seen = dict.fromkeys(OWNERS, 0)

    def counted(target: str, real: Callable) -> Callable:
        def hooked(*args, **kwargs):
            seen[target] += 1
            return real(*args, **kwargs)

        return hooked

    def prepare() -> None:
        for target, (owner, name) in OWNERS.items():
            setattr(owner, name, counted(target, getattr(owner, name)))

    def body() -> int:
        code = child_main(args, log, prepare)()
        counts.write_text(json.dumps(seen))
        return code

    return body


def killed_run(folder: Path) -> Path:
    """A 4-step run as kills leave it: metrics lines past its checkpoint, a cut line, a temp checkpoint folder."""
    invoke(*argv(folder))
    with open(folder / run.METRICS_FILE, "a") as f:
        f.write('{"step": 5, "loss": 1.0}\n{"step": 6, "lo')
    (folder / "checkpoints" / ".tmp-0-step_0000006").mkdir()
    (folder / "checkpoints" / ".tmp-0-step_0000006" / checkpoint.MODEL_FILE).write_bytes(b"half")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("target", list(OWNERS))
def test_kill_at_every_call_of_a_write_primitive(tmp_path, fault_reference, target):
    """The sweep: from a new folder and from a killed run's, kill at each call of `target` that an uninterrupted
    child makes, before and after the call; every kill must happen, and every finished run equal the clean one."""
    log, starts = tmp_path / "log.txt", {"new": (None, STEPS), "killed": (killed_run(tmp_path / "k"), STEPS + 2)}
    for name, (start, steps) in starts.items():
        copy = lambda dst, start=start: shutil.copytree(start, dst) if start else dst  # noqa: E731
        clean, counts = copy(tmp_path / f"{name}-clean"), tmp_path / f"{name}-counts.json"
        assert wait(fork(counting(argv(clean, steps), log, counts))) == 0, log.read_text()[-2000:]
        expected = [m["loss"] for m in metrics_lines(clean)]
        assert expected[:STEPS] == fault_reference and len(expected) == steps
        calls = json.loads(counts.read_text())[target]
        assert calls >= (2 if target == "rmtree" and name == "killed" else 0 if target == "rmtree" else 1)
        for k in range(1, calls + 1):
            for when in ("before", "after"):
                out, marker = copy(tmp_path / f"{name}-{k}-{when}"), tmp_path / f"{name}-{k}-{when}.json"
                killed(fork(child_main(argv(out, steps), log, kill_at(target, k, when, marker))), log)
                assert (json.loads(marker.read_text())["k"], json.loads(marker.read_text())["when"]) == (k, when)
                finish(out, log, steps)
                assert_intact(out, expected)
                shutil.rmtree(out)


# kill -9 from outside: at known points (fast), at random moments (slow).


def test_kill_9_mid_step_and_mid_checkpoint_write_resumes_to_the_same_run(tmp_path, fault_reference):
    """A child paused in step 3 (step 2 is checkpointed), then one paused with half of step 4's optimizer.pt
    written: each is killed there, and the run resumes to the uninterrupted one."""
    out, log, in_step, in_write = tmp_path / "run", tmp_path / "log.txt", tmp_path / "step.json", tmp_path / "w.json"
    kill_paused(argv(out), pause_at(loop, "train_step", 3, in_step), in_step, log)
    assert [r["step"] for r in metrics_lines(out)] == [1, 2]
    assert [s for s, _ in checkpoint.list_checkpoints(out)] == [2] and json.loads(in_step.read_text())["call"] == 3
    kill_paused(argv(out), pause_at(checkpoint.torch, "save", 1, in_write, partial=True), in_write, log)
    half = Path(json.loads(in_write.read_text())["path"])
    assert half.name == checkpoint.OPTIMIZER_FILE and half.parent.name.startswith(".tmp-")
    assert half.parent.name.endswith("step_0000004") and half.parent.parent == out / "checkpoints"
    assert half.stat().st_size > 0 and (half.parent / checkpoint.EMA_FILE).is_file()
    assert not (half.parent / checkpoint.STATE_FILE).exists()  # killed mid-write: the folder is incomplete
    assert [s for s, _ in checkpoint.list_checkpoints(out)] == [2]
    assert [r["step"] for r in metrics_lines(out)] == [1, 2, 3, 4]  # step 4's line is on disk before its checkpoint
    finish(out, log)
    assert_intact(out, fault_reference)


def holds_lock(out: Path, pid: int) -> bool:
    try:
        return json.loads((out / run.LOCK_FILE).read_text())["pid"] == pid
    except (OSError, ValueError, KeyError):
        return False


@pytest.mark.slow
def test_many_random_kills(tmp_path):
    """Each child, of a run too long to finish, is killed a random time (up to 1.5 uninterrupted 4-step runs)
    after it took the run folder; then the run is finished 2 steps past its newest checkpoint and must equal
    an uninterrupted run of that length."""
    trials, rng, out = int(os.environ.get("DITKIT_FAULT_TRIALS", "25")), random.Random(12), tmp_path / "run"
    start = time.monotonic()
    invoke(*argv(tmp_path / "timing"))
    duration = 1.5 * (time.monotonic() - start)
    for i in range(trials):
        log = tmp_path / f"log-{i}.txt"
        pid = fork(child_main(argv(out, 100_000), log))
        wait_for(lambda pid=pid: holds_lock(out, pid) or exited(pid))  # the known point: it holds the run folder
        time.sleep(rng.uniform(0.0, duration))
        os.kill(pid, signal.SIGKILL)
        killed(pid, log)
        assert holds_lock(out, pid)  # the killed child's stale lock is still there
    steps = max([s for s, _ in checkpoint.list_checkpoints(out)], default=0) + 2
    finish(out, tmp_path / "log.txt", steps)
    invoke(*argv(tmp_path / "clean", steps))
    assert_intact(out, [m["loss"] for m in metrics_lines(tmp_path / "clean")])
