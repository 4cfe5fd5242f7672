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
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import evosax.algorithms
import evosax.core.fitness_shaping as evosax_shaping
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from plastix import batching, checks, noise_table, plastic
from plastix import runs
from plastix import devices as devices_lib

STRATEGIES: dict[str, type] = dict(evosax.algorithms.algorithms)
OPTIMIZERS = {"sgd": optax.sgd, "adam": optax.adam}
NONFINITE_MARGIN = 1.0  # how far behind the worst finite member a divergent one ranks


class Scores(NamedTuple):
    """Per-member results of one generation's evaluation, each ``(P,)``."""

    nll: jax.Array
    accuracy: jax.Array
    penalty: jax.Array  # the L2 fitness penalty (`l2_penalty`)


@dataclasses.dataclass(frozen=True)
class ESConfig:
    """Static ES configuration.

    Attributes:
      strategy: an evosax algorithm name (``plastix.evolve.STRATEGIES``).
      population: members per generation (even for antithetic sampling).
      batch: lifetimes (sequences) per member per generation.
      optimizer: "sgd" (Najarro & Risi 2020) or "adam" on the ES gradient estimate.
      lr, lr_decay, lr_min: its step size, decayed every generation but never below
        ``lr_min`` (Najarro & Risi 2020 use SGD with 0.2 and 0.995); ``lr`` below
        ``lr_min`` is refused.
      sigma, sigma_decay, sigma_min: search std, decayed every generation but never
        below ``sigma_min`` (Najarro & Risi 2020: 0.1 and 0.999); ``sigma`` below
        ``sigma_min`` is refused.
      floor_mode: how ``lr_min`` and ``sigma_min`` bound the decay (`decay_schedule`):
        "clamp", x_g = max(x_0 d^g, floor); or "stop", decay only while above the
        floor, so the last value lies within one factor d below it (Najarro & Risi).
      sigma_lag: evosax's strategies search generation g >= 1 with sigma_{g-1} (their
        ``tell`` reads the schedule before counting the generation); False searches
        generation g with sigma_g, as Najarro & Risi's loop does.
      fitness_shaping: what the strategy sees instead of raw fitness: "default" (the
        strategy's own; centred ranks for Open_ES), "centered_ranks" (rank/(N-1) - 1/2),
        "centered_ranks_std" (those divided by their std, Najarro & Risi), "z_score"
        or "raw" (`FITNESS_SHAPINGS`).
      l2_penalty, l2_reduce: fitness += l2_penalty * sum(theta^2) ("sum") or
        l2_penalty * mean(theta^2) ("mean", Najarro & Risi: 0.01); see `l2_penalty`.
      antithetic: mirrored sampling (z, -z) where the strategy supports it.
      noise_table: Open_ES draws each perturbation as a window of one shared table of
        this many N(0, 1) floats (Salimans et al. 2017; `plastix.noise_table`); None
        (default) sizes it by `noise_table_size`; 0 draws fresh Gaussians instead. A
        window is a copy where a fresh draw hashes a counter per number, and a member
        named by its window is built where it is evaluated, which matters when the
        parameters are many (per-synapse coefficients). Other strategies sample their
        own way and take None or 0.
      eval_batch: held-out sequences scored when reporting the ES mean.
      chunk_size, memory_budget: evaluate the population ``chunk_size`` members
        at a time, or in the largest chunks whose compiled working set fits
        ``memory_budget`` bytes (``plastix.batching``); same results, less memory.
    """

    strategy: str = "Open_ES"
    optimizer: str = "sgd"
    population: int = checks.field(64, checks.integer(at_least=2))
    batch: int = checks.field(32, checks.SIZE)
    lr: float = checks.field(0.2, checks.RATE)
    lr_decay: float = checks.field(0.995, checks.FACTOR)
    lr_min: float = checks.field(0.01, checks.NONNEGATIVE)
    sigma: float = checks.field(0.1, checks.RATE)
    sigma_decay: float = checks.field(0.999, checks.FACTOR)
    sigma_min: float = checks.field(0.01, checks.NONNEGATIVE)
    floor_mode: str = "clamp"
    sigma_lag: bool = True
    fitness_shaping: str = "default"
    l2_penalty: float = checks.field(0.0, checks.NONNEGATIVE)
    l2_reduce: str = "sum"
    antithetic: bool = True
    noise_table: int | None = checks.field(None, checks.integer(at_least=0, optional=True))
    eval_batch: int = checks.field(512, checks.SIZE)
    chunk_size: int | None = checks.field(None, checks.integer(at_least=1, optional=True))
    memory_budget: int | None = checks.field(None, checks.integer(at_least=1, optional=True))

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"unknown ES strategy {self.strategy!r}; evosax offers {sorted(STRATEGIES)}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown ES optimizer {self.optimizer!r}; choose one of {sorted(OPTIMIZERS)}"
            )
        checks.validate(self)
        # A floor is a setting of its own: a start below it is refused, never raised to it.
        checks.at_most_field("lr_min", self.lr_min, "lr", self.lr)
        checks.at_most_field("sigma_min", self.sigma_min, "sigma", self.sigma)
        if self.antithetic and _accepts(self.strategy, "use_antithetic_sampling"):
            if self.population % 2:
                raise checks.FieldError(
                    "population", f"must be even for antithetic sampling, which pairs members "
                                  f"(z, -z), got {self.population}")
        _check_option("floor_mode", self.floor_mode, FLOOR_MODES)
        _check_option("l2_reduce", self.l2_reduce, L2_REDUCTIONS)
        _check_option("fitness_shaping", self.fitness_shaping, ("default", *FITNESS_SHAPINGS))
        if self.fitness_shaping != "default" and not _accepts(self.strategy, "fitness_shaping_fn"):
            raise ValueError(f"ES strategy {self.strategy!r} takes no fitness shaping; "
                             f"use fitness_shaping='default'")
        if self.noise_table and self.strategy != "Open_ES":
            raise checks.FieldError(
                "noise_table", f"must be None (default) or 0 (fresh noise) with strategy "
                               f"{self.strategy!r}: only Open_ES draws from a table, got "
                               f"{self.noise_table}")
        if not self.sigma_lag and not _accepts(self.strategy, "std_schedule"):
            raise ValueError(f"ES strategy {self.strategy!r} has no sigma schedule; "
                             f"sigma_lag=False needs one")


def _accepts(strategy: str, argument: str) -> bool:
    return argument in inspect.signature(STRATEGIES[strategy].__init__).parameters


def _check_option(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown ES {what} {value!r}; choose one of {list(choices)}")


def decay_schedule(init: float, decay: float, floor: float,
                   mode: str = "clamp") -> optax.Schedule:
    """The value of generation g of a decayed step size or search std.

    "clamp": x_g = max(init * decay^g, floor).
    "stop":  x_g = init * decay^min(g, n), n the number of decays until
             init * decay^n <= floor: the reference loop of Najarro & Risi (2020)
             multiplies by ``decay`` after every generation only while x > floor.
    """
    if mode == "clamp":
        return lambda g: jnp.maximum(init * decay**g, floor)
    n = _decays_until_floor(init, decay, floor)
    if n is None:
        return lambda g: init * decay**g
    return lambda g: init * decay ** jnp.minimum(g, n)


def _decays_until_floor(init: float, decay: float, floor: float) -> int | None:
    """How often ``x <- x * decay`` runs while ``x > floor``, from ``x = init``; None: forever."""
    if init <= floor:
        return 0
    if not 0 < decay < 1 or floor <= 0:
        return None
    # Jump close to the answer, then step as the reference loop does (float64 products).
    n = max(int(math.log(floor / init) / math.log(decay)) - 2, 0)
    x = init * decay**n
    while x > floor:
        x *= decay
        n += 1
    return n


@functools.cache
def _std_on_schedule(cls: type) -> type:
    """``cls`` searching generation g with ``std_schedule(g)``, not ``std_schedule(g - 1)``.

    evosax strategies set generation 0's std in ``init`` from ``std_schedule(0)`` and
    generation g + 1's in ``tell`` from ``std_schedule(g)``. The subclass hands the
    strategy the schedule one step ahead and puts ``std_schedule(0)`` back at ``init``.
    """

    class OnSchedule(cls):
        def __init__(self, population_size, solution, *, std_schedule, **kwargs):
            super().__init__(population_size, solution,
                             std_schedule=lambda g: std_schedule(g + 1), **kwargs)
            self.first_std = std_schedule(0)

        def _init(self, key, params):
            return super()._init(key, params).replace(std=self.first_std)

    OnSchedule.__name__ = OnSchedule.__qualname__ = cls.__name__
    return OnSchedule


def noise_table_size(cfg: ESConfig, dims: int) -> int:
    """Floats in the shared noise table of a run searching ``dims`` parameters; 0: none.

    ``cfg.noise_table`` if set; by default, for Open_ES, the power of two at or above
    100 floats per parameter (Salimans et al. 2017: 250M floats for 10^5 - 10^6
    parameters), within [2^20, 2^28] (4 MiB to 1 GiB) and at least two windows long.
    """
    if cfg.noise_table is not None:
        return cfg.noise_table
    if cfg.strategy != "Open_ES":
        return 0
    per_parameter = 1 << max(math.ceil(math.log2(100 * dims)), 0)
    return max(min(max(per_parameter, 2**20), 2**28), 2 * dims)


def build_strategy(cfg: ESConfig, solution: Any, lr=None, sigma=None):
    """The evosax algorithm of ``cfg`` for a solution template pytree.

    ``lr``, ``sigma``: the step size and search std to start from in place of ``cfg.lr``
    and ``cfg.sigma``; they may be traced values (a sweep maps one compiled program over
    cells that differ in them) where ``cfg.floor_mode`` is "clamp".
    """
    lr = cfg.lr if lr is None else lr
    sigma = cfg.sigma if sigma is None else sigma
    kwargs: dict[str, Any] = {}
    if _accepts(cfg.strategy, "optimizer"):
        kwargs["optimizer"] = OPTIMIZERS[cfg.optimizer](
            decay_schedule(lr, cfg.lr_decay, cfg.lr_min, cfg.floor_mode)
        )
    strategy_cls = STRATEGIES[cfg.strategy]
    table_size = noise_table_size(cfg, sum(jnp.size(x) for x in jax.tree.leaves(solution)))
    if table_size:
        strategy_cls = noise_table.SharedNoiseOpen_ES
        kwargs["table_size"] = table_size
    if _accepts(cfg.strategy, "std_schedule"):
        kwargs["std_schedule"] = decay_schedule(
            sigma, cfg.sigma_decay, cfg.sigma_min, cfg.floor_mode)
        if not cfg.sigma_lag:
            strategy_cls = _std_on_schedule(strategy_cls)
    if _accepts(cfg.strategy, "use_antithetic_sampling"):
        kwargs["use_antithetic_sampling"] = cfg.antithetic
    if cfg.fitness_shaping != "default":
        kwargs["fitness_shaping_fn"] = FITNESS_SHAPINGS[cfg.fitness_shaping]
    return strategy_cls(cfg.population, solution, **kwargs)


def start_params(es_params, sigma):
    """``es_params`` searching from std ``sigma``: strategies without a std schedule start
    at their ``std_init``."""
    return es_params.replace(std_init=sigma) if hasattr(es_params, "std_init") else es_params


def make_strategy(cfg: ESConfig, solution: Any):
    """Build the evosax algorithm and its params for a solution template pytree."""
    strategy = build_strategy(cfg, solution)
    return strategy, start_params(strategy.default_params, cfg.sigma)


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
    """sum(theta^2) over every leaf of ``tree``."""
    return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree))


def l2_penalty(cfg: ESConfig, tree) -> jax.Array:
    """The fitness penalty of one member: ``cfg.l2_penalty`` times sum(theta^2), or
    times mean(theta^2) over all its scalars with ``cfg.l2_reduce == "mean"``
    (Najarro & Risi 2020: 0.01 mean(theta^2), so it does not grow with the network)."""
    penalty = cfg.l2_penalty * l2_norm_sq(tree)
    if cfg.l2_reduce == "mean":
        penalty = penalty / sum(jnp.size(leaf) for leaf in jax.tree.leaves(tree))
    return penalty


def centered_ranks_std(population, fitness, state, params) -> jax.Array:
    """Centred ranks divided by their standard deviation (Najarro & Risi 2020).

    r_k = rank_k / (N - 1) - 1/2 (rank 0 the lowest fitness, ties averaged), then
    f_k = (r_k - mean(r)) / std(r) with the population std. The signature is evosax's
    ``fitness_shaping_fn``. A generation of equal fitness (std 0) shapes to zeros, a
    flat step, where the reference code raises.
    """
    ranks = evosax_shaping.centered_rank_fitness_shaping_fn(population, fitness, state, params)
    centred = ranks - jnp.mean(ranks, axis=-1, keepdims=True)
    std = jnp.std(ranks, axis=-1, keepdims=True)
    return jnp.where(std > 0, centred / jnp.where(std > 0, std, 1.0), 0.0)


# fitness_shaping name -> evosax fitness_shaping_fn(population, fitness, state, params)
FITNESS_SHAPINGS: dict[str, Callable] = {
    "centered_ranks": evosax_shaping.centered_rank_fitness_shaping_fn,
    "centered_ranks_std": centered_ranks_std,
    "z_score": evosax_shaping.standardize_fitness_shaping_fn,
    "raw": evosax_shaping.identity_fitness_shaping_fn,
}
FLOOR_MODES = ("clamp", "stop")
L2_REDUCTIONS = ("sum", "mean")


def population_mesh(population: int, devices=None) -> Mesh:
    """A 1-D mesh whose axis "pop" shards the population.

    ``devices=None``: the local devices, as many as divide the population
    (`plastix.devices.population_devices`); explicit ``devices`` must divide it.
    An Auto (default) mesh: evosax's ``tell`` fails under an Explicit mesh.
    """
    if devices is None:
        devices = devices_lib.population_devices(population)
    devices = list(devices)
    if population % len(devices):
        raise ValueError(
            f"population {population} cannot be split evenly over {len(devices)} devices; "
            f"use a multiple of {len(devices)}"
        )
    return Mesh(np.array(devices), ("pop",))


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: a static jit argument
class Evolution:
    """Everything static about one ES run; its methods are pure jitted functions.

    ``task`` is a ``plastix.tasks`` task; ``mesh`` shards the population axis;
    ``solution`` is the ``init_params``-shaped pytree where the search starts.

    The strategy searches the flat vector ``ravel_pytree(solution)`` (the layout of
    evosax's own state), and each member is unravelled inside its evaluation: handing
    evosax the pytree would make every ``ask`` and ``tell`` copy the whole population
    between the two layouts, which with per-synapse coefficients costs as much as a
    tenth of the lifetimes themselves.
    """

    net: plastic.PlasticRNN
    task: Any
    cfg: ESConfig
    mesh: Mesh
    solution: Any
    # (lr, sigma, es_params) in place of the config's: see `at_rates`.
    rates: tuple | None = None

    @functools.cached_property
    def _flat(self):
        return ravel_pytree(self.solution)

    def unravel(self, flat: jax.Array):
        """One member's flat parameter vector as the ``init_params`` pytree."""
        return self._flat[1](flat)

    @functools.cached_property
    def _strategy(self):
        if self.rates is not None:
            lr, sigma, es_params = self.rates
            strategy = build_strategy(self.cfg, self._flat[0], lr, sigma)
            return strategy, start_params(es_params, sigma)
        strategy, es_params = make_strategy(self.cfg, self._flat[0])
        # Whole on every device of the mesh once, not copied there by every `run` call
        # (a noise table is tens of MB).
        return strategy, devices_lib.replicate(es_params, self._whole_on_every_device)

    @property
    def strategy(self):
        return self._strategy[0]

    @property
    def es_params(self):
        return self._strategy[1]

    def at_rates(self, lr, sigma, es_params=None) -> Evolution:
        """This run with step size ``lr`` and search std ``sigma`` in place of the config's.

        They may be traced values, so that one compiled program maps over runs that
        differ only in them (``experiments/sweep.py``); ``cfg.floor_mode`` must then be
        "clamp". ``es_params`` (default ``self.es_params``) are taken as they are, so a
        shared noise table is not drawn again inside the trace.
        """
        es_params = self.es_params if es_params is None else es_params
        return dataclasses.replace(self, rates=(lr, sigma, es_params))

    def init(self, key: jax.Array, start=None):
        """The ES state, its mean at ``start`` (an ``init_params`` pytree of the solution's
        structure; default the solution template, the rule's defaults)."""
        mean = self._flat[0] if start is None else ravel_pytree(start)[0]
        return self.strategy.init(key, mean, self.es_params)

    def mean(self, state):
        """The search mean as an ``init_params`` pytree."""
        return self.unravel(self.strategy.get_mean(state))

    def params(self, state):
        """What the run has learned: the search mean (as `metagrad.MetaGradient.params`)."""
        return self.mean(state)

    def place(self, state):
        """``state`` as a block of `run` returns it: strong dtypes, whole on every device of
        the mesh. The initial state is weakly typed on one device and a loaded one is
        neither, so each would otherwise compile the block again."""
        return devices_lib.replicate(jax.tree.map(lambda x: jnp.asarray(x, x.dtype), state),
                                     self._whole_on_every_device)

    @functools.cached_property
    def _whole_on_every_device(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def _shard(self, population):
        sharding = NamedSharding(self.mesh, PartitionSpec("pop"))
        return jax.lax.with_sharding_constraint(population, sharding)

    def population_scores(self, population, key: jax.Array, split: str = "train",
                          decode: Callable | None = None) -> Scores:
        """NLL, accuracy and L2 penalty of every member on one shared batch (common
        random numbers).

        ``population``: ``(P, D)`` flat parameter vectors, as ``strategy.ask`` gives
        them; or, with ``decode``, a pytree of ``(P, ...)`` member names that
        ``decode`` turns into one member's flat vector where that member is evaluated
        (`noise_table.Perturbation`). The sequences and the lifetimes' initial weights
        are drawn once, outside the population map, and every member reads the same
        ones. The population is evaluated in chunks: ``cfg.chunk_size`` or
        ``cfg.memory_budget`` if set, else the device policy's default
        (`plastix.devices.default_chunk`).
        """
        data_key, life_key = jax.random.split(key)
        data = self.task.sample(data_key, self.cfg.batch, split)
        draws = plastic.lifetime_draws(self.net, life_key, self.cfg.batch)

        def member(name):
            flat = name if decode is None else decode(name)
            stats = plastic.lifetime_stats(self.net, self.unravel(flat), draws, *data)
            penalty = l2_penalty(self.cfg, flat) if self.cfg.l2_penalty else jnp.zeros(())
            return Scores(*plastic.mean_scores(stats), penalty)

        n_devices = self.mesh.devices.size
        chunk_size = self.cfg.chunk_size
        if chunk_size is None and self.cfg.memory_budget is None:
            chunk_size = devices_lib.default_chunk(n_devices)
        if devices_lib.shard_population():
            population = jax.tree.map(self._shard, population)
        evaluate_all = batching.population_map(
            member, chunk_size=chunk_size, memory_budget=self.cfg.memory_budget,
            multiple_of=n_devices, place_chunks=self._shard_chunks,
        )
        return evaluate_all(population)

    def _shard_chunks(self, chunks):
        """Split every chunk of ``(num_chunks, chunk_size, ...)`` members over the devices."""
        sharding = NamedSharding(self.mesh, PartitionSpec(None, "pop"))
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), chunks)

    @property
    def names_members(self) -> bool:
        """Whether the strategy names its members instead of holding the ``(P, D)``
        population (`noise_table.SharedNoiseOpen_ES`)."""
        return hasattr(self.strategy, "ask_perturbations")

    def ask(self, state, key: jax.Array, es_params=None):
        """A generation's members: ``(population, decode, state)``.

        ``population`` is the ``(P, D)`` flat vectors and ``decode`` None; or, where the
        strategy names its members, their names and the function that builds one
        member's vector from its name, so that each is built where it is evaluated.
        """
        es_params = self.es_params if es_params is None else es_params
        if self.names_members:
            names = self.strategy.ask_perturbations(key, state, es_params)
            return names, functools.partial(self.strategy.member, state, es_params), state
        population, state = self.strategy.ask(key, state, es_params)
        return population, None, state

    def tell(self, state, population, fitness: jax.Array, key: jax.Array, es_params=None):
        """The strategy's update from the fitness of `ask`'s ``population``; where the
        members are named it reads the noise they were built from."""
        es_params = self.es_params if es_params is None else es_params
        if self.names_members:
            return self.strategy.tell_perturbations(key, population, fitness, state, es_params)
        return self.strategy.tell(key, population, fitness, state, es_params)[0]

    def generation(self, state, key: jax.Array, es_params=None):
        """ask -> evaluate -> tell. Returns the new state and scalar metrics.

        ``es_params``: the strategy's params (default ``self.es_params``); `run` passes
        them as an argument so that a large one (a shared noise table) is an input of
        the compiled program, not a constant folded into it.
        """
        ask_key, eval_key, tell_key = jax.random.split(key, 3)
        population, decode, state = self.ask(state, ask_key, es_params)
        scores = self.population_scores(population, eval_key, decode=decode)
        raw_fitness = scores.nll + scores.penalty
        fitness, n_nonfinite = contain_nonfinite(raw_fitness)
        state = self.tell(state, population, fitness, tell_key, es_params)
        nll, accuracy = scores.nll, scores.accuracy
        finite = jnp.isfinite(nll)
        # Figures of the finite members only, not of the stand-in fitness the strategy was
        # told; without any finite member they are inf / NaN, logged as None.
        metrics = {
            "best_fitness": jnp.min(jnp.where(jnp.isfinite(raw_fitness), raw_fitness, jnp.inf)),
            "mean_fitness": jnp.where(jnp.any(finite), jnp.sum(jnp.where(finite, nll, 0.0))
                                      / jnp.maximum(jnp.sum(finite), 1), jnp.nan),
            "best_accuracy": jnp.max(jnp.where(finite, accuracy, 0.0)),
            "mean_accuracy": jnp.mean(jnp.where(finite, accuracy, 0.0)),
            "nonfinite": n_nonfinite,
        }
        return state, metrics

    def run(self, state, run_key: jax.Array, first_generation, num_generations: int):
        """``num_generations`` generations in one ``lax.scan`` (one compiled program).

        Generation g uses ``fold_in(run_key, g)``, so a run resumed from any
        checkpoint draws exactly the keys an uninterrupted run would.
        """
        return self._run(state, self.es_params, run_key, first_generation, num_generations)

    @functools.partial(jax.jit, static_argnames=("self", "num_generations"))
    def _run(self, state, es_params, run_key: jax.Array, first_generation, num_generations: int):
        generations = first_generation + jnp.arange(num_generations)
        step = lambda s, g: self.generation(s, jax.random.fold_in(run_key, g), es_params)
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
    plastic.check_task(net, task)
    mesh = population_mesh(cfg.population, devices)
    solution = plastic.init_params(net, key) if init_mean is None else init_mean
    plastic.check_params(net, solution)
    return Evolution(net, task, cfg, mesh, solution)


# --- the host loop: logging, checkpoints, resume ------------------------------------

# Record fields that measure speed, not results: they differ between equal runs.
TIMING_FIELDS = ("seconds", "lifetimes_per_s", "synapse_updates_per_s")


def finite_or_none(x) -> float | None:
    """A logged figure: the float, or None where it is NaN or infinite (no finite member,
    a diverged mean): a record never shows a made-up number, and stays valid JSON."""
    x = float(x)
    return x if math.isfinite(x) else None


def block_record(evolution: Evolution, generation: int, metrics: dict, valid, seconds: float,
                 lifetimes: int) -> dict:
    """The logged record of one block of generations ending at ``generation``.

    ``metrics``: `Evolution.generation`'s, stacked over the block's generations;
    ``valid``: the held-out ``(nll, accuracy)`` of the ES mean after it; ``seconds``: the
    block's wall time, in which ``lifetimes`` lifetimes ran (the speed fields).
    """
    valid_nll, valid_acc = valid
    updates = lifetimes * plastic.synapse_updates_per_lifetime(evolution.net,
                                                               evolution.task.seq_len)
    return {
        "generation": generation,
        **{k: finite_or_none(v[-1]) for k, v in metrics.items() if k != "nonfinite"},
        "nonfinite": int(np.sum(metrics["nonfinite"])),
        "finite_members": evolution.cfg.population - int(metrics["nonfinite"][-1]),
        "valid_nll": finite_or_none(valid_nll),
        "valid_accuracy": float(valid_acc),
        "seconds": seconds,
        "lifetimes_per_s": lifetimes / seconds,
        # Whole generations (ask, every lifetime, tell) per second, in the unit of
        # benchmarks/bench_es.py: plastic synapses times lifetime steps.
        "synapse_updates_per_s": updates / seconds,
    }


def evolve(
    evolution: Evolution,
    seed: int,
    generations: int,
    out_dir: str | None = None,
    log_every: int = 10,
    resume: bool = False,
    on_log: Callable[[dict], None] | None = None,
    eval_seed: int = 12345,
    time_budget_s: float | None = None,
    on_start: Callable[[int], None] | None = None,
):
    """Run ES for ``generations``, logging and checkpointing every ``log_every``.

    With ``out_dir`` (a ``plastix.runs`` run directory), a record per block goes to
    ``metrics.jsonl`` and the ES state to ``checkpoint.msgpack``. With ``resume`` a run
    restarts from the last checkpoint, drops the records logged after it, and ends
    exactly as an uninterrupted run would (the same compiled block, the same
    per-generation keys). Without it the run starts afresh and the directory's old
    checkpoint and records are discarded. The caller owns ``config.json``.
    ``time_budget_s`` stops the run early at the first logged block past that many
    seconds (`runs.run_blocks`). ``generations=0`` runs none: the initial state and an
    empty history; a negative count or a ``log_every`` below 1 is a ValueError.

    Returns:
      ``(final_state, history)``: history is the list of logged records.
    """
    checks.COUNT.check("generations", generations)
    checks.SIZE.check("log_every", log_every)
    init_key, run_key = jax.random.split(jax.random.key(seed))
    eval_key = jax.random.key(eval_seed)

    def advance(state, generation, block):
        t0 = time.perf_counter()
        state, metrics = evolution.run(state, run_key, generation, block)
        jax.block_until_ready(state)
        seconds = time.perf_counter() - t0
        valid = evolution.score(evolution.mean(state), eval_key, "valid", evolution.cfg.eval_batch)
        return state, block_record(evolution, generation + block, metrics, valid, seconds,
                                   lifetimes=block * evolution.cfg.population * evolution.cfg.batch)

    return runs.run_blocks(evolution.init(init_key), generations, advance, out_dir=out_dir,
                           log_every=log_every, resume=resume, on_log=on_log,
                           step_key="generation", place=evolution.place,
                           time_budget_s=time_budget_s, on_start=on_start)
