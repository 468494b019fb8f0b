"""ditkit <-> diffusers: weight conversion both ways, DiTPipeline folders, and the numbers they must agree on.

Tolerances (tests/numerics.py): one transformer forward within OPS_FORWARD ulps of the output's scale (the
same maths in another summation order: measured 0.0 on this machine); a DDIM loop through DiTPipeline within
OPS_FORWARD + OPS_PER_SAMPLING_STEP ulps per step (diffusers keeps the schedule in float32, ditkit in float64:
alphas_cumprod differ by up to 3.6e-7 relative, i.e. ~3 ulps). Weights round-trip bit for bit.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from numerics import OPS_FORWARD, OPS_PER_SAMPLING_STEP, assert_fp32_close

pytest.importorskip("diffusers")

from diffusers import DiTPipeline, DiTTransformer2DModel

from ditkit.cli.main import main
from ditkit.config import DiffusionConfig, ModelConfig, SampleConfig, TrainConfig, get_preset
from ditkit.data.autoencoder import make_tiny_vae
from ditkit.diffusion.gaussian import space_timesteps
from ditkit.diffusion.samplers import sample_loop
from ditkit.interop.diffusers_format import (
    SIDECAR_FILE,
    _default_class_names,
    build_transformer,
    export_diffusers,
    import_weights,
    load_pipeline,
    set_dit_timestep_frequencies,
)
from ditkit.interop.diffusers_keys import (
    check_exportable,
    diffusion_from_scheduler,
    from_diffusers,
    scheduler_config,
    to_diffusers,
    transformer_config,
)
from ditkit.model.dit import DiT
from ditkit.model.weights import load_dit, load_model
from ditkit.training import checkpoint

VARIANTS = {
    "adaln_zero": get_preset("DiT-T/2"),
    "no_sigma_no_null_p4": get_preset("DiT-T/4", learn_sigma=False, class_dropout_prob=0.0),
    "adaln": get_preset("DiT-T/2", block="adaln"),
    "unconditional": get_preset("DiT-T/2", num_classes=0),
}


def perturbed(config: ModelConfig, seed: int = 0) -> DiT:
    """A DiT whose every weight is moved off the adaLN-Zero init (which would make the output exactly 0)."""
    model = DiT(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model


def inputs(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(x, t, y) with the ends of the chain and, where the model has one, the null label."""
    x = torch.randn(
        4, config.in_channels, config.input_size, config.input_size, generator=torch.Generator().manual_seed(1)
    )
    last = config.null_class if config.has_null_class else 1
    return x, torch.tensor([0, 17, 500, 999]), torch.tensor([0, 3, 9, last]) if config.num_classes else None


def diffusers_forward(
    transformer: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None
) -> torch.Tensor:
    labels = y if y is not None else torch.zeros_like(t)  # unconditional: an all-zero table, any label
    with torch.no_grad():
        return transformer(x, timestep=t, class_labels=labels).sample


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_vae(tmp_path_factory.mktemp("vae") / "tiny")  # 4 latent channels, downsampling 2


def make_run(folder: Path, model: DiT, diffusion: DiffusionConfig, vae: str) -> Path:
    """A ditkit run folder (config.json + one checkpoint) whose EMA weights are `model`'s."""
    cfg = TrainConfig(out_dir=str(folder), model=model.config, diffusion=diffusion, vae=vae)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg.to_dict()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint.save(folder, step=1, model=model, ema=model, optimizer=optimizer, config=cfg.to_dict())
    return folder


# Conversion of state dicts.


@pytest.mark.parametrize("name", list(VARIANTS))
def test_state_dict_round_trip_is_bit_exact(name: str) -> None:
    config = VARIANTS[name]
    model = perturbed(config)
    transformer = build_transformer(model)  # through a real DiTTransformer2DModel
    back_config, back = from_diffusers(
        transformer.state_dict(),
        dict(transformer.config),
        num_classes=config.num_classes,
        class_dropout_prob=config.class_dropout_prob,
    )
    original = model.state_dict()
    assert back_config == config and back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original), [
        k for k in original if not torch.equal(back[k], original[k])
    ]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_diffusers_transformer_computes_the_same_outputs(name: str) -> None:
    """Within OPS_FORWARD ulps: the same maths, with q/k/v as three matmuls instead of one."""
    config = VARIANTS[name]
    model = perturbed(config)
    x, t, y = inputs(config)
    with torch.no_grad():
        expected = model(x, t, y)
    assert_fp32_close(diffusers_forward(build_transformer(model), x, t, y), expected, ops=OPS_FORWARD)


def test_known_differences_timestep_frequencies_and_norm_eps() -> None:
    """diffusers' own settings (freq shift 1, norm_eps 1e-5) move outputs by ~1% of their scale, the shift
    almost all of it; `set_dit_timestep_frequencies` (one module per block) restores DiT's."""
    config = VARIANTS["adaln_zero"]
    model = perturbed(config)
    x, t, y = inputs(config)
    with torch.no_grad():
        expected = model(x, t, y)
    scale = float(expected.abs().max())
    stock = DiTTransformer2DModel(**{**transformer_config(config), "norm_eps": 1e-5}).eval()
    stock.load_state_dict(to_diffusers(model.state_dict(), config))
    shift_error = float((diffusers_forward(stock, x, t, y) - expected).abs().max())
    assert shift_error > 1e-3 * scale
    assert set_dit_timestep_frequencies(stock) == config.depth
    eps_error = float((diffusers_forward(stock, x, t, y) - expected).abs().max())
    assert 0 < eps_error < 1e-5 * scale  # norm_eps alone: a few ulps (exports write 1e-6: no difference)


def test_official_checkpoint_imports_and_runs_in_diffusers(
    fixtures_dir: Path, load_fixture, reference_configs, tmp_path: Path
) -> None:
    """The official code's tiny_p2 weights (DiT-*.pt layout): imported bit-exactly, and the diffusers transformer
    built from them reproduces the official forward pass."""
    out = import_weights(fixtures_dir / "tiny_p2.official.pt", tmp_path / "tiny.safetensors", num_heads=4)
    model, diffusion = load_model(out)
    assert model.config == reference_configs["tiny_p2"] and diffusion == DiffusionConfig()
    official = torch.load(fixtures_dir / "tiny_p2.official.pt", weights_only=True)
    assert all(torch.equal(load_file(str(out))[k], v) for k, v in official.items())
    ref = load_fixture("tiny_p2.forward.safetensors")
    assert_fp32_close(
        diffusers_forward(build_transformer(model), ref["x"], ref["t"], ref["y"]), ref["out"], ops=OPS_FORWARD
    )


def test_dit_xl2_key_map_matches_diffusers_shapes(fixtures_dir: Path) -> None:
    """The published DiT-XL/2 key manifest maps onto DiTTransformer2DModel's keys and shapes (meta tensors)."""
    shapes = json.loads((fixtures_dir / "DiT-XL-2-256x256.keys.json").read_text())
    official = {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}
    config = get_preset("DiT-XL/2")
    converted = {k: tuple(v.shape) for k, v in to_diffusers(official, config).items()}
    with torch.device("meta"):
        transformer = DiTTransformer2DModel(**transformer_config(config))
    assert converted == {k: tuple(v.shape) for k, v in transformer.state_dict().items()}
    assert sum(p.numel() for p in transformer.parameters()) == 749_826_464  # 75M more: per-block embedder copies


def test_diverged_per_block_embedders_are_refused() -> None:
    config = VARIANTS["adaln_zero"]
    transformer = build_transformer(perturbed(config))
    state = {k: v.clone() for k, v in transformer.state_dict().items()}
    state["transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.bias"] += 1e-3
    with pytest.raises(ValueError, match="block 1's timestep_embedder differs from block 0's"):
        from_diffusers(state, dict(transformer.config))


@pytest.mark.parametrize(
    ("changes", "feature"),
    [
        ({"block": "cross_attn"}, "block design 'cross_attn'"),
        ({"block": "in_context"}, "block design 'in_context'"),
        ({"mlp_ratio": 2.0}, "mlp_ratio 2.0"),
        ({"num_classes": 1001}, "num_classes 1001"),
    ],
)
def test_unrepresentable_models_raise_one_line(changes: dict, feature: str) -> None:
    with pytest.raises(ValueError, match=feature) as err:
        check_exportable(get_preset("DiT-T/2", **changes))
    assert "\n" not in str(err.value) and "equivalent" in str(err.value) and "safetensors" in str(err.value)
    assert err.value.setting == "format" and "--" not in str(err.value)  # the CLI adds "(--format)"


# Schedulers.


@pytest.mark.parametrize(
    "diffusion",
    [
        DiffusionConfig(),
        DiffusionConfig(noise_schedule="cosine", predict_xstart=True, learn_sigma=False),
        DiffusionConfig(num_train_steps=500),
    ],
)
def test_scheduler_config_round_trip_and_ddim_steps(diffusion: DiffusionConfig) -> None:
    from diffusers import DDIMScheduler

    config = scheduler_config(diffusion)
    assert diffusion_from_scheduler(config, diffusion.learn_sigma) == diffusion
    scheduler = DDIMScheduler(**config)
    scheduler.set_timesteps(50)  # "leading" = ADM's "ddim50" when 50 divides the chain
    assert scheduler.timesteps.tolist() == space_timesteps(diffusion.num_train_steps, "ddim50")[::-1]
    other = diffusion_from_scheduler({**config, "beta_schedule": "scaled_linear"}, True)  # warns: ADM linear
    assert other.noise_schedule == "linear" and other.num_train_steps == diffusion.num_train_steps
    with pytest.raises(ValueError, match="prediction_type 'v_prediction' has no ditkit equivalent"):
        diffusion_from_scheduler({**config, "prediction_type": "v_prediction"}, True)


# Folders.


def test_exported_folder_loads_in_dit_pipeline_and_imports_back_bit_exactly(vae_dir: Path, tmp_path: Path) -> None:
    model = perturbed(VARIANTS["adaln_zero"])
    run = make_run(tmp_path / "run", model, DiffusionConfig(), str(vae_dir))
    folder = export_diffusers(run, tmp_path / "pipe")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "DiTPipeline" and index["id2label"]["3"] == "class 3"
    pipe = DiTPipeline.from_pretrained(str(folder))  # what a diffusers user types
    assert type(pipe.transformer).__name__ == "DiTTransformer2DModel" and pipe.get_label_ids(["class 3"]) == [3]
    assert (
        pipe.vae.config.scaling_factor == pytest.approx(0.18215) and pipe.scheduler.config.prediction_type == "epsilon"
    )
    back = import_weights(folder, tmp_path / "back.safetensors")
    original, imported = model.state_dict(), load_file(str(back))
    assert original.keys() == imported.keys() and all(torch.equal(original[k], imported[k]) for k in original)
    assert load_model(back)[1] == DiffusionConfig() and load_dit(back).config == model.config
    with pytest.raises(ValueError, match="not an empty folder"):
        export_diffusers(run, folder)


def test_import_of_a_hub_style_folder_reads_the_scheduler(vae_dir: Path, tmp_path: Path) -> None:
    """A folder as the hub's facebook/DiT-XL-2-256 lays it out (legacy Transformer2DModel config without norm_eps,
    no ditkit sidecar): the class count comes from --num-classes, the diffusion from the scheduler config."""
    model = perturbed(get_preset("DiT-T/2", learn_sigma=False))
    diffusion = DiffusionConfig(noise_schedule="cosine", predict_xstart=True, learn_sigma=False)
    folder = export_diffusers(make_run(tmp_path / "run", model, diffusion, str(vae_dir)), tmp_path / "pipe")
    (folder / SIDECAR_FILE).unlink()
    config = json.loads((folder / "transformer" / "config.json").read_text())
    config = {k: v for k, v in config.items() if k != "norm_eps"} | {"_class_name": "Transformer2DModel"}
    legacy = {"cross_attention_dim": None, "num_vector_embeds": None, "use_linear_projection": False}
    (folder / "transformer" / "config.json").write_text(json.dumps(config | legacy))
    assert load_dit(import_weights(folder, tmp_path / "all.safetensors")).config.num_classes == 1000  # padded table
    back = import_weights(folder / "transformer", tmp_path / "ten.safetensors", num_classes=10)
    assert load_dit(back).config == model.config and load_model(back)[1] == diffusion
    assert all(torch.equal(v, load_file(str(back))[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "diffusion",
    [DiffusionConfig(), DiffusionConfig(noise_schedule="cosine", predict_xstart=True, learn_sigma=False)],
    ids=["eps-linear-learned-sigma", "x0-cosine"],
)
def test_pipeline_ddim_matches_sample_loop(diffusion: DiffusionConfig, vae_dir: Path, tmp_path: Path) -> None:
    """5 DDIM steps at cfg 4 through the exported DiTPipeline and through `ditkit.sample_loop` ("ddim5", all
    channels guided, as the pipeline does) from the same x_T agree on the latents the VAE decodes."""
    model = perturbed(get_preset("DiT-T/2", learn_sigma=diffusion.learn_sigma))
    pipe = load_pipeline(
        export_diffusers(make_run(tmp_path / "run", model, diffusion, str(vae_dir)), tmp_path / "pipe")
    )
    decoded: list[torch.Tensor] = []
    decode = pipe.vae.decode
    pipe.vae.decode = lambda z, *a, **k: decoded.append(z) or decode(z, *a, **k)
    labels, steps = [1, 7], 5
    pipe(
        labels,
        guidance_scale=4.0,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(3),
        output_type="np",
    )
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ddim = SampleConfig(sampler="ddim", num_steps=steps, respacing=f"ddim{steps}", cfg_scale=4.0, clip_denoised=False)
    latents = sample_loop(model, x_T, torch.tensor(labels), ddim, diffusion=diffusion)
    expected = 1 / pipe.vae.config.scaling_factor * latents
    assert_fp32_close(decoded[0], expected, ops=steps * (OPS_FORWARD + OPS_PER_SAMPLING_STEP))


def test_imagenet_models_get_the_pipeline_labels() -> None:
    names = _default_class_names(1000)
    assert len(names) == 1000 and names[0] == "tench, Tinca tinca" and names[207].startswith("golden retriever")


def test_cli_export_import_and_one_line_errors(vae_dir: Path, tmp_path: Path) -> None:
    model = perturbed(VARIANTS["adaln"])
    run = make_run(tmp_path / "run", model, DiffusionConfig(), str(vae_dir))
    assert cli("export", str(run), str(tmp_path / "pipe"), "--format", "diffusers")[0] == 0
    assert cli("import", str(tmp_path / "pipe"), "--out", str(tmp_path / "w.safetensors"))[0] == 0
    assert all(torch.equal(v, load_file(str(tmp_path / "w.safetensors"))[k]) for k, v in model.state_dict().items())
    weights = str(tmp_path / "w.safetensors")  # a weights file: the VAE must be named
    assert cli("export", weights, str(tmp_path / "pipe2"), "--format", "diffusers", "--vae", str(vae_dir))[0] == 0
    code, err = cli("export", weights, str(tmp_path / "pipe3"), "--format", "diffusers")
    assert code == 2 and "pass vae=" in err and err.endswith("(--vae)\n")
    pixel = make_run(tmp_path / "pixel", perturbed(get_preset("DiT-T/2", in_channels=3)), DiffusionConfig(), "none")
    code, err = cli("export", str(pixel), str(tmp_path / "pixel-pipe"), "--format", "diffusers")
    assert code == 2 and err.count("\n") == 1 and "pixel-space models have no diffusers equivalent" in err


def cli(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, err.getvalue()
