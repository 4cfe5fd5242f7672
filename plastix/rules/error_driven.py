"""Error-driven local rules: delta/LMS, recursive least squares (FORCE), contrastive
Hebbian learning, GeneRec and the Err x Credit trace rule.

Phases. CHL and GeneRec compare a *minus* phase (the network's own answer) with a
*plus* phase (outputs clamped to the target). ``pre`` and ``post`` are always the
minus phase; ``mod`` carries the plus phase: for GeneRec the plus-phase post
activity ``(n_post,)``; for CHL either that (when the sending layer is the same in both
phases, e.g. a clamped input) or a `PlusPhase` ``(pre, post)`` pair.

Every rule here is error-driven (`Rule.reads_target`): ``post`` must be the layer's own
answer, never a clamped target, and ``mod``, where read, carries the target.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from plastix import checks
from plastix.rules._core import (
    Rule,
    hyperparameter,
    make_rule,
    outer,
    register,
    require_mod,
)

# rls divides by alpha once (P(0) = I / alpha) and by forget every step: each must be a
# number whose inverse float32 holds (a float32 above 0 is at least 1.2e-38, so its inverse
# is at most 8.5e37).
RLS_ALPHA = checks.number(above=0, why="the prior covariance P(0) = I / alpha must be "
                                      "finite in float32")
RLS_FORGET = checks.number(above=0, at_most=1, why="P is divided by forget every step")
# A running average's step: 1 replaces the average by the newest value.
AVERAGE_RATE = checks.FRACTION


@register
def delta() -> Rule:
    """Delta rule / LMS: move the output towards the target carried in ``mod``.

    ``dw = eta * (m - y) x^T``

    References:
      Widrow & Hoff, "Adaptive switching circuits", IRE WESCON Convention Record (1960).
    """

    def update(coeffs, state, w, pre, post, mod):
        del w
        target = require_mod("delta", mod, "the target for post")
        return coeffs["eta"] * outer(target - post, pre), state

    return make_rule("delta", update, {"eta": 0.01}, reads_target=True)


@register
def rls(alpha: float = 1.0, forget: float = 1.0) -> Rule:
    """Recursive least squares: the delta rule through the inverse input correlation.

    ``k = P x / (forget + x^T P x)``,  ``dw = eta * (m - y) k^T``,
    ``P <- (P - k x^T P) / forget``,   ``P(0) = I / alpha``,

    so ``P`` is ``(alpha I + sum_s forget^(t-s) x_s x_s^T)^-1`` of the inputs seen so far
    (Sherman-Morrison, one rank-one step per input). Under a one-hot input ``P`` is
    diagonal and column ``j`` learns at ``1 / (alpha + count_j)``, the rate of a
    count-based estimate; for a dense input it decorrelates the presynaptic units, which
    is what makes it the readout rule of reservoir (FORCE) learning. ``P`` belongs to the
    presynaptic side and is shared by every post neuron.

    Args:
      alpha: the prior precision ``P(0)^-1 = alpha I``, > 0 in float32 (large alpha: small
        first steps).
      forget: the forgetting factor in ``(0, 1]``; 1 remembers every input.

    References:
      Haykin, "Adaptive Filter Theory", ch. 10 (RLS); Sussillo & Abbott, "Generating
      coherent patterns of activity from chaotic neural networks", Neuron 63 (2009).
    """
    hyperparameter("rls", "alpha", alpha, RLS_ALPHA)
    hyperparameter("rls", "forget", forget, RLS_FORGET)

    def init(w):
        return jnp.eye(w.shape[1], dtype=w.dtype) / alpha

    def update(coeffs, state, w, pre, post, mod):
        del w
        target = require_mod("rls", mod, "the target for post")
        p_x = state @ pre
        gain = p_x / (forget + pre @ p_x)
        # P is symmetric, so x^T P = (P x)^T.
        return coeffs["eta"] * outer(target - post, gain), (state - outer(gain, p_x)) / forget

    return make_rule("rls", update, {"eta": 1.0}, init, reads_target=True)


class PlusPhase(NamedTuple):
    """Plus-phase (target-clamped) activity of one synapse matrix, for `chl`."""
    pre: jnp.ndarray   # (n_pre,)
    post: jnp.ndarray  # (n_post,)


@register
def chl() -> Rule:
    """Contrastive Hebbian learning: Hebb in the plus phase, anti-Hebb in the minus.

    ``dw = eta * (y+ x+^T - y- x-^T)``

    ``pre``/``post`` are the minus phase; ``mod`` is the plus phase, either a `PlusPhase`
    or an ``(n_post,)`` array ``y+`` (then ``x+ = x-``).

    References:
      Movellan, "Contrastive Hebbian learning in the continuous Hopfield model",
      Connectionist Models (1991); O'Reilly, Neural Computation 8 (1996).
    """

    def update(coeffs, state, w, pre, post, mod):
        plus = require_mod("chl", mod, "plus-phase post (n_post,) or PlusPhase(pre, post)")
        if not isinstance(plus, PlusPhase):  # the sender is the same in both phases
            plus = PlusPhase(pre, plus)
        plus_pre, plus_post = plus
        if jnp.shape(plus_pre) != jnp.shape(pre) or jnp.shape(plus_post) != jnp.shape(post):
            raise ValueError(
                f"rule 'chl': plus phase pre {jnp.shape(plus_pre)} / post "
                f"{jnp.shape(plus_post)} must match pre {jnp.shape(pre)} / post "
                f"{jnp.shape(post)} for w {jnp.shape(w)}")
        return coeffs["eta"] * (outer(plus_post, plus_pre) - outer(post, pre)), state

    return make_rule("chl", update, {"eta": 0.01}, reads_target=True)


@register
def generec() -> Rule:
    """GeneRec: the minus-phase sender times the receiver's plus-minus difference.

    ``dw = eta * (y+ - y-) x-^T``      (``mod`` = ``y+``)

    References:
      O'Reilly, "Biologically plausible error-driven learning using local activation
      differences: the generalized recirculation algorithm", Neural Computation 8 (1996).
    """

    def update(coeffs, state, w, pre, post, mod):
        del w
        plus_post = require_mod("generec", mod, "plus-phase post activity")
        return coeffs["eta"] * outer(plus_post - post, pre), state

    return make_rule("generec", update, {"eta": 0.01}, reads_target=True)


class ErrCreditState(NamedTuple):
    """Synaptic credit trace and the slow average of post activity."""
    credit: jnp.ndarray    # (n_post, n_pre): running average of post pre^T
    post_avg: jnp.ndarray  # (n_post,): slow post activity, the baseline of the error


@register
def err_credit(credit_rate: float = 0.1, post_rate: float = 0.5,
               late_phase: bool = False) -> Rule:
    """Err x Credit trace rule: a local error gates a slow synaptic eligibility trace.

    ``credit <- credit + credit_rate * (y x^T - credit)``
    ``err = y - <y>``,   ``<y> <- <y> + post_rate * (y - <y>)``
    ``dw = eta * err * credit``

    ``err`` is a temporal difference of the receiver's activity (fast minus slow, like
    axon's CaP - CaD; ``post_rate = 1`` gives ``y_t - y_{t-1}``); ``credit`` is which
    synapses were recently co-active. The error uses the average from *before* this
    step; the credit includes it.

    ``late_phase=True`` is the reading for a network that settles in two phases
    (`plastix.settling`): ``mod`` carries the receiver's late (plus-phase) signal and
    ``err = mod - y``, the temporal difference across the trial, ``post`` being the early
    (minus-phase) activity; the slow average is kept, not used. Otherwise ``mod`` is
    ignored.

    Args:
      credit_rate: step size of the credit trace (1 / its time constant, in steps), in
        ``[0, 1]``.
      post_rate: step size of the slow post-activity average, in ``[0, 1]``.
      late_phase: take the error from ``mod``, the late phase (see above).

    References:
      O'Reilly et al., the emer/axon framework (github.com/emer/axon), "trace" /
      kinase learning rule: ``DWt = Err * Tr``.
    """
    hyperparameter("err_credit", "credit_rate", credit_rate, AVERAGE_RATE)
    hyperparameter("err_credit", "post_rate", post_rate, AVERAGE_RATE)

    def init(w):
        return ErrCreditState(jnp.zeros_like(w), jnp.zeros(w.shape[0], w.dtype))

    def update(coeffs, state, w, pre, post, mod):
        del w
        credit = state.credit + credit_rate * (outer(post, pre) - state.credit)
        if late_phase:
            late = require_mod("err_credit", mod, "the late-phase post signal")
            err, post_avg = late - post, state.post_avg
        else:
            err = post - state.post_avg
            post_avg = state.post_avg + post_rate * err
        return coeffs["eta"] * err[:, None] * credit, ErrCreditState(credit, post_avg)

    # Error-driven without a target: the error is the receiver's own temporal difference,
    # so post must be the layer's own output (a clamped teacher would have no error).
    return make_rule("err_credit", update, {"eta": 0.01}, init, reads_target=True)
