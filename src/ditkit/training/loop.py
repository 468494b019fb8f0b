"""Training: `train(cfg)` for one process or torchrun DDP, `train_step`, `update_ema`.

The paper's recipe as the official train.py runs it: AdamW, constant LR, EMA, label dropout,
MSE + VLB loss, global batch split over ranks. Bookkeeping follows edm2/torchtitan: every random draw of
step s comes from a generator seeded by (seed, s) over the GLOBAL batch, of which each rank takes its
rows, so the numbers depend on neither the process count nor an interruption; a rerun of the same
command resumes from the newest good checkpoint.
"""

from __future__ import annotations

import copy
import logging
import math
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ditkit.config import TrainConfig, validate_for_world
from ditkit.data import loader
from ditkit.diffusion.gaussian import GaussianDiffusion, diffusion_from_config
from ditkit.model.dit import DiT
from ditkit.runtime import backend, distributed
from ditkit.runtime.seeds import Stream, mix_seed
from ditkit.runtime.stopping import StopSignal, interrupted
from ditkit.training import checkpoint, run
from ditkit.training.monitor import IntervalStats, RunMonitor

logger = logging.getLogger(__name__)

# Building blocks (pure functions, usable without train()).


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


LR_DECAY_FLOOR = 0.1  # a cosine decay ends at lr x this at max_steps


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then constant or a cosine decay
    from lr to lr x LR_DECAY_FLOOR at max_steps (so a run extended by a larger max_steps decays anew)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "none":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (LR_DECAY_FLOOR + (1 - LR_DECAY_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))


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

    Randomness: `draws` from `draw_step` ("t", "noise", and "drop": labels replaced by the null class for
    classifier-free guidance), or else drawn here from `generator` with the model's class_dropout_prob.
    Micro-batches of `micro_batch_size` rows accumulate gradients (DDP syncs only on the last). Returns
    detached 0-dim tensors "loss", "mse", "vb" (batch means) and "grad_norm" (before clipping): no host
    sync, read them when logging.
    """
    n = x.shape[0]
    config = unwrap(model).config  # type: ignore[union-attr]
    if draws is None:
        dropout = config.class_dropout_prob if y is not None and config.has_null_class else 0.0
        draws = draw_step(
            generator, n, tuple(x.shape[1:]), diffusion.num_timesteps, label_dropout=dropout, device=x.device
        )
    if y is not None and "drop" in draws:
        y = torch.where(draws["drop"], torch.full_like(y, config.null_class), y)
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
    optimizer = adamw(model, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    return model, ema, optimizer


def adamw(model: nn.Module, **kwargs: Any) -> torch.optim.Optimizer:
    """AdamW over model's parameters: fused kernels, or foreach where this device / torch build has none."""
    try:
        return torch.optim.AdamW(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), foreach=True, **kwargs)


# The loop.


def train(cfg: TrainConfig) -> Path:
    """Train the run in cfg.out_dir, resuming from its newest good checkpoint; returns the run folder.

    Runs as one process, or as one rank of `torchrun --nproc_per_node N -m ditkit train ...` (DDP).
    Raises ValueError for bad settings or data (before building anything), NonFiniteLoss when the loss
    stops being finite, Interrupted after SIGINT/SIGTERM (a checkpoint is written first).
    """
    # Setup.
    info = distributed.init(cfg.device)
    validate_for_world(cfg, info.world_size)
    teardown, clean = ExitStack(), False
    teardown.callback(backend.configure(num_threads=cfg.num_threads, deterministic=cfg.deterministic))
    precision = backend.resolve_precision(cfg.precision, info.device)
    teardown.enter_context(backend.precision_scope(precision, info.device))
    try:
        # Run directory: held by this process (train.lock) and checked before anything is written there (a
        # finished run is a no-op; a larger max_steps continues it).
        run_dir = teardown.enter_context(run.lock_run_dir(cfg.out_dir, info.is_main))
        run.prepare_run_dir(cfg, info.is_main)
        teardown.callback(distributed.setup_logging(info.rank, run_dir / run.LOG_FILE if info.is_main else None))
        if _finished(run_dir, cfg):
            clean = True
            return run_dir

        # Data, checked against the model config before the model exists.
        dataset, encoder, shape = loader.open_training_data(cfg, info.device)
        decoder, image_shape = loader.decoder_for(cfg, dataset, encoder, shape, info.device)

        # Model, EMA, optimizer; resume from the newest good checkpoint.
        model, ema, optimizer = build_model_and_optimizer(cfg, info.device)
        diffusion = diffusion_from_config(cfg.diffusion)
        start = _resume(run_dir, model, ema, optimizer, info)
        run.write_run_config(cfg, info.is_main)  # only now: a resume that fails leaves config.json as it was
        net = _wrap(model, cfg, info)

        # Batches from `start` on, and the reports.
        stop = StopSignal()  # before the loader: forked workers inherit it and survive Ctrl-C
        teardown.callback(stop.restore)
        batches = loader.build_loader(
            dataset,
            batch_size=cfg.global_batch_size,
            rank=info.rank,
            world_size=info.world_size,
            seed=cfg.seed,
            start_step=start,
            num_workers=cfg.num_workers,
            pin_memory=info.device.type == "cuda",
        )
        monitor = RunMonitor(cfg, info, run_dir, start, dataset, decoder, image_shape)
        teardown.callback(monitor.close)
        micro = cfg.micro_batch_size or cfg.global_batch_size // info.world_size
        _log_start(cfg, run_dir, start, info, micro, model, precision)

        # Loop.
        step, interval = start, IntervalStats()
        while step < cfg.max_steps:
            x, y = _to_device(next(batches), info.device)
            draws = _rank_draws(cfg, step, shape, diffusion.num_timesteps, encoder is not None, info)
            if encoder is not None:
                x = loader.encode_batch(encoder, x, draws.pop("latent_noise"), micro)
            _seed_global_rng(mix_seed(cfg.seed, Stream.TRAIN_GLOBAL, info.rank, step), info.device)
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
                autocast_dtype=backend.autocast_dtype(precision),
            )
            update_ema(ema, model, ema_decay_at(cfg, step))
            interval.add(step, stats)
            step += 1
            monitor.progress.update(1)
            signum = stop.requested()
            due = _due(cfg, step, signum)
            if due:  # metrics line first, then the checkpoint: a resume trims lines past its checkpoint's step
                record = {"step": step, **interval.flush(run_dir, model, ema, optimizer), "lr": lr_at(cfg, step - 1)}
                record["ema_decay"] = ema_decay_at(cfg, step - 1)
                record["img_per_sec"] = record["steps_per_sec"] * cfg.global_batch_size
                monitor.report(step, due, record, ema)
                if "ckpt" in due:
                    _save_checkpoint(run_dir, step, model, ema, optimizer, cfg, info)
            if signum:
                raise interrupted(signum, step)
        logger.info("done: %s reached step %d", run_dir, step)
        clean = True
        return run_dir

    # Teardown.
    finally:
        teardown.close()
        distributed.shutdown(barrier=clean)


def _log_start(
    cfg: TrainConfig,
    run_dir: Path,
    start: int,
    info: distributed.DistInfo,
    micro: int,
    model: nn.Module,
    precision: str,
) -> None:
    logger.info(
        "training %s from step %d to %d: %d process(es), %s, %s, global batch %d (micro-batch %d), %.2fM parameters",
        run_dir,
        start,
        cfg.max_steps,
        info.world_size,
        info.device,
        precision,
        cfg.global_batch_size,
        micro,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )


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
        if info.is_main:  # a kill between a checkpoint's rename and `latest`, or a skipped broken one
            checkpoint.point_latest(run_dir, start)
    return start


def _wrap(model: nn.Module, cfg: TrainConfig, info: distributed.DistInfo) -> nn.Module:
    """DDP when distributed (device = cuda:LOCAL_RANK), then torch.compile when asked."""
    net = model
    if info.is_distributed:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids)
    return torch.compile(net) if cfg.compile else net  # type: ignore[return-value]


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
    latent_noise: bool,
    info: distributed.DistInfo,
) -> dict[str, Tensor]:
    """This rank's rows of the step's draws over the global batch (same numbers for any process count)."""
    generator = torch.Generator(info.device).manual_seed(mix_seed(cfg.seed, Stream.TRAIN_STEP, step))
    label_dropout = cfg.model.class_dropout_prob if cfg.model.has_null_class else 0.0
    draws = draw_step(
        generator,
        cfg.global_batch_size,
        shape,
        num_timesteps,
        label_dropout=label_dropout,
        latent_noise=latent_noise,
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
