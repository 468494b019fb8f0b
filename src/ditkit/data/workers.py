"""DataLoader workers that a signal to the whole process group does not kill.

`timeout`, Slurm preemption, `docker stop`, service managers and Ctrl-C signal every process of the group,
data workers included. torch's workers die of SIGTERM (and the main process then fails on a dead worker),
so ditkit's workers ignore SIGINT and SIGTERM from their first instruction (`quiet_worker`, forked while both
are held): only the main process's StopSignal decides, and it shuts the workers down (`close_batches`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset

from ditkit.runtime.stopping import held_signals, quiet_worker


def worker_batches(dataset: Dataset, batch_sampler: Any, num_workers: int, pin_memory: bool = False) -> Iterator:
    """iter(DataLoader(...)) whose `num_workers` worker processes (0: none) ignore SIGINT and SIGTERM."""
    loader = DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=quiet_worker if num_workers else None,
    )
    with held_signals():  # the workers fork now, with both signals held until quiet_worker ignores them
        return iter(loader)


def close_batches(batches: Iterator) -> None:
    """Stop the workers of a `worker_batches` iterator now (they ignore SIGTERM: the ones that do not finish
    their item in time are killed), so that no worker outlives a stopped job."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's own clean shutdown (private, stable)
    if shutdown is None:
        return
    shutdown()
    for worker in getattr(batches, "_workers", ()):
        if worker.is_alive():
            worker.kill()
            worker.join()
