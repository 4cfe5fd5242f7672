"""The one plastic lifetime: its fused storage layouts against ``rule.update`` on dense
weights and against a plain reference lifetime, and chunked population evaluation
(`plastix.batching`) against vmap."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import batching, plastic, rules

N_HIDDEN, VOCAB, BATCH, LENGTH = 12, 7, 3, 9
ALL_ABCD = plastic.PlasticRNN(
    vocab_size=VOCAB, hidden_size=N_HIDDEN, granularity="synapse", readout_post="prediction",
    layer_rules=tuple((layer, "ABCD_lr") for layer in plastic.LAYERS))


def reference_lifetime(coeffs, weights, tokens):
    """The all-ABCD_lr network written straightforwardly: one sequence, scan over time,
    ``rule.update`` on each matrix, vmapped over the member's sequences."""
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


def random_params(net, seed, scale=0.3):
    """The net's evolvable parameters filled with N(0, scale) (NumPy: no compiled PRNG)."""
    rng = np.random.default_rng(seed)
    params = plastic.init_params(net, jax.random.key(0))
    return jax.tree.map(lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), jnp.float32),
                        params)


def random_data(net, seed):
    """Initial weights of BATCH lifetimes and their token windows."""
    rng = np.random.default_rng(seed)
    w0 = {layer: jnp.asarray(rng.uniform(-0.1, 0.1, (BATCH,) + shape), jnp.float32)
          for layer, shape in net.weight_shapes().items()}
    tokens = rng.integers(0, VOCAB, (BATCH, LENGTH), dtype=np.int32)
    draws = plastic.LifetimeDraws(w0, jax.random.split(jax.random.key(seed), BATCH))
    return draws, tokens


def run(net, params, draws, tokens, dense=False, mask=None):
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    mask = np.ones(inputs.shape, np.float32) if mask is None else mask
    fn = jax.jit(lambda p, d: plastic.run_lifetimes(net, p, d, inputs, targets, mask,
                                                    emit="logits", dense=dense))
    with jax.default_matmul_precision("highest"):
        return fn(params, draws)


def assert_same_lifetimes(a, b, tol=1e-5):
    (logits_a, (_, end_a)), (logits_b, (_, end_b)) = a, b
    np.testing.assert_allclose(logits_a, logits_b, rtol=tol, atol=tol)
    for layer in plastic.LAYERS:
        np.testing.assert_allclose(end_a[layer], end_b[layer], rtol=tol, atol=tol)


@pytest.mark.parametrize("seed", [0, 1])
def test_fused_lifetime_matches_plain_reference(seed):
    params = random_params(ALL_ABCD, seed)
    draws, tokens = random_data(ALL_ABCD, seed)
    logits, (w_start, w_end) = run(ALL_ABCD, params, draws, tokens)
    with jax.default_matmul_precision("highest"):
        ref_nll, ref_end = jax.jit(reference_lifetime)(params["coeffs"], draws.w0, tokens)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(nll, ref_nll, rtol=1e-5, atol=1e-5)
    for layer, shape in ALL_ABCD.weight_shapes().items():
        assert w_end[layer].shape == (BATCH,) + shape
        np.testing.assert_allclose(w_end[layer], ref_end[layer], rtol=1e-5, atol=1e-5)


FUSABLE = {
    "all ABCD_lr, per synapse": ALL_ABCD,
    "ABC / AD_lr / ABCD_lr_D_in_and_out, readout bias": dataclasses.replace(
        ALL_ABCD, granularity="post", readout_bias=True,
        layer_rules=(("in", "ABC"), ("rec", "AD_lr"), ("out", "ABCD_lr_D_in_and_out"))),
    "shared A, readout only": dataclasses.replace(
        ALL_ABCD, granularity="shared", layer_rules=(("out", "A"),)),
}
MIXED = {
    "fused input, oja recurrent, delta readout": dataclasses.replace(
        ALL_ABCD, readout_post="auto",
        layer_rules=(("in", "ABCD_lr"), ("rec", "oja"), ("out", "delta"))),
    "fused readout under reward-modulated hebb": dataclasses.replace(
        ALL_ABCD, modulation="reward",
        layer_rules=(("rec", rules.modulated(rules.hebb())), ("out", "ABCD_lr_D_out"))),
    "maxabs and noise: fused but not lazy": dataclasses.replace(
        ALL_ABCD, normalise="maxabs", weight_noise=0.01),
}


@pytest.mark.parametrize("case", sorted(FUSABLE) + sorted(MIXED))
def test_fused_layouts_equal_rule_update_on_dense_weights(case):
    """Same logits and final weights whichever storage the lifetime picks."""
    net = {**FUSABLE, **MIXED}[case]
    params = random_params(net, 3)
    draws, tokens = random_data(net, 4)
    assert_same_lifetimes(run(net, params, draws, tokens), run(net, params, draws, tokens, dense=True))


def test_lifetime_picks_the_fused_layouts():
    coeffs = plastic.rule_coeffs(ALL_ABCD, plastic.init_params(ALL_ABCD, jax.random.key(0)))
    names = {layer: plastic.synapses_for(ALL_ABCD, layer, coeffs[layer]).name
             for layer in plastic.LAYERS}
    assert names == {"in": "one_hot_columns", "rec": "outer_affine", "out": "outer_affine"}
    mixed = MIXED["fused input, oja recurrent, delta readout"]
    coeffs = plastic.rule_coeffs(mixed, plastic.init_params(mixed, jax.random.key(0)))
    assert plastic.synapses_for(mixed, "rec", coeffs["rec"]).name == "dense"
    frozen = dataclasses.replace(ALL_ABCD, layer_rules=())
    assert plastic.synapses_for(frozen, "in", None).name == "fixed_columns"


def test_unscored_last_step_does_not_teach_the_readout():
    """The readout's last update is dropped exactly where the last step has no teacher."""
    net = FUSABLE["all ABCD_lr, per synapse"]
    params = random_params(net, 5)
    draws, tokens = random_data(net, 6)
    mask = np.ones((BATCH, LENGTH - 1), np.float32)
    mask[0, -1] = 0.0  # sequence 0: last step unscored and nothing after it
    _, (_, w_end) = run(net, params, draws, tokens, mask=mask)
    short, (_, w_short) = run(net, params, draws, tokens[:, :-1])
    np.testing.assert_allclose(w_end["out"][0], w_short["out"][0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(w_end["out"][1], w_short["out"][1])
    # The hidden layers still learn on that step.
    assert not np.allclose(w_end["rec"][0], w_short["rec"][0])


def test_hebbian_mask_on_a_layer_changes_the_output():
    """A mask rule's pruning reaches the forward pass (its effective weights)."""
    masked = dataclasses.replace(ALL_ABCD, layer_rules=(("rec", "hebbian_mask"),))
    params = plastic.init_params(masked, jax.random.key(0))
    params["coeffs"]["rec"]["rate"] = jnp.asarray(1.5)  # prunes after one disagreement
    draws, tokens = random_data(masked, 7)
    frozen = dataclasses.replace(masked, layer_rules=())
    logits, (_, w_end) = run(masked, params, draws, tokens)
    frozen_logits, _ = run(frozen, {"coeffs": {}}, draws, tokens)
    np.testing.assert_allclose(logits[:, :2], frozen_logits[:, :2], rtol=1e-6)  # nothing pruned yet
    assert not np.allclose(logits, frozen_logits)
    np.testing.assert_array_equal(w_end["rec"], draws.w0["rec"])  # it prunes, never rescales


def test_shared_coefficients_broadcast_like_per_synapse_ones():
    """Coefficient granularity is a matter of shape: shared scalars broadcast too."""
    shared = dataclasses.replace(ALL_ABCD, granularity="shared")
    params = random_params(shared, 8)
    tiled = {"coeffs": {layer: {name: jnp.broadcast_to(value, shape)
                                for name, value in params["coeffs"][layer].items()}
                        for layer, shape in ALL_ABCD.weight_shapes().items()}}
    draws, tokens = random_data(shared, 9)
    assert_same_lifetimes(run(shared, params, draws, tokens), run(ALL_ABCD, tiled, draws, tokens),
                          tol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 3, 8])
def test_chunked_vmap_equals_vmap(chunk_size):
    population = 5   # 3 does not divide it: the last chunk is padded
    params = jax.tree.map(lambda *xs: jnp.stack(xs),
                          *[random_params(ALL_ABCD, 10 + i) for i in range(population)])
    draws, tokens = random_data(ALL_ABCD, 11)
    inputs, targets, mask = tokens[:, :-1], tokens[:, 1:], np.ones((BATCH, LENGTH - 1), np.float32)
    member = lambda p: plastic.mean_scores(
        plastic.lifetime_stats(ALL_ABCD, p, draws, inputs, targets, mask))[0]
    expected = jax.vmap(member)(params)
    got = jax.jit(batching.chunked_vmap(member, chunk_size))(params)
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
