"""Meta-learning by gradient descent through the lifetime, beside ES, on the same network.

ES (`plastix.evolve`) estimates how the in-lifetime loss changes with the plastic
network's parameters θ (rule coefficients, learning rates, initial weights, the
neuromodulator) from a population of perturbed members. Here the same loss of the same
`plastix.plastic` lifetime is differentiated instead, through every plasticity update:

    L(θ) = (1/|S|) Σ_{(b,t) ∈ S} −log p_θ(y_{b,t} | tokens_{b,≤t}, teachers_{b,<t})  + λ‖θ‖²

over B lifetimes of random initial weights (S their scored positions; λ‖θ‖² the ES
fitness penalty, `evolve.l2_penalty`), and θ follows Adam on the gradient with its global
norm clipped (`train.make_optimizer`). This is meta-learning of plasticity as in
differentiable plasticity and backpropamine (Miconi, Clune & Stanley 2018, ICML; Miconi
et al. 2019, ICLR) and rule fitting (Confavreux et al. 2020, NeurIPS).

Long lifetimes:

* ``checkpoint_every = k``: the exact gradient, with the lifetime's carry (the plastic
  weights) stored only every k steps and each segment recomputed in the backward pass
  (``jax.checkpoint``; Chen et al. 2016): memory ~ T/k + k carries instead of T.
* ``truncation = K``: truncated BPTT (Williams & Peng 1990). The lifetime is cut into
  windows of K steps; the gradient of each window's loss flows within the window only
  (the carry entering it is a constant), and the windows' gradients are summed during
  one forward pass. Memory holds one window, however long the lifetime; parameters act
  on a window's start only through the first window (initial weights, for instance).

A step whose loss or gradient is not finite (plastic weights that diverged) leaves θ and
the optimiser state unchanged and is counted, as ES ranks such members last.

Resuming loses nothing: step s samples its batch and lifetimes from ``fold_in(run_key, s)``,
and a checkpoint holds the step, θ and the optimiser state, so a run killed and resumed
ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from plastix import devices as devices_lib
from plastix import checks, evolve, plastic, runs, train


@dataclasses.dataclass(frozen=True)
class GradConfig:
    """Static configuration of meta-learning by gradient.

    Attributes:
      learning_rate, lr_decay, lr_min: Adam's step size, multiplied by ``lr_decay``
        every update but never below ``lr_min`` (1.0: constant). It depends on the
        update's index only, so a run extended on resume equals a longer one.
      clip_norm: the gradient's global norm is clipped to this (Pascanu et al. 2013).
      batch: lifetimes (sequences) per update.
      truncation: truncated BPTT window in steps; None differentiates the whole lifetime.
      checkpoint_every: store the lifetime's carry every this many steps and recompute
        the steps between in the backward pass; None stores every step.
      l2_penalty, l2_reduce: loss += l2_penalty * sum(theta^2) ("sum") or
        l2_penalty * mean(theta^2) ("mean"), as the ES fitness (`evolve.l2_penalty`).
      eval_batch: held-out sequences scored at every log.
    """

    learning_rate: float = checks.field(0.01, checks.RATE)
    lr_decay: float = checks.field(1.0, checks.FACTOR)
    lr_min: float = checks.field(0.0, checks.NONNEGATIVE)
    clip_norm: float = checks.field(1.0, checks.RATE)
    batch: int = checks.field(32, checks.SIZE)
    truncation: int | None = checks.field(None, checks.integer(at_least=1, optional=True))
    checkpoint_every: int | None = checks.field(None, checks.integer(at_least=1, optional=True))
    l2_penalty: float = checks.field(0.0, checks.NONNEGATIVE)
    l2_reduce: str = "sum"
    eval_batch: int = checks.field(512, checks.SIZE)

    def __post_init__(self):
        checks.validate(self, prefix="gradient ")
        checks.at_most_field("gradient lr_min", self.lr_min, "gradient learning_rate",
                             self.learning_rate)
        if self.l2_reduce not in evolve.L2_REDUCTIONS:
            raise ValueError(f"unknown l2_reduce {self.l2_reduce!r}; choose one of "
                             f"{list(evolve.L2_REDUCTIONS)}")


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: number of updates applied
    params: Any
    opt_state: Any


# Record fields that measure speed, not results: those of the ES loop's records.
TIMING_FIELDS = evolve.TIMING_FIELDS


class StepMetrics(NamedTuple):
    """One update's figures on its training batch."""

    nll: jax.Array
    accuracy: jax.Array
    grad_norm: jax.Array
    nonfinite: jax.Array  # 1 where the update was skipped


# --- the loss and its gradient through the lifetime -----------------------------------------


def _split_time(tree, size: int):
    """``(windows, rest)``: the first ``T - T % size`` steps of every ``(T, ...)`` leaf as
    ``(T // size, size, ...)`` and the last ``T % size`` steps as they are."""
    length = jax.tree.leaves(tree)[0].shape[0]
    cut = length - length % size
    windows = jax.tree.map(lambda x: x[:cut].reshape((cut // size, size) + x.shape[1:]), tree)
    return windows, jax.tree.map(lambda x: x[cut:], tree)


def _has_steps(tree) -> bool:
    return jax.tree.leaves(tree)[0].shape[0] > 0


def scan_lifetime(step: Callable, carry, xs, checkpoint_every: int | None = None):
    """``lax.scan(step, carry, xs)``; with ``checkpoint_every = k``, autodiff stores the
    carry only every k steps and recomputes each segment of k steps in the backward pass."""
    if checkpoint_every is None:
        return jax.lax.scan(step, carry, xs)
    segment = jax.checkpoint(lambda c, seg: jax.lax.scan(step, c, seg))
    windows, rest = _split_time(xs, checkpoint_every)
    carry, outputs = jax.lax.scan(segment, carry, windows)
    outputs = jax.tree.map(lambda o: o.reshape((-1,) + o.shape[2:]), outputs)
    if _has_steps(rest):
        carry, tail = segment(carry, rest)
        outputs = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), outputs, tail)
    return carry, outputs


def _window_loss(net, params, draws, carry, xs, mask, count, checkpoint_every):
    """The summed NLL and accuracy of one stretch of the lifetime over ``count`` scored
    positions, and the carry after it."""
    step = plastic.lifetime_step(net, params, draws)
    carry, (nll, correct) = scan_lifetime(step, carry, xs, checkpoint_every)
    return jnp.sum(nll * mask) / count, (carry, jnp.sum(correct * mask) / count)


def loss_and_grad(net: plastic.PlasticRNN, params: dict, draws: plastic.LifetimeDraws, data,
                  truncation: int | None = None, checkpoint_every: int | None = None):
    """``(nll, accuracy, grads)``: the mean in-lifetime NLL of B lifetimes (nats per scored
    token, as ES's fitness), their accuracy, and the NLL's gradient w.r.t. ``params``.

    ``truncation = K`` gives truncated BPTT's gradient (module docstring), exact within
    each window of K steps; None the exact gradient through the whole lifetime.
    """
    inputs, targets, mask = data
    count = jnp.maximum(jnp.sum(mask), 1.0)
    mask_t = mask.T

    def first_window(params, xs, window_mask):  # the birth carry depends on params (w0)
        carry, _ = plastic.lifetime_start(net, params, draws, inputs, targets, mask)
        return _window_loss(net, params, draws, carry, xs, window_mask, count,
                            checkpoint_every)

    _, xs = plastic.lifetime_start(net, params, draws, inputs, targets, mask)
    first_grad = jax.value_and_grad(first_window, has_aux=True)
    if truncation is None:
        (nll, (_, accuracy)), grads = first_grad(params, xs, mask_t)
        return nll, accuracy, grads

    window_grad = jax.value_and_grad(
        lambda p, c, x, m: _window_loss(net, p, draws, c, x, m, count, checkpoint_every),
        has_aux=True)

    def add_window(totals, window):
        carry, nll, accuracy, grads = totals
        (w_nll, (carry, w_acc)), w_grads = window_grad(params, jax.lax.stop_gradient(carry),
                                                       *window)
        return (carry, nll + w_nll, accuracy + w_acc,
                jax.tree.map(jnp.add, grads, w_grads)), None

    first = jax.tree.map(lambda x: x[:truncation], (xs, mask_t))
    later = jax.tree.map(lambda x: x[truncation:], (xs, mask_t))
    (nll, (carry, accuracy)), grads = first_grad(params, *first)
    totals = (carry, nll, accuracy, grads)
    if _has_steps(later):
        windows, rest = _split_time(later, truncation)
        totals, _ = jax.lax.scan(add_window, totals, windows)
        if _has_steps(rest):
            totals, _ = add_window(totals, rest)
    _, nll, accuracy, grads = totals
    return nll, accuracy, grads


# --- the outer loop ---------------------------------------------------------------------


def batch_mesh(batch: int, devices=None) -> Mesh:
    """A 1-D mesh whose axis "batch" splits a batch of lifetimes over the local devices
    (as many as divide it): data parallelism, the gradients summed across devices."""
    return Mesh(np.array(devices_lib.population_devices(batch, devices)), ("batch",))


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: a static jit argument
class MetaGradient:
    """Everything static about one gradient run; its methods are pure jitted functions.

    The counterpart of `evolve.Evolution` for the same network, task and starting point.
    """

    net: plastic.PlasticRNN
    task: Any
    cfg: GradConfig
    mesh: Mesh
    start: dict  # the parameters the descent starts from

    @functools.cached_property
    def optimizer(self) -> optax.GradientTransformation:
        cfg = self.cfg
        # optax reads end_value as a ceiling when the rate does not decay: no floor then.
        floor = cfg.lr_min if cfg.lr_decay < 1 else None
        rate = optax.exponential_decay(cfg.learning_rate, 1, cfg.lr_decay, end_value=floor)
        return train.make_optimizer(rate, cfg.clip_norm)

    def init(self, key: jax.Array | None = None) -> TrainState:
        """The state before the first update (``key`` is unused: the start is given)."""
        del key
        params = jax.tree.map(jnp.asarray, self.start)
        return TrainState(jnp.zeros((), jnp.int32), params, self.optimizer.init(params))

    def params(self, state: TrainState) -> dict:
        """What the run has learned (as `evolve.Evolution.params`)."""
        return state.params

    def _split_batch(self, tree):
        """Lay every ``(B, ...)`` leaf out over the devices along B."""
        sharding = NamedSharding(self.mesh, PartitionSpec("batch"))
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)

    def place(self, state: TrainState) -> TrainState:
        """``state`` as a block of `run` returns it: strong dtypes, whole on every device
        of the mesh. The initial state is weakly typed on one device and a loaded one is
        neither, so each would otherwise compile the block again."""
        return devices_lib.replicate(jax.tree.map(lambda x: jnp.asarray(x, x.dtype), state),
                                     NamedSharding(self.mesh, PartitionSpec()))

    def _batch_loss_and_grad(self, params, draws, data):
        """`loss_and_grad` of the whole batch, each device running its own lifetimes to
        the end: the devices meet once per update, to sum their parts (weighted by their
        scored positions), not at every step of the lifetime as a batch axis split by
        sharding constraints alone would make them (a collective per scan step)."""

        def part(params, draws, data):
            count = jnp.sum(data[2])
            nll, accuracy, grads = loss_and_grad(self.net, params, draws, data,
                                                 self.cfg.truncation, self.cfg.checkpoint_every)
            total = jnp.maximum(jax.lax.psum(count, "batch"), 1.0)
            share = lambda x: jax.lax.psum(x * jnp.maximum(count, 1.0), "batch") / total
            return share(nll), share(accuracy), jax.tree.map(share, grads)

        batch, whole = PartitionSpec("batch"), PartitionSpec()
        # check_vma off: the lifetime's carry starts as zeros made on every device alike
        # and then varies by device, which the check would have every caller mark.
        return jax.shard_map(part, mesh=self.mesh, in_specs=(whole, batch, batch),
                             out_specs=whole, check_vma=False)(params, draws, data)

    def loss_and_grad(self, params, key: jax.Array, split: str = "train"):
        """``(nll, accuracy, penalty, grads)`` of the loss on one batch drawn from ``key``,
        the lifetimes split over the devices."""
        data_key, life_key = jax.random.split(key)
        data = self._split_batch(self.task.sample(data_key, self.cfg.batch, split))
        draws = self._split_batch(plastic.lifetime_draws(self.net, life_key, self.cfg.batch))
        nll, accuracy, grads = self._batch_loss_and_grad(params, draws, data)
        penalty, penalty_grads = jax.value_and_grad(
            lambda p: evolve.l2_penalty(self.cfg, p))(params)
        return nll, accuracy, penalty, jax.tree.map(jnp.add, grads, penalty_grads)

    def update(self, state: TrainState, key: jax.Array) -> tuple[TrainState, StepMetrics]:
        """One optimiser step on the batch of ``key``; skipped if anything is not finite."""
        nll, accuracy, penalty, grads = self.loss_and_grad(state.params, key)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(nll + penalty) & jnp.isfinite(grad_norm)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new = TrainState(state.step + 1, keep(params, state.params),
                         keep(opt_state, state.opt_state))
        return new, StepMetrics(nll, accuracy, grad_norm, (~finite).astype(jnp.int32))

    def run(self, state: TrainState, run_key: jax.Array, first_step, num_steps: int):
        """``num_steps`` updates in one ``lax.scan``; update s uses ``fold_in(run_key, s)``."""
        return self._run(state, run_key, first_step, num_steps)

    @functools.partial(jax.jit, static_argnames=("self", "num_steps"))
    def _run(self, state, run_key, first_step, num_steps: int):
        steps = first_step + jnp.arange(num_steps)
        return jax.lax.scan(lambda s, i: self.update(s, jax.random.fold_in(run_key, i)),
                            state, steps)

    def score(self, params, key: jax.Array, split: str = "valid", batch: int = 512):
        """Held-out NLL and accuracy of one parameter pytree (as `Evolution.score`)."""
        return evolve.score(self.net, self.task, params, key, split, batch)


def make_meta_gradient(net, task, cfg: GradConfig, key: jax.Array, devices=None,
                       init_params=None) -> MetaGradient:
    """Check that net and task fit, and bundle them with the gradient config.

    ``init_params`` (an ``init_params``-shaped pytree) is where the descent starts; by
    default the rules' default coefficients (as `evolve.make_evolution`).
    """
    plastic.check_task(net, task)
    start = plastic.init_params(net, key) if init_params is None else init_params
    plastic.check_params(net, start)
    return MetaGradient(net, task, cfg, batch_mesh(cfg.batch, devices), start)


def descend(
    meta: MetaGradient,
    seed: int,
    steps: int,
    out_dir: str | None = None,
    log_every: int = 10,
    resume: bool = False,
    on_log: Callable[[dict], None] | None = None,
    eval_seed: int = 12345,
    time_budget_s: float | None = None,
    on_start: Callable[[int], None] | None = None,
):
    """Run ``steps`` updates, logging and checkpointing every ``log_every``.

    The run directory, records, checkpoints and resume are those of `evolve.evolve`
    (`runs.run_blocks`); a record holds the block's mean training NLL and accuracy, the
    last gradient norm, the skipped updates and the held-out figures of the parameters.
    ``time_budget_s`` stops the run early at the first logged block past that many seconds.
    ``steps=0`` runs none (the initial state, an empty history); a negative count or a
    ``log_every`` below 1 is a ValueError.

    Returns:
      ``(final_state, history)``.
    """
    checks.COUNT.check("steps", steps)
    checks.SIZE.check("log_every", log_every)
    _, run_key = jax.random.split(jax.random.key(seed))
    eval_key = jax.random.key(eval_seed)
    updates_per_lifetime = plastic.synapse_updates_per_lifetime(meta.net, meta.task.seq_len)

    def advance(state, first, count):
        t0 = time.perf_counter()
        state, metrics = meta.run(state, run_key, first, count)
        jax.block_until_ready(state)
        seconds = time.perf_counter() - t0
        finite = metrics.nonfinite == 0
        valid_nll, valid_acc = meta.score(state.params, eval_key, "valid", meta.cfg.eval_batch)
        lifetimes = count * meta.cfg.batch

        def mean(x):  # over the applied updates; None (not a made-up 0) if there were none
            return float(jnp.mean(x[finite])) if bool(jnp.any(finite)) else None

        return state, {
            "step": first + count,
            "train_nll": mean(metrics.nll),
            "train_accuracy": mean(metrics.accuracy),
            "grad_norm": evolve.finite_or_none(metrics.grad_norm[-1]),
            "nonfinite": int(jnp.sum(metrics.nonfinite)),
            "valid_nll": evolve.finite_or_none(valid_nll),
            "valid_accuracy": float(valid_acc),
            "seconds": seconds,
            "lifetimes_per_s": lifetimes / seconds,
            "synapse_updates_per_s": lifetimes * updates_per_lifetime / seconds,
        }

    return runs.run_blocks(meta.init(), steps, advance, out_dir=out_dir, log_every=log_every,
                           resume=resume, on_log=on_log, step_key="step", place=meta.place,
                           time_budget_s=time_budget_s, on_start=on_start)
