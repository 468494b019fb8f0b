"""How to sample: `SampleConfig`, the only carrier of sampling settings, and the named default of every use."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

from ditkit.config.constants import (
    DIFFUSION_SAMPLERS,
    FLOW_SAMPLERS,
    PRECISIONS,
    SAMPLERS,
    SDE_DIFFUSION_FORMS,
    SDE_LAST_STEPS,
    Precision,
    SamplerName,
    SdeDiffusionForm,
    SdeLastStep,
)
from ditkit.config.model import DiffusionConfig
from ditkit.runtime.errors import InputError, check_count

SAMPLE_BATCH_CPU = 32  # images per forward when SampleConfig.batch_size is None
SAMPLE_BATCH_CUDA = 128  # XL/2 on an H200: 128 images (256 rows with guidance) fill the card; 256 gains <1%


@dataclass(frozen=True, kw_only=True)
class SampleConfig:
    """How to sample a DiT. Defaults: the paper's FID-50K evaluation (Sec. 4): 250 DDPM steps, cfg 1.5.

    The paper's FID 2.27 also guides only 3 of the 4 latent channels (the official code's quirk):
    `cfg_channels=3` reproduces it. The named configs below are the defaults of each use.
    """

    sampler: SamplerName = "ddpm"  # "ddpm" (ancestral, learned variance), "ddim", "dpm++2m" (DPM-Solver++(2M));
    # a flow model's (FLOW_SAMPLERS): ODE "euler", "heun", "dopri5" (torchdiffeq); SDE "sde-euler", "sde-heun"
    num_steps: int = 250  # sampling steps (>= 2): the training chain respaced to this many; flow: grid points (SiT)
    respacing: str | None = None  # ADM spacing of the num_steps steps ("ddim25": the official DDIM stride,
    # "10,15,20": steps per section); None: evenly spaced (str(num_steps)). Must yield num_steps steps.
    cfg_scale: float = 1.5  # classifier-free guidance scale; 1 = none (no doubled batch), 0 = unconditional
    cfg_channels: Literal["all"] | int = "all"  # guided output channels; 3 = the official DiT variant
    eta: float = 0.0  # DDIM noise in [0, 1] (0 = deterministic); the other samplers ignore it
    clip_denoised: bool | None = None  # clamp x_0 predictions to [-1, 1]; None = on in pixel space only
    batch_size: int | None = None  # images per forward (guidance doubles the rows); None: SAMPLE_BATCH_CPU / _CUDA
    precision: Precision = "auto"  # the network's arithmetic (see Precision); the diffusion stays fp32
    compile: bool = False  # torch.compile the network for the fixed-shape loop (CUDA: ~2x, after ~20 s)
    # Flow samplers only (SiT's defaults): the SDE's diffusion coefficient w_t and last step; dopri5's tolerances.
    sde_diffusion_form: SdeDiffusionForm = "sigma"  # w_t = norm x sigma_t (see ditkit.flow.paths)
    sde_diffusion_norm: float = 1.0
    sde_last_step: SdeLastStep = "mean"  # the noiseless step into t = 1: "mean", "tweedie", "euler", None (none)
    sde_last_step_size: float = 0.04
    ode_atol: float = 1e-6
    ode_rtol: float = 1e-3

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise InputError(f"sampler must be one of {', '.join(SAMPLERS)}; got {self.sampler!r}", setting="sampler")
        check_count("num_steps", self.num_steps, minimum=2)  # ADM's posterior needs a previous step
        if self.respacing is not None and _respaced_steps(self.respacing) != self.num_steps:
            raise InputError(
                f"respacing must be an ADM spec of num_steps={self.num_steps} steps ('ddim{self.num_steps}', "
                f"'{self.num_steps}' or sections such as '10,15'); got {self.respacing!r}",
                setting="respacing",
            )
        if self.batch_size is not None:
            check_count("batch_size", self.batch_size, minimum=1)
        if not (isinstance(self.cfg_scale, (int, float)) and math.isfinite(self.cfg_scale) and self.cfg_scale >= 0):
            raise InputError(
                f"cfg_scale must be a finite number >= 0 (1 = no guidance); got {self.cfg_scale}",
                setting="cfg_scale",
            )
        if self.cfg_channels != "all" and not (
            isinstance(self.cfg_channels, int) and not isinstance(self.cfg_channels, bool) and self.cfg_channels >= 1
        ):
            raise InputError(
                f"cfg_channels must be 'all' or an integer >= 1; got {self.cfg_channels!r}", setting="cfg_channels"
            )
        if not (isinstance(self.eta, (int, float)) and 0.0 <= self.eta <= 1.0):
            raise InputError(f"eta must be in [0, 1] (0 = deterministic DDIM); got {self.eta}", setting="eta")
        if self.precision not in PRECISIONS:
            raise InputError(
                f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}", setting="precision"
            )

        self._check_flow_fields()

    def _check_flow_fields(self) -> None:
        if self.sde_diffusion_form not in SDE_DIFFUSION_FORMS:
            raise InputError(
                f"sde_diffusion_form must be one of {', '.join(SDE_DIFFUSION_FORMS)}; got {self.sde_diffusion_form!r}",
                setting="sde_diffusion_form",
            )
        if self.sde_last_step not in SDE_LAST_STEPS:
            raise InputError(
                f"sde_last_step must be one of {SDE_LAST_STEPS}; got {self.sde_last_step!r}", setting="sde_last_step"
            )
        for name, low, high in (("sde_diffusion_norm", 0.0, math.inf), ("sde_last_step_size", 0.0, 0.5)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and low <= value < high):
                raise InputError(f"{name} must be in [{low}, {high}); got {value!r}", setting=name)
        for name in ("ode_atol", "ode_rtol"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < 1):
                raise InputError(f"{name} must be in (0, 1); got {value!r}", setting=name)

    def replace(self, **changes: Any) -> SampleConfig:
        return dataclasses.replace(self, **changes)

    def batch_size_on(self, device_type: str) -> int:
        """Images per forward pass on a device of this type ("cpu", "cuda"): `batch_size` or the default."""
        if self.batch_size is not None:
            return self.batch_size
        return SAMPLE_BATCH_CUDA if device_type == "cuda" else SAMPLE_BATCH_CPU

    @property
    def timestep_respacing(self) -> str:
        """The ADM respacing spec of these steps (what `diffusion_from_config` takes)."""
        return self.respacing if self.respacing is not None else str(self.num_steps)


def _respaced_steps(spec: object) -> int | None:
    """How many steps an ADM respacing spec keeps ("ddim25": 25, "10,15": 25); None when it is not one."""
    if not isinstance(spec, str):
        return None
    body = spec.removeprefix("ddim")
    parts = body.split(",") if spec == body else [body]
    if not all(p.strip().isdigit() for p in parts):
        return None
    return sum(int(p) for p in parts)


PAPER_EVAL_SAMPLING = SampleConfig()
"""The paper's FID evaluation (sample_ddp.py): DDPM 250 steps, cfg 1.5 (add cfg_channels=3 for the 2.27)."""
IMAGE_SAMPLING = SampleConfig(cfg_scale=4.0)
"""`ditkit sample` (the official sample.py): DDPM 250 steps, cfg 4 for images to look at."""
WALK_SAMPLING = SampleConfig(sampler="ddim", num_steps=50, cfg_scale=4.0)
"""Latent walks: deterministic DDIM, so a frame is a smooth function of its noise and label."""
TRAIN_SAMPLING = SampleConfig(sampler="ddim", num_steps=50, cfg_scale=1.0, batch_size=100)
"""Sample grids and evaluation while training (EMA model)."""
DEMO_SAMPLING = SampleConfig(sampler="dpm++2m", num_steps=10, cfg_scale=3.0, batch_size=250)
"""How the demo samples (training grids and evaluation too): DPM-Solver++(2M), 10 steps, guidance 3 (12 and
20 steps gave the same accuracy, 0.996 / 0.78 guided / unguided on 500 samples of a 900-step model)."""
BENCH_SAMPLING = SampleConfig(cfg_scale=4.0, precision="auto")
"""`ditkit bench`: guided DDPM (doubled rows), the paper's sampling loop; steps and batch are set per run."""
FLOW_SAMPLING = SampleConfig(sampler="heun", num_steps=50, cfg_scale=4.0)
"""`ditkit sample` of a flow model, and the sampler and steps any use takes for one when none is given: SiT's
probability-flow ODE with Heun's method on 50 grid points (98 model evaluations), guidance 4 (SiT's sample.py)."""


def check_sampler(sampler: str, process: DiffusionConfig) -> None:
    """A sampler of the process's own kind, else one line naming both and the fix."""
    if process.is_flow and sampler not in FLOW_SAMPLERS:
        raise InputError(
            f"sampler {sampler!r} is a diffusion sampler but this model was trained with flow matching: use one "
            f"of {', '.join(FLOW_SAMPLERS)} (or give none: {FLOW_SAMPLING.sampler})",
            setting="sampler",
        )
    if not process.is_flow and sampler not in DIFFUSION_SAMPLERS:
        raise InputError(
            f"sampler {sampler!r} is a flow-matching sampler but this model was trained with diffusion: use one "
            f"of {', '.join(DIFFUSION_SAMPLERS)}",
            setting="sampler",
        )


def for_process(config: SampleConfig, process: DiffusionConfig, *, given: Collection[str] = ()) -> SampleConfig:
    """`config` for a model of `process`: a use's named default (a diffusion sampler) becomes FLOW_SAMPLING's
    sampler and steps for a flow model, unless the user `given` them (then a mismatch is an InputError)."""
    if process.is_flow and config.sampler not in FLOW_SAMPLERS and "sampler" not in given:
        steps = {} if "num_steps" in given else {"num_steps": FLOW_SAMPLING.num_steps}
        config = config.replace(sampler=FLOW_SAMPLING.sampler, **steps)
    check_sampler(config.sampler, process)
    return config
