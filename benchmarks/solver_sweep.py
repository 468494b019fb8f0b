"""Which sampler and how many steps match 250-step DDPM: measured on a trained small model, then priced for
FID-50K of DiT-XL/2 on one GPU.

Samples the same class-balanced labels and seeds with 250-step DDPM (the paper's sampler: the reference) and
with DPM-Solver++(2M) and DDIM at fewer steps, at one guidance scale, and scores each set with the digit
classifier (accuracy and the Frechet distance in its features, "FD"). A second set of seeds for the reference
and one solver gives the seed-to-seed noise of FD at this sample count. The GPU cost of 50K XL/2 samples comes
from a measured seconds-per-image-step (`--gpu-s-per-image-step`, with guidance; default: the H200 figure of
benchmarks/results/h200-sampling.json, bf16 + compile at batch 128).

    python benchmarks/solver_sweep.py --run runs/demo --num 1000 --json benchmarks/results/solver-sweep.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ditkit.config import SampleConfig
from ditkit.config.recipes import DEMO_REPORT_IMAGE_SIZE
from ditkit.data.datasets import frame_digits
from ditkit.metrics.digit_classifier import digits_metrics, load_digit_classifier
from ditkit.runtime.seeds import image_seeds
from ditkit.sampling.generate import generate, job_labels
from ditkit.training.run import open_for_sampling

CANDIDATES = [
    ("ddpm", 250),
    ("dpm++2m", 10),
    ("dpm++2m", 15),
    ("dpm++2m", 20),
    ("dpm++2m", 25),
    ("ddim", 25),
    ("ddim", 50),
]
H200_S_PER_IMAGE_STEP = 0.032610731120000194 / 32  # bf16 + compile, 128-image batches (256 rows with guidance)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a trained ditkit run folder (the demo's)")
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--cfg-scale", type=float, default=1.5)
    parser.add_argument("--gpu-s-per-image-step", type=float, default=H200_S_PER_IMAGE_STEP)
    parser.add_argument("--json")
    args = parser.parse_args()
    opened = open_for_sampling(args.run)
    base = json.loads((Path(args.run) / "config.json").read_text())["sample"]
    classifier = load_digit_classifier()
    labels = job_labels(args.num, 10, 0, class_balanced=True)
    rows = []
    for seed in (0, 1):
        for sampler, steps in CANDIDATES if seed == 0 else [("ddpm", 250), ("dpm++2m", 20)]:
            config = SampleConfig(
                **{
                    **base,
                    "sampler": sampler,
                    "num_steps": steps,
                    "cfg_scale": args.cfg_scale,
                    "batch_size": 250,
                    "precision": "fp32",
                }
            )
            t0 = time.perf_counter()
            images = generate(
                opened.model,
                labels.tolist(),
                image_seeds(100 + seed, args.num),
                config,
                diffusion=opened.diffusion,
                vae=opened.vae,
            )
            metrics = digits_metrics(frame_digits(images, DEMO_REPORT_IMAGE_SIZE), labels, classifier)
            row = {
                "sampler": sampler,
                "steps": steps,
                "seed": seed,
                "accuracy": metrics["accuracy"],
                "fd": metrics["fd"],
                "cpu_seconds": round(time.perf_counter() - t0, 1),
                "gpu_minutes_50k_xl2": 50_000 * steps * args.gpu_s_per_image_step / 60,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                Path(args.json).write_text(
                    json.dumps({"num": args.num, "cfg_scale": args.cfg_scale, "rows": rows}, indent=1) + "\n"
                )


if __name__ == "__main__":
    main()
