"""Bad input for the newer commands (the table of test_bad_inputs.py, continued): train-vae, study, extract-latents,
serve, export/import, bench and sample's outputs. Each case: exit code 2, exactly one line on stderr naming the
file (the innermost one that is wrong) or the value, no traceback, no third-party notice, no advice to unpickle,
and every watched file and folder hash-equal before and after (a failed start changes nothing).
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F
from PIL import Image

from ditkit.config import get_preset
from ditkit.config.recipes import shipped_mnist_vae
from ditkit.data.autoencoder import make_tiny_vae
from ditkit.data.datasets import NpzDataset
from ditkit.data.latent_store import extract_latents
from ditkit.interop.diffusers_format import export_diffusers
from ditkit.model.dit import DiT
from ditkit.model.weights import save_weights

from .test_bad_inputs import MALWARE_FLAG, SENTINEL, _Malicious, _snapshot, _tiny_weights
from .test_cli import invoke

pytestmark = pytest.mark.xdist_group("bad_inputs_newer")  # one worker builds the shared inputs once

VAE_FLAGS = "--data digits --image-size 8 --batch-size 4 --device cpu"  # the settings of the fixture's VAE folder
TINY_RUN = "--data digits --preset DiT-T/2 --image-size 8 --vae none --global-batch-size 8 --device cpu"
RUN_FLAGS = f"{TINY_RUN} --max-steps 1 --sample-every 0 --eval-every 0 --precision fp32 --num-workers 0"


def _damaged(base: Path, root: Path, name: str, relative: str, data: bytes | None = None) -> Path:
    """A copy of folder `base` as root/name with `relative` truncated to a third (or replaced by `data`)."""
    folder = shutil.copytree(base, root / name)
    target = folder / relative
    target.write_bytes(data if data is not None else target.read_bytes()[: target.stat().st_size // 3])
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Read-only inputs: a train-vae folder and damaged copies, study specs, an RGB folder, a latent store with
    a truncated shard, a diffusers pipeline and damaged copies. Checked unchanged after every case."""
    root = tmp_path_factory.mktemp("newer_inputs")
    vae = root / "vae"
    invoke("train-vae", "--out", str(vae), *VAE_FLAGS.split(), "--max-steps", "1")
    run = root / "run"
    invoke("train", "--out", str(run), *RUN_FLAGS.split())
    config = get_preset("DiT-T/2", in_channels=4, input_size=4)  # a latent model: DiTPipeline decodes latents
    latent_weights = save_weights(DiT(config).state_dict(), config, root / "latent.safetensors")
    pipe = export_diffusers(latent_weights, root / "pipe", vae=str(make_tiny_vae(root / "tiny_vae")))
    evil = pickle.dumps({"state": _Malicious(str(root / MALWARE_FLAG))})
    files = {
        "vae": vae,
        "run": run,
        "w": _tiny_weights(root / "tiny.safetensors"),
        "vae_trunc_opt": _damaged(vae, root, "vae_trunc_opt", "training/optimizer.pt"),
        "vae_trunc_weights": _damaged(vae, root, "vae_trunc_weights", "diffusion_pytorch_model.safetensors"),
        "vae_evil_opt": _damaged(vae, root, "vae_evil_opt", "training/optimizer.pt", evil),
        "vae_bad_config": _damaged(vae, root, "vae_bad_config", "vae_train_config.json", b"garbage\n"),
        "vae_bad_state": _damaged(vae, root, "vae_bad_state", "training/state.json", b'{"step": "many"}'),
        "vae_bad_model_config": _damaged(vae, root, "vae_bad_model_config", "config.json", b"[1, 2]"),
        "pipe_bad_config": _damaged(pipe, root, "pipe_bad_config", "transformer/config.json", b"{broken"),
        "pipe_trunc_weights": _damaged(
            pipe, root, "pipe_trunc_weights", "transformer/diffusion_pytorch_model.safetensors"
        ),
    }
    specs = {
        "empty.toml": "",
        "list.json": "[1, 2, 3]",
        "preset.toml": 'name = "p"\n[[configs]]\nname = "a"\npreset = "DiT-Q/2"\n',
        "block.toml": 'name = "b"\n[[configs]]\nname = "a"\nmodel = {block = "mlp"}\n',
        "field.toml": 'name = "f"\n[[configs]]\nname = "a"\nmodel = {nope = 1}\n',
        "seeds.toml": 'name = "s"\nseeds = 3\n[[configs]]\nname = "a"\n',
        "lr.toml": 'name = "l"\n[[configs]]\nname = "a"\ntrain = {lr = -1.0}\n',
    }
    for name, text in specs.items():
        (root / name).write_text(text)
        files[name.replace(".", "_")] = root / name
    rgb = root / "rgb"
    for label in ("a", "b"):
        (rgb / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(rgb / label / f"{i}.png")
    files["rgb_dir"] = rgb
    np.savez(root / "ten.npz", images=np.zeros((10, 8, 8, 3), np.uint8), labels=np.arange(10))
    store = extract_latents(
        NpzDataset(root / "ten.npz", flip=False),
        lambda x: (F.avg_pool2d(x, 2), F.avg_pool2d(x, 2).abs() * 0 + 0.1),
        root / "store",
        batch_size=10,
    )
    files["trunc_store"] = _damaged(Path(store), root, "trunc_store", "mean-00000.npy")
    files["mnist_vae"] = shipped_mnist_vae() or root / "no_shipped_vae"
    return files


# (id, argv with {placeholders}, texts the one stderr line must contain)
CASES: list[tuple[str, str, tuple[str, ...]]] = [
    # train-vae: a resume that fails changes nothing, names the innermost file, never passes on torch's advice
    ("vae-truncated-optimizer", f"train-vae --out {{vae_trunc_opt}} {VAE_FLAGS} --max-steps 2", ("optimizer.pt",)),
    (
        "vae-truncated-weights",
        f"train-vae --out {{vae_trunc_weights}} {VAE_FLAGS} --max-steps 2",
        ("diffusion_pytorch_model.safetensors",),
    ),
    ("vae-malicious-optimizer", f"train-vae --out {{vae_evil_opt}} {VAE_FLAGS} --max-steps 2", ("optimizer.pt",)),
    ("vae-garbage-config", f"train-vae --out {{vae_bad_config}} {VAE_FLAGS}", ("vae_train_config.json",)),
    ("vae-garbage-state", f"train-vae --out {{vae_bad_state}} {VAE_FLAGS} --max-steps 2", ("state.json",)),
    ("vae-model-config", f"train-vae --out {{vae_bad_model_config}} {VAE_FLAGS} --max-steps 2", ("config.json",)),
    ("vae-other-seed", f"train-vae --out {{vae}} {VAE_FLAGS} --max-steps 2 --seed 3", ("seed", "--out")),
    ("vae-steps-huge", "train-vae --out {out}/v --max-steps 99999999999999999999999", ("max_steps", "1,000,000,000")),
    ("vae-steps-float", "train-vae --out {out}/v --max-steps 1e23", ("--max-steps", "1e23")),
    ("vae-batch-huge", "train-vae --out {out}/v --batch-size 2000000", ("batch_size", "1,048,576")),
    ("vae-seed-huge", "train-vae --out {out}/v --seed 9223372036854775808", ("seed",)),
    ("vae-out-proc", f"train-vae --out /proc/ditkit-vae {VAE_FLAGS}", ("/proc",)),
    # train: bounds a machine can hold, also for --dry-run
    ("train-steps-huge", "train --out {out}/r --max-steps 99999999999999999999999 --dry-run", ("max_steps",)),
    ("train-batch-huge", "train --out {out}/r --global-batch-size 9999999999 --dry-run", ("global_batch_size",)),
    ("train-size-huge", "train --out {out}/r --data digits --vae none --image-size 16384 --dry-run", ("8,192",)),
    ("train-truncated-shard", "train --out {out}/r --data {trunc_store} --dry-run", ("mean-00000.npy", "extract")),
    ("train-out-proc", f"train --out /proc/ditkit-run {RUN_FLAGS}", ("/proc",)),
    # study: the spec checked whole before any run or file
    ("study-empty-toml", "study {empty_toml} --out {out}/s", ("empty.toml", "name")),
    ("study-json-list", "study {list_json} --out {out}/s", ("list.json", "a list")),
    ("study-unknown-preset", "study {preset_toml} --out {out}/s", ("preset.toml", "'a'", "DiT-Q/2")),
    ("study-unknown-block", "study {block_toml} --out {out}/s", ("block.toml", "'mlp'")),
    ("study-unknown-model-field", "study {field_toml} --out {out}/s", ("field.toml", "nope")),
    ("study-seeds-not-a-list", "study {seeds_toml} --out {out}/s", ("seeds.toml", "wrong type")),
    ("study-negative-lr", "study {lr_toml} --out {out}/s", ("lr.toml", "lr")),
    ("study-out-proc", "study blocks --out /proc/ditkit-study", ("/proc",)),
    ("study-out-is-file", "study blocks --out {existing}", ("existing.out",)),
    # extract-latents: the data against the autoencoder, the output, before any VAE loads
    ("latents-rgb-gray-vae", "extract-latents --data {rgb_dir} --out {out}/s --vae {mnist_vae}", ("1-channel", "3")),
    (
        "latents-damaged-vae-config",
        "extract-latents --data digits --out {out}/s --vae {vae_bad_model_config}",
        ("vae_bad_model_config/config.json",),
    ),
    ("latents-out-proc", "extract-latents --data digits --out /proc/ditkit-s --vae {mnist_vae}", ("/proc",)),
    ("latents-out-is-file", "extract-latents --data digits --out {existing} --vae {mnist_vae}", ("existing.out",)),
    # serve
    ("serve-missing-ckpt", "serve --ckpt {out}/none.pt", ("none.pt",)),
    ("serve-port-range", "serve --ckpt {w} --port 70000", ("70000", "--port")),
    (
        "serve-truncated-weights",
        "serve --ckpt {pipe_trunc_weights}/transformer/diffusion_pytorch_model.safetensors",
        ("transformer/diffusion_pytorch_model.safetensors",),
    ),
    # export / import
    ("import-damaged-config", "import {pipe_bad_config} --out {out}/i.safetensors", ("transformer/config.json",)),
    ("import-truncated-weights", "import {pipe_trunc_weights} --out {out}/i.safetensors", ("pipe_trunc_weights",)),
    ("import-out-proc", "import {w} --out /proc/ditkit-i.safetensors", ("/proc",)),
    ("export-out-proc", "export {run} /proc/ditkit-e.safetensors", ("/proc",)),
    ("export-diffusers-exists", "export {run} {out} --format diffusers", ("target",)),
    # bench
    ("bench-steps-huge", "bench --preset DiT-T/2 --image-size 16 --what train --steps 99999999999", ("10,000",)),
    ("bench-batch-huge", "bench --preset DiT-T/2 --image-size 16 --what train --batch-size 9999999", ("batch_size",)),
    ("bench-out-proc", "bench --preset DiT-T/2 --image-size 16 --what train --out /proc/b.json", ("/proc",)),
    # sample: outputs checked before the work
    ("sample-out-proc", "sample --ckpt {w} --out /proc/ditkit-x --steps 2 --per-class 1", ("/proc",)),
    ("sample-npz-proc", "sample --ckpt {w} --out {out} --num 2 --steps 2 --npz /proc/x.npz", ("/proc",)),
]


def _run_case(argv: str, needles: tuple[str, ...], watched: list[Path], paths: dict[str, Path]) -> str:
    before = _snapshot(*watched)
    proc = invoke(*argv.format(**{k: str(v) for k, v in paths.items()}).split(), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    for banned in ("Traceback", "weights_only", "allow_pickle", "accelerate", "Warning"):
        assert banned not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert _snapshot(*watched) == before, "a file was changed or written"
    assert not any(p.name.startswith(".tmp-") for w in watched if w.is_dir() for p in w.rglob("*"))
    return lines[0]


def _target(tmp_path: Path) -> Path:
    target = tmp_path / "target"
    target.mkdir()
    (target / "sentinel.txt").write_bytes(SENTINEL)
    (target / "existing.out").write_bytes(SENTINEL)
    return target


@pytest.mark.parametrize(("argv", "needles"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_newer_commands_refuse_bad_input_in_one_line(
    inputs: dict[str, Path], tmp_path: Path, argv: str, needles: tuple[str, ...]
) -> None:
    if "{mnist_vae}" in argv and not inputs["mnist_vae"].is_dir():
        pytest.skip("the shipped MNIST autoencoder is not in this checkout")
    target = _target(tmp_path)
    paths = {**inputs, "out": target, "existing": target / "existing.out"}
    _run_case(argv, needles, [target, *inputs.values()], paths)
    assert not (inputs["vae"].parent / MALWARE_FLAG).exists(), "a malicious pickle ran"


@pytest.mark.parametrize(
    "argv",
    [
        f"train-vae --out {{out}}/v {VAE_FLAGS} --max-steps 1",
        "sample --ckpt {w} --out {out} --num 4 --steps 2 --npz {out}/s.npz",
    ],
    ids=["train-vae", "sample-npz"],
)
def test_a_full_disk_is_refused_before_the_work(
    inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: str
) -> None:
    monkeypatch.setattr("ditkit.runtime.files.free_bytes", lambda path: 1000)
    target = _target(tmp_path)
    line = _run_case(argv, ("no space", "MiB", str(target)), [target, *inputs.values()], {**inputs, "out": target})
    assert "cannot read" not in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_a_read_only_output_folder_is_refused_before_sampling(inputs: dict[str, Path], tmp_path: Path) -> None:
    target = _target(tmp_path)
    target.chmod(0o555)
    try:
        argv = "sample --ckpt {w} --out {out}/grid --steps 2 --per-class 1"
        _run_case(argv, ("cannot write", str(target)), [target, *inputs.values()], {**inputs, "out": target})
    finally:
        target.chmod(0o755)


def test_the_newer_table_covers_the_newer_commands() -> None:
    commands = {c[1].split()[0] for c in CASES}
    assert {"train-vae", "study", "extract-latents", "serve", "export", "import", "bench", "sample"} <= commands
