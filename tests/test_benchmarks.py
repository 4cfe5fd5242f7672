"""The benchmarks run and time what es_abcd.py runs (tiny sizes; no timing is checked)."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import bench_es  # noqa: E402

SIZES = ["--pop", "4", "--batch", "2", "--seq-len", "5", "--hidden", "8", "--vocab", "6",
         "--repeats", "1", "--no-roofline"]


@pytest.mark.slow  # end to end: the benchmark script
def test_bench_es_times_the_evaluation_and_generations():
    record = bench_es.main(SIZES + ["--generations", "2"])
    assert record["synapse_updates_per_s"] > 0 and record["generation_seconds"] > 0
    assert np.isfinite(record["mean_nll"])


def test_compare_torch_agrees_with_plastix():
    pytest.importorskip("torch")
    import compare_torch

    record = compare_torch.main(SIZES + ["--torch-repeats", "1"])
    assert record["max_abs_fitness_diff"] < 1e-3
