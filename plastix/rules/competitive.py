"""Competitive rules: instar / winner-take-all, soft winner-take-all and
Krotov-Hopfield rank-based competition."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from plastix import checks
from plastix.rules._core import Rule, hyperparameter, make_rule, register

# |w|^(p - 2) w is 0 * inf = NaN at w = 0 for p < 2.
KROTOV_P = checks.number(at_least=2, why="|w|^(p-2) must be finite at w = 0")
KROTOV_K = checks.Bound(integer=True, low=2, why="the rank pushed away")


def _instar(eta, w, pre, gate):
    """``eta * g_i (x - w_i)``: gated rows move towards the input."""
    return eta * gate[:, None] * (pre[None, :] - w)


@register
def instar(winner_take_all: bool = False) -> Rule:
    """Grossberg's instar; with ``winner_take_all`` standard competitive learning.

    ``dw_i = eta * g_i * (x - w_i)``, ``g = y`` (instar) or ``g = onehot(argmax y)``
    (competitive learning: only the winner's weights move, towards the input, so each
    row ends at the centre of the inputs it wins).

    Args:
      winner_take_all: gate by the one-hot winner instead of ``post`` itself.

    References:
      Grossberg, "Adaptive pattern classification and universal recoding",
      Biol. Cybern. 23 (1976); Rumelhart & Zipser, "Feature discovery by competitive
      learning", Cognitive Science 9 (1985).
    """

    def update(coeffs, state, w, pre, post, mod):
        del mod
        if winner_take_all:
            post = jax.nn.one_hot(jnp.argmax(post), post.shape[0], dtype=w.dtype)
        return _instar(coeffs["eta"], w, pre, post), state

    return make_rule("instar", update, {"eta": 0.01})


@register
def soft_wta(inverse_temperature: float = 1.0) -> Rule:
    """Soft winner-take-all: instar gated by a softmax over the post neurons.

    ``dw_i = eta * r_i (x - w_i)``,  ``r = softmax(inverse_temperature * y)``

    Args:
      inverse_temperature: sharpness of the competition (large -> hard WTA).

    References:
      Nowlan, "Maximum likelihood competitive learning", NeurIPS 1990; as used in
      Lagani et al., Neural Networks 143 (2021).
    """
    hyperparameter("soft_wta", "inverse_temperature", inverse_temperature, checks.number())

    def update(coeffs, state, w, pre, post, mod):
        del mod
        return _instar(coeffs["eta"], w, pre, jax.nn.softmax(inverse_temperature * post)), state

    return make_rule("soft_wta", update, {"eta": 0.01})


@register
def krotov(p: float = 2.0, k: int = 2, anti: float = 0.4) -> Rule:
    """Krotov & Hopfield's biologically plausible rank-based competition.

    ``I_mu = sum_i |w_mu,i|^(p-2) w_mu,i x_i``
    ``g_mu = 1`` for the largest ``I``, ``-anti`` for the ``k``-th largest, else 0
    ``dw_mu,i = eta * g_mu * (x_i - I_mu w_mu,i)``

    Rows converge to unit Lp-norm; the winner learns the input, the ``k``-th unit is
    pushed away. The currents ``I`` are computed from ``w`` and ``pre`` as in the paper,
    so ``post`` is not read. The paper's per-minibatch division by ``max |dw|`` is left
    to the caller.

    Args:
      p: Lp-norm of the synaptic weights, >= 2 (p = 2: Euclidean).
      k: rank of the unit that is pushed away (2 <= k <= n_post).
      anti: strength ``Delta`` of the anti-Hebbian push.

    References:
      Krotov & Hopfield, "Unsupervised learning by competing hidden units",
      PNAS 116 (2019).
    """
    hyperparameter("krotov", "p", p, KROTOV_P)
    hyperparameter("krotov", "k", k, KROTOV_K)
    hyperparameter("krotov", "anti", anti, checks.number())

    def update(coeffs, state, w, pre, post, mod):
        del post, mod
        if k > w.shape[0]:
            raise ValueError(f"rule 'krotov': k={k} exceeds n_post for w {w.shape}")
        current = (jnp.abs(w) ** (p - 2) * w) @ pre
        _, ranked = jax.lax.top_k(current, k)
        g = jnp.zeros_like(current).at[ranked[0]].set(1.0).at[ranked[k - 1]].set(-anti)
        return coeffs["eta"] * g[:, None] * (pre[None, :] - current[:, None] * w), state

    return make_rule("krotov", update, {"eta": 0.01})
