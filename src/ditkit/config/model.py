"""Model and diffusion configs, and the presets: the 12 paper sizes (Table 1) plus tiny test and demo sizes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ditkit.config.constants import (
    BLOCK_DESIGNS,
    FLOW_LOSS_WEIGHTS,
    FLOW_PATHS,
    FLOW_PREDICTIONS,
    NUM_DIFFUSION_STEPS,
    OBJECTIVES,
    PATCH_SIZES,
    VAE_LATENT_CHANNELS,
    BlockDesign,
    FlowLossWeight,
    FlowPath,
    FlowPrediction,
    Objective,
)
from ditkit.runtime.errors import InputError, check_count


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
            raise InputError(f"patch_size must be one of {PATCH_SIZES}; got {self.patch_size}", setting="patch_size")
        if self.input_size <= 0 or self.input_size % self.patch_size:
            raise InputError(
                f"input_size must be a positive multiple of patch_size {self.patch_size}; got {self.input_size}",
                setting="input_size",
            )
        if self.hidden_size <= 0 or self.num_heads <= 0 or self.hidden_size % self.num_heads:
            raise InputError(
                f"hidden_size must be divisible by num_heads; got hidden_size={self.hidden_size}, "
                f"num_heads={self.num_heads}",
                setting="hidden_size",
            )
        if self.hidden_size % 4:
            raise InputError(
                f"hidden_size must be a multiple of 4 (2D sin-cos positions); got {self.hidden_size}",
                setting="hidden_size",
            )
        if self.depth <= 0:
            raise InputError(f"depth must be >= 1; got {self.depth}", setting="depth")
        if int(self.hidden_size * self.mlp_ratio) < 1:
            raise InputError(
                f"mlp_ratio must give an MLP width >= 1 (mlp_ratio x hidden_size); got {self.mlp_ratio}",
                setting="mlp_ratio",
            )
        if self.in_channels <= 0:
            raise InputError(f"in_channels must be >= 1; got {self.in_channels}", setting="in_channels")
        if self.num_classes < 0:
            raise InputError(
                f"num_classes must be >= 0 (0 = unconditional); got {self.num_classes}", setting="num_classes"
            )
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise InputError(
                f"class_dropout_prob must be in [0, 1); got {self.class_dropout_prob}", setting="class_dropout_prob"
            )
        if self.block not in BLOCK_DESIGNS:
            raise InputError(f"block must be one of {', '.join(BLOCK_DESIGNS)}; got {self.block!r}", setting="block")

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

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


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
# The latent demo's model (`ditkit demo`): 6 x 128 on 2x2 patches of 8x8x4 latents (16 tokens), no learned sigma.
PRESETS["DiT-LatentDemo/2"] = ModelConfig(
    depth=6,
    hidden_size=128,
    num_heads=4,
    patch_size=2,
    input_size=8,
    in_channels=4,
    num_classes=10,
    learn_sigma=False,
)
# Between the tiny test sizes and DiT-S (33 M): the latent demo's 6 x 128 on the paper's inputs, ~2.0 M parameters
# (256 / 64 tokens at 256 px); what the cpu-small recipe trains (ditkit.config.recipes).
PRESETS["DiT-XS/2"] = ModelConfig(depth=6, hidden_size=128, num_heads=4, patch_size=2)
PRESETS["DiT-XS/4"] = ModelConfig(depth=6, hidden_size=128, num_heads=4, patch_size=4)


def get_preset(name: str, **overrides: object) -> ModelConfig:
    """Return the preset `name` (e.g. "DiT-XL/2") with fields replaced by `overrides`."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


@dataclass(frozen=True, kw_only=True)
class FlowConfig:
    """SiT's flow matching (Ma et al. 2024): its defaults are SiT's (linear path, velocity, no loss weight)."""

    path: FlowPath = "linear"  # x_t = alpha_t x_1 + sigma_t x_0: "linear", "gvp" (variance preserving), "vp" (VP SDE)
    prediction: FlowPrediction = "velocity"  # what the model predicts
    loss_weight: FlowLossWeight = None  # weighting of the score / noise losses: None, "velocity", "likelihood"
    train_eps: float | None = None  # training times keep this far from singular ends; None: SiT's per path
    sample_eps: float | None = None  # the same for sampling; None: SiT's per path and prediction

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("path", self.path, FLOW_PATHS),
            ("prediction", self.prediction, FLOW_PREDICTIONS),
            ("loss_weight", self.loss_weight, FLOW_LOSS_WEIGHTS),
        ):
            if value not in choices:
                raise InputError(f"{name} must be one of {choices}; got {value!r}", setting=name)
        for name, eps in (("train_eps", self.train_eps), ("sample_eps", self.sample_eps)):
            if eps is not None and not (isinstance(eps, (int, float)) and 0.0 <= eps < 0.5):
                raise InputError(f"{name} must be in [0, 0.5) or None (SiT's default); got {eps!r}", setting=name)


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig:
    """The process a model is trained and sampled with: ADM's Gaussian diffusion as DiT trains it (1000 linear
    steps, eps prediction, learned range), or with objective "flow" SiT's flow matching (`flow`). A flow process
    learns no variance: with learn_sigma True it only records a model with SiT's doubled output (its released
    checkpoints), whose extra channels the flow ignores as SiT's forward does. A new flow run has learn_sigma off.
    """

    num_train_steps: int = NUM_DIFFUSION_STEPS  # length of the training chain (sampling respaces it)
    noise_schedule: Literal["linear", "cosine"] = "linear"  # betas 1e-4..0.02 (scaled by 1000/num_train_steps)
    learn_sigma: bool = True  # learned-range variance (else fixed large variance, MSE only)
    predict_xstart: bool = False  # eps prediction (the paper) unless True
    objective: Objective = "diffusion"  # "flow": SiT's flow matching with `flow` (None there: FlowConfig())
    flow: FlowConfig | None = None  # only with objective "flow"

    def __post_init__(self) -> None:
        check_count("num_train_steps", self.num_train_steps, minimum=2)
        if self.noise_schedule not in ("linear", "cosine"):
            raise InputError(
                f"noise_schedule must be 'linear' or 'cosine'; got {self.noise_schedule!r}", setting="noise_schedule"
            )
        if self.objective not in OBJECTIVES:
            raise InputError(f"objective must be one of {OBJECTIVES}; got {self.objective!r}", setting="objective")
        if self.objective == "diffusion":
            if self.flow is not None:
                raise InputError("flow settings (path, prediction) need objective 'flow'", setting="objective")
            return
        if self.flow is None:
            object.__setattr__(self, "flow", FlowConfig())
        if self.predict_xstart or self.noise_schedule != "linear":
            raise InputError(
                "predict_xstart and noise_schedule are diffusion settings; a flow model sets prediction and path",
                setting="predict_xstart" if self.predict_xstart else "noise_schedule",
            )

    @property
    def is_flow(self) -> bool:
        return self.objective == "flow"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DiffusionConfig:
        """From `dataclasses.asdict` output; files written before 0.2 call the chain length `num_steps`, and
        files without `objective` are diffusion."""
        fields = dict(values)
        if "num_steps" in fields:
            fields["num_train_steps"] = fields.pop("num_steps")
        if isinstance(fields.get("flow"), dict):
            fields["flow"] = FlowConfig(**fields["flow"])
        return cls(**fields)


FLOW_FIELDS = ("path", "prediction", "loss_weight", "train_eps", "sample_eps")  # FlowConfig's, as a user gives them


def process_from_choices(base: DiffusionConfig, choices: dict[str, Any], *, learn_sigma: bool) -> DiffusionConfig:
    """The process of a user's choices (`build_train_config`'s diffusion_overrides) with the model's learn_sigma:
    objective "flow" and FLOW_FIELDS make a flow process; otherwise the diffusion fields replace `base`'s."""
    fields = dict(choices)
    flow = {k: fields.pop(k) for k in FLOW_FIELDS if k in fields}
    if fields.get("objective") == "flow":
        if learn_sigma:  # SiT's checkpoints carry unused channels; a new run trains none
            raise InputError("a flow model learns no variance: learn_sigma must be off", setting="learn_sigma")
        return DiffusionConfig(**fields, flow=FlowConfig(**flow), learn_sigma=learn_sigma)
    if flow:
        raise InputError(f"{', '.join(flow)}: flow-matching settings; add objective 'flow'", setting="objective")
    return dataclasses.replace(base, **fields, learn_sigma=learn_sigma)


def default_diffusion(model: ModelConfig, objective: Objective = "diffusion") -> DiffusionConfig:
    """The process of a model whose training process is not recorded (official checkpoints): the paper's
    diffusion (DiT's), or with objective "flow" SiT's defaults (linear path, velocity; SiT-XL/2's learned-sigma
    channels are ignored)."""
    if objective not in OBJECTIVES:
        raise InputError(f"objective must be one of {OBJECTIVES}; got {objective!r}", setting="objective")
    if objective == "flow":
        return DiffusionConfig(objective="flow", flow=FlowConfig(), learn_sigma=model.learn_sigma)
    return DiffusionConfig(learn_sigma=model.learn_sigma)
