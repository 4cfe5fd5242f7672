"""Wall time of a grid run by ``experiments/sweep.py`` against the same cells run as
separate ``es_abcd.py --report rule --no-plots`` processes, one after the other (the shell
loop a sweep replaces), in one sitting. Prints JSON (``--out`` also writes it): both wall
times, their ratio, and the largest difference between the two ways' held-out accuracies
(they run the same cells, so it should be float noise).

    python benchmarks/bench_sweep.py --vary rule-out=ABCD_lr,hebb --vary seed=0,1,2 \\
        --out benchmarks/results/sweep_6cells.json \\
        -- --generations 20 --pop 16 --batch 8 --eval-batch 64

The grid is read and every cell checked as ``sweep.py`` reads and checks it (the same
``--vary``, ``--config`` and flags after ``--``) before anything runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")
sys.path.insert(0, EXPERIMENTS)

import sweep  # noqa: E402
from plastix import cli, runs  # noqa: E402


def parser() -> cli.Parser:
    p = cli.Parser(description=__doc__)
    sweep.add_grid_arguments(p)
    p.add_argument("--out", help="also write the JSON to this file")
    p.add_argument("--sweep-out", help="keep the timed sweep's run directory here (its table "
                                       "and heatmap); by default it is a temporary one")
    return p


def timed(argv: list[str]) -> float:
    """Seconds one ``python <argv>`` process takes, start to exit."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *argv], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    args = cli.parse(parser(), argv)[0]
    if args.out is not None:
        runs.check_output_file(args.out, "--out", "bench_sweep.json")
    if args.sweep_out is not None and os.path.exists(args.sweep_out) and (
            not os.path.isdir(args.sweep_out) or os.listdir(args.sweep_out)):
        raise ValueError(f"--sweep-out {args.sweep_out}: give a new or empty directory "
                         f"(the timed sweep starts from nothing)")
    axes, base = sweep.read_spec(args)
    with tempfile.TemporaryDirectory() as tmp:
        sweep_out = args.sweep_out or f"{tmp}/sweep"
        cells = sweep.grid(axes, base)  # refuses a bad cell before any run
        vary = [x for flag, values in axes.items()
                for x in ("--vary", f"{flag}={','.join(values)}")]
        sweep_s = timed([os.path.join(EXPERIMENTS, "sweep.py"), "--out", sweep_out,
                         *vary, "--", *base])
        with open(f"{sweep_out}/results.jsonl") as f:
            swept = {row["cell"]: row["test_accuracy"] for row in map(json.loads, f)}
        separate_s, difference = 0.0, 0.0
        for cell in cells:
            out = f"{tmp}/separate/{cell.name}"
            separate_s += timed([os.path.join(EXPERIMENTS, "es_abcd.py"), *base,
                                 *sweep.cell_flags(cell.values), "--out", out,
                                 "--report", "rule", "--no-plots"])
            with open(f"{out}/report.json") as f:
                alone = json.load(f)["rows"][0]["test_accuracy"]
            difference = max(difference, abs(alone - swept[cell.name]))
    result = {"cells": len(cells), "compiled_groups": len(sweep.groups(cells)),
              "sweep_s": round(sweep_s, 1), "separate_processes_s": round(separate_s, 1),
              "ratio_separate_over_sweep": round(separate_s / sweep_s, 2),
              "max_accuracy_difference": difference,
              "grid": {flag: values for flag, values in axes.items()}, "flags": base}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        runs.write_text(args.out, text + "\n")
    return result


if __name__ == "__main__":
    cli.run(main)
