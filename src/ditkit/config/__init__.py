"""Configuration dataclasses, model presets and the one home of every shared constant.

Defaults reproduce the DiT paper (Peebles & Xie, ICCV 2023, https://arxiv.org/abs/2212.09748):
DiT-XL/2 at 256 px, adaLN-Zero blocks, 1000-step linear schedule, learned sigma, label dropout 0.1.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

# Constants (one home each).
VAE_LATENT_SCALE: float = 0.18215
"""Stable Diffusion VAE latent scale: latents = posterior sample x this (SD / DiT convention)."""
VAE_DOWNSAMPLE: int = 8
"""Spatial downsampling factor of the SD VAE (256 px images -> 32x32 latents)."""
VAE_LATENT_CHANNELS: int = 4
"""Channels of the SD VAE latent."""
NUM_DIFFUSION_STEPS: int = 1000
"""Length of the training noise chain (ADM / DiT)."""
TIMESTEP_FREQ_DIM: int = 256
"""Sinusoidal frequency features of the timestep embedder."""
TIMESTEP_MAX_PERIOD: float = 10000.0
"""Longest period of the timestep embedding (GLIDE formula)."""
PATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8)
BLOCK_DESIGNS: tuple[str, ...] = ("adaln_zero", "adaln", "cross_attn", "in_context")
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm++2m")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "tf32", "bf16")

BlockDesign = Literal["adaln_zero", "adaln", "cross_attn", "in_context"]
SamplerName = Literal["ddpm", "ddim", "dpm++2m"]
Precision = Literal["auto", "fp32", "tf32", "bf16"]
"""The network's arithmetic. "auto": bf16 autocast (+ TF32) on CUDA; on a CPU bf16 only where a short probe
shows it faster than fp32 (CPUs with bf16 units), else fp32. "tf32": fp32 with TF32 matmuls on CUDA (what the
official code uses; fp32 elsewhere). "bf16": bf16 autocast. Diffusion arithmetic and losses stay fp32."""


# The `ditkit` flag of a config field where it is not "--" + the name with dashes; None: no flag sets it.
_NO_FLAG = "keep_last_ckpts milestone_every_steps num_grid_images grid_seed eval_seed num_threads num_train_steps"
_FLAGS: dict[str, str | None] = {
    "ckpt_every_steps": "--ckpt-every",
    "log_every_steps": "--log-every",
    "sample_every_steps": "--sample-every",
    "eval_every_steps": "--eval-every",
    "out_dir": "--out",
    **dict.fromkeys(_NO_FLAG.split()),
}


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}" + (f" ({flag})" if flag else ""))


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """A DiT architecture. Defaults: DiT-XL/2 on 32x32x4 latents (256 px), 1000 classes (the paper)."""

    input_size: int = 32  # latent side length (pixels / VAE_DOWNSAMPLE); pixels when no VAE is used
    patch_size: int = 2  # p: tokens are p x p patches, T = (input_size / p) ** 2
    in_channels: int = VAE_LATENT_CHANNELS  # channels of the (latent) image
    hidden_size: int = 1152  # d, token width
    depth: int = 28  # N, number of transformer blocks
    num_heads: int = 16  # attention heads (hidden_size must divide evenly)
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio x hidden_size
    num_classes: int = 1000  # class labels; 0 makes an unconditional model
    class_dropout_prob: float = 0.1  # label dropout for classifier-free guidance (adds a null class row)
    learn_sigma: bool = True  # output a learned-range variance beside eps (doubles output channels)
    block: BlockDesign = "adaln_zero"  # conditioning design of the paper's Fig. 3

    def __post_init__(self) -> None:
        if self.patch_size not in PATCH_SIZES:
            raise ValueError(f"patch_size must be one of {PATCH_SIZES}; got {self.patch_size}")
        if self.input_size <= 0 or self.input_size % self.patch_size:
            raise ValueError(
                f"input_size must be a positive multiple of patch_size {self.patch_size}; got {self.input_size}"
            )
        if self.hidden_size <= 0 or self.num_heads <= 0 or self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size must be divisible by num_heads; got hidden_size={self.hidden_size}, "
                f"num_heads={self.num_heads}"
            )
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size must be a multiple of 4 (2D sin-cos positions); got {self.hidden_size}")
        if self.depth <= 0:
            raise ValueError(f"depth must be >= 1; got {self.depth}")
        if int(self.hidden_size * self.mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio must give an MLP width >= 1 (mlp_ratio x hidden_size); got {self.mlp_ratio}")
        if self.in_channels <= 0:
            raise ValueError(f"in_channels must be >= 1; got {self.in_channels}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = unconditional); got {self.num_classes}")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob must be in [0, 1); got {self.class_dropout_prob}")
        if self.block not in BLOCK_DESIGNS:
            raise ValueError(f"block must be one of {', '.join(BLOCK_DESIGNS)}; got {self.block!r}")

    @property
    def out_channels(self) -> int:
        """Channels the model predicts: eps, plus the variance interpolation when sigma is learned."""
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def num_tokens(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    @property
    def null_class(self) -> int:
        """Label id of the 'no class' row used for classifier-free guidance (= num_classes)."""
        return self.num_classes

    @property
    def has_null_class(self) -> bool:
        return self.num_classes > 0 and self.class_dropout_prob > 0

    def replace(self, **changes: object) -> ModelConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


# Paper Table 1: (depth, hidden, heads) per size.
_SIZES: dict[str, tuple[int, int, int]] = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}

PRESETS: dict[str, ModelConfig] = {
    f"DiT-{size}/{p}": ModelConfig(depth=d, hidden_size=w, num_heads=h, patch_size=p)
    for size, (d, w, h) in _SIZES.items()
    for p in (2, 4, 8)
}
# Tiny presets for tests and CPU demos (torchtitan's "debugmodel" idea).
PRESETS["DiT-T/2"] = ModelConfig(depth=2, hidden_size=32, num_heads=2, patch_size=2, input_size=8, num_classes=10)
PRESETS["DiT-T/4"] = ModelConfig(depth=2, hidden_size=32, num_heads=2, patch_size=4, input_size=8, num_classes=10)
# The CPU demo's model (ditkit.apps.demo): 1.1M parameters on 24x24 MNIST digits, 36 tokens, no learned sigma.
PRESETS["DiT-Demo/4"] = ModelConfig(
    depth=6,
    hidden_size=96,
    num_heads=4,
    patch_size=4,
    input_size=24,
    in_channels=1,
    num_classes=10,
    learn_sigma=False,
)


def get_preset(name: str, **overrides: object) -> ModelConfig:
    """Return the preset `name` (e.g. "DiT-XL/2") with fields replaced by `overrides`."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig:
    """ADM's Gaussian diffusion as DiT trains it (1000 linear steps, eps prediction, learned range)."""

    num_train_steps: int = NUM_DIFFUSION_STEPS  # length of the training chain (sampling respaces it)
    noise_schedule: Literal["linear", "cosine"] = "linear"  # betas 1e-4..0.02 (scaled by 1000/num_train_steps)
    learn_sigma: bool = True  # learned-range variance (else fixed large variance, MSE only)
    predict_xstart: bool = False  # eps prediction (the paper) unless True

    def __post_init__(self) -> None:
        _check_int("num_train_steps", self.num_train_steps, minimum=2)
        if self.noise_schedule not in ("linear", "cosine"):
            raise ValueError(f"noise_schedule must be 'linear' or 'cosine'; got {self.noise_schedule!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DiffusionConfig:
        """From `dataclasses.asdict` output; files written before 0.2 call the chain length `num_steps`."""
        fields = dict(values)
        if "num_steps" in fields:
            fields["num_train_steps"] = fields.pop("num_steps")
        return cls(**fields)


def default_diffusion(model: ModelConfig) -> DiffusionConfig:
    """The paper's process for a model whose training diffusion is not recorded (official checkpoints)."""
    return DiffusionConfig(learn_sigma=model.learn_sigma)


# Sampling.


@dataclass(frozen=True, kw_only=True)
class SampleConfig:
    """How to sample a DiT. Defaults: the paper's FID-50K evaluation (Sec. 4): 250 DDPM steps, cfg 1.5.

    The paper's FID 2.27 also guides only 3 of the 4 latent channels (the official code's quirk):
    `cfg_channels=3` reproduces it. The named configs below are the defaults of each use.
    """

    sampler: SamplerName = "ddpm"  # "ddpm" (ancestral, learned variance), "ddim", "dpm++2m" (DPM-Solver++(2M))
    num_steps: int = 250  # sampling steps (>= 2): the training chain respaced to this many
    cfg_scale: float = 1.5  # classifier-free guidance scale; 1 = none (no doubled batch), 0 = unconditional
    cfg_channels: Literal["all"] | int = "all"  # guided output channels; 3 = the official DiT variant
    eta: float = 0.0  # DDIM noise in [0, 1] (0 = deterministic); the other samplers ignore it
    clip_denoised: bool | None = None  # clamp x_0 predictions to [-1, 1]; None = on in pixel space only
    batch_size: int | None = None  # images per forward pass (guidance doubles the rows); None: 32 CPU, 128 CUDA
    precision: Precision = "auto"  # the network's arithmetic (see Precision); the diffusion stays fp32
    compile: bool = False  # torch.compile the network for the fixed-shape loop (CUDA: ~2x, after ~20 s)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {self.sampler!r} (--sampler)")
        _check_int("num_steps", self.num_steps, minimum=2)  # ADM's posterior needs a previous step
        if self.batch_size is not None:
            _check_int("batch_size", self.batch_size, minimum=1)
        if not (isinstance(self.cfg_scale, (int, float)) and math.isfinite(self.cfg_scale) and self.cfg_scale >= 0):
            raise ValueError(
                f"cfg_scale must be a finite number >= 0 (1 = no guidance); got {self.cfg_scale} (--cfg-scale)"
            )
        if self.cfg_channels != "all" and not (
            isinstance(self.cfg_channels, int) and not isinstance(self.cfg_channels, bool) and self.cfg_channels >= 1
        ):
            raise ValueError(f"cfg_channels must be 'all' or an integer >= 1; got {self.cfg_channels!r}")
        if not (isinstance(self.eta, (int, float)) and 0.0 <= self.eta <= 1.0):
            raise ValueError(f"eta must be in [0, 1] (0 = deterministic DDIM); got {self.eta} (--eta)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")

    def replace(self, **changes: object) -> SampleConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def timestep_respacing(self) -> str:
        """The ADM respacing spec of these steps (what `diffusion_from_config` takes)."""
        return str(self.num_steps)


PAPER_EVAL_SAMPLING = SampleConfig()
"""The paper's FID evaluation (sample_ddp.py): DDPM 250 steps, cfg 1.5 (add cfg_channels=3 for the 2.27)."""
IMAGE_SAMPLING = SampleConfig(cfg_scale=4.0)
"""`ditkit sample` (the official sample.py): DDPM 250 steps, cfg 4 for images to look at."""
WALK_SAMPLING = SampleConfig(sampler="ddim", num_steps=50, cfg_scale=4.0)
"""Latent walks: deterministic DDIM, so a frame is a smooth function of its noise and label."""
TRAIN_SAMPLING = SampleConfig(sampler="ddim", num_steps=50, cfg_scale=1.0, batch_size=100)
"""Sample grids and evaluation while training (EMA model)."""


# Training.

DeviceChoice = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
NO_VAE = "none"  # TrainConfig.vae value for pixel-space training
PAPER_VAE = "stabilityai/sd-vae-ft-ema"  # the paper's VAE (same encoder as sd-vae-ft-mse)
# Fields that may change when a run resumes (config.json records the new values): cadence, length and speed, and
# the optimisation knobs a diverged run needs (exit code 3 advises a lower --lr or a --max-grad-norm). The rest
# (model, diffusion, data, image_size, vae, flip, batch, seed; AdamW's weight_decay, betas, eps, which its
# state carries) may not: the checkpoint would no longer fit the run.
RESUMABLE_FIELDS: frozenset[str] = frozenset(
    (
        "lr", "lr_decay", "warmup_steps", "max_grad_norm", "ema_decay", "ema_warmup", "out_dir", "max_steps",
        "num_workers", "micro_batch_size", "deterministic", "precision", "compile", "grad_checkpointing", "device",
        "num_threads", "log_every_steps", "ckpt_every_steps", "keep_last_ckpts", "milestone_every_steps",
        "sample_every_steps", "num_grid_images", "grid_seed", "sample", "eval_every_steps", "num_eval_samples",
        "eval_seed", "eval_ref",
    )
)  # fmt: skip


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
    vae: str = PAPER_VAE  # "none" (pixel space), a diffusers VAE folder or a hub id; unused for latent stores
    flip: bool | None = None  # random horizontal flips; None = on for natural images, off for digits
    num_workers: int = 4  # data-loader worker processes per rank (official default; 0 loads in-process)

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
            raise ValueError("out_dir must name a run directory; got an empty string (--out runs/NAME)")
        if self.model.learn_sigma != self.diffusion.learn_sigma:
            raise ValueError(
                f"model.learn_sigma={self.model.learn_sigma} but diffusion.learn_sigma="
                f"{self.diffusion.learn_sigma}; they must agree (set both, e.g. "
                "DiffusionConfig(learn_sigma=model.learn_sigma))"
            )
        optional = tuple(n for n in ("micro_batch_size", "num_threads") if getattr(self, n) is not None)
        for name in _POSITIVE_COUNTS + optional:
            _check_int(name, getattr(self, name), minimum=1)
        for name in _COUNTS:
            _check_int(name, getattr(self, name), minimum=0)
        if self.eval_every_steps and self.num_eval_samples < 2:
            raise ValueError(f"num_eval_samples must be >= 2 to score samples; got {self.num_eval_samples}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number; got {self.lr} (the paper uses 1e-4)")
        if self.lr_decay not in ("none", "cosine"):
            raise ValueError(f"lr_decay must be 'none' or 'cosine'; got {self.lr_decay!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0; got {self.weight_decay}")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1); got {self.adam_betas} (default 0.9 0.999)")
        if not self.adam_eps > 0:
            raise ValueError(f"adam_eps must be > 0; got {self.adam_eps}")
        if self.max_grad_norm is not None and not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise ValueError(
                f"max_grad_norm must be > 0 and finite, or None (no clipping); got {self.max_grad_norm} "
                "(--max-grad-norm, e.g. 1.0)"
            )
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1]; got {self.ema_decay} (the paper uses 0.9999)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {self.device!r}")
        if self.sample.cfg_scale != 1.0 and not self.model.has_null_class:
            raise ValueError(
                f"sample.cfg_scale {self.sample.cfg_scale} needs a class-conditional model with label dropout "
                "(a null class); use --cfg-scale 1"
            )
        if not str(self.vae).strip():
            raise ValueError("vae must be 'none', a diffusers VAE folder or a hub id; got an empty string")

    @property
    def is_latent(self) -> bool:
        """True when images are encoded by a VAE (a latent store is latent whatever `vae` says)."""
        return self.vae.strip().lower() != NO_VAE

    def replace(self, **changes: object) -> TrainConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

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
            raise ValueError(f"unknown TrainConfig fields {unknown}; allowed: {', '.join(sorted(known))}")
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
        return cls(**fields)


_POSITIVE_COUNTS = ("image_size", "max_steps", "global_batch_size", "log_every_steps", "ckpt_every_steps",
                    "keep_last_ckpts", "num_grid_images")  # fmt: skip
_COUNTS = ("num_workers", "warmup_steps", "milestone_every_steps", "sample_every_steps", "eval_every_steps",
           "grid_seed", "eval_seed", "seed")  # fmt: skip
_LEGACY_SAMPLE_FIELDS = {"sampler": "sampler", "num_sampling_steps": "num_steps", "cfg_scale": "cfg_scale",
                         "eval_batch_size": "batch_size"}  # fmt: skip


def validate_for_world(cfg: TrainConfig, world_size: int) -> None:
    """Checks that need the process count: batch divisibility and micro-batches."""
    if cfg.global_batch_size % world_size:
        raise ValueError(
            f"global_batch_size {cfg.global_batch_size} is not divisible by the {world_size} processes; "
            f"use a multiple of {world_size} (--global-batch-size) or another --nproc_per_node"
        )
    per_rank = cfg.global_batch_size // world_size
    micro = cfg.micro_batch_size or per_rank
    if micro > per_rank or per_rank % micro:
        raise ValueError(
            f"micro_batch_size {micro} must divide the per-process batch {per_rank} "
            f"(global {cfg.global_batch_size} / {world_size} processes); pick a divisor of {per_rank}"
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
            raise ValueError("out_dir must name the VAE folder to write; got an empty string (--out DIR)")
        for name in ("image_size", "max_steps", "batch_size", "log_every_steps", "ckpt_every_steps"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("num_scale_images", self.num_scale_images, minimum=2)
        _check_int("latent_channels", self.latent_channels, minimum=1)
        if not self.block_out_channels or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"block_out_channels {self.block_out_channels} must be non-empty multiples of norm_num_groups "
                f"{self.norm_num_groups}"
            )
        if self.image_size % self.downsample:
            fit = max(self.downsample, self.image_size // self.downsample * self.downsample)
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of the downsampling {self.downsample} "
                f"({len(self.block_out_channels)} blocks); pass --image-size {fit}"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)) or not (self.kl_weight >= 0 and math.isfinite(self.kl_weight)):
            raise ValueError(f"lr must be > 0 and kl_weight >= 0, both finite; got {self.lr}, {self.kl_weight}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {self.device!r}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def replace(self, **changes: object) -> VAETrainConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
