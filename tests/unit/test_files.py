"""Atomic writes (ditkit.runtime.files) and progress reporting (ditkit.runtime.progress)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ditkit.runtime import progress
from ditkit.runtime.files import TEMP_PREFIX, atomic_path, save_npz, write_json, write_text


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
