"""Flow matching (SiT's, `--objective flow`) against ADM's diffusion on the latent demo's model: step and sampling time.

Training: the latent demo's DiT (DiT-LatentDemo/2, 1.9 M parameters, 8x8x4 latents) and its optimiser, batch 64,
one step of each objective in turn (interleaved, so drifting CPU clocks hit both) for `--steps` steps each after
a warm-up, at the demo's precision on this machine (`--precision auto`: bf16 where it is faster, else fp32).
The diffusion is the demo's (cosine, x0 prediction, no learned sigma), the flow SiT's defaults (linear path,
velocity).

Sampling: a batch of `--batch` class-conditional images (guidance 3, as the demo samples: two model rows per
image and evaluation) with heun-50, euler-50, sde-euler-50 and dopri5 (torchdiffeq; adaptive, so its NFE
depends on the model) on the flow model, DPM-Solver++(2M)-10 and DDPM-250 on the diffusion model; seconds per
image and NFE (model calls per batch, counted). Times do not depend on training; dopri5's NFE does: give
trained run folders (`ditkit demo --out D` and `ditkit demo --objective flow --out F`: D/dit, F/dit) for
meaningful dopri5 figures, else both models are the fresh initialisation with its zeroed output layers
perturbed so that the ODE has something to integrate.

    python benchmarks/flow_vs_diffusion.py --flow-run F/dit --diffusion-run D/dit \
        --json benchmarks/results/cpu-amd-flow-vs-diffusion.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import torch

from ditkit.config import DiffusionConfig, SampleConfig
from ditkit.config.recipes import FLOW_DEMO_DIFFUSION, LATENT_DEMO_MODEL, SMALL_RUN_OPTIMISATION
from ditkit.model.dit import DiT
from ditkit.runtime.backend import autocast_dtype, cpu_name, resolve_precision
from ditkit.sampling.generate import generate
from ditkit.training.run import open_for_sampling
from ditkit.training.step import adamw, build_process, train_step

DEMO_DIFFUSION = DiffusionConfig(learn_sigma=False, noise_schedule="cosine", predict_xstart=True)
SAMPLERS = [
    ("flow", "heun", 50),
    ("flow", "euler", 50),
    ("flow", "sde-euler", 50),
    ("flow", "dopri5", 50),  # adaptive: num_steps does not apply (SiT's atol = rtol = 1e-6 ... see flow.samplers)
    ("diffusion", "dpm++2m", 10),
    ("diffusion", "ddpm", 250),
]


def fresh_model(seed: int) -> DiT:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DiT(LATENT_DEMO_MODEL)
        for name, p in model.named_parameters():  # adaLN-Zero and the output layer start at zero
            if "adaLN" in name or "final_layer.linear" in name:
                torch.nn.init.normal_(p, std=0.02)
    return model


def time_training(steps: int, warmup: int, batch: int, precision: str) -> dict[str, Any]:
    processes = {"flow": FLOW_DEMO_DIFFUSION, "diffusion": DEMO_DIFFUSION}
    state = {}
    for name, config in processes.items():
        model = fresh_model(0).train()
        optimizer = adamw(model, lr=SMALL_RUN_OPTIMISATION["lr"], betas=SMALL_RUN_OPTIMISATION["adam_betas"])
        state[name] = (model, build_process(config), optimizer)
    generator = torch.Generator().manual_seed(0)
    shape = (batch, LATENT_DEMO_MODEL.in_channels, LATENT_DEMO_MODEL.input_size, LATENT_DEMO_MODEL.input_size)
    x, y = torch.randn(shape, generator=generator), torch.randint(0, 10, (batch,), generator=generator)
    seconds: dict[str, list[float]] = {name: [] for name in processes}
    for i in range(warmup + steps):
        for name, (model, process, optimizer) in state.items():
            t0 = time.perf_counter()
            out = train_step(
                model, process, optimizer, x, y, generator=generator, autocast_dtype=autocast_dtype(precision)
            )
            float(out["loss"])  # the step's work is done
            if i >= warmup:
                seconds[name].append(time.perf_counter() - t0)
    result = {name: {"median_s": statistics.median(s), "mean_s": statistics.fmean(s)} for name, s in seconds.items()}
    result["flow_over_diffusion"] = result["flow"]["median_s"] / result["diffusion"]["median_s"]
    return result


def counted(model: DiT) -> list[int]:
    calls = [0]
    forward = model.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return forward(*args, **kwargs)

    model.forward = counting  # type: ignore[method-assign]
    return calls


def time_sampling(models: dict[str, tuple[DiT, DiffusionConfig]], batch: int, precision: str) -> list[dict]:
    rows = []
    labels, seeds = [i % 10 for i in range(batch)], list(range(batch))
    for kind, sampler, steps in SAMPLERS:
        model, process = models[kind]
        config = SampleConfig(sampler=sampler, num_steps=steps, cfg_scale=3.0, batch_size=batch, precision=precision)
        generate(model, labels[:2], seeds[:2], config.replace(num_steps=min(steps, 3)), diffusion=process)  # warm
        calls = counted(model)
        t0 = time.perf_counter()
        generate(model, labels, seeds, config, diffusion=process)
        seconds = time.perf_counter() - t0
        del model.forward  # back to the class's
        row = {"model": kind, "sampler": sampler, "num_steps": None if sampler == "dopri5" else steps}
        row |= {"nfe": calls[0], "seconds_per_image": seconds / batch, "seconds_per_batch": seconds}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="timed training steps per objective")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64, help="training batch and sampling batch")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--flow-run", help="a trained flow demo run (F/dit), for dopri5's NFE")
    parser.add_argument("--diffusion-run", help="a trained diffusion demo run (D/dit)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    precision = resolve_precision(args.precision, "cpu")
    load_before = os.getloadavg()
    training = time_training(args.steps, args.warmup, args.batch, precision)
    print(json.dumps(training), flush=True)
    models = {}
    for kind, run, process in (
        ("flow", args.flow_run, FLOW_DEMO_DIFFUSION),
        ("diffusion", args.diffusion_run, DEMO_DIFFUSION),
    ):
        if run:
            opened = open_for_sampling(run)
            assert opened.diffusion.objective == kind, f"{run} is not a {kind} run"
            models[kind] = (opened.model.eval(), opened.diffusion)
        else:
            models[kind] = (fresh_model(1).eval(), process)
    sampling = time_sampling(models, args.batch, precision)
    result = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads()},
        "torch": torch.__version__,
        "python": platform.python_version(),
        "precision": precision,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "batch": args.batch,
        "train_steps_each": args.steps,
        "training": training,
        "sampling_models": {"flow": args.flow_run or "fresh init", "diffusion": args.diffusion_run or "fresh init"},
        "sampling": sampling,
    }
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
