"""What a training run reports: metrics.jsonl, TensorBoard, the loss curve, a progress bar, EMA sample
grids from fixed seeds, and quality evaluation (digit-classifier metrics or Inception FID) while training.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ditkit.config import TrainConfig
from ditkit.data.datasets import BaseDataset
from ditkit.data.loader import Decoder
from ditkit.metrics.scoring import Scorer, dataset_reference_images, make_scorer
from ditkit.model.dit import DiT
from ditkit.runtime import distributed
from ditkit.runtime.progress import logs_above_bar, progress
from ditkit.runtime.seeds import image_seeds
from ditkit.runtime.stopping import NonFiniteLoss
from ditkit.sampling.generate import generate
from ditkit.sampling.grid import plot_curves, save_grid
from ditkit.training import checkpoint, run
from ditkit.training.non_finite import non_finite

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter  # the optional `tensorboard` extra

logger = logging.getLogger(__name__)


class IntervalStats:
    """Per-step stats since the last report, kept on the device; `flush` syncs once and checks finiteness:
    the loss and the gradient norm of every step, and the state the optimizer steps left (weights, EMA and
    AdamW moments: a finite gradient can still overflow the second moment). Since a checkpoint is only
    written after a flush, every checkpoint holds finite numbers."""

    KEYS = ("loss", "mse", "vb", "grad_norm")

    def __init__(self) -> None:
        self.rows: list[Tensor] = []
        self.first_step = 0
        self.t0 = time.perf_counter()

    def add(self, step: int, stats: dict[str, Tensor]) -> None:
        if not self.rows:
            self.first_step = step
        self.rows.append(torch.stack([stats[k] for k in self.KEYS]))

    def flush(
        self,
        run_dir: Path,
        model: nn.Module | None = None,
        ema: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> dict[str, float]:
        """Means over the interval and the ranks; raises NonFiniteLoss naming the first bad step and value."""
        table = distributed.all_reduce_mean(torch.stack(self.rows).float()).tolist()  # (k, 4), one host sync
        for i, row in enumerate(table):
            for key in ("loss", "grad_norm"):
                value = row[self.KEYS.index(key)]
                if not math.isfinite(value):
                    name = "loss" if key == "loss" else "gradient norm"
                    raise _stopped(run_dir, f"{name} is {value} at step {self.first_step + i + 1}")
        bad = non_finite(model, ema, optimizer) if model is not None else ""
        if distributed.any_rank(bool(bad)):
            raise _stopped(run_dir, f"inf or NaN in {bad or 'the state'} after step {self.first_step + len(table)}")
        elapsed = time.perf_counter() - self.t0
        means = np.asarray(table).mean(axis=0).tolist()
        self.rows, self.t0 = [], time.perf_counter()
        record = dict(zip(self.KEYS, means))
        record["steps_per_sec"] = len(table) / elapsed if elapsed > 0 else 0.0
        return record


def _stopped(run_dir: Path, what: str) -> NonFiniteLoss:
    last = checkpoint.newest_readable(run_dir)
    kept = f"the last good checkpoint {last.name} is kept" if last else "no checkpoint yet: a rerun starts over"
    return NonFiniteLoss(
        f"{what}; training stopped ({kept}). Rerun with a lower lr, a max_grad_norm (e.g. 1.0) or "
        "precision fp32 (--lr, --max-grad-norm, --precision) to resume from it (these may change when a run resumes)"
    )


class RunMonitor:
    """Everything a run reports. Rank 0 writes metrics.jsonl (one JSON object per report, with at least
    "step" and "loss"), TensorBoard scalars and sample grids, loss_curve.png and samples/step_XXXXXXX.png, and shows a
    progress bar with ETA; evaluation samples on every rank and scores on rank 0."""

    def __init__(
        self,
        cfg: TrainConfig,
        info: distributed.DistInfo,
        run_dir: Path,
        start_step: int,
        dataset: BaseDataset,
        decoder: Decoder,
        image_shape: tuple[int, int, int],
    ):
        self.cfg, self.info, self.run_dir, self.decoder = cfg, info, run_dir, decoder
        self.history: list[tuple[int, float]] = []
        self.tb: SummaryWriter | None = None
        self._teardown = ExitStack()
        if info.is_main:
            kept = run.trim_metrics(run_dir, start_step)  # lines an interrupted run wrote after its checkpoint
            self.history = [(r["step"], r["loss"]) for r in kept if "loss" in r]
            self.tb = _tensorboard_writer(run_dir, start_step)
            self._teardown.enter_context(logs_above_bar())
        self.scorer = _scorer_on_main(cfg, dataset, image_shape, run_dir, info) if decoder is not False else None
        self.progress = progress(
            total=cfg.max_steps, initial=start_step, disable=not info.is_main, desc="train", unit="step"
        )

    def report(self, step: int, due: set[str], record: dict[str, Any], ema: DiT) -> None:
        """Grids, evaluation, then the metrics line of `step` (record gains the evaluation metrics)."""
        if "sample" in due and self.decoder is not False:
            self._write_grid(step, ema)
        if "eval" in due and self.scorer is not None:
            record.update(evaluate_ema(ema, self.cfg, self.decoder, self.scorer, self.info))
        self.progress.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
        if not self.info.is_main:
            return
        run.append_metrics(self.run_dir, record, durable="ckpt" in due)  # before the checkpoint, see train()
        self.history.append((step, record["loss"]))
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}", value, step)
            self.tb.flush()
        if "ckpt" in due:
            steps, losses = zip(*self.history)
            terms = "mse + vb" if self.cfg.diffusion.learn_sigma else "mse"
            plot_curves(steps, {"loss": losses}, self.run_dir / run.LOSS_CURVE_FILE, title=f"loss ({terms})")

    def _write_grid(self, step: int, ema: DiT) -> None:
        if self.info.is_main:
            n = self.cfg.num_grid_images
            seeds, labels = image_seeds(self.cfg.grid_seed, n), _class_labels(self.cfg, range(n))
            images = sample_ema(ema, self.cfg, seeds, labels, self.decoder)
            names = self.cfg.class_names  # the data's names under each image; without them no captions
            captions = [names[c] for c in labels] if names and labels else None
            path = save_grid(
                images, run.grid_path(self.run_dir, step), scale=max(1, 64 // images.shape[1]), captions=captions
            )
            logger.info("samples %s", path)
            if self.tb is not None:  # the grid as saved (captions included), uint8 (H, W, 3)
                with Image.open(path) as picture:
                    self.tb.add_image("samples", np.asarray(picture.convert("RGB")), step, dataformats="HWC")
        distributed.barrier()

    def close(self) -> None:
        self.progress.close()
        self._teardown.close()
        if self.tb is not None:
            self.tb.close()


def _tensorboard_writer(run_dir: Path, start_step: int) -> SummaryWriter | None:
    try:
        from torch.utils.tensorboard import SummaryWriter  # the optional `tensorboard` extra
    except ImportError as err:
        logger.info("TensorBoard logging off (%s); metrics.jsonl has the same numbers", err)
        return None
    # purge_step drops events past the resumed step that an interrupted run left behind.
    return SummaryWriter(str(run_dir / run.TENSORBOARD_DIR), purge_step=start_step + 1)


def sample_ema(ema: DiT, cfg: TrainConfig, seeds: list[int], labels: list[int] | None, decoder: Decoder) -> np.ndarray:
    """uint8 (N, H, W, C) images of the EMA model as the run samples them (its `sample` config and diffusion)."""
    return generate(ema, labels, seeds, cfg.sample, diffusion=cfg.diffusion, vae=decoder or None)


def _class_labels(cfg: TrainConfig, indices: range | list[int]) -> list[int] | None:
    return [i % cfg.model.num_classes for i in indices] if cfg.model.num_classes > 0 else None


def _scorer_on_main(
    cfg: TrainConfig, dataset: BaseDataset, image_shape: tuple[int, int, int], run_dir: Path, info: distributed.DistInfo
) -> Scorer | None:
    """The evaluation scorer on rank 0; every rank learns whether evaluation is on (placeholder elsewhere)."""
    if not cfg.eval_every_steps:
        return None
    scorer = None
    if info.is_main:
        scorer = make_scorer(
            cfg.model.num_classes,
            image_shape,
            device=info.device,
            eval_ref=cfg.eval_ref,
            reference_images=None
            if dataset.is_latent
            else lambda: dataset_reference_images(dataset, cfg.num_eval_samples, cfg.seed),
            reference_cache=run.eval_reference_path(run_dir, cfg.num_eval_samples),
        )
    if not distributed.broadcast_object(scorer is not None):
        return None
    return scorer or (lambda images, labels: {})


def evaluate_ema(
    ema: DiT, cfg: TrainConfig, decoder: Decoder, scorer: Scorer, info: distributed.DistInfo
) -> dict[str, float]:
    """Sample num_eval_samples class-balanced images over all ranks, score them on rank 0 ({} elsewhere).

    Image i has seed image_seed(eval_seed, i) and class i % num_classes, whatever the rank layout.
    """
    indices = list(range(info.rank, cfg.num_eval_samples, info.world_size))
    seeds = [image_seeds(cfg.eval_seed, 1, i)[0] for i in indices]
    images = sample_ema(ema, cfg, seeds, _class_labels(cfg, indices), decoder)
    parts = distributed.gather_objects((indices, images))
    if parts is None:
        return {}
    order = np.argsort(np.concatenate([p[0] for p in parts]))
    all_images = np.concatenate([p[1] for p in parts])[order]
    all_labels = np.arange(cfg.num_eval_samples) % max(cfg.model.num_classes, 1)
    return scorer(all_images, all_labels)
