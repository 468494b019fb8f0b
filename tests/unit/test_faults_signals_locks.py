"""Fault suite, signals and a second process: SIGTERM / SIGINT checkpoint and exit with their code; a second
`ditkit train` on a folder in use is refused, and the lock a killed holder left is taken over.

Trainings run in forked children (tests/fault_harness.py) or, in the slow set, as real `ditkit` processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from ditkit.runtime.files import exclusive_lock
from ditkit.training import checkpoint, loop, run
from fault_harness import FAULT_STEPS as STEPS
from fault_harness import (
    FIGURES,
    KILLED,
    assert_intact,
    child_main,
    exited,
    fork,
    killed,
    leftovers,
    metrics_lines,
    pause_at,
    report_figures,  # noqa: F401 (autouse)
    wait,
    wait_for,
)
from fault_harness import fault_argv as argv
from smoke.test_cli import DITKIT, invoke

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    pytest.mark.xdist_group("faults"),
]


# Signals: the documented exit codes after a checkpoint.


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_signal_checkpoints_and_exits_with_its_code(tmp_path, fault_reference, sig):
    out, log = tmp_path / "run", tmp_path / "log.txt"
    pid = fork(child_main(argv(out, 1000), log))
    wait_for(lambda: len(run.read_metrics(out)) >= 2)
    os.kill(pid, sig)
    assert wait(pid) == 128 + sig  # exited with the code (a death by the signal would be -sig)
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith(f"ditkit train: stopped by {sig.name} at step ") and "Traceback" not in log.read_text()
    step = int(last.split(" at step ")[1].split(";")[0])
    assert 2 <= step < 1000  # stopped mid-run, past the known point
    assert checkpoint.list_checkpoints(out)[-1][0] == step and leftovers(out) == []
    assert [m["step"] for m in metrics_lines(out)] == list(range(1, step + 1))
    invoke(*argv(out, STEPS + step))  # resumes (max_steps may change) and finishes
    assert [m["step"] for m in metrics_lines(out)] == list(range(1, STEPS + step + 1))
    assert [m["loss"] for m in metrics_lines(out)][:STEPS] == fault_reference  # the run was not disturbed


# Two processes on one folder.


def test_a_second_process_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path, fault_reference):
    out, log, marker = tmp_path / "run", tmp_path / "log.txt", tmp_path / "paused.json"
    pid = fork(child_main(argv(out), log, pause_at(loop, "train_step", 2, marker)))
    try:
        wait_for(lambda: marker.exists() or exited(pid))  # paused in step 2, holding the folder
        second = invoke(*argv(out), check=False)
    finally:
        os.kill(pid, signal.SIGKILL)
    assert second.returncode == 2 and f"in use by pid {pid} on " in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    killed(pid, log)
    assert json.loads((out / run.LOCK_FILE).read_text())["pid"] == pid  # stale: its holder is gone
    assert [m["step"] for m in metrics_lines(out)] == [1] and checkpoint.list_checkpoints(out) == []
    done = invoke(*argv(out))
    assert f"taking over the lock {out / run.LOCK_FILE} of pid {pid}" in done.stderr
    assert_intact(out, fault_reference)


def test_the_lock_is_one_per_process_and_released(tmp_path):
    path = tmp_path / "x.lock"
    with exclusive_lock(path) as record:
        assert json.loads(path.read_text())["pid"] == os.getpid() == record["pid"]
        with pytest.raises(ValueError, match=f"held by pid {os.getpid()}"), exclusive_lock(path):
            pass
    assert not path.exists()
    path.write_text("garbage from a crash")  # a stale file with no lock on it
    with exclusive_lock(path):
        assert json.loads(path.read_text())["pid"] == os.getpid()


# Real processes (the console script): kill -9, SIGTERM, two at once.


@pytest.mark.slow
def test_console_script_survives_kill_9_sigterm_and_a_second_process(tmp_path, fault_reference):
    out = tmp_path / "run"
    cmd = [DITKIT, *argv(out, 100_000)]
    first = subprocess.Popen(cmd, stderr=open(tmp_path / "first.txt", "w"))
    wait_for(lambda: len(run.read_metrics(out)) >= 3, timeout=120)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and f"in use by pid {first.pid}" in second.stderr
    first.kill()  # kill -9
    assert first.wait() == KILLED  # mid-run: it had logged 3 steps of 100,000
    FIGURES["trials"] += 1
    FIGURES["faults_survived"] += 1
    third = subprocess.Popen(cmd, stderr=open(tmp_path / "third.txt", "w"))
    wait_for(lambda: "training " in (tmp_path / "third.txt").read_text(), timeout=120)  # its signal handler is set
    resumed = len(run.read_metrics(out))
    wait_for(lambda: len(run.read_metrics(out)) >= max(resumed, STEPS) + 2, timeout=120)
    third.send_signal(signal.SIGTERM)
    third.wait(timeout=120)
    err = (tmp_path / "third.txt").read_text()
    assert third.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err  # exited, not killed by it
    assert err.strip().splitlines()[-1].startswith("ditkit train: stopped by SIGTERM at step ")
    steps = [m["step"] for m in metrics_lines(out)]
    assert steps == list(range(1, len(steps) + 1)) and leftovers(out) == []
    assert [m["loss"] for m in metrics_lines(out)][:STEPS] == fault_reference
