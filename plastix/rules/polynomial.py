"""The general polynomial rule: a learnable combination of every product of powers
0..2 of pre, post and w (and optionally 0..1 of the modulatory signal), and its named
variants `polynomial_mod`, `multilinear` and `multilinear_mod`."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from plastix.rules._core import Rule, make_rule, register, require_mod


def _powers(x, degree: int):
    """``[x^0, x^1, ..., x^degree]`` stacked on a new leading axis (``x^0`` is exactly 1,
    also where ``x`` is 0)."""
    powers = [jnp.ones_like(x)]
    for _ in range(degree):
        powers.append(powers[-1] * x)
    return jnp.stack(powers)


def polynomial_basis(w, pre, post, mod=None, degree: int = 2):
    """``basis[i, j, k(, l), a, b] = pre_b^i post_a^j w_ab^k (mod_a^l)``.

    Shape ``(d+1, d+1, d+1[, 2], n_post, n_pre)`` for ``degree`` d: contracting the
    leading axes with ``theta`` gives the polynomial rule.
    """
    x = _powers(pre, degree)[:, None, None, None, :]        # (d+1, 1, 1, 1, n_pre)
    y = _powers(post, degree)[None, :, None, :, None]       # (1, d+1, 1, n_post, 1)
    v = _powers(w, degree)[None, None, :, :, :]             # (1, 1, d+1, n_post, n_pre)
    basis = x * y * v
    if mod is None:
        return basis
    m = _powers(jnp.broadcast_to(mod, post.shape)[:, None], 1)  # (2, n_post, 1)
    return basis[:, :, :, None] * m[None, None, None]


def _post_factors(post, mod, degree: int):
    """``F[j(, l), a] = post_a^j (mod_a^l)``: every post-side factor, per post neuron."""
    y = _powers(post, degree)                               # (d+1, n_post)
    if mod is None:
        return y
    m = jnp.broadcast_to(mod, post.shape)
    return y[:, None, :] * _powers(m, 1)[None, :, :]       # (d+1, 2, n_post)


def _polynomial_per_neuron(theta, w, pre, post, mod, degree: int):
    """The rule for shared or per-post-neuron ``theta`` without the full basis.

    ``dw_ab = sum_k w_ab^k sum_i pre_b^i Q[i, k, a]`` with
    ``Q[i, k, a] = sum_{j(,l)} theta[i, j, k(, l)(, a)] F[j(, l), a]``: a small
    contraction and one ``(n_post, d+1) x (d+1, n_pre)`` product per power of w,
    instead of a ``(terms, n_post, n_pre)`` temporary every step.
    """
    factors = _post_factors(post, mod, degree)
    n_post = post.shape[0]
    if theta.ndim > factors.ndim + 1:  # per post neuron: trailing (n_post, 1)
        theta = theta[..., 0]
    else:
        theta = jnp.broadcast_to(theta[..., None], theta.shape + (n_post,))
    post_axes = "jl" if mod is not None else "j"
    q = jnp.einsum(f"i{post_axes[0]}k{post_axes[1:]}a,{post_axes}a->kai", theta, factors)
    x = _powers(pre, degree)                                # (d+1, n_pre)
    per_power = q @ x                                       # (d+1, n_post, n_pre)
    return jnp.sum(_powers(w, degree) * per_power, axis=0)


@register
def polynomial(use_mod: bool = False, degree: int = 2) -> Rule:
    """A polynomial in pre, post and w (and mod), with every coefficient learnable.

    ``dw = eta * sum_{i,j,k in 0..d (, l in 0..1)} theta[i,j,k(,l)] x^i y^j w^k (m^l)``

    Hebb is ``theta[1,1,0] = 1``; a weight decay adds ``theta[0,0,1] = -decay``; Oja
    (needs d = 2) adds ``theta[0,2,1] = -1``; ABCD_lr is ``theta[1,1,0], theta[1,0,0],
    theta[0,1,0], theta[0,0,0] = A, B, C, D``. With ``use_mod`` the delta rule
    ``eta (m - y) x`` is ``theta[1,0,0,1] = 1, theta[1,1,0,0] = -1``, so evolution can
    discover error-driven learning from a teaching signal in ``mod``.

    Defaults: plain Hebb (``theta[1,1,0(,0)] = 1``, ``eta = 0.01``).

    Args:
      use_mod: add powers 0..1 of ``mod`` (then ``theta`` has a trailing term axis of
        2, ``mod`` is required and the rule is error-driven: `Rule.reads_target`).
      degree: highest power d of pre, post and w: 2 gives the 27 (54) terms of the
        meta-learned-plasticity literature; 1 gives 8 (16) multilinear terms, which
        still contain Hebb, decay, ABCD and the delta rule and cannot blow up
        quadratically in w.

    The registry also names three variants: `polynomial_mod` (``use_mod=True``),
    `multilinear` (``degree=1``) and `multilinear_mod` (both).

    References:
      Jordan, Schmidt, Senn, Petrovici, "Evolving interpretable plasticity for spiking
      networks", eLife (2021); Confavreux et al., "A meta-learning approach to
      (re)discover plasticity rules that carve a desired function into a neural
      network", NeurIPS 2020.
    """
    return _polynomial_rule("polynomial", use_mod, degree)


@register
def polynomial_mod() -> Rule:
    """`polynomial` with the teaching factor: ``polynomial(use_mod=True)``, 54 terms.

    ``dw = eta * sum_{i,j,k in 0..2, l in 0..1} theta[i,j,k,l] x^i y^j w^k m^l``

    ``mod`` (the target, e.g. a readout's teacher) is required; ``post`` is the layer's
    own output, so the rule is error-driven (`Rule.reads_target`).

    References:
      as `polynomial`: Jordan et al., eLife (2021); Confavreux et al., NeurIPS 2020.
    """
    return _polynomial_rule("polynomial_mod", use_mod=True, degree=2)


@register
def multilinear() -> Rule:
    """`polynomial` of degree 1: ``polynomial(degree=1)``, 8 terms.

    ``dw = eta * sum_{i,j,k in 0..1} theta[i,j,k] x^i y^j w^k``

    References:
      as `polynomial`: Jordan et al., eLife (2021); Confavreux et al., NeurIPS 2020.
    """
    return _polynomial_rule("multilinear", use_mod=False, degree=1)


@register
def multilinear_mod() -> Rule:
    """`polynomial` of degree 1 with the teaching factor:
    ``polynomial(degree=1, use_mod=True)``, 16 terms.

    ``dw = eta * sum_{i,j,k,l in 0..1} theta[i,j,k,l] x^i y^j w^k m^l``

    ``mod`` (the target) is required; the rule is error-driven (`Rule.reads_target`).

    References:
      as `polynomial`: Jordan et al., eLife (2021); Confavreux et al., NeurIPS 2020.
    """
    return _polynomial_rule("multilinear_mod", use_mod=True, degree=1)


def _polynomial_rule(name: str, use_mod: bool, degree: int) -> Rule:
    """The polynomial rule of ``degree`` (with ``mod`` if ``use_mod``) named ``name``."""
    if degree not in (1, 2):
        raise ValueError(f"rule {name!r}: degree must be 1 or 2, got {degree!r}")
    term_shape = (degree + 1,) * 3 + ((2,) if use_mod else ())
    theta = np.zeros(term_shape, np.float32)
    theta[(1, 1, 0, 0) if use_mod else (1, 1, 0)] = 1.0

    def update(coeffs, state, w, pre, post, mod):
        if use_mod:
            require_mod(name, mod, "the fourth variable m, e.g. a teaching signal")
        mod = mod if use_mod else None
        weights = coeffs["theta"]
        if weights.ndim == theta.ndim or weights.shape[-1] == 1:  # shared / per neuron
            dw = _polynomial_per_neuron(weights, w, pre, post, mod, degree)
        else:
            basis = polynomial_basis(w, pre, post, mod, degree)
            dw = jnp.sum(weights * basis, axis=tuple(range(theta.ndim)))
        return coeffs["eta"] * dw, state

    # With mod, m is the target the polynomial can compare post with (delta is in it).
    return make_rule(name, update, {"theta": theta, "eta": 0.01}, reads_target=use_mod)
