"""Training checkpoints: one folder per step, written atomically, pruned to the last K plus milestones.

Layout: run_dir/checkpoints/step_0001000/ holds model.safetensors and ema.safetensors (weights with the
model config in their metadata, ditkit.model.weights format), optimizer.pt (tensors and plain values only, so
`torch.load(weights_only=True)` reads it) and state.json (schema version, step, file sizes, RNG states,
data position, the run's config). run_dir/checkpoints/latest names the newest folder; `ditkit.load_dit`
follows it. A folder appears under its final name only when complete (`ditkit.runtime.files.atomic_dir`), so a
crash mid-write leaves the previous checkpoint as the newest one; `save` and `load_latest` (the run's owner)
first put back a re-saved step's old folder that a kill between its two renames left aside (`recover_dirs`).

Only finite checkpoints exist: the training loop checks the weights, the EMA and the optimizer state
(`ditkit.training.non_finite`) before it saves, and `load` treats a checkpoint holding inf/NaN like a
corrupt one (the previous one is used). Before writing, checkpoints that the new one makes redundant are
pruned and the free space is checked, so a disk with room for `keep_last` checkpoints never runs full
mid-write.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from ditkit.config import DiffusionConfig
from ditkit.model.dit import DiT
from ditkit.model.weights import (
    EMA_WEIGHTS_FILE,
    RUN_LATEST_FILE,
    describe_load_error,
    load_strict,
    read_diffusion_config,
    read_state_dict,
    save_weights,
)
from ditkit.runtime.errors import InputError
from ditkit.runtime.files import atomic_dir, clean_temp_entries, free_bytes, recover_dirs, write_text
from ditkit.training.non_finite import nested_tensors, non_finite_groups

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
EMA_FILE = EMA_WEIGHTS_FILE
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
_NAME = re.compile(r"^step_(\d{7,})$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoint folders of a run as (step, path), oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return sorted(found)


# RNG state (JSON-safe).


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), NumPy and Python RNG states as JSON-safe values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": _b64(torch.get_rng_state()),
        "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (CUDA states only when the device count matches)."""
    torch.set_rng_state(_unb64(state["torch"]))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_unb64(s) for s in cuda])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# Saving.


def save(
    run_dir: str | os.PathLike,
    *,
    step: int,
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    keep_last: int = 2,
    milestone_every: int = 0,
) -> Path:
    """Write checkpoint `step` (call on one rank; pass the unwrapped model, not DDP/compiled wrappers).

    Returns the checkpoint folder. `extra` (JSON-safe) goes into state.json beside step, RNG states and
    `config`; `data_step` defaults to `step` (the loader resumes at that batch).
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    clean_temp_entries(root)  # left by a crash mid-write
    # Room first: what the new checkpoint makes redundant goes before it is written (never the newest of the
    # earlier ones: the one this run resumed from survives a failed write).
    prune(run_dir, keep_last=max(keep_last - 1, 1), milestone_every=milestone_every, before=step)
    _check_free_space(
        root, step, [*model.state_dict().values(), *ema.state_dict().values(), *nested_tensors(optimizer.state)]
    )
    final = root / checkpoint_name(step)
    with atomic_dir(final) as tmp:  # a full disk leaves no half checkpoint; a re-saved step is swapped whole
        _write_files(tmp, step, model, ema, optimizer, config, extra)
    point_latest(run_dir, step)
    prune(run_dir, keep_last=keep_last, milestone_every=milestone_every, current=step)
    return final


def _write_files(
    tmp: Path,
    step: int,
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    extra: dict[str, Any] | None,
) -> None:
    model_config = model.config
    diffusion = DiffusionConfig.from_dict(config["diffusion"]) if isinstance(config.get("diffusion"), dict) else None
    save_weights(model.state_dict(), model_config, tmp / MODEL_FILE, diffusion)
    save_weights(ema.state_dict(), model_config, tmp / EMA_FILE, diffusion)
    torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
    files = {f: (tmp / f).stat().st_size for f in (MODEL_FILE, EMA_FILE, OPTIMIZER_FILE)}
    state = {
        "schema": SCHEMA_VERSION,
        "step": step,
        "data_step": step,
        "time": time.time(),
        "files": files,
        "rng": rng_state(),
        **(extra or {}),
        "config": config,
    }
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))  # atomic_dir fsyncs every file


FREE_SPACE_MARGIN = 256 << 10  # bytes beyond the tensors (safetensors headers, state.json with the RNG states)


def _check_free_space(root: Path, step: int, tensors: list[Tensor]) -> None:
    """Raise OSError(ENOSPC) naming the sizes and the checkpoint kept when the new one cannot fit."""
    need = sum(t.numel() * t.element_size() for t in tensors) + FREE_SPACE_MARGIN
    free = free_bytes(root)
    if free >= need:
        return
    kept = list_checkpoints(root.parent)
    resume = f"rerun the same command to resume from {kept[-1][1].name}" if kept else "rerun to start again"
    raise OSError(
        errno.ENOSPC,
        f"no space for checkpoint {checkpoint_name(step)} in {str(root)!r}: it needs {need / 2**20:.1f} MiB, "
        f"{free / 2**20:.1f} MiB are free; free some space (or lower keep_last_ckpts), then {resume}",
    )


def point_latest(run_dir: str | os.PathLike, step: int) -> None:
    """Make checkpoints/latest name checkpoint `step` (rewritten only when it names another)."""
    path = Path(run_dir) / CHECKPOINTS_DIR / RUN_LATEST_FILE
    name = checkpoint_name(step)
    try:
        if path.read_text().strip() == name:
            return
    except (OSError, UnicodeDecodeError):
        pass
    write_text(path, name + "\n")


def prune(
    run_dir: str | os.PathLike,
    *,
    keep_last: int,
    milestone_every: int = 0,
    current: int | None = None,
    before: int | None = None,
) -> None:
    """Delete checkpoints but the last `keep_last`, multiples of `milestone_every`, and `current`; with
    `before`, only among the checkpoints of earlier steps (the others are left alone)."""
    found = [c for c in list_checkpoints(run_dir) if before is None or c[0] < before]
    keep = {step for step, _ in found[-keep_last:]} if keep_last > 0 else set()
    if milestone_every > 0:
        keep |= {step for step, _ in found if step % milestone_every == 0}
    if current is not None:
        keep.add(current)
    for step, path in found:
        if step not in keep:
            shutil.rmtree(path, ignore_errors=True)


# Loading.


class CorruptCheckpoint(Exception):
    """A checkpoint folder that cannot be read (truncated, missing files, bad JSON)."""


def read_state(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """state.json of a checkpoint, after checking its schema and that its files have the recorded sizes."""
    ckpt_dir = Path(ckpt_dir)
    try:
        state = json.loads((ckpt_dir / STATE_FILE).read_text())
    except (OSError, ValueError) as err:
        raise CorruptCheckpoint(f"{ckpt_dir}: unreadable {STATE_FILE} ({err})") from None
    schema = state.get("schema") if isinstance(state, dict) else None
    if schema != SCHEMA_VERSION:
        raise CorruptCheckpoint(f"{ckpt_dir}: schema {schema}, expected {SCHEMA_VERSION}")
    for name, size in state.get("files", {}).items():
        path = ckpt_dir / name
        if not path.is_file() or path.stat().st_size != size:
            raise CorruptCheckpoint(f"{ckpt_dir}: {name} is missing or truncated")
    return state


def load(
    ckpt_dir: str | os.PathLike,
    model: DiT,
    ema: DiT | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load one checkpoint into model / EMA / optimizer (strict keys); returns its state.json dict.

    Raises CorruptCheckpoint when the files cannot be read or hold inf/NaN (nothing is modified then) and
    ValueError when they do not fit the model (another preset or resolution).
    """
    ckpt_dir = Path(ckpt_dir)
    state = read_state(ckpt_dir)
    try:  # read everything before touching the model, so a bad file leaves it unchanged
        weights = load_file(str(ckpt_dir / MODEL_FILE))
        ema_weights = load_file(str(ckpt_dir / EMA_FILE)) if ema is not None else None
        opt_state = (
            torch.load(ckpt_dir / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
            if optimizer is not None
            else None
        )
    except Exception as err:
        raise CorruptCheckpoint(f"{ckpt_dir}: {describe_load_error(err)}") from None
    bad = non_finite_groups(
        {
            "the weights": weights.values(),
            "the EMA weights": (ema_weights or {}).values(),
            "the optimizer state": [t for t in nested_tensors(opt_state) if t.is_floating_point()],
        }
    )
    if bad:
        raise CorruptCheckpoint(f"{ckpt_dir}: {', '.join(bad)} hold inf or NaN")
    load_strict(model, weights, source=str(ckpt_dir / MODEL_FILE))
    if ema is not None and ema_weights is not None:
        load_strict(ema, ema_weights, source=str(ckpt_dir / EMA_FILE))
    if optimizer is not None and opt_state is not None:
        optimizer.load_state_dict(opt_state)
    if restore_rng and "rng" in state:
        set_rng_state(state["rng"])
    return state


def load_latest(
    run_dir: str | os.PathLike,
    model: nn.Module,
    ema: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, Any] | None:
    """Load the newest readable checkpoint of a run; None when the run has none.

    A corrupt or partial newest checkpoint is skipped with a warning and the previous one is used; when
    checkpoints exist but none is readable, raise rather than silently start over. Call it as the run's owner:
    it first restores a checkpoint folder that a kill mid-swap left aside (`recover_dirs`).
    """
    recover_dirs(Path(run_dir) / CHECKPOINTS_DIR)
    found = list_checkpoints(run_dir)
    problems = []
    for _, path in reversed(found):
        try:
            state = load(path, model, ema, optimizer)
        except CorruptCheckpoint as err:
            logger.warning("skipping checkpoint %s: %s", path.name, err)
            problems.append(str(err))
            continue
        if problems:
            logger.warning("resumed from %s, the newest readable checkpoint", path.name)
        return state
    if problems:
        raise InputError(
            f"no readable checkpoint in {str(Path(run_dir) / CHECKPOINTS_DIR)!r} "
            f"({'; '.join(problems[:3])}); delete the broken folders or use a new out_dir",
            setting="out_dir",
        )
    return None


def newest_readable(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint folder whose state.json and file sizes check out."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            read_state(path)
        except CorruptCheckpoint:
            continue
        return path
    return None


# Export.


def export_ema(source: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write the EMA weights of a run folder (its newest readable checkpoint), checkpoint folder or
    ema.safetensors file to `out_path`: one safetensors file with the model config, which `load_dit` reads."""
    source = Path(source)
    if (source / CHECKPOINTS_DIR).is_dir():
        ckpt = newest_readable(source)
        if ckpt is None:
            raise InputError(f"run folder {str(source)!r} has no readable checkpoint; train first")
        source = ckpt / EMA_FILE
    elif source.is_dir() and (source / EMA_FILE).is_file():
        source = source / EMA_FILE
    state_dict, config = read_state_dict(source)
    if config is None:
        raise InputError(f"{str(source)!r} carries no ditkit model config; export from a ditkit run folder")
    out = save_weights(state_dict, config, out_path, read_diffusion_config(source, config))
    logger.info("exported EMA weights of %s to %s", source, out)
    return out
