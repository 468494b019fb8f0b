"""Our DiT against facebookresearch/DiT (commit ed81ce2): forward pass and both CFG forms, fp32.

The reference tensors in tests/fixtures/ were produced by the official code (see
shared/reference/README.md); the weights are official-layout state dicts loaded with strict keys.
"""

from __future__ import annotations

import pytest
import torch

from ditkit.diffusion.samplers import guided_denoiser
from ditkit.model.dit import DiT
from ditkit.model.weights import load_dit
from numerics import OPS_ELEMENTWISE, OPS_FORWARD, assert_fp32_close


@pytest.fixture
def official_model(fixtures_dir, reference_configs):
    def load(name: str) -> DiT:
        model = DiT(reference_configs[name]).eval()
        model.load_state_dict(torch.load(fixtures_dir / f"{name}.official.pt", weights_only=True), strict=True)
        return model

    return load


@pytest.mark.parametrize("name", ["tiny_p2", "tiny_p4_nosigma_nodrop"])
def test_forward_matches_official(name, official_model, load_fixture):
    ref = load_fixture(f"{name}.forward.safetensors")
    with torch.no_grad():
        out = official_model(name)(ref["x"], ref["t"], ref["y"])
    assert_fp32_close(out, ref["out"], ops=OPS_FORWARD)


@pytest.mark.parametrize("name", ["tiny_p2", "tiny_p4_nosigma_nodrop"])
def test_load_dit_forward_matches_official(name, fixtures_dir, reference_configs, load_fixture):
    """The same through load_dit: config inferred from the weights plus the head count (and class count)."""
    config = reference_configs[name]
    model = load_dit(fixtures_dir / f"{name}.official.pt", num_heads=config.num_heads, num_classes=config.num_classes)
    assert model.config == config
    ref = load_fixture(f"{name}.forward.safetensors")
    with torch.no_grad():
        assert_fp32_close(model(ref["x"], ref["t"], ref["y"]), ref["out"], ops=OPS_FORWARD)


@pytest.mark.parametrize(("guided_channels", "key"), [(3, "cfg_out"), (4, "cfg_out_all_channels")])
def test_cfg_matches_official(guided_channels, key, official_model, load_fixture):
    """Official forward_with_cfg(x, t, cfg_y, 4.0) guides the first half of a doubled batch.

    It ran the model on [x[:2], x[:2]] with the full t (four different steps), so the null half saw
    t[2:]: the wrapped model is called with that full t to reproduce it.
    """
    ref = load_fixture("tiny_p2.forward.safetensors")
    model = official_model("tiny_p2")
    full_t, cfg_y = ref["t"], ref["cfg_y"]
    assert cfg_y[2:].tolist() == [10, 10] and ref["cfg_scale"].item() == 4.0
    denoise = guided_denoiser(lambda x, t, y: model(x, full_t, y), cfg_y[:2], cfg_y[2:], 4.0, guided_channels)
    with torch.no_grad():
        out = denoise(ref["x"][:2], full_t[:2])
    assert_fp32_close(out, ref[key][:2], ops=OPS_FORWARD + OPS_ELEMENTWISE)


def test_cfg_forms_differ_only_in_fourth_channel(load_fixture):
    ref = load_fixture("tiny_p2.forward.safetensors")
    three, full = ref["cfg_out"][:2], ref["cfg_out_all_channels"][:2]
    torch.testing.assert_close(three[:, :3], full[:, :3], rtol=0, atol=0)
    torch.testing.assert_close(three[:, 4:], full[:, 4:], rtol=0, atol=0)
    assert not torch.allclose(three[:, 3], full[:, 3])
