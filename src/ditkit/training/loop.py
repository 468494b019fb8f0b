"""Training: `train(cfg)` for one process or torchrun DDP (the step itself: `ditkit.training.step`).

The paper's recipe as the official train.py runs it: AdamW, constant LR, EMA, label dropout,
MSE + VLB loss, global batch split over ranks. Bookkeeping follows edm2/torchtitan: every random draw of
step s comes from a generator seeded by (seed, s) over the GLOBAL batch, of which each rank takes its
rows, so the numbers depend on neither the process count nor an interruption; a rerun of the same
command resumes from the newest good checkpoint.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ditkit.config import TrainConfig, validate_for_world
from ditkit.data import loader
from ditkit.data.workers import close_batches
from ditkit.runtime import backend, distributed
from ditkit.runtime.seeds import Stream, mix_seed
from ditkit.runtime.stopping import StopSignal, interrupted
from ditkit.training import checkpoint, run
from ditkit.training.monitor import IntervalStats, RunMonitor
from ditkit.training.step import (
    build_model_and_optimizer,
    build_process,
    draw_step,
    ema_decay_at,
    lr_at,
    process_times,
    train_step,
    update_ema,
)

logger = logging.getLogger(__name__)

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
        # Data, checked against the model config before the run folder, the VAE or the model is touched.
        checked = loader.check_training_data(cfg)

        # Run directory: held by this process (train.lock) and checked before anything is written there (a
        # finished run is a no-op; a larger max_steps continues it).
        run_dir = teardown.enter_context(run.lock_run_dir(cfg.out_dir, info.is_main))
        # From here a signal (to the group too) stops after the next step, with a checkpoint; the workers ignore it.
        stop = StopSignal()
        teardown.callback(stop.restore)
        run.prepare_run_dir(cfg, info.is_main)
        teardown.callback(distributed.setup_logging(info.rank, run_dir / run.LOG_FILE if info.is_main else None))
        if _finished(run_dir, cfg):
            clean = True
            return run_dir

        # Data (and the online VAE).
        dataset, encoder, shape = loader.open_training_data(cfg, info.device, checked)
        decoder, image_shape = loader.decoder_for(cfg, dataset, encoder, shape, info.device)

        # Model, EMA, optimizer; resume from the newest good checkpoint.
        model, ema, optimizer = build_model_and_optimizer(cfg, info.device)
        process = build_process(cfg.diffusion)  # ADM's diffusion or SiT's flow matching
        start = _resume(run_dir, model, ema, optimizer, info)
        run.write_run_config(cfg, info.is_main)  # only now: a resume that fails leaves config.json as it was
        net = _wrap(model, cfg, info)

        # Batches from `start` on, and the reports.
        batches = loader.build_loader(  # its workers ignore signals to the process group: `stop` decides
            dataset,
            batch_size=cfg.global_batch_size,
            rank=info.rank,
            world_size=info.world_size,
            seed=cfg.seed,
            start_step=start,
            num_workers=cfg.num_workers,
            pin_memory=info.device.type == "cuda",
        )
        teardown.callback(close_batches, batches)  # the workers stop with the run, however it ends
        monitor = RunMonitor(cfg, info, run_dir, start, dataset, decoder, image_shape)
        teardown.callback(monitor.close)
        micro = cfg.micro_batch_size or cfg.global_batch_size // info.world_size
        _log_start(cfg, run_dir, start, info, micro, model, precision)

        # Loop.
        step, interval = start, IntervalStats()
        while step < cfg.max_steps:
            x, y = _to_device(next(batches), info.device)
            draws = _rank_draws(cfg, step, shape, process_times(process), encoder is not None, info)
            if encoder is not None:
                x = loader.encode_batch(encoder, x, draws.pop("latent_noise"), micro)
            _seed_global_rng(mix_seed(cfg.seed, Stream.TRAIN_GLOBAL, info.rank, step), info.device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, step)
            stats = train_step(
                net,
                process,
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
    # torch.compile's stubs return a Callable; for an nn.Module it is an OptimizedModule (an nn.Module).
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
    times: int | tuple[float, float],
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
        times,
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
