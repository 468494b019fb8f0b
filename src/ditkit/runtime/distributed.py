"""Process-group setup for single-process and torchrun runs, rank helpers and rank-0 logging.

One code path for both: without torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR)
there is one process and no process group (edm2's `distributed.init` idea). Backend gloo on CPU,
NCCL on CUDA with device cuda:LOCAL_RANK, so multi-node runs pick the right GPU (the official DiT
uses the global rank there).
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ditkit.runtime.errors import InputError

logger = logging.getLogger("ditkit")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, world size, rank on its node, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


_control_group: Any = None  # a gloo group for CPU-side flags when the main backend is NCCL
_owns_group = False  # init() created the process group (so shutdown() may destroy it)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise InputError(f"environment variable {name}={value!r} is not an integer; launch with torchrun") from None


def init(device: str = "auto", timeout_minutes: float = 30.0) -> DistInfo:
    """Join torchrun's process group (when WORLD_SIZE > 1) and pick this process's device.

    `device`: "auto" (cuda:LOCAL_RANK if CUDA is available, else CPU), "cpu", "cuda" (cuda:LOCAL_RANK)
    or "cuda:N" (one process). Idempotent.
    """
    rank, world_size, local_rank = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise InputError(f"RANK={rank} is outside WORLD_SIZE={world_size}; launch with torchrun --nproc_per_node N")
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise InputError(
            f"device {device!r} requested but CUDA is not available; use device 'cpu' (or 'auto')", setting="device"
        )
    if use_cuda and world_size == 1 and ":" in device:  # one process on a chosen GPU
        local_rank = resolve_device(device).index or 0
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise InputError(
                f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPUs; "
                "use --nproc_per_node <= the GPU count"
            )
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        kwargs: dict[str, Any] = {"device_id": dev} if use_cuda else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes), **kwargs)
        global _control_group, _owns_group
        _control_group = dist.new_group(backend="gloo") if use_cuda else None
        _owns_group = True
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def resolve_device(name: str = "auto") -> torch.device:
    """One process's device: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N", checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N", setting="device") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise InputError(
                f"device {name!r} does not exist (this machine has {count} CUDA GPUs); use device 'cpu'",
                setting="device",
            )
    elif device.type != "cpu":
        raise InputError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N", setting="device")
    return device


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of x over ranks (a new tensor; x itself on one process)."""
    if not is_initialized():
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / dist.get_world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is True on any rank (a CPU-side collective; no device sync)."""
    if not is_initialized():
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group)
    return bool(t.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` of rank `src` on every rank (pickled; for small Python values)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_control_group)
    return box[0]


def gather_objects(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's `obj`, in rank order, on rank `dst` (None elsewhere)."""
    if not is_initialized():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst, group=_control_group)
    return out


def shutdown(barrier: bool = True) -> None:
    """Leave the process group that init() created (after a barrier unless a rank failed)."""
    global _control_group, _owns_group
    if is_initialized() and _owns_group:
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
        _control_group, _owns_group = None, False


def setup_logging(rank: int, log_file: str | os.PathLike | None = None) -> Callable[[], None]:
    """Rank 0 logs INFO to stderr (unless a handler exists) and to `log_file`; others only warnings.

    Returns a function that undoes the changes (train() calls it at the end).
    """
    added: list[logging.Handler] = []
    previous_level = logger.level
    if rank == 0:
        logger.setLevel(logging.INFO)
        if not logging.getLogger().handlers and not logger.handlers:
            console = logging.StreamHandler()
            console.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
            added.append(console)
        if log_file is not None:
            file_handler = logging.FileHandler(log_file)
            file_handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s"))
            added.append(file_handler)
        for handler in added:
            logger.addHandler(handler)
    else:
        logger.setLevel(logging.WARNING)  # child loggers ("ditkit.training.loop", ...) inherit this level

    def undo() -> None:
        for handler in added:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(previous_level)

    return undo
