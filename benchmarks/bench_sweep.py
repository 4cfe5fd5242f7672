"""Wall time of a grid run by ``experiments/sweep.py`` against the same cells run as
separate ``es_abcd.py --report rule --no-plots`` processes, one after the other (the shell
loop a sweep replaces), in one sitting. Prints JSON: both wall times, their ratio, and the
largest difference between the two ways' held-out accuracies (they run the same cells).

    python benchmarks/bench_sweep.py --vary rule-out=ABCD_lr,hebb --vary seed=0,1,2 \\
        -- --generations 20 --pop 16 --batch 8 --eval-batch 64
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *argv], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--vary", action="append", required=True, metavar="FLAG=V1,V2,...")
    p.add_argument("flags", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    base = [f for f in args.flags if f != "--"]
    axes = [(f, vs.split(",")) for f, _, vs in (v.partition("=") for v in args.vary)]
    with tempfile.TemporaryDirectory() as tmp:
        sweep_s = timed([os.path.join(EXPERIMENTS, "sweep.py"), "--out", f"{tmp}/sweep",
                         *itertools.chain.from_iterable(("--vary", v) for v in args.vary),
                         "--", *base])
        separate_s, accuracies = 0.0, []
        for i, combo in enumerate(itertools.product(*(vs for _, vs in axes))):
            flags = list(itertools.chain.from_iterable((f"--{f}", v)
                                                       for (f, _), v in zip(axes, combo)))
            out = f"{tmp}/cell{i}"
            separate_s += timed([os.path.join(EXPERIMENTS, "es_abcd.py"), *base, *flags,
                                 "--out", out, "--report", "rule", "--no-plots"])
            with open(f"{out}/report.json") as f:
                accuracies.append(json.load(f)["rows"][0]["test_accuracy"])
        with open(f"{tmp}/sweep/results.jsonl") as f:
            swept = [json.loads(line)["test_accuracy"] for line in f]
    result = {"cells": len(accuracies), "sweep_s": round(sweep_s, 1),
              "separate_processes_s": round(separate_s, 1),
              "ratio_separate_over_sweep": round(separate_s / sweep_s, 2),
              "max_accuracy_difference": max(abs(a - b) for a, b in zip(swept, accuracies)),
              "grid": args.vary, "flags": base}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
