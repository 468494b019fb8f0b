"""kill -9 inside the three folder writes that go through `ditkit.runtime.files.atomic_dir`: a training checkpoint,
a diffusers export and an autoencoder folder. The folder is then the complete old one, or missing with the old
one kept aside (`recover_dir` puts it back), never a mix of old and new files.

Each case runs the real writer in a child `python` process that blocks at a chosen point: a patched function
writes a signal file and sleeps. "body" blocks inside the write (some new files written, the folder not yet
swapped); "swap" blocks between the two renames (the old folder renamed aside, the new one not yet in place).
The parent SIGKILLs the child once the signal file exists and checks that the kill really happened there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("diffusers", reason="needs the vae extra (diffusers)")

from test_checkpoint import _same_tensors, _save, _trained_triplet
from test_interop import make_run, perturbed, vae_dir  # noqa: F401 (vae_dir: the tiny VAE fixture)
from test_vae_training import tiny

from ditkit.config import DiffusionConfig, get_preset
from ditkit.interop.diffusers_format import export_diffusers
from ditkit.model.dit import DiT
from ditkit.runtime.files import KEPT_PREFIX, TEMP_PREFIX
from ditkit.training import checkpoint
from ditkit.training.autoencoder_training import train_vae

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

TESTS = Path(__file__).parent
POINTS = ["body", "swap"]

# What every child runs first: `block_at` makes a function announce itself and hang until the kill.
PRELUDE = f"""
import os, sys, time
from pathlib import Path
sys.path[:0] = [{str(TESTS)!r}, {str(TESTS.parent)!r}]
import torch
torch.set_num_threads(1)
SIGNAL = Path(sys.argv[1])

def block_at(owner, name, when=lambda *args: True):
    real = getattr(owner, name)
    def hooked(*args, **kwargs):
        if when(*args):
            SIGNAL.write_text(name)
            time.sleep(600)
        return real(*args, **kwargs)
    setattr(owner, name, hooked)

def swap_of(target):  # the second rename of atomic_dir: the new folder onto `target` (the old one is aside)
    return lambda src, dst: Path(dst).name == target and Path(src).name.startswith({TEMP_PREFIX!r})
"""


def kill_inside(tmp_path: Path, body: str, timeout: float = 120.0) -> None:
    """Run PRELUDE + body in a child; SIGKILL it once it signals; assert it was killed there, not done."""
    script, flag, log = tmp_path / "child.py", tmp_path / "blocked", tmp_path / "child.log"
    script.write_text(PRELUDE + body)
    with open(log, "w") as out:
        child = subprocess.Popen([sys.executable, str(script), str(flag)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while not flag.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)  # past the write of the signal file, well inside the sleep
    finally:
        child.send_signal(signal.SIGKILL)
        code = child.wait()
    assert code == -signal.SIGKILL and flag.exists(), log.read_text()[-3000:]


def files_of(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under `folder` (relative name -> bytes), but those named in `skip`."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX))


def kept(path: Path) -> Path:
    return path.with_name(KEPT_PREFIX + path.name)


# A training checkpoint re-saved at the same step (the one case where a checkpoint folder is replaced).


@pytest.mark.parametrize("point", POINTS)
def test_a_killed_checkpoint_save_leaves_the_old_checkpoint(tmp_path, point):
    run = tmp_path / "run"
    model, ema, opt = _trained_triplet()
    folder = _save(run, 2, model, ema, opt)
    old = files_of(folder)
    hook = 'block_at(torch, "save")' if point == "body" else 'block_at(os, "rename", swap_of("step_0000002"))'
    kill_inside(
        tmp_path,
        f"""
from test_checkpoint import _save, _trained_triplet
{hook}
_save({str(run)!r}, 2, *_trained_triplet(seed=1))  # other weights at the same step
""",
    )
    root = run / checkpoint.CHECKPOINTS_DIR
    if point == "body":
        assert files_of(folder) == old and len(temps(root)) == 1  # the old folder; the half-written temp beside
    else:
        assert not folder.exists() and files_of(kept(folder)) == old  # aside and complete
    restored = DiT(get_preset("DiT-T/2"))
    assert checkpoint.load_latest(run, restored)["step"] == 2  # the run's owner puts it back and reads it
    assert files_of(folder) == old and _same_tensors(restored.state_dict(), model.state_dict())
    _save(run, 2, model, ema, opt)  # the next save cleans up what the kill left
    assert temps(root) == []


# A diffusers export (into an empty folder the user made: the only "old" an export may replace).


@pytest.mark.parametrize("point", POINTS)
def test_a_killed_diffusers_export_leaves_no_partial_pipeline(tmp_path, vae_dir, point):  # noqa: F811
    run = make_run(tmp_path / "run", perturbed(get_preset("DiT-T/2")), DiffusionConfig(), str(vae_dir))
    out = tmp_path / "pipe"
    out.mkdir()
    hook = 'block_at(diffusers_format, "write_text")' if point == "body" else 'block_at(os, "rename", swap_of("pipe"))'
    kill_inside(
        tmp_path,
        f"""
from ditkit.interop import diffusers_format
{hook}
diffusers_format.export_diffusers({str(run)!r}, {str(out)!r})
""",
    )
    if point == "body":
        assert out.is_dir() and not any(out.iterdir())
        leftover = [tmp_path / name for name in temps(tmp_path)]
        assert len(leftover) == 1 and (leftover[0] / "model_index.json").is_file()  # it was mid-write
    else:
        assert not out.exists() and kept(out).is_dir() and not any(kept(out).iterdir())
    folder = export_diffusers(run, out)  # the next export recovers and succeeds
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "DiTPipeline"
    assert (folder / "ditkit_config.json").is_file() and not kept(out).exists()


# An autoencoder folder: weights, config and training state are replaced together.


@pytest.mark.parametrize("point", POINTS)
def test_a_killed_autoencoder_save_never_mixes_weights_and_state(tmp_path, point):
    cfg = tiny(tmp_path, max_steps=2)
    out = train_vae(cfg)
    changing = ("metrics.jsonl", "vae_train_config.json")  # written in place before the save, as before
    old = files_of(out, changing)
    assert json.loads(old["training/state.json"]) == {"step": 2, "max_steps": 2, "finished": True}
    hook = 'block_at(torch, "save")' if point == "body" else 'block_at(os, "rename", swap_of("vae"))'
    kill_inside(
        tmp_path,
        f"""
from test_vae_training import tiny
from ditkit.training.autoencoder_training import train_vae
{hook}
train_vae(tiny(Path({str(tmp_path)!r}), max_steps=4))  # resumes at 2, saves at 4
""",
    )
    if point == "body":
        assert files_of(out, changing) == old and len(temps(tmp_path)) == 1  # the new weights stayed in the temp
    else:
        assert not out.exists() and files_of(kept(out), changing) == old
    train_vae(cfg.replace(max_steps=4))  # recovers, resumes at step 2 and finishes
    assert json.loads((out / "training" / "state.json").read_text()) == {"step": 4, "max_steps": 4, "finished": True}
    report = json.loads((out / "report.json").read_text())
    assert json.loads((out / "config.json").read_text())["scaling_factor"] == report["scaling_factor"]
    assert not kept(out).exists() and not any(p.name.startswith(TEMP_PREFIX) for p in out.rglob("*"))


def test_an_autoencoder_save_keeps_the_other_files(tmp_path):
    """The swapped folder carries over what it does not rewrite (config, metrics, grids) as it was."""
    out = train_vae(tiny(tmp_path, max_steps=2))
    names = {str(p.relative_to(out)) for p in out.rglob("*")}
    assert {"vae_train_config.json", "metrics.jsonl", "report.json", "training/optimizer.pt"} <= names
    assert any(name.startswith("samples/recon_step_0000002") for name in names)
    assert os.listdir(tmp_path) == ["vae"]
