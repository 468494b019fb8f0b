"""DiT <-> diffusers conversion without diffusers: state-dict keys, transformer and scheduler configs.

ditkit's keys are facebookresearch/DiT's, so the same converter serves ditkit files and the official
`DiT-XL-2-*.pt`. diffusers (https://github.com/huggingface/diffusers, checked on 0.42.1) differs in layout:
  - `attn.qkv` is split into `attn1.to_q/to_k/to_v` (rows [q; k; v], heads contiguous in each);
  - the shared timestep and label embedders are copied into every block (`norm1.emb`); the final layer
    reads block 0's copy. A model trained in diffusers may let the copies drift apart: ditkit refuses it;
  - `pos_embed` is not stored: diffusers recomputes the same fixed 2D sin-cos table (bit-identical);
  - the label table always has a null row, and DiTPipeline guides with the hard-coded null id 1000, so
    exported tables have 1001 rows (classes, copies of the null row, the null row at 1000);
  - norm eps: the pre-MLP LayerNorm uses the config's `norm_eps` (class default 1e-5); exports write DiT's 1e-6.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from ditkit.config import DiffusionConfig, ModelConfig
from ditkit.model.dit import LN_EPS, sincos_pos_embed_2d
from ditkit.runtime.errors import InputError

log = logging.getLogger(__name__)

DIFFUSERS_NULL_LABEL = 1000  # DiTPipeline.__call__ guides with this class id, whatever the model
_TABLE = "norm1.emb.class_embedder.embedding_table.weight"
_BLOCK_KEYS = (  # (ditkit / official, diffusers) inside block i; .weight and .bias each
    ("adaLN_modulation.1", "norm1.linear"),  # the same 6 chunks: shift, scale, gate (attention), same (MLP)
    ("attn.proj", "attn1.to_out.0"),
    ("mlp.fc1", "ff.net.0.proj"),
    ("mlp.fc2", "ff.net.2"),
)
_EMBEDDER_KEYS = (  # shared in ditkit, copied into every block in diffusers
    ("t_embedder.mlp.0", "norm1.emb.timestep_embedder.linear_1"),
    ("t_embedder.mlp.2", "norm1.emb.timestep_embedder.linear_2"),
)
_TOP_KEYS = (
    ("x_embedder.proj", "pos_embed.proj"),
    ("final_layer.adaLN_modulation.1", "proj_out_1"),  # (shift, scale) on both sides
    ("final_layer.linear", "proj_out_2"),  # the same unpatchify order
)


# What diffusers can represent.


def check_exportable(config: ModelConfig) -> None:
    """Raise a one-line ValueError naming the first feature of `config` that DiTPipeline cannot represent."""
    if config.block not in ("adaln_zero", "adaln"):
        raise InputError(
            f"block design {config.block!r} has no diffusers equivalent (DiTTransformer2DModel has only "
            "adaLN-Zero blocks); export it as a safetensors file instead",
            setting="format",
        )
    if config.hidden_size * config.mlp_ratio != 4 * config.hidden_size:
        raise InputError(
            f"mlp_ratio {config.mlp_ratio} has no diffusers equivalent (its DiT MLP is 4x wide); "
            "export it as a safetensors file instead",
            setting="format",
        )
    if config.num_classes > DIFFUSERS_NULL_LABEL:
        raise InputError(
            f"num_classes {config.num_classes} has no DiTPipeline equivalent (it guides with the null id "
            f"{DIFFUSERS_NULL_LABEL}, a real class here); export it as a safetensors file instead",
            setting="format",
        )


def transformer_config(config: ModelConfig) -> dict[str, Any]:
    """`DiTTransformer2DModel(**kwargs)` arguments for a ditkit model (the label table gets 1001 rows)."""
    check_exportable(config)
    return {
        "sample_size": config.input_size,
        "patch_size": config.patch_size,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,  # explicit: DiTPipeline reads config.out_channels // 2
        "num_layers": config.depth,
        "num_attention_heads": config.num_heads,
        "attention_head_dim": config.hidden_size // config.num_heads,
        "num_embeds_ada_norm": DIFFUSERS_NULL_LABEL,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": LN_EPS,  # DiT's 1e-6 (class default 1e-5); only the pre-MLP LayerNorm reads it
        "activation_fn": "gelu-approximate",
        "attention_bias": True,
    }


# State dicts.


def to_diffusers(state_dict: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """A ditkit / official DiT state dict -> a `DiTTransformer2DModel` state dict (`pos_embed` dropped).

    The returned tensors may be views of the input's (load them into a module, or clone before saving).
    """
    check_exportable(config)
    d = config.hidden_size
    out = {f"{dst}.{s}": state_dict[f"{src}.{s}"] for src, dst in _TOP_KEYS for s in ("weight", "bias")}
    table = _padded_table(state_dict, config)
    for i in range(config.depth):
        src, dst = f"blocks.{i}.", f"transformer_blocks.{i}."
        for s in ("weight", "bias"):
            q, k, v = state_dict[f"{src}attn.qkv.{s}"].split(d)
            out.update({f"{dst}attn1.to_q.{s}": q, f"{dst}attn1.to_k.{s}": k, f"{dst}attn1.to_v.{s}": v})
            out.update({f"{dst}{new}.{s}": state_dict[f"{src}{old}.{s}"] for old, new in _BLOCK_KEYS})
            out.update({f"{dst}{new}.{s}": state_dict[f"{old}.{s}"] for old, new in _EMBEDDER_KEYS})
            if config.block == "adaln":  # (shift, scale) x 2 -> 6 chunks with constant gates: W = 0, b = 1
                chunks = list(state_dict[f"{src}adaLN_modulation.1.{s}"].split(d))
                gate = torch.ones_like(chunks[0]) if s == "bias" else torch.zeros_like(chunks[0])
                out[f"{dst}norm1.linear.{s}"] = torch.cat([*chunks[:2], gate, *chunks[2:], gate])
        out[dst + _TABLE] = table
    return out


def _padded_table(state_dict: dict[str, Tensor], config: ModelConfig) -> Tensor:
    """(1001, D): rows 0..C-1 the classes, C..1000 the null row (zeros without one; all zeros when C = 0)."""
    d, c = config.hidden_size, config.num_classes
    if c == 0:  # unconditional: any label embeds to exactly 0, and guidance is then a no-op
        ref = state_dict["x_embedder.proj.weight"]
        return torch.zeros(DIFFUSERS_NULL_LABEL + 1, d, dtype=ref.dtype, device=ref.device)
    table = state_dict["y_embedder.embedding_table.weight"]
    null = table[c : c + 1] if config.has_null_class else torch.zeros_like(table[:1])
    return torch.cat([table[:c], null.expand(DIFFUSERS_NULL_LABEL + 1 - c, d)])


def from_diffusers(
    state_dict: dict[str, Tensor],
    transformer: dict[str, Any],
    *,
    num_classes: int | None = None,
    class_dropout_prob: float = 0.1,
) -> tuple[ModelConfig, dict[str, Tensor]]:
    """A `DiTTransformer2DModel` state dict and config -> (ModelConfig, ditkit state dict with `pos_embed`).

    diffusers records neither the class count nor label dropout: `num_classes` defaults to
    `num_embeds_ada_norm` and rows past it (DiTPipeline padding) are dropped; the null row is kept when
    `class_dropout_prob` > 0. Blocks whose gates are all (W = 0, b = 1) are read as the adaLN design.
    """
    try:
        config = _model_config(state_dict, transformer, num_classes, class_dropout_prob)
        d, depth = config.hidden_size, config.depth
        _check_shared_embedders(state_dict, depth)
        out = {f"{src}.{s}": state_dict[f"{dst}.{s}"] for src, dst in _TOP_KEYS for s in ("weight", "bias")}
        for s in ("weight", "bias"):
            out.update({f"{old}.{s}": state_dict[f"transformer_blocks.0.{new}.{s}"] for old, new in _EMBEDDER_KEYS})
        for i in range(depth):
            src, dst = f"transformer_blocks.{i}.", f"blocks.{i}."
            for s in ("weight", "bias"):
                qkv = [state_dict[f"{src}attn1.to_{n}.{s}"] for n in "qkv"]
                out[f"{dst}attn.qkv.{s}"] = torch.cat(qkv)
                out.update({f"{dst}{old}.{s}": state_dict[f"{src}{new}.{s}"] for old, new in _BLOCK_KEYS})
                if config.block == "adaln":
                    chunks = state_dict[f"{src}norm1.linear.{s}"].split(d)
                    out[f"{dst}adaLN_modulation.1.{s}"] = torch.cat([*chunks[:2], *chunks[3:5]])
        table = state_dict["transformer_blocks.0." + _TABLE]
    except KeyError as err:
        raise InputError(f"not a diffusers DiT transformer: it has no {err.args[0]!r}") from None
    if config.num_classes > 0:
        null = table[transformer["num_embeds_ada_norm"] :][:1] if config.has_null_class else table[:0]
        out["y_embedder.embedding_table.weight"] = torch.cat([table[: config.num_classes], null])
    elif bool(table.any()):
        raise InputError(
            "num_classes 0 (unconditional) needs an all-zero label table; this one is not zero", setting="num_classes"
        )
    grid = config.input_size // config.patch_size
    out["pos_embed"] = torch.from_numpy(sincos_pos_embed_2d(d, grid)).float().unsqueeze(0)  # as DiT builds it
    return config, out


def _model_config(
    state_dict: dict[str, Tensor], transformer: dict[str, Any], num_classes: int | None, class_dropout_prob: float
) -> ModelConfig:
    """The ModelConfig of a diffusers DiT config, after checking it uses DiT's blocks."""
    expected = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate", "attention_bias": True}
    for key, value in expected.items():
        if transformer.get(key, value) != value:
            raise InputError(f"transformer {key} {transformer[key]!r} has no ditkit equivalent (DiT uses {value!r})")
    if abs(float(transformer.get("norm_eps", 1e-5)) - LN_EPS) > 1e-12:
        log.info("transformer norm_eps %s: ditkit runs it with DiT's %s", transformer.get("norm_eps", 1e-5), LN_EPS)
    rows = int(transformer["num_embeds_ada_norm"])
    classes = rows if num_classes is None else int(num_classes)
    if not 0 <= classes <= rows:
        raise InputError(
            f"num_classes must be in 0..{rows} for this transformer (its label table); got {classes}",
            setting="num_classes",
        )
    in_channels = int(transformer["in_channels"])
    out_channels = int(transformer.get("out_channels") or in_channels)
    if out_channels not in (in_channels, 2 * in_channels):
        raise InputError(f"transformer out_channels {out_channels} is neither in_channels nor 2 x in_channels")
    depth, heads = int(transformer["num_layers"]), int(transformer["num_attention_heads"])
    hidden = heads * int(transformer["attention_head_dim"])
    return ModelConfig(
        input_size=int(transformer["sample_size"]),
        patch_size=int(transformer["patch_size"]),
        in_channels=in_channels,
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
        num_classes=classes,
        class_dropout_prob=class_dropout_prob,
        learn_sigma=out_channels == 2 * in_channels,
        block="adaln" if _constant_gates(state_dict, depth, hidden) else "adaln_zero",
    )


def _constant_gates(state_dict: dict[str, Tensor], depth: int, d: int) -> bool:
    """True when every block's gate chunks (2 and 5 of 6) are W = 0, b = 1: an exported adaLN model."""
    for i in range(depth):
        w, b = (state_dict[f"transformer_blocks.{i}.norm1.linear.{s}"].split(d) for s in ("weight", "bias"))
        if any(w[j].any() or not bool((b[j] == 1).all()) for j in (2, 5)):
            return False
    return True


def _check_shared_embedders(state_dict: dict[str, Tensor], depth: int) -> None:
    """ditkit has one timestep / label embedder: every block's copy must equal block 0's."""
    names = [f"{new}.{s}" for _, new in _EMBEDDER_KEYS for s in ("weight", "bias")] + [_TABLE]
    for i in range(1, depth):
        for name in names:
            if not torch.equal(
                state_dict[f"transformer_blocks.{i}.{name}"], state_dict[f"transformer_blocks.0.{name}"]
            ):
                raise InputError(
                    f"block {i}'s {name.split('.')[2]} differs from block 0's (trained in diffusers?); ditkit "
                    "shares one timestep and label embedder across blocks, so these weights have no ditkit equivalent"
                )


# Schedulers.


def scheduler_config(diffusion: DiffusionConfig) -> dict[str, Any]:
    """`DDIMScheduler(**kwargs)` for a ditkit diffusion: its betas and prediction, ADM's DDIM timesteps.

    "leading" spacing gives ADM's "ddimN" steps exactly when N divides the chain length (50, 250, ...).
    diffusers computes the schedule in float32 (alphas_cumprod within 4e-7 relative of ADM's float64
    linear schedule, 1.3e-5 for the cosine one).
    """
    scale = 1000 / diffusion.num_train_steps  # ditkit.diffusion.gaussian.linear_beta_schedule's rescaling
    return {
        "num_train_timesteps": diffusion.num_train_steps,
        "beta_start": scale * 1e-4,
        "beta_end": scale * 0.02,
        "beta_schedule": "linear" if diffusion.noise_schedule == "linear" else "squaredcos_cap_v2",
        "prediction_type": "sample" if diffusion.predict_xstart else "epsilon",
        "clip_sample": False,  # exports are latent models: ditkit never clips latents
        "set_alpha_to_one": True,  # ADM's alphas_cumprod_prev at t = 0
        "steps_offset": 0,
        "timestep_spacing": "leading",
    }


def diffusion_from_scheduler(scheduler: dict[str, Any], learn_sigma: bool) -> DiffusionConfig:
    """The ditkit diffusion of a diffusers scheduler config (ADM linear or cosine betas, eps or x_0).

    Betas of another kind (an inference-only choice in some hub repos) give the paper's linear schedule,
    with a warning; a prediction type ditkit does not train (v) is an error.
    """
    steps = int(scheduler.get("num_train_timesteps", 1000))
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "sample"):
        raise InputError(f"scheduler prediction_type {prediction!r} has no ditkit equivalent (epsilon or sample)")
    schedule = scheduler.get("beta_schedule", "linear") if not scheduler.get("trained_betas") else "trained"
    reference = scheduler_config(DiffusionConfig(num_train_steps=steps))
    linear = schedule == "linear" and all(
        abs(float(scheduler.get(k, 0.0)) - reference[k]) <= 1e-9 for k in ("beta_start", "beta_end")
    )
    if not (linear or schedule == "squaredcos_cap_v2"):
        log.warning("scheduler betas (%s) are not ADM's: recording the paper's linear schedule instead", schedule)
    return DiffusionConfig(
        num_train_steps=steps,
        noise_schedule="cosine" if schedule == "squaredcos_cap_v2" else "linear",
        learn_sigma=learn_sigma,
        predict_xstart=prediction == "sample",
    )
