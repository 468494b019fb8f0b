"""The `ditkit` command: argparse over the library, one library call per subcommand.

Exit codes: 0 done; 2 bad input (one line on stderr naming the value, the fix and the flag at fault); 3
training stopped on a non-finite loss, gradient or state; 70 an internal error, i.e. a bug (the traceback,
then one line); 130 / 143 interrupted by SIGINT / SIGTERM after writing a checkpoint
(ditkit.runtime.stopping.exit_status). Outputs are never replaced without --overwrite. Library modules
are imported inside the handlers so that `ditkit --help` does not import torch (~2 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ditkit.config import BLOCK_DESIGNS, PRECISIONS, PRESETS, SAMPLERS, SampleConfig, for_process  # no torch
from ditkit.runtime.errors import InputError  # no torch either

if TYPE_CHECKING:  # annotations only: the CLI imports torch inside its handlers
    import torch

    from ditkit.sampling.generate import SamplingModel

EXIT_USAGE = 2  # the other codes: ditkit.runtime.stopping


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (value + fix) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _sample_config(args: argparse.Namespace, base: SampleConfig) -> SampleConfig:
    fields = _given(args, "sampler", "num_steps", "cfg_scale", "eta", "batch_size", "precision", "compile")
    fields |= _given(args, "sde_diffusion_form") | ({"clip_denoised": args.clip} if args.clip is not None else {})
    if args.cfg_channels is not None:
        fields["cfg_channels"] = "all" if args.cfg_channels == "all" else int(args.cfg_channels)
    if args.sde_last_step is not None:
        fields["sde_last_step"] = None if args.sde_last_step == "none" else args.sde_last_step
    return base.replace(**fields)


def _open(args: argparse.Namespace, device: torch.device | str) -> SamplingModel:
    from ditkit.training.run import open_for_sampling

    return open_for_sampling(args.ckpt, vae=args.vae, device=device, num_heads=args.num_heads, objective=args.objective)


def _sample(args: argparse.Namespace) -> None:
    from ditkit.config import IMAGE_SAMPLING
    from ditkit.data.class_names import parse_classes
    from ditkit.runtime import distributed
    from ditkit.sampling.generate import sample_grid, sample_npz_job

    config = _sample_config(args, IMAGE_SAMPLING)
    npz = Path(args.npz or Path(args.out) / "samples.npz") if args.num is not None else None
    _outputs(args, npz or Path(args.out) / "grid.png")
    if npz is None and (Path(args.out) / "images").exists() and not args.overwrite:  # the grid replaces it whole
        images = str(Path(args.out) / "images")
        raise InputError(f"output {images!r} exists; pass overwrite=True to replace it", setting="overwrite")
    info = distributed.init(args.device)
    opened = _open(args, info.device)
    config = for_process(config, opened.diffusion, given=_given(args, "sampler", "num_steps"))  # a flow run's own
    if npz is not None:
        job = {"seed": args.seed, "class_balanced": args.class_balanced, "overwrite": args.overwrite}
        written = sample_npz_job(opened, npz, args.num, config, info, **job)
        if written is not None:
            print(f"wrote {written}")
        return
    num_classes = opened.model.config.num_classes
    classes = parse_classes(args.classes, num_classes, opened.class_names) if num_classes else [0]
    path, count = sample_grid(opened, args.out, classes, args.per_class, config, seed=args.seed)
    print(f"wrote {count} images and the grid {path}")


def _walk(args: argparse.Namespace) -> None:
    from ditkit.config import WALK_SAMPLING
    from ditkit.data.class_names import parse_classes
    from ditkit.runtime.distributed import resolve_device
    from ditkit.sampling.walk import make_walks

    kinds = tuple(k for k in ("noise", "class") if args.kind in (k, "both"))
    _outputs(args, *(Path(args.out) / f"{k}_walk{suffix}" for k in kinds for suffix in (".gif", "_strip.png")))
    opened = _open(args, resolve_device(args.device))
    num_classes = opened.model.config.num_classes
    classes = parse_classes(args.classes, num_classes, opened.class_names) if num_classes else None
    config = for_process(
        _sample_config(args, WALK_SAMPLING), opened.diffusion, given=_given(args, "sampler", "num_steps")
    )
    made = make_walks(
        opened.model,
        args.out,
        kinds=kinds,
        classes=classes,
        seeds=args.seeds,
        num_frames=args.frames,
        config=config,
        diffusion=opened.diffusion,
        vae=opened.vae,
    )
    for kind, paths in made.items():
        print(f"{kind} walk:", ", ".join(str(p) for p in paths.values()))


_TRAIN_FIELDS = (
    "image_size",
    "vae",
    "max_steps",
    "global_batch_size",
    "micro_batch_size",
    "lr",
    "warmup_steps",
    "max_grad_norm",
    "ema_decay",
    "ema_warmup",
    "ckpt_every_steps",
    "log_every_steps",
    "sample_every_steps",
    "eval_every_steps",
    "num_eval_samples",
    "seed",
    "precision",
    "num_workers",
    "device",
    "flip",
    "eval_ref",
)


def _train(args: argparse.Namespace) -> None:
    from ditkit.training.loop import train
    from ditkit.training.run import build_train_config

    fields = _given(args, *_TRAIN_FIELDS)
    fields.update({f: True for f in ("deterministic", "compile", "grad_checkpointing") if getattr(args, f)})
    model = _given(args, "block", "num_classes", "learn_sigma", "num_heads", "depth", "hidden_size", "patch_size")
    diffusion = _given(args, "noise_schedule", "objective", "path", "prediction", "loss_weight")
    diffusion |= {"predict_xstart": args.predict == "x0"} if args.predict else {}
    cfg = build_train_config(
        args.out,
        data=args.data,
        preset=args.preset,
        recipe=args.recipe,
        model_overrides=model,
        diffusion_overrides=diffusion,
        **fields,
    )
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=1))
        return
    print(f"run folder: {train(cfg)}")


def _evaluate(args: argparse.Namespace) -> None:
    from ditkit.metrics.scoring import format_scores, score_samples
    from ditkit.runtime.distributed import resolve_device

    result = score_samples(
        args.samples,
        metric=args.metric,
        ref=args.ref,
        inception=args.inception,
        allow_download=args.allow_download,
        device=resolve_device(args.device),
        batch_size=args.batch_size,
        resize=args.resize,
    )
    print(json.dumps(result) if args.json else format_scores(result))


def _ref_stats(args: argparse.Namespace) -> None:
    from ditkit.data.image_files import open_images
    from ditkit.metrics.evaluate import ref_stats
    from ditkit.metrics.scoring import feature_extractor
    from ditkit.runtime.distributed import resolve_device

    _outputs(args, args.out)
    images = open_images(args.source)  # a missing, empty or unreadable set fails here, before the network loads
    extractor = feature_extractor(
        args.metric,
        inception=args.inception,
        allow_download=args.allow_download,
        device=resolve_device(args.device),
        resize=args.resize,
    )
    ref_stats(images, extractor, args.out, batch_size=args.batch_size)  # logs what it wrote


def _extract_latents(args: argparse.Namespace) -> None:
    from ditkit.data.latent_store import extract_latents_job, extraction_image_size
    from ditkit.data.loader import open_dataset
    from ditkit.runtime.files import check_output_dir

    check_output_dir(args.out)  # a file, or a folder that cannot be written: before any data or VAE
    image_size = extraction_image_size(args.data, args.image_size, args.vae)  # the data's own unless given
    dataset = open_dataset(args.data, image_size, flip=False)  # the cheap checks first
    progress = extract_latents_job(
        dataset, args.vae, args.out, batch_size=args.batch_size, num_workers=args.num_workers, device=args.device
    )
    if progress is not None:
        print(f"latent store {args.out}: {progress[0]}/{progress[1]} images")


def _demo(args: argparse.Namespace) -> None:
    from ditkit.apps.demo import run_demo, run_latent_demo, summary

    options = _given(args, "max_steps", "precision", "objective") | (
        {"train_autoencoder": True} if args.train_vae else {}
    )
    report = (run_latent_demo if args.route == "latent" else run_demo)(
        args.out, num_samples=args.num_samples, **options
    )
    print(summary(report, args.out))


def _study(args: argparse.Namespace) -> None:
    from ditkit.apps.study import run_study
    from ditkit.apps.study_spec import load_spec
    from ditkit.apps.study_tables import ranking_line

    spec = load_spec(args.spec)
    results = run_study(spec, args.out, max_steps=args.max_steps, seeds=args.seeds, source=args.spec)
    print(f"study {results['study']}: {args.out}/results.md; {ranking_line(results)}")


def _train_vae(args: argparse.Namespace) -> None:
    from ditkit.training.autoencoder_training import train_vae, vae_train_config

    fields = _given(args, "data", "image_size", "max_steps", "batch_size", "lr", "kl_weight", "seed", "device")
    print(f"VAE folder: {train_vae(vae_train_config(args.out, **fields))}")


def _flops(args: argparse.Namespace) -> None:
    from ditkit.model.flops import costs_table

    print(costs_table(args.preset, image_size=args.image_size, block=args.block, as_json=args.json))


def _presets(args: argparse.Namespace) -> None:
    print("\n".join(f"{name} {json.dumps(dataclasses.asdict(cfg))}" for name, cfg in PRESETS.items()))


def _classes(args: argparse.Namespace) -> None:
    from ditkit.data.class_names import imagenet_class_names

    print(
        "\n".join(f"{i} {n}" for i, n in enumerate(imagenet_class_names()) if (args.search or "").lower() in n.lower())
    )


def _export(args: argparse.Namespace) -> None:
    from ditkit.interop.diffusers_format import export_diffusers
    from ditkit.training.checkpoint import export_ema

    _outputs(args, *([args.out] if args.format == "safetensors" else []))
    out = export_diffusers(args.run, args.out, vae=args.vae) if args.format == "diffusers" else None
    print(f"wrote {out or export_ema(args.run, args.out)}")


def _import(args: argparse.Namespace) -> None:
    from ditkit.interop.diffusers_format import import_weights

    _outputs(args, args.out)
    print(f"wrote {import_weights(args.source, args.out, num_classes=args.num_classes)}")


def _bench(args: argparse.Namespace) -> None:
    from ditkit.apps.bench import format_report, run_bench

    _outputs(args, *([args.out] if args.out else []))
    options = _given(args, "image_size", "batch_size", "sample_batch", "device", "precision", "compile", "steps", "out")
    result = run_bench(args.preset, what=tuple(args.what.split(",")), **options)
    print(json.dumps(result, indent=1) if args.json else format_report(result))


def _serve(args: argparse.Namespace) -> None:
    from ditkit.apps.serve import serve

    options = _given(args, "num_heads", "objective")
    serve(args.ckpt, vae=args.vae, host=args.host, port=args.port, device=args.device, **options)


def build_parser() -> argparse.ArgumentParser:
    from ditkit import __version__
    from ditkit.cli.flags import add_flags

    parser = _Parser(prog="ditkit", description="Diffusion Transformers: train, sample, evaluate, study.")
    parser.add_argument("--version", action="version", version=f"ditkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    handlers: dict[str, Callable[[argparse.Namespace], None]] = {
        "flops": _flops,
        "presets": _presets,
        "classes": _classes,
        "sample": _sample,
        "walk": _walk,
        "train": _train,
        "export": _export,
        "extract-latents": _extract_latents,
        "evaluate": _evaluate,
        "ref-stats": _ref_stats,
        "demo": _demo,
        "bench": _bench,
        "import": _import,
        "serve": _serve,
        "train-vae": _train_vae,
        "study": _study,
    }
    add_flags(sub, handlers, presets=list(PRESETS), blocks=BLOCK_DESIGNS, samplers=SAMPLERS, precisions=PRECISIONS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    logging.raiseExceptions = args.verbose  # e.g. a full disk under log.txt: no logging tracebacks
    if not args.verbose:
        _quiet_libraries()
    try:
        args.fn(args)
    except (Exception, KeyboardInterrupt) as err:
        return _report(err, args, parser)
    return 0


_CHATTY = ("huggingface_hub", "diffusers", "transformers", "urllib3", "httpx", "filelock")


def _quiet_libraries() -> None:
    """No third-party retry, warning or progress-bar chatter on a command's stderr (ditkit's own lines stay;
    --verbose keeps them). The libraries set their levels when imported, so the environment tells them too."""
    for name in ("HF_HUB_VERBOSITY", "DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):
        os.environ.setdefault(name, "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(huggingface_hub|diffusers|transformers)(\.|$)")
    if (hub_tqdm := sys.modules.get("huggingface_hub.utils")) is not None:  # imported before: read its env then
        hub_tqdm.disable_progress_bars()
    if (diffusers_logging := sys.modules.get("diffusers.utils.logging")) is not None:
        diffusers_logging.disable_progress_bar()


def _report(err: BaseException, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Bad input and stopped runs: one line (naming the flag of the setting at fault) and their exit code; any
    other exception is a bug: its traceback, one line saying so, and EXIT_BUG (never the bad-input code)."""
    from ditkit.cli.flags import flag_of
    from ditkit.runtime.stopping import EXIT_BUG, exit_status, one_line

    inputs = [str(v) for k, v in vars(args).items() if k in _INPUT_ARGS and v]
    status = exit_status(err, inputs)
    if status is None or args.verbose:
        traceback.print_exception(err, file=sys.stderr)
    if status is None:
        print(
            f"ditkit {args.command}: internal error (a bug in ditkit; please report it with the traceback above): "
            f"{type(err).__name__}: {one_line(err)}",
            file=sys.stderr,
        )
        return EXIT_BUG
    code, line = status
    flag = flag_of(_subcommand(parser, args.command), getattr(err, "setting", None)) if code == EXIT_USAGE else None
    print(f"ditkit {args.command}: {line}" + (f" ({flag})" if flag and flag not in line else ""), file=sys.stderr)
    return code


def _subcommand(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


_INPUT_ARGS = ("ckpt", "data", "ref", "samples", "source", "run")  # named when a damaged input file names none


def _outputs(args: argparse.Namespace, *paths: str | Path) -> None:
    """Refuse before any work: output paths that exist (without --overwrite), are folders or lie under a file."""
    from ditkit.runtime.files import check_outputs

    check_outputs(paths, overwrite=getattr(args, "overwrite", False))


if __name__ == "__main__":
    sys.exit(main())
