"""experiments/es_abcd.py end to end on a tiny budget: outputs, report, resume, bad input."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import es_abcd  # noqa: E402

TINY = ["--num-pairs", "2", "--hidden", "8", "--pop", "4", "--batch", "2", "--generations", "2",
        "--log-every", "1", "--eval-batch", "16"]


def with_flag(flags: list[str], name: str, value: str) -> list[str]:
    """``flags`` with the value after ``name`` replaced."""
    i = flags.index(name)
    return flags[: i + 1] + [value] + flags[i + 2:]


def test_tiny_run_writes_everything_and_refuses_a_changed_resume(tmp_path):
    out = str(tmp_path / "run")
    rows = es_abcd.main(TINY + ["--out", out])
    models = [r["model"] for r in rows]
    for expected in ("evolved rule", "plasticity off", "random coefficients", "Hebb (readout)",
                     "Hebb with decay (readout)", "Delta rule (readout)", "bigram (train-fitted)"):
        assert expected in models
    for name in ("config.json", "metrics.jsonl", "checkpoint.msgpack", "report.md",
                 "report.json", "fitness.png", "coefficients.png", "weights.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "metrics.jsonl")) as f:
        assert [json.loads(line)["generation"] for line in f] == [1, 2]

    with pytest.raises(ValueError, match="different configuration .*hidden"):
        es_abcd.main(with_flag(TINY, "--hidden", "16") + ["--out", out, "--resume"])

    # A finished run resumed with more generations continues where it stopped.
    es_abcd.main(with_flag(TINY, "--generations", "3") + ["--out", out, "--resume", "--no-plots"])
    with open(os.path.join(out, "metrics.jsonl")) as f:
        assert [json.loads(line)["generation"] for line in f] == [1, 2, 3]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--strategy", "NoSuchES"], "unknown ES strategy 'NoSuchES'"),
        (["--rule-out", "no_such_rule"], "unknown rule 'no_such_rule'"),
        (["--task", "no_such_task"], "no_such_task"),
        (["--pop", "5"], "population must be even"),
    ],
)
def test_bad_flags_give_one_line_errors(flags, message, tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "es_abcd.py"), *flags,
         "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], out.stderr


def test_delta_start_is_the_delta_rule():
    """--init-mean delta puts the readout polynomial exactly at eta (m - y) x."""
    import jax

    from plastix import evolve

    # With --log-rates (the recipe's setting) the start must also undo the log.
    args = es_abcd.parse_args(["--task", "recall_overwrite", "--rule-out", "multilinear_mod",
                               "--hidden", "8", "--init-mean", "delta", "--log-rates"])
    task = es_abcd.build_task(args)
    net = es_abcd.build_net(args, task.vocab_size)
    delta_net = es_abcd.with_readout_rule(net, "delta")
    delta_params = es_abcd._coeffs(delta_net, eta=es_abcd.DELTA_START_RATE)
    key = jax.random.key(3)
    started = evolve.score(net, task, es_abcd.initial_mean(net, args), key, "valid", 32)
    delta = evolve.score(delta_net, task, delta_params, key, "valid", 32)
    assert abs(float(started[0]) - float(delta[0])) < 1e-4
    assert float(started[1]) == float(delta[1])

    args = es_abcd.parse_args(["--init-mean", "delta"])  # ABCD_lr has no teacher term
    with pytest.raises(ValueError, match="needs a readout rule with a teacher term"):
        es_abcd.initial_mean(es_abcd.build_net(args, 37), args)
