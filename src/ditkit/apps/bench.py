"""`ditkit bench`: the machine's matmul peaks, training and sampling throughput of a DiT, peak memory and
compile time, measured in one run and reported as JSON and a table.

Machines drift (the CPU hosts by up to 1.5x within an hour), so every figure comes with the same-run
matmul peak of its precision and the fraction of it that the model reaches: training counts 3 x forward
multiply-adds x 2 FLOPs per image (forward + backward), sampling 1 x per network evaluation.
"""

from __future__ import annotations

import copy
import resource
import statistics
import time
from typing import Any

import torch

from ditkit.config import BENCH_SAMPLING, VAE_DOWNSAMPLE, ModelConfig, default_diffusion, get_preset
from ditkit.config.constants import MAX_BATCH, MAX_IMAGE_SIZE
from ditkit.diffusion.gaussian import diffusion_from_config
from ditkit.model.dit import DiT
from ditkit.model.flops import model_cost
from ditkit.runtime import backend
from ditkit.runtime.distributed import resolve_device
from ditkit.runtime.errors import check_count
from ditkit.runtime.files import write_json
from ditkit.runtime.seeds import image_seeds
from ditkit.sampling.generate import generate
from ditkit.training.step import adamw, train_step, update_ema

PAPER_STEPS = 250  # the paper's DDPM sampling steps
FAST_STEPS = 20  # DPM-Solver++(2M) steps of the fast recipe
MAX_BENCH_STEPS = 10_000  # timed steps per measurement


def matmul_peak(precision: str, device: torch.device, reps: int = 5) -> float:
    """Median GFLOP/s of a square matmul (8192 on CUDA, 2048 on a CPU) in `precision`."""
    size = 8192 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    with backend.precision_scope("tf32" if precision == "tf32" else "fp32", device):
        _, times = _time(lambda: torch.mm(a, b), reps, device)
    return 2 * size**3 / statistics.median(times) / 1e9


def bench_training(
    config: ModelConfig, batch_size: int, device: torch.device, precision: str, compile: bool, steps: int
) -> dict[str, float]:
    """img/s of ditkit's training step (fwd, MSE + VLB, bwd, fused AdamW, EMA) on random latents."""
    torch.manual_seed(0)
    model = DiT(config).to(device).train()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = adamw(model, lr=1e-4, weight_decay=0.0)
    diffusion = diffusion_from_config(default_diffusion(config))
    net = torch.compile(model) if compile else model
    x = torch.randn(batch_size, config.in_channels, config.input_size, config.input_size, device=device)
    y = torch.randint(0, config.num_classes, (batch_size,), device=device) if config.num_classes else None
    generator = torch.Generator(device).manual_seed(0)

    def step() -> None:
        train_step(net, diffusion, opt, x, y, generator=generator, autocast_dtype=backend.autocast_dtype(precision))
        update_ema(ema, model, 0.9999)

    first, times = _time(step, steps, device)
    return {"s_per_step": statistics.median(times), "first_step_s": first}


def bench_sampling(
    config: ModelConfig, batch_size: int, device: torch.device, precision: str, compile: bool, steps: int
) -> dict[str, float]:
    """Seconds per guided sampling step (2 x batch rows) through `ditkit.sampling.generate`, without a VAE."""
    torch.manual_seed(0)
    model = DiT(config).to(device).eval()
    labels = [i % config.num_classes for i in range(batch_size)] if config.num_classes else None
    guided = config.has_null_class  # BENCH_SAMPLING guides; a model without a null class cannot
    sample = BENCH_SAMPLING.replace(
        num_steps=steps,
        batch_size=batch_size,
        precision=precision,
        compile=compile,
        **({} if guided else {"cfg_scale": 1.0}),
    )
    seeds = image_seeds(0, batch_size)
    first, times = _time(lambda: generate(model, labels, seeds, sample, device=device), 2, device)
    return {"s_per_step": statistics.median(times) / steps, "first_call_s": first}


def run_bench(
    preset: str = "DiT-S/2",
    *,
    image_size: int = 256,
    batch_size: int | None = None,
    sample_batch: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    compile: bool = False,
    steps: int = 3,
    what: tuple[str, ...] = ("train", "sample"),
    out: str | None = None,
) -> dict[str, Any]:
    """Everything `ditkit bench` reports, as one JSON-ready dict (keys documented in the README); also written
    to `out` when given. Bounds: steps <= 10,000 (each is timed), batches <= 2**20, image_size <= 8192."""
    check_count("steps", steps, minimum=1, maximum=MAX_BENCH_STEPS)
    check_count("image_size", image_size, minimum=1, maximum=MAX_IMAGE_SIZE)
    for name, value in (("batch_size", batch_size), ("sample_batch", sample_batch)):
        if value is not None:
            check_count(name, value, minimum=1, maximum=MAX_BATCH)
    dev = resolve_device(device)
    resolved = backend.resolve_precision(precision, dev)
    config = get_preset(preset, input_size=image_size // VAE_DOWNSAMPLE)
    batch = batch_size or (256 if dev.type == "cuda" else 32)
    sample_rows = sample_batch or (128 if dev.type == "cuda" else 8)
    peaks = {"fp32": matmul_peak("fp32", dev)}
    if dev.type == "cuda":
        peaks["tf32"] = matmul_peak("tf32", dev)
    if dev.type == "cuda" or backend.cpu_has_bf16_units():
        peaks["bf16"] = matmul_peak("bf16", dev)
    peak_precision = resolved if resolved in peaks else "fp32"  # bf16 without bf16 units: against fp32's
    peak = peaks[peak_precision]
    gmacs = model_cost(config).gflops
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else backend.cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "preset": preset,
        "image_size": image_size,
        "precision": resolved,
        "compile": compile,
        "gflops_per_image": gmacs,
        "matmul_peaks_gflops": peaks,
        "matmul_peak_gflops": peak,
        "matmul_peak_precision": peak_precision,
    }
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with backend.precision_scope(resolved, dev):
        if "train" in what:
            train = bench_training(config, batch, dev, resolved, compile, steps)
            img_s = batch / train["s_per_step"]
            result.update(
                train_batch=batch,
                train_img_per_s=img_s,
                train_fraction_of_peak=img_s * 3 * 2 * gmacs / peak,
                compile_seconds=max(0.0, train["first_step_s"] - train["s_per_step"]) if compile else 0.0,
            )
        if "sample" in what:
            sample = bench_sampling(config, sample_rows, dev, resolved, compile, max(steps, 2))
            per_step = sample["s_per_step"]
            result.update(
                sample_batch=sample_rows,
                sample_img_per_s=sample_rows / (per_step * PAPER_STEPS),
                sample_fast_img_per_s=sample_rows / (per_step * FAST_STEPS),
                sample_fraction_of_peak=2 * sample_rows * 2 * gmacs / per_step / peak,
            )
    result["peak_memory_mib"] = (
        torch.cuda.max_memory_allocated(dev) / 2**20
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    if out:
        write_json(out, result)
    return result


def format_report(result: dict[str, Any]) -> str:
    """A two-column table of `run_bench`'s result."""
    rows = [("device", result["device"]), ("model", f"{result['preset']} at {result['image_size']} px")]
    rows.append(("precision", f"{result['precision']}{' + compile' if result['compile'] else ''}"))
    rows += [(f"matmul peak {k}", f"{v:,.0f} GFLOP/s") for k, v in result["matmul_peaks_gflops"].items()]
    if "train_img_per_s" in result:
        of_peak = f"{100 * result['train_fraction_of_peak']:.0f}% of the {result['matmul_peak_precision']} peak"
        rows.append(("training", f"{result['train_img_per_s']:.2f} img/s at batch {result['train_batch']}, {of_peak}"))
        if result["compile"]:
            rows.append(("compile time", f"{result['compile_seconds']:.0f} s"))
    if "sample_img_per_s" in result:
        rows.append((f"sampling, {PAPER_STEPS} DDPM steps + guidance", f"{result['sample_img_per_s']:.3f} img/s"))
        rows.append((f"sampling, DPM-Solver++ {FAST_STEPS} steps", f"{result['sample_fast_img_per_s']:.2f} img/s"))
        rows.append(
            (
                "sampling network",
                f"{100 * result['sample_fraction_of_peak']:.0f}% of peak "
                f"(batch {result['sample_batch']}, {2 * result['sample_batch']} rows)",
            )
        )
    rows.append(("peak memory", f"{result['peak_memory_mib']:,.0f} MiB"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _time(fn: Any, steps: int, device: torch.device) -> tuple[float, list[float]]:
    """(first call's seconds, seconds of `steps` later calls)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return first, times


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
