"""Throughput of one ES generation's population evaluation, through the path es_abcd.py runs.

The workload: a population of P members, each reading B sequences of T steps over a
one-hot vocabulary V with a hidden layer of N; every matrix (W_in N x V, W_rec N x N,
W_out V x N) is plastic under per-synapse ABCD_lr; weights are per member and per
sequence, coefficients per member. Per step t: h_t = tanh(W_in x_t + W_rec h_{t-1}),
logits = W_out h_t, y = softmax(logits), NLL of the next token, then W_in learns from
(x_t, h_t), W_rec from (h_{t-1}, h_t), W_out from (h_t, y). The sequences are i.i.d.
uniform tokens (`tasks.random_tokens`: the shapes of character text without a corpus).

What is timed is `plastix.evolve.Evolution.population_scores` -- the function every ES
generation of ``experiments/es_abcd.py`` calls, with the same ES defaults, device policy
(`plastix.devices`) and default chunking -- on the members `Evolution.ask` gives (with
OpenAI-ES on its shared noise table, each member's vector is built inside the
evaluation, so that is timed too).

    python benchmarks/bench_es.py [--pop 64 --batch 8 --seq-len 100 --hidden 128 --vocab 65]

prints one JSON line: ``seconds`` (best of ``--repeats`` timed runs, compilation
excluded), ``synapse_updates_per_s = P*B*T*(N*V + N*N + V*N) / seconds``, the device,
and a roofline: this machine's dense matmul FLOP/s measured in the same run and the
fraction of it the workload reaches at 11 flops per synapse-step (2 for the
matrix-vector product, 9 for the ABCD_lr update). With ``--generations G`` it also
times whole ES generations (``Evolution.run``: ask, every lifetime, tell, in compiled
blocks of G), the figure es_abcd.py prints (``generation_synapse_updates_per_s``).
"""

from __future__ import annotations

from plastix import devices

devices.use_all_cpu_cores()  # the device policy of es_abcd.py: before JAX initialises

import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from plastix import batching, checks, cli, evolve, plastic, runs, tasks  # noqa: E402

FLOPS_PER_SYNAPSE_STEP = 11  # 2 for the matrix-vector product, 9 for the ABCD_lr update
# What --profile holds: the traces jax.profiler writes (plugins/profile/<run>/).
PROFILE_KIND = runs.RunKind("profile", files=(), dirs=("plugins",),
                            recognise=runs.has_entry("plugins"))


def make_evolution(pop: int, batch: int, seq_len: int, hidden: int, vocab: int,
                   chunk: int | None = None, memory_budget: int | None = None,
                   seed: int = 0, noise_table: int | None = None) -> evolve.Evolution:
    """The workload as an ES run: the network, task and config es_abcd.py would build for
    ``--task text --rule-in/rec/out ABCD_lr --granularity synapse --readout-post prediction``.

    ``chunk``: members evaluated at once (0: the whole population; None: the device
    policy's default).
    """
    net = plastic.PlasticRNN(
        vocab_size=vocab, hidden_size=hidden, granularity="synapse", readout_post="prediction",
        layer_rules=tuple((layer, "ABCD_lr") for layer in plastic.LAYERS))
    cfg = es_config(pop, batch, chunk, memory_budget, noise_table)
    task = tasks.random_tokens(vocab, seq_len)
    return evolve.make_evolution(net, task, cfg, jax.random.key(seed))


def es_config(pop: int, batch: int, chunk: int | None = None, memory_budget: int | None = None,
              noise_table: int | None = None) -> evolve.ESConfig:
    """The workload's ES settings (`make_evolution`): es_abcd.py's defaults but for sigma."""
    # A small search std keeps every member's lifetime finite (the PyTorch comparison
    # checks fitness); the cost of a lifetime does not depend on it.
    return evolve.ESConfig(population=pop, batch=batch, memory_budget=memory_budget, sigma=0.01,
                           chunk_size=pop if chunk == 0 else chunk, noise_table=noise_table)


def ask(evolution: evolve.Evolution, key: jax.Array):
    """A generation's members as es_abcd.py's ES asks for them from its initial state,
    placed as a generation holds them: ``(population, decode)`` (`Evolution.ask`)."""
    state = evolution.place(evolution.init(key))
    population, decode, _ = evolution.ask(state, key)
    return population, decode


def evaluation(evolution: evolve.Evolution, key: jax.Array):
    """The timed function, ``(key) -> per-member NLL``: `Evolution.population_scores` on
    the members `ask` gives, jitted with the strategy's params as an argument (as
    `Evolution.run` passes them, so a noise table is not folded in as a constant)."""
    state = evolution.place(evolution.init(key))

    @jax.jit
    def nll(state, es_params, eval_key):
        population, decode, _ = evolution.ask(state, key, es_params)
        return evolution.population_scores(population, eval_key, decode=decode).nll

    return functools.partial(nll, state, evolution.es_params)


def synapse_updates(evolution: evolve.Evolution) -> int:
    """``P * B * T * (N*V + N*N + V*N)``: the synapse updates of one evaluation."""
    per_lifetime = plastic.synapse_updates_per_lifetime(evolution.net, evolution.task.seq_len)
    return evolution.cfg.population * evolution.cfg.batch * per_lifetime


def workload_inputs(evolution: evolve.Evolution, population_key: jax.Array,
                    key: jax.Array) -> dict:
    """What ``evaluation(evolution, population_key)(key)`` reads, as NumPy arrays (for the
    PyTorch comparison): per-member coefficients ``{layer: {name: (P, n_post, n_pre)}}``
    as the rules see them, initial weights ``{layer: (B, n_post, n_pre)}`` and the
    ``(B, T + 1)`` token windows."""
    data_key, life_key = jax.random.split(key)
    inputs, targets, _ = evolution.task.sample(data_key, evolution.cfg.batch, "train")
    draws = plastic.lifetime_draws(evolution.net, life_key, evolution.cfg.batch)
    population, decode = ask(evolution, population_key)
    if decode is not None:
        population = jax.vmap(decode)(population)
    coeffs = jax.vmap(lambda flat: plastic.rule_coeffs(evolution.net, evolution.unravel(flat)))(
        population)
    tokens = jnp.concatenate([inputs, targets[:, -1:]], axis=1)
    return jax.tree.map(np.asarray, {"coeffs": coeffs, "weights": draws.w0, "tokens": tokens})


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


def generation_seconds(evolution: evolve.Evolution, generations: int, repeats: int) -> float:
    """Best time per generation of ``Evolution.run`` (ask, every lifetime, tell), the
    compiled block es_abcd.py runs between two log lines, compilation excluded."""
    state = evolution.place(evolution.init(jax.random.key(0)))
    run = lambda s: evolution.run(s, jax.random.key(1), 0, generations)[0]
    seconds, _ = best_time(run, state, repeats=repeats + 1)  # the first run compiles
    return seconds / generations


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
        profile_dir: str | None = None, generations: int = 0,
        noise_table: int | None = None) -> tuple[dict, np.ndarray]:
    """Times the workload; returns the JSON record (see the module docstring) and the
    population's fitness (mean NLL per member). Timed runs stop early once they have
    taken ``budget_s`` seconds (the large points of `scaling.py`). With ``profile_dir``,
    one more run is traced there with ``jax.profiler`` (per-op times, e.g. in Perfetto).
    With ``generations``, whole ES generations are timed too, blocks of that many (with
    ``noise_table`` as ``ESConfig.noise_table``: None its default, 0 fresh noise)."""
    load_before = os.getloadavg()[0]
    evolution = make_evolution(pop, batch, seq_len, hidden, vocab, chunk, memory_budget, seed,
                               noise_table)
    fitness = evaluation(evolution, jax.random.key(seed + 1))
    key = jax.random.key(seed + 2)

    start = time.perf_counter()
    compiled = fitness.func.lower(*fitness.args, key).compile()
    nll = jax.block_until_ready(compiled(*fitness.args, key))
    compile_seconds = time.perf_counter() - start
    seconds, times = best_time(fitness, key, repeats=repeats, budget_s=budget_s)
    if profile_dir is not None:
        with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
            jax.block_until_ready(fitness(key))
    updates = synapse_updates(evolution)
    record = {
        "benchmark": "bench_es",
        "pop": pop, "batch": batch, "seq_len": seq_len, "hidden": hidden, "vocab": vocab,
        "seconds": seconds,
        "median_seconds": statistics.median(times),
        "synapse_updates_per_s": updates / seconds,
        "compile_and_first_run_seconds": compile_seconds,
        "repeats": len(times),
        "chunk": chunk,   # None: the device policy's default, or chosen from the budget
        "memory_budget": memory_budget,
        "devices_used": int(evolution.mesh.devices.size),
        "xla_memory_bytes": batching.compiled_bytes(compiled),
        "mean_nll": float(jnp.mean(nll)),
        "device": device_name(),
        "jax": jax.__version__,
        # The 1-minute load average before and after: timings on a shared machine
        # are only comparable at similar load.
        "load_average": [load_before, os.getloadavg()[0]],
    }
    if generations:
        per_generation = generation_seconds(evolution, generations, repeats=repeats)
        record["noise_table"] = noise_table
        record["generation_seconds"] = per_generation
        record["generation_synapse_updates_per_s"] = updates / per_generation
    if roofline:
        peak = matmul_flops()
        record["matmul_flops_per_s"] = peak
        record["workload_flops_per_s"] = FLOPS_PER_SYNAPSE_STEP * updates / seconds
        record["roofline_fraction"] = record["workload_flops_per_s"] / peak
    return record, np.asarray(nll)


def make_parser() -> cli.Parser:
    """The workload flags, shared with ``compare_torch.py`` and ``ab_old_kernel.py``."""
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pop", type=checks.integer(at_least=2), default=64,
                        help="ES population (even: OpenAI-ES pairs its members)")
    parser.add_argument("--batch", type=checks.SIZE, default=8)
    parser.add_argument("--seq-len", type=checks.SIZE, default=100, help="steps per lifetime")
    parser.add_argument("--hidden", type=checks.SIZE, default=128)
    parser.add_argument("--vocab", type=checks.SIZE, default=65)
    parser.add_argument("--repeats", type=checks.SIZE, default=5,
                        help="timed runs; the best is kept")
    parser.add_argument("--chunk", type=checks.COUNT, default=None,
                        help="members evaluated at once (0: the whole population); default "
                             "the device policy's: two per device on CPU, all on GPU/TPU")
    parser.add_argument("--memory-budget", type=checks.number(at_least=1), default=None,
                        help="bytes the evaluation may use; picks the chunk size")
    parser.add_argument("--seed", type=checks.SEED, default=0)
    parser.add_argument("--no-roofline", dest="roofline", action="store_false")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="also trace one run with jax.profiler into DIR")
    parser.add_argument("--generations", type=checks.COUNT, default=0,
                        help="also time whole ES generations (ask, lifetimes, tell), in "
                             "compiled blocks of this many, as es_abcd.py runs them")
    parser.add_argument("--noise-table", type=checks.COUNT, default=None,
                        help="OpenAI-ES's shared noise table, as es_abcd.py's flag: floats "
                             "in it (default: ESConfig's), 0 for fresh Gaussian noise")
    return parser


# ESConfig's fields by the flags that set them (`es_config`), for its errors.
ES_FIELD_FLAGS = {"population": "--pop", "batch": "--batch", "chunk_size": "--chunk",
                  "memory_budget": "--memory-budget", "noise_table": "--noise-table"}


def memory_budget(args) -> int | None:
    return None if args.memory_budget is None else int(args.memory_budget)


def parse_args(parser: cli.Parser, argv=None, unread: tuple[str, ...] = ()):
    """The checked command line of a benchmark built on this workload; ``unread``: the
    dests of the workload flags that benchmark does not read, refused by name. The ES
    settings are built here, before anything compiles, so that their errors name flags."""
    args, given = cli.parse(parser, argv)
    cli.refuse(given, unread, f"to {parser.prog}")
    try:
        es_config(args.pop, args.batch, args.chunk, memory_budget(args), args.noise_table)
    except checks.FieldError as error:
        raise error.renamed(lambda field: ES_FIELD_FLAGS.get(field, field)) from None
    if args.profile is not None:
        runs.claim(args.profile, PROFILE_KIND, "auto", flag="--profile")
    return args


def main(argv=None) -> dict:
    args = parse_args(make_parser(), argv)
    record, _ = run(args.pop, args.batch, args.seq_len, args.hidden, args.vocab,
                    repeats=args.repeats, chunk=args.chunk, memory_budget=memory_budget(args),
                    seed=args.seed, roofline=args.roofline, profile_dir=args.profile,
                    generations=args.generations, noise_table=args.noise_table)
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    cli.run(main)
