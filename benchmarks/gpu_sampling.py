"""Sampling speed per step on one GPU: the official sample.py loop against `ditkit.sampling.generate`, same weights.

DiT-XL/2 (random weights, 256 px latents), 32 images with classifier-free guidance (64 network rows,
cfg 4 on 3 channels as sample.py), DDPM with the learned variance. Each variant samples `--steps` respaced
steps after a warm-up call; the figure is seconds per step (and img/s at 250 steps). Needs a checkout of
facebookresearch/DiT (--official; not part of ditkit) with timm importable.

    python benchmarks/gpu_sampling.py --official /path/to/DiT --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch

from ditkit.config import BENCH_SAMPLING, DiffusionConfig, get_preset
from ditkit.model.dit import DiT
from ditkit.runtime.seeds import image_seeds
from ditkit.sampling.generate import generate


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", required=True)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=25, help="respaced DDPM steps timed per variant")
    parser.add_argument("--preset", default="DiT-XL/2")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script (use a small --preset)")
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device(args.device)
    sys.path.insert(0, str(Path(args.official).resolve()))
    sys.path.insert(0, str(Path(__file__).parent))
    from official_vs_ditkit import _torchvision_standin

    _torchvision_standin()
    from diffusion import create_diffusion  # the official ADM code
    from models import DiT_models

    torch.manual_seed(0)
    official = DiT_models[args.preset](input_size=32).to(device).eval()
    for p in official.parameters():
        p.data.normal_(0, 0.02)  # no exactly-zero output layer: a realistic amount of work in every op
    ours = DiT(get_preset(args.preset)).to(device).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    n, results = args.images, {}

    # Official sample.py: TF32 on (it sets both flags), fp32 weights, forward_with_cfg on a doubled batch.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    diffusion = create_diffusion(str(args.steps))
    y = torch.randint(0, 1000, (n,), device=device)
    z = torch.randn(n, 4, 32, 32, device=device)

    def official_loop() -> None:
        with torch.no_grad():
            diffusion.p_sample_loop(
                official.forward_with_cfg,
                (2 * n, 4, 32, 32),
                torch.cat([z, z]),
                clip_denoised=False,
                model_kwargs={"y": torch.cat([y, torch.full_like(y, 1000)]), "cfg_scale": 4.0},
                device=device,
            )

    official_loop()
    results["official_tf32"] = _timed(official_loop, device) / args.steps
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    base = BENCH_SAMPLING.replace(num_steps=args.steps, cfg_channels=3, batch_size=n)  # the official sample.py
    for name, config in (
        ("ditkit_default", base),  # precision "auto" = bf16 autocast + TF32 on CUDA
        ("ditkit_fp32", base.replace(precision="fp32")),
        ("ditkit_tf32", base.replace(precision="tf32")),
        ("ditkit_bf16_compile", base.replace(precision="bf16", compile=True)),
        ("ditkit_bf16_compile_batch128", base.replace(precision="bf16", compile=True, batch_size=128)),
    ):
        count = 128 if name.endswith("128") else n
        run = partial(
            generate,
            ours,
            [i % 1000 for i in range(count)],
            image_seeds(0, count),
            config,
            diffusion=DiffusionConfig(),
            device=device,
        )
        run()  # warm-up (and compile)
        results[name] = _timed(run, device) / args.steps / (count / n)  # seconds per step for n images
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "images": n,
        "s_per_step": results,
        "img_per_s_250_steps": {k: n / (v * 250) for k, v in results.items()},
        "speedup_vs_official": {k: results["official_tf32"] / v for k, v in results.items()},
    }
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
