"""plastix against PyTorch on the `bench_es.py` workload, in one invocation.

The PyTorch versions are written as a careful user would: under ``no_grad``, the
learning rate folded into the coefficients once per lifetime, the one-hot input read as
a column gather, the ABCD_lr update as broadcast in-place arithmetic and the
matrix-vector products as ``bmm``/``einsum``:

* ``torch_population``: every member and sequence batched at once, state
  ``(P, B, n_post, n_pre)``;
* ``torch_per_member``: a Python loop over members, each member's ``B`` sequences
  batched, as ES code usually evaluates a population.

Both compute the same fitness (mean NLL per member) as plastix from the same inputs
(checked here), and the script prints one JSON line with every throughput, the ratio
of plastix to the faster PyTorch version, and the matmul roofline of `bench_es.py`.

    pip install torch==2.13.0   # optional benchmark dependency (CPU build)
    python benchmarks/compare_torch.py [same flags as bench_es.py]

PyTorch is imported only once the flags are checked: ``--help`` and a refused flag need
none.
"""

from __future__ import annotations

import json
import os
import time

import bench_es  # first: it configures the XLA devices before JAX initialises
import numpy as np

from plastix import checks, cli

LAYERS = ("in", "rec", "out")
# The workload flags (dests) this comparison does not read.
UNREAD = ("memory_budget", "profile", "generations")
torch = None  # the module, once `import_torch` has run


def import_torch():
    """Import PyTorch for the functions below (an optional dependency: see the module
    docstring); ValueError saying how to install it if it is missing."""
    global torch
    try:
        import torch as module
    except ImportError:
        raise ValueError("benchmarks/compare_torch.py needs PyTorch, which is not installed: "
                         "pip install 'plastix[bench]' (or pip install torch)") from None
    torch = module
    return module


def scaled(coeffs: dict) -> dict:
    """``eta * (A, B, C, D)`` as torch tensors, computed once per lifetime."""
    eta = torch.from_numpy(coeffs["eta"])
    return {k: eta * torch.from_numpy(coeffs[k]) for k in "ABCD"}


def abcd_(w: torch.Tensor, t: dict, pre: torch.Tensor, post: torch.Tensor) -> None:
    """In place: ``w += eta (A y x^T + B x + C y + D)``; ``w (..., n_post, n_pre)``, the
    coefficients ``t`` broadcast over its leading axes after an unsqueeze at ``-3``."""
    y = post.unsqueeze(-1)
    x = pre.unsqueeze(-2)
    w.add_((t["A"] * y + t["B"]) * x)
    w.add_(t["C"] * y)
    w.add_(t["D"])


def torch_lifetimes(coeffs: dict, weights: dict, tokens: torch.Tensor) -> torch.Tensor:
    """Mean NLL of each member; ``coeffs`` leaves ``(P, n_post, n_pre)`` or, for one
    member, ``(n_post, n_pre)``; ``weights (B, n_post, n_pre)``; ``tokens (B, T)``."""
    lead = coeffs["in"]["A"].shape[:-2]              # (P,) or ()
    terms = {k: {n: v.unsqueeze(-3) for n, v in scaled(coeffs[k]).items()} for k in LAYERS}
    w = {k: torch.from_numpy(weights[k]).expand(*lead, *weights[k].shape).clone()
         for k in LAYERS}
    batch, length = tokens.shape
    hidden = w["rec"].shape[-1]
    h = torch.zeros(*lead, batch, hidden)
    nll = torch.zeros(*lead, batch)
    for t in range(length - 1):
        token = tokens[:, t]
        index = token.view(*(1,) * len(lead), batch, 1, 1).expand(*lead, batch, hidden, 1)
        drive = torch.gather(w["in"], -1, index).squeeze(-1)      # W_in x_t: one column
        h_new = torch.tanh(drive + torch.einsum("...ij,...j->...i", w["rec"], h))
        logits = torch.einsum("...vj,...j->...v", w["out"], h_new)
        log_y = torch.log_softmax(logits, dim=-1)
        target = tokens[:, t + 1].view(*(1,) * len(lead), batch, 1).expand(*lead, batch, 1)
        nll -= torch.gather(log_y, -1, target).squeeze(-1)
        x = torch.nn.functional.one_hot(token, w["in"].shape[-1]).float()
        abcd_(w["in"], terms["in"], x.expand(*lead, *x.shape), h_new)
        abcd_(w["rec"], terms["rec"], h, h_new)
        abcd_(w["out"], terms["out"], h_new, log_y.exp())
        h = h_new
    return (nll / (length - 1)).mean(-1)


def torch_population(coeffs, weights, tokens):
    """All members at once."""
    return torch_lifetimes(coeffs, weights, tokens)


def torch_per_member(coeffs, weights, tokens):
    """One member at a time."""
    pop = coeffs["in"]["A"].shape[0]
    member = lambda p: {k: {n: v[p] for n, v in coeffs[k].items()} for k in LAYERS}
    return torch.stack([torch_lifetimes(member(p), weights, tokens) for p in range(pop)])


def writable_copy(tree):
    """Writable NumPy copies (torch tensors must not view read-only buffers)."""
    if isinstance(tree, dict):
        return {k: writable_copy(v) for k, v in tree.items()}
    return np.array(tree)


def best_thread_count(fn, coeffs, weights, tokens, steps: int = 10) -> int:
    """The faster of 1 and all cores for ``fn``, timed on the first ``steps`` steps.

    On a busy machine OpenMP threads that spin-wait for each other can make two threads
    many times slower than one; a careful user would pick the faster setting.
    """
    timings = {}
    for threads in sorted({1, os.cpu_count()}):
        torch.set_num_threads(threads)
        timings[threads], _ = time_torch(fn, coeffs, weights, tokens[:, : steps + 1], repeats=2)
    return min(timings, key=timings.get)


def time_torch(fn, *args, repeats: int) -> tuple[float, torch.Tensor]:
    """Best wall-clock time of ``fn(*args)`` over ``repeats`` runs, and its result."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn(*args)
            best = min(best, time.perf_counter() - start)
    return best, out


def parser() -> cli.Parser:
    p = bench_es.make_parser()
    p.description = __doc__.split("\n\n")[0]
    p.add_argument("--torch-repeats", type=checks.SIZE, default=2,
                   help="timed runs of each PyTorch version (they are slow)")
    return p


def main(argv=None) -> dict:
    args = bench_es.parse_args(parser(), argv, unread=UNREAD)
    import_torch()
    sizes = (args.pop, args.batch, args.seq_len, args.hidden, args.vocab)
    plastix, plastix_fitness = bench_es.run(*sizes, repeats=args.repeats, chunk=args.chunk,
                                            seed=args.seed, roofline=args.roofline,
                                            noise_table=args.noise_table)
    # The very inputs bench_es timed: same population, initial weights and tokens.
    evolution = bench_es.make_evolution(*sizes, chunk=args.chunk, seed=args.seed,
                                        noise_table=args.noise_table)
    inputs = bench_es.workload_inputs(evolution, bench_es.jax.random.key(args.seed + 1),
                                      bench_es.jax.random.key(args.seed + 2))
    coeffs, weights = writable_copy(inputs["coeffs"]), writable_copy(inputs["weights"])
    tokens = torch.from_numpy(np.array(inputs["tokens"])).long()
    updates = bench_es.synapse_updates(evolution)
    record = {"benchmark": "compare_torch", "plastix": plastix, "torch": torch.__version__}
    fitness = {}
    for name, fn in (("torch_population", torch_population),
                     ("torch_per_member", torch_per_member)):
        threads = best_thread_count(fn, coeffs, weights, tokens)
        torch.set_num_threads(threads)
        seconds, fitness[name] = time_torch(fn, coeffs, weights, tokens,
                                            repeats=args.torch_repeats)
        record[name] = {"threads": threads, "seconds": seconds,
                        "synapse_updates_per_s": updates / seconds}
    fastest = max(record[n]["synapse_updates_per_s"] for n in fitness)
    record["speedup_vs_fastest_torch"] = plastix["synapse_updates_per_s"] / fastest
    # Same inputs, same workload: the fitness must agree (float32 rounding apart).
    record["max_abs_fitness_diff"] = max(
        float(np.max(np.abs(f.numpy() - plastix_fitness))) for f in fitness.values())
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    cli.run(main)
