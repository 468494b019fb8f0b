"""The frozen VAE that maps images to DiT's latent space (Stable Diffusion's AutoencoderKL via diffusers).

DiT encodes images in [-1, 1] to a posterior sample times 0.18215 and decodes z / 0.18215 (facebookresearch/DiT
`train.py` / `sample.py`; https://huggingface.co/stabilityai/sd-vae-ft-ema). diffusers is optional and imported lazily.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import threading
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ditkit.config import VAE_DOWNSAMPLE, VAE_LATENT_CHANNELS, VAE_LATENT_SCALE
from ditkit.runtime.errors import InputError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "owner/name", as the Hugging Face hub spells ids
TRAINING_STATE_FILE = Path("training") / "state.json"  # `ditkit train-vae`'s progress inside a VAE folder


def unfinished_training(path: str | os.PathLike) -> tuple[int, int] | None:
    """(step, max_steps) when `path` is a `ditkit train-vae` folder whose training has not finished (its
    scaling factor is measured at the end, so it has none yet); None for a finished folder or any other VAE.

    state.json says `finished`; folders written before it did count as finished when report.json exists."""
    state_file = Path(path) / TRAINING_STATE_FILE
    if not state_file.is_file():
        return None
    try:
        state = json.loads(state_file.read_text())
        finished = state.get("finished", (Path(path) / "report.json").is_file())
        return None if finished else (int(state["step"]), int(state.get("max_steps", 0)))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise InputError(f"VAE folder {str(path)!r}: unreadable {TRAINING_STATE_FILE} ({err})", setting="vae") from None


class Autoencoder:
    """A frozen diffusers AutoencoderKL with DiT's latent convention.

    Latents are `posterior sample x scale`. `scale` defaults to the VAE config's `scaling_factor` (the SD VAE
    says 0.18215, the constant DiT hard-codes; a VAE trained by `ditkit train-vae` records 1 / std of its
    latents there), or VAE_LATENT_SCALE for a config without one.
    """

    def __init__(self, vae: Any, *, name: str = "", scale: float | None = None) -> None:
        self.vae = vae.eval().requires_grad_(False)
        self.name = name  # what it was loaded from (folder or hub id); recorded in latent stores
        config_scale = getattr(vae.config, "scaling_factor", None)
        self.scale = float(scale if scale is not None else config_scale or VAE_LATENT_SCALE)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsample(self) -> int:
        """Spatial downsampling factor: one halving per encoder block after the first."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Unscaled posterior (mean, std) of images x (N, C, H, W) in [-1, 1]; float32 (N, c, H/f, W/f)."""
        posterior = self.vae.encode(x.to(self.device, self.dtype)).latent_dist
        return posterior.mean.float(), posterior.std.float()

    def encode(self, x: Tensor, generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
        """Latents (N, c, H/f, W/f): a posterior SAMPLE times `scale`, as DiT trains on.

        The sample is mean + std * noise, with `noise` given (the training step's draw) or drawn from
        `generator`.
        """
        mean, std = self.encode_moments(x)
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator, device=_generator_device(generator, mean))
        return (mean + std * noise.to(mean.device)) * self.scale

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images (N, C, H, W) in about [-1, 1] (not clamped) from scaled latents (N, c, h, w)."""
        z = (latents / self.scale).to(self.device, self.dtype)
        return self.vae.decode(z).sample.float()


def vae_geometry(spec: str) -> tuple[int, int]:
    """(latent channels, spatial downsampling) of a VAE without loading it: read from a local diffusers
    folder's config.json, else the SD VAE's (4, 8) (hub ids, which DiT uses)."""
    path = Path(spec).expanduser()
    for config_file in (path / "config.json", path / "vae" / "config.json"):
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text())
                return int(config["latent_channels"]), 2 ** (len(config["block_out_channels"]) - 1)
            except (ValueError, KeyError, TypeError) as err:
                message = f"VAE folder {spec!r}: unreadable {str(config_file)!r} ({err}); recreate it or pass another"
                raise InputError(message, setting="vae") from None
    return VAE_LATENT_CHANNELS, VAE_DOWNSAMPLE


def check_vae_channels(spec: str, dataset: Any) -> None:
    """Raise InputError when a local VAE folder's config.json takes images of other than the dataset's channels (a
    1-channel autoencoder on RGB data), before the VAE loads; hub ids (SD's VAEs) take 3."""
    channels = dataset.channels
    root = getattr(dataset, "root", None)  # an image folder's
    data = f" in {str(root)!r}" if root is not None else ""
    path = Path(spec).expanduser()
    config_file = next((f for f in (path / "config.json", path / "vae" / "config.json") if f.is_file()), None)
    try:
        takes = int(json.loads(config_file.read_text()).get("in_channels", 3)) if config_file else 3
    except (ValueError, AttributeError, TypeError) as err:
        message = f"VAE folder {spec!r}: unreadable {str(config_file)!r} ({err}); recreate it or pass another VAE"
        raise InputError(message, setting="vae") from None
    if takes != channels:
        raise InputError(
            f"VAE {spec!r} takes {takes}-channel images but the images{data} have {channels} channels; train an "
            f"autoencoder on this data (train-vae) or pass a {channels}-channel VAE",
            setting="vae",
        )


def _generator_device(generator: torch.Generator | None, like: Tensor) -> torch.device:
    return like.device if generator is None else generator.device


def resolve_hub_id(spec: str, *, setting: str, what: str, offline: bool | None = None) -> str:
    """A Hugging Face hub id as its folder in the local cache when it is there (no network call), else the id
    itself when the hub answers. Offline (`offline`, HF_HUB_OFFLINE or `hub_reachable`) and not cached:
    InputError, one line with the fix, within seconds rather than the hub client's ~30 s of retries."""
    try:
        from huggingface_hub import snapshot_download  # a dependency of diffusers

        folder = snapshot_download(spec, cache_dir=_hub_cache_dir(), local_files_only=True)
        if any(Path(folder, name).is_file() for name in ("config.json", "model_index.json")):
            return str(folder)
    except Exception:  # not cached (or no huggingface_hub): ask the hub, or the loader reports it
        pass
    env_offline = os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")
    if env_offline:
        why = "HF_HUB_OFFLINE is set (offline)"
    elif offline:
        why = "loading is local-only (offline)"
    elif offline is None and not hub_reachable():
        why = f"this machine is offline (cannot reach {_hub_endpoint()})"
    else:
        return spec
    raise InputError(
        f"{what} {spec!r} is a Hugging Face hub id, but {why} and it is not in the local cache; on a machine "
        f"with network run `hf download {spec} --local-dir DIR`, copy DIR here and pass {setting}=DIR",
        setting=setting,
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint (or the HTTPS proxy) accepts a TCP connection within `timeout` seconds."""
    url = urllib.parse.urlsplit(urllib.request.getproxies().get("https") or _hub_endpoint())
    address = (url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
    answered: list[bool] = []

    def probe() -> None:  # in a thread: name resolution has no timeout of its own
        try:
            socket.create_connection(address, timeout=timeout).close()
            answered.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered)


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def _hub_cache_dir() -> str | None:
    """The hub cache as the environment names it now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    return os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None


def load_vae(
    spec: str,
    device: torch.device | str = "cpu",
    *,
    scale: float | None = None,
    dtype: torch.dtype = torch.float32,
    local_files_only: bool | None = None,
) -> Autoencoder | None:
    """Load a frozen VAE from "none" (pixel space: returns None), a local folder or a hub id.

    A folder holds the diffusers layout (config.json + diffusion_pytorch_model.safetensors), or a
    pipeline with a `vae/` subfolder. A hub id such as "stabilityai/sd-vae-ft-ema" loads from the local
    Hugging Face cache when it is there, else from the hub (`resolve_hub_id`); `local_files_only=True`
    never asks the hub (None: HF_HUB_OFFLINE, then a quick probe of the hub, decide).
    """
    if spec.strip().lower() == "none":
        return None
    path, kwargs = Path(spec).expanduser(), dict[str, Any]()
    if not path.exists() and _HUB_ID.match(spec):  # the local cache first (no network call), else the hub
        path = Path(resolve_hub_id(spec, setting="vae", what="VAE", offline=local_files_only))
    if path.exists():
        if not path.is_dir():
            raise InputError(f"VAE {spec!r} is a file; pass the folder that holds config.json", setting="vae")
        if not (path / "config.json").is_file():
            if not (path / "vae" / "config.json").is_file():
                raise InputError(
                    f"VAE folder {spec!r} has no config.json; pass a diffusers AutoencoderKL folder", setting="vae"
                )
            kwargs["subfolder"] = "vae"  # a whole pipeline folder
        unfinished = unfinished_training(path) if scale is None else None
        if unfinished is not None:
            where = f"step {unfinished[0]} of {unfinished[1]}" if unfinished[1] else f"step {unfinished[0]}"
            raise InputError(
                f"autoencoder training did not finish ({where}) in {spec!r}: rerun train-vae to finish it, or pass "
                "scale=... (the latent scaling factor)",
                setting="vae",
            )
        source = str(path)
    elif _HUB_ID.match(spec):  # not cached, and the hub answers
        source = spec
    else:
        raise InputError(
            f"VAE {spec!r} is neither an existing folder nor a hub id like 'stabilityai/sd-vae-ft-ema'; "
            "pass a diffusers VAE folder, a hub id, or 'none' for pixel space",
            setting="vae",
        )
    try:
        from diffusers import AutoencoderKL  # the optional `vae` extra; imports in ~2 s
    except ImportError as err:
        raise InputError(
            f"loading VAE {spec!r} needs diffusers ({err}); pip install 'ditkit[vae]' or pass vae='none'", setting="vae"
        ) from None
    # Without accelerate, diffusers warns unless low_cpu_mem_usage is off.
    kwargs["low_cpu_mem_usage"] = importlib.util.find_spec("accelerate") is not None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            vae = AutoencoderKL.from_pretrained(source, torch_dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(
            f"cannot load VAE {spec!r} ({first_line}); without network, download it on an online machine "
            "(`hf download stabilityai/sd-vae-ft-ema --local-dir DIR`) and pass DIR",
            setting="vae",
        ) from None
    return Autoencoder(vae.to(device), name=spec, scale=scale)


def make_tiny_vae(path: str | Path, *, in_channels: int = 3, seed: int = 0) -> Path:
    """Save a tiny randomly initialised AutoencoderKL (downsample 2, 4 latent channels) for tests.

    Never downloads. Returns the folder, loadable with `load_vae(str(path))`.
    """
    from diffusers import AutoencoderKL  # the optional `vae` extra

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=in_channels,
            out_channels=in_channels,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(32, 64),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=16,
            sample_size=32,
        )
    path = Path(path)
    vae.save_pretrained(path)
    return path


def to_uint8(images: Tensor) -> Tensor:
    """Images (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), as DiT saves samples: clamp(127.5x + 128)."""
    return (127.5 * images.float() + 128.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
