"""Process-group helpers, and a 2-process gloo DDP run that must end where a 1-process run ends."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ditkit.config import TrainConfig, get_preset
from ditkit.runtime import distributed
from ditkit.training.loop import train
from numerics import OPS_BACKWARD, approx_fp32, assert_fp32_close

TORCHRUN = Path(sys.executable).with_name("torchrun")
WORKER = """
import json, sys
from ditkit.config import TrainConfig
from ditkit.training.loop import train
train(TrainConfig.from_dict(json.load(open(sys.argv[1]))))
"""


def test_init_without_torchrun_is_one_cpu_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = distributed.init("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.device.type) == (0, 1, 0, "cpu")
    assert info.is_main and not info.is_distributed and distributed.is_main()
    x = torch.tensor([1.0, 2.0])
    assert torch.equal(distributed.all_reduce_mean(x), x)
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.broadcast_object({"a": 1}) == {"a": 1} and distributed.gather_objects(3) == [3]
    distributed.barrier()
    distributed.shutdown()


def test_bad_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        distributed.init("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 is outside WORLD_SIZE=2"):
        distributed.init("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # three processes, each paying torch's ~5 s start-up: `.ci/run` runs it with the slow set
@pytest.mark.distributed
@pytest.mark.skipif(not TORCHRUN.is_file() or not torch.distributed.is_available(), reason="needs torchrun")
def test_two_process_ddp_matches_one_process(tmp_path):
    """Global batch 8 on 2 gloo ranks (on the CPU, also where CUDA exists) ends where a 1-process run ends.

    The ranks also accumulate 2 micro-batches of 2 (DDP no_sync on the first). Label dropout stays ON: every
    step's draws (t, noise, dropout mask) are made for the global batch from a (seed, step) generator and each
    rank takes its rows, so both runs see identical numbers by design. adam_eps = 1 makes the update
    ~ lr * m (linear in the gradient): plain Adam divides by sqrt(v) ~ 0 for some weights and turns
    summation-order rounding into lr-sized differences, which says nothing about DDP.
    """
    cfg = TrainConfig(
        out_dir=str(tmp_path / "ddp"),
        model=get_preset("DiT-T/2", in_channels=1),
        image_size=8,
        vae="none",
        max_steps=4,
        global_batch_size=8,
        micro_batch_size=2,
        num_workers=0,
        log_every_steps=1,
        ckpt_every_steps=100,
        sample_every_steps=0,
        deterministic=True,
        num_threads=1,
        device="cpu",
        precision="fp32",
        adam_eps=1.0,
        lr=1e-2,
    )
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    proc = subprocess.run(
        [
            str(TORCHRUN),
            "--nproc_per_node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(_free_port()),
            str(tmp_path / "worker.py"),
            str(tmp_path / "cfg.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((tmp_path / "ddp" / "checkpoints" / "step_0000004" / "state.json").read_text())
    assert state["world_size"] == 2
    single = train(cfg.replace(out_dir=str(tmp_path / "single"), micro_batch_size=None))
    for name in ("model", "ema"):
        a = load_file(str(tmp_path / "ddp" / "checkpoints" / "step_0000004" / f"{name}.safetensors"))
        b = load_file(str(single / "checkpoints" / "step_0000004" / f"{name}.safetensors"))
        for key in a:
            assert_fp32_close(a[key], b[key], ops=4 * OPS_BACKWARD, msg=f"{name} {key}")  # 4 steps
    lines = [
        [json.loads(s)["loss"] for s in (p / "metrics.jsonl").read_text().splitlines()]
        for p in (tmp_path / "ddp", single)
    ]
    assert lines[0] == approx_fp32(lines[1], ops=4 * OPS_BACKWARD)
