"""Why a training run stops early, and the exit code each reason gets from the `ditkit` command.

Exit codes (documented in the README): 0 done, 2 bad input (one line on stderr), 3 the loss or the
gradients stopped being finite, 130 interrupted by SIGINT (Ctrl-C), 143 by SIGTERM (128 + the signal
number, as shells report it). An interrupted run has written a checkpoint: rerun the command to resume.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from ditkit import distributed

logger = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 3


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
    """Turns the first SIGINT/SIGTERM into a flag checked between steps; a second one acts as usual."""

    def __init__(self) -> None:
        self.signum = 0
        self.pid = os.getpid()
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.pid:  # a forked data-loader worker: the main process decides
            return
        self.signum = signum
        self.restore()
        logger.warning(
            "got %s: checkpointing after this step (send it again to stop at once)", signal.Signals(signum).name
        )

    def requested(self) -> int:
        """The signal number if any rank got one (a CPU-side collective under DDP), else 0."""
        if not distributed.is_initialized():
            return self.signum
        return (self.signum or int(signal.SIGTERM)) if distributed.any_rank(bool(self.signum)) else 0

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


def interrupted(signum: int, step: int) -> Interrupted:
    """The exception to raise after the checkpoint of `step` when `signum` stopped the run."""
    return Interrupted(
        f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint written. "
        "Rerun the same command to resume",
        signum,
    )
