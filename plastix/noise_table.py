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

`SharedNoiseOpen_ES` is evosax's ``Open_ES`` with only the sampling step replaced: its
``tell``, optimiser, schedules, fitness shaping and state are evosax's. The table lives
in the strategy's params (drawn from ``table_seed``), never in its state, so
checkpoints stay the size of the mean and a resumed run reads the same table.
"""

from __future__ import annotations

import evosax.algorithms
import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Params:
    """The shared noise table, ``(table_size,)`` float32."""

    noise_table: jax.Array


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

    def _ask(self, key: jax.Array, state, params: Params):
        pairs = self.population_size // 2 if self.use_antithetic_sampling else self.population_size
        offsets = jax.random.randint(key, (pairs,), 0, self.table_size - self.num_dims + 1)
        window = lambda offset: jax.lax.dynamic_slice(params.noise_table, (offset,),
                                                      (self.num_dims,))
        if not self.use_antithetic_sampling:
            return state.mean + state.std * jax.vmap(window)(offsets), state

        def pair(offset):  # one fused pass per pair: mean + std z and mean - std z
            step = state.std * window(offset)
            return jnp.stack([state.mean + step, state.mean - step])

        # Pairs side by side, (z_0, -z_0, z_1, -z_1, ...): split over devices in
        # contiguous blocks, both members of a pair then live on one device, which
        # reads only its own windows (evosax's order puts every +z before every -z).
        population = jax.vmap(pair)(offsets).reshape(self.population_size, self.num_dims)
        return population, state
