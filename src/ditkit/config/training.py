"""Training configs: one DiT run (`TrainConfig`, the paper run by default) and autoencoder training."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from ditkit.config.constants import (
    DEVICES,
    MAX_BATCH,
    MAX_IMAGE_SIZE,
    MAX_SEED,
    MAX_STEPS,
    NO_VAE,
    PAPER_VAE,
    PRECISIONS,
    VAE_LATENT_CHANNELS,
    DeviceChoice,
    Precision,
)
from ditkit.config.model import DiffusionConfig, ModelConfig
from ditkit.config.sampling import TRAIN_SAMPLING, SampleConfig, check_sampler
from ditkit.runtime.errors import InputError, check_count

# Fields that may change when a run resumes (config.json records the new values): cadence, length and speed, and
# the optimisation knobs a diverged run needs (exit code 3 advises a lower --lr or a --max-grad-norm). The rest
# (model, diffusion, data, image_size, vae, flip, batch, seed; AdamW's weight_decay, betas, eps, which its
# state carries) may not: the checkpoint would no longer fit the run.
RESUMABLE_FIELDS: frozenset[str] = frozenset(
    (
        "lr",
        "lr_decay",
        "warmup_steps",
        "max_grad_norm",
        "ema_decay",
        "ema_warmup",
        "out_dir",
        "max_steps",
        "num_workers",
        "micro_batch_size",
        "deterministic",
        "precision",
        "compile",
        "grad_checkpointing",
        "device",
        "num_threads",
        "log_every_steps",
        "ckpt_every_steps",
        "keep_last_ckpts",
        "milestone_every_steps",
        "sample_every_steps",
        "num_grid_images",
        "grid_seed",
        "sample",
        "eval_every_steps",
        "num_eval_samples",
        "eval_seed",
        "eval_ref",
        "class_names",  # names only: the ids, and so the weights, stay
    )
)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run. Defaults reproduce the paper run (Peebles & Xie Sec. 4, official train.py).

    That is DiT-XL/2 on 256 px images encoded by the SD VAE, AdamW lr 1e-4, weight decay 0, constant LR,
    global batch 256, EMA decay 0.9999, the 1000-step linear diffusion with learned sigma and label
    dropout 0.1 (in `model`). Only `out_dir` has no default (nothing is written anywhere implicitly);
    `data` defaults to the embedded MNIST, so a paper run passes an ImageNet folder or latent store.
    Counts in steps are optimizer steps; 0 switches a periodic action off.
    """

    out_dir: str  # run directory (config.json, metrics.jsonl, checkpoints/, samples/); a rerun resumes it
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)

    # Data.
    data: str | None = None  # open_dataset spec: image folder, .npz, latent store, "digits"; None = MNIST
    image_size: int = 256  # pixels of the training images; the model sees image_size / VAE downsampling
    vae: str = PAPER_VAE  # "none" (pixel space), a diffusers VAE folder or a hub id; a latent store's own VAE
    vae_sha256: str | None = None  # fingerprint of that VAE (sha256 of its config and weights); None: not recorded
    vae_scale: float | None = None  # the latent scale its latents were made with; None: the VAE config's
    flip: bool | None = None  # random horizontal flips; None = on for natural images, off for digits
    num_workers: int = 4  # data-loader worker processes per rank (official default; 0 loads in-process)
    class_names: tuple[str, ...] | None = None  # class i's name, from the data (folders, labels file); None: ids

    # Optimisation.
    max_steps: int = 400_000  # optimizer steps of the whole run (the paper's Table 4 length); rerun to extend
    global_batch_size: int = 256  # images per optimizer step over all ranks
    micro_batch_size: int | None = None  # images per forward on one rank; smaller = gradient accumulation
    lr: float = 1e-4  # AdamW learning rate, constant after the warm-up
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 0  # linear LR warm-up from 0 over this many steps (the paper: none)
    lr_decay: Literal["none", "cosine"] = "none"  # after the warm-up: constant (the paper) or cosine to lr / 10
    max_grad_norm: float | None = None  # clip the global gradient norm to this (the paper: no clipping)
    ema_decay: float = 0.9999  # EMA of the weights (what samples and exports use)
    ema_warmup: bool = False  # decay = min(ema_decay, (1 + step) / (10 + step)): useful EMA in short runs

    # Numerics and speed.
    seed: int = 0  # data order, t, noise, label dropout and augmentation are functions of (seed, step)
    deterministic: bool = False  # deterministic kernels: a resumed run repeats an uninterrupted one exactly
    precision: Precision = "auto"  # see Precision: bf16 on CUDA, on CPUs with fast bf16, else fp32
    compile: bool = False  # torch.compile the model
    grad_checkpointing: bool = False  # recompute block activations in backward: less memory, ~30% more time
    device: DeviceChoice = "auto"  # "auto": cuda:LOCAL_RANK when CUDA is available, else CPU
    num_threads: int | None = None  # CPU threads per rank; None = OMP_NUM_THREADS or torch's default

    # Logging and checkpoints.
    log_every_steps: int = 100  # metrics.jsonl / TensorBoard / progress-bar interval
    ckpt_every_steps: int = 50_000  # checkpoint interval (a final checkpoint is always written)
    keep_last_ckpts: int = 2  # checkpoints kept besides milestones
    milestone_every_steps: int = 0  # checkpoints at multiples of this are never pruned

    # Samples and evaluation (EMA model).
    sample: SampleConfig = TRAIN_SAMPLING  # how grids and evaluation sample (batch_size: per rank)
    sample_every_steps: int = 10_000  # write samples/step_XXXXXXX.png
    num_grid_images: int = 16  # images per grid; image i has seed image_seed(grid_seed, i), class i % classes
    grid_seed: int = 0
    eval_every_steps: int = 0  # sample and score the EMA model (digits metrics or Inception FID)
    num_eval_samples: int = 1000  # class-balanced samples per evaluation, over all ranks
    eval_seed: int = 1_000_000  # evaluation sample i has seed image_seed(eval_seed, i) and class i % classes
    eval_ref: str | None = None  # FID reference (stats file, ADM batch, images); None = training images

    def __post_init__(self) -> None:
        if not str(self.out_dir).strip():
            raise InputError("out_dir must name a run directory; got an empty string", setting="out_dir")
        if self.model.learn_sigma != self.diffusion.learn_sigma:
            raise InputError(
                f"model.learn_sigma={self.model.learn_sigma} but diffusion.learn_sigma="
                f"{self.diffusion.learn_sigma}; they must agree (set both, e.g. "
                "DiffusionConfig(learn_sigma=model.learn_sigma))",
                setting="model.learn_sigma",
            )
        optional = tuple(n for n in ("micro_batch_size", "num_threads") if getattr(self, n) is not None)
        for name in _POSITIVE_COUNTS + optional:
            check_count(name, getattr(self, name), minimum=1, maximum=count_maximum(name))
        for name in _COUNTS:
            check_count(name, getattr(self, name), minimum=0, maximum=count_maximum(name))
        if self.eval_every_steps and self.num_eval_samples < 2:
            raise InputError(
                f"num_eval_samples must be >= 2 to score samples; got {self.num_eval_samples}",
                setting="num_eval_samples",
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"lr must be a positive number; got {self.lr} (the paper uses 1e-4)", setting="lr")
        if self.lr_decay not in ("none", "cosine"):
            raise InputError(f"lr_decay must be 'none' or 'cosine'; got {self.lr_decay!r}", setting="lr_decay")
        if not self.weight_decay >= 0:
            raise InputError(f"weight_decay must be >= 0; got {self.weight_decay}", setting="weight_decay")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise InputError(
                f"adam_betas must be two numbers in [0, 1); got {self.adam_betas} (default 0.9 0.999)",
                setting="adam_betas",
            )
        if not self.adam_eps > 0:
            raise InputError(f"adam_eps must be > 0; got {self.adam_eps}", setting="adam_eps")
        if self.max_grad_norm is not None and not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise InputError(
                f"max_grad_norm must be > 0 and finite, or None (no clipping); got {self.max_grad_norm} (e.g. 1.0)",
                setting="max_grad_norm",
            )
        if not 0.0 <= self.ema_decay <= 1.0:
            raise InputError(
                f"ema_decay must be in [0, 1]; got {self.ema_decay} (the paper uses 0.9999)", setting="ema_decay"
            )
        if self.precision not in PRECISIONS:
            raise InputError(
                f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}", setting="precision"
            )
        if self.device not in DEVICES:
            raise InputError(f"device must be one of {', '.join(DEVICES)}; got {self.device!r}", setting="device")
        if self.sample.cfg_scale != 1.0 and not self.model.has_null_class:
            raise InputError(
                f"sample.cfg_scale {self.sample.cfg_scale} needs a class-conditional model with label dropout "
                "(a null class); use cfg_scale 1 (no guidance)",
                setting="sample.cfg_scale",
            )
        check_sampler(self.sample.sampler, self.diffusion)  # grids and evaluation sample with the run's process
        if self.class_names is not None and len(self.class_names) != self.model.num_classes:
            raise InputError(
                f"class_names has {len(self.class_names)} names for a {self.model.num_classes}-class model; "
                "give one name per class, or None",
                setting="class_names",
            )
        if not str(self.vae).strip():
            raise InputError(
                "vae must be 'none', a diffusers VAE folder or a hub id; got an empty string", setting="vae"
            )

    @property
    def is_latent(self) -> bool:
        """True when images are encoded by a VAE (a latent store is latent whatever `vae` says)."""
        return self.vae.strip().lower() != NO_VAE

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (config.json, checkpoints); `from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """TrainConfig from `to_dict` output; unknown keys are an error (they come from another version).

        config.json files written before 0.2 kept the sampling settings flat; they are read into `sample`.
        """
        fields = dict(values)
        legacy = {k: fields.pop(k) for k in _LEGACY_SAMPLE_FIELDS if k in fields}
        if "tf32" in fields:  # 0.1 had precision fp32|bf16 and a tf32 switch
            tf32 = fields.pop("tf32")
            if fields.get("precision", "fp32") == "fp32" and tf32:
                fields["precision"] = "tf32"
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise InputError(f"unknown TrainConfig fields {unknown}; allowed: {', '.join(sorted(known))}")
        if isinstance(fields.get("model"), dict):
            fields["model"] = ModelConfig(**fields["model"])
        if isinstance(fields.get("diffusion"), dict):
            fields["diffusion"] = DiffusionConfig.from_dict(fields["diffusion"])
        sample = fields.get("sample")
        if isinstance(sample, dict) or legacy:
            sample = dict(sample) if isinstance(sample, dict) else dataclasses.asdict(TRAIN_SAMPLING)
            sample.update({_LEGACY_SAMPLE_FIELDS[k]: v for k, v in legacy.items()})
            fields["sample"] = SampleConfig(**sample)
        if "adam_betas" in fields:
            fields["adam_betas"] = tuple(fields["adam_betas"])
        if fields.get("class_names") is not None:
            fields["class_names"] = tuple(fields["class_names"])
        return cls(**fields)


_POSITIVE_COUNTS = (
    "image_size",
    "max_steps",
    "global_batch_size",
    "log_every_steps",
    "ckpt_every_steps",
    "keep_last_ckpts",
    "num_grid_images",
)
_COUNTS = (
    "num_workers",
    "warmup_steps",
    "milestone_every_steps",
    "sample_every_steps",
    "eval_every_steps",
    "grid_seed",
    "eval_seed",
    "seed",
)


def count_maximum(name: str) -> int | None:
    """The largest value a count setting takes: steps and cadences <= 10**9, batches <= 2**20, image sizes <= 8192
    px, seeds < 2**63 (what a machine can hold; a larger value is a typo)."""
    if name.endswith("seed"):
        return MAX_SEED
    if name.endswith("steps"):
        return MAX_STEPS
    return {"image_size": MAX_IMAGE_SIZE}.get(name, MAX_BATCH if "batch" in name else None)


_LEGACY_SAMPLE_FIELDS = {
    "sampler": "sampler",
    "num_sampling_steps": "num_steps",
    "cfg_scale": "cfg_scale",
    "eval_batch_size": "batch_size",
}


def validate_for_world(cfg: TrainConfig, world_size: int) -> None:
    """Checks that need the process count: batch divisibility and micro-batches."""
    if cfg.global_batch_size % world_size:
        raise InputError(
            f"global_batch_size {cfg.global_batch_size} is not divisible by the {world_size} processes; "
            f"use a multiple of {world_size} or another process count",
            setting="global_batch_size",
        )
    per_rank = cfg.global_batch_size // world_size
    micro = cfg.micro_batch_size or per_rank
    if micro > per_rank or per_rank % micro:
        raise InputError(
            f"micro_batch_size {micro} must divide the per-process batch {per_rank} "
            f"(global {cfg.global_batch_size} / {world_size} processes); pick a divisor of {per_rank}",
            setting="micro_batch_size",
        )


# Autoencoder training (`ditkit train-vae`).


@dataclass(frozen=True, kw_only=True)
class VAETrainConfig:
    """A small KL autoencoder (diffusers' AutoencoderKL, the SD architecture at small width) trained by ditkit.

    Defaults: the embedded MNIST at 32 px -> 8x8x4 latents, L1 reconstruction plus a light KL term (SD's
    objective without its perceptual and adversarial terms, which need pretrained networks). The latent scaling
    factor (1 / std of the latents, as SD chose 0.18215) is measured at the end and stored in config.json.
    """

    out_dir: str  # the VAE folder (diffusers layout: `--vae DIR`, AutoencoderKL.from_pretrained(DIR)); rerun resumes
    data: str | None = None  # any ditkit dataset spec; None = the embedded MNIST
    image_size: int = 32  # pixels (a multiple of the downsampling)
    block_out_channels: tuple[int, ...] = (16, 32, 32)  # one block per entry; downsampling 2 ** (blocks - 1)
    layers_per_block: int = 1
    latent_channels: int = VAE_LATENT_CHANNELS
    norm_num_groups: int = 8  # GroupNorm groups (must divide every block width)
    max_steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3  # AdamW, with a linear warm-up over the first 5% of steps
    kl_weight: float = 1e-6  # weight of the KL term (summed per image) against the per-pixel L1 (mean)
    log_every_steps: int = 50
    ckpt_every_steps: int = 200
    num_scale_images: int = 2048  # training images whose latents set the scaling factor
    seed: int = 0
    device: DeviceChoice = "auto"
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if not str(self.out_dir).strip():
            raise InputError("out_dir must name the VAE folder to write; got an empty string", setting="out_dir")
        for name in ("image_size", "max_steps", "batch_size", "log_every_steps", "ckpt_every_steps"):
            check_count(name, getattr(self, name), minimum=1, maximum=count_maximum(name))
        check_count("seed", self.seed, minimum=0, maximum=MAX_SEED)
        check_count("num_scale_images", self.num_scale_images, minimum=2)
        check_count("latent_channels", self.latent_channels, minimum=1)
        if not self.block_out_channels or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise InputError(
                f"block_out_channels {self.block_out_channels} must be non-empty multiples of norm_num_groups "
                f"{self.norm_num_groups}",
                setting="block_out_channels",
            )
        if self.image_size % self.downsample:
            fit = max(self.downsample, self.image_size // self.downsample * self.downsample)
            raise InputError(
                f"image_size {self.image_size} is not a multiple of the downsampling {self.downsample} "
                f"({len(self.block_out_channels)} blocks); use image_size {fit}",
                setting="image_size",
            )
        if not (self.lr > 0 and math.isfinite(self.lr)) or not (self.kl_weight >= 0 and math.isfinite(self.kl_weight)):
            raise InputError(
                f"lr must be > 0 and kl_weight >= 0, both finite; got {self.lr}, {self.kl_weight}", setting="lr"
            )
        if self.device not in DEVICES:
            raise InputError(f"device must be one of {', '.join(DEVICES)}; got {self.device!r}", setting="device")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def replace(self, **changes: Any) -> VAETrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
