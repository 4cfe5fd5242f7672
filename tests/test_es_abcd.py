"""experiments/es_abcd.py end to end on a tiny budget: outputs, report, resume, bad input."""

import argparse
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import es_abcd  # noqa: E402

# Flags of both outer loops; TINY adds the ES population.
TINY_RUN = ["--num-pairs", "2", "--hidden", "8", "--batch", "2", "--generations", "2",
            "--log-every", "1", "--eval-batch", "16"]
TINY = TINY_RUN + ["--pop", "4"]


def with_flag(flags: list[str], name: str, value: str) -> list[str]:
    """``flags`` with the value after ``name`` replaced."""
    i = flags.index(name)
    return flags[: i + 1] + [value] + flags[i + 2:]


# The report's own row only, no plots: what the tests of run directories need; the
# baselines and plots are tested once, in the second tier.
QUICK = ["--report", "rule", "--no-plots"]
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.msgpack", "report.md", "report.json")


def test_a_run_writes_its_files_refuses_a_changed_resume_and_extends(tmp_path):
    out = str(tmp_path / "run")
    rows = es_abcd.main(TINY + QUICK + ["--out", out])
    assert [r["model"] for r in rows] == ["evolved rule"]
    for name in RUN_FILES:
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "metrics.jsonl")) as f:
        assert [json.loads(line)["generation"] for line in f] == [1, 2]

    with pytest.raises(ValueError, match="different configuration .*hidden"):
        es_abcd.main(with_flag(TINY, "--hidden", "16") + QUICK + ["--out", out, "--resume"])

    # A finished run resumed with more generations continues where it stopped.
    es_abcd.main(with_flag(TINY, "--generations", "3") + QUICK + ["--out", out, "--resume"])
    with open(os.path.join(out, "metrics.jsonl")) as f:
        assert [json.loads(line)["generation"] for line in f] == [1, 2, 3]


@pytest.mark.slow  # end to end: every baseline of the report compiles, and the plots
@pytest.mark.parametrize("outer, flags, learned", [
    ("es", TINY, "evolved rule"),
    ("gradient", TINY_RUN + ["--outer", "gradient", "--grad-lr", "0.1"], "learned rule (gradient)"),
])
def test_the_full_report_scores_every_baseline_and_draws_its_plots(outer, flags, learned,
                                                                   tmp_path):
    out = str(tmp_path / "run")
    rows = es_abcd.main(flags + ["--out", out])
    models = [r["model"] for r in rows]
    assert models[0] == learned
    for expected in ("plasticity off", "random coefficients", "Hebb (readout)",
                     "Hebb with decay (readout)", "Delta rule (readout)",
                     "bigram (train-fitted)"):
        assert expected in models
    for name in RUN_FILES + ("fitness.png", "coefficients.png", "weights.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--strategy", "NoSuchES"], "unknown ES strategy 'NoSuchES'"),
        (["--rule-out", "no_such_rule"], "unknown rule 'no_such_rule'"),
        (["--task", "no_such_task"], "no_such_task"),
        (["--pop", "5"], "--pop must be even"),
    ],
)
def test_bad_flags_give_one_line_errors(flags, message, tmp_path, capsys):
    # In this process, through the script's own entry point (`cli.run`); the next test
    # starts the script itself once.
    from plastix import cli

    with pytest.raises(SystemExit) as exit_:
        cli.run(es_abcd.main, [*flags, "--out", str(tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines


def test_the_script_answers_a_mistake_in_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "es_abcd.py"), "--pop", "5",
         "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: --pop must be even for antithetic sampling, which pairs members (z, -z), got 5"]


class Stop(Exception):
    """Ends a run where a test has seen what it needs."""


def test_without_out_every_run_gets_a_new_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    started = []

    def run_outer(cfg, mode):
        started.append((cfg.out, mode))
        raise Stop

    monkeypatch.setattr(es_abcd, "run_outer", run_outer)
    for _ in range(2):  # the same command twice: the second is not refused
        with pytest.raises(Stop):
            es_abcd.main(TINY)
    (first, mode), (second, _) = started
    assert mode == "new" and first != second
    assert sorted(os.listdir(tmp_path / "runs" / "es_abcd")) == sorted(
        os.path.basename(out) for out in (first, second))
    assert f"writing to {second}" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_resume_and_overwrite_without_out_are_refused(flag, tmp_path, monkeypatch, capsys):
    from plastix import cli

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.run(es_abcd.main, TINY + [flag])
    assert exit_.value.code == cli.EXIT_USAGE
    assert capsys.readouterr().err.startswith(f"error: {flag} needs --out DIR")
    assert not os.listdir(tmp_path)  # refused before anything


def test_help_shows_every_default():
    parser = es_abcd.parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.option_strings and action.default is not argparse.SUPPRESS:
            assert "(default" in formatter._format_action(action), action.option_strings
    # The description keeps its lines: its example commands are one per line.
    assert "\n    python experiments/es_abcd.py --out runs/x --resume" in parser.format_help()


def test_task_text_reads_the_bundled_corpus_without_a_text_path():
    from plastix import tasks

    cfg, _ = es_abcd.parse_config(["--task", "text", "--seq-len", "8", "--hidden", "4",
                                   "--out", "unused"])
    assert cfg.task.path == tasks.TINY_SHAKESPEARE  # recorded by name, not by where it lies
    assert cfg.net.vocab_size == 66


def test_delta_start_is_the_delta_rule():
    """--init-mean delta puts the readout polynomial exactly at eta (m - y) x."""
    import jax

    from plastix import evolve

    # With --log-rates (the recipe's setting) the start must also undo the log.
    args = es_abcd.parse_args(["--task", "recall_overwrite", "--rule-out", "multilinear_mod",
                               "--hidden", "8", "--init-mean", "delta", "--log-rates"])
    task = es_abcd.build_task(args)
    net = es_abcd.build_net(args, task)
    delta_net = es_abcd.with_readout_rule(net, "delta")
    delta_params = es_abcd._coeffs(delta_net, eta=es_abcd.DELTA_START_RATE)
    key = jax.random.key(3)
    started = evolve.score(net, task, es_abcd.initial_mean(net, args), key, "valid", 32)
    delta = evolve.score(delta_net, task, delta_params, key, "valid", 32)
    assert abs(float(started[0]) - float(delta[0])) < 1e-4
    assert float(started[1]) == float(delta[1])

    args = es_abcd.parse_args(["--init-mean", "delta"])  # ABCD_lr has no teacher term
    with pytest.raises(ValueError, match="needs a readout rule with a teacher term"):
        es_abcd.initial_mean(es_abcd.build_net(args, es_abcd.build_task(args)), args)


def test_hidden_rules_start_at_init_hidden_eta(capsys):
    """--init-hidden-eta sets the hidden layers' starting rate, not the readout's, through
    the log-rate mapping; a rate that is not finite and positive is named."""
    import numpy as np

    from plastix import plastic

    args = es_abcd.parse_args(["--rule-in", "hebb", "--rule-rec", "oja", "--rule-out",
                               "multilinear_mod", "--hidden", "8",
                               "--init-mean", "zero", "--log-rates",
                               "--init-hidden-eta", "0.01"])
    net = es_abcd.build_net(args, es_abcd.build_task(args))
    coeffs = plastic.rule_coeffs(net, es_abcd.initial_mean(net, args))
    for layer in ("in", "rec"):
        np.testing.assert_allclose(coeffs[layer]["eta"], 0.01, rtol=1e-6)
    np.testing.assert_allclose(coeffs["out"]["eta"], 1.0, rtol=1e-6)
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(SystemExit):
            es_abcd.parse_args(["--init-hidden-eta", bad])
        assert "argument --init-hidden-eta: must be a finite number > 0" in capsys.readouterr().err


def test_resume_refuses_a_changed_es_setting_but_not_a_changed_budget(tmp_path):
    from plastix import runs

    out = str(tmp_path)
    cfg, _ = es_abcd.parse_config(TINY + ["--out", out])
    runs.write_config(out, runs.config_dict(cfg))  # as a run of these flags left it
    with pytest.raises(ValueError, match=r"differs in: es\.lr_decay, es\.population\)"):
        es_abcd.main(TINY + ["--out", out, "--resume", "--lr-decay", "0.9", "--pop", "8"])
    allowed = with_flag(TINY, "--generations", "9") + ["--chunk-size", "2", "--no-plots"]
    cfg, _ = es_abcd.parse_config(allowed + ["--out", out])
    runs.check_config(out, runs.config_dict(cfg), True, es_abcd.MAY_CHANGE_ON_RESUME)


def test_flat_config_of_older_runs_is_read_for_resume(tmp_path):
    """Runs written before RunConfig saved their flags flat, ES ones by flag name."""
    from plastix import runs

    args = es_abcd.parse_args(TINY)
    flat = {"task": "assoc_retrieval", "num_pairs": 2, "num_keys": None, "text_path": None,
            "seq_len": None, "rule_in": "none", "rule_rec": "none", "rule_out": "ABCD_lr",
            "hidden": 8, "pop": 4, "batch": 2, "l2": 0.0, "lr": 0.2, "sigma": 0.1,
            "strategy": "Open_ES", "optimizer": "sgd", "eval_batch": 16, "log_every": 1,
            "seed": 0, "init_mean": "defaults", "init_scale": 0.1, "granularity": "shared"}
    current = runs.config_dict(es_abcd.run_config(args))
    upgraded = es_abcd.upgrade_config(flat)
    assert runs.config_diff(upgraded, current, es_abcd.MAY_CHANGE_ON_RESUME) == []
    runs.write_config(tmp_path, flat)
    with pytest.raises(ValueError, match=r"differs in: net\.hidden_size\)"):
        es_abcd.main(with_flag(TINY, "--hidden", "16") + ["--out", str(tmp_path), "--resume"])


def _non_default(flags, kwargs):
    """A command-line value for one generated flag and the config value it must give."""
    default = kwargs.get("default")
    if kwargs.get("action") is not None:  # a bool field: --F / --no-F
        return ([f"--no-{flags[0][2:]}"] if default else [flags[0]]), not default
    if flags[0] == "--memory-budget-mb":
        return [flags[0], "3"], 3 * es_abcd.MIB
    if kwargs["type"] is str:
        return [flags[0], "something_else"], "something_else"
    if kwargs["type"] is es_abcd._json_value:  # a field of a type given as JSON
        return [flags[0], "[1, 2]"], (1, 2)
    value = (default or 1) * 2
    if not kwargs["type"].holds(value):  # a bounded field: a factor in (0, 1], say
        value = default / 2
    return [flags[0], str(value)], kwargs["type"](str(value))


def test_every_es_config_field_has_a_flag():
    import dataclasses

    from plastix import evolve

    generated = es_abcd.es_flags()
    assert [name for name, _, _ in generated] == [f.name for f in dataclasses.fields(evolve.ESConfig)]
    for name, flags, kwargs in generated:
        argv, expected = _non_default(flags, kwargs)
        assert getattr(es_abcd.parse_args(argv), name) == expected, (name, argv)
    spelled = {flags[0] for _, flags, _ in generated}
    assert {"--pop", "--batch", "--lr", "--sigma", "--l2", "--strategy", "--optimizer",
            "--eval-batch", "--chunk-size", "--memory-budget-mb", "--lr-decay", "--lr-min",
            "--sigma-decay", "--sigma-min", "--antithetic"} <= spelled
    args = es_abcd.parse_args(["--lr-decay", "0.9", "--no-antithetic", "--sigma-min", "0.05"])
    cfg = es_abcd.build_es_config(args)
    assert (cfg.lr_decay, cfg.antithetic, cfg.sigma_min) == (0.9, False, 0.05)


def test_a_field_added_to_the_es_config_gets_a_flag():
    import argparse
    import dataclasses

    from plastix import evolve

    @dataclasses.dataclass(frozen=True)
    class Extended(evolve.ESConfig):
        """ES config with two more fields.

        Attributes:
          mean_decay: a float field added later.
          elitist: a bool field added later.
        """

        mean_decay: float = 0.5
        elitist: bool = False

    parser = argparse.ArgumentParser()
    es_abcd.add_es_flags(parser, Extended)
    args = parser.parse_args(["--mean-decay", "0.25", "--elitist", "--pop", "6"])
    cfg = es_abcd.build_es_config(args, Extended)
    assert (cfg.mean_decay, cfg.elitist, cfg.population) == (0.25, True, 6)
    assert "a float field added later" in parser.format_help()


def test_large_coefficient_arrays_print_as_a_summary():
    import numpy as np

    assert es_abcd.summarise(np.array([1.23456, 2.0])) == [1.235, 2.0]
    summary = es_abcd.summarise(np.arange(40.0).reshape(2, 20))
    assert summary == {"shape": [2, 20], "mean": 19.5, "std": 11.54, "min": 0.0, "max": 39.0}


def test_gradient_outer_loop_writes_the_same_run_directory_and_resumes(tmp_path):
    from plastix import metagrad

    out = str(tmp_path / "run")
    grad = TINY_RUN + ["--outer", "gradient", "--grad-lr", "0.1"] + QUICK
    rows = es_abcd.main(grad + ["--out", out])
    assert [r["model"] for r in rows] == ["learned rule (gradient)"]
    for name in RUN_FILES:
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["outer"] == "gradient"

    # The same directory cannot be resumed by the other outer loop, nor with other settings.
    with pytest.raises(ValueError, match=r"differs in: es\.population, grad\.learning_rate, outer\)"):
        es_abcd.main(TINY + QUICK + ["--out", out, "--resume"])
    with pytest.raises(ValueError, match=r"differs in: grad\.learning_rate"):
        es_abcd.main(with_flag(grad, "--grad-lr", "0.2") + ["--out", out, "--resume"])

    # Extended on resume, it equals a run that long from the start.
    es_abcd.main(with_flag(grad, "--generations", "3") + ["--out", out, "--resume"])
    straight = str(tmp_path / "straight")
    es_abcd.main(with_flag(grad, "--generations", "3") + ["--out", straight])
    records = []
    for run in (out, straight):
        with open(os.path.join(run, "metrics.jsonl")) as f:
            records.append([{k: v for k, v in json.loads(line).items()
                             if k not in metagrad.TIMING_FIELDS}
                            for line in f])
    assert [r["step"] for r in records[0]] == [1, 2, 3]
    assert records[0] == records[1]


def test_every_gradient_config_field_has_a_flag_of_its_own():
    import dataclasses

    from plastix import metagrad

    args = es_abcd.parse_args(["--grad-lr", "0.5", "--grad-lr-decay", "0.9", "--grad-lr-min",
                               "0.1", "--grad-clip", "2", "--truncation", "5",
                               "--checkpoint-every", "3", "--batch", "7", "--eval-batch", "9",
                               "--l2", "0.25", "--l2-reduce", "mean"])
    grad, es = es_abcd.build_grad_config(args), es_abcd.build_es_config(args)
    assert dataclasses.astuple(grad) == (0.5, 0.9, 0.1, 2.0, 7, 5, 3, 0.25, "mean", 9)
    assert (es.lr_decay, es.lr_min) == (0.995, 0.01)  # same-named ES fields untouched
    assert (es.batch, es.eval_batch, es.l2_penalty) == (7, 9, 0.25)  # one problem for both
    args = es_abcd.parse_args(["--lr-decay", "0.8"])
    assert es_abcd.build_grad_config(args).lr_decay == 1.0
    assert [f.name for f in dataclasses.fields(metagrad.GradConfig)] == [
        "learning_rate", "lr_decay", "lr_min", "clip_norm", "batch", "truncation",
        "checkpoint_every", "l2_penalty", "l2_reduce", "eval_batch"]


def test_es_runs_saved_before_the_gradient_loop_are_resumed_as_es_runs(tmp_path):
    from plastix import runs

    cfg, _ = es_abcd.parse_config(TINY + ["--out", str(tmp_path)])
    saved = runs.config_dict(cfg)
    del saved["outer"], saved["grad"]  # the layout of ES runs before --outer existed
    runs.write_config(tmp_path, saved)
    runs.check_config(tmp_path, runs.config_dict(cfg), True, es_abcd.MAY_CHANGE_ON_RESUME,
                      upgrade=es_abcd.upgrade_config)
    gradient, _ = es_abcd.parse_config(TINY_RUN + ["--out", str(tmp_path), "--outer", "gradient"])
    with pytest.raises(ValueError, match=r"differs in: es\.population, outer\)"):
        runs.check_config(tmp_path, runs.config_dict(gradient), True,
                          es_abcd.MAY_CHANGE_ON_RESUME, upgrade=es_abcd.upgrade_config)
