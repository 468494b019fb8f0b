"""The one home of every shared constant and of the string choices configs accept."""

from __future__ import annotations

from typing import Literal

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
DIFFUSION_SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm++2m")
FLOW_SAMPLERS: tuple[str, ...] = ("euler", "heun", "dopri5", "sde-euler", "sde-heun")  # ODE, then SDE (SiT)
SAMPLERS: tuple[str, ...] = DIFFUSION_SAMPLERS + FLOW_SAMPLERS
OBJECTIVES: tuple[str, ...] = ("diffusion", "flow")
FLOW_PATHS: tuple[str, ...] = ("linear", "gvp", "vp")
FLOW_PREDICTIONS: tuple[str, ...] = ("velocity", "score", "noise")
FLOW_LOSS_WEIGHTS: tuple[str | None, ...] = (None, "velocity", "likelihood")
SDE_DIFFUSION_FORMS: tuple[str, ...] = ("constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing")
SDE_LAST_STEPS: tuple[str | None, ...] = (None, "mean", "tweedie", "euler")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "tf32", "bf16")

BlockDesign = Literal["adaln_zero", "adaln", "cross_attn", "in_context"]
SamplerName = Literal["ddpm", "ddim", "dpm++2m", "euler", "heun", "dopri5", "sde-euler", "sde-heun"]
Objective = Literal["diffusion", "flow"]
FlowPath = Literal["linear", "gvp", "vp"]
FlowPrediction = Literal["velocity", "score", "noise"]
FlowLossWeight = Literal["velocity", "likelihood"] | None
SdeDiffusionForm = Literal["constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing"]
SdeLastStep = Literal["mean", "tweedie", "euler"] | None
Precision = Literal["auto", "fp32", "tf32", "bf16"]
"""The network's arithmetic. "auto": bf16 autocast (+ TF32) on CUDA; on a CPU bf16 only where a short probe
shows it faster than fp32 (CPUs with bf16 units), else fp32. "tf32": fp32 with TF32 matmuls on CUDA (what the
official code uses; fp32 elsewhere). "bf16": bf16 autocast. Diffusion arithmetic and losses stay fp32."""


DeviceChoice = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
NO_VAE = "none"  # TrainConfig.vae value for pixel-space training
PAPER_VAE = "stabilityai/sd-vae-ft-ema"  # the paper's VAE (same encoder as sd-vae-ft-mse)

# Bounds of counts a user gives (what a machine can hold; larger values are typos, refused in one line).
MAX_STEPS = 10**9  # training steps and step cadences
MAX_BATCH = 2**20  # images per batch
MAX_IMAGE_SIZE = 8192  # pixels per side
MAX_SEED = 2**63 - 1  # seeds are hashed with 64-bit integers
