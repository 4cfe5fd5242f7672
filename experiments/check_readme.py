"""Re-derive the documented cheap figures from the commands printed beside them.

Each check runs one command of the results pages (the user's path: a fresh ``es_abcd.py``
process) into a scratch directory, renders the figures the page prints from the run's
``report.json`` in the page's own format, and looks for each rendered line in that page,
``docs/results/es-abcd.md``:

    python experiments/check_readme.py                   # every check, about 3 min
    python experiments/check_readme.py --only default    # one of them

Prints, per figure, ``ok`` or ``DIFFERS`` with the rerun's text, and exits 1 if any figure
differs -- a documented figure that its command no longer gives. The figures of long runs
(800-generation sweeps, the text and mask experiments) are not rerun here; their commands
are on the results pages beside them.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tempfile
from typing import Callable, NamedTuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plastix import cli  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The page where the figures checked here live (docs/results/es-abcd.md).
PAGE = os.path.join(ROOT, "docs", "results", "es-abcd.md")


class Check(NamedTuple):
    """One documented command and the lines of `PAGE` its report must reproduce."""

    flags: tuple[str, ...]                 # es_abcd.py flags, as the page prints them
    render: Callable[[dict], list[str]]    # report.json -> the page's lines


def _rows(report: dict) -> dict[str, dict]:
    return {row["model"]: row for row in report["rows"]}


def _table_row(label: str, row: dict) -> str:
    # The page's results tables: | model | test NLL (nats) | accuracy |
    return f"| {label} | {row['test_nll']:.4f} | {100 * row['test_accuracy']:.1f}% |"


def _default_rows(report: dict) -> list[str]:
    rows = _rows(report)
    labels = {"evolved rule": "evolved ABCD_lr", "plasticity off": "plasticity off",
              "random coefficients": "random coefficients (median of 8)"}
    lines = [_table_row(label, rows[model]) for model, label in labels.items()]
    # The hand rules' rows carry the rate chosen on validation, as the page prints it.
    for model, label in (("Hebb (readout)", "Hebb (readout)"),
                         ("Delta rule (readout)", "delta rule (readout)")):
        eta = ast.literal_eval(rows[model]["note"].removeprefix("best on valid: "))["eta"]
        lines.append(_table_row(f"{label}, η = {eta:g}", rows[model]))
    return lines


def _overwrite_300(report: dict) -> list[str]:
    rows = _rows(report)
    return [f"**{100 * rows['evolved rule']['test_accuracy']:.1f}%** (delta rule "
            f"{100 * rows['Delta rule (readout)']['test_accuracy']:.1f}% on the"]


CHECKS = {
    "default": Check((), _default_rows),
    "overwrite_300": Check(
        ("--task", "recall_overwrite", "--rule-out", "multilinear_mod", "--strategy", "CMA_ES",
         "--log-rates", "--init-mean", "zero", "--sigma", "0.3", "--batch", "64",
         "--generations", "300", "--log-every", "25", "--eval-batch", "1024"),
        _overwrite_300),
}


def run_check(name: str, check: Check, scratch: str) -> list[tuple[str, bool]]:
    """Run ``check``'s command into ``scratch/name``; (rendered line, found in `PAGE`)."""
    out = os.path.join(scratch, name)
    command = [sys.executable, os.path.join(ROOT, "experiments", "es_abcd.py"), *check.flags,
               "--out", out, "--no-plots"]
    print(f"[{name}] python experiments/es_abcd.py {' '.join(check.flags)}", flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise ValueError(f"[{name}] the command failed: {cli.one_line(done.stderr.strip())}")
    with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
        report = json.load(f)
    with open(PAGE, encoding="utf-8") as f:
        page = f.read()
    return [(line, line in page) for line in check.render(report)]


def parser() -> cli.Parser:
    p = cli.Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=sorted(CHECKS), default=sorted(CHECKS),
                   help="the checks to run (default: all)")
    return p


def main(argv=None) -> None:
    args, _ = cli.parse(parser(), argv)
    differs = 0
    with tempfile.TemporaryDirectory(prefix="check_readme_") as scratch:
        for name in args.only:
            for line, found in run_check(name, CHECKS[name], scratch):
                differs += not found
                print(f"  {'ok     ' if found else 'DIFFERS'} {line}", flush=True)
    where = os.path.relpath(PAGE, ROOT)
    print(f"{differs} figure(s) differ from {where}" if differs else
          f"every figure checked is in {where}")
    if differs:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
