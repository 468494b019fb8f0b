"""Load DiT weights: published checkpoints, official train.py checkpoints, ditkit files and run folders.

Never executes pickled code: `.pt` files go through `torch.load(weights_only=True)`; ditkit's own
format is safetensors with the model config in its metadata. A config that the weights do not
carry (the head count, say) is inferred from tensor shapes and can be overridden.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ditkit.config import DiffusionConfig, ModelConfig, default_diffusion
from ditkit.config.constants import Objective
from ditkit.model.dit import DiT
from ditkit.runtime.errors import InputError
from ditkit.runtime.files import atomic_path

log = logging.getLogger(__name__)

CONFIG_METADATA_KEY = "ditkit_config"
DIFFUSION_METADATA_KEY = "ditkit_diffusion"
# Heads of the paper's sizes (a state dict does not record them): S 6, B 12, L 16, XL 16.
PAPER_HEADS: dict[int, int] = {384: 6, 768: 12, 1024: 16, 1152: 16}
RUN_LATEST_FILE = "latest"  # run_dir/checkpoints/latest names the newest checkpoint folder
EMA_WEIGHTS_FILE = "ema.safetensors"


def save_weights(
    state_dict: dict[str, Tensor], config: ModelConfig, path: str | Path, diffusion: DiffusionConfig | None = None
) -> Path:
    """Write weights as safetensors with the model config (and the diffusion it was trained with) in the
    metadata, atomically (temp file + rename). Samplers need the diffusion: a model trained with x_0
    prediction or a cosine schedule is garbage under the default process."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    metadata = {CONFIG_METADATA_KEY: json.dumps(dataclasses.asdict(config))}
    if diffusion is not None:
        metadata[DIFFUSION_METADATA_KEY] = json.dumps(dataclasses.asdict(diffusion))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def read_diffusion_config(
    path: str | Path, model_config: ModelConfig, objective: Objective | None = None
) -> DiffusionConfig:
    """The process a model was trained with: from a ditkit file's metadata or run folder, else (a weights file
    that records none) `default_diffusion(model_config, objective)`: the paper's process for DiT's official
    checkpoints (1000 linear steps, eps prediction), SiT's flow with objective "flow" (SiT's checkpoints, whose
    key layout is DiT's: only the caller can tell them apart). A recorded process wins; an `objective` that
    contradicts it is an error."""
    recorded = recorded_diffusion_config(path)
    if recorded is None:
        return default_diffusion(model_config, objective or "diffusion")
    if objective is not None and objective != recorded.objective:
        raise InputError(
            f"{str(path)!r} records objective {recorded.objective!r}; objective {objective!r} applies only to "
            "weights files that record no process: drop it",
            setting="objective",
        )
    return recorded


def recorded_diffusion_config(path: str | Path) -> DiffusionConfig | None:
    """The process a ditkit weights file or run folder records, or None (official checkpoints)."""
    run_config = Path(path) / "config.json"  # a run folder records its whole TrainConfig
    weights = resolve_weights_path(path)
    if weights.suffix == ".safetensors":
        metadata = _metadata(weights)
        if DIFFUSION_METADATA_KEY in metadata:
            return _parse(weights, DIFFUSION_METADATA_KEY, metadata[DIFFUSION_METADATA_KEY], DiffusionConfig.from_dict)
    if run_config.is_file():
        stored = _parse(run_config, "config", run_config.read_text(), lambda d: d)
        if isinstance(stored, dict) and isinstance(stored.get("diffusion"), dict):
            return _parse(run_config, "diffusion", stored["diffusion"], DiffusionConfig.from_dict)
    return None


def describe_load_error(err: BaseException) -> str:
    """One line for an error of torch.load or safetensors: its type and first line, but never torch's advice
    to unpickle arbitrary code (weights_only=False) when a file holds more than tensors."""
    text = str(err).strip()
    if "weights_only" in text or "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f" (it references {found.group(1)})" if found else ""
        return f"{type(err).__name__}: the file holds pickled objects, not only tensors{what}; ditkit never runs them"
    first = text.splitlines()[0] if text else "empty or unreadable"
    return f"{type(err).__name__}: {first[:200]}"


def _metadata(path: Path) -> dict[str, str]:
    path.open("rb").close()  # a PermissionError as such (safetensors reports it as "No such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as err:
        raise InputError(_unreadable(path, err)) from None


def _unreadable(path: Path, err: BaseException) -> str:
    return (
        f"cannot read {str(path)!r} as safetensors weights ({describe_load_error(err)}); the file is damaged, "
        "truncated or not a weights file: export or download it again"
    )


def _parse(path: Path, key: str, value: Any, build: Any) -> Any:
    """build(json.loads(value)) (value: a JSON string or an already parsed object), as a one-line ValueError."""
    try:
        return build(json.loads(value) if isinstance(value, str) else value)
    except (ValueError, TypeError, KeyError) as err:
        raise InputError(f"{str(path)!r} holds a broken {key!r} entry ({err}); export or download it again") from None


def resolve_weights_path(path: str | Path) -> Path:
    """A weights file, or for a training run folder the EMA weights of its latest checkpoint."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"no weights at {str(path)!r}: pass a .pt/.safetensors file or a ditkit run folder")
    if path.is_file():
        return path
    ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    latest = ckpt_dir / RUN_LATEST_FILE
    if latest.is_file():
        name = latest.read_text(errors="replace").strip()
        candidate = ckpt_dir / name / EMA_WEIGHTS_FILE
        if Path(name).name == name not in ("", ".", "..") and candidate.is_file():  # a name, not a path out
            return candidate
    if (ckpt_dir / EMA_WEIGHTS_FILE).is_file():
        return ckpt_dir / EMA_WEIGHTS_FILE
    raise InputError(
        f"{str(path)!r} holds no checkpoint (no checkpoints/{RUN_LATEST_FILE}): train first, or pass a weights file"
    )


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], ModelConfig | None]:
    """State dict (EMA weights when the file holds several) and the stored config, if any."""
    path = resolve_weights_path(path)
    if path.suffix == ".safetensors":
        metadata = _metadata(path)
        config = None
        if CONFIG_METADATA_KEY in metadata:
            config = _parse(path, CONFIG_METADATA_KEY, metadata[CONFIG_METADATA_KEY], lambda d: ModelConfig(**d))
        try:
            return load_file(str(path)), config
        except Exception as err:
            raise InputError(_unreadable(path, err)) from None
    try:
        # Official train.py checkpoints pickle an argparse.Namespace beside the tensors: allow just that.
        # safe_globals arrived in torch 2.5; before it such checkpoints cannot load (plain state dicts can).
        allow = getattr(torch.serialization, "safe_globals", None)
        with allow([argparse.Namespace]) if allow is not None else contextlib.nullcontext():
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(
            f"cannot read {str(path)!r} as weights ({describe_load_error(err)}); ditkit loads only plain tensors "
            "from .pt files: save a state dict (torch.save(model.state_dict(), path)) or a .safetensors file"
        ) from None
    if isinstance(obj, dict) and "ema" in obj and isinstance(obj["ema"], dict):
        obj = obj["ema"]  # official train.py checkpoint: sample from the EMA weights
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise InputError(f"{str(path)!r} is not a state dict of tensors")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items()}, None


def infer_config(state_dict: dict[str, Tensor], **overrides: Any) -> ModelConfig:
    """A ModelConfig from tensor shapes (depth, width, patch, channels, classes, sigma, size, design)."""
    try:
        hidden, in_channels, patch, _ = state_dict["x_embedder.proj.weight"].shape
    except KeyError:
        raise InputError("not a DiT state dict: no 'x_embedder.proj.weight' key") from None
    depth = 1 + max((int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    fields: dict[str, Any] = {"hidden_size": hidden, "in_channels": in_channels, "patch_size": patch, "depth": depth}
    fields["mlp_ratio"] = state_dict["blocks.0.mlp.fc1.weight"].shape[0] / hidden
    fields["learn_sigma"] = state_dict["final_layer.linear.weight"].shape[0] // (patch * patch) == 2 * in_channels
    if "pos_embed" in state_dict:
        fields["input_size"] = round(state_dict["pos_embed"].shape[1] ** 0.5) * patch
    if "blocks.0.adaLN_modulation.1.weight" in state_dict:
        chunks = state_dict["blocks.0.adaLN_modulation.1.weight"].shape[0] // hidden
        fields["block"] = "adaln_zero" if chunks == 6 else "adaln"
    else:
        fields["block"] = "cross_attn" if "blocks.0.cross_attn.q.weight" in state_dict else "in_context"
    table = state_dict.get("y_embedder.embedding_table.weight")
    if table is None:
        fields["num_classes"], fields["class_dropout_prob"] = 0, 0.0
    else:
        rows = table.shape[0]
        num_classes = int(overrides.get("num_classes", rows - 1))  # the official layout has a null row
        fields["num_classes"] = num_classes
        fields["class_dropout_prob"] = 0.1 if rows == num_classes + 1 else 0.0
    if hidden in PAPER_HEADS:
        fields["num_heads"] = PAPER_HEADS[hidden]
    elif hidden % 64 == 0:
        fields["num_heads"] = hidden // 64
        if "num_heads" not in overrides:
            log.warning(
                "the weights do not record the head count: assuming %d (head dim 64) for width %d; "
                "pass num_heads=... (--num-heads) if that is wrong",
                hidden // 64,
                hidden,
            )
    elif "num_heads" not in overrides:
        raise InputError(f"cannot infer the head count of width {hidden}: pass num_heads=...", setting="num_heads")
    fields.update(overrides)
    return ModelConfig(**fields)


def load_dit(path: str | Path, *, device: str | torch.device = "cpu", **overrides: Any) -> DiT:
    """Load a DiT from published weights, an official train.py checkpoint, a ditkit file or run folder.

    The config comes from the file (ditkit) or is inferred from the weights; `overrides` (e.g.
    num_heads=6, num_classes=10) replace fields. Keys are checked strictly.
    """
    state_dict, stored = read_state_dict(path)
    if stored is not None:
        config = stored.replace(**overrides) if overrides else stored
    else:
        try:
            config = infer_config(state_dict, **overrides)
        except (KeyError, IndexError, AttributeError) as err:
            raise InputError(
                f"{str(path)!r} is not a DiT state dict (no usable tensor {err}); pass DiT weights"
            ) from None
    model = DiT(config)
    load_strict(model, state_dict, source=str(path))
    return model.to(device).eval()


def load_model(
    path: str | Path, *, device: str | torch.device = "cpu", objective: Objective | None = None, **overrides: Any
) -> tuple[DiT, DiffusionConfig]:
    """`load_dit` and the process the model was trained with (`read_diffusion_config`): what sampling needs.

    `objective` ("diffusion" or "flow") says what a weights file without a recorded process was trained with:
    SiT's checkpoints have DiT's keys, so objective="flow" loads them (see `load_sit`)."""
    if objective is not None:  # a contradicting objective fails before the (possibly large) weights are read
        read_diffusion_config(path, ModelConfig(), objective)
    model = load_dit(path, device=device, **overrides)
    return model, read_diffusion_config(path, model.config, objective)


def load_sit(path: str | Path, *, device: str | torch.device = "cpu", **overrides: Any) -> tuple[DiT, DiffusionConfig]:
    """SiT's released checkpoint (SiT-XL-2-256x256.pt: a plain state dict with DiT's keys and shapes, learned
    sigma on) or a SiT train.py checkpoint: the network, its config inferred, and SiT's flow process (linear
    path, velocity; the learned-sigma channels are ignored, as SiT's forward does). `load_model(path,
    objective="flow")`."""
    return load_model(path, device=device, objective="flow", **overrides)


def load_strict(model: DiT, state_dict: dict[str, Tensor], source: str = "weights") -> None:
    """load_state_dict(strict=True) with an error that names the keys and the likely cause."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong:
        raise InputError(
            f"{source} does not fit this DiT: {_mismatch_summary(missing, unexpected, wrong, own, state_dict)}"
        )
    model.load_state_dict(state_dict, strict=True)


def _mismatch_summary(
    missing: list[str], unexpected: list[str], wrong: list[str], own: dict[str, Tensor], other: dict[str, Tensor]
) -> str:
    parts = []
    if missing:
        parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for key in wrong[:3]:
        parts.append(f"{key} is {tuple(other[key].shape)} in the file but {tuple(own[key].shape)} in the model")
    hints = []
    if "pos_embed" in wrong:
        hints.append("the weights were trained at another resolution (image_size)")
    if "y_embedder.embedding_table.weight" in wrong:
        hints.append("the class count differs (num_classes; a null row exists when label dropout > 0)")
    if any(k.startswith("final_layer.linear") for k in wrong):
        hints.append("learned sigma differs (learn_sigma)")
    if any(k.startswith(("model.", "ema.", "opt.")) for k in unexpected):
        hints.append("this is a whole training checkpoint: load its 'ema' weights")
    else:
        own_depth, other_depth = _depth(own), _depth(other)
        if own_depth != other_depth:
            hints.append(
                f"the depth differs ({other_depth} blocks in the file, {own_depth} in the model: wrong preset)"
            )
        # Design keys only count inside blocks both sides have: extra blocks are a depth difference.
        shared = min(own_depth, other_depth)
        in_shared = [k for k in missing + unexpected if (i := _block_index(k)) is None or i < shared]
        differs = wrong + in_shared
        if any(_is_design_key(k) for k in differs):  # adaLN vs adaLN-Zero: same keys, 4 vs 6 chunks
            hints.append("the block design differs (block)")
    return "; ".join(parts) + (f". Likely cause: {'; '.join(hints)}" if hints else "")


def _block_index(key: str) -> int | None:
    match = re.match(r"blocks\.(\d+)\.", key)
    return int(match.group(1)) if match else None


def _depth(state_dict: dict[str, Tensor]) -> int:
    return 1 + max((i for k in state_dict if (i := _block_index(k)) is not None), default=-1)


def _is_design_key(key: str) -> bool:
    """Keys that exist in some block designs only (adaLN modulation, cross-attention, affine norms)."""
    return "adaLN" in key or "cross_attn" in key or "norm" in key
