"""The numerics backend of a run: threads, deterministic kernels, TF32 and bf16 autocast.

Settings are process-wide in torch; `configure` applies a run's and returns a function that restores the
previous ones, so library callers (tests, notebooks) get their process back as it was.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import torch


def configure(*, num_threads: int | None = None, deterministic: bool = False, tf32: bool = True) -> Callable[[], None]:
    """Apply thread count (None: OMP_NUM_THREADS or torch's default), deterministic kernels and TF32."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.benchmark,
        cudnn.deterministic,
        matmul.allow_tf32,
        cudnn.allow_tf32,
    )
    threads = num_threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(True)
        cudnn.benchmark, cudnn.deterministic = False, True
    matmul.allow_tf32 = cudnn.allow_tf32 = tf32

    def restore() -> None:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        cudnn.benchmark, cudnn.deterministic, matmul.allow_tf32, cudnn.allow_tf32 = saved[3:]

    return restore


def autocast(device: torch.device, precision: str) -> Any:
    """bf16 autocast for "bf16", nothing otherwise (a context manager either way)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def autocast_dtype(precision: str) -> torch.dtype | None:
    return torch.bfloat16 if precision == "bf16" else None
