"""What a training run reports: metrics.jsonl, TensorBoard, the loss curve, a progress bar, EMA sample
grids from fixed seeds, and quality evaluation (digit-classifier metrics or Inception FID) while training.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ditkit import distributed
from ditkit.config import TrainConfig
from ditkit.data import MNIST_MIN_FRAME

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
SAMPLES_DIR = "samples"
TENSORBOARD_DIR = "tensorboard"
Scorer = Callable[[np.ndarray, np.ndarray], dict[str, float]]  # (uint8 (N, H, W, C), labels (N,)) -> metrics


class RunMonitor:
    """Everything a run reports. Rank 0 writes metrics.jsonl (one JSON object per report, with at least
    "step" and "loss"), TensorBoard scalars, loss_curve.png and samples/step_XXXXXXX.png, and shows a
    progress bar with ETA; evaluation samples on every rank and scores on rank 0."""

    def __init__(
        self,
        cfg: TrainConfig,
        info: distributed.DistInfo,
        run_dir: Path,
        start_step: int,
        dataset: Any,
        shape: tuple[int, int, int],
        decoder: Any,
        image_shape: tuple[int, int, int],
    ):
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.cfg, self.info, self.run_dir, self.shape, self.decoder = cfg, info, run_dir, shape, decoder
        self.history: list[tuple[int, float]] = []
        self.tb: Any = None
        if info.is_main:
            self._keep_metrics_up_to(start_step)
            self.tb = _tensorboard_writer(run_dir, start_step)
        self.scorer = _scorer_on_main(cfg, dataset, image_shape, run_dir, info) if decoder is not False else None
        self.progress = tqdm(
            total=cfg.max_steps,
            initial=start_step,
            disable=not info.is_main,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
        )
        self._redirect = logging_redirect_tqdm(loggers=[logging.root, logging.getLogger("ditkit")])
        if info.is_main:
            self._redirect.__enter__()  # log lines print above the bar instead of through it

    def _keep_metrics_up_to(self, start_step: int) -> None:
        """Drop metrics.jsonl lines past the resumed step (an interrupted run wrote them after its checkpoint)."""
        path = self.run_dir / METRICS_FILE
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            if isinstance(record, dict) and record.get("step", math.inf) <= start_step:
                kept.append(line)
                if "loss" in record:
                    self.history.append((record["step"], record["loss"]))
        tmp = path.with_name(f".tmp-{METRICS_FILE}")
        tmp.write_text("".join(k + "\n" for k in kept))
        os.replace(tmp, path)

    def report(self, step: int, due: set[str], record: dict[str, Any], ema: nn.Module) -> None:
        """Grids, evaluation, then the metrics line of `step` (record gains the evaluation metrics)."""
        if "sample" in due and self.decoder is not False:
            self._write_grid(step, ema)
        if "eval" in due and self.scorer is not None:
            record.update(evaluate_ema(ema, self.cfg, self.shape, self.decoder, self.scorer, self.info))
        self.progress.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
        if not self.info.is_main:
            return
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.history.append((step, record["loss"]))
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}", value, step)
            self.tb.flush()
        if "ckpt" in due:
            from ditkit.grid import plot_curves

            steps, losses = zip(*self.history)
            plot_curves(steps, {"loss": losses}, self.run_dir / LOSS_CURVE_FILE, title="loss (mse + vb)")

    def _write_grid(self, step: int, ema: nn.Module) -> None:
        if self.info.is_main:
            from ditkit.grid import save_grid

            seeds = [self.cfg.grid_seed + i for i in range(self.cfg.num_grid_images)]
            labels = _class_labels(self.cfg, range(len(seeds)))
            images = sample_images(ema, self.cfg, seeds, labels, self.shape, self.decoder, self.info.device)
            path = save_grid(
                images, self.run_dir / SAMPLES_DIR / f"step_{step:07d}.png", scale=max(1, 64 // images.shape[1])
            )
            logger.info("samples %s", path)
        distributed.barrier()

    def close(self) -> None:
        if self.info.is_main:
            self._redirect.__exit__(None, None, None)
        self.progress.close()
        if self.tb is not None:
            self.tb.close()


def _tensorboard_writer(run_dir: Path, start_step: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        logger.info("TensorBoard logging off (%s); metrics.jsonl has the same numbers", err)
        return None
    # purge_step drops events past the resumed step that an interrupted run left behind.
    return SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=start_step + 1)


@torch.no_grad()
def sample_images(
    ema: nn.Module,
    cfg: TrainConfig,
    seeds: list[int],
    labels: list[int] | None,
    shape: tuple[int, int, int],
    decoder: Any,
    device: torch.device,
) -> Tensor:
    """uint8 (N, H, W, C) images of the EMA model for fixed seeds (decoded when a VAE is given)."""
    from ditkit.autoencoder import to_uint8
    from ditkit.sample import initial_noise, sample_loop

    pixel_space = decoder is None and cfg.vae == "none"  # images live in [-1, 1]: clip x_0 predictions
    out = []
    for i in range(0, len(seeds), cfg.eval_batch_size):
        chunk = seeds[i : i + cfg.eval_batch_size]
        y = torch.tensor(labels[i : i + len(chunk)], device=device) if labels is not None else None
        x = sample_loop(
            ema,
            initial_noise(chunk, shape, device),
            y,
            sampler=cfg.sampler,  # type: ignore[arg-type]
            timestep_respacing=str(cfg.num_sampling_steps),
            cfg_scale=cfg.cfg_scale,
            seeds=chunk,
            diffusion=cfg.diffusion,
            clip_denoised=pixel_space,
        )
        if decoder is not None:
            x = decoder.decode(x)
        out.append(to_uint8(x).cpu())
    return torch.cat(out)


def _class_labels(cfg: TrainConfig, indices: range | list[int]) -> list[int] | None:
    return [i % cfg.model.num_classes for i in indices] if cfg.model.num_classes > 0 else None


def make_scorer(
    cfg: TrainConfig, dataset: Any, image_shape: tuple[int, ...], run_dir: Path, device: torch.device
) -> Scorer | None:
    """The evaluation metric: digits accuracy + FD for 10-class gray MNIST-framed images, else Inception FID.

    None (with a logged note) when the classifier / Inception weights or a FID reference are unavailable.
    The FID reference defaults to statistics of num_eval_samples training images (run_dir/eval/).
    """
    height, width, channels = image_shape
    if cfg.model.num_classes == 10 and channels == 1 and height == width and MNIST_MIN_FRAME <= height <= 32:
        from ditkit.classifier import digits_metrics, load_digit_classifier

        try:
            classifier = load_digit_classifier(device=device)
        except ValueError as err:
            logger.warning("evaluation off: %s", err)
            return None

        def digits_score(images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
            result = digits_metrics(images, labels, classifier)
            return {"eval_accuracy": result["accuracy"], "eval_fd": result["fd"]}

        return digits_score
    from ditkit.evaluate import fid, ref_stats
    from ditkit.inception import load_inception

    try:
        extractor = load_inception(device=device)
    except ValueError as err:
        logger.warning("evaluation off: %s", err)
        return None
    ref: Any = cfg.eval_ref
    if ref is None:
        if dataset.is_latent:
            logger.warning(
                "evaluation off: a latent store has no images for FID reference statistics; "
                "pass eval_ref (--eval-ref, a ref-stats .npz or reference images)"
            )
            return None
        ref = run_dir / "eval" / f"ref_stats_{cfg.num_eval_samples}.npz"
        if not ref.is_file():
            from ditkit.autoencoder import to_uint8

            count = min(len(dataset), max(cfg.num_eval_samples, 2))
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(cfg.seed))
            images = to_uint8(
                torch.stack([dataset.get(i, torch.Generator().manual_seed(i))[0] for i in order[:count].tolist()])
            )
            ref_stats(images.numpy(), extractor, ref)
    return lambda images, labels: {"eval_fid": fid(images, ref, extractor)}


def _scorer_on_main(
    cfg: TrainConfig, dataset: Any, image_shape: tuple[int, int, int], run_dir: Path, info: distributed.DistInfo
) -> Scorer | None:
    """The evaluation scorer on rank 0; every rank learns whether evaluation is on (placeholder elsewhere)."""
    if not cfg.eval_every_steps:
        return None
    scorer = make_scorer(cfg, dataset, image_shape, run_dir, info.device) if info.is_main else None
    if not distributed.broadcast_object(scorer is not None):
        return None
    return scorer or (lambda images, labels: {})


def evaluate_ema(
    ema: nn.Module,
    cfg: TrainConfig,
    shape: tuple[int, int, int],
    decoder: Any,
    scorer: Scorer,
    info: distributed.DistInfo,
) -> dict[str, float]:
    """Sample num_eval_samples class-balanced images over all ranks, score them on rank 0 ({} elsewhere)."""
    indices = list(range(info.rank, cfg.num_eval_samples, info.world_size))
    seeds = [cfg.eval_seed + i for i in indices]
    images = sample_images(ema, cfg, seeds, _class_labels(cfg, indices), shape, decoder, info.device)
    parts = distributed.gather_objects((indices, images.numpy()))
    if parts is None:
        return {}
    order = np.argsort(np.concatenate([p[0] for p in parts]))
    all_images = np.concatenate([p[1] for p in parts])[order]
    all_labels = np.arange(cfg.num_eval_samples) % max(cfg.model.num_classes, 1)
    return scorer(all_images, all_labels)
