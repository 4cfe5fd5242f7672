"""Throughput of one ES generation's population evaluation on the reference workload.

The workload (issue 4): a population of P members, each reading B sequences of length T
over a one-hot vocabulary V with a hidden layer of N; every matrix (W_in N x V, W_rec
N x N, W_out V x N) is plastic under per-synapse ABCD_lr; weights are per member and per
sequence, coefficients per member. Per step t = 0..T-2: h_t = tanh(W_in x_t + W_rec
h_{t-1}), logits = W_out h_t, y = softmax(logits), NLL of x_{t+1}, then W_in learns from
(x_t, h_t), W_rec from (h_{t-1}, h_t), W_out from (h_t, y). The computation is
`plastix.kernels.lifetime`, evaluated over the population with `plastix.batching`.

    python benchmarks/bench_es.py [--pop 64 --batch 8 --seq-len 100 --hidden 128 --vocab 65]

prints one JSON line: ``seconds`` (best of ``--repeats`` timed runs, compilation
excluded), ``synapse_updates_per_s = P*B*(T-1)*(N*V + N*N + V*N) / seconds``, the device,
and a roofline: this machine's dense matmul FLOP/s measured in the same run and the
fraction of it the workload reaches at 11 flops per synapse-step (2 for the
matrix-vector product, 9 for the ABCD_lr update).
"""

from __future__ import annotations

import os

# On CPU, expose every core as an XLA device so the population is sharded one member
# stream per core, each core keeping its member's state in its own L2 cache (one device
# with intra-op threads would split every small per-step op across cores instead).
# Must be set before JAX initialises; it does nothing on GPU/TPU.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={os.cpu_count()}")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from plastix import batching, kernels, rules  # noqa: E402

FLOPS_PER_SYNAPSE_STEP = 11  # 2 for the matrix-vector product, 9 for the ABCD_lr update


def layer_shapes(hidden: int, vocab: int) -> dict[str, tuple[int, int]]:
    """``(n_post, n_pre)`` of every plastic matrix."""
    return {"in": (hidden, vocab), "rec": (hidden, hidden), "out": (vocab, hidden)}


def synapse_updates(pop: int, batch: int, seq_len: int, hidden: int, vocab: int) -> int:
    """``P * B * (T-1) * (N*V + N*N + V*N)``: the workload's synapse updates."""
    synapses = sum(a * b for a, b in layer_shapes(hidden, vocab).values())
    return pop * batch * (seq_len - 1) * synapses


def make_workload(key: jax.Array, pop: int, batch: int, seq_len: int, hidden: int,
                  vocab: int, sigma: float = 0.01):
    """A population as ES would ask for it, plus the shared data of one generation.

    Coefficients: ABCD_lr defaults per synapse plus ``sigma`` Gaussian noise, one set per
    member. Initial weights U(-0.1, 0.1), one draw per sequence; tokens uniform. Every
    member sees the same weights and tokens (common random numbers).

    Returns:
      ``(coeffs, weights, tokens)`` as NumPy arrays: coeffs ``{layer: {name: (P, n_post,
      n_pre)}}``, weights ``{layer: (B, n_post, n_pre)}``, tokens ``(B, T)`` int32.
    """
    rule = rules.ABCD_lr()
    coeff_key, weight_key, token_key = jax.random.split(key, 3)
    coeffs, weights = {}, {}
    for i, (layer, shape) in enumerate(layer_shapes(hidden, vocab).items()):
        template = rules.init_coeffs(rule, shape, "synapse")
        keys = jax.random.split(jax.random.fold_in(coeff_key, i), len(template))
        coeffs[layer] = {
            name: np.asarray(mean + sigma * jax.random.normal(k, (pop,) + shape))
            for k, (name, mean) in zip(keys, template.items())}
        weights[layer] = np.asarray(jax.random.uniform(
            jax.random.fold_in(weight_key, i), (batch,) + shape, minval=-0.1, maxval=0.1))
    tokens = np.asarray(jax.random.randint(token_key, (batch, seq_len), 0, vocab, jnp.int32))
    return coeffs, weights, tokens


def default_chunk(n_devices: int) -> int:
    """Members evaluated at once: one per device on CPU (its state stays in cache), all
    of them on GPU/TPU (every member in flight fills the device)."""
    return n_devices if jax.default_backend() == "cpu" else 0


def make_population_fitness(weights, tokens, chunk: int, memory_budget: int | None,
                            n_devices: int):
    """``coeffs (P, ...) -> mean NLL (P,)``, chunked by ``chunk`` or ``memory_budget``."""

    def member_fitness(coeffs):
        nll, _ = kernels.lifetime(coeffs, weights, tokens)
        return jnp.mean(nll)

    if chunk == 0:
        return jax.vmap(member_fitness)
    return batching.population_map(member_fitness, chunk_size=chunk,
                                   memory_budget=memory_budget, multiple_of=n_devices)


def best_time(fn, *args, repeats: int, budget_s: float = float("inf")
              ) -> tuple[float, list[float]]:
    """Best and all wall-clock times of ``fn(*args)`` over ``repeats`` runs, stopping
    early (after at least one) once ``budget_s`` seconds have been spent."""
    times = []
    while len(times) < repeats and (not times or sum(times) < budget_s):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times), times


def matmul_flops(size: int = 2048, repeats: int = 10) -> float:
    """This machine's dense float32 matmul FLOP/s: one ``size``-square matmul per device,
    all devices at once (so every core counts, as it does for the workload)."""
    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("d",))
    sharding = NamedSharding(mesh, PartitionSpec("d"))
    a = jax.device_put(jnp.ones((len(devices), size, size), jnp.float32), sharding)
    matmul = jax.jit(lambda x: jnp.einsum("dij,djk->dik", x, x))
    jax.block_until_ready(matmul(a))
    seconds, _ = best_time(matmul, a, repeats=repeats)
    return 2 * size**3 * len(devices) / seconds


def device_name() -> str:
    device = jax.devices()[0]
    return f"{device.platform}:{device.device_kind} x{jax.device_count()}"


def run(pop: int, batch: int, seq_len: int, hidden: int, vocab: int, repeats: int = 5,
        chunk: int | None = None, memory_budget: int | None = None, seed: int = 0,
        roofline: bool = True, budget_s: float = float("inf"),
        profile_dir: str | None = None) -> tuple[dict, np.ndarray]:
    """Times the workload; returns the JSON record (see the module docstring) and the
    population's fitness (mean NLL per member). Timed runs stop early once they have
    taken ``budget_s`` seconds (the large points of `scaling.py`). With ``profile_dir``,
    one more run is traced there with ``jax.profiler`` (per-op times, e.g. in Perfetto)."""
    load_before = os.getloadavg()[0]
    devices = jax.devices()
    n_devices = len(devices) if pop % len(devices) == 0 else 1
    mesh = Mesh(np.array(devices[:n_devices]), ("pop",))
    coeffs, weights, tokens = make_workload(jax.random.key(seed), pop, batch, seq_len,
                                            hidden, vocab)
    coeffs = jax.device_put(coeffs, NamedSharding(mesh, PartitionSpec("pop")))
    if chunk is None and memory_budget is None:
        chunk = default_chunk(n_devices)
    fitness = jax.jit(make_population_fitness(weights, tokens, chunk, memory_budget, n_devices))

    start = time.perf_counter()
    compiled = fitness.lower(coeffs).compile()
    nll = jax.block_until_ready(compiled(coeffs))
    compile_seconds = time.perf_counter() - start
    seconds, times = best_time(compiled, coeffs, repeats=repeats, budget_s=budget_s)
    if profile_dir is not None:
        with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
            jax.block_until_ready(compiled(coeffs))
    updates = synapse_updates(pop, batch, seq_len, hidden, vocab)
    record = {
        "benchmark": "bench_es",
        "pop": pop, "batch": batch, "seq_len": seq_len, "hidden": hidden, "vocab": vocab,
        "seconds": seconds,
        "median_seconds": statistics.median(times),
        "synapse_updates_per_s": updates / seconds,
        "compile_and_first_run_seconds": compile_seconds,
        "repeats": len(times),
        "chunk": pop if chunk == 0 else chunk,   # None: chosen from the memory budget
        "memory_budget": memory_budget,
        "xla_memory_bytes": batching.compiled_bytes(compiled),
        "mean_nll": float(jnp.mean(nll)),
        "device": device_name(),
        "jax": jax.__version__,
        # The 1-minute load average before and after: timings on a shared machine
        # are only comparable at similar load.
        "load_average": [load_before, os.getloadavg()[0]],
    }
    if roofline:
        peak = matmul_flops()
        record["matmul_flops_per_s"] = peak
        record["workload_flops_per_s"] = FLOPS_PER_SYNAPSE_STEP * updates / seconds
        record["roofline_fraction"] = record["workload_flops_per_s"] / peak
    return record, np.asarray(nll)


def make_parser() -> argparse.ArgumentParser:
    """The workload flags, shared with ``compare_torch.py``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pop", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best is kept")
    parser.add_argument("--chunk", type=int, default=None,
                        help="members evaluated at once (0: the whole population); default "
                             "one per device on CPU, all on GPU/TPU")
    parser.add_argument("--memory-budget", type=float, default=None,
                        help="bytes the evaluation may use; picks the chunk size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-roofline", dest="roofline", action="store_false")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="also trace one run with jax.profiler into DIR")
    return parser


def main(argv=None) -> dict:
    args = make_parser().parse_args(argv)
    budget = None if args.memory_budget is None else int(args.memory_budget)
    record, _ = run(args.pop, args.batch, args.seq_len, args.hidden, args.vocab,
                    repeats=args.repeats, chunk=args.chunk, memory_budget=budget,
                    seed=args.seed, roofline=args.roofline, profile_dir=args.profile)
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
