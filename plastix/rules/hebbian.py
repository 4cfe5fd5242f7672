"""Correlation-based (Hebbian) rules: Hebb, Oja, Sanger, HPCA, anti-Hebbian,
covariance and BCM."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from plastix.rules._core import Rule, as_column, make_rule, outer, register


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
      rate: step size of the running means (1 / time constant in examples).

    References:
      Sejnowski, "Storing covariance with nonlinearly interacting neurons",
      J. Math. Biol. 4 (1977).
    """

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
      rate: step size of the threshold's running average (should be faster than eta).

    References:
      Bienenstock, Cooper, Munro, J. Neurosci. 2 (1982); threshold as a running
      average of y^2: Intrator & Cooper, Neural Networks 5 (1992).
    """

    def init(w):
        return BCMState(jnp.zeros(w.shape[0], w.dtype))

    def update(coeffs, state, w, pre, post, mod):
        del w, mod
        dw = coeffs["eta"] * outer(post * (post - state.theta), pre)
        return dw, BCMState(state.theta + rate * (post**2 - state.theta))

    return make_rule("bcm", update, {"eta": 0.01}, init)
