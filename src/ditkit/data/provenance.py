"""Which autoencoder made a model's latents: recorded by absolute path and fingerprint (sha256 of its config and
weights) in latent stores and runs, and checked wherever samples are decoded, so a run never decodes with another.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ditkit.config import NO_VAE
from ditkit.data.autoencoder import resolve_hub_id
from ditkit.runtime.errors import InputError

logger = logging.getLogger(__name__)

# What a fingerprint covers: the diffusers AutoencoderKL layout (its config and its weights, either format).
FINGERPRINT_FILES = ("config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_CHUNK = 1 << 22  # bytes hashed per read


def is_pixel_space(spec: str | None) -> bool:
    return spec is None or spec.strip().lower() == NO_VAE


def vae_folder(spec: str) -> Path | None:
    """The folder that holds the VAE's config.json: a local folder (or its `vae/` subfolder of a pipeline), or
    a hub id's snapshot in the local Hugging Face cache; None for pixel space or a hub id not cached here."""
    if is_pixel_space(spec):
        return None
    path = Path(spec).expanduser()
    if path.exists():
        for folder in (path, path / "vae"):
            if (folder / "config.json").is_file():
                return folder.resolve()
        return None
    if path.is_absolute() or spec.count("/") != 1:  # a folder that is not there; hub ids are "owner/name"
        return None
    try:
        cached = Path(resolve_hub_id(spec, setting="vae", what="VAE", offline=True))  # the cache, no network
    except InputError:  # not in the local cache
        return None
    return cached if (cached / "config.json").is_file() else None


def recorded_spec(spec: str) -> str:
    """How a store or run records a VAE: a local folder as its absolute path, a hub id or "none" as given."""
    if is_pixel_space(spec):
        return NO_VAE
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def vae_fingerprint(spec: str) -> str | None:
    """sha256 over the names and bytes of the VAE's config.json and weights; None when they cannot be read here
    (pixel space, a hub id not in the local cache)."""
    folder = vae_folder(spec)
    if folder is None:
        return None
    files = [folder / name for name in FINGERPRINT_FILES if (folder / name).is_file()]
    return _hash_files(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@functools.lru_cache(maxsize=16)
def _hash_files(files: tuple[tuple[str, int, int], ...]) -> str:
    """sha256 of the files (path, size, mtime: a changed file is hashed again; an unchanged one once)."""
    digest = hashlib.sha256()
    for path, _, _ in files:
        digest.update(Path(path).name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class VaeRecord:
    """The autoencoder a store or run recorded: `spec` (absolute folder or hub id, or "none"), its fingerprint
    (None: not recorded, e.g. made before ditkit recorded it) and the latent scale its latents were made with."""

    spec: str
    sha256: str | None = None
    scale: float | None = None

    @classmethod
    def of(cls, spec: str, scale: float | None = None) -> VaeRecord:
        """The record of the VAE at `spec` as it is now (path made absolute, files fingerprinted)."""
        return cls(recorded_spec(spec), vae_fingerprint(spec), scale)

    @classmethod
    def from_config(cls, values: dict[str, Any]) -> VaeRecord:
        """From a run's config.json or a store's meta.json (keys `vae`, `vae_sha256`, and `vae_scale` / `scale`)."""
        scale = values.get("vae_scale", values.get("scale"))
        return cls(str(values.get("vae") or NO_VAE), values.get("vae_sha256"), None if scale is None else float(scale))


def decoder_spec(recorded: VaeRecord, override: str | None, *, what: str) -> tuple[str, float | None]:
    """(VAE spec, latent scale) to decode the samples of `what` (a run or weights): the recorded autoencoder,
    checked against its fingerprint, or an explicit `override` (said in one log line when it is another VAE).

    The recorded scale applies to the recorded VAE (and to an override with the same fingerprint); another
    VAE uses its own config's. A recorded VAE that moved or changed is an InputError naming the fix.
    """
    if override is not None:
        if is_pixel_space(recorded.spec) or recorded.sha256 is None:
            return override, None
        same = vae_fingerprint(override) == recorded.sha256
        if not same:
            logger.warning(
                "decoding %s with vae=%r as asked, not the autoencoder it was trained with (%s, sha256 %s)",
                what,
                override,
                recorded.spec,
                recorded.sha256[:12],
            )
        return override, recorded.scale if same else None
    if is_pixel_space(recorded.spec) or recorded.sha256 is None:
        return recorded.spec, recorded.scale
    found = vae_fingerprint(recorded.spec)
    if found is None and not Path(recorded.spec).is_absolute():
        return recorded.spec, recorded.scale  # a hub id not in the cache here: load_vae fetches it (or says offline)
    if found is None:
        raise InputError(
            f"{what} was trained with the autoencoder {recorded.spec!r} (sha256 {recorded.sha256[:12]}), which "
            "is not there any more; pass vae=DIR with a copy of it",
            setting="vae",
        )
    if found != recorded.sha256:
        raise InputError(
            f"the autoencoder {recorded.spec!r} changed since {what} was trained with it (sha256 "
            f"{recorded.sha256[:12]} recorded, {found[:12]} now); pass vae=DIR with the one it was trained with",
            setting="vae",
        )
    return recorded.spec, recorded.scale
