"""Provenance (ditkit.data.provenance): stores and runs record their autoencoder by absolute path and
fingerprint, and sampling decodes with that one, or says in one line why it cannot."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ditkit.data.datasets import NpzDataset
from ditkit.data.latent_store import extract_latents, store_vae
from ditkit.data.provenance import VaeRecord, decoder_spec, vae_fingerprint
from ditkit.model.dit import DiT
from ditkit.runtime.errors import InputError
from ditkit.training import checkpoint
from ditkit.training.run import build_train_config, open_for_sampling

pytest.importorskip("diffusers")


@pytest.fixture()
def vae(tmp_path: Path) -> Path:
    from ditkit.data.autoencoder import make_tiny_vae

    return make_tiny_vae(tmp_path / "vae", in_channels=3)  # 4 latent channels, downsampling 2


def _store(tmp_path: Path, vae_spec: str) -> Path:
    from ditkit.data.autoencoder import load_vae

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.arange(8) % 4)
    encoder = load_vae(vae_spec)
    return extract_latents(NpzDataset(tmp_path / "d.npz", flip=False), encoder, tmp_path / "store", batch_size=4)


def test_a_record_is_an_absolute_path_and_a_fingerprint_of_config_and_weights(vae, tmp_path, monkeypatch):
    monkeypatch.chdir(vae.parent)
    record = VaeRecord.of("vae", scale=0.5)
    assert record.spec == str(vae.resolve()) and record.scale == 0.5 and len(record.sha256 or "") == 64
    copy = shutil.copytree(vae, tmp_path / "copy")
    assert vae_fingerprint(str(copy)) == record.sha256  # the same files elsewhere: the same autoencoder
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "scaling_factor": 0.3}))
    assert vae_fingerprint(str(copy)) != record.sha256
    assert vae_fingerprint("none") is None


def test_a_latent_store_records_its_autoencoder_from_any_folder(vae, tmp_path, monkeypatch):
    monkeypatch.chdir(vae.parent)
    store = _store(tmp_path, "vae")  # a relative path, as users type it
    record = store_vae(store)
    assert record.spec == str(vae.resolve()) and record.sha256 == vae_fingerprint(str(vae))
    assert record.scale is not None


def test_a_run_on_a_store_records_the_stores_autoencoder(vae, tmp_path):
    store = _store(tmp_path, str(vae))
    cfg = build_train_config(tmp_path / "run", data=str(store), preset="DiT-T/2")
    record = store_vae(store)
    assert (cfg.vae, cfg.vae_sha256, cfg.vae_scale) == (record.spec, record.sha256, record.scale)
    moved = shutil.copytree(vae, tmp_path / "moved")  # the same autoencoder, elsewhere: allowed, recorded
    assert build_train_config(tmp_path / "run", data=str(store), preset="DiT-T/2", vae=str(moved)).vae == str(moved)
    other = tmp_path / "other"
    shutil.copytree(vae, other)
    (other / "config.json").write_text((other / "config.json").read_text().replace("32", "16", 1))
    with pytest.raises(InputError, match="is not the autoencoder that made the latent store") as err:
        build_train_config(tmp_path / "run", data=str(store), preset="DiT-T/2", vae=str(other))
    assert err.value.setting == "vae"


def test_decoding_uses_the_recorded_autoencoder_and_refuses_a_moved_or_changed_one(vae, tmp_path, caplog):
    record = VaeRecord.of(str(vae), scale=0.25)
    assert decoder_spec(record, None, what="run") == (str(vae.resolve()), 0.25)
    copy = shutil.copytree(vae, tmp_path / "copy")
    with caplog.at_level(logging.WARNING):
        assert decoder_spec(record, str(copy), what="run") == (str(copy), 0.25)  # same files: same scale
    assert not caplog.records
    (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")
    with caplog.at_level(logging.WARNING):
        assert decoder_spec(record, str(copy), what="run") == (str(copy), None)  # another VAE: its own scale
    assert len(caplog.records) == 1 and "not the autoencoder it was trained with" in caplog.records[0].message
    with pytest.raises(InputError, match="changed since run was trained"):
        decoder_spec(VaeRecord(str(copy), record.sha256, 0.25), None, what="run")
    shutil.rmtree(copy)
    with pytest.raises(InputError, match="is not there any more; pass vae=DIR"):
        decoder_spec(VaeRecord(str(copy), record.sha256, 0.25), None, what="run")


def test_sampling_a_run_decodes_with_its_recorded_autoencoder_without_a_flag(vae, tmp_path, monkeypatch):
    store = _store(tmp_path, str(vae))
    cfg = build_train_config(tmp_path / "run", data=str(store), preset="DiT-T/2")
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict()))
    model = DiT(cfg.model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint.save(run_dir, step=1, model=model, ema=model, optimizer=opt, config=cfg.to_dict())
    monkeypatch.chdir(tmp_path.parent)  # from another folder
    opened = open_for_sampling(run_dir)
    assert opened.vae is not None and opened.vae.scale == cfg.vae_scale
    shutil.move(vae, tmp_path / "elsewhere")
    with pytest.raises(InputError, match="is not there any more"):
        open_for_sampling(run_dir)
    assert open_for_sampling(run_dir, vae=str(tmp_path / "elsewhere")).vae is not None  # the fix the error names
