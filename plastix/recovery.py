"""Recovering a plasticity rule from recorded activity and weights.

A known rule (Oja's, or the delta rule) trains a linear layer ``y = W x``; we record
the inputs, outputs, targets and weights, corrupt the record with observation noise and
keep only a fraction of the synapses and time steps. We then fit the coefficients of the
polynomial rule family (`plastix.rules.polynomial`)

    dW_ab = eta * sum_{i,j,k(,l)} theta[i,j,k(,l)] x_b^i y_a^j W_ab^k (m_a^l)

so that the family's rule, rolled from the recorded initial weights and driven by the
recorded inputs, reproduces the recorded weight trajectories; by gradient descent
through the rollout (optax) or by evolution strategies (evosax, `plastix.evolve`).

The true rules sit inside the family: Oja ``eta y (x - y W)`` is ``theta[1,1,0] = 1,
theta[0,2,1] = -1``; the delta rule ``eta (m - y) x`` is ``theta[1,0,0,1] = 1,
theta[1,1,0,0] = -1``. The model's ``eta`` is fixed (`Objective.eta`) and ``theta``
absorbs the true rate, since only the product ``eta * theta`` changes the weights; the
metrics compare coefficients after scaling each vector so that its largest ``|term|``
is 1.

References:
  Confavreux, Zenke, Agnes, Lillicrap, Vogels, "A meta-learning approach to
  (re)discover plasticity rules that carve a desired function into a neural network",
  NeurIPS 2020;
  Mehta, Tyulmankov, Rajagopalan, Turner, Fitzgerald, Funke, "Model-based inference of
  synaptic plasticity rules", NeurIPS 2024 (the MetaLearnPlasticity project);
  Oja, J. Math. Biol. 15 (1982); Widrow & Hoff, IRE WESCON (1960).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from plastix import evolve, rules
from plastix.rules.polynomial import polynomial_basis

# The true rules as terms of the polynomial family: index (i, j, k(, l)) -> theta.
TRUE_TERMS = {
    "oja": {(1, 1, 0): 1.0, (0, 2, 1): -1.0},
    "delta": {(1, 0, 0, 1): 1.0, (1, 1, 0, 0): -1.0},
}
POST_SOURCES = ("model", "recorded")
# L-BFGS stops once the loss is this fraction of the starting rule's, or the gradient
# norm this fraction of the norm where L-BFGS took over: further steps would only make
# its line search spend evaluations at rounding level.
LBFGS_FTOL, LBFGS_GTOL = 1e-8, 1e-6


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a recording is: the true rule, the layer and the input statistics.

    Attributes:
      rule: the true rule, ``"oja"`` or ``"delta"`` (`TRUE_TERMS`).
      n_pre, n_post: inputs and linear post neurons, ``y = W x``.
      steps: time steps T per recording (T + 1 weight snapshots).
      recordings: independent recordings (initial weights and inputs) in a batch.
      eta: the true rule's learning rate.
      top_variance, variance_decay: the input covariance's eigenvalues,
        ``top_variance * variance_decay^k``; a gap between the first two makes Oja's
        rows converge to the principal component within the recording.
      init_scale: initial weights ``N(0, init_scale^2 / n_pre)``.
      target_noise: delta only, the std of the noise in the target
        ``m = W* x + target_noise * xi`` (part of the world, not of the observation).
    """

    rule: str = "oja"
    n_pre: int = 10
    n_post: int = 3
    steps: int = 300
    recordings: int = 4
    eta: float = 0.02
    top_variance: float = 2.0
    variance_decay: float = 0.75
    init_scale: float = 0.5
    target_noise: float = 0.1

    def __post_init__(self):
        if self.rule not in TRUE_TERMS:
            raise ValueError(f"unknown true rule {self.rule!r}; choose one of {sorted(TRUE_TERMS)}")
        for name in ("n_pre", "n_post", "steps", "recordings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.eta > 0 or not self.top_variance > 0 or not 0 < self.variance_decay <= 1:
            raise ValueError(f"need eta > 0, top_variance > 0 and 0 < variance_decay <= 1, got "
                             f"{self.eta}, {self.top_variance}, {self.variance_decay}")
        if self.init_scale < 0 or self.target_noise < 0:
            raise ValueError(f"init_scale and target_noise must be >= 0, got "
                             f"{self.init_scale}, {self.target_noise}")


class World(NamedTuple):
    """What every recording of one setup shares: the input mixing and the teacher."""

    input_factor: jax.Array  # (n_pre, n_pre) L, x = L z, so E[x x^T] = L L^T
    teacher: jax.Array       # (n_post, n_pre) W*, the delta rule's target map


class Recording(NamedTuple):
    """A batch of recordings, noiseless and complete. Leading axis: recording."""

    pre: jax.Array          # (B, T, n_pre) x_t
    post: jax.Array         # (B, T, n_post) y_t = W_t x_t
    mod: jax.Array | None   # (B, T, n_post) m_t (delta) or None (Oja)
    weights: jax.Array      # (B, T + 1, n_post, n_pre) W_0 .. W_T


class Observation(NamedTuple):
    """What the experimenter sees of a `Recording`.

    The initial snapshot ``weights[:, 0]`` is seen in full (with noise): the model starts
    from it. After it, only entries where ``synapse_mask & time_mask`` are seen; every
    other entry of ``weights`` is NaN, so using one by mistake shows.
    """

    pre: jax.Array
    post: jax.Array
    mod: jax.Array | None
    weights: jax.Array       # (B, T + 1, n_post, n_pre), NaN where not observed
    synapse_mask: jax.Array  # (B, n_post, n_pre) bool, the synapses followed over time
    time_mask: jax.Array     # (B, T) bool, which of the snapshots 1..T were taken


def _normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``jax.random.normal(key, shape)``, the same numbers, drawn flat and reshaped: XLA on
    CPU compiles a draw of three or more axes some ten times slower than a flat one."""
    return jax.random.normal(key, (int(np.prod(shape)),)).reshape(shape)


def true_rule(setup: Setup) -> tuple[rules.Rule, dict[str, jax.Array]]:
    """The registry's rule that generates the data, with its coefficients."""
    rule = rules.get(setup.rule)
    return rule, {"eta": jnp.asarray(setup.eta, jnp.float32)}


@functools.partial(jax.jit, static_argnames="setup")
def make_world(key: jax.Array, setup: Setup) -> World:
    """Correlated inputs ``x = L z``, ``E[x x^T] = U diag(lambda) U^T`` with a random
    orthogonal ``U`` and ``lambda_k = top_variance * variance_decay^k``; and a teacher
    ``W* ~ N(0, 1 / n_pre)``."""
    basis_key, teacher_key = jax.random.split(key)
    u, _ = jnp.linalg.qr(_normal(basis_key, (setup.n_pre, setup.n_pre)))
    spectrum = setup.top_variance * setup.variance_decay ** jnp.arange(setup.n_pre)
    teacher = _normal(teacher_key, (setup.n_post, setup.n_pre)) / np.sqrt(setup.n_pre)
    return World(u * jnp.sqrt(spectrum), teacher)


def roll(rule: rules.Rule, coeffs, w0: jax.Array, pre: jax.Array, mod: jax.Array | None = None,
         post: jax.Array | None = None, bound: float | None = None) -> tuple[jax.Array, jax.Array]:
    """One lifetime of a linear layer under ``rule``:

        y_t = W_t x_t (or the given ``post[t]``),   W_{t+1} = W_t + dW(W_t, x_t, y_t, m_t)

    clipped to ``[-bound, bound]`` if ``bound`` is given.

    Args:
      rule, coeffs: any `plastix.rules` rule and its coefficients.
      w0: ``(n_post, n_pre)`` initial weights.
      pre: ``(T, n_pre)`` inputs; mod: ``(T, n_post)`` targets or None.
      post: ``(T, n_post)`` recorded outputs to use instead of ``W_t x_t``; None: the
        layer's own.
      bound: a clip on every weight; None (the data) for none.

    Returns:
      ``(weights (T + 1, n_post, n_pre) from W_0, post (T, n_post))``.
    """

    def step(carry, inputs):
        w, state = carry
        x, m, y = inputs
        y = w @ x if y is None else y
        dw, state = rule.update(coeffs, state, w, x, y, m)
        w = w + dw if bound is None else jnp.clip(w + dw, -bound, bound)
        return (w, state), (w, y)

    _, (weights, ys) = jax.lax.scan(step, (w0, rule.init(w0)), (pre, mod, post))
    return jnp.concatenate([w0[None], weights]), ys


@functools.partial(jax.jit, static_argnames="setup")
def record(key: jax.Array, setup: Setup, world: World) -> Recording:
    """``setup.recordings`` lifetimes of the true rule from random initial weights
    ``W_0 ~ N(0, init_scale^2 / n_pre)``, inputs ``x_t = L z_t``, and for the delta rule
    targets ``m_t = W* x_t + target_noise * xi_t``."""
    b, t, n_post, n_pre = setup.recordings, setup.steps, setup.n_post, setup.n_pre
    w_key, x_key, m_key = jax.random.split(key, 3)
    w0 = setup.init_scale / np.sqrt(n_pre) * _normal(w_key, (b, n_post, n_pre))
    pre = _normal(x_key, (b, t, n_pre)) @ world.input_factor.T
    mod = None
    if rules.get(setup.rule).reads_target:
        mod = (pre @ world.teacher.T
               + setup.target_noise * _normal(m_key, (b, t, n_post)))
    rule, coeffs = true_rule(setup)
    weights, post = jax.vmap(lambda w, x, m: roll(rule, coeffs, w, x, m))(w0, pre, mod)
    return Recording(pre, post, mod, weights)


def _check_fraction(name: str, value: float) -> None:
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value}")


def _random_subset_mask(key: jax.Array, batch: int, size: int, count: int) -> jax.Array:
    """``(batch, size)`` bool, each row with ``count`` True at random places: where a
    random permutation of ``0..size-1`` holds one of ``0..count-1``."""
    uniform = jax.random.uniform(key, (batch * size,)).reshape(batch, size)
    return jnp.argsort(uniform, axis=1) < count


def observe(key: jax.Array, recording: Recording, weight_noise: float = 0.0,
            activity_noise: float = 0.0, synapse_fraction: float = 1.0,
            time_fraction: float = 1.0) -> Observation:
    """Corrupt and subsample a recording.

    ``W_obs = W + weight_noise * std(W) * xi``, likewise every recorded activity
    (``x``, ``y``, ``m``) with ``activity_noise`` times its own std (std over the whole
    batch). A random ``max(1, round(synapse_fraction * n_post * n_pre))`` of each
    recording's synapses are followed over time, and a random
    ``max(1, round(time_fraction * T))`` of its snapshots 1..T are taken: exact counts, so
    a fraction means the same in every recording. The initial snapshot is always taken in
    full.

    Raises:
      ValueError: for a negative noise or a fraction outside (0, 1].
    """
    if weight_noise < 0 or activity_noise < 0:
        raise ValueError(f"noise levels must be >= 0, got weight_noise={weight_noise}, "
                         f"activity_noise={activity_noise}")
    _check_fraction("synapse_fraction", synapse_fraction)
    _check_fraction("time_fraction", time_fraction)
    _, t1, n_post, n_pre = recording.weights.shape
    count = lambda fraction, size: max(1, int(round(fraction * size)))
    return _observe(key, recording, weight_noise, activity_noise,
                    count(synapse_fraction, n_post * n_pre), count(time_fraction, t1 - 1))


@functools.partial(jax.jit, static_argnames=("synapse_count", "time_count"))
def _observe(key, recording: Recording, weight_noise, activity_noise, synapse_count: int,
             time_count: int) -> Observation:
    b, t1, n_post, n_pre = recording.weights.shape
    keys = jax.random.split(key, 6)

    def noisy(k, a, level):
        return None if a is None else a + level * jnp.std(a) * _normal(k, a.shape)

    synapse_mask = _random_subset_mask(keys[0], b, n_post * n_pre, synapse_count)
    synapse_mask = synapse_mask.reshape(b, n_post, n_pre)
    time_mask = _random_subset_mask(keys[1], b, t1 - 1, time_count)
    seen = jnp.concatenate([jnp.ones((b, 1, n_post, n_pre), bool),
                            synapse_mask[:, None] & time_mask[:, :, None, None]], axis=1)
    weights = jnp.where(seen, noisy(keys[2], recording.weights, weight_noise), jnp.nan)
    return Observation(noisy(keys[3], recording.pre, activity_noise),
                       noisy(keys[4], recording.post, activity_noise),
                       noisy(keys[5], recording.mod, activity_noise),
                       weights, synapse_mask, time_mask)


def loss_mask(observation: Observation) -> jax.Array:
    """``(B, T, n_post, n_pre)`` bool: the observed entries of snapshots 1..T."""
    return observation.synapse_mask[:, None] & observation.time_mask[:, :, None, None]


def masked_mse(predicted: jax.Array, observation: Observation) -> jax.Array:
    """``mean over observed (recording, t >= 1, synapse) of (W_pred - W_obs)^2``.

    Unobserved entries of ``observation.weights`` are NaN; they are replaced before the
    difference so that neither the loss nor its gradient reads them.
    """
    mask = loss_mask(observation)
    target = jnp.where(mask, observation.weights[:, 1:], 0.0)
    error = jnp.where(mask, predicted[:, 1:] - target, 0.0)
    return jnp.sum(error**2) / jnp.maximum(jnp.sum(mask), 1)


@dataclasses.dataclass(frozen=True)
class Objective:
    """The model fitted to an `Observation`: a polynomial-family rule with fixed ``eta``.

    Attributes:
      family: the registry name of the fitted rule (``"polynomial"``, ``"multilinear"``,
        ``"polynomial_mod"``, ``"multilinear_mod"``).
      eta: the model's fixed learning rate; theta carries the scale of the true rate.
      post: where the model's ``y`` comes from. ``"recorded"`` (default): the recorded
        ``y``, as in the data, so each synapse evolves from its own pre, post and weight
        alone: unobserved synapses play no part, and an error in one initial weight
        stays in that synapse and fades as the rule forgets it. The price: output noise
        enters the rule. ``"model"``: ``y = W_model x`` from the model's own weights, a
        closed loop; output noise never enters, but every initial weight must be known,
        and the noise in them is fed back through ``y`` to every synapse of the neuron
        (Oja's rows may then settle on the opposite sign of the principal component
        than in the data), so that on noisy data the true rule is far from the best fit.
        Held-out figures always run the fitted rule in the closed loop (`closed_loop`).
      bound: the model's weights are clipped to ``[-bound, bound]``: far outside the
        recorded weights, so the true rule never meets it, but a candidate rule whose
        weights run away (a positive ``w^2`` term) keeps a finite loss and gradient.
    """

    family: str = "polynomial"
    eta: float = 0.01
    post: str = "recorded"
    bound: float = 10.0

    def __post_init__(self):
        rule = rules.get(self.family)  # raises for an unknown name
        if "theta" not in rule.default_coeffs:
            raise ValueError(f"family {self.family!r} is not a polynomial-family rule")
        if self.post not in POST_SOURCES:
            raise ValueError(f"post must be one of {POST_SOURCES}, got {self.post!r}")
        if not self.eta > 0 or not self.bound > 0:
            raise ValueError(f"eta and bound must be > 0, got {self.eta}, {self.bound}")

    @property
    def rule(self) -> rules.Rule:
        return rules.get(self.family)

    @property
    def term_shape(self) -> tuple[int, ...]:
        return self.rule.default_coeffs["theta"].shape

    @property
    def n_terms(self) -> int:
        return int(np.prod(self.term_shape))

    def coeffs(self, theta: jax.Array) -> dict[str, jax.Array]:
        """The rule's coefficients for a flat ``theta`` (C order over ``(i, j, k(, l))``)."""
        return {"theta": jnp.reshape(theta, self.term_shape),
                "eta": jnp.asarray(self.eta, jnp.float32)}

    def check(self, theta, observation: Observation) -> None:
        """Raises ValueError unless ``theta`` is ``(n_terms,)`` and the observation has a
        target ``m`` exactly when the family reads one (shapes are static: free in jit)."""
        if jnp.shape(theta) != (self.n_terms,):
            raise ValueError(f"theta must have shape ({self.n_terms},) for family "
                             f"{self.family!r}, got {jnp.shape(theta)}")
        reads_mod = self.rule.reads_target
        if reads_mod != (observation.mod is not None):
            raise ValueError(
                f"family {self.family!r} reads a target m, but the observation has none"
                if reads_mod else
                f"the observation has a target m that family {self.family!r} cannot read; "
                f"fit a *_mod family")

    def predict(self, theta: jax.Array, observation: Observation) -> jax.Array:
        """``(B, T + 1, n_post, n_pre)``: the family's rule rolled from each observed
        ``W_0`` on the observed inputs (and targets, and outputs if ``post="recorded"``)."""
        self.check(theta, observation)
        coeffs = self.coeffs(theta)
        post = observation.post if self.post == "recorded" else None
        lifetime = lambda w0, x, m, y: roll(self.rule, coeffs, w0, x, m, y, self.bound)[0]
        return jax.vmap(lifetime)(observation.weights[:, 0], observation.pre,
                                  observation.mod, post)

    def loss(self, theta: jax.Array, observation: Observation) -> jax.Array:
        """`masked_mse` of the prediction: what both fits minimise."""
        return masked_mse(self.predict(theta, observation), observation)


@functools.partial(jax.jit, static_argnames="objective")
def loss(objective: Objective, theta: jax.Array, observation: Observation) -> jax.Array:
    """``objective.loss(theta, observation)``, compiled once per objective and shape."""
    return objective.loss(theta, observation)


def true_theta(setup: Setup, objective: Objective) -> np.ndarray:
    """The true rule as a flat theta of ``objective``'s family: `TRUE_TERMS` times
    ``setup.eta / objective.eta`` (so that ``eta * theta`` equals the true update).

    Raises:
      ValueError: if the family lacks a term of the true rule (Oja needs degree 2; the
        delta rule needs ``mod``).
    """
    theta = np.zeros(objective.term_shape, np.float32)
    for index, value in TRUE_TERMS[setup.rule].items():
        if len(index) != theta.ndim or any(i >= n for i, n in zip(index, theta.shape)):
            raise ValueError(f"family {objective.family!r} (terms {theta.shape}) cannot "
                             f"express {setup.rule!r}: it lacks term {index}")
        theta[index] = value * setup.eta / objective.eta
    return theta.ravel()


# --- fitting ----------------------------------------------------------------------------


class FitResult(NamedTuple):
    theta: jax.Array    # (n_terms,) the fitted coefficients
    losses: jax.Array   # per step: the loss before the step (gradient), of the mean (ES)


@functools.partial(jax.jit, static_argnames="objective")
def term_scales(objective: Objective, observation: Observation) -> jax.Array:
    """``(n_terms,)``: the root mean square of each term ``x^i y^j w^k (m^l)`` over the
    observed weights and the recorded activity.

    The fits search ``u = theta * scale`` rather than ``theta``: a unit step in any
    ``u_n`` then changes the update by about as much, whereas in ``theta`` a term built on
    small factors (``w^2`` with ``|w| < 1``) needs a far larger coefficient to matter than
    one built on large factors. An isotropic search (ES) and Adam's per-coordinate steps
    both assume comparable coordinates.
    """
    shape = objective.term_shape
    degree, use_mod = shape[0] - 1, len(shape) == 4
    # Weights before each step t = 0..T-1: all at t = 0, then the observed entries.
    seen = jnp.concatenate([jnp.ones_like(observation.synapse_mask)[:, None],
                            loss_mask(observation)[:, :-1]], axis=1)
    w = jnp.where(seen, observation.weights[:, :-1], 0.0)

    def terms(w, x, y, m):
        basis = polynomial_basis(w, x, y, m if use_mod else None, degree)
        return basis.reshape((-1,) + w.shape)

    squares = jax.vmap(jax.vmap(terms))(w, observation.pre, observation.post,
                                        observation.mod) ** 2
    mean_square = jnp.sum(jnp.where(seen[:, :, None], squares, 0.0), axis=(0, 1, 3, 4))
    return jnp.sqrt(jnp.maximum(mean_square / jnp.sum(seen), 1e-12))


def _search_loss(objective: Objective, observation: Observation, precondition: bool):
    """``(loss of u, theta of u, u of theta)`` for the search coordinates ``u``:
    ``theta * term_scales`` if ``precondition``, else ``theta`` itself."""
    scale = term_scales(objective, observation) if precondition else 1.0
    return (lambda u: objective.loss(u / scale, observation),
            lambda u: u / scale, lambda theta: theta * scale)


@functools.partial(jax.jit, static_argnames=("objective", "adam_steps", "lr", "clip",
                                             "lbfgs_steps", "precondition"))
def fit_gradient(objective: Objective, observation: Observation, theta0: jax.Array,
                 adam_steps: int = 300, lr: float = 0.05, clip: float = 1.0,
                 lbfgs_steps: int = 150, precondition: bool = True) -> FitResult:
    """Minimise ``objective.loss`` by gradients through the whole rollout
    (backpropagation through time): Adam, then L-BFGS.

    Adam (gradients clipped to global norm ``clip``, step size decayed by a cosine from
    ``lr`` to ``lr / 100``) makes the robust start from ``theta0``, where a candidate
    rule can blow up; a non-finite loss or gradient skips the step
    (``optax.apply_if_finite``). L-BFGS (optax's, with its zoom line search; unclipped,
    as clipping would corrupt its curvature pairs) then finishes: near the optimum the
    loss is a narrow, nearly quadratic valley whose directions (terms that move the
    weights alike) Adam's per-coordinate steps resolve slowly. L-BFGS stops early once
    converged (`LBFGS_FTOL`, `LBFGS_GTOL`).

    Returns the fitted theta and the loss before every step (Adam's, then L-BFGS's).
    """
    if adam_steps < 0 or lbfgs_steps < 0 or adam_steps + lbfgs_steps == 0:
        raise ValueError(f"need adam_steps, lbfgs_steps >= 0, not both 0; got "
                         f"{adam_steps}, {lbfgs_steps}")
    if not lr > 0 or not clip > 0:
        raise ValueError(f"lr and clip must be > 0, got {lr}, {clip}")
    objective.check(theta0, observation)
    search_loss, to_theta, to_search = _search_loss(objective, observation, precondition)
    schedule = optax.cosine_decay_schedule(lr, max(adam_steps, 1), alpha=0.01)
    adam = optax.apply_if_finite(
        optax.chain(optax.clip_by_global_norm(clip), optax.adam(schedule)),
        max_consecutive_errors=max(adam_steps, 1))
    adam_value_and_grad = jax.value_and_grad(search_loss)

    def adam_step(carry, _):
        u, state = carry
        value, grad = adam_value_and_grad(u)
        updates, state = adam.update(grad, state, u)
        return (optax.apply_updates(u, updates), state), value

    u0 = to_search(theta0)
    (u, _), adam_losses = jax.lax.scan(adam_step, (u0, adam.init(u0)), length=adam_steps)

    lbfgs = optax.lbfgs()
    lbfgs_value_and_grad = optax.value_and_grad_from_state(search_loss)  # the line search's
    ftol = LBFGS_FTOL * search_loss(u0)
    gtol = LBFGS_GTOL * optax.tree.norm(adam_value_and_grad(u)[1])

    def lbfgs_step(carry, _):
        u, state = carry
        value, grad = lbfgs_value_and_grad(u, state=state)

        def advance(u, state):
            updates, state = lbfgs.update(grad, state, u, value=value, grad=grad,
                                          value_fn=search_loss)
            return optax.apply_updates(u, updates), state

        done = (value <= ftol) | (optax.tree.norm(grad) <= gtol)
        return jax.lax.cond(done, lambda u, s: (u, s), advance, u, state), value

    (u, _), lbfgs_losses = jax.lax.scan(lbfgs_step, (u, lbfgs.init(u)), length=lbfgs_steps)
    return FitResult(to_theta(u), jnp.concatenate([adam_losses, lbfgs_losses]))


@functools.partial(jax.jit, static_argnames=("objective", "cfg", "generations",
                                             "precondition"))
def fit_es(key: jax.Array, objective: Objective, observation: Observation, theta0: jax.Array,
           cfg: evolve.ESConfig, generations: int = 250,
           precondition: bool = True) -> FitResult:
    """Minimise ``objective.loss`` with an evosax strategy (`evolve.make_strategy`).

    Every generation asks ``cfg.population`` coefficient vectors (in the coordinates of
    `term_scales` if ``precondition``), scores each on the whole observation (the loss is
    the fitness, minimised), ranks a blown-up member last (`evolve.contain_nonfinite`)
    and tells. ``cfg.batch`` is unused: every member sees every recording, so fitness
    differences come from the coefficients alone.

    Returns the search mean and its loss after every generation.
    """
    if generations < 1:
        raise ValueError(f"generations must be >= 1, got {generations}")
    objective.check(theta0, observation)
    search_loss, to_theta, to_search = _search_loss(objective, observation, precondition)
    u0 = to_search(theta0)
    strategy, es_params = evolve.make_strategy(cfg, u0)
    init_key, run_key = jax.random.split(key)
    population_loss = jax.vmap(search_loss)

    def generation(state, g):
        ask_key, tell_key = jax.random.split(jax.random.fold_in(run_key, g))
        population, state = strategy.ask(ask_key, state, es_params)
        fitness, _ = evolve.contain_nonfinite(population_loss(population))
        state, _ = strategy.tell(tell_key, population, fitness, state, es_params)
        return state, search_loss(strategy.get_mean(state))

    state = strategy.init(init_key, u0, es_params)
    state, losses = jax.lax.scan(generation, state, jnp.arange(generations))
    return FitResult(to_theta(strategy.get_mean(state)), losses)


# --- metrics ----------------------------------------------------------------------------


def scaled(theta) -> np.ndarray:
    """``theta / max |theta|``: the rule up to its (unidentified) overall rate."""
    theta = np.asarray(theta, np.float64)
    top = np.max(np.abs(theta))
    return theta / top if top > 0 else theta


def max_term_error(theta, truth) -> float:
    """``max_n |scaled(theta)_n - scaled(truth)_n|`` over every term."""
    return float(np.max(np.abs(scaled(theta) - scaled(truth))))


def trajectory_r2(predicted, true) -> float:
    """``1 - sum (W_pred - W)^2 / sum (W - mean_t W)^2`` over recordings, time and
    synapses, the mean taken over time per synapse: the fraction of each synapse's
    change over the recording that the prediction explains (the shared initial weights
    earn nothing)."""
    predicted, true = np.asarray(predicted, np.float64), np.asarray(true, np.float64)
    residual = np.sum((predicted - true) ** 2)
    spread = np.sum((true - true.mean(axis=1, keepdims=True)) ** 2)
    return float(1.0 - residual / spread)


@functools.partial(jax.jit, static_argnames="objective")
def closed_loop(objective: Objective, theta: jax.Array, recording: Recording) -> jax.Array:
    """The fitted rule running by itself (``y = W x``) from a recording's true ``W_0``
    on its noiseless inputs (and targets): ``(B, T + 1, n_post, n_pre)``."""
    # A Recording has every field `predict` reads; its own post is never used.
    return dataclasses.replace(objective, post="model").predict(theta, recording)


def heldout_r2(objective: Objective, theta, recording: Recording) -> float:
    """`trajectory_r2` of `closed_loop` against the true noiseless weights of recordings
    the fit never saw."""
    return trajectory_r2(closed_loop(objective, jnp.asarray(theta), recording),
                         recording.weights)


def term_names(objective: Objective) -> list[str]:
    """``"x^i y^j w^k (m^l)"`` for each flat term, C order, ``x^0`` etc. left out."""
    names = []
    for index in np.ndindex(*objective.term_shape):
        parts = [f"{v}^{p}" if p > 1 else v
                 for v, p in zip("xywm", index) if p > 0]
        names.append(" ".join(parts) if parts else "1")
    return names


def describe(theta, objective: Objective, top: int | None = None) -> dict[str, float]:
    """``{term name: scaled coefficient}``, largest ``|value|`` first (``top`` of them)."""
    values = scaled(theta)
    order = np.argsort(-np.abs(values), kind="stable")[:top]
    names = term_names(objective)
    return {names[i]: float(values[i]) for i in order}


def summary(setup: Setup, objective: Objective, theta, heldout: Recording) -> dict[str, Any]:
    """The figures of one fit: max scaled term error and held-out trajectory R^2."""
    truth = true_theta(setup, objective)
    return {"max_term_error": max_term_error(theta, truth),
            "heldout_r2": heldout_r2(objective, theta, heldout)}
