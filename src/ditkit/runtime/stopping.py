"""Why a training run stops early, the exit code each reason gets from the `ditkit` command, and the one
line that `ditkit` prints for an error a user can cause (`exit_status`). Imports no torch.

Exit codes (documented in the README): 0 done, 2 bad input (an `InputError`, one line on stderr; also
unreadable or unwritable files and a full disk), 3 the loss, the gradients or the weights stopped being
finite, 70 an internal error: a bug in ditkit (any other exception; the traceback is printed; EX_SOFTWARE
of sysexits.h), 130 interrupted by SIGINT (Ctrl-C), 143 by SIGTERM (128 + the signal number, as shells
report it). An interrupted run has written a checkpoint: rerun the command to resume.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pickle
import signal
import threading
import zipfile
from collections.abc import Iterator, Sequence
from typing import Any

from ditkit.runtime.errors import InputError

logger = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 3
EXIT_BUG = 70  # EX_SOFTWARE: an exception that is not bad input is a bug in ditkit
EXIT_SIGINT = 128 + int(signal.SIGINT)


class TrainingStopped(RuntimeError):
    """The run stopped early on purpose; the message says why and how to go on."""

    exit_code = 1


class NonFiniteLoss(TrainingStopped):
    exit_code = EXIT_NON_FINITE


class Interrupted(TrainingStopped):
    """SIGINT/SIGTERM: a checkpoint was written; rerun the same command to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopSignal:
    """Turns the first SIGINT/SIGTERM into a flag checked between steps; a second one acts as usual (under
    torchrun it is ignored: the agent forwards the signal the whole group got, then kills after its timeout)."""

    def __init__(self, after: str = "checkpointing after this step") -> None:
        self.signum, self.after = 0, after
        self.pid = os.getpid()
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.pid:  # a forked data-loader worker: the main process decides
            return
        torchrun = bool(os.environ.get(TORCHRUN_ENV))
        if self.signum and torchrun:  # torchrun's agent forwards what the group got: the checkpoint goes on
            return
        self.signum = signum
        if not torchrun:  # under torchrun the agent stops the ranks (SIGKILL after its shutdown timeout)
            self.restore()
        logger.warning(
            "got %s: %s%s",
            signal.Signals(signum).name,
            self.after,
            "" if torchrun else " (send it again to stop at once)",
        )

    def requested(self) -> int:
        """The signal number if any rank got one (a CPU-side collective under DDP), else 0."""
        from ditkit.runtime import distributed  # here: this module stays free of torch for the CLI's error path

        if not distributed.is_initialized():
            return self.signum
        return (self.signum or int(signal.SIGTERM)) if distributed.any_rank(bool(self.signum)) else 0

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


TORCHRUN_ENV = "TORCHELASTIC_RUN_ID"  # set by torchrun in every rank
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def quiet_worker(worker_id: int) -> None:
    """A DataLoader `worker_init_fn`: the worker ignores SIGINT and SIGTERM (torch's own SIGTERM handler would
    let a signal to the whole process group kill it, and the main process fail on a dead worker); the main
    process's StopSignal decides, then shuts the workers down. Undoes `held_signals`' mask in the worker."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """SIGINT and SIGTERM wait while this thread forks data workers: a worker inherits the mask and ignores
    both (`quiet_worker`) before it can get one; the main process gets a held one on leaving."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def stopped(signum: int, what: str) -> Interrupted:
    """The exception that ends a resumable job (extraction, sampling) stopped by `signum`; `what` says what is
    kept, e.g. "after 96 of 200 images"."""
    return Interrupted(
        f"stopped by {signal.Signals(signum).name} {what}; rerun the same command to resume",
        signum,
    )


def interrupted(signum: int, step: int) -> Interrupted:
    """The exception to raise after the checkpoint of `step` when `signum` stopped the run."""
    return Interrupted(
        f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint written. "
        "Rerun the same command to resume",
        signum,
    )


# How an error reads on the command line.

_UNREADABLE = (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, json.JSONDecodeError, UnicodeDecodeError)


def exit_status(err: BaseException, inputs: Sequence[str] = ()) -> tuple[int, str] | None:
    """(exit code, one line) for an error a user can cause or a run that stopped; None for a bug (EXIT_BUG).

    Bad input is an `InputError` (raised where the input is checked), a damaged or unreadable input file, or an
    OSError on a user's path; a bare ValueError or TypeError from the library is a bug like any other.

    `inputs` are the input paths of the command, named when a damaged file raised an error that names none
    (numpy and zipfile errors do not say which file they read).
    """
    if isinstance(err, KeyboardInterrupt):
        return EXIT_SIGINT, "interrupted"
    if isinstance(err, TrainingStopped):
        return err.exit_code, one_line(err)
    named = " or ".join(repr(p) for p in inputs) or "an input file"
    if isinstance(err, ValueError) and "allow_pickle" in one_line(err):  # numpy: never pass on its advice to unpickle
        return EXIT_BAD_INPUT, (
            f"error: cannot read {named}: not an .npz/.npy of plain arrays (damaged, another format, or pickled "
            "objects, which ditkit never loads); save arrays with np.savez(path, images=uint8_array, labels=...)"
        )
    if isinstance(err, _UNREADABLE) or type(err).__name__ == "SafetensorError":
        return EXIT_BAD_INPUT, (
            f"error: cannot read {named} ({type(err).__name__}: {one_line(err)}): the file is damaged, "
            "truncated or not the kind of file expected; recreate it"
        )
    if isinstance(err, OSError):
        return EXIT_BAD_INPUT, f"error: {_os_error(err)}"
    if isinstance(err, InputError):
        return EXIT_BAD_INPUT, f"error: {one_line(err)}"
    return None  # any other ValueError, TypeError, KeyError, ...: a bug, never the user's mistake


def _os_error(err: OSError) -> str:
    """An OSError as a sentence with its path and the fix ("No such file" only when that is the cause)."""
    path = " or ".join(repr(str(f)) for f in (err.filename, err.filename2) if f is not None)
    if err.strerror and err.errno and err.strerror != os.strerror(err.errno):
        return one_line(Exception(err.strerror))  # a message ditkit wrote (e.g. a full disk while checkpointing)
    if isinstance(err, PermissionError):
        return f"permission denied: {path or 'a file'}; change its permissions or choose another path"
    if isinstance(err, FileNotFoundError):
        return f"no such file or folder: {path or '?'}"
    if isinstance(err, IsADirectoryError):
        return f"{path or 'a path'} is a folder, not a file; give a file path"
    if isinstance(err, NotADirectoryError):
        return f"{path or 'a path'}: a part of it is a file, not a folder; choose another path"
    if isinstance(err, FileExistsError):
        return f"{path or 'a path'} exists; choose another path"
    if err.errno == errno.ENOSPC:
        return f"no space left on the device of {path or 'the output'}; free some space, then rerun the same command"
    return one_line(err) + (f" ({path})" if path and path not in one_line(err) else "")


def one_line(err: BaseException) -> str:
    """The message of `err` on one line (its type name when it has none, or when str() itself fails)."""
    try:
        text = str(err)
    except Exception:
        text = ""
    return " ".join(text.split()) or type(err).__name__
