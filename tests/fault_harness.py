"""The fault suites' harness (tests/unit/test_faults_*.py): their tiny run, and forked training children.

The run: `ditkit train` of DiT-T/2 on 8x8 digits, CPU, deterministic, a metrics line every step, a checkpoint
every 2 steps; FAULT_STEPS steps take ~0.15 s. Children are forks of the test process (torch is already
imported, so a child starts in milliseconds) that run `ditkit.cli.main.main`, after hooks that pause them at a
known point or kill them; a child that must be killed and exits by itself fails its test.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from stubs import TINY_DIGITS_RUN

FAULT_FLAGS = [
    *TINY_DIGITS_RUN,
    *("--log-every", "1", "--ckpt-every", "2", "--sample-every", "0", "--num-workers", "0", "--deterministic"),
]
FAULT_STEPS = 4
KILLED = -signal.SIGKILL  # what `wait` returns for a child that SIGKILL ended
PAUSE_SECONDS, PAUSE_EXPIRED = 60.0, 75  # a paused child waits this long to be killed, then exits 75
FIGURES = {"trials": 0, "faults_survived": 0}  # DITKIT_FAULT_REPORT=FILE gets a line of these per test module


def fault_argv(out: Path, steps: int = FAULT_STEPS, *extra: str) -> list[str]:
    return ["train", "--out", str(out), *FAULT_FLAGS, "--max-steps", str(steps), *extra]


def metrics_lines(out: Path) -> list[dict]:
    """Every line of metrics.jsonl, parsed (a cut line fails: unlike run.read_metrics, nothing is skipped)."""
    from ditkit.training import run

    return [json.loads(line) for line in (out / run.METRICS_FILE).read_text().splitlines()]


def leftovers(out: Path) -> list[str]:
    """Temp files and folders and the lock: none may remain once a run is finished."""
    from ditkit.training import run

    return [str(p) for p in out.rglob("*") if p.name.startswith(".tmp-") or p.name == run.LOCK_FILE]


def assert_intact(out: Path, reference: list[float]) -> None:
    """A finished run equals the uninterrupted one: one metrics line per step in order, same losses, no debris."""
    from ditkit.training import checkpoint, run

    records = metrics_lines(out)
    assert [m["step"] for m in records] == list(range(1, len(reference) + 1))
    assert [m["loss"] for m in records] == reference
    assert leftovers(out) == []
    assert json.loads((out / run.CONFIG_FILE).read_text())["max_steps"] == len(reference)
    assert checkpoint.list_checkpoints(out)[-1][0] == len(reference)


# Forked children.


def fork(fn: Callable[[], int]) -> int:
    """Run fn() in a forked child; returns its pid."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            code = fn()
        except BaseException as err:
            print(f"child failed: {err!r}", file=sys.stderr)
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code)
    return pid


def child_main(args: list[str], log: Path, prepare: Callable[[], None] = lambda: None) -> Callable[[], int]:
    """A child body: `ditkit ARGS` with stdout and stderr in `log`, after `prepare` (hooks)."""

    def body() -> int:
        from ditkit.cli.main import main

        sys.stderr = sys.stdout = open(log, "a")
        torch.set_num_threads(1)
        prepare()
        return main(args)

    return body


def wait(pid: int, timeout: float = 120.0) -> int:
    """The child's exit code, or -N when signal N ended it (as subprocess reports it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} did not finish in {timeout} s")


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


def exited(pid: int) -> bool:
    """Whether the child has ended (it stays a zombie: `wait` still gets its code)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def killed(pid: int, log: Path) -> None:
    """Wait for a child that SIGKILL must have ended (one that exited by itself fails)."""
    code = wait(pid)
    assert code == KILLED, f"the child was not killed (exit code {code}):\n{log.read_text()[-2000:]}"
    FIGURES["trials"] += 1
    FIGURES["faults_survived"] += 1


def pause_at(owner: object, name: str, k: int, marker: Path, partial: bool = False) -> Callable[[], None]:
    """A `prepare` hook: at the k-th call of owner.name write the marker and wait to be killed; `partial` (for
    torch.save(obj, path)) first writes half of the file, as a process killed mid-write leaves it."""

    def prepare() -> None:
        real, calls = getattr(owner, name), [0]

        def hooked(*args, **kwargs):
            calls[0] += 1
            if calls[0] != k:
                return real(*args, **kwargs)
            if partial:
                buffer = io.BytesIO()
                real(args[0], buffer)
                Path(args[1]).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            # Written whole, then renamed: the parent kills as soon as the marker exists, and must read all of it.
            staged = marker.with_name(marker.name + ".partial")
            staged.write_text(json.dumps({"call": k, "path": str(args[1]) if partial else None}))
            os.replace(staged, marker)
            time.sleep(PAUSE_SECONDS)
            os._exit(PAUSE_EXPIRED)

        setattr(owner, name, hooked)

    return prepare


def kill_paused(args: list[str], prepare: Callable[[], None], marker: Path, log: Path) -> int:
    """Start a child that pauses at a known point (`pause_at`) and SIGKILL it there; returns its pid."""
    pid = fork(child_main(args, log, prepare))
    try:
        wait_for(lambda: marker.exists() or exited(pid))
    finally:
        os.kill(pid, signal.SIGKILL)  # a child that exited is a zombie until waited for: no ProcessLookupError
    assert marker.exists(), f"the child never reached the pause:\n{log.read_text()[-2000:]}"
    killed(pid, log)
    return pid


@pytest.fixture(scope="module", autouse=True)
def report_figures():
    """Import into a test module: its kill counts go to DITKIT_FAULT_REPORT (a JSON line)."""
    FIGURES.update(trials=0, faults_survived=0)
    yield
    if os.environ.get("DITKIT_FAULT_REPORT"):
        with open(os.environ["DITKIT_FAULT_REPORT"], "a") as f:
            f.write(json.dumps(FIGURES) + "\n")
