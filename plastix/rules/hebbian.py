"""Correlation-based (Hebbian) rules: Hebb, Oja, Sanger, HPCA, anti-Hebbian,
covariance, BCM and the Bayesian-Hebbian BCPNN."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from plastix import checks
from plastix.rules._core import (
    Rule,
    as_column,
    hyperparameter,
    make_rule,
    outer,
    register,
)


@register
def hebb() -> Rule:
    """Plain Hebbian learning with optional passive weight decay.

    ``dw = eta * (post pre^T - decay * w)``

    Coefficients ``eta`` (default 0.01) and ``decay`` (default 0: pure Hebb).

    References:
      Hebb, *The Organization of Behavior* (1949); decay term as in
      Dayan & Abbott, *Theoretical Neuroscience* (2001), ch. 8.
    """

    def update(coeffs, state, w, pre, post, mod):
        del mod
        return coeffs["eta"] * (outer(post, pre) - coeffs["decay"] * w), state

    return make_rule("hebb", update, {"eta": 0.01, "decay": 0.0})


@register
def oja() -> Rule:
    """Oja's normalised Hebbian rule, applied to each post neuron (row) independently.

    ``dw_ij = eta * y_i * (x_j - y_i * w_ij)``

    With linear ``y = w x`` each row converges to the unit-norm principal eigenvector of
    ``E[x x^T]``.

    References:
      Oja, "Simplified neuron model as a principal component analyzer",
      J. Math. Biol. 15 (1982).
    """

    def update(coeffs, state, w, pre, post, mod):
        del mod
        return coeffs["eta"] * (outer(post, pre) - as_column(post**2) * w), state

    return make_rule("oja", update, {"eta": 0.01})


def _generalized_hebbian(eta, w, pre, y):
    """``eta * (y x^T - LT[y y^T] w)``, LT = lower triangle including the diagonal: row i
    is Oja's rule on the input left after removing what rows ``k < i`` explain."""
    return eta * (outer(y, pre) - jnp.tril(outer(y, y)) @ w)


@register
def sanger() -> Rule:
    """Sanger's Generalized Hebbian Algorithm (GHA).

    ``dw = eta * (y x^T - LT[y y^T] w)``, LT = lower triangle including the diagonal.

    With linear ``y = w x`` row ``i`` converges to the ``i``-th eigenvector of ``E[x x^T]``
    (rows orthonormal).

    References:
      Sanger, "Optimal unsupervised learning in a single-layer linear feedforward
      neural network", Neural Networks 2 (1989).
    """

    def update(coeffs, state, w, pre, post, mod):
        del mod
        return _generalized_hebbian(coeffs["eta"], w, pre, post), state

    return make_rule("sanger", update, {"eta": 0.01})


@register
def hpca() -> Rule:
    """Nonlinear Hebbian PCA (HPCA): the GHA update driven by nonlinear outputs.

    ``dw_i = eta * y_i * (x - sum_{k <= i} y_k w_k)``  with  ``y = f(w x)``

    The equation is Sanger's; what makes it HPCA is that ``post`` is the unit's
    *nonlinear* response ``f(w pre)`` (the caller's activation, e.g. ReLU), which makes
    the rows learn nonlinear principal components instead of eigenvectors.

    References:
      Lagani, Amato, Falchi, Gennaro, "Hebbian semi-supervised learning in a sample
      efficiency setting", Neural Networks 143 (2021); Karhunen & Joutsensalo,
      "Generalizations of principal component analysis ...", Neural Networks 8 (1995).
    """

    def update(coeffs, state, w, pre, post, mod):
        del mod
        return _generalized_hebbian(coeffs["eta"], w, pre, post), state

    return make_rule("hpca", update, {"eta": 0.01})


@register
def anti_hebb() -> Rule:
    """Anti-Hebbian decorrelation, typically on lateral weights (``pre`` = ``post`` = y).

    ``dw = -eta * (post pre^T - target)``

    Co-active units inhibit each other more until their co-activity falls to
    ``target`` (Foldiak's ``p^2``; 0 gives pure decorrelation).

    References:
      Foldiak, "Forming sparse representations by local anti-Hebbian learning",
      Biol. Cybern. 64 (1990).
    """

    def update(coeffs, state, w, pre, post, mod):
        del w, mod
        return -coeffs["eta"] * (outer(post, pre) - coeffs["target"]), state

    return make_rule("anti_hebb", update, {"eta": 0.01, "target": 0.0})


class CovarianceState(NamedTuple):
    """Running means of pre- and post-synaptic activity."""
    pre_mean: jnp.ndarray   # (n_pre,)
    post_mean: jnp.ndarray  # (n_post,)


@register
def covariance(rate: float = 0.01) -> Rule:
    """Covariance rule: Hebbian learning on deviations from running means.

    ``dw = eta * (y - <y>) (x - <x>)^T``;  ``<v> <- <v> + rate * (v - <v>)``

    The update uses the means from *before* this example, so for independent pre and
    post the expected change is zero.

    Args:
      rate: step size of the running means (1 / time constant in examples), in ``[0, 1]``.

    References:
      Sejnowski, "Storing covariance with nonlinearly interacting neurons",
      J. Math. Biol. 4 (1977).
    """
    hyperparameter("covariance", "rate", rate, checks.FRACTION)

    def init(w):
        n_post, n_pre = w.shape
        return CovarianceState(jnp.zeros(n_pre, w.dtype), jnp.zeros(n_post, w.dtype))

    def update(coeffs, state, w, pre, post, mod):
        del w, mod
        dw = coeffs["eta"] * outer(post - state.post_mean, pre - state.pre_mean)
        new_state = CovarianceState(state.pre_mean + rate * (pre - state.pre_mean),
                                    state.post_mean + rate * (post - state.post_mean))
        return dw, new_state

    return make_rule("covariance", update, {"eta": 0.01}, init)


class BCMState(NamedTuple):
    """Sliding modification threshold, one per post neuron."""
    theta: jnp.ndarray  # (n_post,)


@register
def bcm(rate: float = 0.1) -> Rule:
    """BCM rule with a sliding threshold that tracks the mean squared response.

    ``dw = eta * y (y - theta) x^T``;  ``theta <- theta + rate * (y^2 - theta)``

    Responses above ``theta`` potentiate, below depress; because ``theta`` grows faster
    than linearly with activity the neuron ends selective to a subset of its inputs.

    Args:
      rate: step size of the threshold's running average (should be faster than eta), in
        ``[0, 1]``.

    References:
      Bienenstock, Cooper, Munro, J. Neurosci. 2 (1982); threshold as a running
      average of y^2: Intrator & Cooper, Neural Networks 5 (1992).
    """
    hyperparameter("bcm", "rate", rate, checks.FRACTION)

    def init(w):
        return BCMState(jnp.zeros(w.shape[0], w.dtype))

    def update(coeffs, state, w, pre, post, mod):
        del w, mod
        dw = coeffs["eta"] * outer(post * (post - state.theta), pre)
        return dw, BCMState(state.theta + rate * (post**2 - state.theta))

    return make_rule("bcm", update, {"eta": 0.01}, init)


class BCPNNState(NamedTuple):
    """The marginal counts of `bcpnn` (the co-occurrence counts are ``w`` itself)."""
    pre_count: jnp.ndarray   # (n_pre,): c_i, summed presynaptic activity
    post_count: jnp.ndarray  # (n_post,): c_j, summed postsynaptic activity
    steps: jnp.ndarray       # (): n, the steps counted
    activity: jnp.ndarray    # (): the presynaptic activity summed over units and steps


def bcpnn_weights(counts, pre_count, post_count, steps, activity, gain: float,
                  bias: float):
    """`bcpnn`'s weights from its counts: ``(n_post, n_pre)`` for ``counts`` of that shape
    (or any subset of its columns with the matching ``pre_count``)."""
    n_post = counts.shape[0]
    p_post = (post_count + 1.0) / (steps + n_post)
    p_cond = (counts + p_post[:, None]) / (pre_count[None, :] + 1.0)
    mean_activity = jnp.where(steps > 0, activity / jnp.maximum(steps, 1e-30), 1.0)
    log_post = jnp.log(p_post)[:, None]
    return (gain * (jnp.log(p_cond) - log_post) + bias * log_post) / mean_activity


@register
def bcpnn(gain: float = 1.0, bias: float = 1.0) -> Rule:
    """Bayesian confidence propagation (BCPNN): weights are the log odds that Hebbian
    co-occurrence counts give, ``log p(i, j) / (p(i) p(j))``.

    Counts, at rate ``eta`` (``w`` holds ``c_ij``; start it at zero):

    ``c_ij += eta y_j x_i``,  ``c_i += eta x_i``,  ``c_j += eta y_j``,  ``n += eta``,
    ``a += eta sum_i x_i``

    Estimates (``V = n_post``; the priors are one pseudo-count, so ``1 / eta`` is the
    prior's weight against the data):

    ``p_j = (c_j + 1) / (n + V)``,  ``p_j|i = (c_ij + p_j) / (c_i + 1)``

    Weights that a forward pass uses (``effective_weights``):

    ``w_ij = (gain * log(p_j|i / p_j) + bias * log p_j) / m``,  ``m = a / n``

    ``log(p_j|i / p_j) = log p_ij / (p_i p_j)`` is BCPNN's weight and ``log p_j`` its bias
    (Lansner & Ekeberg 1989), which is spread over the presynaptic units: ``m`` is their
    mean summed activity, so for a code of constant activity (``kwta(k)``: ``m = k``) the
    support ``sum_i w_ij x_i`` is exactly ``bias * log p_j + gain * mean_i log(p_j|i /
    p_j)`` over the active units. ``gain = m`` is BCPNN's naive-Bayes sum of evidence;
    ``gain = 1`` pools the active units' conditionals geometrically (a product of
    experts). As the readout of a sparse code, a unit never active has ``p_j|i = p_j``
    and so no vote, and one active with a single context is an add-``p_j`` estimate of
    that context's next symbol: a count-based learner. The priors shrink each unit's
    estimate towards ``p_j`` (a Dirichlet prior at the post marginal) instead of
    BCPNN's floor ``epsilon`` (Sandberg et al. 2002), under which an unused unit votes.

    The rule is Hebbian: as a readout it reads the teacher as post. A per-post or
    per-synapse ``eta`` scales the co-occurrence counts; the marginals count at its mean.

    Args:
      gain: the weight of the units' evidence (BCPNN's weight gain).
      bias: the weight of the prior ``log p_j`` (BCPNN's bias gain).

    References:
      Lansner & Ekeberg, "A one-layer feedback artificial neural network with a Bayesian
      learning rule", Int. J. Neural Systems 1 (1989); Sandberg, Lansner, Petersson &
      Ekeberg, "A Bayesian attractor network with incremental learning", Network:
      Comput. Neural Syst. 13 (2002); gains as in Tully, Hennig & Lansner, Front.
      Synaptic Neurosci. 6 (2014).
    """
    hyperparameter("bcpnn", "gain", gain, checks.number())
    hyperparameter("bcpnn", "bias", bias, checks.number())

    def init(w):
        n_post, n_pre = w.shape
        zero = jnp.zeros((), w.dtype)
        return BCPNNState(jnp.zeros(n_pre, w.dtype), jnp.zeros(n_post, w.dtype), zero, zero)

    def update(coeffs, state, w, pre, post, mod):
        del w, mod
        eta = coeffs["eta"]
        rate = jnp.mean(eta)
        return eta * outer(post, pre), BCPNNState(
            state.pre_count + rate * pre, state.post_count + rate * post,
            state.steps + rate, state.activity + rate * jnp.sum(pre))

    def effective_weights(w, state):
        return bcpnn_weights(w, *state, gain=gain, bias=bias)

    return make_rule("bcpnn", update, {"eta": 1.0}, init, effective_weights=effective_weights)
