"""Differentiable plasticity and backpropamine: a learned plastic trace on top of fixed
weights, trained through the lifetime by gradient (or evolved).

Both papers write the forward weights as ``w_eff = w + alpha * Hebb`` with ``w`` and
``alpha`` learned and a plastic trace ``Hebb`` that starts at 0 in every lifetime and
changes every step. The `Rule` contract has no coefficients in ``effective_weights``,
so these rules keep ``Hebb`` (and, for the retroactive form, the eligibility trace) in
the rule's state and return the change of the plastic part,

    dw = alpha * (Hebb_new - Hebb_old).

A network that starts a lifetime at ``w(0) = w0`` with ``Hebb = 0`` and applies
``w <- w + dw`` therefore holds exactly

    w(t) = w0 + alpha * Hebb(t)

at every step (up to float rounding), the paper's ``w_eff``: dense networks, ES and
gradients use these rules unchanged, and the network's learned initial weights are the
papers' learned ``w``. This needs ``alpha`` fixed within a lifetime (true of every
coefficient) and a lifetime that begins from `init`'s zero traces.

Convention: ``w`` is ``(n_post, n_pre)`` and ``post = f(w @ pre)``, so ``Hebb[i, j]``
pairs post neuron ``i`` with pre neuron ``j``; in a recurrent layer ``pre`` is
``x(t-1)`` and ``post`` is ``x(t)``, as in the papers. The reference code stores the
transpose (rows are pre neurons).

Defaults: ``alpha = 0.1``, ``eta = 0.1``. For tanh units the decaying trace is an
average of products in ``[-1, 1]`` and backpropamine clips its trace to ``[-1, 1]``, so
``alpha`` bounds the plastic part of each weight: 0.1 is the scale of a weight of a
~100-unit layer (``1 / sqrt(n)``), where plasticity matters from the first update
without swamping ``w``. The reference code starts ``alpha`` at ``0.01 N(0, 1)``
per synapse, which no shared default can express. ``eta`` sets the trace's memory,
about ``1 / eta`` steps: 10 steps is one presentation plus gap of Miconi et al.'s
pattern task (the reference code starts its learned ``eta`` at 0.01 for episodes of
~100 steps).
"""

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
    require_mod,
)


class PlasticTrace(NamedTuple):
    """The plastic trace ``Hebb``, shaped like ``w``."""
    hebb: jnp.ndarray


class RetroactiveTrace(NamedTuple):
    """The plastic trace ``Hebb`` and the eligibility trace ``E``, both shaped like ``w``."""
    hebb: jnp.ndarray
    eligibility: jnp.ndarray


def _zero_trace(w) -> PlasticTrace:
    return PlasticTrace(jnp.zeros_like(w))


def _plastic_step(alpha, old, new):
    """``dw = alpha * (new - old)``: what keeps ``w = w0 + alpha * Hebb`` true."""
    return alpha * (new - old)


def _check_clip(name: str, clip: float) -> None:
    hyperparameter(name, "clip", clip, checks.RATE)


@register
def diff_hebb() -> Rule:
    """Differentiable plasticity with a decaying Hebbian trace.

    ``Hebb <- (1 - eta) Hebb + eta y x^T``;  ``w_eff = w + alpha * Hebb``,
    returned as ``dw = alpha * (Hebb_new - Hebb_old)`` (see the module docstring).

    Args (coefficients):
      alpha: plasticity of each synapse (default 0.1; per synapse in the paper).
      eta: trace rate, one value in the paper (default 0.1).

    The network's initial weights are the paper's learned fixed weights ``w``.

    References:
      Miconi, Clune, Stanley, "Differentiable plasticity: training plastic neural
      networks with backpropagation", ICML 2018, eq. (1)-(2).
    """

    def update(coeffs, state, w, pre, post, mod):
        del w, mod
        eta = coeffs["eta"]
        hebb = (1.0 - eta) * state.hebb + eta * outer(post, pre)
        return _plastic_step(coeffs["alpha"], state.hebb, hebb), PlasticTrace(hebb)

    return make_rule("diff_hebb", update, {"alpha": 0.1, "eta": 0.1}, _zero_trace)


@register
def diff_oja() -> Rule:
    """Differentiable plasticity with an Oja trace, applied to each post neuron (row).

    ``Hebb_ij <- Hebb_ij + eta y_i (x_j - y_i Hebb_ij)``;  ``w_eff = w + alpha * Hebb``,
    returned as ``dw = alpha * (Hebb_new - Hebb_old)``. Oja's decay (``eta y_i^2``) acts
    only while the post neuron is active, so the trace stays bounded yet does not fade
    over silent steps, unlike `diff_hebb`'s forgetting at a fixed rate.

    Args (coefficients):
      alpha: plasticity of each synapse (default 0.1).
      eta: trace rate (default 0.1).

    References:
      Miconi, Clune, Stanley, "Differentiable plasticity: training plastic neural
      networks with backpropagation", ICML 2018, eq. (3); Oja, J. Math. Biol. 15 (1982).
    """

    def update(coeffs, state, w, pre, post, mod):
        del w, mod
        hebb = state.hebb + coeffs["eta"] * as_column(post) * (pre[None, :]
                                                               - as_column(post) * state.hebb)
        return _plastic_step(coeffs["alpha"], state.hebb, hebb), PlasticTrace(hebb)

    return make_rule("diff_oja", update, {"alpha": 0.1, "eta": 0.1}, _zero_trace)


@register
def backpropamine(clip: float = 1.0) -> Rule:
    """Backpropamine, simple neuromodulation: the network's own signal ``M`` gates Hebb.

    ``Hebb <- clip(Hebb + M y x^T, -clip, clip)``;  ``w_eff = w + alpha * Hebb``,
    returned as ``dw = alpha * (Hebb_new - Hebb_old)``. ``M`` = ``mod`` is required: a
    scalar or one value per post neuron (the paper's fan-out), computed by the network
    (e.g. ``tanh`` of a modulator unit).

    Args:
      clip: bound of the trace (the paper's equations use 1).

    Args (coefficients):
      alpha: plasticity of each synapse (default 0.1).

    References:
      Miconi, Rawal, Clune, Stanley, "Backpropamine: training self-modifying neural
      networks with differentiable neuromodulated plasticity", ICLR 2019, eq. (3)-(4).
    """
    _check_clip("backpropamine", clip)

    def update(coeffs, state, w, pre, post, mod):
        del w
        m = as_column(require_mod("backpropamine", mod, "the neuromodulator M"))
        hebb = jnp.clip(state.hebb + m * outer(post, pre), -clip, clip)
        return _plastic_step(coeffs["alpha"], state.hebb, hebb), PlasticTrace(hebb)

    return make_rule("backpropamine", update, {"alpha": 0.1}, _zero_trace)


@register
def backpropamine_retro(clip: float = 1.0) -> Rule:
    """Backpropamine, retroactive neuromodulation: ``M`` gates an eligibility trace.

    ``Hebb <- clip(Hebb + M E, -clip, clip)``;  ``E <- (1 - eta) E + eta y x^T``;
    ``w_eff = w + alpha * Hebb``, returned as ``dw = alpha * (Hebb_new - Hebb_old)``.

    As in the paper, ``M(t)`` acts on ``E(t)``, the co-activity *before* this step:
    a modulator that responds to an outcome credits the activity that led to it.
    ``M`` = ``mod`` is required (a scalar or one value per post neuron).

    Args:
      clip: bound of ``Hebb`` (the paper's equations use 1).

    Args (coefficients):
      alpha: plasticity of each synapse (default 0.1).
      eta: eligibility-trace rate (default 0.1, a memory of ~10 steps).

    References:
      Miconi, Rawal, Clune, Stanley, "Backpropamine: training self-modifying neural
      networks with differentiable neuromodulated plasticity", ICLR 2019, eq. (5)-(6).
    """
    _check_clip("backpropamine_retro", clip)

    def init(w):
        return RetroactiveTrace(jnp.zeros_like(w), jnp.zeros_like(w))

    def update(coeffs, state, w, pre, post, mod):
        del w
        m = as_column(require_mod("backpropamine_retro", mod, "the neuromodulator M"))
        eta = coeffs["eta"]
        hebb = jnp.clip(state.hebb + m * state.eligibility, -clip, clip)
        eligibility = (1.0 - eta) * state.eligibility + eta * outer(post, pre)
        return (_plastic_step(coeffs["alpha"], state.hebb, hebb),
                RetroactiveTrace(hebb, eligibility))

    return make_rule("backpropamine_retro", update, {"alpha": 0.1, "eta": 0.1}, init)
