"""Fast-weight updates for fast-weights RNNs and linear-attention memories."""

from __future__ import annotations

from plastix.rules._core import Rule, as_column, make_rule, outer, register


@register
def fast_weight_ba() -> Rule:
    """Ba et al.'s decaying Hebbian fast-weight memory (``pre`` = ``post`` = h).

    ``A <- lam * A + eta * h h^T``, i.e. ``dw = (lam - 1) * w + eta * post pre^T``.

    Defaults ``lam = 0.95``, ``eta = 0.5`` (the paper's values).

    References:
      Ba, Hinton, Mnih, Leibo, Ionescu, "Using Fast Weights to Attend to the Recent
      Past", NeurIPS 2016.
    """

    def update(coeffs, state, w, pre, post, mod):
        del mod
        return (coeffs["lam"] - 1.0) * w + coeffs["eta"] * outer(post, pre), state

    return make_rule("fast_weight_ba", update, {"lam": 0.95, "eta": 0.5})


@register
def fast_weight_delta() -> Rule:
    """The delta-rule fast-weight programmer (``pre`` = key k, ``post`` = value v).

    ``W <- W + beta * m * (v - W k) k^T``: write ``v`` at key ``k``, replacing what the
    memory returned for ``k`` so far. ``mod`` = ``m`` is an optional dynamic learning
    rate (e.g. ``sigmoid`` of a network output); ``None`` means 1.

    References:
      Schlag, Irie, Schmidhuber, "Linear Transformers Are Secretly Fast Weight
      Programmers", ICML 2021.
    """

    def update(coeffs, state, w, pre, post, mod):
        rate = coeffs["beta"] if mod is None else coeffs["beta"] * as_column(mod)
        return rate * outer(post - w @ pre, pre), state

    return make_rule("fast_weight_delta", update, {"beta": 1.0})
