"""The numerics backend of a run: threads, deterministic kernels, and the precision (fp32, TF32, bf16).

`resolve_precision` turns the user's choice ("auto" by default) into what runs on this device: on CUDA,
"auto" is bf16 autocast with TF32 for the rest; on a CPU it is bf16 only where a short matmul probe
shows bf16 faster than fp32 (CPUs with bf16 units, e.g. AMD Zen 4 / Intel Sapphire Rapids: ~2x), and
fp32 elsewhere (Cascade Lake emulates bf16 ~5x slower; AVX2-only CPUs likewise). The probe's verdict is
cached per CPU model and torch version in ~/.cache/ditkit. Settings are process-wide in torch:
`configure` and `precision_scope` restore what they change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ditkit.runtime.files import write_json

logger = logging.getLogger(__name__)

BF16_PROBE_SIZE = 1024  # side of the square matmul the CPU probe times (~50 ms per rep in fp32 on 2 cores)
BF16_FASTER_BY = 1.2  # bf16 must beat fp32 by this much to be chosen (rounding costs accuracy)


def configure(*, num_threads: int | None = None, deterministic: bool = False) -> Callable[[], None]:
    """Apply the thread count (None: OMP_NUM_THREADS or torch's default) and deterministic kernels."""
    cudnn = torch.backends.cudnn
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.benchmark,
        cudnn.deterministic,
    )
    threads = num_threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(True)
        cudnn.benchmark, cudnn.deterministic = False, True

    def restore() -> None:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        cudnn.benchmark, cudnn.deterministic = saved[3:]

    return restore


# Precision.


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """ "fp32", "tf32" or "bf16": what `precision` ("auto", ...) means on `device`."""
    device = torch.device(device)
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if cpu_bf16_is_faster() else "fp32"


@contextlib.contextmanager
def precision_scope(precision: str, device: torch.device | str) -> Iterator[None]:
    """TF32 matmuls and convolutions on CUDA for "tf32" and "bf16" (what autocast leaves in fp32), off for
    "fp32"; restored afterwards. `precision` must be resolved (see `resolve_precision`)."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32)
    if torch.device(device).type == "cuda":
        matmul.allow_tf32 = cudnn.allow_tf32 = precision in ("tf32", "bf16")
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


def autocast(device: torch.device | str, precision: str) -> Any:
    """bf16 autocast for "bf16", nothing otherwise (a context manager either way)."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def autocast_dtype(precision: str) -> torch.dtype | None:
    return torch.bfloat16 if precision == "bf16" else None


def cpu_has_bf16_units() -> bool:
    """True when the CPU reports native bf16 arithmetic (avx512_bf16 or AMX-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine() == "arm64"  # Apple silicon has bf16 units
    return "avx512_bf16" in flags or "amx_bf16" in flags


@lru_cache(maxsize=1)
def cpu_bf16_is_faster() -> bool:
    """Whether bf16 matmuls beat fp32 by BF16_FASTER_BY on this CPU: cached on disk after one ~0.5 s probe.

    CPUs without bf16 units are answered without probing (bf16 is emulated there, several times slower).
    """
    if not cpu_has_bf16_units():
        return False
    key = f"{cpu_name()}|torch {torch.__version__}|{torch.get_num_threads()} threads"
    cache = _cache_dir() / "cpu_bf16_probe.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        fp32, bf16 = _matmul_seconds(torch.float32), _matmul_seconds(torch.bfloat16)
        known[key] = {"fp32_s": fp32, "bf16_s": bf16, "bf16_faster": fp32 / bf16 >= BF16_FASTER_BY}
        logger.info("CPU bf16 probe: fp32 %.1f ms, bf16 %.1f ms per matmul (%s)", 1e3 * fp32, 1e3 * bf16, key)
        with contextlib.suppress(OSError):
            write_json(cache, known, durable=False)
    return bool(known[key]["bf16_faster"])


def _matmul_seconds(dtype: torch.dtype, reps: int = 5) -> float:
    a = torch.randn(BF16_PROBE_SIZE, BF16_PROBE_SIZE, dtype=dtype)
    b = torch.randn(BF16_PROBE_SIZE, BF16_PROBE_SIZE, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return sorted(times)[reps // 2]


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ditkit"
