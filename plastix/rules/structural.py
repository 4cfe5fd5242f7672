"""Structural plasticity: the Hebbian mask, which prunes and regrows synapses."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from plastix import checks
from plastix.rules._core import Rule, make_rule, outer, register


class HebbianMaskState(NamedTuple):
    """Per-synapse Hebbian value and the connectivity mask it drives."""
    value: jnp.ndarray  # (n_post, n_pre) accumulated sign agreement
    mask: jnp.ndarray   # (n_post, n_pre) 1.0 = connected, 0.0 = pruned


def apply_mask(w, state: HebbianMaskState):
    """The effective weights ``w * mask`` of a `hebbian_mask` state."""
    return w * state.mask


def check_mask_thresholds(owner: str, prune_below: float, regrow_above: float,
                          limit: float) -> None:
    """One-line ValueError unless ``-limit < prune_below <= regrow_above < limit``: both
    thresholds must be reachable by the clipped value, and pruning must not need more
    agreement than regrowth (the band between them is the hysteresis). Each is checked as
    the float32 the mask computes with."""
    for name, value in (("prune_below", prune_below), ("regrow_above", regrow_above),
                        ("limit", limit)):
        checks.number().check(f"{owner}: {name}", value)
    computed = [checks.as_float32(x) for x in (prune_below, regrow_above, limit)]
    if not -computed[2] < computed[0] <= computed[1] < computed[2]:
        raise ValueError(
            f"{owner}: need -limit < prune_below <= regrow_above < limit, got "
            f"limit={limit}, prune_below={prune_below}, regrow_above={regrow_above}")


def step_mask(state: HebbianMaskState, agreement, rate, prune_below: float,
              regrow_above: float, limit: float) -> HebbianMaskState:
    """One step of the Hebbian mask, elementwise (any layout, any shape):

    ``h <- clip(h + rate * agreement, -limit, limit)``
    ``mask <- 0 where h < prune_below;  1 where h > regrow_above;  else unchanged``

    ``agreement`` is the sign agreement of each synapse's two neurons: one example's
    ``sign(post) sign(pre)^T`` in the `hebbian_mask` rule, its mean over a batch in
    `plastix.masks`.
    """
    value = jnp.clip(state.value + rate * agreement, -limit, limit)
    mask = jnp.where(value < prune_below, 0.0,
                     jnp.where(value > regrow_above, 1.0, state.mask))
    return HebbianMaskState(value, mask.astype(state.mask.dtype))


@register
def hebbian_mask(prune_below: float = -1.0, regrow_above: float = 1.0,
                 limit: float = 2.0) -> Rule:
    """Hebbian mask: synapses whose pre and post keep disagreeing in sign are pruned.

    ``h <- clip(h + rate * sign(y) sign(x)^T, -limit, limit)``
    ``mask <- 0 where h < prune_below;  1 where h > regrow_above;  else unchanged``

    The rule changes connectivity, not strength: ``dw = 0`` and the mask lives in the
    state (`HebbianMaskState`); the forward pass must use ``apply_mask(w, state)``,
    which is the rule's ``effective_weights``. Between the two thresholds the mask keeps its value
    (hysteresis), so a synapse does not flicker; clipping ``h`` to ``[-limit, limit]``
    keeps a long-agreeing synapse able to be pruned after ``~2 limit / rate`` steps.
    The step itself is `step_mask`, shared with the masks of gradient-trained layers
    (`plastix.masks`).

    Args:
      prune_below: ``h`` below this disconnects a synapse.
      regrow_above: ``h`` above this (re)connects it; must be >= ``prune_below``.
      limit: bound on ``|h|``; must exceed both thresholds in magnitude.

    References:
      Hebbian pruning and regrowth in the spirit of Chechik, Meilijson, Ruppin,
      "Synaptic pruning in development", Neural Computation 10 (1998).
    """
    check_mask_thresholds("rule 'hebbian_mask'", prune_below, regrow_above, limit)

    def init(w):
        return HebbianMaskState(jnp.zeros_like(w), jnp.ones_like(w))

    def update(coeffs, state, w, pre, post, mod):
        del mod
        agreement = outer(jnp.sign(post), jnp.sign(pre))
        value, mask = step_mask(state, agreement, coeffs["rate"], prune_below, regrow_above,
                                limit)
        return jnp.zeros_like(w), HebbianMaskState(value, mask.astype(w.dtype))

    return make_rule("hebbian_mask", update, {"rate": 0.1}, init,
                     effective_weights=apply_mask)
