"""experiments/hebbian_masks.py end to end on a tiny configuration: the report is written
and agrees with the saved runs, finished runs are read back, bad flags are refused."""

import json
import os
import sys

import jax
import pytest

from plastix import cli, masks, runs, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import hebbian_masks  # noqa: E402

TINY = ["--quick", "--settings", "sign", "centred_m0.5", "--curve-sparsities", "0.5"]


def saved_sparsity(args, part: str, name: str) -> float:
    """Sparsity of the masks in a run's checkpoints, the mean over its folds."""
    model, task, _ = hebbian_masks.part_setup(args, part)
    config = hebbian_masks.train_config(args, part, 0)
    optimizer = train.make_optimizer(config.learning_rate, config.clip_norm,
                                     hebbian_masks.FIXED)
    template = train.init_state(jax.random.key(0), model, train.example_inputs(task), optimizer)
    sparsities = []
    for fold in hebbian_masks.folds_of(args, part):
        path = os.path.join(hebbian_masks.run_dir_of(args, part, name, 0, fold), runs.CHECKPOINT)
        sparsities.append(masks.sparsity_of(runs.load_checkpoint(path, template)[0].opt_state))
    return sum(sparsities) / len(sparsities)


def check_report(args, part: str) -> dict:
    with open(os.path.join(args.out, "report.json")) as f:
        report = json.load(f)
    result = report["parts"][part]
    rows = {row["method"].split(" ")[0]: row for row in result["rows"]}
    assert set(rows) == {"dense", "Hebbian", "magnitude", "random"}
    chosen = result["chosen"]
    hebbian = rows["Hebbian"]["sparsity"]["mean"]
    # The reported sparsity is that of the saved masks, and the baselines match it exactly.
    assert hebbian == pytest.approx(saved_sparsity(args, part, f"hebbian_{chosen}"))
    for method in ("magnitude", "random"):
        assert rows[method]["sparsity"]["mean"] == pytest.approx(hebbian, abs=1e-6)
    assert rows["dense"]["sparsity"]["mean"] == 0.0
    assert rows["Hebbian"]["valid_gap"]["mean"] == pytest.approx(
        rows["Hebbian"]["valid"]["mean"] - rows["dense"]["valid"]["mean"])
    assert {t["setting"] for t in result["tuning"]} == {"sign", "centred_m0.5"}
    assert any(t["sparsity"] > 0 for t in result["tuning"])  # the quick rate prunes
    sparsities = {round(p["sparsity"], 6) for p in result["curve"] if p["method"] == "random"}
    assert 0.5 in sparsities
    with open(os.path.join(args.out, "report.md")) as f:
        text = f.read()
    assert result["label"] in text and f"**{chosen}**" in text
    return report


@pytest.mark.slow  # end to end: the experiment trains, prunes and reports every model
def test_tiny_experiment_writes_a_consistent_report_and_reads_finished_runs_back(
        tmp_path, monkeypatch):
    flags = [*TINY, "--parts", "mlp", "--out", str(tmp_path)]
    hebbian_masks.main(flags)
    args = hebbian_masks.parse_args(flags)
    report = check_report(args, "mlp")
    for png in ("sparsity_vs_error.png", "sparsity_over_time.png"):
        assert (tmp_path / png).stat().st_size > 0
    history = report["parts"]["mlp"]["histories"]
    assert set(history) == {"sign_s0", "centred_m0.5_s0"}
    assert history["centred_m0.5_s0"]["step"][-1] == args.digits_steps

    # Finished runs are read back: nothing trains again and the report is the same.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train, "fit", no_training)
    hebbian_masks.main(flags)
    again = json.loads((tmp_path / "report.json").read_text())
    assert again["parts"] == report["parts"]
    hebbian_masks.main([*flags, "--report-only"])
    assert json.loads((tmp_path / "report.json").read_text())["parts"]["mlp"]["rows"] == \
        report["parts"]["mlp"]["rows"]


@pytest.mark.slow
def test_tiny_experiment_on_mnist_through_tfds(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    flags = ["--quick", "--settings", "sign", "--curve-parts", "--parts", "mlp",
             "--image-source", "mnist", "--out", str(tmp_path)]
    with tfds.testing.mock_data(num_examples=40):  # 40 random 28x28 images per split
        parts = hebbian_masks.main(flags)
    mlp = parts["mlp"]
    assert mlp["label"].startswith("mnist, MLP") and mlp["valid_count"] == 80
    assert mlp["test_count"] == 40 and len(mlp["rows"]) == 4
    saved = json.loads((tmp_path / "mlp" / "dense_s0_f0" / runs.CONFIG).read_text())
    assert saved["experiment"]["task"]["source"] == "mnist"


@pytest.mark.slow
def test_tiny_experiment_on_the_embedded_corpus(tmp_path):
    flags = [*TINY, "--parts", "lm", "--corpus", "embedded", "--out", str(tmp_path)]
    hebbian_masks.main(flags)
    check_report(hebbian_masks.parse_args(flags), "lm")


@pytest.mark.parametrize("flags, message", [
    (["--digits-steps", "30"], "multiple of 2 x --log-every"),
    (["--lm-lr", "0"], "--lm-lr: must be a finite number > 0"),
    (["--rate", "-1"], "--rate: must be a finite number > 0"),
    (["--curve-sparsities", "1.0"], "must be a finite number in (0, 1)"),
    (["--seeds", "0", "0"], "distinct"),
    (["--corpus", "/no/such/file.txt"], "--corpus /no/such/file.txt: no such file"),
    (["--log-every", "0"], "--log-every: must be an integer >= 1"),
    (["--folds", "1"], "--folds: must be an integer >= 2"),
])
def test_bad_flags_are_refused_in_one_line(flags, message, capsys):
    with pytest.raises(SystemExit):
        cli.run(hebbian_masks.parse_args, flags)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error
