"""Atomic file writes, the one way ditkit writes a file that someone may read while it is written.

The bytes go to a temp file beside the target (`.tmp-<random>-<name>`, so a crash leaves a name that every
reader skips and the next writer may delete), are flushed to disk, and replace the target with one rename:
a reader, or a run killed at any moment, sees the old file or the new one, never half of one. `atomic_dir`
does the same for a whole folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ditkit.runtime.errors import InputError

try:
    import fcntl
except ImportError:  # Windows: locks fall back to O_EXCL files and a pid check
    fcntl = None  # type: ignore[assignment]  # typeshed types the name as the module; None marks its absence

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"  # every temp file and folder ditkit writes starts with this
KEPT_PREFIX = f"{TEMP_PREFIX}old-"  # the old folder that `atomic_dir` keeps until the new one is in place


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


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp folder beside `path` to fill; on success it replaces `path` as a whole.

    Guarantee: `path` holds the complete old folder or the complete new one, never a mix. On success every
    file and folder is fsynced, an existing `path` is renamed to its kept name (`.tmp-old-<name>`), the new
    folder is renamed to `path`, and only then is the kept one deleted. On an exception the temp folder is
    removed and `path` is left as it was. A kill between the two renames leaves `path` missing and its kept
    folder complete: `recover_dir` (run here first, and by owners before they read) puts it back.
    """
    path = Path(path).resolve() if Path(path).is_symlink() else Path(path)  # a link's folder is swapped, not it
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    tmp, kept = temp_path(path), path.with_name(KEPT_PREFIX + path.name)
    tmp.mkdir()
    try:
        yield tmp
        for entry in sorted(tmp.rglob("*"), key=lambda p: len(p.parts), reverse=True):  # files before folders
            if not entry.is_symlink():
                fsync(entry)
        fsync(tmp)
        if path.exists():
            os.rename(path, kept)
        try:
            os.rename(tmp, path)
        except BaseException:
            recover_dir(path)  # the old folder back
            raise
        fsync(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(kept, ignore_errors=True)


def recover_dir(path: str | os.PathLike) -> bool:
    """Undo what a kill inside `atomic_dir` left at `path`; returns whether `path` is a folder now.

    The rule: `path` only ever appears complete, so when it exists its kept old folder is stale and deleted;
    when it is missing, the kept folder (complete: it was `path`) is renamed back. Temp folders of a write
    that did not finish are never used (they may be half written); stale-temp cleanup removes them.
    """
    path = Path(path)
    kept = path.with_name(KEPT_PREFIX + path.name)
    if kept.is_dir():
        if path.exists():
            shutil.rmtree(kept, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):  # another rank of the same run restored it first
                os.rename(kept, path)
    return path.is_dir()


def recover_dirs(folder: str | os.PathLike) -> None:
    """`recover_dir` for every kept folder in `folder` (call it before deleting stale temp entries there)."""
    for kept in Path(folder).glob(f"{KEPT_PREFIX}*"):
        recover_dir(kept.with_name(kept.name[len(KEPT_PREFIX) :]))


def clean_temp_entries(folder: str | os.PathLike) -> None:
    """After a crash, in `folder`: folders `atomic_dir` kept aside are put back (`recover_dirs`), then every
    temp file and folder a killed write left (TEMP_PREFIX) is deleted. Call it only while nobody writes there."""
    recover_dirs(folder)
    for stale in Path(folder).glob(f"{TEMP_PREFIX}*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


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


# Outputs that must not replace an existing file.


def check_outputs(paths: Iterable[str | os.PathLike], *, overwrite: bool = False) -> None:
    """Raise ValueError (one line: the path, the problem, the fix) unless every path can be written.

    A path that is a folder, or whose parent is a file, is always an error; an existing file is one unless
    `overwrite` (the `--overwrite` flag). Call this before any expensive work, so nothing runs in vain.
    """
    for path in map(Path, paths):
        if path.is_dir():
            raise InputError(f"output {str(path)!r} is a folder; give a file path (e.g. {str(path / 'out')!r})")
        parent = next((p for p in path.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise InputError(f"output {str(path)!r} lies under {str(parent)!r}, which is a file; choose another path")
        if (path.exists() or path.is_symlink()) and not overwrite:
            raise InputError(
                f"output {str(path)!r} exists; pass overwrite=True to replace it, or choose another path",
                setting="overwrite",
            )
        check_writable(path.parent)


def check_writable(folder: str | os.PathLike) -> None:
    """Raise InputError unless a file can be created in `folder` (or in its nearest existing parent, where the
    folder is still to be made): creates and deletes a probe file there, so `/proc/x` or a read-only mount fails
    before any work instead of after it."""
    existing = next((p for p in (Path(folder), *Path(folder).parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return  # nothing exists (a relative path's parents) or a file: the callers' own checks say it
    probe = temp_path(existing / "write-probe")
    try:
        probe.write_bytes(b"")
    except OSError as err:
        where = "" if existing == Path(folder) else f" (creating a file in {str(existing)!r} failed)"
        raise InputError(
            f"cannot write in {str(folder)!r}{where}: {err.strerror or err}; choose a writable output path or change "
            "the folder's permissions"
        ) from None
    probe.unlink(missing_ok=True)


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes free for this user on the file system of `path` (a function, so tests can fake a full disk)."""
    return shutil.disk_usage(path).free


def check_free_space(folder: str | os.PathLike, need: int, what: str) -> None:
    """Raise OSError(ENOSPC) naming `what` and the sizes unless `need` bytes are free where `folder` will be."""
    existing = next((p for p in (Path(folder), *Path(folder).parents) if p.is_dir()), Path("."))
    free = free_bytes(existing)
    if free < need:
        raise OSError(
            errno.ENOSPC,
            f"no space for {what} in {str(folder)!r}: it needs about {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB "
            "are free; free some space or choose another output path, then rerun the same command",
        )


def check_output_dir(path: str | os.PathLike) -> Path:
    """Raise InputError when `path` (an output folder) is a file or lies under one; returns it as a Path."""
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise InputError(f"output folder {str(path)!r}: {str(blocker)!r} is a file; choose another folder")
    check_writable(path)
    return path


# An exclusive lock on a file: one process at a time, released by the kernel when the holder dies.


class FileLocked(ValueError):
    """The lock is held by a live process; `holder` is what it wrote (pid, host, since, command)."""

    def __init__(self, path: Path, holder: dict[str, Any]):
        self.path, self.holder = path, holder
        self.who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}" if holder else "another process"
        super().__init__(f"{str(path)!r} is held by {self.who}")


_HELD: set[str] = set()  # locks this process holds (a POSIX lock does not stop its own process)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Hold `path` as a lock file while the block runs; raise FileLocked when a live process holds it.

    The file holds JSON {"pid", "host", "since", "command"} of the holder and is deleted on release. The
    lock itself is a POSIX record lock (fcntl.lockf) on the file: the kernel drops it when the holder exits
    in any way, kill -9 included, and forked children (data-loader workers) do not inherit it. So a lock
    file left by a killed process is stale by construction: the next process takes it over (with a
    warning naming the old pid). Where record locks are unsupported (some network file systems, Windows),
    the file is created with O_EXCL and a holder on this host whose pid no longer runs counts as stale.
    Yields the record written.
    """
    path = Path(path).absolute()
    key = str(path)
    if key in _HELD:
        raise FileLocked(path, {"pid": os.getpid(), "host": socket.gethostname()})
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv)[:300],
    }
    fd = _lock_fd(path) if fcntl is not None else None
    if fd is None:
        fd = _exclusive_create(path)
    previous = _read_record(fd)
    if previous.get("pid") not in (None, os.getpid()):
        logger.warning(
            "taking over the lock %s of pid %s on %s (no longer running)", path, previous["pid"], previous.get("host")
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    os.fsync(fd)
    _HELD.add(key)
    try:
        yield record
    finally:
        _HELD.discard(key)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still locked: nobody can take over a file that is going away
        os.close(fd)


def _lock_fd(path: Path) -> int | None:
    """An fd of `path` holding its record lock; None where record locks are unsupported."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_record(fd)
            os.close(fd)
            if err.errno in (errno.EACCES, errno.EAGAIN):
                raise FileLocked(path, holder) from None
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return None
            raise
        try:  # a releasing holder may have deleted the file between our open and lock: lock the new one
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _exclusive_create(path: Path) -> int:
    """The fallback lock: create `path` exclusively; a record of a dead pid on this host is stale."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            fd = os.open(path, os.O_RDONLY)
            holder = _read_record(fd)
            os.close(fd)
            if holder.get("host") != socket.gethostname() or _pid_alive(holder.get("pid")):
                raise FileLocked(path, holder) from None
            stale = temp_path(path)
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, stale)  # one of several racing processes wins the rename
                os.unlink(stale)
    raise FileLocked(path, {})


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read_record(fd: int) -> dict[str, Any]:
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
