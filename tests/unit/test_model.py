"""The DiT model (ditkit.model.dit): shapes, the official initialisation, embeddings, attention, manifests."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ditkit.config import BLOCK_DESIGNS, PRESETS, get_preset
from ditkit.model.dit import DiT, LabelEmbedder, num_parameters, sincos_pos_embed_2d, timestep_embedding
from numerics import OPS_BACKWARD, OPS_FORWARD, assert_fp32_close


def _inputs(config, n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, config.in_channels, config.input_size, config.input_size, generator=gen)
    t = torch.randint(0, 1000, (n,), generator=gen)
    y = torch.randint(0, config.num_classes, (n,), generator=gen) if config.num_classes else None
    return x, t, y


# Shapes.


@pytest.mark.parametrize("patch_size", [1, 2, 4, 8])
def test_forward_shape_each_patch_size(patch_size, make_model):
    config = get_preset("DiT-T/2", patch_size=patch_size, input_size=16)
    x, t, y = _inputs(config)
    out = make_model(config)(x, t, y)
    assert out.shape == (3, 8, 16, 16)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["DiT-T/2", "DiT-T/4", "DiT-Demo/4"])
def test_forward_shape_tiny_presets(name, make_model):
    config = get_preset(name)
    x, t, y = _inputs(config, n=2)
    out = make_model(config)(x, t, y)
    assert out.shape == (2, config.out_channels, config.input_size, config.input_size)


@pytest.mark.parametrize("learn_sigma", [True, False])
@pytest.mark.parametrize("block", BLOCK_DESIGNS)
def test_forward_shape_each_block_design(block, learn_sigma, make_model):
    config = get_preset("DiT-T/2", block=block, learn_sigma=learn_sigma)
    x, t, y = _inputs(config)
    out = make_model(config)(x, t, y)
    assert out.shape == (3, 8 if learn_sigma else 4, 8, 8)
    assert torch.isfinite(out).all() and out.abs().sum() > 0


@pytest.mark.parametrize("block", BLOCK_DESIGNS)
def test_unconditional_model(block, make_model):
    config = get_preset("DiT-T/2", block=block, num_classes=0)
    model = make_model(config)
    assert model.y_embedder is None
    x, t, _ = _inputs(config)
    assert model(x, t).shape == (3, 8, 8, 8)
    assert model(x, t, None).shape == (3, 8, 8, 8)


def test_conditional_model_needs_labels(tiny_model, tiny_config):
    x, t, _ = _inputs(tiny_config)
    with pytest.raises(ValueError, match="class-conditional"):
        tiny_model(x, t)


def test_one_channel_pixel_model(make_model):
    config = get_preset("DiT-T/4", in_channels=1, learn_sigma=False, input_size=32)
    x, t, y = _inputs(config, n=2)
    assert make_model(config)(x, t, y).shape == (2, 1, 32, 32)


# The official initialisation.


@pytest.mark.parametrize("block", BLOCK_DESIGNS)
def test_initial_output_is_exactly_zero(block):
    config = get_preset("DiT-T/2", block=block)
    x, t, y = _inputs(config)
    out = DiT(config).eval()(x, t, y)
    assert torch.equal(out, torch.zeros_like(out))


def test_adaln_zero_blocks_start_as_identity(tiny_config):
    model = DiT(tiny_config).eval()
    x, t, y = _inputs(tiny_config)
    tokens = model.x_embedder(x) + model.pos_embed
    c, _, _ = model.condition(t, y)
    for block in model.blocks:
        assert torch.equal(block(tokens, c), tokens)


def test_init_zero_pattern_matches_official(load_fixture, reference_configs):
    """Exactly the tensors the official initialize_weights zeroes are zero here (structure, not values)."""
    official = load_fixture("tiny_p2.init_state.safetensors")
    ours = DiT(reference_configs["tiny_p2"]).state_dict()
    assert set(ours) == set(official)
    for key, value in official.items():
        assert ours[key].shape == value.shape, key
        assert bool((ours[key] == 0).all()) == bool((value == 0).all()), key


# Patches and embeddings.


@pytest.mark.parametrize("patch_size", [1, 2, 4, 8])
def test_patchify_unpatchify_round_trip(patch_size):
    config = get_preset("DiT-T/2", patch_size=patch_size, input_size=16, in_channels=3, learn_sigma=False)
    model = DiT(config)
    x = torch.randn(2, 3, 16, 16)
    tokens = model.patchify(x)
    assert tokens.shape == (2, (16 // patch_size) ** 2, patch_size * patch_size * 3)
    assert torch.equal(model.unpatchify(tokens), x)


def test_patchify_layout():
    """Tokens run row-major over the grid; features are ordered (patch row, patch column, channel)."""
    model = DiT(get_preset("DiT-T/2", learn_sigma=False))
    x = torch.randn(1, 4, 8, 8)
    tokens = model.patchify(x)
    # Token 1 is the patch in grid row 0, column 1: pixels rows 0..1, columns 2..3.
    assert torch.equal(tokens[0, 1], x[0, :, 0:2, 2:4].permute(1, 2, 0).reshape(-1))
    # Token 4 starts the second grid row.
    assert torch.equal(tokens[0, 4], x[0, :, 2:4, 0:2].permute(1, 2, 0).reshape(-1))


def test_timestep_embedding_formula():
    t = torch.tensor([0, 1, 10, 500, 999])
    emb = timestep_embedding(t)
    assert emb.shape == (5, 256) and emb.dtype == torch.float32
    k = torch.arange(128, dtype=torch.float64)
    freqs = 10000.0 ** (-k / 128)
    args = t.double()[:, None] * freqs[None]
    expected = torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # cos first (the GLIDE / DiT order)
    torch.testing.assert_close(emb.double(), expected, rtol=0, atol=1e-4)  # float32 args at t = 999
    assert torch.equal(emb[0], torch.cat([torch.ones(128), torch.zeros(128)]))
    torch.testing.assert_close(emb[1, :3].double(), torch.cos(freqs[:3]))


def test_timestep_embedding_odd_dim_is_zero_padded():
    emb = timestep_embedding(torch.tensor([3, 7]), dim=7)
    assert emb.shape == (2, 7) and torch.equal(emb[:, -1], torch.zeros(2))


def test_pos_embed_known_values():
    dim, grid = 16, 4
    pos = sincos_pos_embed_2d(dim, grid)
    assert pos.shape == (16, 16) and pos.dtype.name == "float64"
    quarter = dim // 4
    # Position (0, 0): sin 0 = 0, cos 0 = 1 on both axes.
    assert (pos[0] == [0.0] * quarter + [1.0] * quarter + [0.0] * quarter + [1.0] * quarter).all()
    # Token 1 = (row 0, column 1): the first half encodes the column, the second the row.
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    expected = torch.cat([torch.sin(omega), torch.cos(omega), torch.zeros(quarter), torch.ones(quarter)])
    torch.testing.assert_close(torch.from_numpy(pos[1]), expected)
    # Token `grid` = (row 1, column 0).
    torch.testing.assert_close(torch.from_numpy(pos[grid]), expected.roll(dim // 2))


@pytest.mark.parametrize("name", ["tiny_p2", "tiny_p4_nosigma_nodrop"])
def test_pos_embed_equals_official(name, load_fixture, reference_configs):
    official = load_fixture(f"{name}.init_state.safetensors")["pos_embed"]
    model = DiT(reference_configs[name])
    torch.testing.assert_close(model.pos_embed, official, rtol=0, atol=0)
    assert not model.pos_embed.requires_grad
    assert "pos_embed" in model.state_dict() and "pos_embed" not in dict(model.named_parameters())


# Labels.


def test_label_embedder_never_drops_at_random():
    """Label dropout is the training step's (drawn with the step's numbers); `drop` is the helper it uses."""
    embedder = LabelEmbedder(num_classes=10, hidden_size=8, dropout_prob=0.5)
    labels = torch.arange(1000) % 10
    torch.manual_seed(0)
    dropped = embedder.drop(labels)
    assert 400 < int((dropped == 10).sum()) < 600  # p = 0.5
    assert torch.equal(dropped[dropped != 10], labels[dropped != 10])
    table = embedder.embedding_table(labels)
    assert torch.equal(embedder(labels, train=False), table)
    assert torch.equal(embedder(labels, train=True), table)


def test_force_drop_ids():
    embedder = LabelEmbedder(num_classes=10, hidden_size=8, dropout_prob=0.1)
    labels = torch.tensor([1, 2, 3, 4])
    force = torch.tensor([1, 0, 1, 0])
    expected = embedder.embedding_table(torch.tensor([10, 2, 10, 4]))
    assert torch.equal(embedder(labels, train=False, force_drop_ids=force), expected)
    assert torch.equal(embedder(labels, train=True, force_drop_ids=force), expected)


def test_no_dropout_without_null_class():
    embedder = LabelEmbedder(num_classes=10, hidden_size=8, dropout_prob=0.0)
    labels = torch.arange(10)
    assert torch.equal(embedder(labels, train=True), embedder.embedding_table(labels))


def test_soft_labels_mix_table_rows():
    embedder = LabelEmbedder(num_classes=10, hidden_size=8, dropout_prob=0.1)
    one_hot = torch.nn.functional.one_hot(torch.tensor([2, 10]), 11).float()
    torch.testing.assert_close(embedder(one_hot, train=True), embedder.embedding_table(torch.tensor([2, 10])))
    mix = torch.zeros(1, 11)
    mix[0, 3], mix[0, 7] = 0.25, 0.75
    table = embedder.embedding_table.weight
    torch.testing.assert_close(embedder(mix, train=False)[0], 0.25 * table[3] + 0.75 * table[7])


@pytest.mark.parametrize(("dropout", "rows"), [(0.1, 11), (0.0, 10)])
def test_null_class_row_count(dropout, rows):
    model = DiT(get_preset("DiT-T/2", class_dropout_prob=dropout))
    assert model.y_embedder.embedding_table.weight.shape == (rows, 32)


def test_eval_forward_ignores_rng(tiny_model, tiny_config):
    x, t, y = _inputs(tiny_config)
    torch.manual_seed(1)
    first = tiny_model(x, t, y)
    torch.manual_seed(2)
    assert torch.equal(tiny_model(x, t, y), first)


# Memory and attention variants.


@pytest.mark.parametrize("block", BLOCK_DESIGNS)
def test_gradient_checkpointing_same_output_and_grads(block, make_model):
    config = get_preset("DiT-T/2", block=block, class_dropout_prob=0.0)
    x, t, y = _inputs(config)
    model = make_model(config).train()
    calls = []
    for b in model.blocks:  # hooks on attn: non-reentrant recomputation stops early, before a block's end
        b.attn.register_forward_hook(lambda *args: calls.append(1))

    def run(checkpointing):
        model.zero_grad()
        model.grad_checkpointing = checkpointing
        out = model(x, t, y)
        out.square().mean().backward()
        return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}

    out_plain, grads_plain = run(False)
    assert len(calls) == config.depth
    out_ckpt, grads_ckpt = run(True)
    assert len(calls) == 3 * config.depth  # forward, then recomputed in backward
    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=0)
    for key, grad in grads_plain.items():
        assert_fp32_close(grads_ckpt[key], grad, ops=OPS_BACKWARD, msg=key)


@pytest.mark.parametrize("block", BLOCK_DESIGNS)
def test_explicit_attention_matches_sdpa(block, make_model):
    config = get_preset("DiT-T/2", block=block)
    model = make_model(config, perturb=0.3)
    x, t, y = _inputs(config)
    fused = model(x, t, y)
    model.set_explicit_attention(True)
    explicit = model(x, t, y)
    assert_fp32_close(explicit, fused, ops=OPS_FORWARD)


# Presets and published checkpoints.


def test_all_presets_build_on_meta():
    for name, config in PRESETS.items():
        with torch.device("meta"):
            model = DiT(config)
        assert model.pos_embed.is_meta, name
        assert len(model.blocks) == config.depth
        assert num_parameters(model) > num_parameters(model, include_buffers=False)


@pytest.mark.parametrize(("manifest", "input_size"), [("DiT-XL-2-256x256", 32), ("DiT-XL-2-512x512", 64)])
def test_official_manifest_loads_strictly(manifest, input_size, fixtures_dir):
    shapes = json.loads((fixtures_dir / f"{manifest}.keys.json").read_text())
    assert len(shapes) == 292
    with torch.device("meta"):
        model = DiT(get_preset("DiT-XL/2", input_size=input_size))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: list(v) for k, v in shapes.items()}
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    result = model.load_state_dict(state, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert math.isqrt(shapes["pos_embed"][1]) * 2 == input_size
