"""Training: `train(cfg)` for one process or torchrun DDP, `train_step`, `update_ema`.

The paper's recipe as official train.py runs it (anchors 2.8): AdamW, constant LR, EMA, label dropout,
MSE + VLB loss, global batch split over ranks. Bookkeeping follows edm2/torchtitan: every random draw of
step s comes from a generator seeded by (seed, s) over the GLOBAL batch, of which each rank takes its
rows, so the numbers depend on neither the process count nor an interruption; a rerun of the same
command resumes from the newest good checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ditkit import checkpoint, distributed
from ditkit.config import RESUMABLE_FIELDS, TrainConfig, validate_for_world
from ditkit.diffusion import GaussianDiffusion, diffusion_from_config
from ditkit.latents import LatentStore
from ditkit.model import DiT
from ditkit.monitor import RunMonitor

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
LOG_FILE = "log.txt"
_STEP_STREAM, _GLOBAL_STREAM = 1, 2  # seed streams: per-step draws, torch's global RNG


class TrainingStopped(RuntimeError):
    """The run stopped early on purpose; the message says why and how to go on. `exit_code` for the CLI."""

    exit_code = 1


class NonFiniteLoss(TrainingStopped):
    exit_code = 3


class Interrupted(TrainingStopped):
    """SIGINT/SIGTERM: a checkpoint was written; rerun the same command to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


# Building blocks (pure functions, usable without train()).


def mix_seed(*words: int) -> int:
    """A 63-bit seed from a tuple of ints (NumPy's SeedSequence hash): nearby tuples, unrelated streams."""
    state = np.random.SeedSequence([w % 2**64 for w in words]).generate_state(2, np.uint32)
    return int(state[0]) | (int(state[1]) & 0x7FFFFFFF) << 32


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and torch.compile wrappers (what checkpoints and the EMA see)."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model over the parameters (one foreach kernel); decay 0 copies."""
    ema_params = list(ema.parameters())
    model_params = list(unwrap(model).parameters())
    if decay == 0.0:
        torch._foreach_copy_(ema_params, model_params)
    else:
        torch._foreach_lerp_(ema_params, model_params, 1.0 - decay)


def ema_decay_at(cfg: TrainConfig, step: int) -> float:
    """EMA decay for the update after optimizer step `step` (0-based); warm-up caps it: (1 + s) / (10 + s)."""
    return min(cfg.ema_decay, (1 + step) / (10 + step)) if cfg.ema_warmup else cfg.ema_decay


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then constant."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr


def draw_step(
    generator: torch.Generator | None,
    batch_size: int,
    shape: tuple[int, ...],
    num_timesteps: int,
    *,
    label_dropout: float = 0.0,
    latent_noise: bool = False,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """All random draws of one optimizer step for `batch_size` rows, in a fixed order.

    "t" (N,) timesteps, "noise" (N, *shape), "drop" (N,) bool label-dropout mask when label_dropout > 0,
    "latent_noise" (N, *shape) VAE posterior noise when asked. generator None: torch's global RNG.
    """
    device = generator.device if generator is not None else torch.device(device)
    draws = {
        "t": torch.randint(0, num_timesteps, (batch_size,), generator=generator, device=device),
        "noise": torch.randn((batch_size, *shape), generator=generator, device=device),
    }
    if label_dropout > 0:
        draws["drop"] = torch.rand((batch_size,), generator=generator, device=device) < label_dropout
    if latent_noise:
        draws["latent_noise"] = torch.randn((batch_size, *shape), generator=generator, device=device)
    return draws


def take_over_label_dropout(model: nn.Module) -> float:
    """Switch off the label embedder's own torch.rand dropout and return its probability.

    train() draws the dropout mask with the step's other draws instead (see `draw_step`), which makes it
    independent of the rank layout and exact on resume; the weights and the null row are unchanged.
    """
    embedder = getattr(unwrap(model), "y_embedder", None)
    if embedder is None:
        return 0.0
    prob, embedder.dropout_prob = float(embedder.dropout_prob), 0.0
    return prob


def train_step(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    draws: dict[str, Tensor] | None = None,
    micro_batch_size: int | None = None,
    max_grad_norm: float | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """One optimizer step on x (N, C, H, W), labels y (N,): forward, MSE + VLB, backward, clip, AdamW.

    Randomness: `draws` from `draw_step` ("t", "noise", optional "drop" replacing labels by the null class,
    for a model whose own dropout is switched off by `take_over_label_dropout`), or else t and noise are
    drawn from `generator` and label dropout is the model's own. Micro-batches of `micro_batch_size` rows
    accumulate gradients (DDP syncs only on the last). Returns detached 0-dim tensors "loss", "mse", "vb"
    (batch means) and "grad_norm" (before clipping): no host sync, read them when logging.
    """
    n = x.shape[0]
    if draws is None:
        draws = draw_step(generator, n, tuple(x.shape[1:]), diffusion.num_timesteps, device=x.device)
    if y is not None and "drop" in draws:
        null_class = unwrap(model).config.num_classes  # type: ignore[union-attr]
        y = torch.where(draws["drop"], torch.full_like(y, null_class), y)
    micro = micro_batch_size or n
    starts = range(0, n, micro)
    autocast = torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()

    def forward(x_t: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        return model(x_t, t, **kwargs).float()  # loss math in fp32 even under autocast

    optimizer.zero_grad(set_to_none=True)
    sums = {k: torch.zeros((), device=x.device) for k in ("loss", "mse", "vb")}
    for i, start in enumerate(starts):
        rows = slice(start, start + micro)
        last = i == len(starts) - 1
        no_sync = getattr(model, "no_sync", None)
        with no_sync() if no_sync is not None and not last else nullcontext():
            kwargs = {"y": y[rows]} if y is not None else {}
            with autocast:
                terms = diffusion.training_losses(
                    forward, x[rows], draws["t"][rows], kwargs, noise=draws["noise"][rows]
                )
            (terms["loss"].mean() * (terms["loss"].shape[0] / n)).backward()
        for k in sums:
            sums[k] += terms[k].detach().sum()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if max_grad_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(params, max_grad_norm, grad_norm)
    optimizer.step()
    return {**{k: v / n for k, v in sums.items()}, "grad_norm": grad_norm.detach()}


def build_model_and_optimizer(cfg: TrainConfig, device: torch.device) -> tuple[DiT, DiT, torch.optim.Optimizer]:
    """The DiT (seeded init, identical on every rank), its EMA copy (eval, no grad) and AdamW (fused)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = DiT(cfg.model)
    model = model.to(device).train()
    model.grad_checkpointing = cfg.grad_checkpointing
    ema = copy.deepcopy(model).eval().requires_grad_(False)  # = update_ema(ema, model, 0)
    kwargs = {"lr": cfg.lr, "betas": cfg.adam_betas, "eps": cfg.adam_eps, "weight_decay": cfg.weight_decay}
    try:
        optimizer = torch.optim.AdamW(model.parameters(), fused=True, **kwargs)  # type: ignore[arg-type]
    except (RuntimeError, TypeError):  # fused kernels missing for this device / torch build
        optimizer = torch.optim.AdamW(model.parameters(), foreach=True, **kwargs)  # type: ignore[arg-type]
    return model, ema, optimizer


# Run directory.


def read_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The TrainConfig stored in a run's config.json."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"cannot read {str(path)!r} ({err}); pass a ditkit run folder") from None


def resume_conflicts(stored: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """'field: old -> new' for every setting that may not change when a run resumes."""
    new = cfg.to_dict()
    return [
        f"{k}: {stored[k]!r} -> {new[k]!r}"
        for k in sorted(new)
        if k not in RESUMABLE_FIELDS and k in stored and json.loads(json.dumps(new[k])) != stored[k]
    ]


def prepare_run_dir(cfg: TrainConfig, is_main: bool) -> Path:
    """Check that an existing run was started with compatible settings; rank 0 writes config.json."""
    run_dir = Path(cfg.out_dir)
    if checkpoint.list_checkpoints(run_dir) and (run_dir / CONFIG_FILE).is_file():
        try:
            stored = json.loads((run_dir / CONFIG_FILE).read_text())
        except ValueError:
            stored = {}
        conflicts = resume_conflicts(stored, cfg)
        if conflicts:
            raise ValueError(
                f"run folder {str(run_dir)!r} was started with other settings "
                f"({'; '.join(conflicts)}); rerun with the original settings to resume, "
                "or pass a new --out-dir"
            )
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f".tmp-{os.getpid()}-{CONFIG_FILE}"
        tmp.write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
        os.replace(tmp, run_dir / CONFIG_FILE)
    distributed.barrier()
    return run_dir


# Data.


def open_training_data(cfg: TrainConfig, device: torch.device) -> tuple[Any, Any, tuple[int, int, int]]:
    """(dataset, online VAE encoder or None, model input shape), checked against the model config.

    Every mismatch (classes, channels, size) is a ValueError before any model is built.
    """
    from ditkit import data
    from ditkit.autoencoder import load_vae

    spec = cfg.data
    digits = spec is None or spec.strip().lower().partition(":")[0] in ("mnist", "digits")
    flip = not digits if cfg.flip is None else cfg.flip
    if cfg.flip is None and spec and (Path(spec) / "meta.json").is_file():
        flip = bool(LatentStore(spec, flip=False).meta.get("mirror", False))  # auto: if mirrors exist
    dataset = data.open_dataset(spec, cfg.image_size, flip)
    data.check_num_classes(dataset, cfg.model.num_classes)
    encoder = None
    if dataset.is_latent:
        shape = tuple(dataset.item_shape)
        what = f"latents of latent store {spec!r}"
    elif cfg.is_latent:
        encoder = load_vae(cfg.vae, device)
        assert encoder is not None
        vae_in = int(encoder.vae.config.in_channels)
        if dataset.channels != vae_in:
            raise ValueError(
                f"VAE {cfg.vae!r} encodes {vae_in}-channel images but the data have "
                f"{dataset.channels} channels; use --vae none (pixel space) or another VAE"
            )
        size = dataset.image_size // encoder.downsample
        if dataset.image_size % encoder.downsample:
            raise ValueError(
                f"image_size {dataset.image_size} is not a multiple of the VAE downsampling "
                f"{encoder.downsample}; pass --image-size {size * encoder.downsample}"
            )
        shape = (encoder.latent_channels, size, size)
        what = f"VAE latents of {dataset.image_size} px images"
    else:
        shape = tuple(dataset.item_shape)
        what = f"{dataset.image_size} px images (pixel space)"
    m = cfg.model
    if shape != (m.in_channels, m.input_size, m.input_size):
        raise ValueError(
            f"the model takes {m.in_channels}x{m.input_size}x{m.input_size} inputs but the data "
            f"give {'x'.join(map(str, shape))} ({what}); pass --in-channels {shape[0]} "
            f"--input-size {shape[1]} (or a preset / --image-size / --vae that match)"
        )
    return dataset, encoder, shape  # type: ignore[return-value]


def _encode(encoder: Any, x: Tensor, noise: Tensor, chunk: int) -> Tensor:
    """Scaled VAE latents of images x: posterior mean + std * noise (the step's draw), in chunks."""
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], chunk):
            mean, std = encoder.encode_moments(x[i : i + chunk])
            out.append((mean + std * noise[i : i + chunk]) * encoder.scale)
    return torch.cat(out)


# Reporting (the rest lives in ditkit.monitor).


class _Running:
    """Per-step stats since the last report, kept on the device; `flush` syncs once and checks finiteness."""

    def __init__(self) -> None:
        self.rows: list[Tensor] = []
        self.first_step = 0
        self.t0 = time.perf_counter()

    def add(self, step: int, stats: dict[str, Tensor]) -> None:
        if not self.rows:
            self.first_step = step
        self.rows.append(torch.stack([stats["loss"], stats["mse"], stats["vb"], stats["grad_norm"]]))

    def flush(self, run_dir: Path) -> dict[str, float]:
        """Means over the interval and the ranks; raises NonFiniteLoss naming the first bad step."""
        table = distributed.all_reduce_mean(torch.stack(self.rows).float()).tolist()  # (k, 4), one host sync
        for i, row in enumerate(table):
            if not math.isfinite(row[0]):
                last = checkpoint.newest_readable(run_dir)
                kept = f"the last good checkpoint {last.name} is kept" if last else "no checkpoint yet"
                raise NonFiniteLoss(
                    f"loss is {row[0]} at step {self.first_step + i + 1}; training stopped "
                    f"({kept}). Lower --lr, set --max-grad-norm or use --precision fp32, "
                    "then rerun to resume"
                )
        elapsed = time.perf_counter() - self.t0
        means = np.asarray(table).mean(axis=0).tolist()
        self.rows, self.t0 = [], time.perf_counter()
        return {
            "loss": means[0],
            "mse": means[1],
            "vb": means[2],
            "grad_norm": means[3],
            "steps_per_sec": len(table) / elapsed if elapsed > 0 else 0.0,
        }


class _StopSignal:
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


# The loop.


def train(cfg: TrainConfig) -> Path:
    """Train the run in cfg.out_dir, resuming from its newest good checkpoint; returns the run folder.

    Runs as one process, or as one rank of `torchrun --nproc_per_node N -m ditkit train ...` (DDP).
    Raises ValueError for bad settings or data (before building anything), NonFiniteLoss when the loss
    stops being finite, Interrupted after SIGINT/SIGTERM (a checkpoint is written first).
    """
    # Setup.
    info = distributed.init(cfg.device)
    validate_for_world(cfg, info.world_size, info.device.type)
    _check_sampling_settings(cfg)
    teardown, clean = ExitStack(), False
    teardown.callback(_configure_torch(cfg))
    try:
        # Run directory (a finished run is a no-op; a larger max_steps continues it).
        run_dir = prepare_run_dir(cfg, info.is_main)
        teardown.callback(distributed.setup_logging(info.rank, run_dir / LOG_FILE if info.is_main else None))
        if _finished(run_dir, cfg):
            clean = True
            return run_dir

        # Data, checked against the model config before the model exists.
        dataset, encoder, shape = open_training_data(cfg, info.device)
        decoder, image_shape = _decoder_for(cfg, dataset, encoder, shape, info.device)

        # Model, EMA, optimizer; resume from the newest good checkpoint.
        model, ema, optimizer = build_model_and_optimizer(cfg, info.device)
        label_dropout = take_over_label_dropout(model)
        diffusion = diffusion_from_config(cfg.diffusion)
        start = _resume(run_dir, model, ema, optimizer, info)
        net = _wrap(model, cfg, info)

        # Batches from `start` on, and the reports.
        from ditkit import data

        stop = _StopSignal()  # before the loader: forked workers inherit it and survive Ctrl-C
        teardown.callback(stop.restore)
        loader = data.build_loader(
            dataset,
            batch_size=cfg.global_batch_size,
            rank=info.rank,
            world_size=info.world_size,
            seed=cfg.seed,
            start_step=start,
            num_workers=cfg.num_workers,
            pin_memory=info.device.type == "cuda",
        )
        monitor = RunMonitor(cfg, info, run_dir, start, dataset, shape, decoder, image_shape)
        teardown.callback(monitor.close)
        micro = cfg.micro_batch_size or cfg.global_batch_size // info.world_size
        logger.info(
            "training %s from step %d to %d: %d process(es), %s, global batch %d (micro-batch %d), %.2fM parameters",
            run_dir,
            start,
            cfg.max_steps,
            info.world_size,
            info.device,
            cfg.global_batch_size,
            micro,
            sum(p.numel() for p in model.parameters()) / 1e6,
        )

        # Loop.
        step, running = start, _Running()
        while step < cfg.max_steps:
            x, y = _to_device(next(loader), info.device)
            draws = _rank_draws(cfg, step, shape, diffusion.num_timesteps, label_dropout, encoder, info)
            if encoder is not None:
                x = _encode(encoder, x, draws.pop("latent_noise"), micro)
            _seed_global_rng(mix_seed(cfg.seed, _GLOBAL_STREAM, info.rank, step), info.device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, step)
            stats = train_step(
                net,
                diffusion,
                optimizer,
                x,
                y if cfg.model.num_classes else None,
                draws=draws,
                micro_batch_size=micro,
                max_grad_norm=cfg.max_grad_norm,
                autocast_dtype=torch.bfloat16 if cfg.precision == "bf16" else None,
            )
            update_ema(ema, model, ema_decay_at(cfg, step))
            running.add(step, stats)
            step += 1
            monitor.progress.update(1)
            signum = stop.requested()
            due = _due(cfg, step, signum)
            if due:
                record = {
                    "step": step,
                    **running.flush(run_dir),
                    "lr": lr_at(cfg, step - 1),
                    "ema_decay": ema_decay_at(cfg, step - 1),
                }
                record["img_per_sec"] = record["steps_per_sec"] * cfg.global_batch_size
                if "ckpt" in due:
                    _save_checkpoint(run_dir, step, model, ema, optimizer, cfg, info)
                monitor.report(step, due, record, ema)
            if signum:
                raise Interrupted(
                    f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint "
                    "written. Rerun the same command to resume",
                    signum,
                )
        logger.info("done: %s reached step %d", run_dir, step)
        clean = True
        return run_dir

    # Teardown.
    finally:
        teardown.close()
        distributed.shutdown(barrier=clean)


def _finished(run_dir: Path, cfg: TrainConfig) -> bool:
    newest = checkpoint.newest_readable(run_dir)
    done = checkpoint.read_state(newest)["step"] if newest is not None else 0
    if done >= cfg.max_steps:
        logger.info(
            "%s is complete at step %d (max_steps %d): nothing to do; raise max_steps to continue",
            run_dir,
            done,
            cfg.max_steps,
        )
    return done >= cfg.max_steps


def _resume(
    run_dir: Path, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer, info: distributed.DistInfo
) -> int:
    """Load the newest good checkpoint (if any) and return its step, the same on every rank."""
    state = checkpoint.load_latest(run_dir, model, ema, optimizer)
    start = int(state["step"]) if state else 0
    if distributed.broadcast_object(start) != start:
        raise RuntimeError(
            f"rank {info.rank} resumed at step {start}, rank 0 elsewhere: the ranks see "
            "different checkpoint folders (out_dir must be on a shared file system)"
        )
    if start:
        logger.info("resumed from step %d", start)
    return start


def _wrap(model: nn.Module, cfg: TrainConfig, info: distributed.DistInfo) -> nn.Module:
    """DDP when distributed (device = cuda:LOCAL_RANK), then torch.compile when asked."""
    net = model
    if info.is_distributed:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [info.device.index] if info.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids)
    return torch.compile(net) if cfg.compile else net  # type: ignore[return-value]


def _configure_torch(cfg: TrainConfig) -> Callable[[], None]:
    """Threads, deterministic kernels and TF32 for this run; returns a function restoring the old settings."""
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
    threads = cfg.num_threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads:
        torch.set_num_threads(threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(True)
        cudnn.benchmark, cudnn.deterministic = False, True
    matmul.allow_tf32 = cudnn.allow_tf32 = cfg.tf32

    def restore() -> None:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        cudnn.benchmark, cudnn.deterministic, matmul.allow_tf32, cudnn.allow_tf32 = saved[3:]

    return restore


def _due(cfg: TrainConfig, step: int, signum: int) -> set[str]:
    """Which periodic actions fall on `step` (the final step and a stop signal log and checkpoint)."""
    final = step >= cfg.max_steps or bool(signum)
    due = set()
    if final or step % cfg.log_every_steps == 0:
        due.add("log")
    if final or step % cfg.ckpt_every_steps == 0:
        due.add("ckpt")
    if cfg.sample_every_steps and (step % cfg.sample_every_steps == 0 or step >= cfg.max_steps):
        due |= {"log", "sample"}
    if cfg.eval_every_steps and (step % cfg.eval_every_steps == 0 or step >= cfg.max_steps):
        due |= {"log", "eval"}
    return due


def _to_device(batch: tuple[Tensor, Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _rank_draws(
    cfg: TrainConfig,
    step: int,
    shape: tuple[int, int, int],
    num_timesteps: int,
    label_dropout: float,
    encoder: Any,
    info: distributed.DistInfo,
) -> dict[str, Tensor]:
    """This rank's rows of the step's draws over the global batch (same numbers for any process count)."""
    generator = torch.Generator(info.device).manual_seed(mix_seed(cfg.seed, _STEP_STREAM, step))
    draws = draw_step(
        generator,
        cfg.global_batch_size,
        shape,
        num_timesteps,
        label_dropout=label_dropout,
        latent_noise=encoder is not None,
    )
    per_rank = cfg.global_batch_size // info.world_size
    rows = slice(info.rank * per_rank, (info.rank + 1) * per_rank)
    return {k: v[rows] for k, v in draws.items()}


def _seed_global_rng(seed: int, device: torch.device) -> None:
    """Seed torch's global RNG on the CPU and this GPU (for draws outside `draw_step`, e.g. a user's model).

    torch.manual_seed would do it too, but costs ~3 ms a call on CPU (it records a stack for lazy CUDA).
    """
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.default_generators[device.index or 0].manual_seed(seed)


def _save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    info: distributed.DistInfo,
) -> None:
    if info.is_main:
        extra = {"world_size": info.world_size, "images_seen": step * cfg.global_batch_size}
        path = checkpoint.save(
            run_dir,
            step=step,
            model=model,
            ema=ema,
            optimizer=optimizer,
            config=cfg.to_dict(),
            extra=extra,
            keep_last=cfg.keep_last_ckpts,
            milestone_every=cfg.milestone_every_steps,
        )
        logger.info("checkpoint %s", path)
    distributed.barrier()  # no rank runs ahead of a checkpoint it might need


def _decoder_for(
    cfg: TrainConfig, dataset: Any, encoder: Any, shape: tuple[int, int, int], device: torch.device
) -> tuple[Any, tuple[int, int, int]]:
    """(VAE to decode samples, None for pixel space, or False when samples cannot be shown) and the
    (H, W, C) of decoded images. A latent store's own VAE is loaded only when grids or evaluation are on."""
    if encoder is not None:
        return encoder, (dataset.image_size, dataset.image_size, dataset.channels)
    if not dataset.is_latent:
        return None, (shape[1], shape[2], shape[0])
    image_shape = (dataset.image_size, dataset.image_size, int(dataset.meta.get("image_channels", 3)))
    if not (cfg.sample_every_steps or cfg.eval_every_steps):
        return False, image_shape
    from ditkit.autoencoder import load_vae

    spec = cfg.vae if cfg.is_latent else dataset.vae
    try:
        return load_vae(spec, device, scale=dataset.scale), image_shape
    except ValueError as err:
        logger.warning(
            "sample grids and evaluation off: cannot load the latent store's VAE %r (%s); pass --vae", spec, err
        )
        return False, image_shape


def _check_sampling_settings(cfg: TrainConfig) -> None:
    from ditkit.sample import SAMPLERS

    if cfg.sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {cfg.sampler!r} (--sampler)")
    if cfg.cfg_scale != 1.0 and not cfg.model.has_null_class:
        raise ValueError(
            f"cfg_scale {cfg.cfg_scale} needs a class-conditional model with label dropout; use --cfg-scale 1"
        )
