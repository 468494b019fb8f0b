"""The `ditkit` command: a thin argparse layer over the library (every command is one library call).

Library errors (ValueError / TypeError) print as one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (value + fix) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _flops(args: argparse.Namespace) -> None:
    from ditkit.config import PRESETS, VAE_DOWNSAMPLE, get_preset
    from ditkit.flops import format_table, model_cost

    names = args.preset or [n for n in PRESETS if n.split("-")[1][0] in "SBLX"]
    overrides: dict[str, Any] = {"input_size": args.image_size // VAE_DOWNSAMPLE}
    if args.block:
        overrides["block"] = args.block
    costs = [model_cost(get_preset(n, **overrides), n) for n in names]
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "model": c.name,
                        "params": c.params,
                        "gflops": round(c.gflops, 4),
                        "tokens": c.tokens,
                        "image_size": args.image_size,
                        "block": overrides.get("block", "adaln_zero"),
                    }
                    for c in costs
                ],
                indent=1,
            )
        )
    else:
        print(f"Forward Gflops per image (multiply-adds, the paper's convention) at {args.image_size} px")
        print(format_table(costs))


def _presets(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from ditkit.config import PRESETS

    for name, cfg in PRESETS.items():
        print(name, json.dumps(asdict(cfg)))


def _classes(args: argparse.Namespace) -> None:
    from ditkit.generate import imagenet_class_names

    for i, name in enumerate(imagenet_class_names()):
        if not args.search or args.search.lower() in name.lower():
            print(i, name)


def _load_for_sampling(args: argparse.Namespace) -> tuple[Any, Any, bool, Any]:
    """Model, VAE (or None), whether x_0 predictions are clipped (pixel space), and the training diffusion."""
    from ditkit.autoencoder import load_vae
    from ditkit.loading import load_dit, read_diffusion_config

    overrides = {"num_heads": args.num_heads} if args.num_heads else {}
    model = load_dit(args.ckpt, device=args.device, **overrides)
    vae_spec = args.vae
    run_config = Path(args.ckpt) / "config.json"
    if vae_spec is None and run_config.is_file():
        vae_spec = json.loads(run_config.read_text()).get("vae", "none")
    vae = load_vae(vae_spec or "none", args.device)
    if vae is None and model.config.in_channels not in (1, 3):
        raise ValueError(
            f"this model works in a {model.config.in_channels}-channel latent space: pass --vae FOLDER_OR_HUB_ID "
            "(e.g. a local copy of stabilityai/sd-vae-ft-mse) to decode its samples"
        )
    return model, vae, vae is None, read_diffusion_config(args.ckpt, model.config)


def _sample(args: argparse.Namespace) -> None:
    from ditkit.generate import SampleSettings, assemble_npz, generate, parse_classes, sample_npz
    from ditkit.grid import save_labelled_grid

    model, vae, pixel_space, diffusion = _load_for_sampling(args)
    settings = SampleSettings(
        sampler=args.sampler,
        num_steps=args.steps,
        cfg_scale=args.cfg_scale,
        cfg_channels=3 if args.cfg_channels == "3" else "all",
        eta=args.eta,
        clip_denoised=pixel_space if args.clip is None else args.clip,
        batch_size=args.batch_size,
        diffusion=diffusion,
    )
    if args.num:
        from ditkit import distributed

        dist = distributed.init()
        npz = Path(args.npz or Path(args.out) / "samples.npz")
        sample_npz(
            model.to(dist.device),
            npz,
            args.num,
            settings,
            seed=args.seed,
            class_balanced=args.class_balanced,
            vae=vae,
            device=dist.device,
            rank=dist.rank,
            world_size=dist.world_size,
            progress=dist.is_main,
        )
        distributed.barrier()
        if dist.is_main:
            print(f"wrote {assemble_npz(npz)}")
        distributed.shutdown()
        return
    num_classes = model.config.num_classes
    classes = parse_classes(args.classes, num_classes) if num_classes else [0] * args.per_class
    labels = [c for c in classes for _ in range(args.per_class)]
    seeds = [args.seed * 1000 + i for i in range(len(labels))]
    images = generate(
        model, labels if num_classes else None, seeds, settings, vae=vae, device=args.device, progress=True
    )
    out = Path(args.out)
    paths = save_labelled_grid(images, labels, out, nrow=args.per_class, num_classes=num_classes)
    print(f"wrote {len(images)} images and the grid {paths}")


def _walk(args: argparse.Namespace) -> None:
    from ditkit.generate import parse_classes
    from ditkit.walk import class_walk, noise_walk, save_walk

    model, vae, pixel_space, diffusion = _load_for_sampling(args)
    classes = parse_classes(args.classes, model.config.num_classes) if model.config.num_classes else [None, None]
    seeds = [int(s) for s in args.seeds.split(",")]
    common = {
        "num_steps": args.steps,
        "cfg_scale": args.cfg_scale,
        "clip_denoised": pixel_space,
        "vae": vae,
        "diffusion": diffusion,
    }
    made = {}
    if args.kind in ("noise", "both"):
        frames = noise_walk(model, classes[0], seeds[0], seeds[-1], args.frames, **common)
        made["noise"] = save_walk(frames, args.out, "noise_walk")
    if args.kind in ("class", "both"):
        if len(classes) < 2:
            raise ValueError("a class walk needs two classes: --classes A,B")
        frames = class_walk(model, classes[0], classes[1], seeds[0], args.frames, **common)
        made["class"] = save_walk(frames, args.out, "class_walk")
    for kind, paths in made.items():
        print(kind, "walk:", ", ".join(str(p) for p in paths.values()))


def _bench(args: argparse.Namespace) -> None:
    from ditkit.bench import bench_sampling_step, bench_train_step
    from ditkit.config import VAE_DOWNSAMPLE, get_preset

    size = args.image_size // VAE_DOWNSAMPLE if args.vae_latents else args.image_size
    overrides: dict[str, Any] = {"input_size": size}
    if args.channels:
        overrides["in_channels"] = args.channels
    config = get_preset(args.preset, **overrides)
    fn = bench_train_step if args.what == "train" else bench_sampling_step
    result = fn(config, args.batch_size, steps=args.steps)
    result.update(preset=args.preset, what=args.what, input_size=size)
    print(json.dumps(result, indent=1))


def _train_config(args: argparse.Namespace) -> Any:
    """TrainConfig from flags: the paper run for --data, the demo recipe for the embedded MNIST."""
    from ditkit.config import VAE_DOWNSAMPLE, TrainConfig, get_preset
    from ditkit.demo import demo_train_config

    flags = {  # flag -> TrainConfig field, for the flags the user gave
        "data": "data",
        "image_size": "image_size",
        "vae": "vae",
        "max_steps": "max_steps",
        "global_batch_size": "global_batch_size",
        "micro_batch_size": "micro_batch_size",
        "lr": "lr",
        "warmup_steps": "warmup_steps",
        "ema_decay": "ema_decay",
        "ckpt_every": "ckpt_every_steps",
        "log_every": "log_every_steps",
        "sample_every": "sample_every_steps",
        "eval_every": "eval_every_steps",
        "num_eval_samples": "num_eval_samples",
        "seed": "seed",
        "precision": "precision",
        "num_workers": "num_workers",
        "device": "device",
        "flip": "flip",
        "max_grad_norm": "max_grad_norm",
    }
    fields = {field: getattr(args, flag) for flag, field in flags.items() if getattr(args, flag) is not None}
    for flag in ("deterministic", "compile", "grad_checkpointing"):
        if getattr(args, flag):
            fields[flag] = True
    embedded = args.data in (None, "mnist")
    base = demo_train_config(args.out) if embedded else TrainConfig(out_dir=args.out)
    model = get_preset(args.preset) if args.preset else base.model
    model_fields: dict[str, Any] = {}
    if args.preset and embedded:  # a paper preset on the digits: pixel space, 1 channel, 10 classes
        model_fields.update(in_channels=1, num_classes=10, learn_sigma=base.model.learn_sigma)
    for flag in ("block", "num_classes", "learn_sigma", "num_heads"):
        if getattr(args, flag) is not None:
            model_fields[flag] = getattr(args, flag)
    image_size = fields.get("image_size", base.image_size)
    pixel_space = fields.get("vae", base.vae) == "none"
    model_fields["input_size"] = image_size if pixel_space else image_size // VAE_DOWNSAMPLE
    model = model.replace(**model_fields)
    diffusion = dataclasses.replace(base.diffusion, learn_sigma=model.learn_sigma)  # the two must agree
    return base.replace(model=model, diffusion=diffusion, **fields)


def _train(args: argparse.Namespace) -> None:
    from ditkit.train import train

    cfg = _train_config(args)
    if args.dry_run:
        print(json.dumps(dataclasses.asdict(cfg), indent=1))
        return
    run_dir = train(cfg)
    print(f"run folder: {run_dir}")


def _export(args: argparse.Namespace) -> None:
    from ditkit.checkpoint import export_ema

    print(f"wrote {export_ema(args.run, args.out)}")


def _extract_latents(args: argparse.Namespace) -> None:
    from ditkit import distributed
    from ditkit.autoencoder import load_vae
    from ditkit.data import open_dataset
    from ditkit.latents import extract_latents, store_progress

    info = distributed.init(args.device)
    vae = load_vae(args.vae, info.device)
    if vae is None:
        raise ValueError("extract-latents needs a VAE: --vae FOLDER_OR_HUB_ID (e.g. stabilityai/sd-vae-ft-ema)")
    dataset = open_dataset(args.data, args.image_size, flip=False)
    extract_latents(
        dataset,
        vae,
        args.out,
        batch_size=args.batch_size,
        rank=info.rank,
        world_size=info.world_size,
        device=info.device,
        num_workers=args.num_workers,
    )
    distributed.barrier()
    if info.is_main:
        written, total = store_progress(args.out)
        print(f"latent store {args.out}: {written}/{total} images")
    distributed.shutdown()


def _extractor(args: argparse.Namespace) -> Any:
    if args.metric == "digits":
        from ditkit.classifier import DigitFeatureExtractor

        return DigitFeatureExtractor()
    from ditkit.inception import load_inception

    return load_inception(args.inception, allow_download=args.allow_download, device=args.device)


def _evaluate(args: argparse.Namespace) -> None:
    import numpy as np

    from ditkit.evaluate import evaluate_samples

    result: dict[str, Any] = {}
    if args.metric == "digits":
        from ditkit.classifier import digits_metrics

        with np.load(args.samples) as data:
            if "labels" not in data.files:
                raise ValueError(
                    f"{args.samples} has no 'labels' array: the digits metric needs the requested "
                    "classes (ditkit sample --num writes them)"
                )
            result.update(digits_metrics(data["arr_0"], data["labels"]))
    if args.ref or args.metric == "inception":
        if not args.ref:
            raise ValueError("--metric inception needs --ref REF.npz (reference images or ditkit ref-stats output)")
        result.update(evaluate_samples(args.samples, args.ref, _extractor(args), batch_size=args.batch_size))
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>20}: {value:.4f}" if isinstance(value, float) else f"{key:>20}: {value}")


def _ref_stats(args: argparse.Namespace) -> None:
    from ditkit.evaluate import ref_stats

    print(f"wrote {ref_stats(args.source, _extractor(args), args.out, batch_size=args.batch_size)}")


def _demo(args: argparse.Namespace) -> None:
    from ditkit.demo import DemoSettings, run_demo

    settings = DemoSettings(num_samples=args.num_samples)
    overrides = {"max_steps": args.max_steps} if args.max_steps else {}
    report = run_demo(args.out, settings, **overrides)
    out = Path(args.out)
    print(
        f"demo finished in {report['seconds']:.0f} s: accuracy on the requested digit "
        f"{report['accuracy_cfg']:.3f} with guidance (scale {report['cfg_scale']}), "
        f"{report['accuracy_nocfg']:.3f} without, over {report['num_samples']} samples each"
    )
    print(f"  grids:      {out / 'grid_cfg' / 'grid.png'}  {out / 'grid_nocfg' / 'grid.png'}")
    print(f"  loss curve: {out / 'loss_curve.png'}")
    print(f"  report:     {out / 'demo_report.json'}")
    print(f"  weights:    {out / 'checkpoints'} (load with ditkit.load_dit({str(out)!r}))")


def build_parser() -> argparse.ArgumentParser:
    from ditkit import __version__
    from ditkit.config import BLOCK_DESIGNS, PRESETS

    parser = _Parser(prog="ditkit", description="Diffusion Transformers: train, sample, evaluate, study.")
    parser.add_argument("--version", action="version", version=f"ditkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, fn: Callable[[argparse.Namespace], None], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        return p

    p = add("flops", _flops, "parameters and forward Gflops (paper convention) of the presets")
    p.add_argument("--preset", action="append", choices=list(PRESETS), help="repeatable; default: the 12 paper models")
    p.add_argument("--block", choices=BLOCK_DESIGNS, help="block design (default adaln_zero)")
    p.add_argument("--image-size", type=int, default=256, help="pixels (latent = pixels / 8)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    add("presets", _presets, "list the model presets and their configs")
    p = add("classes", _classes, "list ImageNet class ids and names")
    p.add_argument("--search", help="only names containing this text")

    for name, fn, help_ in (
        ("sample", _sample, "sample images (grid, or --num N into an .npz for evaluation)"),
        ("walk", _walk, "latent walks: noise slerp and class-embedding interpolation"),
    ):
        p = add(name, fn, help_)
        p.add_argument("--ckpt", required=True, help="weights file (.pt/.safetensors) or a ditkit run folder")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--vae", help="VAE folder or hub id ('none' = pixel space); default: the run's, else none")
        p.add_argument("--classes", help="class ids or ImageNet names, comma separated")
        p.add_argument("--cfg-scale", type=float, default=4.0, help="guidance scale")
        p.add_argument("--steps", type=int, default=250 if name == "sample" else 50, help="sampling steps")
        p.add_argument("--num-heads", type=int, help="head count, for weights that do not record it")
        p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    sample = sub.choices["sample"]
    sample.add_argument("--sampler", default="ddpm", choices=["ddpm", "ddim", "dpm++2m"])
    sample.add_argument("--cfg-channels", default="all", choices=["all", "3"], help="3 = the official DiT variant")
    sample.add_argument("--eta", type=float, default=0.0, help="DDIM noise")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--per-class", type=int, default=4, help="grid images per class")
    sample.add_argument("--batch-size", type=int, default=32)
    sample.add_argument(
        "--clip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="clamp x0 predictions to [-1, 1] (default: on in pixel space)",
    )
    sample.add_argument("--num", type=int, help="sample N images into --npz (resumable, shards under torchrun)")
    sample.add_argument("--npz", help="output .npz for --num (default OUT/samples.npz)")
    sample.add_argument("--class-balanced", action="store_true", help="each class equally often with --num")
    walk = sub.choices["walk"]
    walk.add_argument("--kind", default="both", choices=["noise", "class", "both"])
    walk.add_argument("--seeds", default="0,1", help="noise walk from seed A to seed B")
    walk.add_argument("--frames", type=int, default=16)

    p = add("train", _train, "train a DiT (default: the CPU demo recipe on the embedded MNIST); rerun to resume")
    p.add_argument("--out", required=True, help="run folder (re-running the same command resumes it)")
    p.add_argument("--data", help="image folder, .npz, latent store, 'digits' or 'mnist' (default: embedded MNIST)")
    p.add_argument("--preset", choices=list(PRESETS), help="model size (default: DiT-XL/2; the demo's model for MNIST)")
    p.add_argument("--block", choices=BLOCK_DESIGNS, help="block design (default adaln_zero)")
    p.add_argument("--num-classes", type=int, help="classes of the data (0 = unconditional)")
    p.add_argument("--num-heads", type=int, help="attention heads")
    p.add_argument("--learn-sigma", action=argparse.BooleanOptionalAction, default=None, help="learned variance")
    p.add_argument("--image-size", type=int, help="pixels (256 for the paper, 32 for MNIST)")
    p.add_argument("--vae", help="'none' (pixel space), a diffusers VAE folder or hub id")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--global-batch-size", type=int)
    p.add_argument("--micro-batch-size", type=int, help="per-rank images per forward (gradient accumulation)")
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--max-grad-norm", type=float)
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--ckpt-every", type=int, help="steps between checkpoints")
    p.add_argument("--log-every", type=int, help="steps between metrics lines")
    p.add_argument("--sample-every", type=int, help="steps between EMA sample grids")
    p.add_argument("--eval-every", type=int, help="steps between quality evaluations (0 = off)")
    p.add_argument("--num-eval-samples", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None, help="random horizontal flips")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels: exact resume")
    p.add_argument("--precision", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")

    p = add("export", _export, "write the EMA weights of a run as one safetensors file (loads with load_dit)")
    p.add_argument("run", help="run folder or checkpoint folder")
    p.add_argument("out", help="output .safetensors file")

    p = add("extract-latents", _extract_latents, "encode a dataset once into a latent store (shards under torchrun)")
    p.add_argument("--data", required=True, help="image folder or .npz")
    p.add_argument("--out", required=True, help="latent store folder (re-run to resume)")
    p.add_argument("--vae", required=True, help="diffusers VAE folder or hub id, e.g. stabilityai/sd-vae-ft-ema")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    for name, fn, help_ in (
        ("evaluate", _evaluate, "FID / sFID / IS / precision / recall, or the digits metric"),
        ("ref-stats", _ref_stats, "reference statistics for FID from an image folder or .npz"),
    ):
        p = add(name, fn, help_)
        if name == "evaluate":
            p.add_argument("samples", help="samples .npz (arr_0 uint8 NHWC, + labels for the digits metric)")
            p.add_argument("--ref", help="reference .npz: images, ADM reference batch or ditkit ref-stats output")
            p.add_argument("--json", action="store_true", help="one JSON object")
            p.add_argument("--metric", choices=["digits", "inception"], default="inception")
        else:
            p.add_argument("source", help="image folder or .npz")
            p.add_argument("--out", required=True, help="output statistics .npz")
            p.add_argument("--metric", choices=["digits", "inception"], default="inception")
        p.add_argument("--inception", help="pt_inception-2015-12-05 weights or fid-helper's default_1.pt")
        p.add_argument("--allow-download", action="store_true", help="fetch the Inception weights when online")
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")

    p = add("demo", _demo, "the CPU demo: train on the embedded MNIST, sample with and without guidance, score")
    p.add_argument("--out", required=True, help="output folder (re-running resumes the training)")
    p.add_argument("--num-samples", type=int, default=1000, help="samples per setting")
    p.add_argument("--max-steps", type=int, help="training steps (default: the recipe's)")

    p = add("bench", _bench, "benchmark a training step or a sampling step (img/s beside a matmul probe)")
    p.add_argument("what", choices=["train", "sample"])
    p.add_argument("--preset", default="DiT-S/2", choices=list(PRESETS))
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument(
        "--vae-latents",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="model latents of image-size/8 (default) or pixels",
    )
    p.add_argument("--channels", type=int, help="override input channels")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    return parser


def _resolve_device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "device", None) and args.command not in ("train", "extract-latents"):
        args.device = _resolve_device(args.device)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        args.fn(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        if args.verbose:
            raise
        print(f"ditkit {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"ditkit {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
