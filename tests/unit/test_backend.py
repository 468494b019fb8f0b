"""Precision choice and process settings (ditkit.runtime.backend)."""

from __future__ import annotations

import json

import pytest
import torch

from ditkit.runtime import backend


def test_auto_is_bf16_on_cuda_and_follows_the_probe_on_cpus(monkeypatch):
    assert backend.resolve_precision("auto", "cuda") == "bf16"
    assert backend.resolve_precision("tf32", "cpu") == "tf32"
    monkeypatch.setattr(backend, "cpu_bf16_is_faster", lambda: True)
    assert backend.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(backend, "cpu_bf16_is_faster", lambda: False)
    assert backend.resolve_precision("auto", "cpu") == "fp32"


def test_cpu_probe_is_skipped_without_bf16_units_and_cached_with_them(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    backend.cpu_bf16_is_faster.cache_clear()
    monkeypatch.setattr(backend, "cpu_has_bf16_units", lambda: False)
    assert backend.cpu_bf16_is_faster() is False and not (tmp_path / "ditkit").exists()
    backend.cpu_bf16_is_faster.cache_clear()
    monkeypatch.setattr(backend, "cpu_has_bf16_units", lambda: True)
    timings = iter([0.10, 0.04])  # fp32, then bf16: 2.5x faster
    monkeypatch.setattr(backend, "_matmul_seconds", lambda dtype: next(timings))
    assert backend.cpu_bf16_is_faster() is True
    cached = json.loads((tmp_path / "ditkit" / "cpu_bf16_probe.json").read_text())
    assert [v["bf16_faster"] for v in cached.values()] == [True]
    backend.cpu_bf16_is_faster.cache_clear()
    monkeypatch.setattr(backend, "_matmul_seconds", lambda dtype: pytest.fail("the cache should answer"))
    assert backend.cpu_bf16_is_faster() is True
    backend.cpu_bf16_is_faster.cache_clear()


def test_precision_scope_and_configure_restore_the_process():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.get_num_threads())
    with backend.precision_scope("bf16", "cuda"):
        assert torch.backends.cuda.matmul.allow_tf32
    restore = backend.configure(num_threads=1, deterministic=True)
    assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    restore()
    assert (torch.backends.cuda.matmul.allow_tf32, torch.get_num_threads()) == before
    assert not torch.are_deterministic_algorithms_enabled()
