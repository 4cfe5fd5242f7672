"""Values checked in the dtype that computes them, and runs that diverge said to have.

Every real setting is checked as the float32 the program computes with: 1e39 is finite in
Python and infinite in float32, 1e-46 is above 0 in Python and 0 in float32; both are
refused by name, on the command line and in the Python API alike. A run whose learned
parameters (or their test figures) end non-finite, or whose outer loop never had a finite
step, writes its report saying so and then exits with one ``error:`` line.
"""

import json
import os
import re
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import es_abcd

from conftest import refused_line  # noqa: E402
from plastix import checks, evolve, metagrad, plastic, rules

TINY = ["--num-pairs", "2", "--hidden", "8", "--batch", "2", "--generations", "1",
        "--log-every", "1", "--eval-batch", "16", "--pop", "4", "--no-plots",
        "--report", "rule"]
OVER = "in float32 (at most 3.40282e+38 in magnitude), got 1e39"


def refused(argv, capsys) -> str:
    """The one stderr line of a command line refused with status 2."""
    return refused_line(es_abcd.main, argv, capsys)

# --- the bound itself ---------------------------------------------------------------------


@pytest.mark.parametrize("bound, value, message", [
    (checks.RATE, 1e39, ("x must be a finite number > 0 in float32 (at most 3.40282e+38 in "
                        "magnitude), got 1e+39")),
    (checks.RATE, -1e39, "x must be a finite number > 0, got -1e+39"),
    (checks.RATE, 1e-46, ("x must be a finite number > 0 in float32 (1e-46 is 0 there; its "
                         "smallest normal number is 1.17549e-38), got 1e-46")),
    # XLA flushes a subnormal float32 to zero: 1e-40 computes as 0.
    (checks.RATE, 1e-40, "x must be a finite number > 0 in float32 (1e-40 is 0 there"),
    (checks.FACTOR, 1e-46, "x must be a finite number in (0, 1] in float32 (1e-46 is 0"),
    (checks.number(at_least=0, below=1), 1 - 1e-12,
     "x must be a finite number in [0, 1) in float32 (0.999999999999 is 1 there)"),
    (checks.NONNEGATIVE, 1e39, "x must be a finite number >= 0 in float32"),
    (checks.number(), -1e39, "x must be a finite number in float32"),
])
def test_a_bound_holds_in_float32(bound, value, message):
    with pytest.raises(checks.FieldError, match="^" + re.escape(message)):
        bound.check("x", value)


@pytest.mark.parametrize("bound, value", [
    (checks.RATE, 3.4e38), (checks.RATE, 1.2e-38), (checks.NONNEGATIVE, 1e-46),
    (checks.NONNEGATIVE, 0.0), (checks.FACTOR, 1.0), (checks.number(), -3.4e38),
])
def test_values_float32_holds_pass(bound, value):
    assert bound.check("x", value) == value and bound.parse(repr(value)) == value


# --- the command line ---------------------------------------------------------------------

FLOAT32_FLAGS = [
    (["--lr", "1e39"], f"argument --lr: must be a finite number > 0 {OVER}"),
    (["--lr", "1e-46"], "argument --lr: must be a finite number > 0 in float32 (1e-46 is 0"),
    (["--sigma", "1e39"], f"argument --sigma: must be a finite number > 0 {OVER}"),
    (["--sigma", "1e-46"], "argument --sigma: must be a finite number > 0 in float32"),
    (["--lr-decay", "1e-46"], ("argument --lr-decay: must be a finite number in (0, 1] in "
                              "float32 (1e-46 is 0")),
    (["--l2", "1e39"], f"argument --l2/--l2-penalty: must be a finite number >= 0 {OVER}"),
    (["--init-scale", "1e39"], f"argument --init-scale: must be a finite number >= 0 {OVER}"),
    (["--weight-noise", "1e39"],
     f"argument --weight-noise: must be a finite number >= 0 {OVER}"),
    (["--init-mean", "zero", "--init-hidden-eta", "1e-46"],
     "argument --init-hidden-eta: must be a finite number > 0 in float32 (1e-46 is 0"),
    (["--init-mean", "zero", "--init-hidden-eta", "1e39"],
     f"argument --init-hidden-eta: must be a finite number > 0 {OVER}"),
    (["--outer", "gradient", "--grad-lr", "1e39"],
     f"argument --grad-lr: must be a finite number > 0 {OVER}"),
    (["--outer", "gradient", "--grad-clip", "1e-46"],
     "argument --grad-clip: must be a finite number > 0 in float32 (1e-46 is 0"),
    (["--memory-budget-mb", "1e39"], "argument --memory-budget-mb: must be a finite number > 0"),
    (["--rule-out", "rls(alpha=1e-45)"], ("rule 'rls': alpha must be a finite number > 0 in "
                                         "float32 (1e-45 is 0 there")),
    (["--rule-out", "rls(alpha=inf)"], ("rule 'rls': alpha must be a finite number > 0 (the "
                                       "prior covariance P(0) = I / alpha must be finite in "
                                       "float32), got inf")),
    (["--rule-out", "modulated(hebb, 0.99999999999)"],
     "modulated(hebb): trace_decay must be a finite number in [0, 1) in float32"),
]


@pytest.mark.parametrize("flags, message", FLOAT32_FLAGS,
                         ids=[" ".join(f) for f, _ in FLOAT32_FLAGS])
def test_a_flag_past_float32_is_refused_by_name(flags, message, tmp_path, capsys):
    argv = [t for t in TINY if t != "--pop" and t != "4"] if "gradient" in flags else TINY
    line = refused(argv + flags + ["--out", str(tmp_path / "run")], capsys)
    assert message in line, line
    assert not os.path.exists(tmp_path / "run")  # refused before anything


# --- the Python API -----------------------------------------------------------------------

API_VALUES = [
    (lambda: evolve.ESConfig(lr=1e39), "lr must be a finite number > 0 in float32"),
    (lambda: evolve.ESConfig(sigma=1e-46, sigma_min=0.0),
     "sigma must be a finite number > 0 in float32 (1e-46 is 0"),
    (lambda: metagrad.GradConfig(learning_rate=1e39),
     "gradient learning_rate must be a finite number > 0 in float32"),
    (lambda: plastic.PlasticRNN(vocab_size=4, init_scale=1e39),
     "PlasticRNN init_scale must be a finite number >= 0 in float32"),
    (lambda: plastic.PlasticRNN(vocab_size=4, weight_noise=1e39),
     "PlasticRNN weight_noise must be a finite number >= 0 in float32"),
    (lambda: rules.rls(alpha=float("inf")), ("rule 'rls': alpha must be a finite number > 0 "
                                            "(the prior covariance P(0) = I / alpha")),
    (lambda: rules.rls(alpha=1e-45), ("rule 'rls': alpha must be a finite number > 0 in "
                                     "float32 (1e-45 is 0 there")),
    (lambda: rules.rls(alpha=0.0), "rule 'rls': alpha must be a finite number > 0"),
    (lambda: rules.rls(forget=1e-46), ("rule 'rls': forget must be a finite number in (0, 1] "
                                      "in float32 (1e-46 is 0 there")),
    (lambda: rules.get("rls(alpha=1e-45)"), ("rule 'rls': alpha must be a finite number > 0 "
                                            "in float32")),
    (lambda: rules.krotov(p=1.5), ("rule 'krotov': p must be a finite number >= 2 "
                                  "(|w|^(p-2) must be finite at w = 0), got 1.5")),
    (lambda: rules.krotov(k=2.5), "rule 'krotov': k must be an integer >= 2"),
    (lambda: rules.soft_wta(inverse_temperature=1e39),
     "rule 'soft_wta': inverse_temperature must be a finite number in float32"),
    (lambda: rules.err_credit(post_rate=1.5), ("rule 'err_credit': post_rate must be a "
                                              "finite number in [0, 1]")),
    (lambda: rules.covariance(rate=float("nan")), "rule 'covariance': rate must be"),
    (lambda: rules.bcm(rate=-0.1), "rule 'bcm': rate must be a finite number in [0, 1]"),
    (lambda: rules.bcpnn(gain=1e39), "rule 'bcpnn': gain must be a finite number in float32"),
    (lambda: rules.backpropamine(clip=1e39), ("rule 'backpropamine': clip must be a finite "
                                             "number > 0 in float32")),
    (lambda: rules.modulated(rules.hebb(), trace_decay=1 - 1e-12),
     "modulated(hebb): trace_decay must be a finite number in [0, 1) in float32"),
    (lambda: rules.hebbian_mask(limit=1e39), ("rule 'hebbian_mask': limit must be a finite "
                                             "number in float32")),
    # equal in float32: no band between the thresholds and the limit
    (lambda: rules.hebbian_mask(prune_below=-1.0, regrow_above=1.0, limit=1.00000001),
     "need -limit < prune_below <= regrow_above < limit"),
]


@pytest.mark.parametrize("make, message", API_VALUES, ids=[m for _, m in API_VALUES])
def test_an_api_value_past_float32_is_refused_by_name(make, message):
    with pytest.raises(ValueError) as error:
        make()
    assert message in str(error.value), str(error.value)


def test_rls_at_its_smallest_float32_alpha_stays_finite():
    w = np.zeros((3, 4), np.float32)
    rule = rules.rls(alpha=1.2e-38)
    state = rule.init(w)
    dw, state = rule.update(rule.default_coeffs, state, w, np.eye(4, dtype=np.float32)[0],
                            np.zeros(3, np.float32), np.ones(3, np.float32))
    assert np.all(np.isfinite(dw)) and np.all(np.isfinite(state))


# --- runs that diverge --------------------------------------------------------------------


def _report(run: str) -> tuple[dict, str]:
    with open(os.path.join(run, "report.json")) as f:
        report = json.load(f)  # valid JSON: a figure that is not finite is null
    with open(os.path.join(run, "report.md")) as f:
        return report, f.read()


def test_a_run_whose_rule_diverges_exits_with_one_line_after_its_report(tmp_path, capsys):
    # An ES step of 3e38 (finite in float32) throws the mean past float32's range.
    run = str(tmp_path / "run")
    line = refused(TINY + ["--lr", "3e38", "--out", run], capsys)
    assert line.startswith("error: the run diverged: the learned parameters out.")
    assert "out.eta" in line and "are not finite" in line and run in line
    report, text = _report(run)
    row = report["rows"][0]
    assert row["model"] == "evolved rule" and row["test_nll"] is None
    assert "are not finite: no rule was learned" in row["note"] and "out.eta" in row["note"]
    assert "| evolved rule | not finite | not finite |" in text and "nan" not in text


def test_a_run_without_a_finite_member_says_it_is_the_starting_rule(tmp_path, capsys):
    # Every member 1e30 away from the mean diverges: ES is told a flat generation and its
    # mean stays where it started.
    run = str(tmp_path / "run")
    line = refused(TINY + ["--generations", "2", "--sigma", "1e30", "--sigma-min", "0",
                           "--out", run], capsys)
    assert line == (f"error: the run diverged: no generation had a finite member (all 4 "
                    f"members of each of the 2 generations diverged); its report in {run} "
                    f"says so")
    row = _report(run)[0]["rows"][0]
    assert row["note"].endswith(": this is the starting rule")
    assert np.isfinite(row["test_nll"])


def _cfg(outer: str) -> es_abcd.RunConfig:
    argv = TINY if outer == "es" else [t for t in TINY if t not in ("--pop", "4")]
    return es_abcd.parse_config(argv + ["--outer", outer])[0]


START = {"coeffs": {"out": {"A": np.ones(()), "eta": np.full((), 0.01)}}}
MOVED = {"coeffs": {"out": {"A": np.full((), 1.5), "eta": np.full((), 0.01)}}}


def test_every_skipped_update_is_the_starting_rule():
    cfg = _cfg("gradient")
    history = [{"step": 2, "nonfinite": 2}, {"step": 4, "nonfinite": 2}]
    note, problem = es_abcd.learned_outcome(cfg, history, START, START, cfg.net)
    assert problem == "every update was skipped (4 of 4 had a loss or gradient not finite)"
    assert note == problem + ": this is the starting rule"
    history[0]["nonfinite"] = 1  # one update applied: no failure, and the note says so
    assert es_abcd.learned_outcome(cfg, history, START, START, cfg.net) == (
        "unchanged by 4 updates: this is the starting rule", None)


def test_an_unchanged_rule_is_never_presented_as_learned():
    cfg = _cfg("es")
    assert es_abcd.learned_outcome(cfg, [], START, START, cfg.net) == (
        "no generation ran: this is the starting rule", None)
    history = [{"generation": 2, "nonfinite": 1}]
    assert es_abcd.learned_outcome(cfg, history, START, START, cfg.net) == (
        "unchanged by 2 generations: this is the starting rule", None)
    assert es_abcd.learned_outcome(cfg, history, START, MOVED, cfg.net) == ("", None)
    nan = jax.tree.map(lambda x: x * np.nan, MOVED)
    note, problem = es_abcd.learned_outcome(cfg, history, START, nan, cfg.net)
    assert problem == "the learned parameters out.A, out.eta are not finite"
    assert note == problem + ": no rule was learned"


def test_a_baseline_that_diverges_says_so_and_stays_valid_json():
    rows = es_abcd.noted_nonfinite([es_abcd.result_row("x", float("inf"), 0.5, "best on valid"),
                                    es_abcd.result_row("y", 1.0, 0.5)])
    assert rows[0]["note"] == "best on valid; not finite: its test lifetimes diverge"
    assert rows[1]["note"] == "" and not es_abcd.finite_row(rows[0])
