"""The delta rule over a whole sequence: the per-token recurrence and its chunkwise form.

The delta-rule fast-weight memory (``rules.fast_weight_delta``; Schlag, Irie & Schmidhuber
2021, "Linear transformers are secretly fast weight programmers") writes value v_t under
key k_t with strength beta_t and is read with query q_t after the write:

    W_t = W_{t-1} + beta_t (v_t - W_{t-1} k_t) k_t^T,        o_t = W_t q_t

with W of shape (d_v, d_k). `delta_rule_recurrent` runs it one token at a time (a
``lax.scan``); `delta_rule_chunkwise` gives the same outputs and final state from a few
matrix products per chunk of C tokens (Yang, Wang, Zhang, Shen & Kim 2024, "Parallelizing
linear transformers with the delta rule over sequence length", NeurIPS; the WY / UT form
of flash-linear-attention's ``chunk_delta_rule``).

Chunkwise form. Write u_t = beta_t (v_t - W_{t-1} k_t), the value actually added, so that
W_t = W_0 + sum_{i<=t} u_i k_i^T inside a chunk that starts from W_0. Then

    u_t = beta_t (v_t - W_0 k_t - sum_{i<t} (k_t . k_i) u_i),

i.e. with the chunk's keys, values and strengths as rows of K (C, d_k), V (C, d_v),
beta (C,) and A = strictly_lower(diag(beta) K K^T):

    (I + A) U = diag(beta) (V - K W_0^T)
    U = Ut - Wy W_0^T,   Ut = T diag(beta) V,   Wy = T diag(beta) K,   T = (I + A)^{-1}

T, Ut and Wy depend on the chunk alone, so they are computed for all chunks at once. A
short scan over the chunks carries W:

    U_c = Ut_c - Wy_c W_c^T,       W_{c+1} = W_c + U_c^T K_c

and every output follows in parallel: O_c = Q_c W_c^T + tril(Q_c K_c^T) U_c (the
diagonal kept: the read follows the write). Per token the chunkwise form does O(C d + d^2)
work in matrix products instead of O(d^2) in matrix-vector products; a sequence whose
length is not a multiple of C is padded with beta = 0 tokens, which leave W unchanged.
T = (I + A)^{-1} is a unit lower-triangular inverse, computed exactly by block
substitution (`unit_lower_inverse`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _checked(q, k, v, beta, state):
    """The inputs as arrays of one floating dtype, and the initial state (zeros if None);
    ValueError naming the argument whose shape or dtype is wrong."""
    q, k, v, beta = (jnp.asarray(a) for a in (q, k, v, beta))
    for name, a in (("q", q), ("k", k), ("v", v), ("beta", beta)):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise ValueError(f"{name} must be a floating array, got dtype {a.dtype}")
    if q.ndim < 2:
        raise ValueError(f"q must have shape (..., T, d_k), got {q.shape}")
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape {q.shape} (..., T, d_k), got {k.shape}")
    if v.ndim != q.ndim or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"v must have shape {q.shape[:-1] + ('d_v',)} (..., T, d_v), "
                         f"got {v.shape}")
    if beta.shape != q.shape[:-1]:
        raise ValueError(f"beta must have shape {q.shape[:-1]} (..., T), got {beta.shape}")
    if q.shape[-2] == 0:
        raise ValueError("the sequence is empty: q has T = 0 tokens")
    dtype = jnp.result_type(q, k, v, beta)
    state_shape = q.shape[:-2] + (v.shape[-1], q.shape[-1])
    if state is None:
        state = jnp.zeros(state_shape, dtype)
    else:
        state = jnp.asarray(state)
        if not jnp.issubdtype(state.dtype, jnp.floating):
            raise ValueError(f"state must be a floating array, got dtype {state.dtype}")
        if state.shape != state_shape:
            raise ValueError(f"state must have shape {state_shape} (..., d_v, d_k), "
                             f"got {state.shape}")
        dtype = jnp.result_type(dtype, state)
    return tuple(a.astype(dtype) for a in (q, k, v, beta, state))


def delta_rule_recurrent(q: Array, k: Array, v: Array, beta: Array,
                         state: Array | None = None) -> tuple[Array, Array]:
    """The delta rule one token at a time (the reference for `delta_rule_chunkwise`).

    W_t = W_{t-1} + beta_t (v_t - W_{t-1} k_t) k_t^T,   o_t = W_t q_t   (read after write)

    Args:
      q, k: (..., T, d_k) queries and keys (any leading batch / head axes).
      v: (..., T, d_v) values.
      beta: (..., T) write strengths (in (0, 1] keeps W bounded for unit keys).
      state: (..., d_v, d_k) the memory W_0 before the first token; None means zeros.

    Returns:
      (outputs (..., T, d_v), final memory W_T (..., d_v, d_k)).
    """
    q, k, v, beta, state = _checked(q, k, v, beta, state)

    def step(w, token):
        q_t, k_t, v_t, beta_t = token
        error = v_t - jnp.einsum("...vk,...k->...v", w, k_t)
        w = w + jnp.einsum("...v,...k->...vk", beta_t[..., None] * error, k_t)
        return w, jnp.einsum("...vk,...k->...v", w, q_t)

    time_major = tuple(jnp.moveaxis(a, -2, 0) for a in (q, k, v)) + (jnp.moveaxis(beta, -1, 0),)
    final, outputs = lax.scan(step, state, time_major)
    return jnp.moveaxis(outputs, 0, -2), final


def unit_lower_inverse(m: Array) -> Array:
    """(I + A)^{-1} for strictly lower-triangular A given as ``m = I + A`` (..., n, n).

    Block substitution: with m = [[M11, 0], [M21, M22]],
    m^{-1} = [[M11^{-1}, 0], [-M22^{-1} M21 M11^{-1}, M22^{-1}]], the two diagonal blocks
    inverted together (stacked on a batch axis) down to single entries (which are 1).
    Exact up to rounding like a triangular solve, in O(n^3 / 3) matrix-product work.
    """
    n = m.shape[-1]
    if n == 1:
        return jnp.ones_like(m)
    h = n // 2
    # The halves differ in size when n is odd; invert each its own way then.
    if n % 2:
        top, bottom = unit_lower_inverse(m[..., :h, :h]), unit_lower_inverse(m[..., h:, h:])
    else:
        both = unit_lower_inverse(jnp.stack([m[..., :h, :h], m[..., h:, h:]]))
        top, bottom = both[0], both[1]
    lower = -bottom @ (m[..., h:, :h] @ top)
    zeros = jnp.zeros(m.shape[:-2] + (h, n - h), m.dtype)
    return jnp.concatenate([jnp.concatenate([top, zeros], -1),
                            jnp.concatenate([lower, bottom], -1)], -2)


def delta_rule_chunkwise(q: Array, k: Array, v: Array, beta: Array,
                         state: Array | None = None, chunk_size: int = 64
                         ) -> tuple[Array, Array]:
    """The delta rule in chunks of ``chunk_size`` tokens (the WY form; module docstring).

    Same arguments and results as `delta_rule_recurrent`, equal up to rounding; jit it
    with ``chunk_size`` static. Gradients come from JAX autodiff through the chunk
    products and the scan over chunks. A ``chunk_size`` above T uses one chunk of T.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    q, k, v, beta, state = _checked(q, k, v, beta, state)
    length = q.shape[-2]
    size = min(chunk_size, length)
    chunks = -(-length // size)
    pad = chunks * size - length
    if pad:  # beta = 0 tokens write nothing; their outputs are dropped below
        q, k, v = (jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, pad), (0, 0)]) for a in (q, k, v))
        beta = jnp.pad(beta, [(0, 0)] * (beta.ndim - 1) + [(0, pad)])

    def chunk_major(a):  # (..., chunks * size, d) -> (chunks, ..., size, d)
        a = a.reshape(a.shape[:-2] + (chunks, size, a.shape[-1]))
        return jnp.moveaxis(a, -3, 0)

    q, k, v = chunk_major(q), chunk_major(k), chunk_major(v)
    beta = chunk_major(beta[..., None])
    eye = jnp.eye(size, dtype=q.dtype)
    # Everything that depends on one chunk alone, for all chunks at once.
    keys_beta = k * beta
    gram = jnp.einsum("...ik,...jk->...ij", keys_beta, k)
    inverse = unit_lower_inverse(eye + jnp.tril(gram, -1))
    wy = inverse @ keys_beta                                  # Wy = T diag(beta) K
    ut = inverse @ (v * beta)                                 # Ut = T diag(beta) V
    attention = jnp.tril(jnp.einsum("...ik,...jk->...ij", q, k))
    # One product per chunk reads the carried W for both Wy and Q.
    reads = jnp.concatenate([wy, q], axis=-2)

    def step(w, chunk):
        reads_c, ut_c, attention_c, k_c = chunk
        read = jnp.einsum("...ck,...vk->...cv", reads_c, w)
        u_c = ut_c - read[..., :size, :]
        outputs_c = read[..., size:, :] + attention_c @ u_c
        return w + jnp.einsum("...cv,...ck->...vk", u_c, k_c), outputs_c

    final, outputs = lax.scan(step, state, (reads, ut, attention, k))
    outputs = jnp.moveaxis(outputs, 0, -3)
    outputs = outputs.reshape(outputs.shape[:-3] + (chunks * size, outputs.shape[-1]))
    return outputs[..., :length, :], final
