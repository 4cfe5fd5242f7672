"""When is each fast-weights form cheaper? Explicit A vs attention over past hidden states.

Per time step and inner step, the explicit form reads A(t) h in O(H^2) and writes
A(t+1) = lam A(t) + eta h h^T in O(H^2); the attention form reads
eta sum_tau lam^(t-tau) <h(tau), h> h(tau) from a (T, H) buffer in O(T H). So over a
sequence the explicit form costs O(T H^2) and the attention form O(T^2 H): attention should
win while T < H, and lose beyond. This script measures it.

For every (T, H) it times the jitted forward pass (hidden states of a batch) and the
forward + backward pass of a scalar loss; compilation is excluded (one warm-up call),
every call ends in ``block_until_ready``, and the best of ``--repeats`` runs is kept.
Prints JSON (and writes it to ``--out`` if given).

    python benchmarks/bench_fast_weights.py --out experiments/results/bench_fast_weights.json
"""

from __future__ import annotations

import json
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from plastix import checks, cli, models, runs


def best_time(fn, *args, repeats: int) -> tuple[float, object]:
    """Best wall-clock seconds of ``fn(*args)`` over ``repeats`` calls after a warm-up,
    and the warm-up's result."""
    result = jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times), result


def time_form(form: str, seq_len: int, hidden: int, batch: int, grad: bool,
              repeats: int) -> float:
    """Best seconds of the jitted forward (or forward + backward) pass of one form."""
    rnn = nn.RNN(models.FastWeightRNNCell(hidden, seq_len, form=form))
    x = jax.random.normal(jax.random.key(0), (batch, seq_len, hidden))
    params = rnn.init(jax.random.key(1), x)
    if grad:
        fn = jax.jit(jax.grad(lambda p, x: jnp.sum(rnn.apply(p, x) ** 2)))
    else:
        fn = jax.jit(rnn.apply)
    return best_time(fn, params, x, repeats=repeats)[0]


def parser() -> cli.Parser:
    p = cli.Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-lens", type=checks.SIZE, nargs="+", default=[16, 64, 256])
    p.add_argument("--hiddens", type=checks.SIZE, nargs="+", default=[32, 128, 256])
    p.add_argument("--batch", type=checks.SIZE, default=8)
    p.add_argument("--repeats", type=checks.SIZE, default=5)
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    return p


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    if args.out is not None:
        runs.check_output_file(args.out, "--out", "bench_fast_weights.json")
    rows = []
    for seq_len in args.seq_lens:
        for hidden in args.hiddens:
            row = {"seq_len": seq_len, "hidden": hidden}
            for pass_name, grad in (("forward", False), ("train", True)):
                ms = {form: 1e3 * time_form(form, seq_len, hidden, args.batch, grad, args.repeats)
                      for form in ("explicit", "attention")}
                row.update({f"{pass_name}_explicit_ms": ms["explicit"],
                            f"{pass_name}_attention_ms": ms["attention"],
                            f"{pass_name}_cheaper": min(ms, key=ms.get)})
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {"benchmark": "fast_weights_forms",
              "passes": {"forward": "hidden states", "train": "forward + backward"},
              "batch": args.batch, "repeats": args.repeats, "statistic": "best",
              "backend": jax.default_backend(), "device": str(jax.devices()[0]),
              "jax": jax.__version__, "machine": platform.machine(), "rows": rows}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out is not None:
        runs.write_text(args.out, text + "\n")
    return report


if __name__ == "__main__":
    cli.run(main)
