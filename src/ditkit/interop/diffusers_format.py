"""DiTPipeline folders and loaded diffusers models: export a ditkit model, import a diffusers DiT.

The weight and config conversion lives in `ditkit.interop.diffusers_keys`; loading and writing diffusers
models needs diffusers (the `vae` extra). Known numerical differences of a loaded diffusers DiT, and what
ditkit does about them:
  - timestep features: diffusers hard-codes `downscale_freq_shift=1` (frequencies 10000^(-k/127)); DiT uses
    10000^(-k/128). It is no config field, so every `from_pretrained` brings it back: call
    `set_dit_timestep_frequencies` after loading (`load_pipeline` does). Unpatched outputs differ by ~2% of
    their scale;
  - learned sigma: DiTPipeline guides all latent channels (the official 2.27 guides 3) and drops the
    variance channels before the scheduler step, so its samplers use a fixed variance.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ditkit.config import NO_VAE, DiffusionConfig, ModelConfig, default_diffusion
from ditkit.data.autoencoder import _HUB_ID, load_vae, resolve_hub_id
from ditkit.data.class_names import IMAGENET_NUM_CLASSES, imagenet_class_names
from ditkit.data.provenance import VaeRecord, decoder_spec
from ditkit.interop.diffusers_keys import (
    check_exportable,
    diffusion_from_scheduler,
    from_diffusers,
    scheduler_config,
    to_diffusers,
    transformer_config,
)
from ditkit.model.dit import DiT
from ditkit.model.weights import load_model, save_weights
from ditkit.runtime.errors import InputError
from ditkit.runtime.files import atomic_dir, write_json, write_text

log = logging.getLogger(__name__)

SIDECAR_FILE = "ditkit_config.json"  # what diffusers cannot record (class count, label dropout, diffusion)


# Loaded diffusers models.


def _diffusers() -> Any:
    try:
        import diffusers  # the optional `vae` extra; imports in ~2-5 s
    except ImportError as err:
        raise InputError(f"diffusers interop needs diffusers ({err}): pip install 'ditkit[vae]'") from None
    return diffusers


def set_dit_timestep_frequencies(module: Any) -> int:
    """Give a loaded diffusers DiT the timestep frequencies it was trained with; returns the modules changed.

    diffusers' `CombinedTimestepLabelEmbeddings` hard-codes `Timesteps(256, flip_sin_to_cos=True,
    downscale_freq_shift=1)`: frequencies 10000^(-k/127) where DiT (ADM's embedding) uses 10000^(-k/128).
    The features then differ by up to 1.98 (they lie in [-1, 1]). The shift is not a config field, so it
    cannot be saved: call this after every `from_pretrained` (a DiTPipeline or its transformer).
    """
    root = getattr(module, "transformer", module)
    changed = 0
    for sub in root.modules():
        if hasattr(sub, "downscale_freq_shift") and hasattr(sub, "flip_sin_to_cos"):
            sub.downscale_freq_shift = 0
            changed += 1
    return changed


def load_pipeline(
    folder: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Any:
    """`DiTPipeline.from_pretrained(folder)` with DiT's timestep frequencies (`set_dit_timestep_frequencies`)."""
    low_mem = importlib.util.find_spec("accelerate") is not None  # without it diffusers warns otherwise
    spec = str(folder)
    if not Path(spec).expanduser().exists() and _HUB_ID.match(spec):  # the local cache first, offline in one line
        spec = resolve_hub_id(spec, setting="folder", what="diffusers pipeline")
    pipe = _diffusers().DiTPipeline.from_pretrained(spec, low_cpu_mem_usage=low_mem)
    set_dit_timestep_frequencies(pipe)
    return pipe.to(device) if dtype == torch.float32 else pipe.to(device=device, dtype=dtype)  # files hold fp32


def build_transformer(model: DiT) -> nn.Module:
    """The diffusers `DiTTransformer2DModel` (eval mode, DiT's frequencies) computing what `model` computes."""
    transformer = _diffusers().DiTTransformer2DModel(**transformer_config(model.config))
    transformer.load_state_dict(to_diffusers(model.state_dict(), model.config), strict=True)
    set_dit_timestep_frequencies(transformer)
    return transformer.to(next(model.parameters()).device).eval()


# Folders: export a ditkit model as a DiTPipeline, import a diffusers DiT.


def export_diffusers(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    vae: str | None = None,
    class_names: list[str] | None = None,
) -> Path:
    """Write `source` (a run folder: its newest EMA weights; or a weights file) as a DiTPipeline folder.

    The folder holds the transformer, the VAE (`vae`, else the run's config.json `vae`), a DDIMScheduler
    with the training diffusion (`scheduler_config`), `id2label` in model_index.json (`class_names`, else the
    run's own from its config.json, else ImageNet names for 1000 classes, else "class i") and
    `ditkit_config.json` with what diffusers cannot record. Load it with `load_pipeline` (plain
    `DiTPipeline.from_pretrained` runs slightly different timestep frequencies: see
    `set_dit_timestep_frequencies`). Pixel-space and flow-matching models have no equivalent: DiTPipeline
    always decodes through a VAE, and samples ADM's eps-prediction diffusion.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(
            f"{str(out_dir)!r} exists and is not an empty folder; pass a new output folder", setting="out_dir"
        )
    model, diffusion = load_model(source)
    if diffusion.is_flow:
        raise InputError(
            "a flow-matching model has no diffusers equivalent (DiTPipeline samples ADM's eps-prediction diffusion "
            "only); export its safetensors weights and sample them with ditkit",
            setting="objective",
        )
    config = model.config
    check_exportable(config)
    run_config = _run_config(Path(source))
    recorded = VaeRecord.from_config(run_config) if run_config is not None else None
    spec, scale = decoder_spec(recorded, vae, what=f"the run {str(source)!r}") if recorded else (vae, None)
    if spec is None or spec.strip().lower() == NO_VAE:
        raise InputError(
            "pixel-space models have no diffusers equivalent (DiTPipeline always decodes latents through a VAE); "
            "for a latent model given as a weights file, pass vae=FOLDER_OR_HUB_ID",
            setting="vae",
        )
    autoencoder = load_vae(spec, scale=scale)
    if autoencoder is None or autoencoder.latent_channels != config.in_channels:
        raise InputError(
            f"VAE {spec!r} does not make the model's {config.in_channels}-channel latents; pass its VAE", setting="vae"
        )
    run_names = (run_config or {}).get("class_names")
    if run_names == imagenet_class_names():
        run_names = None  # an ImageNet folder's: DiTPipeline's labels carry the synonyms too
    names = class_names or run_names or _default_class_names(config.num_classes)
    if len(names) != config.num_classes:
        raise InputError(
            f"class_names has {len(names)} names for a {config.num_classes}-class model", setting="class_names"
        )
    if config.num_classes > 0 and not config.has_null_class:
        log.warning("this model has no null class (no label dropout): call its DiTPipeline with guidance_scale=1")
    diffusers = _diffusers()
    # The pipeline decodes latents / vae.config.scaling_factor: record the scale ditkit decodes with.
    autoencoder.vae.register_to_config(scaling_factor=autoencoder.scale)
    pipe = diffusers.DiTPipeline(
        transformer=build_transformer(model),
        vae=autoencoder.vae,
        scheduler=diffusers.DDIMScheduler(**scheduler_config(diffusion)),
    )
    with atomic_dir(out_dir) as tmp:  # the folder appears only when complete
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        index = json.loads((tmp / "model_index.json").read_text())
        if config.num_classes > 0:  # save_pretrained drops id2label; DiTPipeline reads it back from here
            index["id2label"] = {str(i): name for i, name in enumerate(names)}
        write_json(tmp / "model_index.json", index)
        sidecar = {"model": dataclasses.asdict(config), "diffusion": dataclasses.asdict(diffusion), "vae": spec}
        write_json(tmp / SIDECAR_FILE, sidecar)
        write_text(tmp / "README.md", _folder_readme())
    log.info("exported %s as a DiTPipeline folder %s", source, out_dir)
    return out_dir


def _run_config(source: Path) -> dict[str, Any] | None:
    """The run config.json in `source` or up to two folders above it (a checkpoint folder), with the run's
    autoencoder and class names; None for a weights file outside a run."""
    folders = (source, *source.resolve().parents[:2]) if source.is_dir() else ()
    configs = [f / "config.json" for f in folders if (f / "config.json").is_file()]
    return json.loads(configs[0].read_text()) if configs else None


def _default_class_names(num_classes: int) -> list[str]:
    """ImageNet's names with their synonyms ("tench, Tinca tinca": DiTPipeline's labels), else "class i"."""
    if num_classes != IMAGENET_NUM_CLASSES:
        return [f"class {i}" for i in range(num_classes)]
    text = resources.files("ditkit").joinpath("assets", "imagenet_classes.txt").read_text()
    return [line.split("\t", 1)[1].strip() for line in text.splitlines() if line and not line.startswith("#")]


def _folder_readme() -> str:
    return (
        f"# DiT exported by ditkit\n\n`{SIDECAR_FILE}` holds the model and its training diffusion. Load it with "
        "`ditkit.interop.diffusers_format.load_pipeline(FOLDER)`, or `DiTPipeline.from_pretrained(FOLDER)` followed by "
        "`downscale_freq_shift = 0` on every `transformer_blocks[i].norm1.emb.time_proj` (diffusers hard-codes "
        "timestep frequencies 10000^(-k/127); DiT was trained with 10000^(-k/128), and the setting is not saved).\n"
    )


def read_diffusers(
    source: str | os.PathLike, *, num_classes: int | None = None
) -> tuple[ModelConfig, dict[str, Tensor], DiffusionConfig]:
    """(config, ditkit state dict, diffusion) of a diffusers DiT: a DiTPipeline folder, a transformer folder
    or a hub id (e.g. facebook/DiT-XL-2-256). `ditkit_config.json`, when present, gives the class count,
    label dropout and diffusion; else `num_classes` (default: the table's), dropout 0.1 and the scheduler's."""
    spec = str(source)
    local = Path(spec).expanduser()
    if not local.exists() and not _HUB_ID.match(spec):
        raise InputError(
            f"{spec!r} is neither a file, a diffusers folder nor a hub id like facebook/DiT-XL-2-256", setting="source"
        )
    if not local.exists():  # a hub id: the local cache first (no network call), offline in one line
        spec = resolve_hub_id(spec, setting="source", what="diffusers DiT")
    subfolder = "transformer" if _read_json(spec, "transformer/config.json") is not None else None
    if subfolder is None:
        _read_json(spec, "config.json")  # a damaged one is named, not the folder
    model_class, low_mem = _diffusers().DiTTransformer2DModel, importlib.util.find_spec("accelerate") is not None
    try:
        transformer = model_class.from_pretrained(spec, subfolder=subfolder, low_cpu_mem_usage=low_mem)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"cannot load a diffusers DiT transformer from {spec!r} ({first})", setting="source") from None
    sidecar = _read_json(spec, SIDECAR_FILE, beside=True) or {}
    stored = sidecar.get("model", {})
    classes = num_classes if num_classes is not None else stored.get("num_classes")
    dropout = float(stored.get("class_dropout_prob", 0.1))
    config, state_dict = from_diffusers(
        transformer.state_dict(), dict(transformer.config), num_classes=classes, class_dropout_prob=dropout
    )
    if "diffusion" in sidecar:
        diffusion = DiffusionConfig.from_dict(sidecar["diffusion"])
    else:
        scheduler = _read_json(spec, "scheduler/scheduler_config.json", beside=True)
        diffusion = diffusion_from_scheduler(scheduler, config.learn_sigma) if scheduler else default_diffusion(config)
    return config, state_dict, dataclasses.replace(diffusion, learn_sigma=config.learn_sigma)


def _read_json(spec: str, name: str, *, beside: bool = False) -> dict[str, Any] | None:
    """A JSON file of a local folder or hub repo; None when absent or unreachable. `beside`: also look in the
    folder above a local one (a transformer/ folder inside an exported pipeline)."""
    local = Path(spec).expanduser()
    if local.exists():
        for path in (local / name, *([local.parent / name] if beside else [])):
            if path.is_file():
                try:
                    value = json.loads(path.read_text())
                except (ValueError, UnicodeDecodeError) as err:  # name the file, not the folder
                    value = f"{type(err).__name__}: {err}"
                if not isinstance(value, dict):
                    raise InputError(
                        f"{str(path)!r} is damaged ({str(value)[:80]}); re-export or re-download the folder",
                        setting="source",
                    )
                return value
        return None
    try:
        from huggingface_hub import hf_hub_download  # a dependency of diffusers

        return json.loads(Path(hf_hub_download(spec, name)).read_text())
    except Exception:  # absent from the repo, or offline: the caller falls back
        return None


def import_weights(
    source: str | os.PathLike, out: str | os.PathLike, *, num_classes: int | None = None, num_heads: int | None = None
) -> Path:
    """Convert DiT weights to ditkit's format (safetensors with the model and diffusion configs), `out`.

    `source`: a diffusers DiTPipeline / transformer folder or hub id (`read_diffusers`), or a weights file
    such as the official DiT-XL-2-256x256.pt (`load_model`; `num_heads` for widths the paper does not use).
    """
    path = Path(source).expanduser()
    if path.is_file() or (path / "checkpoints").is_dir():  # weights, or a ditkit run folder
        overrides = {k: v for k, v in (("num_classes", num_classes), ("num_heads", num_heads)) if v is not None}
        model, diffusion = load_model(path, **overrides)
        config, state_dict = model.config, model.state_dict()
    else:
        config, state_dict, diffusion = read_diffusers(source, num_classes=num_classes)
    with torch.device("meta"):  # check the keys and shapes against a DiT without allocating one
        expected = {k: tuple(v.shape) for k, v in DiT(config).state_dict().items()}
    if expected != {k: tuple(v.shape) for k, v in state_dict.items()}:
        raise RuntimeError(f"converted weights of {str(source)!r} do not fit {config}")  # a converter bug
    saved = save_weights(state_dict, config, out, diffusion)
    log.info("imported %s to %s", source, saved)
    return saved
