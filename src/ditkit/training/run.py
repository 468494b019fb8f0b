"""A run folder: its layout, its config.json and metrics.jsonl, the TrainConfig built from a user's choices,
and a trained model opened for sampling.

Layout of `out_dir`:
    config.json          the TrainConfig (TrainConfig.to_dict); a rerun must match it (see RESUMABLE_FIELDS)
    train.lock           while a process trains here: its pid, host, start time and command (`lock_run_dir`)
    log.txt              the run's log (rank 0)
    metrics.jsonl        one JSON object per report: "step", "loss", ... and "eval_*" metrics; exactly one
                         line per reported step, whatever kills and resumes happened (see `RunMonitor`)
    loss_curve.png       the loss over steps (raw and smoothed)
    checkpoints/         step_XXXXXXX/ folders and `latest` (ditkit.training.checkpoint)
    samples/             step_XXXXXXX.png EMA sample grids
    tensorboard/         event files (with the `tensorboard` extra)
    eval/                cached FID reference statistics
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ditkit.config import NO_VAE, RESUMABLE_FIELDS, TrainConfig, for_process, get_preset
from ditkit.config.constants import Objective
from ditkit.config.model import process_from_choices
from ditkit.config.recipes import cpu_small_patch, demo_train_config, recipe_fields
from ditkit.data.autoencoder import load_vae, resolve_hub_id, vae_geometry
from ditkit.data.image_size import pick_image_size
from ditkit.data.latent_store import store_vae
from ditkit.data.loader import check_downsampling, check_training_data, open_dataset
from ditkit.data.provenance import VaeRecord, decoder_spec, is_pixel_space, recorded_spec, vae_fingerprint
from ditkit.model.weights import load_model
from ditkit.runtime import distributed
from ditkit.runtime.errors import InputError
from ditkit.runtime.files import (
    TEMP_PREFIX,
    FileLocked,
    check_output_dir,
    clean_temp_entries,
    exclusive_lock,
    write_json,
    write_text,
)
from ditkit.sampling.generate import SamplingModel
from ditkit.training import checkpoint

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
LOCK_FILE = "train.lock"
LOG_FILE = "log.txt"
METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
SAMPLES_DIR = "samples"
TENSORBOARD_DIR = "tensorboard"
EVAL_DIR = "eval"


def grid_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / SAMPLES_DIR / f"step_{step:07d}.png"


def eval_reference_path(run_dir: str | os.PathLike, num_images: int) -> Path:
    return Path(run_dir) / EVAL_DIR / f"ref_stats_{num_images}.npz"


# config.json


def read_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The TrainConfig stored in a run's config.json."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise InputError(f"cannot read {str(path)!r} ({err}); pass a ditkit run folder") from None


def resume_conflicts(stored: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """'field: old -> new' for every setting that may not change when a run resumes."""
    try:
        stored = TrainConfig.from_dict(stored).to_dict()  # older layouts compare in today's terms
    except (ValueError, TypeError):
        pass
    old, new = json.loads(json.dumps(stored)), json.loads(json.dumps(cfg.to_dict()))
    if old.get("vae_sha256") is None:  # recorded before ditkit fingerprinted VAEs: compare what it recorded
        for k in ("vae_sha256", "vae_scale", *(("vae",) if cfg.data and _is_store(cfg.data) else ())):
            old.pop(k, None)  # (a latent store's run recorded the default vae, which it never used)
        if "vae" in old:
            old["vae"] = recorded_spec(str(old["vae"]))  # a relative folder then, an absolute path now
    return [
        f"{k}: {old[k]!r} -> {new[k]!r}"
        for k in sorted(new)
        if k not in RESUMABLE_FIELDS and k in old and new[k] != old[k]
    ]


@contextlib.contextmanager
def lock_run_dir(out_dir: str | os.PathLike, is_main: bool) -> Iterator[Path]:
    """Hold the run folder (created if need be) for one training process: rank 0 holds out_dir/train.lock.

    A second process gets a one-line ValueError naming the holder's pid and host; a lock left by a killed
    process is taken over (the kernel released it; `ditkit.runtime.files.exclusive_lock`). Every rank raises alike.
    """
    run_dir = check_output_dir(out_dir)
    created = not run_dir.exists()
    with contextlib.ExitStack() as stack:
        if created and is_main:  # a run that fails before writing anything leaves no empty folder behind
            stack.callback(_remove_if_empty, run_dir)
        error = None
        if is_main:
            try:
                stack.enter_context(exclusive_lock(run_dir / LOCK_FILE))
            except FileLocked as err:
                since = f" since {err.holder['since']}" if err.holder.get("since") else ""
                error = (
                    f"run folder {str(run_dir)!r} is in use by {err.who}{since} (another `ditkit train`); wait for it "
                    f"to finish, stop it (it checkpoints first), or pass another out_dir"
                )
        error = distributed.broadcast_object(error)
        if error:
            raise InputError(error, setting="out_dir")
        yield run_dir


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()  # fails, as it should, when anything is inside


def prepare_run_dir(cfg: TrainConfig, is_main: bool) -> Path:
    """Check that out_dir may hold this run, before anything is written there.

    It may be new or empty, or a ditkit run: one whose checkpoints were made with compatible settings (only
    RESUMABLE_FIELDS may differ) resumes. A file, a folder with other content, or a config.json that is not
    a ditkit run's is refused, with nothing changed. Rank 0 writes config.json of a new run here; an existing
    run's is rewritten by `write_run_config` only once the run resumed (a failed resume changes nothing).
    """
    run_dir = check_output_dir(cfg.out_dir)
    stored = _stored_config(run_dir)
    if stored is not None and checkpoint.list_checkpoints(run_dir):
        conflicts = resume_conflicts(stored, cfg)
        if conflicts:
            raise InputError(
                f"run folder {str(run_dir)!r} was started with other settings "
                f"({'; '.join(conflicts)}); rerun with the original settings to resume, "
                "or pass a new out_dir",
                setting="out_dir",
            )
    if is_main:
        # Left by a process killed mid-write (we hold the lock: nobody writes them now).
        for folder in (run_dir, *(p for p in run_dir.iterdir() if p.is_dir())) if run_dir.is_dir() else ():
            clean_temp_entries(folder)
        if stored is None:
            write_json(run_dir / CONFIG_FILE, cfg.to_dict())
    distributed.barrier()
    return run_dir


def write_run_config(cfg: TrainConfig, is_main: bool) -> None:
    """Record cfg in config.json (rank 0) when it differs: a resumed run with other RESUMABLE_FIELDS."""
    path = Path(cfg.out_dir) / CONFIG_FILE
    if is_main and _stored_config(Path(cfg.out_dir)) != json.loads(json.dumps(cfg.to_dict())):
        write_json(path, cfg.to_dict())


_OWN_ENTRIES = (LOCK_FILE, LOG_FILE)  # what a ditkit run folder may hold before its config.json exists


def _stored_config(run_dir: Path) -> dict[str, Any] | None:
    """config.json of a ditkit run in run_dir (None when there is none); ValueError for anything else there."""
    path = run_dir / CONFIG_FILE
    if not path.exists():
        others = (
            sorted(
                p.name for p in run_dir.iterdir() if p.name not in _OWN_ENTRIES and not p.name.startswith(TEMP_PREFIX)
            )
            if run_dir.is_dir()
            else []
        )
        if others:
            raise InputError(
                f"out_dir {str(run_dir)!r} is not a ditkit run folder (no {CONFIG_FILE}) and not empty "
                f"(it holds {', '.join(map(repr, others[:3]))}{' ...' if len(others) > 3 else ''}); "
                "pass a new or empty folder",
                setting="out_dir",
            )
        return None
    try:
        stored = json.loads(path.read_text())
        TrainConfig.from_dict(stored)
    except (ValueError, TypeError, AttributeError) as err:
        raise InputError(
            f"{str(path)!r} is not the config of a ditkit run ({_short(err)}); ditkit leaves it as it is: "
            "pass a new or empty folder as out_dir",
            setting="out_dir",
        ) from None
    return stored


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 120 else text[:117] + "..."


# metrics.jsonl


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of metrics.jsonl, skipping a last line cut short by a crash."""
    path = Path(run_dir) / METRICS_FILE
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def trim_metrics(run_dir: str | os.PathLike, up_to_step: int) -> list[dict[str, Any]]:
    """Keep the records of steps <= up_to_step (a resumed run repeats the later ones); returns them."""
    kept = [r for r in read_metrics(run_dir) if r.get("step", float("inf")) <= up_to_step]
    if (Path(run_dir) / METRICS_FILE).is_file():
        write_text(Path(run_dir) / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def append_metrics(run_dir: str | os.PathLike, record: dict[str, Any], *, durable: bool = False) -> None:
    """Append one line; `durable` flushes it to disk (before a checkpoint that must not get ahead of it)."""
    with open(Path(run_dir) / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")
        if durable:
            f.flush()
            os.fsync(f.fileno())


# Building a TrainConfig from a user's choices.


def build_train_config(
    out_dir: str | os.PathLike,
    *,
    data: str | None = None,
    preset: str | None = None,
    recipe: str | None = None,
    model_overrides: dict[str, Any] | None = None,
    diffusion_overrides: dict[str, Any] | None = None,
    sample_overrides: dict[str, Any] | None = None,
    **fields: Any,
) -> TrainConfig:
    """The TrainConfig of `ditkit train`'s choices (a Python caller gets the same decisions).

    Without `data` (or "mnist"): the demo recipe on the embedded MNIST. With `data`: the paper run. A
    `preset` picks the model's size and patch; the input shape and class count come from the data (a
    latent store's latent shape; in pixel space the images' channels; through a VAE its latent channels
    and downsampling), `model_overrides` (block, num_classes, learn_sigma, num_heads, ...) win over both.
    A `recipe` (ditkit.config.recipes.RECIPES: "paper", "cpu-small") sets the model, diffusion, optimisation,
    EMA and sampling instead; `preset`, the overrides and `fields` win over it. The diffusion's learned sigma
    follows the model's; `diffusion_overrides` set the rest (predict_xstart, noise_schedule; or objective "flow"
    with FLOW_FIELDS: path, prediction, loss_weight, ...: no learned sigma, a flow sampler for the grids).
    """
    embedded = data is None or data.strip().lower().partition(":")[0] == "mnist"
    base = demo_train_config(out_dir) if embedded else TrainConfig(out_dir=str(out_dir))
    if recipe is not None:
        base = base.replace(**recipe_fields(recipe))
    base = base.replace(data=data, **fields)
    model = get_preset(preset) if preset else base.model
    model_fields, image_size = _data_geometry(base, image_size_given="image_size" in fields)  # data first
    base = with_vae_record(base.replace(image_size=image_size), vae_given="vae" in fields)
    if preset and (embedded or recipe):
        model_fields["learn_sigma"] = base.model.learn_sigma  # the recipe's diffusion has no VB term
    if recipe == "cpu-small" and not preset:  # its patch follows the data: a few dozen tokens
        model_fields["patch_size"] = cpu_small_patch(model_fields["input_size"])
    if (diffusion_overrides or {}).get("objective") == "flow":
        model_fields["learn_sigma"] = False  # a flow model learns no variance (a given learn_sigma=True is refused)
    model_fields.update(model_overrides or {})
    model = model.replace(**model_fields)
    diffusion = process_from_choices(base.diffusion, diffusion_overrides or {}, learn_sigma=model.learn_sigma)
    sample_fields = dict(sample_overrides or {})
    if not model.has_null_class:
        sample_fields.setdefault("cfg_scale", 1.0)  # no null class, no guidance (the recipe guides digits)
    sample = for_process(base.sample.replace(**sample_fields), diffusion, given=sample_overrides or {})
    cfg = base.replace(model=model, diffusion=diffusion, sample=sample)
    dataset, _ = check_training_data(cfg)  # the overrides against the data (class count, channels), also dry runs
    names = dataset.class_names if model.num_classes else None  # the run records them for sampling and exports
    return cfg.replace(class_names=tuple(names) if names else None)


def with_vae_record(cfg: TrainConfig, *, vae_given: bool = False) -> TrainConfig:
    """The run records the autoencoder its latents come from by path and fingerprint: a latent store's own
    (a given vae must be the same one, e.g. moved), or the VAE that encodes its images; nothing in pixel space."""
    if cfg.data and _is_store(cfg.data):
        store = store_vae(cfg.data)
        record = store
        if vae_given and not is_pixel_space(cfg.vae):
            given = vae_fingerprint(cfg.vae)
            if store.sha256 is not None and given != store.sha256:
                raise InputError(
                    f"vae {cfg.vae!r} is not the autoencoder that made the latent store {cfg.data!r} (it recorded "
                    f"{store.spec!r}, sha256 {store.sha256[:12]}); omit vae: the store's own is used",
                    setting="vae",
                )
            record = VaeRecord(recorded_spec(cfg.vae), store.sha256 or given, store.scale)
    elif cfg.is_latent:
        if not Path(cfg.vae).expanduser().exists():  # a hub id: offline and not cached is one line, now
            resolve_hub_id(cfg.vae, setting="vae", what="VAE")
        record = VaeRecord.of(cfg.vae)
    else:
        return cfg
    return cfg.replace(vae=record.spec, vae_sha256=record.sha256, vae_scale=record.scale)


def _data_geometry(cfg: TrainConfig, *, image_size_given: bool) -> tuple[dict[str, Any], int]:
    """The model fields the data decide (input channels and size, class count), and the image size.

    A size that contradicts the data is an InputError here, before any VAE or model: a latent store's
    image size is its own (a given image_size that differs from it is refused), and
    through a VAE the size must be a multiple of its downsampling (read from its config, not loaded).
    Without a given image_size, an image folder's or .npz's images give it (`pick_image_size`: their own
    size, at most 256 px, a multiple of the patch times the downsampling), the digits their default; the
    embedded MNIST keeps its recipe's.
    """
    store = bool(cfg.data and _is_store(cfg.data))
    size: int | None = cfg.image_size
    if not store and cfg.data and cfg.data.strip().lower().partition(":")[0] != "mnist":
        downsample = vae_geometry(cfg.vae)[1] if cfg.is_latent else 1
        vae = cfg.vae if cfg.is_latent else None
        requested = cfg.image_size if image_size_given else None
        size = pick_image_size(cfg.data, requested, vae=vae, multiple=downsample * cfg.model.patch_size)
    dataset = open_dataset(cfg.data, None if store else size, flip=False)
    if dataset.is_latent:
        if image_size_given and cfg.image_size != dataset.image_size:
            raise InputError(
                f"latent store {cfg.data!r} was made from {dataset.image_size} px images, not image_size "
                f"{cfg.image_size}; omit image_size (it comes from the store) or extract a store at that size",
                setting="image_size",
            )
        channels, size, _ = dataset.item_shape
    elif cfg.is_latent:
        channels, downsample = vae_geometry(cfg.vae)
        check_downsampling(dataset.image_size, downsample)
        size = dataset.image_size // downsample
    else:
        channels, size = dataset.channels, dataset.image_size
    return {"in_channels": channels, "input_size": size, "num_classes": dataset.num_classes}, dataset.image_size


def _is_store(spec: str) -> bool:
    return (Path(spec).expanduser() / "meta.json").is_file()


# A trained model, opened for sampling.


def open_for_sampling(
    path: str | os.PathLike,
    *,
    vae: str | None = None,
    device: str | torch.device = "cpu",
    num_heads: int | None = None,
    objective: Objective | None = None,
) -> SamplingModel:
    """Open weights or a run folder to sample from (EMA weights of a run's newest checkpoint); `objective`
    ("flow" for SiT's checkpoints) only for weights files that record no process (`load_model`). The VAE
    is `vae` when given, else the run's (its config.json), else none (pixel space); a latent model without
    one is an error, since its samples could not be decoded. A run's class names come along (`class_names`;
    None for a weights file).
    """
    overrides = {"num_heads": num_heads} if num_heads else {}
    model, diffusion = load_model(path, device=device, objective=objective, **overrides)
    spec, scale, names = vae or NO_VAE, None, None
    if (Path(path) / CONFIG_FILE).is_file():  # a run: decode with the autoencoder it recorded (checked)
        stored = json.loads((Path(path) / CONFIG_FILE).read_text())
        spec, scale = decoder_spec(VaeRecord.from_config(stored), vae, what=f"the run {str(path)!r}")
        names = stored.get("class_names")  # the data's class names (older runs recorded none)
        names = tuple(names) if names and len(names) == model.config.num_classes else None
    autoencoder = load_vae(spec, device, scale=scale)
    if autoencoder is None and model.config.in_channels not in (1, 3):
        raise InputError(
            f"this model works in a {model.config.in_channels}-channel latent space: pass vae=FOLDER_OR_HUB_ID "
            "(e.g. a local copy of stabilityai/sd-vae-ft-mse) to decode its samples",
            setting="vae",
        )
    return SamplingModel(model, diffusion, autoencoder, class_names=names)
