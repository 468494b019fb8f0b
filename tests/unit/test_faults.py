"""Fault suite (issue 12): runs that survive kill -9 at any moment, signals, a second process, non-finite
numbers, a full disk and damaged run folders, with nothing lost or overwritten.

Trainings run in forked children of this process (torch is already imported, so a child starts in
milliseconds), through `ditkit.cli.main.main`, on sklearn's 8x8 digits with a tiny deterministic DiT. A child is
killed with SIGKILL at random moments, or kills itself at the k-th call of a write primitive (os.replace,
os.rename, os.fsync, shutil.rmtree, the metrics append), before or after the call. The run is then
finished and must equal an uninterrupted one: exactly one metrics line per step, in order, the same losses,
no temp files, no lock left. The slow set adds more random trials and real `ditkit` processes.
DITKIT_FAULT_TRIALS sets the number of random kills of the slow test (default 25).
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ditkit.cli.main import main
from ditkit.runtime import stopping
from ditkit.runtime.files import exclusive_lock
from ditkit.training import checkpoint, run
from smoke.test_cli import DITKIT, invoke

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    pytest.mark.xdist_group("faults"),
]

FLAGS = ["--data", "digits", "--preset", "DiT-T/2", "--image-size", "8", "--vae", "none", "--global-batch-size", "8",
         "--log-every", "1", "--ckpt-every", "2", "--sample-every", "0", "--eval-every", "0", "--device", "cpu",
         "--precision", "fp32", "--num-workers", "0", "--deterministic"]  # fmt: skip
STEPS = 4
RUN_SECONDS: list[float] = []  # how long the reference run took (the scale of the random kill times)


def argv(out: Path, steps: int = STEPS, *extra: str) -> list[str]:
    return ["train", "--out", str(out), *FLAGS, "--max-steps", str(steps), *extra]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / run.METRICS_FILE).read_text().splitlines()]


def logged(out: Path) -> int:
    """Complete metrics lines so far (of a run in progress)."""
    return len(run.read_metrics(out))


def leftovers(out: Path) -> list[str]:
    """Temp files and the lock: none may remain once a run is finished."""
    return [str(p) for p in out.rglob("*") if p.name.startswith(".tmp-") or p.name == run.LOCK_FILE]


def fork(fn: Callable[[], int]) -> int:
    """Run fn() in a forked child (stdout/stderr to a file beside it); returns its pid."""
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
    """A child body: `ditkit ARGS` with sys.stderr in `log`, after `prepare` (hooks)."""

    def body() -> int:
        sys.stderr = sys.stdout = open(log, "a")
        torch.set_num_threads(1)
        prepare()
        return main(args)

    return body


def wait(pid: int, timeout: float = 120.0) -> int:
    """The child's exit code (128 + signal when a signal killed it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
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


def kill_at(target: str, k: int, when: str) -> Callable[[], None]:
    """A `prepare` hook: SIGKILL this process at the k-th call of `target`, before or after the call runs."""
    owners = {"replace": (os, "replace"), "rename": (os, "rename"), "fsync": (os, "fsync"),
              "rmtree": (shutil, "rmtree"), "metrics": (run, "append_metrics")}  # fmt: skip

    def prepare() -> None:
        owner, name = owners[target]
        real, calls = getattr(owner, name), [0]

        def hooked(*args, **kwargs):
            calls[0] += 1
            if calls[0] == k and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = real(*args, **kwargs)
            if calls[0] == k and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(owner, name, hooked)

    return prepare


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    """The losses of an uninterrupted run (also warms up the imports every child then inherits)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    invoke(*argv(out))  # warm-up: imports, first-use caches
    shutil.rmtree(out)
    start = time.monotonic()
    invoke(*argv(out))
    RUN_SECONDS.append(time.monotonic() - start)
    return [m["loss"] for m in metrics(out)]


def assert_intact(out: Path, reference: list[float]) -> None:
    """A finished run equals the uninterrupted one: one metrics line per step in order, same losses."""
    records = metrics(out)
    assert [m["step"] for m in records] == list(range(1, len(reference) + 1))
    assert [m["loss"] for m in records] == reference
    assert leftovers(out) == []
    assert json.loads((out / run.CONFIG_FILE).read_text())["max_steps"] == len(reference)
    assert checkpoint.list_checkpoints(out)[-1][0] == len(reference)


FIGURES = {"trials": 0, "faults_survived": 0}


@pytest.fixture(scope="module", autouse=True)
def _report_figures():
    yield
    if os.environ.get("DITKIT_FAULT_REPORT"):
        with open(os.environ["DITKIT_FAULT_REPORT"], "a") as f:
            f.write(json.dumps(FIGURES) + "\n")


def survive(out: Path, reference: list[float], kills: list[Callable[[], None]], log: Path) -> None:
    """Run the chain: a child per kill hook (each resumes the last), then a clean finish; check the run."""
    for prepare in kills:
        code = wait(fork(child_main(argv(out), log, prepare)))
        assert code in (0, 128 + signal.SIGKILL), log.read_text()[-2000:]
        FIGURES["trials"] += 1
        FIGURES["faults_survived"] += code != 0
    assert wait(fork(child_main(argv(out), log))) == 0, log.read_text()[-2000:]
    assert_intact(out, reference)


# kill -9 at the writes.

WRITE_POINTS = [
    ("replace", 1, "before"),  # config.json of the new run
    ("metrics", 2, "after"),  # step 2's line is written, its checkpoint is not
    ("rename", 1, "before"),  # a complete checkpoint folder, not yet renamed
    ("rename", 1, "after"),  # renamed, `latest` not yet updated
    ("replace", 3, "after"),
    ("fsync", 9, "before"),  # a weights file written, not yet flushed
    ("rmtree", 1, "after"),  # pruning
    ("metrics", 2, "before"),
]


@pytest.mark.parametrize("points", [WRITE_POINTS[:4], pytest.param(WRITE_POINTS[4:], marks=pytest.mark.slow)])
def test_kill_at_writes_then_resume_loses_and_repeats_nothing(tmp_path, reference, points):
    """config.json mid-write, a metrics line before its checkpoint, a checkpoint before / after its rename,
    `latest`, a weights file before its fsync, the pruning: each kill resumes to the same run."""
    survive(tmp_path / "run", reference, [kill_at(*point) for point in points], tmp_path / "log.txt")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["replace", "rename", "fsync", "rmtree", "metrics"])
def test_kill_at_every_call_of_a_write_primitive(tmp_path, reference, target):
    """The sweep: for k = 1, 2, ..., kill at the k-th call, before and after, in one chain per primitive."""
    hooks = [kill_at(target, k, when) for k in range(1, 9) for when in ("before", "after")]
    survive(tmp_path / "run", reference, hooks, tmp_path / "log.txt")


def random_kills(out: Path, reference: list[float], trials: int, log: Path, rng: random.Random) -> None:
    """SIGKILL children at random moments (uniform over a run's length), then finish and check."""
    duration = 1.5 * RUN_SECONDS[0]  # a child also forks and opens its data
    for _ in range(trials):
        start = time.monotonic()
        pid = fork(child_main(argv(out), log))
        time.sleep(rng.uniform(0.0, duration))
        os.kill(pid, signal.SIGKILL)  # a child that finished is a zombie until waited for: no ProcessLookupError
        code = wait(pid)
        FIGURES["trials"] += 1
        FIGURES["faults_survived"] += code == 128 + signal.SIGKILL
        if code == 0:  # finished before the kill: start over to keep killing
            duration = time.monotonic() - start
            shutil.rmtree(out)
        else:
            assert code == 128 + signal.SIGKILL, log.read_text()[-2000:]
    assert wait(fork(child_main(argv(out), log))) == 0, log.read_text()[-2000:]
    assert_intact(out, reference)


def test_random_kills_resume_to_the_same_run(tmp_path, reference):
    random_kills(tmp_path / "run", reference, 2, tmp_path / "log.txt", random.Random(0))


@pytest.mark.slow
def test_many_random_kills(tmp_path, reference):
    trials = int(os.environ.get("DITKIT_FAULT_TRIALS", "25"))
    random_kills(tmp_path / "run", reference, trials, tmp_path / "log.txt", random.Random(12))


# Signals: the documented exit codes after a checkpoint.


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_signal_checkpoints_and_exits_with_its_code(tmp_path, reference, sig):
    out, log = tmp_path / "run", tmp_path / "log.txt"
    pid = fork(child_main(argv(out, 1000), log))
    wait_for(lambda: logged(out) >= 2)
    os.kill(pid, sig)
    assert wait(pid) == 128 + sig
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith(f"ditkit train: stopped by {sig.name} at step ") and "Traceback" not in log.read_text()
    step = int(last.split(" at step ")[1].split(";")[0])
    assert checkpoint.list_checkpoints(out)[-1][0] == step and leftovers(out) == []
    assert [m["step"] for m in metrics(out)] == list(range(1, step + 1))
    invoke(*argv(out, STEPS + step))  # resumes (max_steps may change) and finishes
    assert [m["step"] for m in metrics(out)] == list(range(1, STEPS + step + 1))
    assert [m["loss"] for m in metrics(out)][:STEPS] == reference  # the run was not disturbed


# Two processes on one folder.


def test_a_second_process_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path, reference):
    out, log = tmp_path / "run", tmp_path / "log.txt"
    pid = fork(child_main(argv(out, 100_000), log))
    wait_for(lambda: logged(out) >= 1)
    second = invoke(*argv(out, 100_000), check=False)
    assert second.returncode == 2 and f"in use by pid {pid} on " in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    os.kill(pid, signal.SIGKILL)
    wait(pid)
    assert json.loads((out / run.LOCK_FILE).read_text())["pid"] == pid  # stale: its holder is gone
    done = invoke(*argv(out, STEPS))
    assert f"taking over the lock {out / run.LOCK_FILE} of pid {pid}" in done.stderr
    steps = [m["step"] for m in metrics(out)]
    assert steps == list(range(1, len(steps) + 1)) and leftovers(out) == []


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


# Non-finite numbers.


def test_non_finite_run_exits_3_and_keeps_only_finite_checkpoints(tmp_path):
    out = tmp_path / "run"
    proc = invoke(*argv(out, STEPS, "--lr", "1e30", "--ckpt-every", "1"), check=False)
    assert proc.returncode == stopping.EXIT_NON_FINITE
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ditkit train: loss is nan at step 2; training stopped (the last good checkpoint step_00")
    assert "--lr" in last and "--max-grad-norm" in last
    assert [s for s, _ in checkpoint.list_checkpoints(out)] == [1]
    model, ema, opt = _triplet()
    assert checkpoint.load(out / "checkpoints" / "step_0000001", model, ema, opt)["step"] == 1  # finite: it loads


def test_a_diverged_run_resumes_with_a_lower_lr_and_clipping(tmp_path, monkeypatch):
    """A run whose lr is too high (here: NaN from step 3 while lr > 1e-3) stops with exit code 3; rerun with a
    lower --lr and a --max-grad-norm, it resumes from the kept checkpoint and finishes."""
    from ditkit.training import loop as train_mod

    real = train_mod.train_step

    def diverging(model, diffusion, optimizer, *args, **kwargs):
        stats = real(model, diffusion, optimizer, *args, **kwargs)
        if optimizer.param_groups[0]["lr"] > 1e-3 and int(next(iter(optimizer.state.values()))["step"]) >= 3:
            stats["loss"] = torch.tensor(float("nan"))
        return stats

    monkeypatch.setattr(train_mod, "train_step", diverging)
    out = tmp_path / "run"
    assert invoke(*argv(out, STEPS, "--lr", "1e-2"), check=False).returncode == 3
    assert [s for s, _ in checkpoint.list_checkpoints(out)] == [2]
    done = invoke(*argv(out, STEPS, "--lr", "1e-4", "--max-grad-norm", "1"))  # may change on resume
    assert "resumed from step 2" in done.stderr
    assert [m["step"] for m in metrics(out)] == list(range(1, STEPS + 1))
    stored = json.loads((out / run.CONFIG_FILE).read_text())
    assert (stored["lr"], stored["max_grad_norm"]) == (1e-4, 1.0)


def _triplet() -> tuple:
    from ditkit.training.loop import build_model_and_optimizer
    from ditkit.training.run import build_train_config

    cfg = build_train_config("unused", data="digits", preset="DiT-T/2", image_size=8, vae="none")
    return build_model_and_optimizer(cfg, torch.device("cpu"))


@pytest.mark.parametrize("poison", ["grad_norm", "optimizer_state"])
def test_inf_gradients_or_optimizer_state_stop_before_any_checkpoint_holds_them(tmp_path, poison):
    """A finite loss with an inf gradient norm, or an AdamW moment that overflowed: caught at step 3, so
    the kept checkpoint is step 2 and no later one; the rerun resumes from it."""
    from ditkit.training import loop as train_mod

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
    assert ("gradient norm is inf at step 3" if poison == "grad_norm" else "the optimizer state") in proc.stderr
    assert [s for s, _ in checkpoint.list_checkpoints(out)] == [2]
    invoke(*argv(out))
    assert [m["step"] for m in metrics(out)] == list(range(1, STEPS + 1))


# A full disk.


def test_a_full_disk_leaves_the_last_checkpoint_and_the_rerun_resumes(tmp_path, reference):
    out = tmp_path / "run"

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "checkpoints"))

    invoke(*argv(out, 2))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint.torch, "save", disk_full)  # the optimizer file: after both weights files
        proc = invoke(*argv(out), check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        "ditkit train: error: no space left on the device of"
    )
    assert [s for s, _ in checkpoint.list_checkpoints(out)] == [2] and leftovers(out) == []
    with pytest.MonkeyPatch.context() as mp:  # the free-space check refuses before writing anything
        mp.setattr(checkpoint, "free_bytes", lambda path: 1000)
        proc = invoke(*argv(out), check=False)
    assert "no space for checkpoint step_0000004" in proc.stderr and "resume from step_0000002" in proc.stderr
    invoke(*argv(out))
    assert_intact(out, reference)


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
def test_a_real_full_disk(tmp_path, reference):
    """A 2.2 MB tmpfs holds two checkpoints of the tiny model (0.83 MB each) but not three: pruning first
    keeps the run going; with the disk filled up, the run stops with one line and resumes once there is room."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2200k", "tmpfs", str(mnt)], check=False).returncode:
        pytest.skip("mount -t tmpfs failed here")
    try:
        out = mnt / "run"
        invoke(*argv(out))
        assert_intact(out, reference)
        (mnt / "ballast").write_bytes(b"\0" * (shutil.disk_usage(mnt).free - 100_000))  # now the disk is full
        proc = invoke(*argv(out, STEPS + 2), check=False)
        assert proc.returncode == 2 and "no space" in proc.stderr.strip().splitlines()[-1]
        assert checkpoint.list_checkpoints(out)[-1][0] == STEPS and leftovers(out) == []
        (mnt / "ballast").unlink()
        invoke(*argv(out, STEPS + 2))
        assert [m["step"] for m in metrics(out)] == list(range(1, STEPS + 3))
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
    proc = invoke(*argv(out, 6))
    resumed = 4 if damage == "latest points outside" else 2
    assert f"from step {resumed} to 6" in proc.stderr
    assert [m["step"] for m in metrics(out)] == list(range(1, 7)) and not (out / "checkpoints" / "pwned").exists()


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


def test_metrics_lines_past_the_checkpoint_and_a_cut_line_are_dropped_on_resume(tmp_path, finished, reference):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    with open(out / run.METRICS_FILE, "a") as f:
        f.write('{"step": 5, "loss": 1.0}\n{"step": 6, "lo')  # written by a run killed before its checkpoint
    invoke(*argv(out, 6))
    assert [m["step"] for m in metrics(out)] == [1, 2, 3, 4, 5, 6] and metrics(out)[4]["loss"] != 1.0
    assert [m["loss"] for m in metrics(out)][:4] == reference


# Real processes (the console script): kill -9, SIGTERM, two at once.


@pytest.mark.slow
def test_console_script_survives_kill_9_sigterm_and_a_second_process(tmp_path, reference):
    out = tmp_path / "run"
    cmd = [DITKIT, *argv(out, 100_000)]
    first = subprocess.Popen(cmd, stderr=open(tmp_path / "first.txt", "w"))
    wait_for(lambda: logged(out) >= 3, timeout=120)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and f"in use by pid {first.pid}" in second.stderr
    first.kill()  # kill -9
    first.wait()
    FIGURES["trials"] += 1
    FIGURES["faults_survived"] += 1
    third = subprocess.Popen(cmd, stderr=open(tmp_path / "third.txt", "w"))
    wait_for(lambda: "training " in (tmp_path / "third.txt").read_text(), timeout=120)  # its signal handler is set
    wait_for(lambda: logged(out) >= len(reference) + 2, timeout=120)
    third.send_signal(signal.SIGTERM)
    third.wait(timeout=120)
    err = (tmp_path / "third.txt").read_text()
    assert third.returncode == 143 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("ditkit train: stopped by SIGTERM at step ")
    steps = [m["step"] for m in metrics(out)]
    assert steps == list(range(1, len(steps) + 1)) and leftovers(out) == []
    assert [m["loss"] for m in metrics(out)][: len(reference)] == reference
