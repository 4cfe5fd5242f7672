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


def test_compare_torch_gradient_agrees_with_plastix():
    """Both gradient workloads in a tiny configuration: PyTorch's losses (and the
    meta-gradient's gradient) equal plastix's on the same weights and batch."""
    pytest.importorskip("torch")
    import compare_torch_gradient

    record = compare_torch_gradient.main(
        ["--hidden", "8", "--batch", "4", "--meta-hidden", "8", "--meta-batch", "4",
         "--steps", "2", "--torch-steps", "2", "--repeats", "1", "--no-compile"])
    for name in compare_torch_gradient.WORKLOADS:
        result = record[name]
        assert result["max_abs_loss_diff"] < 1e-4, result["loss"]
        assert result["plastix"]["steps_per_s"] > 0
        assert result["torch"]["eager"]["steps_per_s"] > 0
    assert record["meta_gradient"]["max_abs_grad_diff"] < 1e-5


def test_compare_torch_gradient_refuses_a_bad_flag_before_importing_torch(capsys):
    import compare_torch_gradient

    with pytest.raises(SystemExit) as exit_info:
        compare_torch_gradient.parser().parse_args(["--form", "matrix"])
    assert exit_info.value.code == 2
    assert "--form" in capsys.readouterr().err
