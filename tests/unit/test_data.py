"""Datasets (ditkit.data.datasets), the deterministic resumable loader (ditkit.data.loader) and the latent store."""

import json
import pickle
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ditkit.config import VAE_LATENT_SCALE
from ditkit.data.datasets import (
    DigitsDataset,
    EmbeddedMNIST,
    ImageFolderDataset,
    NpzDataset,
    center_crop_arr,
    frame_digits,
    load_mnist_arrays,
)
from ditkit.data.latent_store import LatentStore, extract_latents, store_progress
from ditkit.data.loader import build_loader, check_num_classes, open_dataset, steps_per_epoch

N_ITEMS, SIZE = 20, 16


def _rng_image(seed: int, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4}.get(mode, 1)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode)


def _take(loader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(loader) for _ in range(n)]


def _assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        assert torch.equal(ya, yb)


@pytest.fixture
def npz_path(tmp_path: Path) -> Path:
    """20 random 16x16 RGB images whose label is their index (so batches show which items they hold)."""
    images = np.random.default_rng(0).integers(0, 256, (N_ITEMS, SIZE, SIZE, 3), dtype=np.uint8)
    path = tmp_path / "toy.npz"
    np.savez(path, images=images, labels=np.arange(N_ITEMS))
    return path


def fake_encoder(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic stand-in for a VAE: mean = 3 x 2x2 average pool (flip-equivariant), std = 0.1."""
    mean = 3.0 * F.avg_pool2d(x, 2)
    return mean, torch.full_like(mean, 0.1)


@pytest.fixture
def fake_store(tmp_path: Path, npz_path: Path) -> Path:
    return extract_latents(NpzDataset(npz_path, flip=False), fake_encoder, tmp_path / "store", batch_size=8)


# Image folders.


def _write_messy_folder(root: Path) -> None:
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    _rng_image(1, (40, 30)).save(root / "a" / "rgb.png")
    _rng_image(2, (20, 24), "L").save(root / "a" / "gray.png")
    _rng_image(3, (30, 30)).convert("P").save(root / "a" / "palette.png")
    (root / "a" / "corrupt.jpg").write_bytes(b"this is not an image")
    (root / "a" / "notes.txt").write_text("ignored: not an image extension")
    palette_alpha = _rng_image(4, (24, 24)).convert("P")
    palette_alpha.save(root / "b" / "palette_alpha.png", transparency=0)
    _rng_image(5, (33, 21)).convert("CMYK").save(root / "b" / "cmyk.jpg")
    _rng_image(6, (18, 18), "RGBA").save(root / "b" / "rgba.png")
    _rng_image(7, (5, 5)).save(root / "b" / "tiny.png")  # smaller than the crop: upscaled
    _rng_image(8, (64, 64)).save(root / "b" / "big.png")
    data = (root / "b" / "big.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "b" / "big.png").unlink()


def test_image_folder_converts_modes_and_skips_bad_files(tmp_path: Path):
    _write_messy_folder(tmp_path)
    ds = ImageFolderDataset(tmp_path, SIZE, flip=False)
    assert ds.classes == ["a", "b"] and ds.num_classes == 2 and len(ds) == 9 and ds.item_shape == (3, SIZE, SIZE)
    names = [p.name for p, _ in ds.samples]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. PIL's palette-transparency warning must not fire
        items = [ds.get(i) for i in range(len(ds))]
    for x, y in items:
        assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32 and y in (0, 1)
        assert -1.0 <= x.min() and x.max() <= 1.0
    assert ds.num_skipped == 2
    # A bad file yields the next good one (truncated.png is last: it wraps around past corrupt.jpg).
    corrupt, gray, truncated = (
        names.index("corrupt.jpg"),
        names.index("gray.png"),
        names.index("truncated.png"),
    )
    torch.testing.assert_close(items[corrupt][0], items[gray][0], rtol=0, atol=0)
    torch.testing.assert_close(items[truncated][0], items[gray][0], rtol=0, atol=0)
    assert ImageFolderDataset(tmp_path, SIZE, flip=False).scan() == 2


def test_image_folder_pixels_and_flip(tmp_path: Path):
    (tmp_path / "only").mkdir()
    image = _rng_image(0, (50, 37))
    image.save(tmp_path / "only" / "x.png")
    expected = torch.from_numpy(center_crop_arr(image, SIZE)).permute(2, 0, 1).float() / 127.5 - 1
    plain = ImageFolderDataset(tmp_path, SIZE, flip=False)
    torch.testing.assert_close(plain.get(0)[0], expected)
    flipping = ImageFolderDataset(tmp_path, SIZE, flip=True)
    outs = [flipping.get(0, torch.Generator().manual_seed(s))[0] for s in range(16)]
    mirrored = [torch.equal(x, plain.get(0)[0].flip(-1)) for x in outs]
    assert all(m or torch.equal(x, plain.get(0)[0]) for m, x in zip(mirrored, outs, strict=True))
    assert 0 < sum(mirrored) < len(outs)


def test_image_folder_errors_and_unlabelled(tmp_path: Path):
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing", SIZE)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no images"):
        ImageFolderDataset(tmp_path / "empty", SIZE)
    (tmp_path / "bad" / "cls").mkdir(parents=True)
    (tmp_path / "bad" / "cls" / "x.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match="no readable image"):
        ImageFolderDataset(tmp_path / "bad", SIZE).get(0)
    (tmp_path / "flat").mkdir()
    _rng_image(0, (20, 20)).save(tmp_path / "flat" / "x.png")
    flat = ImageFolderDataset(tmp_path / "flat", SIZE)
    assert flat.num_classes == 0 and flat.get(0)[1] == 0


# Arrays.


def test_npz_dataset_layouts(tmp_path: Path, npz_path: Path):
    ds = NpzDataset(npz_path, flip=False)
    assert len(ds) == N_ITEMS and ds.num_classes == N_ITEMS and ds.item_shape == (3, SIZE, SIZE)
    x, y = ds.get(3)
    assert y == 3 and -1 <= x.min() and x.max() <= 1
    gray = np.random.default_rng(1).integers(0, 256, (5, 20, 24), dtype=np.uint8)
    np.savez(tmp_path / "gray.npz", gray)  # arr_0 only: unlabelled
    ds = NpzDataset(tmp_path / "gray.npz", image_size=8)
    assert ds.num_classes == 0 and ds.item_shape == (1, 8, 8) and ds.get(0)[0].shape == (1, 8, 8)
    np.savez(tmp_path / "float.npz", images=gray.astype(np.float32))
    with pytest.raises(ValueError, match="must be uint8"):
        NpzDataset(tmp_path / "float.npz")


def test_mnist_split_is_fixed_and_disjoint():
    all_images, all_labels = load_mnist_arrays("all")
    train_images, train_labels = load_mnist_arrays("train")
    test_images, test_labels = load_mnist_arrays("test")
    assert all_images.shape == (10000, 28, 28) and all_images.dtype == np.uint8 and all_labels.dtype == np.int64
    assert len(train_images) == 9000 and len(test_images) == 1000
    with np.load(resources.files("ditkit").joinpath("assets/mnist10k.npz").open("rb")) as f:
        test_indices = f["test_indices"].astype(np.int64)
    assert len(np.unique(test_indices)) == 1000
    np.testing.assert_array_equal(test_images, all_images[test_indices])
    np.testing.assert_array_equal(np.delete(all_labels, test_indices), train_labels)
    counts = np.bincount(test_labels, minlength=10)
    assert counts.min() >= 70 and counts.max() <= 135  # a random 10% of each class, roughly
    np.testing.assert_array_equal(load_mnist_arrays("test")[0], test_images)
    with pytest.raises(ValueError, match="split must be one of"):
        load_mnist_arrays("val")  # type: ignore[arg-type]


def test_mnist_dataset_pads_and_never_flips():
    ds = EmbeddedMNIST("test")
    assert len(ds) == 1000 and ds.item_shape == (1, 32, 32) and ds.num_classes == 10 and not ds.flip
    draws = [ds.get(7, torch.Generator().manual_seed(s))[0] for s in range(8)]
    assert all(torch.equal(d, draws[0]) for d in draws)
    x = draws[0]
    assert x[:, :2].eq(-1).all() and x[:, :, -2:].eq(-1).all() and x.max() <= 1
    raw = EmbeddedMNIST("test", image_size=28, pad=False).get(7)[0]
    torch.testing.assert_close(raw, x[:, 2:-2, 2:-2])
    assert EmbeddedMNIST("test", image_size=64).get(0)[0].shape == (1, 64, 64)


def test_digits_dataset():
    pytest.importorskip("sklearn")
    ds = DigitsDataset(image_size=16)
    x, y = ds.get(0)
    assert len(ds) == 1797 and ds.num_classes == 10 and x.shape == (1, 16, 16) and 0 <= y < 10
    assert -1 <= ds.images.min() and ds.images.max() <= 1


def test_check_num_classes_and_open_dataset(tmp_path: Path, npz_path: Path, fake_store: Path):
    mnist = open_dataset(None)
    assert isinstance(mnist, EmbeddedMNIST) and len(mnist) == 9000
    check_num_classes(mnist, 10)
    check_num_classes(mnist, 0)  # unconditional models take any data
    with pytest.raises(ValueError, match="dataset has 10 classes but the model has 1000; pass num_classes=10"):
        check_num_classes(mnist, 1000)
    assert isinstance(open_dataset("mnist:test", 28), EmbeddedMNIST)
    assert isinstance(open_dataset(str(npz_path), flip=False), NpzDataset)
    store = open_dataset(str(fake_store))
    assert isinstance(store, LatentStore) and store.item_shape == (3, 8, 8)
    with pytest.raises(ValueError, match="pass image_size=16"):
        open_dataset(str(fake_store), image_size=32)
    (tmp_path / "imgs" / "c").mkdir(parents=True)
    _rng_image(0, (20, 20)).save(tmp_path / "imgs" / "c" / "x.png")
    assert isinstance(open_dataset(str(tmp_path / "imgs"), 16), ImageFolderDataset)
    with pytest.raises(ValueError, match="needs an image size"):
        open_dataset(str(tmp_path / "imgs"))
    with pytest.raises(ValueError, match="not found; pass 'mnist'"):
        open_dataset(str(tmp_path / "nope"))
    unlabelled = NpzDataset(npz_path)
    unlabelled.num_classes = 0
    with pytest.raises(ValueError, match="unlabelled; pass num_classes=0"):
        check_num_classes(unlabelled, 10)


# Loader.


@pytest.mark.parametrize("kind", ["pixels", "latents"])
def test_loader_is_deterministic_and_resumes_exactly(kind: str, npz_path: Path, fake_store: Path):
    ds = NpzDataset(npz_path, flip=True) if kind == "pixels" else LatentStore(fake_store, flip=True)
    full = _take(build_loader(ds, batch_size=8, seed=5), 7)  # 2 steps per epoch: covers epochs 0-3
    _assert_same_batches(full, _take(build_loader(ds, batch_size=8, seed=5), 7))
    _assert_same_batches(full[5:], _take(build_loader(ds, batch_size=8, seed=5, start_step=5), 2))
    other = _take(build_loader(ds, batch_size=8, seed=6), 1)
    assert not torch.equal(other[0][0], full[0][0])


def test_loader_splits_global_batches_across_ranks(fake_store: Path):
    ds = LatentStore(fake_store, flip=True)
    full = _take(build_loader(ds, batch_size=8, seed=1, start_step=3), 4)
    ranks = [_take(build_loader(ds, batch_size=8, rank=r, world_size=2, seed=1, start_step=3), 4) for r in (0, 1)]
    merged = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(*ranks, strict=True)]
    assert ranks[0][0][0].shape == (4, 3, 8, 8)
    _assert_same_batches(full, merged)


def test_loader_epochs_are_permutations_with_fresh_augmentation(fake_store: Path):
    ds = LatentStore(fake_store, flip=True)
    per_epoch = steps_per_epoch(len(ds), 4)
    batches = _take(build_loader(ds, batch_size=4, seed=0), 2 * per_epoch)
    epochs = [batches[:per_epoch], batches[per_epoch:]]
    labels = [torch.cat([y for _, y in epoch]) for epoch in epochs]
    assert sorted(labels[0].tolist()) == list(range(N_ITEMS)) == sorted(labels[1].tolist())
    assert not torch.equal(labels[0], labels[1])
    x = [torch.cat([b[0] for b in epoch])[labels_e.argsort()] for epoch, labels_e in zip(epochs, labels, strict=True)]
    assert not torch.allclose(x[0], x[1])  # same items, new posterior draws (and flips) each epoch


def test_loader_workers_match_main_process_and_skip_without_replay(npz_path: Path):
    ds = NpzDataset(npz_path, flip=True)
    main = _take(build_loader(ds, batch_size=4, seed=2, start_step=7), 3)
    _assert_same_batches(main, _take(build_loader(ds, batch_size=4, seed=2, start_step=7, num_workers=2), 3))

    calls = []
    original_get = ds.get

    def counting_get(index, generator=None):
        calls.append(index)
        return original_get(index, generator)

    ds.get = counting_get  # type: ignore[method-assign]
    next(build_loader(ds, batch_size=4, seed=2, start_step=10**6))
    assert len(calls) == 4  # one batch fetched: earlier steps are skipped, not replayed


def test_loader_errors(npz_path: Path):
    ds = NpzDataset(npz_path)
    with pytest.raises(ValueError, match="multiple of the world size 3"):
        build_loader(ds, batch_size=8, world_size=3)
    with pytest.raises(ValueError, match="fewer than the global batch size 32"):
        build_loader(ds, batch_size=32)


# Latent store.


def test_store_draws_fresh_posterior_samples_and_flips(fake_store: Path):
    meta = json.loads((fake_store / "meta.json").read_text())
    assert meta["count"] == N_ITEMS and meta["latent_shape"] == [3, 8, 8] and meta["scale"] == VAE_LATENT_SCALE
    assert meta["image_size"] == SIZE and meta["dtype"] == "float16" and meta["mirror"] is True
    store = LatentStore(fake_store, flip=False)
    mean, _ = store.moments(3)
    expected_mean, _ = fake_encoder(NpzDataset(fake_store.parent / "toy.npz", flip=False).get(3)[0][None])
    torch.testing.assert_close(mean, expected_mean[0], atol=2e-2, rtol=1e-3)  # float16 storage
    draws = torch.stack([store.get(3, torch.Generator().manual_seed(s))[0] for s in range(400)])
    torch.testing.assert_close(draws.mean(0), mean * VAE_LATENT_SCALE, atol=5e-3, rtol=0)
    torch.testing.assert_close(draws.std(0).mean(), torch.tensor(0.1 * VAE_LATENT_SCALE), atol=2e-3, rtol=0)

    flipping = LatentStore(fake_store, flip=True)
    mirror_mean, _ = flipping.moments(3, mirror=True)
    torch.testing.assert_close(mirror_mean, mean.flip(-1))  # avg-pool commutes with the flip
    views = []
    for s in range(32):
        z = flipping.get(3, torch.Generator().manual_seed(s))[0] / VAE_LATENT_SCALE
        views.append(bool((z - mirror_mean).norm() < (z - mean).norm()))
    assert 0 < sum(views) < len(views)
    clone = pickle.loads(pickle.dumps(flipping))  # what a spawned worker gets: paths, not the data
    assert len(pickle.dumps(flipping)) < 4096
    torch.testing.assert_close(
        clone.get(5, torch.Generator().manual_seed(1)), flipping.get(5, torch.Generator().manual_seed(1))
    )


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    pytest.importorskip("diffusers")
    from ditkit.data.autoencoder import load_vae, make_tiny_vae

    return load_vae(str(make_tiny_vae(tmp_path_factory.mktemp("vae") / "tiny")))


class _Interrupting:
    """Counts encoded images; raises once it has been called `fail_after` times (a simulated crash)."""

    def __init__(self, encoder, fail_after: int | None = None) -> None:
        self.encoder, self.fail_after, self.calls, self.images = encoder, fail_after, 0, 0

    def __call__(self, x: torch.Tensor):
        if self.calls == self.fail_after:
            raise RuntimeError("interrupted")
        self.calls, self.images = self.calls + 1, self.images + len(x)
        return self.encoder.encode_moments(x)


def _stored(root: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted(root.glob("*.npy"))}


def test_store_round_trip_sharded_by_two_ranks_with_tiny_vae(tmp_path: Path, npz_path: Path, tiny_vae):
    ds = NpzDataset(npz_path, flip=False)
    kwargs = {"batch_size": 3, "shard_size": 8, "vae_id": "tiny"}
    single = extract_latents(ds, tiny_vae, tmp_path / "single", num_workers=2, **kwargs)
    sharded = tmp_path / "sharded"
    extract_latents(ds, tiny_vae, sharded, rank=1, world_size=2, **kwargs)
    assert store_progress(sharded) == (8, N_ITEMS)  # rank 1 owns shard 1 of shards 0, 1, 2
    with pytest.raises(ValueError, match="incomplete: 8 of 20 latents written; rerun"):
        LatentStore(sharded)
    extract_latents(ds, tiny_vae, sharded, rank=0, world_size=2, **kwargs)
    assert store_progress(sharded) == (N_ITEMS, N_ITEMS)
    for (name, a), (_, b) in zip(_stored(single).items(), _stored(sharded).items(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)

    store = LatentStore(sharded)
    assert store.item_shape == (4, 8, 8) and store.vae == "tiny" and store.num_classes == N_ITEMS
    x = ds.get(13)[0][None]
    for mirror in (False, True):
        mean, std = tiny_vae.encode_moments(x.flip(-1) if mirror else x)
        got_mean, got_std = store.moments(13, mirror=mirror)
        torch.testing.assert_close(got_mean, mean[0], atol=1e-2, rtol=1e-3)
        torch.testing.assert_close(got_std, std[0], atol=1e-2, rtol=1e-3)
    assert store.labels.tolist() == list(range(N_ITEMS))


def test_store_resumes_an_interrupted_extraction(tmp_path: Path, npz_path: Path, tiny_vae):
    ds = NpzDataset(npz_path, flip=False)
    kwargs = {"batch_size": 3, "shard_size": 8, "vae_id": "tiny"}
    reference = extract_latents(ds, tiny_vae, tmp_path / "reference", **kwargs)
    crashing = _Interrupting(tiny_vae, fail_after=3)  # the shape probe, then 2 batches of 3
    with pytest.raises(RuntimeError, match="interrupted"):
        extract_latents(ds, crashing, tmp_path / "partial", **kwargs)
    assert store_progress(tmp_path / "partial") == (6, N_ITEMS)
    resuming = _Interrupting(tiny_vae)
    extract_latents(ds, resuming, tmp_path / "partial", **kwargs)
    assert resuming.images == 1 + 2 * (N_ITEMS - 6)  # probe + the missing images and their mirrors
    for (name, a), (_, b) in zip(_stored(reference).items(), _stored(tmp_path / "partial").items(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    with pytest.raises(ValueError, match="was made with shard_size=8, now 4"):
        extract_latents(ds, tiny_vae, tmp_path / "partial", batch_size=3, shard_size=4, vae_id="tiny")
    with pytest.raises(ValueError, match="un-flipped dataset"):
        extract_latents(NpzDataset(npz_path, flip=True), tiny_vae, tmp_path / "x", batch_size=3)


def test_mnist_framing_crops_and_pads_without_resampling():
    small, large = EmbeddedMNIST("test", 24), EmbeddedMNIST("test", 32)
    x24, y24 = small.get(5)
    x32, y32 = large.get(5)
    assert x24.shape == (1, 24, 24) and y24 == y32
    torch.testing.assert_close(x32[:, 4:28, 4:28], x24)  # the same pixels, 4 px less frame on each side
    assert float(x32[:, :4].max()) == -1.0  # the frame is background
    images = np.arange(2 * 6 * 6, dtype=np.uint8).reshape(2, 6, 6)
    np.testing.assert_array_equal(frame_digits(frame_digits(images, 10), 6), images)
    with pytest.raises(ValueError, match="even number"):
        frame_digits(images, 7)


# Worker counts that fit the machine.


def test_data_workers_are_capped_at_the_usable_cpus(npz_path: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    import logging

    from ditkit.data import latent_store

    # One usable CPU, as torch sees it too (it warns when num_workers exceeds os.sched_getaffinity).
    monkeypatch.setattr(latent_store.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(latent_store, "_CAPPED_WORKERS", set())
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG, "ditkit.data.latent_store"):
        warnings.simplefilter("always")
        loader = build_loader(NpzDataset(npz_path, flip=False), batch_size=8, num_workers=3)
        assert loader._num_workers == 1  # the DataLoader's iterator
        assert next(loader)[0].shape == (8, 3, SIZE, SIZE)
        del loader
        build_loader(NpzDataset(npz_path, flip=False), batch_size=8, num_workers=3)
        extract_latents(NpzDataset(npz_path, flip=False), fake_encoder, tmp_path / "store", batch_size=8, num_workers=3)
    assert not [w for w in caught if "worker" in str(w.message)], [str(w.message) for w in caught]
    reductions = [r for r in caplog.records if "workers, not 3" in r.getMessage()]
    assert len(reductions) == 1 and reductions[0].levelno == logging.DEBUG  # once, quietly: the default fits
