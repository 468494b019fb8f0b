"""The `ditkit` command: argparse over the library, one library call per subcommand.

Exit codes: 0 done; 2 bad input (one line on stderr naming the value and the fix); 3 training stopped on
a non-finite loss; 130 / 143 interrupted by SIGINT / SIGTERM after writing a checkpoint. Library modules
are imported inside the handlers so that `ditkit --help` does not import torch (~2 s).
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

from ditkit.config import BLOCK_DESIGNS, PRECISIONS, PRESETS, SAMPLERS  # config imports no torch

EXIT_USAGE = 2  # the other codes: ditkit.stopping


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (value + fix) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _sample_config(args: argparse.Namespace, base: Any) -> Any:
    fields = _given(args, "sampler", "num_steps", "cfg_scale", "eta", "batch_size", "precision", "compile")
    if args.cfg_channels is not None:
        fields["cfg_channels"] = "all" if args.cfg_channels == "all" else int(args.cfg_channels)
    return base.replace(**fields, **({"clip_denoised": args.clip} if args.clip is not None else {}))


def _open(args: argparse.Namespace, device: Any) -> Any:
    from ditkit.run import open_for_sampling

    return open_for_sampling(args.ckpt, vae=args.vae, device=device, num_heads=args.num_heads)


def _sample(args: argparse.Namespace) -> None:
    from ditkit import distributed
    from ditkit.classes import parse_classes
    from ditkit.config import IMAGE_SAMPLING
    from ditkit.generate import assemble_npz, generate, image_seeds, sample_npz
    from ditkit.grid import save_labelled_grid

    config = _sample_config(args, IMAGE_SAMPLING)
    info = distributed.init(args.device)
    opened = _open(args, info.device)
    model, num_classes = opened.model, opened.model.config.num_classes
    common = {"diffusion": opened.diffusion, "vae": opened.vae, "device": info.device}
    if args.num is not None:
        npz = Path(args.npz or Path(args.out) / "samples.npz")
        sample_npz(model, npz, args.num, config, seed=args.seed, class_balanced=args.class_balanced,
                   rank=info.rank, world_size=info.world_size, progress=info.is_main, **common)  # fmt: skip
        distributed.barrier()
        if info.is_main:
            print(f"wrote {assemble_npz(npz)}")
        distributed.shutdown()
        return
    classes = parse_classes(args.classes, num_classes) if num_classes else [0]
    labels = [c for c in classes for _ in range(args.per_class)]
    images = generate(model, labels if num_classes else None, image_seeds(args.seed, len(labels)), config,
                      progress=True, **common)  # fmt: skip
    path = save_labelled_grid(images, labels, args.out, nrow=args.per_class, num_classes=num_classes)
    print(f"wrote {len(images)} images and the grid {path}")


def _walk(args: argparse.Namespace) -> None:
    from ditkit.classes import parse_classes
    from ditkit.config import WALK_SAMPLING
    from ditkit.distributed import resolve_device
    from ditkit.walk import class_walk, noise_walk, save_walk

    config = _sample_config(args, WALK_SAMPLING)
    opened = _open(args, resolve_device(args.device))
    num_classes = opened.model.config.num_classes
    classes = parse_classes(args.classes, num_classes) if num_classes else [None, None]
    seeds = [int(s) for s in args.seeds.split(",")]
    common = {"diffusion": opened.diffusion, "vae": opened.vae}
    if args.kind in ("noise", "both"):
        frames = noise_walk(opened.model, classes[0], seeds[0], seeds[-1], args.frames, config, **common)
        print("noise walk:", ", ".join(str(p) for p in save_walk(frames, args.out, "noise_walk").values()))
    if args.kind in ("class", "both"):
        if len(classes) < 2:
            raise ValueError("a class walk needs two classes: --classes A,B")
        frames = class_walk(opened.model, classes[0], classes[1], seeds[0], args.frames, config, **common)
        print("class walk:", ", ".join(str(p) for p in save_walk(frames, args.out, "class_walk").values()))


_TRAIN_FIELDS = ("image_size", "vae", "max_steps", "global_batch_size", "micro_batch_size", "lr", "warmup_steps",
                 "max_grad_norm", "ema_decay", "ckpt_every_steps", "log_every_steps", "sample_every_steps",
                 "eval_every_steps", "num_eval_samples", "seed", "precision", "num_workers", "device",
                 "flip")  # fmt: skip


def _train(args: argparse.Namespace) -> None:
    from ditkit.run import build_train_config
    from ditkit.train import train

    fields = _given(args, *_TRAIN_FIELDS)
    fields.update({f: True for f in ("deterministic", "compile", "grad_checkpointing") if getattr(args, f)})
    model = _given(args, "block", "num_classes", "learn_sigma", "num_heads")
    cfg = build_train_config(args.out, data=args.data, preset=args.preset, model_overrides=model, **fields)
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=1))
        return
    print(f"run folder: {train(cfg)}")


def _evaluate(args: argparse.Namespace) -> None:
    from ditkit.distributed import resolve_device
    from ditkit.scoring import score_samples

    result = score_samples(args.samples, metric=args.metric, ref=args.ref, inception=args.inception,
                           allow_download=args.allow_download, device=resolve_device(args.device),
                           batch_size=args.batch_size)  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>20}: {value:.4f}" if isinstance(value, float) else f"{key:>20}: {value}")


def _ref_stats(args: argparse.Namespace) -> None:
    from ditkit.distributed import resolve_device
    from ditkit.evaluate import ref_stats
    from ditkit.scoring import feature_extractor

    extractor = feature_extractor(args.metric, inception=args.inception, allow_download=args.allow_download,
                                  device=resolve_device(args.device))  # fmt: skip
    print(f"wrote {ref_stats(args.source, extractor, args.out, batch_size=args.batch_size)}")


def _extract_latents(args: argparse.Namespace) -> None:
    from ditkit import distributed
    from ditkit.autoencoder import load_vae
    from ditkit.latents import extract_latents, store_progress
    from ditkit.loader import open_dataset

    info = distributed.init(args.device)
    vae = load_vae(args.vae, info.device)
    if vae is None:
        raise ValueError("extract-latents needs a VAE: --vae FOLDER_OR_HUB_ID (e.g. stabilityai/sd-vae-ft-ema)")
    dataset = open_dataset(args.data, args.image_size, flip=False)
    extract_latents(dataset, vae, args.out, batch_size=args.batch_size, rank=info.rank, world_size=info.world_size,
                    device=info.device, num_workers=args.num_workers)  # fmt: skip
    distributed.barrier()
    if info.is_main:
        written, total = store_progress(args.out)
        print(f"latent store {args.out}: {written}/{total} images")
    distributed.shutdown()


def _demo(args: argparse.Namespace) -> None:
    from ditkit.demo import run_demo, summary

    report = run_demo(args.out, num_samples=args.num_samples, **_given(args, "max_steps", "precision"))
    print(summary(report, args.out))


def _flops(args: argparse.Namespace) -> None:
    from ditkit.flops import costs_table

    print(costs_table(args.preset, image_size=args.image_size, block=args.block, as_json=args.json))


def _presets(args: argparse.Namespace) -> None:
    print("\n".join(f"{name} {json.dumps(dataclasses.asdict(cfg))}" for name, cfg in PRESETS.items()))


def _classes(args: argparse.Namespace) -> None:
    from ditkit.classes import imagenet_class_names

    found = [f"{i} {n}" for i, n in enumerate(imagenet_class_names()) if (args.search or "").lower() in n.lower()]
    print("\n".join(found))


def _export(args: argparse.Namespace) -> None:
    from ditkit.checkpoint import export_ema

    print(f"wrote {export_ema(args.run, args.out)}")


def _bench(args: argparse.Namespace) -> None:
    from ditkit.bench import format_report, run_bench
    from ditkit.files import write_json

    result = run_bench(args.preset, image_size=args.image_size, batch_size=args.batch_size,
                       sample_batch=args.sample_batch, device=args.device, precision=args.precision,
                       compile=args.compile, steps=args.steps, what=tuple(args.what.split(",")))  # fmt: skip
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, indent=1) if args.json else format_report(result))


def build_parser() -> argparse.ArgumentParser:
    from ditkit import __version__
    from ditkit.cli_flags import add_flags

    parser = _Parser(prog="ditkit", description="Diffusion Transformers: train, sample, evaluate, study.")
    parser.add_argument("--version", action="version", version=f"ditkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    handlers: dict[str, Callable[[argparse.Namespace], None]] = {
        "flops": _flops, "presets": _presets, "classes": _classes, "sample": _sample, "walk": _walk,
        "train": _train, "export": _export, "extract-latents": _extract_latents, "evaluate": _evaluate,
        "ref-stats": _ref_stats, "demo": _demo, "bench": _bench,
    }  # fmt: skip
    add_flags(sub, handlers, presets=list(PRESETS), blocks=BLOCK_DESIGNS, samplers=SAMPLERS, precisions=PRECISIONS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        args.fn(args)
    except (ValueError, TypeError, OSError) as err:
        if args.verbose:
            raise
        print(f"ditkit {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as err:  # ditkit.stopping.TrainingStopped carries its documented exit code
        code = getattr(err, "exit_code", None)
        if code is None or args.verbose:
            raise
        print(f"ditkit {args.command}: {_one_line(err)}", file=sys.stderr)
        return int(code)
    except KeyboardInterrupt:
        print(f"ditkit {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
