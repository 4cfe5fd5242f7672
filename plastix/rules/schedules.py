"""Learning-rate schedules as rule transformers: any rule whose rate falls as its
synapses see more presynaptic activity."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from plastix.rules._core import WRAPPERS, Rule, make_rule
from plastix.rules.modulation import on_inner_state


class AnnealedState(NamedTuple):
    """The wrapped rule's state and ``count (n_pre,)``, each presynaptic unit's summed
    squared activity so far."""
    inner: Any
    count: jnp.ndarray


def annealed(rule: Rule) -> Rule:
    """Scales ``rule``'s update by a rate that falls with each presynaptic unit's activity.

    ``n_j <- n_j + x_j^2``,  ``dw_ij = (1 + n_j / tau)^(-kappa) u_ij``,

    where ``u`` is ``rule``'s update and ``x = pre``. Under a one-hot input ``n_j`` counts
    how often symbol ``j`` has been seen, and for an always-on bias unit it is the step, so
    ``kappa = 1`` gives each context the 1/count rate of a count-based (n-gram) estimate
    and the bias the 1/t rate of a running mean; ``kappa`` and ``tau`` are learned
    coefficients (``tau`` as ``log_tau``), so the outer loop chooses the schedule. With
    the defaults (``kappa = 0``) the rule is ``rule`` itself.

    Args:
      rule: any `Rule`; it sees ``pre``, ``post`` and ``mod`` unchanged.

    Returns:
      A `Rule` named ``"annealed(<name>)"`` (`rules.get` builds it back from that name),
      with ``rule``'s coefficients plus ``kappa`` and ``log_tau``, its ``reads_target``
      and ``effective_weights``, and no ``outer_affine`` (the scale is per column).

    References:
      Robbins & Monro, "A stochastic approximation method", Ann. Math. Stat. 22 (1951);
      Darken, Chang & Moody, "Learning rate schedules for faster stochastic gradient
      search", IEEE NNSP (1992): the "search then converge" rate eta / (1 + t / tau).
    """
    name = f"annealed({rule.name})"
    for key in ("kappa", "log_tau"):
        if key in rule.default_coeffs:
            raise ValueError(f"{name}: the wrapped rule already has a coefficient {key!r}")

    def init(w):
        return AnnealedState(rule.init(w), jnp.zeros(w.shape[1:], w.dtype))

    def update(coeffs, state, w, pre, post, mod):
        inner_coeffs = {key: coeffs[key] for key in rule.default_coeffs}
        u, inner = rule.update(inner_coeffs, state.inner, w, pre, post, mod)
        count = state.count + pre * pre
        scale = (1.0 + count * jnp.exp(-coeffs["log_tau"])) ** (-coeffs["kappa"])
        return scale * u, AnnealedState(inner, count)

    return make_rule(name, update, {**rule.default_coeffs, "kappa": 0.0, "log_tau": 0.0},
                     init, reads_target=rule.reads_target,
                     effective_weights=on_inner_state(rule.effective_weights))


WRAPPERS["annealed"] = annealed
