"""Stopped the way clusters stop jobs: SIGTERM / SIGINT to the whole process group, data workers included.

Fast: a data worker ignores the signal and the main process gets the stop flag; an unreadable class folder or
image file is an error naming it. Slow: real `ditkit` processes in their own session, signalled with os.killpg
at random moments (train, extract-latents, sample --num, torchrun), exit 143 / 130 with one line and leave no
process behind; the next identical command resumes to what an uninterrupted run gives.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ditkit.data import datasets
from ditkit.data.datasets import ImageFolderDataset, check_image_folder
from ditkit.data.workers import close_batches, worker_batches
from ditkit.runtime.errors import InputError
from ditkit.runtime.stopping import StopSignal
from ditkit.training import checkpoint, run
from fault_harness import assert_intact, fork, metrics_lines, wait, wait_for
from smoke.test_cli import invoke
from stubs import TINY_DIGITS_RUN

pytestmark = pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs process groups")
TORCHRUN = Path(sys.executable).with_name("torchrun")
SLOW_PROCESS_S = 240  # one ditkit process of these tests, torch's start-up on a busy machine included


class _Pids(torch.utils.data.Dataset):
    def __getitem__(self, index: int) -> int:
        return os.getpid()


def _worker_survives_group_signal() -> int:
    """Child body (its own session): 2 workers, SIGTERM to the group; 0 when the workers lived on, the batches
    kept coming and only the main process's flag was set."""
    os.setsid()
    stop = StopSignal()
    batches = worker_batches(_Pids(), [[0]] * 100, num_workers=2)
    pids = {int(next(batches)[0]) for _ in range(6)}
    os.killpg(0, signal.SIGTERM)
    time.sleep(0.5)
    alive = all(not exited_any(p) for p in pids) and len(pids) == 2
    more = int(next(batches)[0]) in pids
    close_batches(batches)
    gone = all(exited_any(p) for p in pids)
    stop.restore()
    print(f"pids={pids} alive={alive} more={more} flag={stop.signum} gone={gone}")
    return 0 if alive and more and stop.signum == signal.SIGTERM and gone else 1


def exited_any(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").is_file() and Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_a_worker_ignores_a_group_sigterm_and_the_main_process_gets_the_flag(tmp_path):
    pid = fork(_worker_survives_group_signal)
    assert wait(pid, timeout=60) == 0


def test_a_signal_stops_a_study_instead_of_failing_one_of_its_configs(tmp_path, monkeypatch):
    from ditkit.apps import study
    from ditkit.apps.study_spec import load_spec
    from ditkit.runtime.stopping import Interrupted, interrupted

    def run_one(*args):
        raise interrupted(signal.SIGTERM, 3)

    monkeypatch.setattr(study, "_shared_inputs", lambda spec, out: {})
    monkeypatch.setattr(study, "_run_one", run_one)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as err:
        study.run_study(load_spec("blocks"), tmp_path)
    assert err.value.exit_code == 143 and not (tmp_path / "results.json").exists()
    assert signal.getsignal(signal.SIGTERM) == before  # the study's own StopSignal is gone


def _image_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def test_an_unreadable_class_folder_is_an_error_naming_it(tmp_path, monkeypatch):
    root = _image_folder(tmp_path / "images")
    real = os.scandir

    def scandir(path="."):
        if Path(path).name == "class1":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(InputError, match=r"cannot read folder '.*class1': permission denied") as err:
        ImageFolderDataset(root, 8)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="class1.*permission denied"):
        check_image_folder(root)


def test_an_unreadable_image_file_is_an_error_naming_it(tmp_path, monkeypatch):
    root = _image_folder(tmp_path / "images")
    real = open

    def guarded(path, *args, **kwargs):
        if str(path).endswith("class2/3.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "open", guarded, raising=False)
    with pytest.raises(InputError, match=r"cannot read image file '.*class2/3.png': permission denied"):
        check_image_folder(root)
    real_load = datasets._load_rgb

    def load(path):
        if str(path).endswith("class2/3.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_load(path)

    monkeypatch.setattr(datasets, "_load_rgb", load)
    dataset = ImageFolderDataset(root, 8)
    with pytest.raises(InputError, match="class2/3.png': permission denied"):
        dataset.get(dataset.samples.index((root / "class2" / "3.png", 2)))


# Slow: real processes, each in its own session, signalled as a group.


def _start(args: list[str], log: Path, launcher: list[str] | None = None) -> subprocess.Popen:
    cmd = (launcher or [sys.executable, "-m", "ditkit"]) + args
    with open(log, "a") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _signal_group(proc: subprocess.Popen, ready, delay: float, sig: int, log: Path, agent: bool = False) -> int:
    """Wait for `ready()`, then `delay` s, then `sig` to the whole group; the exit code, once every process of
    the group (data workers, ranks) is gone. `agent`: torchrun's agent prints its own traceback of the signal."""
    wait_for(lambda: ready() or proc.poll() is not None, timeout=SLOW_PROCESS_S)
    time.sleep(delay)
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        code = proc.wait(timeout=SLOW_PROCESS_S)
        wait_for(lambda: _group_gone(proc.pid), timeout=60)
    finally:
        if not _group_gone(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert "DataLoader worker" not in text and (agent or "Traceback" not in text), text[-3000:]
    return code


def _last_line(log: Path) -> str:
    return log.read_text().strip().splitlines()[-1]


def _train_argv(out: Path, data: Path, steps: int) -> list[str]:
    return [
        "train",
        "--out",
        str(out),
        "--data",
        str(data),
        "--image-size",
        "8",
        "--preset",
        "DiT-T/2",
        "--vae",
        "none",
        "--global-batch-size",
        "8",
        "--log-every",
        "1",
        "--ckpt-every",
        "5",
        "--sample-every",
        "0",
        "--eval-every",
        "0",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--num-workers",
        "2",
        "--deterministic",
        "--max-steps",
        str(steps),
    ]


def _lock_taken(out: Path):
    return lambda: (out / run.LOCK_FILE).is_file() and (out / run.LOCK_FILE).stat().st_size > 0


@pytest.mark.slow
def test_train_stopped_as_a_group_checkpoints_and_resumes_to_the_same_run(tmp_path):
    data, steps, rng = _image_folder(tmp_path / "images"), 40, random.Random(3)
    reference = tmp_path / "reference"
    invoke(*_train_argv(reference, data, steps))
    losses = [m["loss"] for m in metrics_lines(reference)]
    out, log = tmp_path / "run", tmp_path / "log.txt"
    for trial, sig in enumerate([signal.SIGTERM, signal.SIGINT, signal.SIGTERM]):
        proc = _start(_train_argv(out, data, steps), log)
        code = _signal_group(proc, _lock_taken(out), rng.uniform(0.05, 2.5), sig, log)
        if code == 0:
            break  # finished before the signal
        assert code == 128 + sig, (trial, log.read_text()[-3000:])
        last = _last_line(log)
        assert last.startswith(f"ditkit train: stopped by {sig.name} at step "), last
        step = int(last.split(" at step ")[1].split(";")[0])
        assert checkpoint.list_checkpoints(out)[-1][0] == step
        assert [m["step"] for m in metrics_lines(out)] == list(range(1, step + 1))
    invoke(*_train_argv(out, data, steps))
    assert_intact(out, losses)


def _store_arrays(root: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted(root.glob("*.npy"))}


@pytest.mark.slow
def test_extract_latents_stopped_as_a_group_resumes_to_the_same_store(tmp_path):
    vae = str(Path(datasets.__file__).parents[1] / "assets" / "mnist_vae")

    def argv(out: Path, workers: str) -> list[str]:
        return [
            "extract-latents",
            "--data",
            "digits",
            "--image-size",
            "8",
            "--vae",
            vae,
            "--out",
            str(out),
            "--batch-size",
            "2",
            "--num-workers",
            workers,
            "--device",
            "cpu",
        ]

    invoke(*argv(tmp_path / "reference", "0"))
    out, log = tmp_path / "store", tmp_path / "log.txt"
    proc = _start(argv(out, "2"), log)
    code = _signal_group(proc, lambda: any(out.glob("done-*.json")), random.Random(5).uniform(0.0, 1.0), 15, log)
    assert code == 143, log.read_text()[-3000:]
    assert _last_line(log).startswith("ditkit extract-latents: stopped by SIGTERM with "), _last_line(log)
    invoke(*argv(out, "2"))
    want, got = _store_arrays(tmp_path / "reference"), _store_arrays(out)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_allclose(got[name].astype(np.float32), want[name].astype(np.float32), atol=2e-3)


@pytest.mark.slow
def test_sample_num_stopped_as_a_group_resumes_to_the_same_npz(tmp_path):
    model = tmp_path / "model"
    invoke(
        "train",
        "--out",
        str(model),
        *TINY_DIGITS_RUN,
        *("--max-steps", "2", "--sample-every", "0", "--num-workers", "0"),
    )

    def argv(out: Path) -> list[str]:
        return [
            "sample",
            "--ckpt",
            str(model),
            "--out",
            str(out),
            "--num",
            "240",
            "--batch-size",
            "2",
            "--num-steps",
            "10",
            "--device",
            "cpu",
            "--npz",
            str(out / "s.npz"),
        ]

    invoke(*argv(tmp_path / "reference"))
    out, log = tmp_path / "job", tmp_path / "log.txt"
    proc = _start(argv(out), log)
    code = _signal_group(proc, lambda: any(out.glob("s.npz.parts/chunk_*")), 0.3, 15, log)
    assert code == 143, log.read_text()[-3000:]
    assert _last_line(log).startswith("ditkit sample: stopped by SIGTERM with "), _last_line(log)
    invoke(*argv(out))
    with np.load(tmp_path / "reference" / "s.npz") as want, np.load(out / "s.npz") as got:
        np.testing.assert_array_equal(got["arr_0"], want["arr_0"])
        np.testing.assert_array_equal(got["labels"], want["labels"])


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(not TORCHRUN.is_file() or not torch.distributed.is_available(), reason="needs torchrun")
def test_torchrun_stopped_as_a_group_leaves_rank_0_checkpoint_and_every_rank_exits(tmp_path):
    from test_distributed import _free_port

    data, out, log = _image_folder(tmp_path / "images"), tmp_path / "run", tmp_path / "log.txt"
    launcher = [
        str(TORCHRUN),
        "--nproc_per_node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "ditkit",
    ]
    proc = _start(_train_argv(out, data, 10_000), log, launcher)
    _signal_group(proc, lambda: len(run.read_metrics(out)) >= 2, 0.2, signal.SIGTERM, log, agent=True)
    text = log.read_text()
    assert text.count("ditkit train: stopped by SIGTERM at step ") == 2, text[-3000:]  # both ranks, one line each
    newest = checkpoint.newest_readable(out)
    assert newest is not None
    state = checkpoint.read_state(newest)
    assert state["world_size"] == 2 and state["step"] == metrics_lines(out)[-1]["step"]
    assert [m["step"] for m in metrics_lines(out)] == list(range(1, state["step"] + 1))
    assert not (out / run.LOCK_FILE).exists()
    assert json.loads((out / run.CONFIG_FILE).read_text())["max_steps"] == 10_000
