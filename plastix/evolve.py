"""The ES path: evolve plasticity-rule coefficients with evosax.

One generation is one jitted function::

    ask -> evaluate every member's lifetimes (vmap, sharded over devices) -> tell

and many generations run inside ``lax.scan``. Fitness is the in-lifetime
next-token NLL on the task's scored positions (minimised, as evosax expects),
plus an optional L2 penalty on the evolved parameters. Every member of a
generation sees the same sequences and the same random initial weights
(common random numbers), so fitness differences come from the rules alone.

Divergent plastic weights give NaN/inf fitness. Such members get the worst
finite fitness of their generation (plus a margin) before ``tell``, so they rank
last and never reach the ES state; they are counted in the metrics.

References: Salimans et al. 2017 (OpenAI-ES); Najarro & Risi 2020 (ES on
Hebbian coefficients, learning-rate and sigma decay); evosax (Lange 2022).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import time
from collections.abc import Callable
from typing import Any

import evosax.algorithms
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from plastix import batching, plastic

STRATEGIES: dict[str, type] = dict(evosax.algorithms.algorithms)
OPTIMIZERS = {"sgd": optax.sgd, "adam": optax.adam}
NONFINITE_MARGIN = 1.0  # how far behind the worst finite member a divergent one ranks


@dataclasses.dataclass(frozen=True)
class ESConfig:
    """Static ES configuration.

    Attributes:
      strategy: an evosax algorithm name (``plastix.evolve.STRATEGIES``).
      population: members per generation (even for antithetic sampling).
      batch: lifetimes (sequences) per member per generation.
      optimizer: "sgd" (Najarro & Risi 2020) or "adam" on the ES gradient estimate.
      lr, lr_decay, lr_min: its step size, decayed every generation
        (Najarro & Risi 2020 use SGD with 0.2 and 0.995).
      sigma, sigma_decay, sigma_min: search std, decayed every generation
        (Najarro & Risi 2020: 0.1 and 0.999).
      l2_penalty: fitness += l2_penalty * ||theta||^2.
      antithetic: mirrored sampling (z, -z) where the strategy supports it.
      eval_batch: held-out sequences scored when reporting the ES mean.
      chunk_size, memory_budget: evaluate the population ``chunk_size`` members
        at a time, or in the largest chunks whose compiled working set fits
        ``memory_budget`` bytes (``plastix.batching``); same results, less memory.
    """

    strategy: str = "Open_ES"
    optimizer: str = "sgd"
    population: int = 64
    batch: int = 32
    lr: float = 0.2
    lr_decay: float = 0.995
    lr_min: float = 0.01
    sigma: float = 0.1
    sigma_decay: float = 0.999
    sigma_min: float = 0.01
    l2_penalty: float = 0.0
    antithetic: bool = True
    eval_batch: int = 512
    chunk_size: int | None = None
    memory_budget: int | None = None

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"unknown ES strategy {self.strategy!r}; evosax offers {sorted(STRATEGIES)}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown ES optimizer {self.optimizer!r}; choose one of {sorted(OPTIMIZERS)}"
            )
        if self.population < 2 or self.batch < 1:
            raise ValueError(
                f"need population >= 2 and batch >= 1, got population={self.population}, "
                f"batch={self.batch}"
            )
        if self.antithetic and _accepts(self.strategy, "use_antithetic_sampling"):
            if self.population % 2:
                raise ValueError(
                    f"antithetic sampling pairs members (z, -z): population must be even, "
                    f"got {self.population}"
                )


def _accepts(strategy: str, argument: str) -> bool:
    return argument in inspect.signature(STRATEGIES[strategy].__init__).parameters


def decay_schedule(init: float, decay: float, floor: float) -> optax.Schedule:
    """x_g = max(init * decay^g, floor)."""
    return lambda g: jnp.maximum(init * decay**g, floor)


def make_strategy(cfg: ESConfig, solution: Any):
    """Build the evosax algorithm and its params for a solution template pytree."""
    kwargs: dict[str, Any] = {}
    if _accepts(cfg.strategy, "optimizer"):
        kwargs["optimizer"] = OPTIMIZERS[cfg.optimizer](
            decay_schedule(cfg.lr, cfg.lr_decay, cfg.lr_min)
        )
    if _accepts(cfg.strategy, "std_schedule"):
        kwargs["std_schedule"] = decay_schedule(cfg.sigma, cfg.sigma_decay, cfg.sigma_min)
    if _accepts(cfg.strategy, "use_antithetic_sampling"):
        kwargs["use_antithetic_sampling"] = cfg.antithetic
    strategy = STRATEGIES[cfg.strategy](cfg.population, solution, **kwargs)
    es_params = strategy.default_params
    if hasattr(es_params, "std_init"):  # strategies without a schedule start at sigma
        es_params = es_params.replace(std_init=cfg.sigma)
    return strategy, es_params


def contain_nonfinite(fitness: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Replace NaN/inf fitness by the worst finite fitness plus a margin.

    Returns:
      ``(clean_fitness, number_replaced)``. If no member is finite, all get
      ``NONFINITE_MARGIN`` (the strategy then sees a flat, harmless generation).
    """
    finite = jnp.isfinite(fitness)
    worst = jnp.max(jnp.where(finite, fitness, -jnp.inf))
    worst = jnp.where(jnp.isfinite(worst), worst, 0.0)
    clean = jnp.where(finite, fitness, worst + NONFINITE_MARGIN)
    return clean, jnp.sum(~finite)


def l2_norm_sq(tree) -> jax.Array:
    return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree))


def population_mesh(population: int, devices=None) -> Mesh:
    """A 1-D mesh over the local devices whose axis "pop" shards the population.

    An Auto (default) mesh: evosax's ``tell`` fails under an Explicit mesh.
    """
    devices = list(jax.devices() if devices is None else devices)
    if population % len(devices):
        raise ValueError(
            f"population {population} cannot be split evenly over {len(devices)} devices; "
            f"use a multiple of {len(devices)}"
        )
    return Mesh(np.array(devices), ("pop",))


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: a static jit argument
class Evolution:
    """Everything static about one ES run; its methods are pure jitted functions.

    ``task`` is a ``plastix.tasks`` task; ``mesh`` shards the population axis.
    """

    net: plastic.PlasticRNN
    task: Any
    cfg: ESConfig
    mesh: Mesh
    solution: Any

    @functools.cached_property
    def _strategy(self):
        return make_strategy(self.cfg, self.solution)

    @property
    def strategy(self):
        return self._strategy[0]

    @property
    def es_params(self):
        return self._strategy[1]

    def init(self, key: jax.Array):
        """The ES state, its mean at the solution template (the rule's defaults)."""
        return self.strategy.init(key, self.solution, self.es_params)

    def mean(self, state):
        return self.strategy.get_mean(state)

    def _shard(self, population):
        sharding = NamedSharding(self.mesh, PartitionSpec("pop"))
        return jax.lax.with_sharding_constraint(population, sharding)

    def population_scores(self, population, key: jax.Array, split: str = "train"):
        """NLL and accuracy of every member on one shared batch (common random numbers)."""
        data_key, life_key = jax.random.split(key)
        data = self.task.sample(data_key, self.cfg.batch, split)
        member = lambda params: plastic.evaluate(self.net, params, life_key, *data)
        evaluate_all = batching.population_map(
            member, chunk_size=self.cfg.chunk_size, memory_budget=self.cfg.memory_budget,
            multiple_of=self.mesh.devices.size,
        )
        return evaluate_all(self._shard(population))

    def generation(self, state, key: jax.Array):
        """ask -> evaluate -> tell. Returns the new state and scalar metrics."""
        ask_key, eval_key, tell_key = jax.random.split(key, 3)
        population, state = self.strategy.ask(ask_key, state, self.es_params)
        nll, accuracy = self.population_scores(population, eval_key)
        penalty = self.cfg.l2_penalty * jax.vmap(l2_norm_sq)(population)
        fitness, n_nonfinite = contain_nonfinite(nll + penalty)
        state, _ = self.strategy.tell(tell_key, population, fitness, state, self.es_params)
        finite = jnp.isfinite(nll)
        metrics = {
            "best_fitness": jnp.min(fitness),
            "mean_fitness": jnp.sum(jnp.where(finite, nll, 0.0)) / jnp.maximum(jnp.sum(finite), 1),
            "best_accuracy": jnp.max(jnp.where(finite, accuracy, 0.0)),
            "mean_accuracy": jnp.mean(jnp.where(finite, accuracy, 0.0)),
            "nonfinite": n_nonfinite,
        }
        return state, metrics

    @functools.partial(jax.jit, static_argnames=("self", "num_generations"))
    def run(self, state, run_key: jax.Array, first_generation, num_generations: int):
        """``num_generations`` generations in one ``lax.scan``.

        Generation g uses ``fold_in(run_key, g)``, so a run resumed from any
        checkpoint draws exactly the keys an uninterrupted run would.
        """
        generations = first_generation + jnp.arange(num_generations)
        step = lambda s, g: self.generation(s, jax.random.fold_in(run_key, g))
        return jax.lax.scan(step, state, generations)

    def score(self, params, key: jax.Array, split: str = "valid", batch: int = 512):
        """Held-out NLL and accuracy of one parameter pytree (e.g. the ES mean)."""
        return score(self.net, self.task, params, key, split, batch)


@functools.partial(jax.jit, static_argnames=("net", "task", "split", "batch"))
def score(net, task, params, key: jax.Array, split: str = "valid", batch: int = 512):
    """NLL and accuracy of ``params`` on ``batch`` fresh sequences of ``task``'s ``split``.

    The key draws both the sequences and the lifetimes' initial weights, so two
    networks scored with one key see the same data (a fair comparison).
    """
    data_key, life_key = jax.random.split(key)
    data = task.sample(data_key, batch, split)
    return plastic.evaluate(net, params, life_key, *data)


def make_evolution(net, task, cfg: ESConfig, key: jax.Array, devices=None,
                   init_mean=None) -> Evolution:
    """Check that net and task fit, and bundle them with the ES config.

    ``init_mean`` (an ``init_params``-shaped pytree) is where the search starts;
    by default the rules' default coefficients.
    """
    if task.vocab_size != net.vocab_size:
        raise ValueError(
            f"task {task.name!r} has vocabulary {task.vocab_size} but the network "
            f"expects {net.vocab_size}"
        )
    mesh = population_mesh(cfg.population, devices)
    solution = plastic.init_params(net, key) if init_mean is None else init_mean
    return Evolution(net, task, cfg, mesh, solution)


# --- checkpoints: the whole ES state, written atomically --------------------------


def save_checkpoint(path: str, state, generation: int) -> None:
    """Write ``{generation, state}`` to ``path`` via a temporary file and rename."""
    payload = {"generation": generation, "state": flax.serialization.to_state_dict(
        jax.device_get(state))}
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(payload))
    os.replace(tmp, path)


def load_checkpoint(path: str, template_state) -> tuple[Any, int]:
    """Read a checkpoint written by ``save_checkpoint`` into ``template_state``'s structure."""
    with open(path, "rb") as f:
        payload = flax.serialization.msgpack_restore(f.read())
    state = flax.serialization.from_state_dict(template_state, payload["state"])
    return jax.tree.map(jnp.asarray, state), int(payload["generation"])


# --- the host loop: logging, checkpoints, resume ------------------------------------


def evolve(
    evolution: Evolution,
    seed: int,
    generations: int,
    out_dir: str | None = None,
    log_every: int = 10,
    resume: bool = False,
    on_log: Callable[[dict], None] | None = None,
    eval_seed: int = 12345,
):
    """Run ES for ``generations``, logging and checkpointing every ``log_every``.

    With ``out_dir``, metrics go to ``metrics.jsonl`` and the ES state to
    ``checkpoint.msgpack`` after every block; with ``resume`` a run restarts
    from the last checkpoint and ends exactly as an uninterrupted run would
    (the same compiled block, the same per-generation keys).

    Returns:
      ``(final_state, history)``: history is the list of logged records.
    """
    key = jax.random.key(seed)
    init_key, run_key = jax.random.split(key)
    eval_key = jax.random.key(eval_seed)
    state, start, history = evolution.init(init_key), 0, []
    ckpt_path = metrics_path = None
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        ckpt_path = os.path.join(out_dir, "checkpoint.msgpack")
        metrics_path = os.path.join(out_dir, "metrics.jsonl")
        if resume and os.path.exists(ckpt_path):
            state, start = load_checkpoint(ckpt_path, state)
            history = _read_history(metrics_path, upto=start)
        _write_history(metrics_path, history)  # drops records past the checkpoint

    generation = start
    while generation < generations:
        block = min(log_every, generations - generation)
        t0 = time.perf_counter()
        state, metrics = evolution.run(state, run_key, generation, block)
        jax.block_until_ready(state)
        seconds = time.perf_counter() - t0
        generation += block
        valid_nll, valid_acc = evolution.score(
            evolution.mean(state), eval_key, "valid", evolution.cfg.eval_batch
        )
        record = {
            "generation": generation,
            **{k: float(v[-1]) for k, v in metrics.items() if k != "nonfinite"},
            "nonfinite": int(jnp.sum(metrics["nonfinite"])),
            "valid_nll": float(valid_nll),
            "valid_accuracy": float(valid_acc),
            "seconds": seconds,
            "lifetimes_per_s": block * evolution.cfg.population * evolution.cfg.batch / seconds,
        }
        history.append(record)
        if out_dir is not None:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            save_checkpoint(ckpt_path, state, generation)
        if on_log is not None:
            on_log(record)
    return state, history


def _read_history(path: str, upto: int) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if r["generation"] <= upto]


def _write_history(path: str, history: list[dict]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in history)
