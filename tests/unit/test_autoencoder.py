"""The VAE wrapper on a tiny random AutoencoderKL saved to disk (no download)."""

from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from ditkit.config import VAE_LATENT_SCALE
from ditkit.data.autoencoder import Autoencoder, load_vae, make_tiny_vae, to_uint8


@pytest.fixture(scope="module")
def vae(tmp_path_factory) -> Autoencoder:
    folder = make_tiny_vae(tmp_path_factory.mktemp("vae") / "tiny")
    loaded = load_vae(str(folder), "cpu")
    assert loaded is not None
    return loaded


def test_tiny_vae_folder_has_diffusers_layout(vae: Autoencoder, tmp_path: Path):
    folder = make_tiny_vae(tmp_path / "again")
    assert (folder / "config.json").is_file() and (folder / "diffusion_pytorch_model.safetensors").is_file()
    again = load_vae(str(folder))
    assert again is not None
    # Same seed, same weights.
    for a, b in zip(vae.vae.state_dict().values(), again.vae.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_properties(vae: Autoencoder):
    assert vae.latent_channels == 4 and vae.downsample == 2 and vae.scale == VAE_LATENT_SCALE
    assert all(not p.requires_grad for p in vae.vae.parameters()) and not vae.vae.training


def test_encode_decode_shapes_and_sampling(vae: Autoencoder):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mean, std = vae.encode_moments(x)
    assert mean.shape == std.shape == (2, 4, 16, 16) and (std > 0).all()
    z1 = vae.encode(x, torch.Generator().manual_seed(3))
    z2 = vae.encode(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(z1, z2, rtol=0, atol=0)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(z1, (mean + std * noise) * VAE_LATENT_SCALE)
    assert vae.decode(z1).shape == (2, 3, 32, 32)


def test_load_vae_none_and_bad_specs(tmp_path: Path):
    assert load_vae("none") is None and load_vae("None") is None
    with pytest.raises(ValueError, match="neither an existing folder nor a hub id"):
        load_vae(str(tmp_path / "missing" / "deep" / "vae"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_vae(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="VAE 'no-such-org/no-such-vae' is a Hugging Face hub id.*--local-dir"):
        load_vae("no-such-org/no-such-vae", local_files_only=True)


def test_to_uint8():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 1.5]).reshape(1, 1, 1, 5).expand(2, 3, 1, 5)
    out = to_uint8(x)
    assert out.shape == (2, 1, 5, 3) and out.dtype == torch.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_load_vae_from_pipeline_folder_and_scale_override(tmp_path: Path):
    make_tiny_vae(tmp_path / "pipeline" / "vae")  # a whole diffusers pipeline keeps its VAE in vae/
    vae = load_vae(str(tmp_path / "pipeline"), scale=0.5)
    assert vae is not None and vae.scale == 0.5 and vae.name == str(tmp_path / "pipeline")
    x = torch.zeros(1, 3, 8, 8)
    torch.testing.assert_close(
        vae.encode(x, torch.Generator().manual_seed(0)) / 0.5 * VAE_LATENT_SCALE,
        Autoencoder(vae.vae).encode(x, torch.Generator().manual_seed(0)),
    )
