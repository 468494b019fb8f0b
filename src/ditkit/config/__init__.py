"""Configuration: frozen dataclasses whose defaults reproduce the DiT paper, the presets and every shared constant.

Defaults reproduce the DiT paper (Peebles & Xie, ICCV 2023, https://arxiv.org/abs/2212.09748):
DiT-XL/2 at 256 px, adaLN-Zero blocks, 1000-step linear schedule, learned sigma, label dropout 0.1.
One module per concern (constants, model, sampling, training); this package re-exports them, and named
recipes besides the paper run live in `ditkit.config.recipes`.
"""

from ditkit.config.constants import (
    BLOCK_DESIGNS,
    DEVICES,
    DIFFUSION_SAMPLERS,
    FLOW_SAMPLERS,
    NO_VAE,
    NUM_DIFFUSION_STEPS,
    PAPER_VAE,
    PATCH_SIZES,
    PRECISIONS,
    SAMPLERS,
    TIMESTEP_FREQ_DIM,
    TIMESTEP_MAX_PERIOD,
    VAE_DOWNSAMPLE,
    VAE_LATENT_CHANNELS,
    VAE_LATENT_SCALE,
    BlockDesign,
    DeviceChoice,
    Precision,
    SamplerName,
)
from ditkit.config.model import PRESETS, DiffusionConfig, FlowConfig, ModelConfig, default_diffusion, get_preset
from ditkit.config.sampling import (
    BENCH_SAMPLING,
    DEMO_SAMPLING,
    FLOW_SAMPLING,
    IMAGE_SAMPLING,
    PAPER_EVAL_SAMPLING,
    SAMPLE_BATCH_CPU,
    SAMPLE_BATCH_CUDA,
    TRAIN_SAMPLING,
    WALK_SAMPLING,
    SampleConfig,
    check_sampler,
    for_process,
)
from ditkit.config.training import RESUMABLE_FIELDS, TrainConfig, VAETrainConfig, validate_for_world

__all__ = [
    "BENCH_SAMPLING",
    "BLOCK_DESIGNS",
    "DEMO_SAMPLING",
    "DEVICES",
    "DIFFUSION_SAMPLERS",
    "FLOW_SAMPLERS",
    "FLOW_SAMPLING",
    "IMAGE_SAMPLING",
    "NO_VAE",
    "NUM_DIFFUSION_STEPS",
    "PAPER_EVAL_SAMPLING",
    "PAPER_VAE",
    "PATCH_SIZES",
    "PRECISIONS",
    "PRESETS",
    "RESUMABLE_FIELDS",
    "SAMPLERS",
    "SAMPLE_BATCH_CPU",
    "SAMPLE_BATCH_CUDA",
    "TIMESTEP_FREQ_DIM",
    "TIMESTEP_MAX_PERIOD",
    "TRAIN_SAMPLING",
    "VAE_DOWNSAMPLE",
    "VAE_LATENT_CHANNELS",
    "VAE_LATENT_SCALE",
    "WALK_SAMPLING",
    "BlockDesign",
    "DeviceChoice",
    "DiffusionConfig",
    "FlowConfig",
    "ModelConfig",
    "Precision",
    "SampleConfig",
    "SamplerName",
    "TrainConfig",
    "VAETrainConfig",
    "check_sampler",
    "default_diffusion",
    "for_process",
    "get_preset",
    "validate_for_world",
]
