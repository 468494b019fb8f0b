"""Atomic file writes, the one way ditkit writes a file that someone may read while it is written.

The bytes go to a temp file beside the target (`.tmp-<random>-<name>`, so a crash leaves a name that every
reader skips and the next writer may delete), are flushed to disk, and replace the target with one rename:
a reader, or a run killed at any moment, sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

TEMP_PREFIX = ".tmp-"  # every temp file and folder ditkit writes starts with this


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temp name in the folder of `path` (unique across processes and hosts)."""
    path = Path(path)
    return path.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{path.name}")


def fsync(path: str | os.PathLike) -> None:
    """Flush a file or folder to disk (a folder's fsync makes a rename inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces `path` (fsynced first when `durable`).

    On an exception the temp file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        if durable:
            fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str, *, durable: bool = True) -> Path:
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, *, durable: bool = True) -> Path:
    return write_text(path, json.dumps(obj, indent=1) + "\n", durable=durable)


def save_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """np.savez to `path` atomically (through a file object, so numpy adds no ".npz" to the temp name)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)
