"""Scaling of the `bench_es.py` workload: throughput and memory against population,
hidden size and sequence length.

Each sweep varies one size from the defaults (P 64, B 8, T 100, N 128, V 65). For every
point it records the `bench_es.run` JSON (best-of-``--repeats`` throughput, compile
excluded) and two memory figures from XLA's compiled memory analysis: the evaluation as
run (population streamed in chunks, see `plastix.batching`) and, compiled but not run,
plain ``vmap`` over the whole population -- what chunking saves.

    python benchmarks/scaling.py [--quick] [--out DIR]

writes ``scaling.json`` and ``scaling.png`` to ``--out`` (default ``runs/scaling``; the
published figures change only when asked for with ``--out benchmarks/results``).
"""

from __future__ import annotations

import json
import os

import bench_es  # first: it configures the XLA devices before JAX initialises
import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from plastix import batching, checks, cli, runs  # noqa: E402

DEFAULTS = {"pop": 64, "batch": 8, "seq_len": 100, "hidden": 128, "vocab": 65}
SWEEPS = {
    "pop": [2, 4, 16, 64, 256, 1024, 4096],  # ES needs a pair at least
    "hidden": [32, 64, 128, 256, 512],
    "seq_len": [25, 50, 100, 200, 400],
}
QUICK_SWEEPS = {"pop": [2, 8, 64], "hidden": [32, 128], "seq_len": [25, 100]}


def unchunked_bytes(sizes: dict) -> int:
    """`batching.compiled_bytes` of the population evaluated in one chunk (plain ``vmap``
    over the whole population), compiled but not run."""
    evolution = bench_es.make_evolution(**sizes, chunk=0)
    fitness = bench_es.evaluation(evolution, jax.random.key(0))
    key = jax.eval_shape(lambda: jax.random.key(0))
    return batching.compiled_bytes(fitness.func.lower(*fitness.args, key).compile())


def sweep(name: str, values: list[int], repeats: int) -> list[dict]:
    points = []
    for value in values:
        sizes = DEFAULTS | {name: value}
        record, _ = bench_es.run(**sizes, repeats=repeats, roofline=False, budget_s=20.0)
        record["unchunked_xla_memory_bytes"] = unchunked_bytes(sizes)
        print(json.dumps(record), flush=True)
        points.append(record)
    return points


def plot(results: dict, path: str) -> None:
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    labels = {"pop": "population P", "hidden": "hidden size N", "seq_len": "sequence length T"}
    for ax, (name, points) in zip(axes[0], results.items()):
        x = [p[name] for p in points]
        ax.plot(x, [p["synapse_updates_per_s"] / 1e9 for p in points], "o-", color="C0")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(labels[name])
        ax.set_ylabel("synapse updates / s (1e9)", color="C0")
        ax.set_ylim(bottom=0)
        mem = ax.twinx()
        mem.plot(x, [p["xla_memory_bytes"] / 2**20 for p in points], "s--", color="C1",
                 label="chunked (as run)")
        mem.plot(x, [p["unchunked_xla_memory_bytes"] / 2**20 for p in points], "^:",
                 color="C3", label="plain vmap")
        mem.set_yscale("log")
        mem.set_ylabel("XLA memory (MiB)", color="C1")
        mem.legend(loc="lower right", fontsize=8)
    device = next(iter(results.values()))[0]["device"]
    fig.suptitle(f"plastix bench_es workload scaling ({device}; others at P64 B8 T100 N128 V65)")
    fig.tight_layout()
    runs.save_figure(fig, path, dpi=110)


def parser() -> cli.Parser:
    p = cli.Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few small points only")
    p.add_argument("--repeats", type=checks.SIZE, default=3)
    p.add_argument("--out", default="runs/scaling",
                   help="directory of scaling.json and scaling.png (the published ones are in "
                        "benchmarks/results)")
    return p


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    for name in ("scaling.json", "scaling.png"):  # before the sweeps
        runs.check_output_file(os.path.join(args.out, name), "--out", name)
    sweeps = QUICK_SWEEPS if args.quick else SWEEPS
    results = {name: sweep(name, values, args.repeats) for name, values in sweeps.items()}
    runs.write_json(os.path.join(args.out, "scaling.json"), results)
    plot(results, os.path.join(args.out, "scaling.png"))
    return results


if __name__ == "__main__":
    cli.run(main)
