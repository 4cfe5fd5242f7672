"""The chunkwise delta rule equals the per-token recurrence: outputs, final memory and
gradients, in float32 and float64, for every way a sequence can fall into chunks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import delta_rule, models, rules


def _inputs(key, lead, length, d_k, d_v, dtype=jnp.float32, with_state=True):
    """Unit keys and queries (as models feed them), beta in (0, 1), a nonzero W_0."""
    kq, kk, kv, kb, ks = jax.random.split(key, 5)
    unit = lambda a: a / jnp.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    q = unit(jax.random.normal(kq, lead + (length, d_k), dtype))
    k = unit(jax.random.normal(kk, lead + (length, d_k), dtype))
    v = jax.random.normal(kv, lead + (length, d_v), dtype)
    beta = jax.random.uniform(kb, lead + (length,), dtype, 0.05, 0.95)
    state = 0.3 * jax.random.normal(ks, lead + (d_v, d_k), dtype) if with_state else None
    return q, k, v, beta, state


def _loss(form, cotangent, final_cotangent, **kw):
    """A scalar that weighs every output and every entry of the final memory."""
    def loss(q, k, v, beta, state):
        out, final = form(q, k, v, beta, state, **kw)
        return jnp.sum(out * cotangent) + jnp.sum(final * final_cotangent)
    return loss


def _max_rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def _check_agreement(lead, length, d_k, d_v, chunk_size, dtype, tol, seed=0):
    q, k, v, beta, state = _inputs(jax.random.key(seed), lead, length, d_k, d_v, dtype)
    want_out, want_final = jax.jit(delta_rule.delta_rule_recurrent)(q, k, v, beta, state)
    chunkwise = jax.jit(delta_rule.delta_rule_chunkwise, static_argnames="chunk_size")
    out, final = chunkwise(q, k, v, beta, state, chunk_size=chunk_size)
    assert out.shape == lead + (length, d_v) and final.shape == lead + (d_v, d_k)
    assert out.dtype == dtype and final.dtype == dtype
    assert _max_rel_err(out, want_out) < tol
    assert _max_rel_err(final, want_final) < tol

    c_out = jax.random.normal(jax.random.key(seed + 1), out.shape, dtype)
    c_final = jax.random.normal(jax.random.key(seed + 2), final.shape, dtype)
    args = (q, k, v, beta, state)
    grad = lambda form, **kw: jax.jit(jax.grad(  # noqa: E731
        _loss(form, c_out, c_final, **kw), argnums=(0, 1, 2, 3, 4)))(*args)
    want = grad(delta_rule.delta_rule_recurrent)
    got = grad(delta_rule.delta_rule_chunkwise, chunk_size=chunk_size)
    for name, g, w in zip(("q", "k", "v", "beta", "state"), got, want):
        assert _max_rel_err(g, w) < tol, (name, _max_rel_err(g, w))


# (leading axes, T, d_k, d_v, chunk_size): T a multiple of the chunk and not, chunks of one
# token, one chunk longer than the sequence, no leading axes, batch and head axes.
CASES = [
    ((), 16, 8, 8, 4),
    ((3,), 37, 8, 5, 8),
    ((2, 3), 20, 6, 10, 7),
    ((2,), 9, 4, 4, 1),
    ((2, 2), 11, 8, 8, 64),
    ((1,), 1, 3, 2, 4),
]


@pytest.mark.parametrize("lead, length, d_k, d_v, chunk_size", CASES)
def test_chunkwise_equals_recurrent_in_float32(lead, length, d_k, d_v, chunk_size):
    _check_agreement(lead, length, d_k, d_v, chunk_size, jnp.float32, 1e-5)


@pytest.mark.parametrize("lead, length, d_k, d_v, chunk_size", CASES[:3] + CASES[4:5])
def test_chunkwise_equals_recurrent_in_float64(lead, length, d_k, d_v, chunk_size):
    with jax.enable_x64(True):
        _check_agreement(lead, length, d_k, d_v, chunk_size, jnp.float64, 1e-10)


def test_a_long_sequence_in_many_chunks_stays_exact():
    _check_agreement((2, 2), 300, 16, 16, 32, jnp.float32, 1e-5, seed=3)


def test_recurrent_form_is_the_fast_weight_delta_rule_read_after_the_write():
    """One token at a time through `rules.fast_weight_delta` (W += beta (v - W k) k^T),
    read o_t = W_t q_t after the write, as `models.DeltaRNNCell` does."""
    q, k, v, beta, state = _inputs(jax.random.key(4), (), 7, 5, 3)
    rule = rules.get("fast_weight_delta")
    coeffs = {"beta": jnp.asarray(1.0)}
    w, outs = state, []
    for t in range(7):
        dw, _ = rule.update(coeffs, None, w, k[t], v[t], beta[t])
        w = w + dw
        outs.append(w @ q[t])
    out, final = delta_rule.delta_rule_recurrent(q, k, v, beta, state)
    np.testing.assert_allclose(out, np.stack(outs), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(final, w, rtol=1e-6, atol=1e-6)


def test_missing_state_means_an_empty_memory():
    q, k, v, beta, _ = _inputs(jax.random.key(5), (2,), 10, 4, 3, with_state=False)
    zeros = jnp.zeros((2, 3, 4))
    for form in (delta_rule.delta_rule_recurrent, delta_rule.delta_rule_chunkwise):
        a, b = form(q, k, v, beta), form(q, k, v, beta, zeros)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_beta_zero_tokens_leave_the_memory_unchanged():
    q, k, v, beta, state = _inputs(jax.random.key(6), (2,), 12, 4, 4)
    _, final = delta_rule.delta_rule_chunkwise(q, k, v, jnp.zeros_like(beta), state,
                                               chunk_size=5)
    np.testing.assert_allclose(final, state, atol=1e-7)


def test_unit_lower_inverse_inverts():
    for n in (1, 2, 5, 8, 13):
        a = jnp.tril(jax.random.normal(jax.random.key(n), (3, n, n)), -1)
        m = jnp.eye(n) + 0.5 * a
        np.testing.assert_allclose(jax.jit(delta_rule.unit_lower_inverse)(m) @ m,
                                   np.broadcast_to(np.eye(n), (3, n, n)), atol=1e-5)


BAD = [
    (dict(k=np.ones((2, 5, 3))), "k must have q's shape"),
    (dict(v=np.ones((2, 4, 3))), "v must have shape"),
    (dict(v=np.ones((5, 3))), "v must have shape"),
    (dict(beta=np.ones((2, 5, 1))), "beta must have shape"),
    (dict(q=np.ones(4), k=np.ones(4)), "q must have shape"),
    (dict(state=np.ones((2, 3, 3))), "state must have shape"),
    (dict(state=np.ones((2, 3, 4), np.int32)), "state must be a floating array"),
    (dict(q=np.ones((2, 5, 4), np.int32)), "q must be a floating array"),
    (dict(q=np.ones((2, 0, 4)), k=np.ones((2, 0, 4)), v=np.ones((2, 0, 3)),
          beta=np.ones((2, 0))), "empty"),
]


@pytest.mark.parametrize("bad, named", BAD, ids=[n for _, n in BAD])
def test_bad_shapes_and_dtypes_are_refused_by_name(bad, named):
    args = dict(q=np.ones((2, 5, 4)), k=np.ones((2, 5, 4)), v=np.ones((2, 5, 3)),
                beta=np.ones((2, 5)), state=None)
    args.update(bad)
    for form in (delta_rule.delta_rule_recurrent, delta_rule.delta_rule_chunkwise):
        with pytest.raises(ValueError, match=named):
            form(**args)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.0, True])
def test_bad_chunk_size_is_refused(chunk_size):
    q = np.ones((5, 4))
    with pytest.raises(ValueError, match="chunk_size"):
        delta_rule.delta_rule_chunkwise(q, q, q, np.ones(5), chunk_size=chunk_size)


# --- the DeltaNet token model ------------------------------------------------------------------


def _deltanet(form, chunk_size=4):
    return models.make_model("deltanet", 9, 11, 8, embed_dim=6, readout_features=0,
                             form=form, chunk_size=chunk_size)


def test_deltanet_model_gives_the_same_logits_and_gradients_in_both_forms():
    tokens = jax.random.randint(jax.random.key(7), (3, 11), 0, 9)
    chunkwise, recurrent = _deltanet("chunkwise"), _deltanet("recurrent")
    params = chunkwise.init(jax.random.key(0), tokens)

    def loss(model):
        return jax.jit(jax.value_and_grad(
            lambda p: jnp.mean(jax.nn.log_softmax(model.apply(p, tokens))[..., 0])))

    (a, grad_a), (b, grad_b) = loss(chunkwise)(params), loss(recurrent)(params)
    np.testing.assert_allclose(chunkwise.apply(params, tokens), recurrent.apply(params, tokens),
                               atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-6)
    for x, y in zip(jax.tree.leaves(grad_a), jax.tree.leaves(grad_b)):
        np.testing.assert_allclose(x, y, atol=1e-5)


def test_deltanet_output_at_t_ignores_later_tokens():
    model = _deltanet("chunkwise")
    tokens = jax.random.randint(jax.random.key(8), (2, 11), 0, 9)
    params = model.init(jax.random.key(0), tokens)
    changed = tokens.at[:, 6:].set((tokens[:, 6:] + 1) % 9)
    a, b = model.apply(params, tokens), model.apply(params, changed)
    np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert float(jnp.abs(a[:, 6:] - b[:, 6:]).max()) > 1e-3


def test_deltanet_unknown_form_is_refused():
    model = _deltanet("parallel")
    with pytest.raises(ValueError, match="form must be one of"):
        model.init(jax.random.key(0), jnp.zeros((1, 11), jnp.int32))
