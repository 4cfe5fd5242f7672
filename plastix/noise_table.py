"""OpenAI-ES with a shared noise table (Salimans, Ho, Chen, Sidor & Sutskever 2017).

A generation of OpenAI-ES perturbs the mean with one Gaussian vector per member pair,
``theta_i = mu + sigma z_i``. With per-synapse coefficients a vector has 10^5 - 10^6
entries, and drawing fresh Gaussians (``jax.random.normal``, a counter-based hash per
number) can cost as much as a third of evaluating the population on a CPU. Salimans et al.
(2017, their "shared noise table") instead draw ``z_i`` as a window of one long
table of Gaussian noise, fixed at the start: ``z_i = table[o_i : o_i + D]`` with a
random offset ``o_i``. Sampling is then a copy; the windows of different members are
uncorrelated (where two overlap, one is a shifted copy of the other, and its entries
meet different entries of the other window).

`SharedNoiseOpen_ES` is evosax's ``Open_ES`` with the sampling step replaced: its
optimiser, schedules, fitness shaping and state are evosax's. The table lives in the
strategy's params (drawn from ``table_seed``), never in its state, so checkpoints stay
the size of the mean and a resumed run reads the same table.

A member is then named by its `Perturbation` (a window offset and a sign), so a
generation need never hold the ``(P, D)`` population: `ask_perturbations` draws the
names, `member` builds one member's vector where it is evaluated (on the device that
evaluates it), and `tell_perturbations` forms the gradient estimate from the windows,
``g = sum_i f_i s_i table[o_i : o_i + D] / (P sigma)``, which is evosax's
``f . (x_i - mu) / sigma / (P sigma)`` without the rounding of ``(x_i - mu) / sigma``.
This is how Salimans et al. distribute ES over workers; here it saves writing and
reading the population (tens of MB a generation with per-synapse coefficients) and
keeps a sharded population from ever being gathered. ``ask``/``tell`` keep evosax's
interface on the materialised population and give the same generation.
"""

from __future__ import annotations

from typing import NamedTuple

import evosax.algorithms
import jax
import jax.numpy as jnp
import optax
from evosax.algorithms.base import update_best_solution_and_fitness
from flax import struct


@struct.dataclass
class Params:
    """The shared noise table, ``(table_size,)`` float32."""

    noise_table: jax.Array


class Perturbation(NamedTuple):
    """Which member: ``x = mean + sign * std * table[offset : offset + D]``."""

    offset: jax.Array  # int32
    sign: jax.Array  # float32, +1 or -1


class SharedNoiseOpen_ES(evosax.algorithms.Open_ES):
    """OpenAI-ES sampling its perturbations from a shared noise table.

    Args:
      population_size, solution, **kwargs: as for evosax's ``Open_ES``.
      table_size: floats in the table; at least the number of evolved parameters.
      table_seed: the table is ``N(0, 1)`` drawn from ``jax.random.key(table_seed)``.
    """

    def __init__(self, population_size: int, solution, table_size: int = 2**24,
                 table_seed: int = 0, **kwargs):
        super().__init__(population_size, solution, **kwargs)
        if table_size < self.num_dims:
            raise ValueError(
                f"noise table of {table_size} floats is shorter than the {self.num_dims} "
                f"evolved parameters; use at least {self.num_dims}")
        self.table_size = table_size
        self.table_seed = table_seed

    @property
    def _default_params(self) -> Params:
        return Params(jax.random.normal(jax.random.key(self.table_seed), (self.table_size,)))

    def ask_perturbations(self, key: jax.Array, state, params: Params) -> Perturbation:
        """The generation's members, ``(P,)`` each field. With antithetic sampling the
        pairs sit side by side, ``(z_0, -z_0, z_1, -z_1, ...)``: split over devices in
        contiguous blocks, both members of a pair are evaluated on one device (evosax's
        order puts every +z before every -z)."""
        del state
        antithetic = self.use_antithetic_sampling
        draws = self.population_size // 2 if antithetic else self.population_size
        offsets = jax.random.randint(key, (draws,), 0, self.table_size - self.num_dims + 1)
        if not antithetic:
            return Perturbation(offsets, jnp.ones(draws))
        return Perturbation(jnp.repeat(offsets, 2),
                            jnp.tile(jnp.array([1.0, -1.0]), draws))

    def _window(self, params: Params, offset: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(params.noise_table, (offset,), (self.num_dims,))

    def member(self, state, params: Params, perturbation: Perturbation) -> jax.Array:
        """One member's flat vector, ``mean + sign * std * window``."""
        step = perturbation.sign * state.std * self._window(params, perturbation.offset)
        return state.mean + step

    def _ask(self, key: jax.Array, state, params: Params):
        perturbations = self.ask_perturbations(key, state, params)
        return jax.vmap(lambda p: self.member(state, params, p))(perturbations), state

    def tell_perturbations(self, key: jax.Array, perturbations: Perturbation,
                           fitness: jax.Array, state, params: Params):
        """evosax's ``tell`` (best solution so far, fitness shaping, the Open_ES step)
        for the members ``perturbations`` names, reading their windows one at a time.

        The fitness shaping function is handed ``population=None``: every shaping
        plastix offers reads the fitness alone. evosax's metrics are not formed.
        """
        best = jnp.argmin(jnp.where(jnp.isnan(fitness), jnp.inf, fitness))
        best_member = self.member(state, params, jax.tree.map(lambda x: x[best], perturbations))
        best_solution, best_fitness = update_best_solution_and_fitness(
            best_member[None], fitness[best][None], state.best_solution, state.best_fitness)
        state = state.replace(best_solution=best_solution, best_fitness=best_fitness)
        shaped = self._postprocess_fitness(
            fitness, self.fitness_shaping_fn(None, fitness, state, params))

        def accumulate(i, total):
            weight = shaped[i] * perturbations.sign[i]
            return total + weight * self._window(params, perturbations.offset[i])

        noise_sum = jax.lax.fori_loop(0, self.population_size, accumulate,
                                      jnp.zeros_like(state.mean))
        grad = noise_sum / (self.population_size * state.std)
        updates, opt_state = self.optimizer.update(grad, state.opt_state, state.mean)
        return state.replace(
            mean=optax.apply_updates(state.mean, updates),
            std=self.std_schedule(state.generation_counter),
            opt_state=opt_state,
            generation_counter=state.generation_counter + 1,
        )
