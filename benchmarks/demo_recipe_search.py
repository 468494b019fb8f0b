"""Search the CPU demo's recipe on a GPU: the same training and scoring as `ditkit demo`, many variants in one go.

A recipe's accuracy does not depend on the device (up to rounding), so variants are compared on a GPU in
seconds each; the chosen one is then timed on the 2-core CPU. Each variant trains from scratch (fp32 on the
GPU, as on the CPU), samples 1,000 class-balanced digits with guidance (scale 3) and 1,000 without
(DPM-Solver++(2M), --sample-steps), and scores them with ditkit's digit classifier.

    python benchmarks/demo_recipe_search.py --out /tmp/search --json results.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ditkit.config import DEMO_SAMPLING
from ditkit.config.recipes import DEMO_REPORT_IMAGE_SIZE, demo_train_config
from ditkit.data.datasets import frame_digits
from ditkit.metrics.digit_classifier import digits_metrics, load_digit_classifier
from ditkit.runtime.seeds import image_seeds
from ditkit.sampling.generate import generate, job_labels
from ditkit.training.loop import train
from ditkit.training.run import open_for_sampling

VARIANTS: dict[str, dict] = {
    "base1800": {"max_steps": 1800},
    "base900": {"max_steps": 900},
    "lr3e-3_900": {"max_steps": 900, "lr": 3e-3},
    "lr4e-3_900": {"max_steps": 900, "lr": 4e-3},
    "b96_600": {"max_steps": 600, "global_batch_size": 96},
    "drop0.05_900": {"max_steps": 900, "model": {"class_dropout_prob": 0.05}},
    "depth4_1300": {"max_steps": 1300, "model": {"depth": 4}},
    "width96_1500": {"max_steps": 1500, "model": {"hidden_size": 96, "num_heads": 4}},
    "betas95_900": {"max_steps": 900, "adam_betas": (0.9, 0.95)},
    "ema995_900": {"max_steps": 900, "ema_decay": 0.995},
    "base1200": {"max_steps": 1200},
    "w96_lr3_1500": {"max_steps": 1500, "lr": 3e-3, "model": {"hidden_size": 96, "num_heads": 4}},
    "w96_1200": {"max_steps": 1200, "model": {"hidden_size": 96, "num_heads": 4}},
    "w96_lr3_1200": {"max_steps": 1200, "lr": 3e-3, "model": {"hidden_size": 96, "num_heads": 4}},
    "w96_d4_2000": {"max_steps": 2000, "model": {"hidden_size": 96, "num_heads": 4, "depth": 4}},
    "w64_2500": {"max_steps": 2500, "model": {"hidden_size": 64, "num_heads": 4}},
}


def run_variant(name: str, changes: dict, out: Path, sample_steps: int, device: str) -> dict:
    changes = dict(changes)
    model_changes = changes.pop("model", None)
    cfg = demo_train_config(
        out / name, precision="fp32", device=device, eval_every_steps=0, sample_every_steps=0, **changes
    )
    if model_changes:
        cfg = cfg.replace(model=cfg.model.replace(**model_changes))
    t0 = time.perf_counter()
    train(cfg)
    result = {"name": name, "changes": {**changes, **({"model": model_changes} if model_changes else {})}}
    result["train_s"] = round(time.perf_counter() - t0, 1)
    opened = open_for_sampling(cfg.out_dir, device=device)
    labels, seeds = job_labels(1000, 10, 0, True), image_seeds(0, 1000)
    classifier = load_digit_classifier(device=device)
    for key, scale in (("cfg", DEMO_SAMPLING.cfg_scale), ("nocfg", 1.0)):
        config = DEMO_SAMPLING.replace(cfg_scale=scale, num_steps=sample_steps, precision="fp32")
        images = generate(opened.model, labels.tolist(), seeds, config, diffusion=opened.diffusion)
        metrics = digits_metrics(frame_digits(images, DEMO_REPORT_IMAGE_SIZE), labels, classifier)
        result[f"acc_{key}"], result[f"fd_{key}"] = round(metrics["accuracy"], 4), round(metrics["fd"], 3)
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/demo-search")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sample-steps", type=int, default=12)
    parser.add_argument("--only", help="comma-separated variant names")
    parser.add_argument("--json")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(VARIANTS)
    results = []
    for name in names:  # written after each variant, so a cut-short run keeps what it finished
        results.append(run_variant(name, VARIANTS[name], Path(args.out), args.sample_steps, args.device))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
