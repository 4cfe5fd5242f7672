"""The optimised lifetime (`plastix.kernels`) against a plain reference built from
`plastix.rules`, and chunked population evaluation (`plastix.batching`) against vmap."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import batching, kernels, rules

N_HIDDEN, VOCAB, BATCH, LENGTH = 12, 7, 3, 9
SHAPES = {"in": (N_HIDDEN, VOCAB), "rec": (N_HIDDEN, N_HIDDEN), "out": (VOCAB, N_HIDDEN)}


def reference_lifetime(coeffs, weights, tokens):
    """The workload written straightforwardly: one sequence, scan over time, ``rule.update``
    on each matrix, vmapped over the member's sequences."""
    rule = rules.ABCD_lr()

    def one_sequence(w, seq):
        def step(carry, xs):
            w, h_prev = carry
            token, target = xs
            x = jax.nn.one_hot(token, VOCAB)
            h = jnp.tanh(w["in"] @ x + w["rec"] @ h_prev)
            log_y = jax.nn.log_softmax(w["out"] @ h)
            pre_post = {"in": (x, h), "rec": (h_prev, h), "out": (h, jnp.exp(log_y))}
            new_w = {}
            for layer, (pre, post) in pre_post.items():
                dw, _ = rule.update(coeffs[layer], (), w[layer], pre, post, None)
                new_w[layer] = w[layer] + dw
            return (new_w, h), -log_y[target]

        (w, _), nll = jax.lax.scan(step, (w, jnp.zeros(N_HIDDEN)), (seq[:-1], seq[1:]))
        return nll, w

    return jax.vmap(one_sequence)(weights, tokens)


def random_member(seed, scale=0.3):
    """Per-synapse ABCD_lr coefficients, per-sequence initial weights and tokens.

    Drawn with NumPy: test data needs no compiled PRNG.
    """
    rng = np.random.default_rng(seed)
    rule = rules.ABCD_lr()
    coeffs = {layer: {name: scale * rng.standard_normal(value.shape, np.float32)
                      for name, value in rules.init_coeffs(rule, shape, "synapse").items()}
              for layer, shape in SHAPES.items()}
    weights = {layer: rng.uniform(-0.1, 0.1, (BATCH,) + shape).astype(np.float32)
               for layer, shape in SHAPES.items()}
    tokens = rng.integers(0, VOCAB, (BATCH, LENGTH), dtype=np.int32)
    return coeffs, weights, tokens


def random_population(size, seed):
    members = [random_member(seed * 1000 + i) for i in range(size)]
    return jax.tree.map(lambda *xs: np.stack(xs), *members)


@pytest.mark.parametrize("seed", [0, 1])
def test_lifetime_matches_reference(seed):
    coeffs, weights, tokens = random_member(seed)
    with jax.default_matmul_precision("highest"):
        nll, final = jax.jit(kernels.lifetime)(coeffs, weights, tokens)
        ref_nll, ref_final = jax.jit(reference_lifetime)(coeffs, weights, tokens)
    assert nll.shape == (BATCH, LENGTH - 1)
    np.testing.assert_allclose(nll, ref_nll, rtol=1e-5, atol=1e-5)
    for layer, shape in SHAPES.items():
        assert final[layer].shape == (BATCH,) + shape
        np.testing.assert_allclose(final[layer], ref_final[layer], rtol=1e-5, atol=1e-5)


def test_lifetime_shared_initial_weights_broadcast():
    coeffs, weights, tokens = random_member(2)
    shared = {layer: w[0] for layer, w in weights.items()}
    tiled = {layer: jnp.broadcast_to(w, weights[layer].shape) for layer, w in shared.items()}
    nll_shared, _ = kernels.lifetime(coeffs, shared, tokens)
    nll_tiled, _ = kernels.lifetime(coeffs, tiled, tokens)
    np.testing.assert_array_equal(nll_shared, nll_tiled)


def test_lifetime_accepts_shared_coefficients():
    """Coefficient granularity is a matter of shape: shared scalars broadcast too."""
    _, weights, tokens = random_member(3)
    rule = rules.ABCD_lr()
    shared = {layer: rules.init_coeffs(rule, shape, "shared") for layer, shape in SHAPES.items()}
    per_synapse = {layer: rules.init_coeffs(rule, shape, "synapse")
                   for layer, shape in SHAPES.items()}
    with jax.default_matmul_precision("highest"):
        a, _ = kernels.lifetime(shared, weights, tokens)
        b, _ = kernels.lifetime(per_synapse, weights, tokens)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 3, 8])
def test_chunked_vmap_equals_vmap(chunk_size):
    population = 5   # 3 does not divide it: the last chunk is padded
    coeffs, weights, tokens = random_population(population, seed=4)
    member = lambda c, w, tok: kernels.lifetime(c, w, tok)[0].mean()
    expected = jax.vmap(member)(coeffs, weights, tokens)
    got = jax.jit(batching.chunked_vmap(member, chunk_size))(coeffs, weights, tokens)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_chunked_vmap_pytree_outputs_and_order():
    xs = {"a": jnp.arange(7.0), "b": jnp.arange(14.0).reshape(7, 2)}
    fn = lambda x: (x["a"] * 2, x["b"].sum())
    got = batching.chunked_vmap(fn, 3)(xs)
    np.testing.assert_array_equal(got[0], xs["a"] * 2)
    np.testing.assert_array_equal(got[1], xs["b"].sum(axis=1))


def _matrix_energy(x):
    """A cheap per-member function whose working set grows with the member's size."""
    return jnp.sum(jnp.tanh(x @ x.T) ** 2)


def test_chunk_size_for_budget_is_monotone_and_bounded():
    cost = batching.member_memory(_matrix_energy, jax.ShapeDtypeStruct((64, 64), jnp.float32))
    assert cost.per_member >= 64 * 64 * 4   # at least the member's own argument
    sizes = [batching.chunk_size_for_budget(cost, budget, population=64)
             for budget in (0, cost.fixed + 3 * cost.per_member, 10**12)]
    assert sizes == [1, 3, 64]
    assert batching.chunk_size_for_budget(cost, 10**12, population=64, multiple_of=3) == 63


def test_population_map_under_budget_equals_vmap():
    xs = np.random.default_rng(6).standard_normal((7, 64, 64), np.float32)
    cost = batching.member_memory(_matrix_energy, xs[0])
    budget = xs.nbytes + cost.fixed + 2 * cost.per_member   # the inputs, then 2 members
    evaluate = batching.population_map(_matrix_energy, memory_budget=budget)
    np.testing.assert_allclose(jax.jit(evaluate)(xs), jax.vmap(_matrix_energy)(xs), rtol=1e-6)
