"""The main job's generations against the former fused kernel, interleaved in one process.

Before plastix had one plastic network, the fast lifetime was a separate module
(``plastix/kernels.py``, last at commit fd2beb9) that only the benchmarks reached. This
script loads that file from a checkout of that commit and times, round after round on the
same `bench_es.py` workload:

* ``old_kernel``: its population evaluation as its own benchmark ran it (coefficients
  already split over the devices, one member per device at a time);
* ``evaluation``: `bench_es.evaluation`, the population evaluation of es_abcd.py;
* ``generation``: whole ES generations (`Evolution.run`, ask, every lifetime, tell, in a
  compiled block of ``--generations``), the figure es_abcd.py logs.

Interleaving matters on a shared machine whose speed drifts by tens of percent between
minutes: each round's ratios compare runs seconds apart. Both sides evaluate the same
members on the same initial weights and tokens, and their fitness must agree (printed).

    git worktree add /tmp/plastix-fd2beb9 fd2beb9
    python benchmarks/ab_old_kernel.py --old-checkout /tmp/plastix-fd2beb9 [--rounds 8]

prints one JSON line: best seconds and synapse updates/s of each side over all rounds,
the ratio of the bests, and the median of the per-round ratios.
"""

from __future__ import annotations

import bench_es  # first: it configures the XLA devices before JAX initialises

import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from plastix import batching, checks, cli  # noqa: E402


def kernel_path(checkout: str) -> str:
    """``plastix/kernels.py`` of ``checkout``; ValueError naming --old-checkout if absent."""
    path = os.path.join(checkout, "plastix", "kernels.py")
    if not os.path.isfile(path):
        raise checks.FieldError("--old-checkout", f"{checkout} holds no plastix/kernels.py: "
                                                  f"give a checkout of commit fd2beb9 (git "
                                                  f"worktree add DIR fd2beb9)")
    return path


def load_old_kernel(checkout: str):
    """``plastix/kernels.py`` of ``checkout`` as a standalone module (it imports only jax)."""
    path = kernel_path(checkout)
    spec = importlib.util.spec_from_file_location("old_kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def old_kernel_fitness(kernels, evolution, inputs):
    """The former benchmark's timed function on ``inputs`` (`bench_es.workload_inputs`):
    ``() -> mean NLL per member``, one member per device at a time."""
    mesh = evolution.mesh
    coeffs = jax.device_put(inputs["coeffs"], NamedSharding(mesh, PartitionSpec("pop")))
    weights, tokens = inputs["weights"], inputs["tokens"]

    def member(member_coeffs):
        nll, _ = kernels.lifetime(member_coeffs, weights, tokens)
        return jnp.mean(nll)

    population = jax.jit(batching.population_map(
        member, chunk_size=mesh.devices.size, multiple_of=mesh.devices.size))
    return lambda: population(coeffs)


# The workload flags (dests) this comparison does not read.
UNREAD = ("memory_budget", "profile", "roofline")


def parser() -> cli.Parser:
    p = bench_es.make_parser()
    p.description = __doc__.split("\n\n")[0]
    p.add_argument("--old-checkout", required=True,
                   help="a checkout of commit fd2beb9 (the former plastix/kernels.py)")
    p.add_argument("--rounds", type=checks.SIZE, default=8)
    p.set_defaults(vocab=66, generations=1)  # generations are always timed here
    return p


def main(argv=None) -> dict:
    args = bench_es.parse_args(parser(), argv, unread=UNREAD)
    if args.generations < 1:
        raise checks.FieldError("--generations", f"must be >= 1 here (the generations of a "
                                                 f"timed block), got {args.generations}")
    kernels = load_old_kernel(args.old_checkout)
    evolution = bench_es.make_evolution(args.pop, args.batch, args.seq_len, args.hidden,
                                        args.vocab, args.chunk, seed=args.seed,
                                        noise_table=args.noise_table)
    population_key, eval_key = jax.random.key(args.seed + 1), jax.random.key(args.seed + 2)
    old = old_kernel_fitness(kernels, evolution,
                             bench_es.workload_inputs(evolution, population_key, eval_key))
    new = bench_es.evaluation(evolution, population_key)
    fitness_diff = float(np.max(np.abs(np.asarray(old()) - np.asarray(new(eval_key)))))
    generations = args.generations
    state = evolution.place(evolution.init(jax.random.key(0)))
    block = lambda s: evolution.run(s, jax.random.key(1), 0, generations)[0]
    jax.block_until_ready(block(state))  # compiles

    times = {"old_kernel": [], "evaluation": [], "generation": []}
    for _ in range(args.rounds):
        times["old_kernel"].append(bench_es.best_time(old, repeats=args.repeats)[0])
        times["evaluation"].append(bench_es.best_time(new, eval_key, repeats=args.repeats)[0])
        times["generation"].append(bench_es.best_time(block, state, repeats=1)[0] / generations)

    updates = bench_es.synapse_updates(evolution)
    record = {"benchmark": "ab_old_kernel", "pop": args.pop, "batch": args.batch,
              "seq_len": args.seq_len, "hidden": args.hidden, "vocab": args.vocab,
              "rounds": args.rounds, "generations_per_block": generations,
              "noise_table": args.noise_table, "max_abs_fitness_diff": fitness_diff,
              "device": bench_es.device_name(), "load_average": os.getloadavg()[:2]}
    for name, seconds in times.items():
        record[name] = {"best_seconds": min(seconds),
                        "synapse_updates_per_s": updates / min(seconds)}
        if name != "old_kernel":
            record[name]["of_old_kernel_best"] = min(times["old_kernel"]) / min(seconds)
            record[name]["of_old_kernel_median_round"] = statistics.median(
                o / s for o, s in zip(times["old_kernel"], seconds))
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    cli.run(main)
