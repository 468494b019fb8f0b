"""SiT's released checkpoints (willisma/SiT): DiT's key layout with learned sigma on, loaded as a flow model.

tests/fixtures/SiT-XL-2-256x256.keys.json lists the keys and shapes of SiT-XL-2-256x256.pt without the 2.7 GB
file. It was made by instantiating ditkit's DiT-XL/2 (learn_sigma=True) on the meta device and writing
{key: shape} in state-dict order, after reading SiT's models.py (HEAD of github.com/willisma/SiT): its SiT
class has DiT's modules under the same names (x_embedder.proj from timm's PatchEmbed, t_embedder.mlp.{0,2},
y_embedder.embedding_table with the null row, blocks.i.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2,
adaLN_modulation.1} with 6 x hidden chunks, final_layer.{linear, adaLN_modulation.1}, the fixed pos_embed
parameter) and SiT_XL_2 is depth 28, width 1152, 16 heads, patch 2, learn_sigma True at 256 px. It is
therefore byte-identical to DiT-XL-2-256x256.keys.json, which is why a weights file alone cannot say which of
the two it is: the caller says objective "flow" (`load_sit`, `--objective flow`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ditkit import load_sit
from ditkit.config import DiffusionConfig, FlowConfig, SampleConfig, get_preset
from ditkit.config.model import default_diffusion
from ditkit.model.dit import DiT
from ditkit.model.weights import infer_config, load_model, load_strict, save_weights
from ditkit.runtime.errors import InputError
from ditkit.sampling.generate import generate
from smoke.test_cli import invoke

SAMPLE = [
    "--num-heads",
    "2",
    "--num-steps",
    "3",
    "--per-class",
    "1",
    "--classes",
    "0,1",
    "--device",
    "cpu",
    "--precision",
    "fp32",
]


def test_the_sit_xl2_manifest_loads_strictly_as_a_flow_model(fixtures_dir: Path) -> None:
    shapes = json.loads((fixtures_dir / "SiT-XL-2-256x256.keys.json").read_text())
    state = {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}
    config = infer_config(state)
    assert config == get_preset("DiT-XL/2")  # learn_sigma True: 8 output channels, SiT drops the last 4
    with torch.device("meta"):
        model = DiT(config)
    load_strict(model, state, source="SiT-XL-2-256x256.pt")
    assert sum(v.numel() for v in state.values()) == 675_129_632  # SiT-XL's 675 M (the paper's Table)
    process = default_diffusion(config, "flow")
    assert process.is_flow and process.flow == FlowConfig() and process.learn_sigma


def _sit_layout(tmp_path: Path, learn_sigma: bool = True) -> tuple[Path, DiT]:
    """A tiny SiT saved as SiT's train.py / released files are: a plain .pt state dict, pixel space (3 channels)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DiT(get_preset("DiT-T/2", in_channels=3, learn_sigma=learn_sigma)).eval()
        for p in model.parameters():  # adaLN-Zero starts at a zero output: give the sampler something to move
            torch.nn.init.normal_(p, std=0.1)
    path = tmp_path / "SiT-T-2-8x8.pt"
    torch.save(model.state_dict(), path)
    return path, model


def test_load_sit_infers_the_config_and_ignores_the_sigma_channels(tmp_path: Path) -> None:
    path, original = _sit_layout(tmp_path)
    model, process = load_sit(path, num_heads=2)  # a tiny width has no paper head count
    assert model.config == original.config and model.config.learn_sigma
    assert process == DiffusionConfig(objective="flow", flow=FlowConfig(), learn_sigma=True)
    assert load_model(path, objective="flow", num_heads=2)[1] == process
    # The same network without the sigma half of its output layer samples the same images.
    cut = DiT(original.config.replace(learn_sigma=False)).eval()
    state = dict(original.state_dict())
    c, p = original.config.in_channels, original.config.patch_size
    rows = torch.arange(p * p * 2 * c).view(p * p, 2 * c)[:, :c].reshape(-1)  # unpatchify's (p, p, C) order
    state["final_layer.linear.weight"] = state["final_layer.linear.weight"][rows]
    state["final_layer.linear.bias"] = state["final_layer.linear.bias"][rows]
    cut.load_state_dict(state)
    for sampler in ("euler", "heun", "sde-euler"):
        config = SampleConfig(sampler=sampler, num_steps=4, precision="fp32", cfg_scale=4.0)
        images = generate(model, [1, 2], [5, 6], config, diffusion=process)
        assert images.shape == (2, 8, 8, 3)
        reference = generate(
            cut, [1, 2], [5, 6], config, diffusion=DiffusionConfig(objective="flow", learn_sigma=False)
        )
        assert np.array_equal(images, reference), sampler


def test_sample_a_sit_checkpoint_with_the_objective_flag(tmp_path: Path) -> None:
    path, _ = _sit_layout(tmp_path)
    out = tmp_path / "samples"
    invoke("sample", "--ckpt", str(path), "--objective", "flow", "--sampler", "heun", "--out", str(out), *SAMPLE)
    assert (out / "grid.png").is_file()
    invoke(
        "walk",
        "--ckpt",
        str(path),
        "--objective",
        "flow",
        "--out",
        str(tmp_path / "w"),
        "--frames",
        "2",
        "--num-steps",
        "2",
        "--device",
        "cpu",
        "--kind",
        "noise",
        "--num-heads",
        "2",
    )
    # Without the flag the weights are DiT's: a flow sampler is refused in one line.
    proc = invoke(
        "sample", "--ckpt", str(path), "--sampler", "euler", "--out", str(tmp_path / "d"), *SAMPLE, check=False
    )
    assert proc.returncode == 2 and "flow" in proc.stderr


def test_a_recorded_process_wins_over_a_contradicting_objective(tmp_path: Path) -> None:
    model = DiT(get_preset("DiT-T/2", in_channels=3))
    path = save_weights(model.state_dict(), model.config, tmp_path / "dit.safetensors", DiffusionConfig())
    with pytest.raises(InputError, match="records objective 'diffusion'") as err:
        load_model(path, objective="flow")
    assert err.value.setting == "objective"
    assert load_model(path, objective="diffusion")[1] == DiffusionConfig()
    proc = invoke(
        "sample", "--ckpt", str(path), "--objective", "flow", "--out", str(tmp_path / "s"), *SAMPLE, check=False
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "records objective 'diffusion'" in lines[0] and "--objective" in lines[0]


def test_a_new_flow_run_still_learns_no_variance() -> None:
    from ditkit.config.model import process_from_choices

    with pytest.raises(InputError, match="learns no variance") as err:
        process_from_choices(DiffusionConfig(), {"objective": "flow"}, learn_sigma=True)
    assert err.value.setting == "learn_sigma"
    assert not process_from_choices(DiffusionConfig(), {"objective": "flow"}, learn_sigma=False).learn_sigma
