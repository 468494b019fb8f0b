"""The flags of every `ditkit` subcommand (the CLI's whole surface; `cli.py` holds what each command does).

Sampling and training flags default to None, meaning "the library's default" (`ditkit.config` holds each
default once: IMAGE_SAMPLING, WALK_SAMPLING, the TrainConfig and recipe fields).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from ditkit.config import IMAGE_SAMPLING, SAMPLE_BATCH_CPU, SAMPLE_BATCH_CUDA, WALK_SAMPLING, VAETrainConfig  # no torch
from ditkit.config.constants import FLOW_PATHS, FLOW_PREDICTIONS, OBJECTIVES, SDE_DIFFUSION_FORMS, SDE_LAST_STEPS
from ditkit.config.recipes import RECIPES

# = ditkit.apps.study_spec.SPEC_FORMAT_DOC, restated: importing that module imports torch (`ditkit --help` must not).
STUDY_SPEC_DOC = "docs/studies/spec-format.md"

Handler = Callable[[argparse.Namespace], None]

HELP = {
    "flops": "parameters and forward Gflops (paper convention) of the presets",
    "presets": "list the model presets and their configs",
    "classes": "list ImageNet class ids and names",
    "sample": "sample images (a grid, or --num N into an .npz for evaluation)",
    "walk": "latent walks: noise slerp and class-embedding interpolation",
    "train": "train a DiT (default: the CPU demo recipe on the embedded MNIST); rerun to resume",
    "export": "write the EMA weights of a run as one safetensors file (load_dit) or a diffusers DiTPipeline folder",
    "import": "convert a diffusers DiT (folder or hub id) or an official DiT-*.pt into one ditkit safetensors file",
    "extract-latents": "encode a dataset once into a latent store (shards under torchrun)",
    "evaluate": "FID / sFID / IS / precision / recall, or the digits metric",
    "ref-stats": "reference statistics for FID from an image folder or .npz",
    "demo": "the CPU demo: a DiT on the embedded MNIST (the latent route by default), sampled and scored",
    "train-vae": "train a small KL autoencoder (diffusers AutoencoderKL) for latent DiTs; rerun to resume",
    "study": "train and score configs over seeds (blocks, scaling, guidance, dit-vs-sit or a spec file); rerun resumes",
    "bench": "matmul peaks, training and sampling throughput, peak memory and compile time of a DiT here",
    "serve": "a local web page to sample from a model: class grids and latent walks (pip install 'ditkit[web]')",
}


def add_flags(
    sub: Any,
    handlers: dict[str, Handler],
    *,
    presets: Sequence[str],
    blocks: Sequence[str],
    samplers: Sequence[str],
    precisions: Sequence[str],
) -> None:
    """Add every subcommand with its flags to the subparsers `sub`; `handlers` maps names to functions."""

    def add(name: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=HELP[name], description=HELP[name])
        p.set_defaults(fn=handlers[name])
        return p

    p = add("flops")
    p.add_argument("--preset", action="append", choices=presets, help="repeatable; default: the 12 paper models")
    p.add_argument("--block", choices=blocks, help="block design (default adaln_zero)")
    p.add_argument("--image-size", type=count(1), default=256, help="pixels (latent = pixels / 8)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add("presets")
    add("classes").add_argument("--search", help="only names containing this text")

    _sample_and_walk_flags(add("sample"), add("walk"), samplers, precisions)
    _train_flags(add("train"), presets, blocks, precisions)

    _weights_flags(add)
    _evaluation_flags(add("evaluate"), add("ref-stats"))
    _recipe_flags(add, precisions)
    _tool_flags(add, presets, precisions)


def _weights_flags(add: Callable[[str], argparse.ArgumentParser]) -> None:
    p = add("export")
    p.add_argument("run", help="run folder or checkpoint folder (a weights file with --format diffusers)")
    p.add_argument("out", help="output .safetensors file, or a new folder with --format diffusers")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--format", default="safetensors", choices=["safetensors", "diffusers"])
    p.add_argument("--vae", help="diffusers: the VAE to ship (default: the run's)")

    p = add("import")
    p.add_argument("source", help="diffusers DiTPipeline or transformer folder, hub id, or DiT-XL-2-*.pt")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--num-classes", type=int, help="classes to keep (default: ditkit_config.json's, else the table's)")

    p = add("extract-latents")
    p.add_argument("--data", required=True, help="image folder or .npz")
    p.add_argument("--out", required=True, help="latent store folder (re-run to resume)")
    p.add_argument("--vae", required=True, help="diffusers VAE folder or hub id, e.g. stabilityai/sd-vae-ft-ema")
    p.add_argument(
        "--image-size", type=count(1), help="pixels (default: the images' own size, at most 256; else the VAE's)"
    )
    p.add_argument("--batch-size", type=count(1), default=32)
    p.add_argument("--num-workers", type=count(0), default=4)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def _recipe_flags(add: Callable[[str], argparse.ArgumentParser], precisions: Sequence[str]) -> None:
    p = add("demo")
    p.add_argument("--out", required=True, help="output folder (re-running resumes the training)")
    p.add_argument("--num-samples", type=count(2), default=1000, help="samples per setting")
    p.add_argument("--max-steps", type=count(1), help="training steps (default: the recipe's)")
    p.add_argument("--precision", choices=precisions, help="training and sampling (default auto)")
    route = p.add_mutually_exclusive_group()
    route.add_argument(
        "--latent",
        dest="route",
        action="store_const",
        const="latent",
        default="latent",
        help="the paper's route (default): autoencoder, latents, DiT on latent patches",
    )
    route.add_argument("--pixel", dest="route", action="store_const", const="pixel", help="DiT on the pixels")
    p.add_argument("--train-vae", action="store_true", help="latent route: train the autoencoder (~25 min)")
    p.add_argument("--objective", choices=OBJECTIVES, default="diffusion", help="flow: SiT's flow matching")

    p = add("train-vae")
    p.add_argument("--out", required=True, help="the VAE folder (diffusers layout; `--vae OUT` elsewhere)")
    p.add_argument("--data", help="dataset spec (default: the embedded MNIST)")
    for flag, kind in (
        ("--image-size", count(1)),
        ("--max-steps", count(1)),
        ("--batch-size", count(1)),
        ("--lr", float),
        ("--kl-weight", float),
        ("--seed", count(0)),
    ):
        p.add_argument(flag, type=kind, help=f"default {field_default(VAETrainConfig, flag)}")
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help=f"default {field_default(VAETrainConfig, 'device')}"
    )

    p = add("study")
    p.description = f"{HELP['study']}. Spec format: {STUDY_SPEC_DOC} (every field, its default, an example)."
    p.add_argument("spec", help="a .toml/.json study spec, or blocks, scaling, guidance, dit-vs-sit (built in)")
    p.add_argument("--out", required=True, help="study folder (results.json, results.md, plots, runs/)")
    p.add_argument("--max-steps", type=count(1), help="override the spec's training steps (a quick smoke run)")
    p.add_argument("--seeds", type=count(1), help="override the spec's seed count")


WEIGHTS_OBJECTIVE_HELP = (
    "what a weights file without a recorded process was trained with: flow for SiT's checkpoints "
    "(e.g. SiT-XL-2-256x256.pt), diffusion (the default) for DiT's; a recorded process wins"
)


def _tool_flags(
    add: Callable[[str], argparse.ArgumentParser], presets: Sequence[str], precisions: Sequence[str]
) -> None:
    p = add("bench")
    p.add_argument("--preset", default="DiT-S/2", choices=presets)
    p.add_argument("--image-size", type=count(1), default=256, help="pixels (the model sees image-size / 8 latents)")
    p.add_argument("--batch-size", type=count(1), help="training batch (default 32 on CPU, 256 on CUDA)")
    p.add_argument("--sample-batch", type=count(1), help="images per sampling step (default 8 on CPU, 128 on CUDA)")
    p.add_argument("--what", type=bench_parts, default="train,sample", help="train, sample or both (comma separated)")
    p.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--precision", default="auto", choices=precisions)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (reports the compile time)")
    p.add_argument("--steps", type=count(1), default=3, help="timed repetitions after a warm-up")
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    p.add_argument("--out", help="also write the JSON object to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    p = add("serve")
    p.add_argument("--ckpt", required=True, help="weights file (.pt/.safetensors) or a ditkit run folder")
    p.add_argument("--vae", help="VAE folder or hub id ('none' = pixel space); default: the run's, else none")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="default 7860")
    p.add_argument("--device", type=device, default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--num-heads", type=int, help="head count, for weights that do not record it")
    p.add_argument("--objective", choices=OBJECTIVES, help=WEIGHTS_OBJECTIVE_HELP)


def _sample_and_walk_flags(
    sample: argparse.ArgumentParser, walk: argparse.ArgumentParser, samplers: Sequence[str], precisions: Sequence[str]
) -> None:
    for p in (sample, walk):
        p.add_argument("--ckpt", required=True, help="weights file (.pt/.safetensors) or a ditkit run folder")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--vae", help="VAE folder or hub id ('none' = pixel space); default: the run's, else none")
        p.add_argument(
            "--classes", help="class ids or names (a run's own; ImageNet's for 1000 classes), comma separated"
        )
        _sampling_flags(p, samplers, precisions)
        p.add_argument("--num-heads", type=count(1), help="head count, for weights that do not record it")
        p.add_argument("--objective", choices=OBJECTIVES, help=WEIGHTS_OBJECTIVE_HELP)
        p.add_argument("--device", type=device, default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
        p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    sample.add_argument("--seed", type=count(0), default=0, help="image i has seed image_seed(seed, i)")
    sample.add_argument("--per-class", type=count(1), default=4, help="grid images per class")
    sample.add_argument("--num", type=count(1), help="sample N images into --npz (resumable, shards under torchrun)")
    sample.add_argument("--npz", help="output .npz for --num (default OUT/samples.npz)")
    sample.add_argument("--class-balanced", action="store_true", help="each class equally often with --num")
    walk.add_argument("--kind", default="both", choices=["noise", "class", "both"])
    walk.add_argument("--seeds", type=seed_pair, default="0,1", help="noise walk from seed A to seed B")
    walk.add_argument("--frames", type=count(2), default=16)


def _evaluation_flags(evaluate: argparse.ArgumentParser, ref_stats: argparse.ArgumentParser) -> None:
    evaluate.add_argument(
        "samples", help="samples .npz (arr_0 uint8 NHWC, + labels for the digits metric) or an image folder"
    )
    evaluate.add_argument("--ref", help="reference .npz: images, ADM reference batch or ditkit ref-stats output")
    evaluate.add_argument("--json", action="store_true", help="one JSON object")
    ref_stats.add_argument("source", help="image folder (flat or <class>/*.png, as train reads it), .npz or ADM batch")
    ref_stats.add_argument("--out", required=True, help="output statistics .npz")
    ref_stats.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    for p in (evaluate, ref_stats):
        p.add_argument("--metric", choices=["digits", "inception"], default="inception")
        p.add_argument("--inception", help="pt_inception-2015-12-05 weights or fid-helper's default_1.pt")
        p.add_argument("--allow-download", action="store_true", help="fetch the Inception weights when online")
        p.add_argument(
            "--resize",
            choices=["adm", "pytorch-fid"],
            default="adm",
            help="Inception input: adm = ADM's evaluator (DiT's), pytorch-fid = pytorch-fid's",
        )
        p.add_argument("--batch-size", type=count(1), default=64)
        p.add_argument("--device", type=device, default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")


def _sampling_flags(p: argparse.ArgumentParser, samplers: Sequence[str], precisions: Sequence[str]) -> None:
    image, walk = IMAGE_SAMPLING, WALK_SAMPLING  # the defaults of `sample` and `walk`
    p.add_argument("--sampler", choices=samplers, help=f"default: {image.sampler} (sample), {walk.sampler} (walk)")
    p.add_argument(
        "--num-steps",
        "--steps",
        dest="num_steps",
        type=int,
        help=f"sampling steps (default {image.num_steps} / {walk.num_steps})",
    )
    p.add_argument("--cfg-scale", type=float, help=f"guidance scale (default {image.cfg_scale:g}; 1 = none)")
    p.add_argument("--cfg-channels", choices=["all", "3"], help="guided channels; 3 = the official DiT variant")
    p.add_argument("--eta", type=float, help=f"DDIM noise in [0, 1] (default {image.eta:g})")
    forms, last_steps = SDE_DIFFUSION_FORMS, [str(step).lower() for step in SDE_LAST_STEPS]
    p.add_argument("--sde-diffusion-form", choices=forms, help=f"flow SDE: w_t (default {image.sde_diffusion_form})")
    p.add_argument("--sde-last-step", choices=last_steps, help=f"flow SDE: last step (default {image.sde_last_step})")
    p.add_argument(
        "--batch-size",
        type=count(1),
        help=f"images per forward pass (default {SAMPLE_BATCH_CPU} on CPU, {SAMPLE_BATCH_CUDA} on CUDA)",
    )
    p.add_argument("--precision", choices=precisions, help="the network's arithmetic (default auto: bf16 on CUDA)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the network (CUDA: ~2x)")
    p.add_argument(
        "--clip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="clamp x0 predictions to [-1, 1] (default: on in pixel space)",
    )


def _train_flags(
    p: argparse.ArgumentParser, presets: Sequence[str], blocks: Sequence[str], precisions: Sequence[str]
) -> None:
    p.add_argument("--out", required=True, help="run folder (re-running the same command resumes it)")
    p.add_argument("--data", help="image folder, .npz, latent store, 'digits' or 'mnist' (default: embedded MNIST)")
    p.add_argument("--preset", choices=presets, help="model size (default: DiT-XL/2; the demo's model for MNIST)")
    p.add_argument("--block", choices=blocks, help="block design (default adaln_zero)")
    p.add_argument("--num-classes", type=int, help="classes (default: the data's; 0 = unconditional)")
    p.add_argument(
        "--recipe",
        choices=RECIPES,
        help="paper: DiT-XL/2, batch 256, lr 1e-4, EMA 0.9999 (the default with --data); cpu-small: a ~2 M "
        "DiT-XS, batch 64, lr 3e-3, x0 + cosine, EMA 0.999, for a laptop CPU (README: Recipes)",
    )
    p.add_argument("--depth", type=count(1), help="transformer blocks (default: the preset's or recipe's)")
    p.add_argument("--hidden-size", "--width", dest="hidden_size", type=count(4), help="token width (d)")
    p.add_argument("--num-heads", "--heads", dest="num_heads", type=count(1), help="attention heads")
    p.add_argument("--patch-size", type=count(1), help="p: p x p patches make the tokens (1, 2, 4 or 8)")
    p.add_argument("--predict", choices=["eps", "x0"], help="what the model predicts (paper: eps)")
    p.add_argument("--noise-schedule", choices=["linear", "cosine"], help="diffusion betas (paper: linear)")
    p.add_argument("--objective", choices=OBJECTIVES, help="diffusion (ADM's, the paper) or flow (SiT's flow matching)")
    p.add_argument("--path", choices=FLOW_PATHS, help="flow: the interpolant (default linear)")
    p.add_argument("--prediction", choices=FLOW_PREDICTIONS, help="flow: what the model predicts (default velocity)")
    p.add_argument("--loss-weight", choices=["velocity", "likelihood"], help="flow: score / noise loss weight")
    p.add_argument(
        "--ema-warmup", action=argparse.BooleanOptionalAction, default=None, help="EMA decay warm-up (short runs)"
    )
    p.add_argument("--learn-sigma", action=argparse.BooleanOptionalAction, default=None, help="learned variance")
    p.add_argument("--image-size", type=int, help="pixels (default: the images' own size, at most 256)")
    p.add_argument("--vae", help="'none' (pixel space), a diffusers VAE folder or hub id")
    for flag, kind, help_ in (
        ("--max-steps", int, None),
        ("--global-batch-size", int, None),
        ("--micro-batch-size", int, "per-rank images per forward (gradient accumulation)"),
        ("--lr", float, None),
        ("--warmup-steps", int, None),
        ("--max-grad-norm", float, None),
        ("--ema-decay", float, None),
        ("--ckpt-every", int, "steps between checkpoints"),
        ("--log-every", int, "steps between metrics lines"),
        ("--sample-every", int, "steps between EMA sample grids"),
        ("--eval-every", int, "steps between quality evaluations (0 = off)"),
        ("--num-eval-samples", int, None),
        ("--seed", int, None),
        ("--num-workers", int, None),
    ):
        dest = flag[2:].replace("-", "_") + ("_steps" if flag.endswith("-every") else "")
        p.add_argument(flag, dest=dest, type=kind, help=help_)
    p.add_argument("--eval-ref", help="FID reference for --eval-every (ref-stats .npz, ADM batch, images)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None, help="random horizontal flips")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels: exact resume")
    p.add_argument("--precision", choices=precisions)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")


# A setting whose flag's dest is not the setting's own name (elsewhere a flag's dest is the setting it sets:
# --max-steps -> max_steps, --ckpt-every -> ckpt_every_steps). Settings with no flag (keep_last_ckpts,
# grid_seed, num_train_steps, ...) find none and are printed without one.
SETTING_DESTS = {"out_dir": "out"}


def flag_of(parser: argparse.ArgumentParser, setting: str | None) -> str | None:
    """The flag of the subcommand `parser` that sets `setting` ("max_steps" -> "--max-steps"), or None.

    Read from the parser itself (each action's dest), so a flag added, renamed or removed needs no second table;
    a dotted setting ("model.learn_sigma") is looked up by its last part.
    """
    if not setting:
        return None
    name = setting.rsplit(".", 1)[-1]
    name = SETTING_DESTS.get(name, name)
    for action in parser._actions:
        if action.dest == name and action.option_strings:
            return next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
    return None


def field_default(config_class: type, flag_or_setting: str) -> str:
    """The default of a config dataclass field as help text shows it: `field_default(VAETrainConfig,
    "--max-steps")` -> "1500" (read from the field itself, so the help never restates a default)."""
    name = flag_or_setting.lstrip("-").replace("-", "_")
    field = next(f for f in dataclasses.fields(config_class) if f.name == name)
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum (a usage error naming the flag and the value otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}; got {text!r}")
        return value

    return parse


def seed_pair(text: str) -> list[int]:
    """An argparse type: "A,B" (or one seed A) as a list of non-negative integers."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        seeds = []
    if not 1 <= len(seeds) <= 2 or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"must be one or two seeds >= 0 like 0,1; got {text!r}")
    return seeds


def device(text: str) -> str:
    """An argparse type: auto, cpu, cuda or cuda:N (whether that GPU exists is checked when it is used)."""
    if text not in ("auto", "cpu", "cuda") and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N; got {text!r}")
    return text


def bench_parts(text: str) -> str:
    """An argparse type: "train", "sample" or "train,sample"."""
    if not text or not set(text.split(",")) <= {"train", "sample"}:
        raise argparse.ArgumentTypeError(f"must be train, sample or train,sample; got {text!r}")
    return text
