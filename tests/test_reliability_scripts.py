"""The experiment and benchmark scripts under bad input: every mistake is refused in one
line naming the flag, value or file, before any heavy work (no case compiles anything);
and each script without an end-to-end test elsewhere still runs on a tiny valid input.

Every case runs in this process through `plastix.cli.run`, as ``python script.py`` would.
"""

import json
import os
import sys
from pathlib import Path

import jax
import pytest

from plastix import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import ab_old_kernel  # noqa: E402
import bench_delta  # noqa: E402
import bench_es  # noqa: E402
import bench_fast_weights  # noqa: E402
import bench_sweep  # noqa: E402
import bench_tasks  # noqa: E402
import check_readme  # noqa: E402
import compare_outer  # noqa: E402
import compare_torch  # noqa: E402
import compare_torch_gradient  # noqa: E402
import gpu_check  # noqa: E402
import hebbian_masks  # noqa: E402
import local_learning  # noqa: E402
import pattern_completion  # noqa: E402
import rule_recovery  # noqa: E402
import scaling  # noqa: E402
import text  # noqa: E402

COMPILED = "/jax/core/compile/backend_compile_duration"


@pytest.fixture
def paths(tmp_path) -> dict[str, str]:
    """The paths the cases name: the tmp directory, a missing path, a file, a small corpus."""
    paths = {"tmp": tmp_path, "missing": tmp_path / "missing", "file": tmp_path / "file.txt",
             "corpus": tmp_path / "corpus.txt"}
    paths["file"].write_text("not a directory\n")
    paths["corpus"].write_text("the cat sat on the mat, and then\n" * 100)
    return {name: str(path) for name, path in paths.items()}


@pytest.fixture
def no_compilation():
    """Fails the test if XLA compiles anything while it runs."""
    compiled = []
    listener = lambda event, seconds, **kwargs: compiled.append(event) if event == COMPILED \
        else None
    jax.monitoring.register_event_duration_secs_listener(listener)
    yield compiled
    jax.monitoring.unregister_event_duration_listener(listener)
    assert not compiled, "a refused input was compiled"


def _snapshot(directory: str) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(Path(directory).rglob("*"))}


# The cases read a corpus that exists: the default one, beside the repository, may not.
TEXT = CORPUS = ["--corpus", "{corpus}"]
TEXT_PATH = ["--text-path", "{corpus}"]
OLD = ["--old-checkout", "{tmp}"]  # a directory that holds no old kernel
BAD_INPUTS = {
    compare_outer: [
        (["--budget-s", "nan"], "--budget-s"),
        (["--budget-s", "0"], "--budget-s"),
        (["--budget-s", "-5"], "--budget-s"),
        (["--eval-batch", "0"], "--eval-batch"),
        (["--seeds", "1.5"], "--seeds"),
        ([*TEXT_PATH, "--seeds", "0", "0"], "--seeds"),
        (["--presets", "bogus"], "--presets"),
        (["--presets", "assoc", "assoc"], "--presets"),
        (["--presets", "assoc", "--text-path", "{corpus}"], "--text-path"),
        (["--presets", "text", "--text-path", "{missing}"], "--text-path {missing}"),
        ([*TEXT_PATH, "--out", "{file}"], "--out {file} is a file"),
        (["--budget", "3"], "--budget"),
    ],
    text: [
        ([*TEXT, "--hidden", "0"], "--hidden"),
        ([*TEXT, "--lengths", "1"], "--lengths"),
        ([*TEXT, "--lengths", "20", "x"], "--lengths"),
        ([*TEXT, "--grad-lr", "inf"], "--grad-lr"),
        ([*TEXT, "--es-pop", "7"], "--es-pop"),
        ([*TEXT, "--es-pop", "1"], "--es-pop"),
        ([*TEXT, "--backprop-lrs", "0.01", "0"], "--backprop-lrs"),
        ([*TEXT, "--parts", "poems"], "--parts"),
        ([*TEXT, "--cells", "nope"], "nope"),
        ([*TEXT, "--parts", "rules", "--cells", "rnn_learned_w0"], "rnn_learned_w0"),
        ([*TEXT, "--parts", "ngrams", "--lstm-lr", "0.1"], "--lstm-lr"),
        ([*TEXT, "--parts", "ngrams", "--seeds", "1"], "--seeds"),
        ([*TEXT, "--parts", "lstm", "--hidden", "4"], "--hidden"),
        ([*TEXT, "--parts", "rules", "--cells", "readout_only", "--es-pop", "8"], "--es-pop"),
        ([*TEXT, "--seeds", "1", "1"], "--seeds"),
        (["--corpus", "{missing}"], "--corpus {missing}"),
        ([*TEXT, "--report-only", "--out", "{missing}"], "--out {missing}"),
        ([*TEXT, "--out", "{file}"], "--out {file} is a file"),
    ],
    hebbian_masks: [
        (["--digits-steps", "30"], "--digits-steps"),
        (["--parts", "lm", "--log-every", "30"], "--lm-steps"),
        (["--lm-lr", "0"], "--lm-lr"),
        (["--rate", "-1"], "--rate"),
        (["--curve-sparsities", "1.0"], "--curve-sparsities"),
        (["--curve-sparsities", "0"], "--curve-sparsities"),
        ([*CORPUS, "--seeds", "0", "0"], "--seeds"),
        (["--folds", "1"], "--folds"),
        (["--cnn-channels", "8"], "--cnn-channels"),
        (["--cnn-channels", "0", "4"], "--cnn-channels"),
        (["--parts", "mlp", "--lm-hidden", "8"], "--lm-hidden"),
        (["--parts", "lm", "--digits-lr", "0.1"], "--digits-lr"),
        (["--parts", "mlp", "--corpus", "embedded"], "--corpus"),
        (["--parts", "mlp", "--curve-parts", "lm"], "--curve-parts"),
        (["--parts", "mlp", "--tune-every-seed", "cnn"], "--tune-every-seed"),
        (["--curve-parts", "--curve-sparsities", "0.5"], "--curve-sparsities"),
        (["--data-dir", "{tmp}"], "--data-dir"),
        (["--parts", "lm", "--corpus", "{missing}"], "--corpus {missing}"),
        (["--settings", "nope"], "--settings"),
        (["--quick", *CORPUS, "--out", "{file}"], "--out {file} is a file"),
        (["--report-only", *CORPUS, "--out", "{missing}"], "--out {missing}"),
    ],
    local_learning: [
        (["--epochs", "0"], "--epochs"),
        (["--seeds", "-1"], "--seeds"),
        (["--lrs", "0.1", "nan"], "--lrs"),
        (["--hidden", "10", "0"], "--hidden"),
        (["--task", "xor"], "--task"),
        (["--task", "digits", "--data-seed", "1"], "--data-seed"),
        (["--variants", "CHL", "nope"], "nope"),
        (["--out", "{file}"], "--out {file} is a file"),
    ],
    pattern_completion: [
        (["--bits", "1"], "--bits"),
        (["--gap", "-1"], "--gap"),
        (["--lr", "-1"], "--lr"),
        (["--clip", "0"], "--clip"),
        (["--held-out", "0"], "--held-out"),
        (["--seeds", "1", "1"], "--seeds"),
        (["--seeds", "3000000000"], "--seeds"),
        (["--arms", "lstm"], "--arms"),
        (["--arms", "diff_hebb", "diff_hebb"], "--arms"),
        (["--out", "{file}"], "--out {file} is a file"),
    ],
    rule_recovery: [
        (["--synapse-fractions", "0"], "--synapse-fractions"),
        (["--time-fractions", "1.5"], "--time-fractions"),
        (["--noises", "-1"], "--noises"),
        (["--noises", "0", "0"], "--noises"),
        (["--generations", "0"], "--generations"),
        (["--model-eta", "0"], "--model-eta"),
        (["--adam-steps", "0", "--lbfgs-steps", "0"], "--adam-steps"),
        (["--strategy", "Open_ES", "--population", "7"], "--population must be even"),
        (["--methods", "gradient", "--sigma", "0.3"], "--sigma"),
        (["--es-lr", "0.1"], "--es-lr"),
        (["--no-ablations", "--more-recordings", "8"], "--more-recordings"),
        (["--methods", "es", "--no-ablations", "--lr", "0.1"], "--lr"),
        (["--rules", "oja", "--long-budget", "2"], "--long-budget"),
        (["--out", "{file}"], "--out {file} is a file"),
    ],
    bench_es: [
        (["--pop", "1"], "--pop"),
        (["--pop", "5"], "--pop must be even"),
        (["--chunk", "-1"], "--chunk"),
        (["--memory-budget", "0"], "--memory-budget"),
        (["--noise-table", "-1"], "--noise-table"),
        (["--repeats", "0"], "--repeats"),
        (["--seq-len", "0"], "--seq-len"),
        (["--profile", "{file}"], "--profile {file} is a file"),
    ],
    compare_torch: [
        (["--profile", "{tmp}"], "--profile"),
        (["--generations", "2"], "--generations"),
        (["--memory-budget", "100"], "--memory-budget"),
        (["--torch-repeats", "0"], "--torch-repeats"),
    ],
    ab_old_kernel: [
        ([], "--old-checkout"),
        (OLD, "--old-checkout {tmp}"),
        ([*OLD, "--no-roofline"], "--no-roofline"),
        ([*OLD, "--generations", "0"], "--generations"),
        ([*OLD, "--rounds", "0"], "--rounds"),
    ],
    scaling: [
        (["--out", "{file}"], "--out {file} is a file"),
        (["--repeats", "0"], "--repeats"),
    ],
    bench_tasks: [
        (["--path", "{missing}"], "--path {missing}"),
        (["--batch", "0"], "--batch"),
        (["--seq-len", "-1"], "--seq-len"),
    ],
    check_readme: [
        (["--only", "no_such_check"], "--only"),
        (["--only"], "--only"),
    ],
    bench_fast_weights: [
        (["--out", "{tmp}"], "--out {tmp} is a directory"),
        (["--out", "{file}/report.json"], "--out {file}"),
        (["--out", ""], "--out"),
        (["--seq-lens", "0"], "--seq-lens"),
        (["--hiddens", "8", "x"], "--hiddens"),
    ],
    compare_torch_gradient: [
        (["--steps", "0"], "argument --steps: must be an integer >= 1"),
        (["--workloads", "nope"], "--workloads"),
        (["--hidden", "x"], "--hidden"),
    ],
    gpu_check: [
        (["--budget-s", "-1"], "argument --budget-s: must be a finite number > 0"),
        (["--steps", "nope"], "name steps among devices"),
    ],
    bench_delta: [
        (["--out", "{tmp}"], "--out {tmp} is a directory"),
        (["--seq-lens", "0"], "--seq-lens"),
        (["--chunk-size", "0"], "--chunk-size"),
        (["--dim", "x"], "--dim"),
    ],
    bench_sweep: [
        ([], "nothing to sweep"),
        (["--vary", "seed"], "--vary 'seed'"),
        (["--vary", "seed=0,1", "--out", "{tmp}"], "--out {tmp} is a directory"),
        (["--vary", "seed=0,1", "--out", ""], "--out"),
        (["--vary", "pop=4,5"], "cell pop=5: --pop must be even"),
        (["--vary", "seed=0,1", "--", "--outer", "gradient"], "a sweep runs ES"),
        (["--vary", "out=a,b"], "--out is the sweep's to set"),
        (["--vary", "seed=0", "--config", "{missing}"], "{missing}"),
        (["--vary", "seed=0", "--sweep-out", "{file}"], "--sweep-out {file}: give a new"),
    ],
}
CASES = [(module, argv, named) for module, cases in BAD_INPUTS.items() for argv, named in cases]


def script_name(module) -> str:
    """The script's file name less .py (an experiment's module is plastix.experiments.<it>)."""
    return module.__name__.rpartition(".")[2]


@pytest.mark.parametrize("module, argv, named", CASES, ids=[
    f"{script_name(module)}: {' '.join(argv) or '(none)'}" for module, argv, _ in CASES])
def test_bad_input_is_refused_in_one_line_naming_it(module, argv, named, paths, tmp_path,
                                                    monkeypatch, capsys, no_compilation):
    monkeypatch.chdir(tmp_path)  # a default output directory would land here
    before = _snapshot(paths["tmp"])
    with pytest.raises(SystemExit) as exit_:
        cli.run(module.main, [a.format(**paths) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == cli.EXIT_USAGE
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert named.format(**paths) in err, err
    assert _snapshot(paths["tmp"]) == before  # a refusal writes nothing


def test_the_table_covers_every_script():
    assert len(CASES) >= 60
    assert {script_name(module) for module in BAD_INPUTS} == {
        *(name[:-3] for name in os.listdir(os.path.join(ROOT, "benchmarks"))
          if name.endswith(".py")),
        "compare_outer", "text", "hebbian_masks", "local_learning", "pattern_completion",
        "rule_recovery", "check_readme"}


def test_compare_torch_help_needs_no_torch(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.run(compare_torch.main, ["--help"])
    assert exit_.value.code == 0 and "--torch-repeats" in capsys.readouterr().out


# --- valid tiny invocations (of the scripts no other test runs end to end) --------------------


@pytest.mark.slow  # both outer loops and the hand rules compile: half a minute
def test_compare_outer_runs_a_tiny_preset_and_reads_it_back(tmp_path, monkeypatch):
    tiny = compare_outer.Preset(
        shared=("--task", "assoc_retrieval", "--num-pairs", "2", "--hidden", "8",
                "--batch", "2", "--rule-out", "ABCD_lr"),
        es=("--pop", "4", "--log-every", "1"), gradient=("--log-every", "1"),
        hand_rules=("Hebb (readout)",))
    monkeypatch.setattr(compare_outer, "PRESETS", {"assoc": tiny})
    argv = ["--presets", "assoc", "--budget-s", "0.01", "--eval-batch", "16",
            "--out", str(tmp_path)]
    results = compare_outer.main(argv)
    assert [r["outer"] for r in results] == list(compare_outer.es_abcd.OUTER_LOOPS)
    assert all(r["updates"] >= 1 for r in results)
    report = json.loads((tmp_path / "report.json").read_text())
    assert [h["model"] for h in report["hand_rules"]] == ["Hebb (readout)"]
    # Finished runs are read back; under another budget they are refused, not reported.
    assert compare_outer.main(argv) == results
    with pytest.raises(ValueError, match="other settings \\(differs in: budget_s\\)"):
        compare_outer.main([*argv[:3], "0.02", *argv[4:]])


@pytest.mark.slow  # end to end: the pattern-completion experiment and its report
def test_pattern_completion_trains_and_reports_on_a_tiny_task(tmp_path):
    # The non-plastic arm alone: the plastic ones' training is tested in
    # test_differentiable_plasticity.py, and each arm compiles its own.
    rows = pattern_completion.main([
        "--bits", "4", "--patterns", "1", "--cycles", "1", "--present", "1", "--gap", "0",
        "--updates", "2", "--batch", "2", "--eval-every", "1", "--held-out", "4",
        "--seeds", "0", "1", "--arms", "non-plastic", "--out", str(tmp_path)])
    assert [(r["arm"], len(r["held_out_error"])) for r in rows] == [("non-plastic", 2)]
    assert {"report.md", "report.json", "curves.png"} <= set(os.listdir(tmp_path))


@pytest.mark.slow  # end to end: two benchmark scripts
def test_bench_tasks_and_bench_fast_weights_run_on_tiny_sizes(tmp_path, paths):
    record = bench_tasks.main(["--path", paths["corpus"], "--batch", "2", "--seq-len", "5",
                               "--repeats", "1"])
    assert [r["task"] for r in record["results"]][0] == "text"

    out = tmp_path / "fast" / "forms.json"  # its directory is created
    report = bench_fast_weights.main(["--seq-lens", "2", "--hiddens", "4", "--batch", "1",
                                      "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == report["rows"]


def test_bench_delta_times_both_forms_on_tiny_sizes(tmp_path):
    out = tmp_path / "delta.json"
    report = bench_delta.main(["--seq-lens", "5", "--batch", "1", "--heads", "2", "--dim", "3",
                               "--chunk-size", "2", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    (row,) = report["rows"]
    assert row["forward_max_abs_diff"] < 1e-5 and row["train_max_abs_diff"] < 1e-4
    assert row["forward_chunkwise_ms"] > 0 and row["train_speedup"] > 0


@pytest.mark.slow  # three processes, each compiling a small ES run
def test_bench_sweep_times_a_tiny_grid_both_ways_and_they_agree(tmp_path):
    out, kept = tmp_path / "bench.json", tmp_path / "sweep"
    result = bench_sweep.main(["--vary", "seed=0,1", "--out", str(out), "--sweep-out",
                               str(kept), "--",
                               "--generations", "2", "--pop", "4", "--batch", "2",
                               "--eval-batch", "4", "--hidden", "8"])
    assert result["cells"] == 2 and result["compiled_groups"] == 1
    assert result["sweep_s"] > 0 and result["separate_processes_s"] > 0
    assert result["max_accuracy_difference"] < 1e-6
    assert json.loads(out.read_text()) == result
    assert (kept / "results.md").is_file()
    assert sorted(cell.name for cell in (kept / "cells").iterdir()) == ["seed=0", "seed=1"]


@pytest.mark.slow  # the evaluation compiles three times (timed, its memory, plain vmap)
def test_scaling_writes_under_runs_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(scaling, "DEFAULTS", {"pop": 2, "batch": 1, "seq_len": 2, "hidden": 2,
                                              "vocab": 3})
    monkeypatch.setattr(scaling, "QUICK_SWEEPS", {"pop": [2]})
    monkeypatch.chdir(tmp_path)
    scaling.main(["--quick", "--repeats", "1"])
    assert sorted(os.listdir(tmp_path / "runs" / "scaling")) == ["scaling.json", "scaling.png"]
