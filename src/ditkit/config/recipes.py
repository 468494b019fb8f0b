"""Training recipes besides the paper run (whose settings are the config defaults): the CPU demo on the
embedded MNIST, and `ditkit train --recipe` (cpu-small: the latent demo's choices on any data). A recipe is a
TrainConfig (plus how its model is sampled when scored); `ditkit train` with no --data, `ditkit demo` and
the studies start from here.

The demo departs from the paper where a 2-core CPU and a few minutes demand it (each choice was measured;
see benchmarks/demo.md): a small, wide-patch DiT in pixel space, x_0 prediction on a cosine schedule, a
higher learning rate with warm-up, an EMA with warm-up, and a fast solver for sampling.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from ditkit.config.model import PRESETS, DiffusionConfig, ModelConfig
from ditkit.config.sampling import DEMO_SAMPLING
from ditkit.config.training import TrainConfig, VAETrainConfig
from ditkit.runtime.errors import InputError

DEMO_IMAGE_SIZE = 24  # MNIST digits cropped 28 -> 24 (every digit stays whole: 36 tokens at patch 4)
DEMO_REPORT_IMAGE_SIZE = 32  # samples are framed back to 32 px (the classifier's and the usual MNIST-32 layout)


SMALL_RUN_OPTIMISATION: dict[str, Any] = {
    "global_batch_size": 64,
    "lr": 3e-3,
    "warmup_steps": 100,
    "adam_betas": (0.9, 0.99),
    "ema_decay": 0.999,
    "ema_warmup": True,
    "log_every_steps": 50,
    "ckpt_every_steps": 250,
}
"""What the demo and the cpu-small recipe share: a small model's optimisation in a few thousand steps (a higher
lr with warm-up, an EMA with warm-up; measured in benchmarks/demo.md)."""


def demo_model_config() -> ModelConfig:
    """The demo's model: the DiT-Demo/4 preset (adaLN-Zero, 6 x 96, patch 4 on 24x24 digits)."""
    return PRESETS["DiT-Demo/4"]


def demo_train_config(out_dir: str | Path, **overrides: Any) -> TrainConfig:
    """The demo's training run on the embedded MNIST (pixel space, no VAE); `overrides` replace fields."""
    fields: dict[str, Any] = {
        "out_dir": str(out_dir),
        "model": demo_model_config(),
        "diffusion": DiffusionConfig(learn_sigma=False, noise_schedule="cosine", predict_xstart=True),
        "data": None,
        "image_size": DEMO_IMAGE_SIZE,
        "vae": "none",
        "flip": False,
        "num_workers": 0,
        "max_steps": 1400,
        **SMALL_RUN_OPTIMISATION,
        "keep_last_ckpts": 1,
        "sample_every_steps": 700,
        "num_grid_images": 30,
        "sample": DEMO_SAMPLING.replace(batch_size=200),
        "eval_every_steps": 1400,  # `ditkit train` scores at its last step (`ditkit demo` scores 2 x 1,000 itself)
        "num_eval_samples": 200,
    }
    fields.update(overrides)
    return TrainConfig(**fields)


# The latent route on the same digits (`ditkit demo --latent`).

LATENT_DEMO_MODEL: ModelConfig = PRESETS["DiT-LatentDemo/2"]
"""The latent demo's DiT: 16 tokens (2x2 patches of 8x8x4 latents), adaLN-Zero, 6 x 128."""


def latent_demo_vae_config(out_dir: str | Path, **overrides: Any) -> VAETrainConfig:
    """The latent demo's autoencoder: the VAETrainConfig defaults (MNIST 32 px -> 8x8x4 latents)."""
    return VAETrainConfig(out_dir=str(out_dir), **overrides)


def shipped_mnist_vae() -> Path | None:
    """The autoencoder ditkit ships (trained by `ditkit train-vae` with the defaults; see its README), if present."""
    folder = Path(str(resources.files("ditkit").joinpath("assets", "mnist_vae")))
    return folder if (folder / "diffusion_pytorch_model.safetensors").is_file() else None


def latent_demo_train_config(
    out_dir: str | Path, latents: str | Path, vae: str | Path, **overrides: Any
) -> TrainConfig:
    """The pixel demo's recipe on a latent store of the digits (decoded by `vae` for grids and scoring)."""
    fields: dict[str, Any] = {
        "model": LATENT_DEMO_MODEL,
        "data": str(latents),
        "image_size": DEMO_REPORT_IMAGE_SIZE,
        "vae": str(vae),
        "sample": DEMO_SAMPLING.replace(batch_size=200),
    }
    fields.update(overrides)
    return demo_train_config(out_dir, **fields)


# `ditkit demo --objective flow`: the same model and optimisation trained with SiT's flow matching.

FLOW_DEMO_DIFFUSION = DiffusionConfig(objective="flow", learn_sigma=False)  # SiT's defaults: linear, velocity
FLOW_DEMO_SAMPLING = DEMO_SAMPLING.replace(sampler="heun", num_steps=10, batch_size=200)
"""The flow demo's sampler (grids and scoring): Heun on 10 grid points (19 model evaluations), guidance 3. On
500 samples of the 1,400-step flow demo Heun-10, -20 and -50 all gave accuracy 0.998 / FD 1.93 guided and
0.83 / 0.82 / 0.82, FD 2.81 unguided; Euler-20 FD 2.03, dopri5 1.92 (2026-12, CPU)."""


def objective_fields(objective: str) -> dict[str, Any]:
    """The demo recipes' fields for an objective: none for "diffusion", the flow process and sampler for "flow"."""
    if objective == "flow":
        return {"diffusion": FLOW_DEMO_DIFFUSION, "sample": FLOW_DEMO_SAMPLING}
    if objective != "diffusion":
        raise InputError(f"objective must be 'diffusion' or 'flow'; got {objective!r}", setting="objective")
    return {}


# Named recipes for `ditkit train --recipe NAME` on any data. A recipe sets what is trained and how (model,
# diffusion, optimisation, EMA, cadences, sampling), never what the data decide (image size, VAE, flips).

RECIPES: tuple[str, ...] = ("paper", "cpu-small")
"""paper: the paper's run (TrainConfig's defaults: DiT-XL/2, batch 256, lr 1e-4, EMA 0.9999, eps + linear).
cpu-small: the latent demo's choices on any data, converging in well under an hour on a laptop CPU."""

CPU_SMALL_MAX_TOKENS = 64  # cpu-small patches the input as finely as this many tokens allow

_RECIPE_FIELDS = (
    "model",
    "diffusion",
    "max_steps",
    "global_batch_size",
    "lr",
    "warmup_steps",
    "adam_betas",
    "ema_decay",
    "ema_warmup",
    "log_every_steps",
    "ckpt_every_steps",
    "sample_every_steps",
    "sample",
)


def recipe_fields(name: str) -> dict[str, Any]:
    """The TrainConfig fields recipe `name` sets (see RECIPES); the model's input shape comes from the data."""
    if name == "paper":
        paper = TrainConfig(out_dir="paper")
        return {field: getattr(paper, field) for field in _RECIPE_FIELDS}
    if name == "cpu-small":
        return {
            "model": PRESETS["DiT-XS/2"].replace(learn_sigma=False),  # its patch: cpu_small_patch
            "diffusion": DiffusionConfig(learn_sigma=False, noise_schedule="cosine", predict_xstart=True),
            "max_steps": 2000,
            **SMALL_RUN_OPTIMISATION,
            "sample_every_steps": 500,
            "sample": DEMO_SAMPLING,
        }
    raise InputError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}", setting="recipe")


def cpu_small_patch(input_size: int) -> int:
    """cpu-small's patch for a `input_size`-wide model input: the smallest of 2, 4, 8 that divides it into at
    most CPU_SMALL_MAX_TOKENS tokens (2 on 8x8 latents: 16 tokens; 4 on 24 px digits: 36; 4 on 32x32 latents: 64)."""
    fitting = [p for p in (2, 4, 8) if input_size % p == 0]
    return next((p for p in fitting if (input_size // p) ** 2 <= CPU_SMALL_MAX_TOKENS), fitting[-1] if fitting else 2)
