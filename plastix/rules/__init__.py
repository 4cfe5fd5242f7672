"""Synaptic plasticity rules as pure functions, optax-style.

A rule is a `Rule` tuple of ``init(w) -> state`` and
``update(coeffs, state, w, pre, post, mod=None) -> (dw, new_state)`` for one synapse
matrix ``w (n_post, n_pre)`` and one example; batching is the caller's ``vmap`` and
``w + dw`` is the caller's job. Coefficients are a dict of arrays whose trailing axes
(``()``, ``(n_post, 1)`` or ``(n_post, n_pre)``) choose shared, per-neuron or
per-synapse values; `init_coeffs` builds them from a rule's defaults.

A `Rule` is a hashable value that also declares what a network needs to know about it:
``reads_target`` (error-driven: post is the layer's own output, mod the target),
``effective_weights`` (the weights the forward pass uses) and ``outer_affine`` (the
factors of a ``(a y + b) x^T + (c y + d)`` update). `get` returns equal rules for equal
calls; `make_rule` builds a new one and `register` adds a factory to the registry.

Example::

    from plastix import rules
    rule = rules.get("oja")
    coeffs = rules.init_coeffs(rule, w.shape, "synapse")
    dw, state = rule.update(coeffs, rule.init(w), w, pre, post)

Modules: `hebbian` (hebb, oja, sanger, hpca, anti_hebb, covariance, bcm, bcpnn),
`competitive` (instar, soft_wta, krotov), `abcd` (the nine Najarro & Risi variants),
`polynomial` (polynomial and its variants polynomial_mod, multilinear,
multilinear_mod), `error_driven` (delta, rls, chl, generec, err_credit), `structural`
(hebbian_mask), `fast_weights` (fast_weight_ba, fast_weight_delta), `differentiable`
(diff_hebb, diff_oja, backpropamine, backpropamine_retro: a learned plastic trace on top
of learned weights, ``w = w0 + alpha * Hebb``), `modulation` (the `modulated`
three-factor wrapper) and `schedules` (`annealed`: any rule with a rate that falls as
its presynaptic units are used, 1/count under a one-hot input).
"""

from plastix.rules._core import (
    REGISTRY, Coefficients, OuterAffine, Rule, check_coeffs, get, init_coeffs, make_rule,
    register,
)
from plastix.rules.abcd import (
    A, ABC, ABC_lr, ABCD, ABCD_lr, ABCD_lr_D_in_and_out, ABCD_lr_D_out, AD, AD_lr,
)
from plastix.rules.competitive import instar, krotov, soft_wta
from plastix.rules.differentiable import (
    PlasticTrace, RetroactiveTrace, backpropamine, backpropamine_retro, diff_hebb, diff_oja,
)
from plastix.rules.error_driven import (
    ErrCreditState, PlusPhase, chl, delta, err_credit, generec, rls,
)
from plastix.rules.fast_weights import fast_weight_ba, fast_weight_delta
from plastix.rules.hebbian import (
    BCMState, BCPNNState, CovarianceState, anti_hebb, bcm, bcpnn, bcpnn_weights, covariance,
    hebb, hpca, oja, sanger,
)
from plastix.rules.modulation import EligibilityState, modulated
from plastix.rules.polynomial import multilinear, multilinear_mod, polynomial, polynomial_mod
from plastix.rules.schedules import AnnealedState, annealed
from plastix.rules.structural import (
    HebbianMaskState, apply_mask, check_mask_thresholds, hebbian_mask, step_mask,
)

# Fixed at import time: the helpers plus every rule registered by now. A rule
# registered later is reachable through `get` but is not a module attribute, so it
# stays out of the star-import.
__all__ = [
    "REGISTRY", "Coefficients", "OuterAffine", "Rule", "check_coeffs", "get", "init_coeffs",
    "make_rule", "register", "modulated", "annealed", "apply_mask", "step_mask", "check_mask_thresholds",
    "PlusPhase", "BCMState", "BCPNNState", "CovarianceState", "ErrCreditState",
    "EligibilityState", "HebbianMaskState", "AnnealedState", "bcpnn_weights", "PlasticTrace",
    "RetroactiveTrace",
]
__all__ += list(REGISTRY)  # a statement of its own: documentation tools read the list above
