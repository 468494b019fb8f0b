"""ditkit's training step (and sampling step) against the official DiT code, interleaved in one process.

The host drifts (up to 1.5x within an hour on the CPU machines), so absolute times mean little: every round
times one official step, then one ditkit step (order swapped on odd rounds), and the result is the median
of the per-round ratios. On a CPU, a round counts only when the process had the cores to itself
(CPU utilisation >= 0.9 of the threads); a 2048^2 matmul probe runs each round for context.

The official code is not part of ditkit (CC BY-NC): pass a checkout of facebookresearch/DiT (commit
ed81ce2) with --official. It imports timm, which imports torchvision; beside torch 2.13 on a CPU machine
torchvision cannot import, so an import-only stand-in for torchvision is installed when it is missing
(DiT uses timm's PatchEmbed, Attention and Mlp, which never touch torchvision). Install timm with
`pip install --no-deps timm pyyaml`.

    python benchmarks/official_vs_ditkit.py --official /path/to/DiT --preset DiT-S/2 --batch-size 32 \\
        --threads 2 --rounds 7 --json benchmarks/results/cpu-train-s2.json
"""

from __future__ import annotations

import argparse
import copy
import importlib.abc
import importlib.machinery
import json
import statistics
import sys
import time
import types
from collections import OrderedDict
from pathlib import Path

import torch


def _torchvision_standin() -> None:
    """Make `import torchvision.*` succeed with placeholder modules (only when the real one cannot import)."""
    try:
        import torchvision  # noqa: F401

        return
    except Exception:
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]

    class Meta(type):
        def __getattr__(cls, attr: str) -> object:  # InterpolationMode.NEAREST and the like: distinct values
            if attr.startswith("__"):
                raise AttributeError(attr)
            value = Meta(attr, (Placeholder,), {})
            setattr(cls, attr, value)
            return value

    class Placeholder(metaclass=Meta):
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path, target=None):
            if fullname == "torchvision" or fullname.startswith("torchvision."):
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec):
            module = types.ModuleType(spec.name)
            module.__path__ = []  # a package, so any submodule imports

            def __getattr__(attr: str) -> object:
                if attr.startswith("__"):
                    raise AttributeError(attr)
                return type(attr, (Placeholder,), {})

            module.__getattr__ = __getattr__  # type: ignore[attr-defined]
            return module

        def exec_module(self, module):
            pass

    sys.meta_path.insert(0, Finder())


def _cpu_seconds() -> float:
    t = time.process_time()
    return t


def _probe(device: torch.device) -> float:
    """GFLOP/s of a 2048^2 fp32 matmul (TF32 as currently set on CUDA)."""
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    torch.mm(a, b)
    _sync(device)
    t0 = time.perf_counter()
    torch.mm(a, b)
    _sync(device)
    return 2 * 2048**3 / (time.perf_counter() - t0) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def official_step_fn(args: argparse.Namespace, device: torch.device, x: torch.Tensor, y: torch.Tensor):
    sys.path.insert(0, str(Path(args.official).resolve()))
    _torchvision_standin()
    from diffusion import create_diffusion  # the official ADM code
    from models import DiT_models

    torch.manual_seed(0)
    model = DiT_models[args.preset](input_size=args.latent_size, num_classes=1000).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    diffusion = create_diffusion(timestep_respacing="")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)  # train.py: torch's default impl
    model.train()

    def update_ema(decay: float = 0.9999) -> None:  # train.py's loop, verbatim in effect
        ema_params = OrderedDict(ema.named_parameters())
        for name, param in model.named_parameters():
            ema_params[name].mul_(decay).add_(param.data, alpha=1 - decay)

    def step() -> float:
        t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.official_bf16):
            loss = diffusion.training_losses(model, x, t, {"y": y})["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            update_ema()
        return loss.item()

    return step, model


def ditkit_step_fn(args: argparse.Namespace, device: torch.device, x: torch.Tensor, y: torch.Tensor):
    from ditkit.config import DiffusionConfig, get_preset
    from ditkit.diffusion.gaussian import diffusion_from_config
    from ditkit.model.dit import DiT
    from ditkit.runtime import backend
    from ditkit.training.step import train_step, update_ema

    config = get_preset(args.preset, input_size=args.latent_size)
    torch.manual_seed(0)
    model = DiT(config).to(device).train()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    diffusion = diffusion_from_config(DiffusionConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0, fused=True)
    precision = backend.resolve_precision(args.precision, device)
    net = torch.compile(model) if args.compile else model
    generator = torch.Generator(device).manual_seed(0)

    def step() -> float:
        stats = train_step(
            net, diffusion, opt, x, y, generator=generator, autocast_dtype=backend.autocast_dtype(precision)
        )
        update_ema(ema, model, 0.9999)
        return float(stats["loss"])

    return step, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", required=True, help="a checkout of facebookresearch/DiT")
    parser.add_argument("--preset", default="DiT-S/2")
    parser.add_argument("--latent-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", help="ditkit's: auto, fp32, tf32, bf16")
    parser.add_argument("--official-bf16", action="store_true", help="autocast the official step too")
    parser.add_argument("--compile", action="store_true", help="torch.compile ditkit's model")
    parser.add_argument("--tf32", action="store_true", help="TF32 matmuls for both (official train.py sets it)")
    parser.add_argument("--min-util", type=float, default=0.9, help="CPU rounds below this utilisation are dropped")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    x = torch.randn(args.batch_size, 4, args.latent_size, args.latent_size, device=device)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)
    steps = {"official": official_step_fn(args, device, x, y)[0], "ditkit": ditkit_step_fn(args, device, x, y)[0]}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    ratios, probes, dropped = [], [], 0
    for r in range(args.rounds):
        order = list(steps) if r % 2 == 0 else list(steps)[::-1]
        this_round = {}
        clean = True
        for name in order:
            _sync(device)
            c0, t0 = _cpu_seconds(), time.perf_counter()
            steps[name]()
            _sync(device)
            wall = time.perf_counter() - t0
            util = (_cpu_seconds() - c0) / (wall * args.threads)
            clean &= device.type != "cpu" or util >= args.min_util
            this_round[name] = wall
        probes.append(_probe(device))
        if not clean:
            dropped += 1
            continue
        for name, wall in this_round.items():
            times[name].append(wall)
        ratios.append(this_round["official"] / this_round["ditkit"])
        print(
            f"round {r}: official {this_round['official']:.3f} s, ditkit {this_round['ditkit']:.3f} s, "
            f"ratio {ratios[-1]:.3f}",
            flush=True,
        )
    if not ratios:
        raise SystemExit("no clean round: the machine was busy throughout; rerun when it is quieter")
    result = {
        "preset": args.preset,
        "batch_size": args.batch_size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "threads": args.threads,
        "precision": args.precision,
        "compile": args.compile,
        "official_s_per_step": statistics.median(times["official"]),
        "ditkit_s_per_step": statistics.median(times["ditkit"]),
        "speedup_median_paired": statistics.median(ratios),
        "ratios": ratios,
        "clean_rounds": len(ratios),
        "dropped_rounds": dropped,
        "probe_gflop_s_median": statistics.median(probes),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "cpu"


if __name__ == "__main__":
    main()
