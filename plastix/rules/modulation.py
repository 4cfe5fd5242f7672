"""Three-factor learning: any rule gated by a neuromodulatory signal, optionally
through an eligibility trace."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from plastix import checks
from plastix.rules._core import WRAPPERS, Rule, as_column, make_rule, require_mod

# Below 1 in float32 too: a decay that rounds to 1 there never forgets.
TRACE_DECAY = checks.number(at_least=0, below=1, optional=True)


class EligibilityState(NamedTuple):
    """The wrapped rule's state and the eligibility trace ``e`` (shaped like ``w``)."""
    inner: Any
    trace: jnp.ndarray


def modulated(rule: Rule, trace_decay: float | None = None) -> Rule:
    """Gates ``rule`` by the third factor ``m`` = ``mod`` (e.g. reward, surprise).

    Without a trace: ``dw = m * u``; with one:
    ``e <- trace_decay * e + u``,  ``dw = m * e``,
    where ``u`` is ``rule``'s update. ``m`` is a scalar or one value per post neuron,
    and is required. The wrapped rule sees ``mod=None``; it keeps its coefficients
    (same keys and shapes) and, with a trace, its state sits in
    `EligibilityState.inner`.

    Args:
      rule: any `Rule` that does not itself need ``mod``.
      trace_decay: per-step decay of the eligibility trace in ``[0, 1)``; ``None``
        applies ``m`` to the immediate update.

    Returns:
      A `Rule` named ``"modulated(<name>)"`` (``"modulated(<name>, <trace_decay>)"``
      with a trace; `rules.get` builds it back from that name), with the wrapped rule's
      ``effective_weights``; not error-driven (``mod`` is a gate, not a target) and
      without ``outer_affine`` (``m`` is not a coefficient).

    References:
      Fremaux & Gerstner, "Neuromodulated spike-timing-dependent plasticity, and theory
      of three-factor learning rules", Front. Neural Circuits 9 (2016);
      Izhikevich, "Solving the distal reward problem ...", Cerebral Cortex 17 (2007).
    """
    TRACE_DECAY.check(f"modulated({rule.name}): trace_decay", trace_decay)
    # The name is also a registry name: `rules.get` builds the same rule back from it.
    name = (f"modulated({rule.name})" if trace_decay is None
            else f"modulated({rule.name}, {trace_decay:g})")

    def gate(mod):
        return as_column(require_mod(name, mod, "the neuromodulatory third factor"))

    if trace_decay is None:
        def update(coeffs, state, w, pre, post, mod):
            m = gate(mod)
            u, state = rule.update(coeffs, state, w, pre, post, None)
            return m * u, state

        return make_rule(name, update, rule.default_coeffs, rule.init,
                         effective_weights=rule.effective_weights)

    def init(w):
        return EligibilityState(rule.init(w), jnp.zeros_like(w))

    def update_traced(coeffs, state, w, pre, post, mod):
        m = gate(mod)
        u, inner = rule.update(coeffs, state.inner, w, pre, post, None)
        trace = trace_decay * state.trace + u
        return m * trace, EligibilityState(inner, trace)

    return make_rule(name, update_traced, rule.default_coeffs, init,
                     effective_weights=on_inner_state(rule.effective_weights))


def on_inner_state(effective_weights):
    """``effective_weights`` of a wrapped rule, reading its state from the wrapper state's
    ``inner`` field (`EligibilityState`, `AnnealedState`); ``None`` stays ``None``."""
    if effective_weights is None:
        return None

    def on_inner(w, state):
        return effective_weights(w, state.inner)

    return on_inner


WRAPPERS["modulated"] = modulated
