"""The benchmarks run and time what es_abcd.py runs (tiny sizes; no timing is checked), and
the prepared GPU check runs its steps on the CPU (its dry mode)."""

import json
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


# --- the prepared GPU check (benchmarks/gpu_check.py), exercised on the CPU --------------

def gpu_check_module():
    import gpu_check

    return gpu_check


def parse_step_command_line(args: tuple[str, ...]) -> None:
    """Reads ``python <args>`` as the script it runs reads it, checks and all, without
    running it: so that a renamed or re-bounded flag fails here, not on the GPU."""
    from plastix import cli

    script, argv = args[0], list(args[1:])
    if script == "benchmarks/bench_es.py":
        bench_es.parse_args(bench_es.make_parser(), argv)
    elif script == "experiments/fast_weights.py":
        from plastix.experiments import fast_weights
        cli.parse(fast_weights.parser(), argv)
    elif script == "experiments/es_abcd.py":
        from plastix.experiments import es_abcd
        es_abcd.parse_config(argv)
    elif script == "benchmarks/bench_sweep.py":
        import bench_sweep

        from plastix.experiments import sweep
        axes, base = sweep.read_spec(cli.parse(bench_sweep.parser(), argv)[0])
        sweep.grid(axes, base)  # every cell's es_abcd.py command line
    else:
        raise AssertionError(f"no parser known for {script}")


def test_gpu_check_command_lines_are_read_by_their_scripts(tmp_path):
    """Every step's command line, the GPU run's and the dry run's, is one its script takes
    (the GPU sizes are checked only here before a GPU runs them)."""
    gpu_check = gpu_check_module()
    for step in gpu_check.STEPS:
        for args in (step.gpu_args, step.dry_args):
            args = tuple(a.replace("{work}", str(tmp_path)) for a in args)
            if args[0] in ("-c", "-m") or step.script is not None:
                continue  # the devices probe, pytest; benchmarks the check does not own
            parse_step_command_line(args)
        if step.script is None and step.gpu_args[0] not in ("-c", "-m"):
            assert os.path.isfile(os.path.join(gpu_check.ROOT, step.gpu_args[0])), step.name
    for name in gpu_check.GPU_TEST_FILES:
        assert os.path.isfile(os.path.join(gpu_check.ROOT, "tests", name)), name


def test_gpu_check_reads_figures_from_what_steps_print():
    gpu_check = gpu_check_module()
    text = 'log line\n{"a": 1}\n{\n "b": {"c": 2},\n "d": [1]\n}\nwrote x\n'
    assert gpu_check.last_json(text) == {"b": {"c": 2}, "d": [1]}
    with pytest.raises(ValueError):
        gpu_check.last_json("no record {here}\n")
    # pytest -v under xdist, killed or not: counted per test; failures named from -ra.
    out = ("[gw0] [ 25%] PASSED tests/test_a.py::test_x\n"
           "[gw1] [ 50%] FAILED tests/test_a.py::test_y\n"
           "tests/test_b.py::test_z SKIPPED (no torch)   [ 75%]\n"
           "tests/test_b.py::test_w PASSED               [100%]\n"
           "FAILED tests/test_a.py::test_y - assert 1 == 2\n"
           "==== 1 failed, 2 passed, 1 skipped in 3.1s ====\n")
    assert gpu_check.suite_figures(out, None) == {
        "passed": 2, "failed": 1, "errors": 0, "skipped": 1,
        "failing": ["tests/test_a.py::test_y"]}


def test_gpu_check_dry_run_writes_its_json_and_log(tmp_path, capsys):
    """A reduced dry run (the device probe; the full one is in the second tier), and a
    budget that leaves no time: the steps it starves are recorded, not run."""
    gpu_check = gpu_check_module()
    result = gpu_check.main(["--dry", "--steps", "devices,delta", "--out", str(tmp_path)])
    assert json.loads(capsys.readouterr().out) == result
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == result
    assert "==== devices: ok" in (tmp_path / "gpu_check.log").read_text()
    assert result["mode"] == "dry" and result["platform"] == "cpu" and result["all_ok"]
    assert result["jax"] == result["versions"]["jax"] and result["versions"]["evosax"]
    assert result["steps"]["devices"]["status"] == "ok"
    assert set(result["steps"]) == {"devices", "delta"}

    starved = gpu_check.main(["--dry", "--steps", "devices,sweep", "--budget-s", "0.5"])
    assert not starved["all_ok"]
    assert {r["status"] for r in starved["steps"].values()} == {"timeout"}


def test_gpu_check_refuses_an_unknown_step(capsys):
    from conftest import refused_line

    line = refused_line(gpu_check_module().main, ["--steps", "es,nope"], capsys)
    assert "nope" in line and "sweep" in line


@pytest.mark.slow  # every step for real at toy size: about 100 s on two cores
def test_gpu_check_dry_run_runs_every_step(tmp_path):
    gpu_check = gpu_check_module()
    result = gpu_check.main(["--dry", "--out", str(tmp_path)])
    assert result["all_ok"], {k: r for k, r in result["steps"].items() if r["status"] != "ok"}
    for step in gpu_check.STEPS:
        record = result["steps"][step.name]
        assert record["status"] == ("skipped" if gpu_check.skip_reason(step) else "ok"), step
    figures = result["figures"]
    for key in gpu_check.ES_KEYS:
        assert f"es.{key}" in figures, key
    for key in ("fast_weights.steps_per_s", "metagrad.lifetimes_per_s",
                "metagrad.synapse_updates_per_s", "sweep.ratio_separate_over_sweep",
                "tests.passed"):
        assert figures[key] > 0, key
    assert figures["tests.failed"] == 0 and figures["tests.errors"] == 0
