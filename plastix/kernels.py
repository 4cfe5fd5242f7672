"""The optimised lifetime of the all-plastic ABCD_lr RNN (the `benchmarks/bench_es.py` workload).

One population member reads ``B`` token sequences, each with its own copy of three
plastic matrices, all under the per-synapse ``ABCD_lr`` rule of `plastix.rules`
(Najarro & Risi 2020; ``x = pre``, ``y = post``)::

    dW = eta * (A y x^T + B x + C y + D)        elementwise in every coefficient

At every step ``t = 0 .. T-2`` of a sequence ``tokens`` (``x_t`` one-hot of ``tokens[t]``)::

    h_t      = tanh(W_in x_t + W_rec h_{t-1})           h_{-1} = 0
    logits_t = W_out h_t,   y_t = softmax(logits_t),   nll_t = -log y_t[tokens[t+1]]
    W_in  += dW(pre=x_t,     post=h_t)
    W_rec += dW(pre=h_{t-1}, post=h_t)
    W_out += dW(pre=h_t,     post=y_t)

`lifetime` computes exactly this (same NLL and final weights as a plain ``scan`` of
``rule.update`` up to float rounding; ``tests/test_kernels.py`` checks it) but lays the
work out for speed:

* **The input matrix is never updated densely.** With a one-hot pre only column
  ``i = tokens[t]`` sees the ``A`` and ``B`` terms; the ``C`` and ``D`` terms add the same
  rank-1 / constant matrix to every column. So ``W_in`` is kept as
  ``W_in(t) = G(t) + eta C * (S(t) 1^T) + t * eta D``  with  ``S(t) = sum_{s<t} h_s``,
  where ``G`` only changes in column ``i``: ``G[:, i] += eta A[:, i] h_t + eta B[:, i]``.
  ``W_in x_t`` is then a gather of one column of ``G`` plus two ``(N,)`` terms: each step
  costs O(N) instead of O(N V), and ``W_in`` is materialised once, at the end.
  ``G`` is stored transposed, ``(V, N)``, so the gathered column is a contiguous row.
* **The recurrent and readout updates are one fused pass each.** The four terms are
  regrouped as ``W += (eta A * y + eta B) * x^T + (eta C * y + eta D)`` (``y`` broadcast
  along rows, ``x`` along columns), three multiply-adds per synapse on coefficients
  pre-scaled by ``eta`` once per lifetime, so XLA emits a single elementwise loop that
  reads and writes each weight once per step.
* **Layout ``(B, n_post, n_pre)``.** The sequence axis leads, so the matrix-vector
  products are plain batched dots (no transposed copy of the state per step) and the
  pre axis, innermost, is the contiguous, vectorised one in both the update and the dot.
  A member's whole state (``B`` copies of 33k weights plus its coefficients, 1.6 MB at
  the default sizes) fits in one core's L2 cache, so a population streamed one member
  per core (see `plastix.batching`) keeps the per-step traffic on-chip.

Nothing here is backend-specific: on a GPU or TPU the same function is simply vmapped
over a large chunk of the population at once.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

LAYERS = ("in", "rec", "out")


class ScaledTerms(NamedTuple):
    """The ABCD_lr coefficients of one matrix with the learning rate folded in.

    Each field has the coefficient's shape (``(n_post, n_pre)`` per synapse, or anything
    that broadcasts to it): ``a = eta * A``, ``b = eta * B``, ``c = eta * C``, ``d = eta * D``.
    """

    a: jax.Array
    b: jax.Array
    c: jax.Array
    d: jax.Array


def scaled_terms(coeffs: dict) -> ScaledTerms:
    """``eta * (A, B, C, D)``: computed once per lifetime, not once per step."""
    eta = coeffs["eta"]
    return ScaledTerms(eta * coeffs["A"], eta * coeffs["B"], eta * coeffs["C"], eta * coeffs["D"])


def abcd_step(w: jax.Array, terms: ScaledTerms, pre: jax.Array, post: jax.Array) -> jax.Array:
    """``w + eta (A y x^T + B x + C y + D)`` for a batch of weight copies, in one fused pass.

    Args:
      w: ``(B, n_post, n_pre)`` weights, one matrix per sequence.
      terms: `ScaledTerms` broadcastable to ``(n_post, n_pre)``, shared by the ``B`` copies.
      pre: ``(B, n_pre)`` presynaptic activity ``x``.
      post: ``(B, n_post)`` postsynaptic activity ``y``.

    Returns:
      The updated ``(B, n_post, n_pre)`` weights.
    """
    y = post[:, :, None]
    x = pre[:, None, :]
    # Grouped as (a y + b) x + (c y + d): three multiply-adds per synapse and one
    # read-modify-write of w, so the whole update is a single elementwise loop.
    return w + (terms.a * y + terms.b) * x + (terms.c * y + terms.d)


class InputColumns(NamedTuple):
    """The lazily updated one-hot input matrix (see the module docstring).

    ``W_in(t)[:, j] = g[j] + c[j] * s + t * d[j]``.

    Attributes:
      g: ``(B, V, N)`` -- ``G`` transposed: row ``j`` is column ``j`` of ``G``.
      s: ``(B, N)`` -- ``S(t)``, the sum of the hidden states seen so far.
    """

    g: jax.Array
    s: jax.Array


def input_drive(cols: InputColumns, terms_t: ScaledTerms, token: jax.Array, t) -> jax.Array:
    """``W_in(t) x_t`` for one-hot ``x_t``: a gather of one column per sequence.

    ``terms_t`` holds the input coefficients transposed to ``(V, N)``; ``token`` is ``(B,)``.
    """
    rows = jnp.arange(token.shape[0])
    return cols.g[rows, token] + terms_t.c[token] * cols.s + t * terms_t.d[token]


def input_learn(cols: InputColumns, terms_t: ScaledTerms, token: jax.Array,
                h: jax.Array) -> InputColumns:
    """Applies ``dW_in(pre = x_t, post = h_t)``: only column ``token`` of ``G`` changes."""
    rows = jnp.arange(token.shape[0])
    g = cols.g.at[rows, token].add(terms_t.a[token] * h + terms_t.b[token])
    return InputColumns(g, cols.s + h)


def input_weights(cols: InputColumns, terms: ScaledTerms, steps: int) -> jax.Array:
    """Materialises ``W_in`` after ``steps`` updates: ``(B, N, V)``."""
    return jnp.swapaxes(cols.g, 1, 2) + terms.c * cols.s[:, :, None] + steps * terms.d


def next_token_nll(logits: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(softmax(logits), -log softmax(logits)[target])`` over the last axis."""
    log_y = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_y, target[:, None], axis=1)[:, 0]
    return jnp.exp(log_y), nll


def lifetime(coeffs: dict, weights: dict, tokens: jax.Array) -> tuple[jax.Array, dict]:
    """One member's lifetimes on ``B`` sequences: the per-step NLL and the final weights.

    Args:
      coeffs: ``{"in", "rec", "out"}`` -> ABCD_lr coefficients ``{"A", "B", "C", "D",
        "eta"}``, each broadcastable to that matrix's ``(n_post, n_pre)`` (per-synapse
        coefficients from ``rules.init_coeffs(rule, shape, "synapse")`` have that shape).
        Shared by the member's ``B`` sequences.
      weights: initial ``{"in": (N, V), "rec": (N, N), "out": (V, N)}``, or with a leading
        ``B`` axis for a separate draw per sequence.
      tokens: ``(B, T)`` int tokens in ``[0, V)``.

    Returns:
      ``(nll, final)``: ``nll`` ``(B, T-1)``, where ``nll[:, t]`` scores ``tokens[:, t+1]``
      as predicted after reading ``tokens[:, :t+1]``; ``final`` the weights after the
      ``T-1`` updates, ``{"in": (B, N, V), "rec": (B, N, N), "out": (B, V, N)}``.
    """
    batch, length = tokens.shape
    n_hidden, vocab = jnp.shape(weights["in"])[-2:]
    w0 = {k: jnp.broadcast_to(weights[k], (batch,) + jnp.shape(weights[k])[-2:]) for k in LAYERS}
    terms = {k: scaled_terms(coeffs[k]) for k in LAYERS}
    # Input coefficients transposed to (V, N) so that a token selects a contiguous row.
    terms_in_t = ScaledTerms(*(jnp.broadcast_to(x, (n_hidden, vocab)).T for x in terms["in"]))

    def step(carry, xs):
        cols, w_rec, w_out, h_prev = carry
        t, token, target = xs
        drive = input_drive(cols, terms_in_t, token, t)
        h = jnp.tanh(drive + jnp.einsum("bij,bj->bi", w_rec, h_prev))
        y, nll = next_token_nll(jnp.einsum("bvj,bj->bv", w_out, h), target)
        cols = input_learn(cols, terms_in_t, token, h)
        w_rec = abcd_step(w_rec, terms["rec"], pre=h_prev, post=h)
        w_out = abcd_step(w_out, terms["out"], pre=h, post=y)
        return (cols, w_rec, w_out, h), nll

    steps = length - 1
    cols0 = InputColumns(jnp.swapaxes(w0["in"], 1, 2), jnp.zeros((batch, n_hidden), w0["in"].dtype))
    h0 = jnp.zeros((batch, n_hidden), w0["rec"].dtype)
    xs = (jnp.arange(steps, dtype=w0["in"].dtype), tokens[:, :-1].T, tokens[:, 1:].T)
    (cols, w_rec, w_out, _), nll = jax.lax.scan(step, (cols0, w0["rec"], w0["out"], h0), xs)
    final = {"in": input_weights(cols, terms["in"], steps), "rec": w_rec, "out": w_out}
    return nll.T, final
