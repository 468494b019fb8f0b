"""Loading weights (ditkit.model.weights): ditkit files, official checkpoints, config inference, strict errors."""

from __future__ import annotations

import argparse
import re

import pytest
import torch
from safetensors.torch import save_file

from ditkit.config import BLOCK_DESIGNS, get_preset
from ditkit.model.dit import DiT
from ditkit.model.weights import (
    infer_config,
    load_dit,
    load_strict,
    read_state_dict,
    resolve_weights_path,
    save_weights,
)


def _assert_same_weights(model, state_dict):
    ours = model.state_dict()
    assert set(ours) == set(state_dict)
    for key, value in state_dict.items():
        assert torch.equal(ours[key], value), key


def test_ditkit_safetensors_round_trip(tmp_path, make_model):
    config = get_preset("DiT-T/2", block="cross_attn", num_heads=4, learn_sigma=False)
    model = make_model(config)
    path = save_weights(model.state_dict(), config, tmp_path / "sub" / "weights.safetensors")
    assert path.is_file() and not path.with_name("weights.safetensors.tmp").exists()
    loaded = load_dit(path)
    assert loaded.config == config and not loaded.training
    _assert_same_weights(loaded, model.state_dict())
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 500]), torch.tensor([2, 3])
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), model(x, t, y))


def test_safetensors_without_metadata_is_inferred(tmp_path, make_model, tiny_config):
    model = make_model(tiny_config)
    path = tmp_path / "plain.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = load_dit(path, num_heads=2)
    assert loaded.config == tiny_config


def test_official_plain_pt(fixtures_dir, reference_configs):
    path = fixtures_dir / "tiny_p2.official.pt"
    model = load_dit(path, num_heads=4)
    assert model.config == reference_configs["tiny_p2"]
    _assert_same_weights(model, torch.load(path, weights_only=True))


def test_official_nodrop_needs_class_count(fixtures_dir, reference_configs):
    """7 label rows, no dropout: the default reading (6 classes + a null row) is overridden by num_classes."""
    path = fixtures_dir / "tiny_p4_nosigma_nodrop.official.pt"
    model = load_dit(path, num_heads=3, num_classes=7)
    assert model.config == reference_configs["tiny_p4_nosigma_nodrop"]


def test_train_checkpoint_dict_takes_ema(tmp_path, make_model, tiny_config):
    """An official train.py checkpoint: {"model", "ema", "opt", "args": argparse.Namespace}."""
    model, ema = make_model(tiny_config, seed=0), make_model(tiny_config, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randn(1, 4, 8, 8), torch.tensor([3]), torch.tensor([1])).sum().backward()
    opt.step()
    args = argparse.Namespace(model="DiT-T/2", image_size=64, num_classes=10, global_batch_size=256)
    path = tmp_path / "0001000.pt"
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "args": args}, path)
    loaded = load_dit(path, num_heads=2)
    _assert_same_weights(loaded, ema.state_dict())


def test_wrapper_prefixes_are_stripped(tmp_path, make_model, tiny_config):
    state = make_model(tiny_config).state_dict()
    path = tmp_path / "ddp.pt"
    torch.save({f"module._orig_mod.{k}": v for k, v in state.items()}, path)
    _assert_same_weights(load_dit(path, num_heads=2), state)


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


@pytest.mark.parametrize("obj", [{"weights": _Payload()}, {"model": {"w": torch.zeros(1)}, "hook": print}])
def test_arbitrary_pickle_refused(obj, tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save(obj, path)
    with pytest.raises(ValueError, match="ditkit loads only plain tensors"):
        load_dit(path)
    assert "unpickled" not in capsys.readouterr().out


def test_non_tensor_dict_refused(tmp_path):
    path = tmp_path / "numbers.pt"
    torch.save({"a": 1}, path)
    with pytest.raises(ValueError, match="is not a state dict of tensors"):
        read_state_dict(path)


@pytest.mark.parametrize("block", BLOCK_DESIGNS)
@pytest.mark.parametrize(("learn_sigma", "num_classes", "dropout"), [(True, 10, 0.1), (False, 0, 0.0)])
def test_infer_config_each_design(block, learn_sigma, num_classes, dropout):
    config = get_preset(
        "DiT-T/4",
        block=block,
        depth=3,
        hidden_size=48,
        num_heads=3,
        input_size=16,
        learn_sigma=learn_sigma,
        num_classes=num_classes,
        class_dropout_prob=dropout,
        in_channels=3,
    )
    inferred = infer_config(DiT(config).state_dict(), num_heads=3)
    assert inferred == config


def test_infer_config_paper_heads_and_mlp_ratio():
    with torch.device("meta"):
        state = DiT(get_preset("DiT-B/4", input_size=64, mlp_ratio=2.0)).state_dict()
    inferred = infer_config(state)
    assert (inferred.num_heads, inferred.mlp_ratio, inferred.input_size, inferred.patch_size) == (
        12,
        2.0,
        64,
        4,
    )


def test_infer_config_errors():
    with pytest.raises(ValueError, match="not a DiT state dict"):
        infer_config({"weight": torch.zeros(2)})
    state = DiT(get_preset("DiT-T/2", hidden_size=36, num_heads=2)).state_dict()
    with pytest.raises(ValueError, match=re.escape("cannot infer the head count of width 36: pass num_heads=")):
        infer_config(state)


def test_wrong_resolution_names_keys_and_cause(fixtures_dir):
    with pytest.raises(ValueError) as err:
        load_dit(fixtures_dir / "tiny_p2.official.pt", num_heads=4, input_size=16)
    message = str(err.value)
    assert "pos_embed is (1, 16, 64) in the file but (1, 64, 64) in the model" in message
    assert "another resolution" in message


def test_wrong_class_count_names_keys_and_cause(fixtures_dir):
    with pytest.raises(ValueError) as err:
        load_dit(fixtures_dir / "tiny_p2.official.pt", num_heads=4, num_classes=1000)
    message = str(err.value)
    assert "y_embedder.embedding_table.weight is (11, 64) in the file but (1000, 64) in the model" in message
    assert "the class count differs" in message


def test_stored_config_override_mismatch(tmp_path, tiny_config):
    path = save_weights(DiT(tiny_config).state_dict(), tiny_config, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="learned sigma differs"):
        load_dit(path, learn_sigma=False)


def test_load_strict_hints():
    model = DiT(get_preset("DiT-T/2"))
    deeper = DiT(get_preset("DiT-T/2", depth=3)).state_dict()
    with pytest.raises(
        ValueError, match=r"unexpected keys \['blocks.2.*the depth differs \(3 blocks in the file, 2 in"
    ) as err:
        load_strict(model, deeper)
    assert "block design" not in str(err.value)
    for design in ("adaln", "cross_attn", "in_context"):
        other_design = DiT(get_preset("DiT-T/2", block=design)).state_dict()
        with pytest.raises(ValueError, match="the block design differs") as err:
            load_strict(model, other_design)
        assert "depth" not in str(err.value)
    whole = {f"ema.{k}": v for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="missing keys .*load its 'ema' weights$"):
        load_strict(model, whole)


def test_resolve_run_folder(tmp_path, tiny_config):
    ckpt = tmp_path / "run" / "checkpoints" / "0000100"
    ckpt.mkdir(parents=True)
    save_weights(DiT(tiny_config).state_dict(), tiny_config, ckpt / "ema.safetensors")
    (tmp_path / "run" / "checkpoints" / "latest").write_text("0000100\n")
    assert resolve_weights_path(tmp_path / "run") == ckpt / "ema.safetensors"
    assert load_dit(tmp_path / "run").config == tiny_config
    with pytest.raises(ValueError, match="no weights at"):
        resolve_weights_path(tmp_path / "missing.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no checkpoint"):
        resolve_weights_path(tmp_path / "empty")


def test_public_api_is_exported_from_the_package():
    import ditkit

    assert ditkit.load_dit is load_dit
    for name in ditkit.__all__:
        assert getattr(ditkit, name) is not None
    with pytest.raises(AttributeError):
        ditkit.no_such_thing  # noqa: B018


def test_weights_carry_the_training_diffusion(tmp_path):
    from ditkit.config import DiffusionConfig
    from ditkit.model.weights import read_diffusion_config

    model = DiT(get_preset("DiT-T/2", learn_sigma=False))
    trained = DiffusionConfig(learn_sigma=False, noise_schedule="cosine", predict_xstart=True)
    with_it = save_weights(model.state_dict(), model.config, tmp_path / "a.safetensors", trained)
    without = save_weights(model.state_dict(), model.config, tmp_path / "b.safetensors")
    assert read_diffusion_config(with_it, model.config) == trained
    assert read_diffusion_config(without, model.config) == DiffusionConfig(learn_sigma=False)  # the paper's
