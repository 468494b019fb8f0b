"""Where a bf16 + compile training step of DiT-XL/2 spends its GPU time (torch.profiler, kernel table).

Groups kernels by kind (GEMM, attention, elementwise/fused triton, reductions, optimizer, copies) and
prints their share of the step's GPU time, then the 20 most expensive kernels.

    python benchmarks/gpu_profile_train.py --batch-size 256 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import re
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from ditkit.config import DiffusionConfig, get_preset
from ditkit.diffusion.gaussian import diffusion_from_config
from ditkit.model.dit import DiT
from ditkit.training.step import train_step, update_ema

GROUPS = [
    ("gemm", r"gemm|cutlass|sm90_xmma|nvjet|cublas|matmul"),
    ("attention", r"flash|fmha|attention|sdpa"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("triton (fused elementwise/norm)", r"triton"),
    ("reductions", r"reduce"),
    ("copies/casts", r"copy|cast|cat"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="DiT-XL/2")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    config = get_preset(args.preset)
    model = DiT(config).to(device).train()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0, fused=True)
    diffusion = diffusion_from_config(DiffusionConfig())
    net = model if args.no_compile else torch.compile(model)
    x = torch.randn(args.batch_size, 4, 32, 32, device=device)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)
    generator = torch.Generator(device).manual_seed(0)

    def step() -> None:
        train_step(net, diffusion, opt, x, y, generator=generator, autocast_dtype=torch.bfloat16)
        update_ema(ema, model, 0.9999)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if getattr(e, "self_device_time_total", 0) > 0]
    total = sum(e.self_device_time_total for e in kernels) or 1.0
    shares: dict[str, float] = {name: 0.0 for name, _ in GROUPS}
    shares["other"] = 0.0
    for e in kernels:
        group = next((name for name, pattern in GROUPS if re.search(pattern, e.key, re.I)), "other")
        shares[group] += e.self_device_time_total / total
    top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:20]
    report = {
        "preset": args.preset,
        "batch_size": args.batch_size,
        "compile": not args.no_compile,
        "gpu_ms_per_step": total / 2 / 1e3,
        "shares": shares,
        "top": [(e.key[:90], round(e.self_device_time_total / total, 4), e.count) for e in top],
    }
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
