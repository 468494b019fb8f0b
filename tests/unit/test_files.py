"""Atomic writes (ditkit.runtime.files) and progress reporting (ditkit.runtime.progress)."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest

from ditkit.runtime import files, progress
from ditkit.runtime.files import (
    KEPT_PREFIX,
    TEMP_PREFIX,
    atomic_dir,
    atomic_path,
    recover_dir,
    recover_dirs,
    save_npz,
    write_json,
    write_text,
)


def test_atomic_write_replaces_or_leaves_the_old_file(tmp_path):
    path = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    write_json(path, {"new": 1})
    assert path.read_text() == '{\n "new": 1\n}\n'
    assert not any(p.name.startswith(TEMP_PREFIX) for p in tmp_path.iterdir())


def test_save_npz_keeps_its_name(tmp_path):
    path = save_npz(tmp_path / "x.npz", arr_0=np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]
    with np.load(path) as data:
        assert data["arr_0"].tolist() == [0, 1, 2]


def tree(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_atomic_dir_appears_complete_and_fsynced(tmp_path, monkeypatch):
    synced, real_fsync = [], files.fsync
    monkeypatch.setattr(files, "fsync", lambda p: synced.append(p.name) or real_fsync(p))
    path = tmp_path / "out" / "ckpt"
    with atomic_dir(path) as tmp:
        assert tmp.parent == path.parent and tmp.name.startswith(TEMP_PREFIX) and not path.exists()
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text("a")
        (tmp / "b.txt").write_text("b")
    assert tree(path) == {"b.txt": "b", "sub/a.txt": "a"} and os.listdir(path.parent) == ["ckpt"]
    assert {"a.txt", "b.txt", "sub", "out"} <= set(synced) and synced.index("a.txt") < synced.index("sub")


def test_atomic_dir_exception_leaves_the_old_folder(tmp_path):
    path = tmp_path / "ckpt"
    with atomic_dir(path) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(path) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed mid-write")
    assert tree(path) == {"a.txt": "old"} and os.listdir(tmp_path) == ["ckpt"]
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "new") as tmp:
        raise RuntimeError("a new folder never appears")
    assert os.listdir(tmp_path) == ["ckpt"]


def test_atomic_dir_replaces_a_folder_whole(tmp_path):
    path = tmp_path / "ckpt"
    with atomic_dir(path) as tmp:
        (tmp / "a.txt").write_text("old")
        (tmp / "gone.txt").write_text("old")
    with atomic_dir(path) as tmp:
        (tmp / "a.txt").write_text("new")
    assert tree(path) == {"a.txt": "new"} and os.listdir(tmp_path) == ["ckpt"]


def test_a_kill_between_the_renames_is_recovered(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    with atomic_dir(path) as tmp:
        (tmp / "a.txt").write_text("old")
    real_rename = os.rename

    def killed_at_the_second_rename(src, dst):
        if not os.fspath(dst).endswith(KEPT_PREFIX + "ckpt"):
            raise SystemExit("killed")  # stands for SIGKILL: no cleanup below runs
        real_rename(src, dst)

    monkeypatch.setattr(files.os, "rename", killed_at_the_second_rename)
    monkeypatch.setattr(files, "recover_dir", lambda path: False)  # a kill runs no handler
    monkeypatch.setattr(files.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(SystemExit), atomic_dir(path) as tmp:
        (tmp / "a.txt").write_text("new")
    monkeypatch.undo()
    kept = tmp_path / (KEPT_PREFIX + "ckpt")
    assert not path.exists() and tree(kept) == {"a.txt": "old"}  # the old folder, aside and complete
    recover_dirs(tmp_path)
    assert tree(path) == {"a.txt": "old"} and not kept.exists()
    # The other case: killed after the second rename, before the old folder was deleted.
    shutil.copytree(path, kept)
    (path / "a.txt").write_text("new")
    assert recover_dir(path) and tree(path) == {"a.txt": "new"} and not kept.exists()
    with atomic_dir(path) as tmp:  # a write after a kill recovers first too
        (tmp / "a.txt").write_text("newer")
    assert tree(path) == {"a.txt": "newer"} and not kept.exists()


def test_progress_off_a_terminal_logs_lines_per_interval(caplog, monkeypatch):
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    bar = progress.progress(total=10, desc="train", unit="step")
    assert isinstance(bar, progress.LineProgress)
    bar.interval = 0.0  # every update writes a line
    with caplog.at_level(logging.INFO, logger="ditkit"):
        bar.update(4)
        bar.set_postfix(loss="0.5")
        bar.update(6)
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("train: 4/10 step, 40%") and "loss=0.5" in lines[-1]
    assert all("\r" not in line for line in lines) and len(lines) == 3  # two updates and the final line
    assert list(progress.progress(range(3), desc="x")) == [0, 1, 2]
