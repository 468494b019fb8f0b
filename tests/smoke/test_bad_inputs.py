"""Bad input, table-driven: every subcommand answers a hostile value with exit code 2, exactly one line on
stderr that names the value, no traceback, and leaves every existing file as it was (issue 12's contract).

Each case runs in-process (`invoke`), with `{placeholders}` for the shared inputs below: a target folder
with a sentinel file (the output paths point into it) and corrupt, truncated, empty and malicious files of
every format ditkit reads. After the command, the target folder and the inputs must be byte-identical.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ditkit.config import get_preset
from ditkit.model.dit import DiT
from ditkit.model.weights import save_weights
from ditkit.runtime.errors import InputError
from stubs import TINY_DIGITS_RUN

from .test_cli import invoke

pytestmark = pytest.mark.xdist_group("bad_inputs")  # one worker builds the shared inputs once

SENTINEL = b"an existing file that no bad command may touch\n"
EXISTING_OUTPUT = "existing.out"  # in the target folder: what an output flag pointed at an existing file names
MALWARE_FLAG = "pwned"  # the malicious pickles would create this file beside the inputs


class _Malicious:
    """Unpickling this runs `open(target/pwned, "w")`: a loader that executes pickled code creates the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _tiny_weights(path: Path) -> Path:
    config = get_preset("DiT-T/2", in_channels=1, input_size=8)
    torch.manual_seed(0)
    return save_weights(DiT(config).state_dict(), config, path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Paths every case may use (read-only for the commands: checked unchanged after each case)."""
    root = tmp_path_factory.mktemp("inputs")
    weights = _tiny_weights(root / "tiny.safetensors")
    blob = weights.read_bytes()
    run = root / "run"
    invoke(
        "train",
        "--out",
        str(run),
        *TINY_DIGITS_RUN,
        *("--max-steps", "1", "--sample-every", "0", "--num-workers", "0"),
    )
    samples = root / "samples.npz"
    np.savez(samples, arr_0=np.zeros((10, 8, 8, 1), np.uint8), labels=np.arange(10))
    files = {
        "w": weights,
        "run": run,
        "samples": samples,
        "empty_st": root / "empty.safetensors",
        "trunc_st": root / "trunc.safetensors",
        "junk_st": root / "junk.safetensors",
        "huge_st": root / "huge.safetensors",
        "empty_pt": root / "empty.pt",
        "junk_pt": root / "junk.pt",
        "trunc_pt": root / "trunc.pt",
        "notdict_pt": root / "list.pt",
        "empty_npz": root / "empty.npz",
        "junk_npz": root / "junk.npz",
        "trunc_npz": root / "trunc.npz",
        "float_npz": root / "float.npz",
        "object_npz": root / "object.npz",
        "empty_dir": root / "empty_dir",
        "bad_png_dir": root / "bad_png",
        "no_ckpt_dir": root / "no_ckpt",
        "bad_toml": root / "bad.toml",
        "broken_cfg_run": root / "broken_cfg_run",
    }
    files["bad_toml"].write_text("[study\nname = = 'x'\n")
    files["empty_st"].write_bytes(b"")
    files["trunc_st"].write_bytes(blob[: len(blob) // 2])
    files["junk_st"].write_bytes(bytes(range(256)) * 8)
    files["huge_st"].write_bytes(struct.pack("<Q", 1 << 60) + b"{}")  # header length far past the file
    files["empty_pt"].write_bytes(b"")
    files["junk_pt"].write_bytes(b"PK\x03\x04 not really a zip" * 10)
    torch.save(DiT(get_preset("DiT-T/2")).state_dict(), files["trunc_pt"])
    files["trunc_pt"].write_bytes(files["trunc_pt"].read_bytes()[:3000])
    torch.save([torch.zeros(2)], files["notdict_pt"])
    files["empty_npz"].write_bytes(b"")
    files["junk_npz"].write_bytes(b"\x00garbage" * 100)
    np.savez(files["trunc_npz"], arr_0=np.zeros((64, 8, 8, 1), np.uint8), labels=np.arange(64) % 10)
    files["trunc_npz"].write_bytes(files["trunc_npz"].read_bytes()[:600])
    np.savez(files["float_npz"], arr_0=np.zeros((4, 8, 8, 3), np.float32))
    np.savez(files["object_npz"], arr_0=np.array([{"a": 1}, None], dtype=object))
    files["empty_dir"].mkdir()
    files["bad_png_dir"].mkdir()
    (files["bad_png_dir"] / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    files["no_ckpt_dir"].mkdir()
    (files["no_ckpt_dir"] / "notes.txt").write_text("not a run\n")
    shutil.copytree(run, files["broken_cfg_run"])
    (files["broken_cfg_run"] / "config.json").write_text("{broken")
    return {**files, **_malicious_files(root)}


def _malicious_files(root: Path) -> dict[str, Path]:
    """Pickles that would write root/pwned when unpickled: raw (.pt), in a torch zip, in an .npz."""
    payload = _Malicious(str(root / MALWARE_FLAG))
    raw = root / "evil_raw.pt"
    raw.write_bytes(pickle.dumps({"x": payload}))
    zipped = root / "evil_zip.pt"
    torch.save({"x": payload}, zipped)
    npz = root / "evil.npz"
    np.savez(npz, arr_0=np.array([payload], dtype=object))
    return {"evil_raw_pt": raw, "evil_zip_pt": zipped, "evil_npz": npz}


def _slow(case: tuple[str, str, tuple[str, ...]]) -> tuple[str, str, tuple[str, ...], pytest.MarkDecorator]:
    """A case whose command does seconds of work before it meets the bad value."""
    return (*case, pytest.mark.slow)


# (id, argv with {placeholders}, texts the one stderr line must contain)
CASES: list[tuple] = [
    # argparse-level (every subcommand shares the parser's one-line errors)
    ("unknown-command", "nope", ("'nope'",)),
    ("flops-preset", "flops --preset DiT-Q/2", ("DiT-Q/2",)),
    ("flops-size-zero", "flops --image-size 0", ("--image-size", "0")),
    ("flops-size-negative", "flops --image-size -16", ("--image-size", "-16")),
    ("flops-size-text", "flops --image-size big", ("'big'",)),
    ("flops-block", "flops --block mlp", ("'mlp'",)),
    ("presets-extra", "presets --all", ("--all",)),
    ("classes-missing-value", "classes --search", ("--search",)),
    # sample: weights
    ("sample-missing-ckpt", "sample --ckpt {out}/none.pt --out {out}", ("none.pt",)),
    ("sample-empty-safetensors", "sample --ckpt {empty_st} --out {out}", ("empty.safetensors",)),
    ("sample-truncated-safetensors", "sample --ckpt {trunc_st} --out {out}", ("trunc.safetensors",)),
    ("sample-junk-safetensors", "sample --ckpt {junk_st} --out {out}", ("junk.safetensors",)),
    ("sample-huge-header", "sample --ckpt {huge_st} --out {out}", ("huge.safetensors",)),
    ("sample-empty-pt", "sample --ckpt {empty_pt} --out {out}", ("empty.pt",)),
    ("sample-junk-pt", "sample --ckpt {junk_pt} --out {out}", ("junk.pt",)),
    ("sample-truncated-pt", "sample --ckpt {trunc_pt} --out {out}", ("trunc.pt",)),
    ("sample-list-pt", "sample --ckpt {notdict_pt} --out {out}", ("list.pt",)),
    ("sample-malicious-pickle", "sample --ckpt {evil_raw_pt} --out {out}", ("evil_raw.pt",)),
    ("sample-malicious-torch-zip", "sample --ckpt {evil_zip_pt} --out {out}", ("evil_zip.pt",)),
    ("sample-npz-as-ckpt", "sample --ckpt {samples} --out {out}", ("samples.npz",)),
    ("sample-folder-without-run", "sample --ckpt {no_ckpt_dir} --out {out}", ("no_ckpt",)),
    # sample: settings
    ("sample-cfg-nan", "sample --ckpt {w} --out {out} --cfg-scale nan", ("cfg_scale", "nan")),
    ("sample-cfg-inf", "sample --ckpt {w} --out {out} --cfg-scale inf", ("cfg_scale", "inf")),
    ("sample-cfg-negative", "sample --ckpt {w} --out {out} --cfg-scale -1", ("cfg_scale", "-1")),
    ("sample-eta-nan", "sample --ckpt {w} --out {out} --sampler ddim --eta nan", ("eta", "nan")),
    ("sample-eta-two", "sample --ckpt {w} --out {out} --sampler ddim --eta 2", ("eta", "2")),
    ("sample-steps-zero", "sample --ckpt {w} --out {out} --steps 0", ("num_steps", "0")),
    ("sample-steps-one", "sample --ckpt {w} --out {out} --steps 1", ("num_steps", "1")),
    ("sample-batch-zero", "sample --ckpt {w} --out {out} --batch-size 0", ("batch", "0")),
    ("sample-per-class-zero", "sample --ckpt {w} --out {out} --per-class 0", ("--per-class", "0")),
    ("sample-per-class-negative", "sample --ckpt {w} --out {out} --per-class -2", ("--per-class", "-2")),
    ("sample-num-zero", "sample --ckpt {w} --out {out} --num 0", ("--num", "0")),
    ("sample-num-negative", "sample --ckpt {w} --out {out} --num -5", ("--num", "-5")),
    ("sample-class-range", "sample --ckpt {w} --out {out} --classes 10", ("10",)),
    ("sample-class-name", "sample --ckpt {w} --out {out} --classes tabby", ("'tabby'",)),
    ("sample-heads-zero", "sample --ckpt {w} --out {out} --num-heads 0", ("--num-heads", "0")),
    ("sample-no-such-gpu", "sample --ckpt {w} --out {out} --device cuda:7", ("cuda:7",)),
    ("sample-device-name", "sample --ckpt {w} --out {out} --device tpu", ("'tpu'",)),
    ("sample-sampler", "sample --ckpt {w} --out {out} --sampler euler", ("'euler'",)),
    ("sample-npz-exists", "sample --ckpt {w} --out {out} --num 2 --steps 2 --npz {existing}", ("existing.out",)),
    ("sample-npz-is-folder", "sample --ckpt {w} --out {out} --num 2 --steps 2 --npz {out}", ("target",)),
    ("sample-out-is-file", "sample --ckpt {w} --out {existing} --steps 2 --per-class 1", ("existing.out",)),
    ("sample-grid-exists", "sample --ckpt {w} --out {grid_dir} --steps 2 --per-class 1", ("grid.png",)),
    # walk
    ("walk-frames-zero", "walk --ckpt {w} --out {out} --frames 0", ("--frames", "0")),
    ("walk-frames-one", "walk --ckpt {w} --out {out} --frames 1", ("--frames", "1")),
    ("walk-seeds-text", "walk --ckpt {w} --out {out} --seeds a,b", ("'a,b'",)),
    ("walk-one-class", "walk --ckpt {w} --out {out} --kind class --classes 3 --steps 2", ("--classes",)),
    ("walk-eta", "walk --ckpt {w} --out {out} --eta 0.5", ("eta", "0.5")),
    ("walk-gif-exists", "walk --ckpt {w} --out {walk_dir} --kind noise --steps 2 --frames 2", ("noise_walk",)),
    # train
    ("train-foreign-config", "train --out {out} --max-steps 1", ("config.json",)),
    ("train-foreign-folder", "train --out {foreign_dir} --max-steps 1", ("foreign",)),
    ("train-out-is-file", "train --out {existing} --max-steps 1", ("existing.out",)),
    ("train-missing-data", "train --out {out}/r --data {out}/none.npz", ("none.npz",)),
    ("train-empty-npz", "train --out {out}/r --data {empty_npz} --vae none", ("empty.npz",)),
    ("train-junk-npz", "train --out {out}/r --data {junk_npz} --vae none", ("junk.npz",)),
    ("train-truncated-npz", "train --out {out}/r --data {trunc_npz} --vae none --image-size 8", ("trunc.npz",)),
    ("train-object-npz", "train --out {out}/r --data {object_npz} --vae none", ("object.npz",)),
    ("train-malicious-npz", "train --out {out}/r --data {evil_npz} --vae none", ("evil.npz",)),
    ("train-float-npz", "train --out {out}/r --data {float_npz} --vae none", ("float.npz",)),
    ("train-empty-folder", "train --out {out}/r --data {empty_dir} --vae none --image-size 8", ("empty_dir",)),
    ("train-lr-nan", "train --out {out}/r --lr nan", ("lr", "nan")),
    ("train-lr-zero", "train --out {out}/r --lr 0", ("lr", "0")),
    ("train-lr-inf", "train --out {out}/r --lr inf", ("lr", "inf")),
    ("train-steps-zero", "train --out {out}/r --max-steps 0", ("--max-steps", "0")),
    ("train-batch-zero", "train --out {out}/r --global-batch-size 0", ("--global-batch-size", "0")),
    ("train-micro-batch", "train --out {out}/r --global-batch-size 8 --micro-batch-size 3", ("micro_batch_size", "3")),
    ("train-ema-decay", "train --out {out}/r --ema-decay 2", ("ema_decay", "2")),
    ("train-grad-norm-zero", "train --out {out}/r --max-grad-norm 0", ("max_grad_norm", "0")),
    ("train-grad-norm-nan", "train --out {out}/r --max-grad-norm nan", ("max_grad_norm", "nan")),
    ("train-ckpt-every-zero", "train --out {out}/r --ckpt-every 0", ("--ckpt-every", "0")),
    ("train-log-every-zero", "train --out {out}/r --log-every 0", ("--log-every", "0")),
    ("train-warmup-negative", "train --out {out}/r --warmup-steps -1", ("--warmup-steps", "-1")),
    ("train-seed-negative", "train --out {out}/r --seed -1", ("--seed", "-1")),
    ("train-workers-negative", "train --out {out}/r --num-workers -1", ("--num-workers", "-1")),
    ("train-image-size-zero", "train --out {out}/r --image-size 0", ("--image-size", "0")),
    ("train-image-size-odd", "train --out {out}/r --preset DiT-T/4 --image-size 30", ("30",)),
    ("train-heads", "train --out {out}/r --preset DiT-T/2 --num-heads 5", ("num_heads", "5")),
    ("train-classes-negative", "train --out {out}/r --num-classes -1", ("num_classes", "-1")),
    (
        "train-resume-other-seed",
        "train --out {run_copy} --data digits --preset DiT-T/2 --image-size 8 --vae none "
        "--max-steps 2 --global-batch-size 8 --seed 5 --device cpu --num-workers 0",
        ("seed",),
    ),
    # export
    ("export-missing-run", "export {out}/none {out}/e.safetensors", ("none",)),
    ("export-out-exists", "export {run} {existing}", ("existing.out",)),
    ("export-out-is-folder", "export {run} {out}", ("target",)),
    ("export-no-checkpoint", "export {no_ckpt_dir} {out}/e.safetensors", ("no_ckpt",)),
    ("export-junk-weights", "export {junk_st} {out}/e.safetensors", ("junk.safetensors",)),
    ("export-broken-run-config", "export {broken_cfg_run} {out}/pipe --format diffusers", ("broken_cfg_run",)),
    # extract-latents
    ("latents-batch-zero", "extract-latents --data digits --out {out}/s --vae x --batch-size 0", ("--batch-size", "0")),
    ("latents-no-vae", "extract-latents --data {samples} --out {out}/s --vae none", ("--vae",)),
    ("latents-missing-data", "extract-latents --data {out}/none --out {out}/s --vae none", ("none'",)),
    ("latents-junk-npz", "extract-latents --data {junk_npz} --out {out}/s --vae none", ("junk.npz",)),
    # evaluate
    ("evaluate-missing", "evaluate {out}/none.npz --metric digits", ("none.npz",)),
    ("evaluate-empty-npz", "evaluate {empty_npz} --metric digits", ("empty.npz",)),
    ("evaluate-junk-npz", "evaluate {junk_npz} --metric digits", ("junk.npz",)),
    ("evaluate-truncated-npz", "evaluate {trunc_npz} --metric digits", ("trunc.npz",)),
    ("evaluate-object-npz", "evaluate {object_npz} --metric digits", ("object.npz",)),
    ("evaluate-malicious-npz", "evaluate {evil_npz} --metric digits", ("evil.npz",)),
    ("evaluate-no-ref", "evaluate {samples} --metric inception", ("--ref",)),
    ("evaluate-batch-zero", "evaluate {samples} --metric digits --batch-size 0", ("--batch-size", "0")),
    _slow(("evaluate-missing-ref", "evaluate {samples} --metric digits --ref {out}/none.npz", ("none.npz",))),
    _slow(("evaluate-junk-ref", "evaluate {samples} --metric digits --ref {junk_npz}", ("junk.npz",))),
    # ref-stats
    ("ref-stats-out-exists", "ref-stats {samples} --metric digits --out {existing}", ("existing.out",)),
    ("ref-stats-out-is-folder", "ref-stats {samples} --metric digits --out {out}", ("target",)),
    ("ref-stats-missing", "ref-stats {out}/none --metric digits --out {out}/s.npz", ("none",)),
    ("ref-stats-empty-folder", "ref-stats {empty_dir} --metric digits --out {out}/s.npz", ("empty_dir",)),
    ("ref-stats-bad-png", "ref-stats {bad_png_dir} --metric digits --out {out}/s.npz", ("a.png",)),
    ("ref-stats-junk-npz", "ref-stats {junk_npz} --metric digits --out {out}/s.npz", ("junk.npz",)),
    ("ref-stats-batch-zero", "ref-stats {samples} --metric digits --out {out}/s.npz --batch-size 0", ("--batch-size",)),
    # import, train-vae, serve
    ("import-junk-pt", "import {junk_pt} --out {out}/i.safetensors", ("junk.pt",)),
    ("import-malicious-pt", "import {evil_zip_pt} --out {out}/i.safetensors", ("evil_zip.pt",)),
    ("import-out-exists", "import {w} --out {existing}", ("existing.out",)),
    ("train-vae-steps-zero", "train-vae --out {out}/v --max-steps 0", ("--max-steps", "0")),
    ("train-vae-lr-nan", "train-vae --out {out}/v --lr nan", ("lr", "nan")),
    ("train-vae-out-is-file", "train-vae --out {existing} --max-steps 1", ("existing.out",)),
    ("serve-device", "serve --ckpt {w} --device tpu", ("'tpu'",)),
    ("serve-port-text", "serve --ckpt {w} --port http", ("'http'",)),
    ("study-unknown-spec", "study nonsense --out {out}/s", ("'nonsense'",)),
    ("study-bad-toml", "study {bad_toml} --out {out}/s", ("bad.toml",)),
    ("study-steps-zero", "study blocks --out {out}/s --max-steps 0", ("--max-steps", "0")),
    # demo
    ("demo-samples-zero", "demo --out {out}/d --num-samples 0", ("--num-samples", "0")),
    ("demo-steps-zero", "demo --out {out}/d --max-steps 0", ("--max-steps", "0")),
    ("demo-out-is-file", "demo --out {existing}", ("existing.out",)),
    # bench
    ("bench-steps-zero", "bench --steps 0", ("--steps", "0")),
    ("bench-batch-zero", "bench --batch-size 0", ("--batch-size", "0")),
    ("bench-sample-batch-zero", "bench --sample-batch 0", ("--sample-batch", "0")),
    ("bench-what", "bench --what everything", ("everything",)),
    ("bench-no-such-gpu", "bench --device cuda:9 --what train", ("cuda:9",)),
    ("bench-out-exists", "bench --preset DiT-T/2 --image-size 16 --what train --out {existing}", ("existing.out",)),
]


def _snapshot(*roots: Path) -> dict[str, str]:
    """Every file under `roots` by path -> sha256 (what must not change)."""
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.mark.parametrize(
    ("argv", "needles"),
    [pytest.param(*c[1:3], marks=c[3:], id=c[0]) for c in CASES],
)
def test_bad_input_is_one_line_exit_2_and_touches_nothing(
    inputs: dict[str, Path], tmp_path: Path, argv: str, needles: tuple[str, ...]
) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "sentinel.txt").write_bytes(SENTINEL)
    (target / EXISTING_OUTPUT).write_bytes(SENTINEL)
    (target / "config.json").write_text('{"my": "own config"}\n')  # a folder that is not a ditkit run
    grid_dir, walk_dir, foreign = tmp_path / "grid", tmp_path / "walk", tmp_path / "foreign"
    for folder, name in ((grid_dir, "grid.png"), (walk_dir, "noise_walk.gif"), (foreign, "photo.jpg")):
        folder.mkdir()
        (folder / name).write_bytes(SENTINEL)
    run_copy = tmp_path / "run_copy"
    if "{run_copy}" in argv:
        shutil.copytree(inputs["run"], run_copy)
    paths = {
        **inputs,
        "out": target,
        "existing": target / EXISTING_OUTPUT,
        "grid_dir": grid_dir,
        "walk_dir": walk_dir,
        "foreign_dir": foreign,
        "run_copy": run_copy,
    }
    watched = [target, grid_dir, walk_dir, foreign, run_copy, *inputs.values()]
    before = _snapshot(*watched)
    proc = invoke(*argv.format(**{k: str(v) for k, v in paths.items()}).split(), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "weights_only=False" not in proc.stderr
    assert "allow_pickle=" not in proc.stderr  # numpy's advice to unpickle is not passed on either
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (inputs["w"].parent / MALWARE_FLAG).exists(), "a malicious pickle ran"
    assert _snapshot(*watched) == before, "an existing file was changed"
    assert not any(p.name.startswith(".tmp-") for w in watched if w.is_dir() for p in w.rglob("*"))


def test_the_table_covers_every_subcommand_and_sixty_cases() -> None:
    from ditkit.cli.main import build_parser

    commands = {c[1].split()[0] for c in CASES}
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) <= commands | {"nope"}, set(sub.choices) - commands
    assert len(CASES) >= 60


# Flags of other tools that ditkit's messages may name; and names still to fix elsewhere.
OTHER_TOOLS_FLAGS = {"--local-dir", "--no-deps", "--nproc", "--nproc_per_node"}
NOT_YET_FIXED: set[str] = set()  # flags a message names that do not exist yet (none)


def test_messages_name_only_flags_that_exist() -> None:
    """Every `--flag` written in a library message is a flag of some subcommand (issue 12: `--out-dir`,
    `--ckpt-every-steps`, `--in-channels` were named but never existed)."""
    import argparse
    import re

    from ditkit.cli.main import build_parser

    flags: set[str] = set()

    def collect(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            flags.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    collect(sub)

    collect(build_parser())
    src = Path(__file__).resolve().parents[2] / "src" / "ditkit"
    named = {
        (match.group(0), path.name)
        for path in src.rglob("*.py")
        if path.parent.name != "cli"
        for match in re.finditer(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]", path.read_text())
    }
    allowed = flags | OTHER_TOOLS_FLAGS | NOT_YET_FIXED
    assert sorted(f"{flag} ({name})" for flag, name in named if flag not in allowed) == []


class _Unprintable(InputError):  # bad input whose message cannot be printed
    def __str__(self) -> str:
        raise RuntimeError("str() fails")


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (PermissionError(13, "Permission denied", "/data/x.npz"), "error: permission denied: '/data/x.npz'"),
        (FileNotFoundError(2, "No such file or directory", "/x.pt"), "error: no such file or folder: '/x.pt'"),
        (IsADirectoryError(21, "Is a directory", "/out"), "error: '/out' is a folder, not a file"),
        (OSError(28, "No space left on device", "/runs/a"), "error: no space left on the device of '/runs/a'"),
        (__import__("zipfile").BadZipFile("File is not a zip file"), "error: cannot read 'in.npz' (BadZipFile"),
        (EOFError(), "error: cannot read 'in.npz' (EOFError: EOFError)"),
        (_Unprintable("?"), "error: _Unprintable"),  # the formatter itself never raises
        (KeyboardInterrupt(), "interrupted"),
    ],
)
def test_errors_read_as_one_line_with_the_path(err: BaseException, expected: str) -> None:
    from ditkit.runtime.stopping import exit_status

    code, line = exit_status(err, ["in.npz"])
    assert code == (130 if isinstance(err, KeyboardInterrupt) else 2)
    assert line.startswith(expected) and "\n" not in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_reported_as_permission_denied(inputs: dict[str, Path], tmp_path: Path) -> None:
    weights = tmp_path / "locked.safetensors"
    shutil.copy(inputs["w"], weights)
    weights.chmod(0)
    proc = invoke("sample", "--ckpt", str(weights), "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2 and "permission denied" in proc.stderr.lower() and "No such file" not in proc.stderr
