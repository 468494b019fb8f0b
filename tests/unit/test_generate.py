"""Seeded generation, resumable sharded .npz jobs, class parsing, latent walks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ditkit.cli.main import main
from ditkit.config import IMAGE_SAMPLING, SampleConfig, get_preset
from ditkit.data.class_names import imagenet_class_names, parse_classes
from ditkit.diffusion import samplers
from ditkit.model.dit import DiT
from ditkit.model.weights import save_weights
from ditkit.runtime import distributed
from ditkit.runtime.seeds import Stream, image_seed, mix_seed
from ditkit.sampling import generate as generate_module
from ditkit.sampling.generate import assemble_npz, generate, job_labels, sample_npz
from ditkit.sampling.walk import class_walk, noise_walk, save_walk, slerp


@pytest.fixture(scope="module")
def model() -> DiT:
    torch.manual_seed(0)
    m = DiT(get_preset("DiT-T/2", in_channels=1)).eval()
    for p in m.parameters():
        p.data.normal_(0, 0.05)
    return m


SETTINGS = SampleConfig(sampler="ddpm", num_steps=4, cfg_scale=2.0, batch_size=3, precision="fp32")


def test_imagenet_names_and_parsing() -> None:
    names = imagenet_class_names()
    assert len(names) == 1000 and names[207] == "golden retriever" and names[88] == "macaw"
    assert parse_classes("golden retriever, 3", 1000) == [207, 3]
    assert parse_classes(None, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="out of range"):
        parse_classes("12", 10)
    with pytest.raises(ValueError, match="unknown class 'cat'"):
        parse_classes("cat", 10)


def test_labels_balanced_and_seeds_distinct() -> None:
    assert np.bincount(job_labels(50, 10, 0, True)).tolist() == [5] * 10
    assert len({image_seed(0, i) for i in range(1000)}) == 1000
    assert image_seed(0, 5) != image_seed(1, 5)


def test_seed_rules_are_frozen() -> None:
    """Every sample and run made so far depends on these numbers: the streams and both hashes must not move."""
    assert [int(s) for s in Stream] == [0, 1, 2, 3]  # DATA_ORDER, DATA_ITEM (= TRAIN_STEP, JOB_LABELS), ...
    assert (Stream.TRAIN_STEP, Stream.TRAIN_GLOBAL, Stream.VAE_STEP, Stream.JOB_LABELS) == (1, 2, 3, 1)
    assert (image_seed(0, 0), image_seed(3, 7)) == (7896617691693857887, 4782766539338417736)
    assert (mix_seed(0, Stream.TRAIN_STEP, 5), mix_seed(2**40, 3, 1)) == (4699363248092381886, 4582100511894380653)
    expected = np.random.default_rng([4, 1]).permutation(np.arange(30) % 10)  # the labels rule before Stream
    np.testing.assert_array_equal(job_labels(30, 10, 4, True), expected)


def test_generate_does_not_depend_on_batching(model: DiT) -> None:
    labels, seeds = [1, 2, 3, 4], [10, 11, 12, 13]
    together = generate(model, labels, seeds, SETTINGS)
    alone = generate(
        model,
        labels[2:3],
        seeds[2:3],
        SampleConfig(sampler="ddpm", num_steps=4, cfg_scale=2.0, batch_size=1, precision="fp32"),
    )
    np.testing.assert_array_equal(together[2], alone[0])
    assert together.shape == (4, 8, 8, 1) and together.dtype == np.uint8


def test_npz_job_sharded_and_resumed_equals_one_process(model: DiT, tmp_path: Path) -> None:
    one = tmp_path / "one.npz"
    sample_npz(model, one, 11, SETTINGS, seed=3, chunk_size=4)
    assemble_npz(one)
    two = tmp_path / "two.npz"
    for rank in (1, 0):  # rank 1 first: it must not need rank 0's files
        sample_npz(model, two, 11, SETTINGS, seed=3, chunk_size=4, rank=rank, world_size=2)
    parts = two.with_name(two.name + ".parts")
    (parts / "chunk_000001.npz").unlink()  # a job killed before this chunk finished
    with pytest.raises(ValueError, match="chunk 1 .* missing"):
        assemble_npz(two)
    sample_npz(model, two, 11, SETTINGS, seed=3, chunk_size=4, rank=1, world_size=2)  # resume
    assemble_npz(two)
    with np.load(one) as a, np.load(two) as b:
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
        assert a["arr_0"].shape == (11, 8, 8, 1)
    with pytest.raises(ValueError, match="different sampling job"):
        sample_npz(model, two, 12, SETTINGS, seed=3, chunk_size=4)


def test_slerp_ends_and_norm() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 8, 8, generator=g), torch.randn(4, 8, 8, generator=g)
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b, atol=1e-5, rtol=1e-5)
    assert abs(slerp(a, b, 0.5).norm() / a.norm() - 1) < 0.1


def test_walk_frames(model: DiT) -> None:
    frames = noise_walk(model, 3, 0, 1, 3, SampleConfig(sampler="ddim", num_steps=3, cfg_scale=4.0, precision="fp32"))
    assert frames.shape == (3, 8, 8, 1)
    ends = generate(
        model,
        [3],
        [image_seed(0, 0)],
        SampleConfig(sampler="ddim", num_steps=3, cfg_scale=4.0, batch_size=1, precision="fp32"),
    )
    np.testing.assert_array_equal(frames[0], ends[0])  # frame 0 is the plain DDIM sample of seed A
    walk = class_walk(model, 1, 2, 0, 4, SampleConfig(sampler="ddim", num_steps=3, cfg_scale=4.0, precision="fp32"))
    first = generate(
        model,
        [1],
        [image_seed(0, 0)],
        SampleConfig(sampler="ddim", num_steps=3, cfg_scale=4.0, batch_size=1, precision="fp32"),
    )
    np.testing.assert_allclose(walk[0].astype(int), first[0].astype(int), atol=1)


def test_save_walk_writes_only_the_formats_asked_for(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    assert save_walk(frames, tmp_path, "w", formats=("gif",)) == {"gif": tmp_path / "w.gif"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.gif"]
    assert {"gif", "strip"} <= set(save_walk(frames, tmp_path, "all"))  # the default: every format (mp4 with ffmpeg)


# The `ditkit sample` seams: the requested device and guidance scale reach the tensors and the model.


@pytest.fixture
def weights(model: DiT, tmp_path: Path) -> Path:
    return save_weights(model.state_dict(), model.config, tmp_path / "tiny.safetensors")


def test_sample_npz_keeps_the_requested_device_on_a_gpu_machine(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ditkit sample --num N --device cpu` where CUDA is available: every tensor stays on the CPU (the job used
    to call distributed.init() again with "auto", which picks cuda:0 whatever --device said)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, as far as ditkit can tell
    asked, noise_devices, loop_devices = [], [], []
    real_init, real_noise, real_loop = distributed.init, generate_module.initial_noise, generate_module.sample_loop

    def init(device: str = "auto", *args, **kwargs):
        asked.append(device)
        return real_init(device, *args, **kwargs)

    def initial_noise(seeds, shape, device):
        noise_devices.append(torch.device(device))
        return real_noise(seeds, shape, device)

    def sample_loop(model, noise, labels, config, **kwargs):
        loop_devices.extend([noise.device, labels.device, next(model.parameters()).device])
        return real_loop(model, noise, labels, config, **kwargs)

    monkeypatch.setattr(distributed, "init", init)
    monkeypatch.setattr(generate_module, "initial_noise", initial_noise)
    monkeypatch.setattr(generate_module, "sample_loop", sample_loop)
    npz = tmp_path / "s.npz"
    args = ["sample", "--ckpt", str(weights), "--out", str(tmp_path), "--npz", str(npz), "--num", "3"]
    assert main([*args, "--steps", "2", "--device", "cpu"]) == 0
    assert asked == ["cpu"]  # initialised once, with the flag
    assert noise_devices and set(noise_devices) == {torch.device("cpu")}
    assert loop_devices and set(loop_devices) == {torch.device("cpu")}
    with np.load(npz) as data:
        assert data["arr_0"].shape == (3, 8, 8, 1)


@pytest.mark.parametrize(("flags", "scale"), [(["--cfg-scale", "2.5"], 2.5), ([], IMAGE_SAMPLING.cfg_scale)])
def test_cli_cfg_scale_reaches_the_guided_denoiser(
    flags: list[str], scale: float, weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ditkit sample --cfg-scale 2.5` guides the model at 2.5 (without the flag: IMAGE_SAMPLING's scale)."""
    seen = []
    real = samplers.guided_denoiser

    def guided_denoiser(model, labels, null_labels, cfg_scale, guided_channels):
        seen.append(cfg_scale)
        return real(model, labels, null_labels, cfg_scale, guided_channels)

    monkeypatch.setattr(samplers, "guided_denoiser", guided_denoiser)
    args = ["sample", "--ckpt", str(weights), "--out", str(tmp_path / "grid"), "--classes", "1,2", "--per-class", "1"]
    assert main([*args, "--steps", "2", "--device", "cpu", *flags]) == 0
    assert seen and set(seen) == {scale}
