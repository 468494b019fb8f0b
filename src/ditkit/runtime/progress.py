"""Progress reporting: a tqdm bar on a terminal, one log line per interval anywhere else.

tqdm redraws its bar with carriage returns; written to a file (a log, CI output, `nohup`) that becomes one
long line, or hundreds of copies of it. When stderr is not a terminal, `progress` logs a plain line every
`interval_seconds` (and at the end) instead.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from typing import Any

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

logger = logging.getLogger("ditkit")

LOG_INTERVAL_SECONDS = 30.0  # one progress line this often when stderr is not a terminal


def stderr_is_terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class LineProgress:
    """The parts of tqdm's interface ditkit uses, written as log lines at most every `interval_seconds`."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        disable: bool = False,
        leave: bool = True,  # tqdm's; a log line cannot be taken back
        interval_seconds: float | None = None,  # None: LOG_INTERVAL_SECONDS, read when the bar starts
    ) -> None:
        self.iterable, self.desc, self.unit, self.disable = iterable, desc, unit, disable
        self.total = total if total is not None else (len(iterable) if isinstance(iterable, Sized) else None)
        self.n = self.start = initial
        self.interval = LOG_INTERVAL_SECONDS if interval_seconds is None else interval_seconds
        self.t0 = self.last = time.perf_counter()
        self.postfix = ""
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self._write()

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed and self.n > self.start:
            self._write()
        self.closed = True

    def _write(self) -> None:
        if self.disable:
            return
        elapsed = time.perf_counter() - self.t0
        done = self.n - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"]
        if self.total:
            parts.append(f"{100 * self.n / self.total:.0f}%")
        parts.append(f"{rate:.3g} {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"eta {(self.total - self.n) / rate:.0f} s")
        if self.postfix:
            parts.append(self.postfix)
        logger.info(", ".join(parts))


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """A progress bar over `iterable` (or updated by hand): tqdm on a terminal, `LineProgress` otherwise.

    kwargs: total, desc, unit, initial, disable (tqdm's names).
    """
    if stderr_is_terminal():
        return tqdm(iterable, dynamic_ncols=True, mininterval=1.0, **kwargs)
    return LineProgress(iterable, **kwargs)


@contextlib.contextmanager
def logs_above_bar() -> Iterator[None]:
    """Print log lines above a tqdm bar instead of through it (on a terminal; a no-op elsewhere).

    Only loggers that own a console handler are redirected: redirecting the "ditkit" logger and the root
    both would print each line twice (once per handler on the propagation path).
    """
    if not stderr_is_terminal():
        yield
        return
    loggers = [lg for lg in (logging.root, logger) if any(_is_console(h) for h in lg.handlers)]
    with logging_redirect_tqdm(loggers=loggers):
        yield


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (sys.stdout, sys.stderr)
