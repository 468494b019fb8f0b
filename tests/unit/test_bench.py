"""`ditkit bench`'s table (ditkit.apps.bench.format_report); the measurements run in benchmarks, not tests."""

from __future__ import annotations

from ditkit.apps.bench import format_report


def test_the_table_names_the_peak_the_fraction_was_taken_against():
    result = {
        "device": "a CPU",
        "preset": "DiT-S/8",
        "image_size": 64,
        "precision": "bf16",
        "compile": False,
        "matmul_peaks_gflops": {"fp32": 100.0},
        "matmul_peak_precision": "fp32",
        "train_img_per_s": 9.0,
        "train_batch": 4,
        "train_fraction_of_peak": 0.25,
        "peak_memory_mib": 1000.0,
    }
    table = format_report(result)
    assert "precision         bf16" in table  # bf16 without bf16 units: measured against the fp32 peak
    assert "9.00 img/s at batch 4, 25% of the fp32 peak" in table and "matmul peak fp32  100 GFLOP/s" in table
