"""A property over the flag space of es_abcd.py and sweep.py, on command lines drawn by a
seeded generator: good and bad values, settings that diverge, and run directories that
are new, hold a user's files, or hold a finished run (with --resume, --overwrite or
neither).

* exit 0 => every learned row's figures are finite, every figure that is not says so in
  its row's note, and a learned row that is the starting rule says so;
* exit != 0 => status 2 and one ``error:`` line. A run that diverged (or learned nothing)
  has written a report whose rows say so, and changed nothing outside --out; any other
  error is a refusal before the run started, which changed nothing at all.

The default tier draws a few command lines of each command; ``-m slow`` draws many more.
"""

import json
import math
import os
import random
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import es_abcd  # noqa: E402
import sweep  # noqa: E402

from plastix import cli, runs  # noqa: E402

# The shapes stay fixed (one compiled program serves many cases); values, rules, the
# outer loop and the directory vary.
BASE = ["--num-pairs", "2", "--hidden", "8", "--batch", "2", "--log-every", "1",
        "--eval-batch", "8", "--no-plots", "--report", "rule"]
VALUES = {
    "--lr": ["0.05", "0.2", "3e38", "1e39", "1e-46", "nan", "-1"],
    "--sigma": ["0.1", "1e30", "1e39", "1e-46", "0"],
    "--init-scale": ["0.5", "1e30", "1e39"],
    "--weight-noise": ["0", "0.1", "1e39"],
    "--l2": ["0", "0.01", "1e39"],
    "--generations": ["0", "1", "2", "-3"],
    "--init-mean": ["defaults", "zero", "delta", "normal"],
    "--rule-rec": ["hebb", "oja", "delta"],
    "--outer": ["es", "gradient"],
    "--grad-lr": ["0.01", "1e39"],
    "--pop": ["4", "5"],
}
DIRECTORIES = ("new", "user", "finished")
MODES = ((), ("--resume",), ("--overwrite",))


def draw_es_flags(rng: random.Random) -> list[str]:
    """Two to four flags of `VALUES`, each with one of its values."""
    flags = []
    for flag in rng.sample(sorted(VALUES), rng.randint(2, 4)):
        flags += [flag, rng.choice(VALUES[flag])]
    gradient = "--outer" in flags and flags[flags.index("--outer") + 1] == "gradient"
    if "--pop" not in flags and not gradient:
        flags += ["--pop", "4"]
    return flags


def draw_sweep_flags(rng: random.Random) -> tuple[list[str], list[str]]:
    """``(--vary flags, the cells' flags)``: an axis of one `VALUES` flag (values that may
    repeat), and one or two more flags for every cell."""
    flag = rng.choice(["--lr", "--sigma", "--init-scale", "--l2", "--init-mean", "--rule-rec"])
    values = rng.sample(VALUES[flag], rng.randint(1, 3))
    vary = ["--vary", f"{flag.removeprefix('--')}={','.join(values)}"]
    others = [f for f in ("--weight-noise", "--generations", "--init-mean") if f != flag]
    cells = []
    for other in rng.sample(others, rng.randint(0, 2)):
        cells += [other, rng.choice(VALUES[other])]
    return vary, ["--pop", "4", *cells]


def snapshot(path) -> dict[str, bytes | None]:
    """Every file (its bytes) and directory (None) under ``path``, by relative path."""
    tree = {}
    for root, dirs, names in os.walk(path):
        for name in dirs:
            tree[os.path.relpath(os.path.join(root, name), path)] = None
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                tree[os.path.relpath(os.path.join(root, name), path)] = f.read()
    return tree


def outside(tree: dict, out: str, root: str) -> dict:
    """``tree`` less what lies in the run directory ``out``."""
    rel = os.path.relpath(out, root)
    return {k: v for k, v in tree.items() if k != rel and not k.startswith(rel + os.sep)}


def prepared_out(kind: str, root, finished: str) -> str:
    """The run directory of a case: missing, a user's, or a finished es_abcd.py run."""
    out = os.path.join(root, "out")
    if kind == "user":
        os.makedirs(out)
        with open(os.path.join(out, "report.md"), "w") as f:
            f.write("my notes")
    elif kind == "finished":
        shutil.copytree(finished, out)
    return out


def run(main, argv, capsys) -> tuple[int, list[str]]:
    """``(exit status, stderr lines)`` of a command line run in-process."""
    try:
        cli.run(main, argv)
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err.strip().splitlines()


def check_learned_rows(rows: list[dict], history: list[dict], population: int | None) -> None:
    """The exit-0 half of the property, on one report's rows and its run's history."""
    learned = rows[0]
    assert all(math.isfinite(learned[k]) for k in ("test_nll", "test_accuracy")), learned
    for row in rows:
        if any(row[k] is None or not math.isfinite(row[k]) for k in ("test_nll",
                                                                     "test_accuracy")):
            assert "not finite" in row["note"], row
    if population is not None and history and all(r["nonfinite"] == population
                                                  for r in history):
        assert "starting rule" in learned["note"], learned


def diverged(err: list[str]) -> bool:
    """Whether the one error line says the run diverged or learned no rule (it ran)."""
    return any(s in err[0] for s in ("the run diverged", "learned no rule"))


def history_of(out: str) -> list[dict]:
    path = os.path.join(out, runs.METRICS)
    return runs.MetricsLog(path, step_key="generation").read() if os.path.exists(path) else []


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("finished") / "run")
    es_abcd.main([*BASE, "--pop", "4", "--generations", "2", "--out", out])
    return out


def run_case(main, argv_for, rng: random.Random, finished: str, root, capsys
             ) -> tuple[int, list[str], str]:
    """Run one drawn command line, ``argv_for(mode flags, out)``, on a run directory of a
    drawn kind beside a file of the user's, and check the half of the property every
    command shares: nothing outside --out changes; a nonzero exit is status 2 and one
    ``error:`` line, and unless the run diverged (its reports are checked by the caller)
    it was refused before it started and changed nothing. Returns ``(status, error lines,
    out)``."""
    kind, mode = rng.choice(DIRECTORIES), rng.choice(MODES)
    with open(os.path.join(root, "thesis.tex"), "w") as f:
        f.write("three years")
    out = prepared_out(kind, root, finished)
    before = snapshot(root)
    status, err = run(main, argv_for(mode, out), capsys)
    after = snapshot(root)
    assert outside(after, out, str(root)) == outside(before, out, str(root)), err
    if status != 0:
        assert status == cli.EXIT_USAGE, (status, err)
        assert len(err) == 1 and err[0].startswith("error: "), err
        if not diverged(err):
            assert after == before, err
    return status, err, out


def es_case(seed: int, finished: str, root, capsys) -> None:
    rng = random.Random(seed)
    flags = draw_es_flags(rng)
    status, err, out = run_case(es_abcd.main, lambda mode, out: [*BASE, *flags, *mode,
                                                                  "--out", out],
                                rng, finished, root, capsys)
    if status == 0 or diverged(err):
        with open(os.path.join(out, "report.json")) as f:
            rows = json.load(f)["rows"]
        if status == 0:
            if "--pop" in flags:
                check_learned_rows(rows, history_of(out), int(flags[flags.index("--pop") + 1]))
            else:  # the gradient loop: its history has steps, not generations
                check_learned_rows(rows, [], None)
        else:
            assert "no rule was learned" in rows[0]["note"] or "starting rule" in \
                rows[0]["note"], rows[0]


def sweep_case(seed: int, finished: str, root, capsys) -> None:
    rng = random.Random(seed)
    vary, cells = draw_sweep_flags(rng)
    status, err, out = run_case(sweep.main, lambda mode, out: [*vary, *mode, "--out", out,
                                                                "--", *BASE, *cells],
                                rng, finished, root, capsys)
    if status == 0 or diverged(err):
        with open(os.path.join(out, "results.jsonl")) as f:
            results = [json.loads(line) for line in f]
        for result in results:
            if result["problem"] is not None:  # named in the error line, noted in its row
                assert result["cell"] in err[0] and result["note"], result
                continue
            cell = os.path.join(out, "cells", result["cell"])
            with open(os.path.join(cell, "report.json")) as f:
                check_learned_rows(json.load(f)["rows"], history_of(cell), 4)


@pytest.mark.parametrize("seed", range(24))
def test_es_abcd_command_lines(seed, finished, tmp_path, capsys):
    es_case(seed, finished, tmp_path, capsys)


@pytest.mark.parametrize("seed", range(8))
def test_sweep_command_lines(seed, finished, tmp_path, capsys):
    sweep_case(seed, finished, tmp_path, capsys)


@pytest.mark.slow  # the same property on 176 more command lines: minutes of tiny runs
@pytest.mark.parametrize("seed", range(24, 200))
def test_es_abcd_command_lines_many(seed, finished, tmp_path, capsys):
    es_case(seed, finished, tmp_path, capsys)


@pytest.mark.slow  # the same property on 52 more sweeps
@pytest.mark.parametrize("seed", range(8, 60))
def test_sweep_command_lines_many(seed, finished, tmp_path, capsys):
    sweep_case(seed, finished, tmp_path, capsys)
