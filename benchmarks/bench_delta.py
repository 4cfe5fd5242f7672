"""The delta rule over a sequence: per-token scan vs the chunkwise (WY) form.

For every sequence length T it times, on (batch, heads, T, d) float32 inputs (unit keys
and queries, beta in (0, 1)), the jitted forward pass (outputs and final memory) and the
forward + backward pass (gradient of a scalar of the outputs w.r.t. q, k, v and beta) of
`plastix.delta_rule.delta_rule_recurrent` (a ``lax.scan`` over tokens) and of
`plastix.delta_rule.delta_rule_chunkwise`; compilation is excluded (one warm-up call),
every call ends in ``block_until_ready``, and the best of ``--repeats`` runs is kept. It
reports the speedups and the largest absolute differences between the two forms' outputs,
final memories and gradients. Prints one JSON line (and writes it to ``--out`` if given).

    python benchmarks/bench_delta.py --seq-lens 256 1024 4096
"""

from __future__ import annotations

import json
import platform

import jax
import jax.numpy as jnp
from bench_fast_weights import best_time

from plastix import checks, cli, delta_rule, runs


def inputs(seq_len: int, batch: int, heads: int, dim: int):
    """(q, k, v, beta): unit keys and queries as DeltaNet feeds them, beta in (0, 1)."""
    kq, kk, kv, kb = jax.random.split(jax.random.key(0), 4)
    shape = (batch, heads, seq_len, dim)
    q, k = (x / jnp.linalg.norm(x, axis=-1, keepdims=True)
            for x in (jax.random.normal(kq, shape), jax.random.normal(kk, shape)))
    return q, k, jax.random.normal(kv, shape), jax.nn.sigmoid(jax.random.normal(kb, shape[:-1]))


def forms(chunk_size: int) -> dict:
    return {"recurrent": delta_rule.delta_rule_recurrent,
            "chunkwise": lambda *a: delta_rule.delta_rule_chunkwise(*a, chunk_size=chunk_size)}


def max_abs_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                               jax.tree.leaves(b)))


def time_length(seq_len: int, args) -> dict:
    """One row: both forms' forward and forward + backward times at this T."""
    x = inputs(seq_len, args.batch, args.heads, args.dim)
    row = {"seq_len": seq_len}
    for pass_name in ("forward", "train"):
        results = {}
        for name, form in forms(args.chunk_size).items():
            if pass_name == "train":
                fn = jax.jit(jax.grad(lambda *a, form=form: jnp.sum(form(*a)[0] ** 2),
                                      argnums=(0, 1, 2, 3)))
            else:
                fn = jax.jit(form)
            seconds, results[name] = best_time(fn, *x, repeats=args.repeats)
            row[f"{pass_name}_{name}_ms"] = 1e3 * seconds
        row[f"{pass_name}_speedup"] = (row[f"{pass_name}_recurrent_ms"]
                                       / row[f"{pass_name}_chunkwise_ms"])
        row[f"{pass_name}_max_abs_diff"] = max_abs_diff(results["chunkwise"],
                                                        results["recurrent"])
    return row


def parser() -> cli.Parser:
    p = cli.Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-lens", type=checks.SIZE, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--batch", type=checks.SIZE, default=8)
    p.add_argument("--heads", type=checks.SIZE, default=4)
    p.add_argument("--dim", type=checks.SIZE, default=64, help="d_k = d_v")
    p.add_argument("--chunk-size", type=checks.SIZE, default=32)
    p.add_argument("--repeats", type=checks.SIZE, default=3)
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    return p


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    if args.out is not None:
        runs.check_output_file(args.out, "--out", "bench_delta.json")
    rows = [time_length(seq_len, args) for seq_len in args.seq_lens]
    report = {"benchmark": "delta_rule_forms",
              "passes": {"forward": "outputs and final memory",
                         "train": "forward + backward (grad w.r.t. q, k, v, beta)"},
              "batch": args.batch, "heads": args.heads, "dim": args.dim,
              "chunk_size": args.chunk_size, "dtype": "float32", "repeats": args.repeats,
              "statistic": "best", "backend": jax.default_backend(),
              "device": str(jax.devices()[0]), "jax": jax.__version__,
              "machine": platform.machine(), "rows": rows}
    text = json.dumps(report)
    print(text)
    if args.out is not None:
        runs.write_text(args.out, text + "\n")
    return report


if __name__ == "__main__":
    cli.run(main)
