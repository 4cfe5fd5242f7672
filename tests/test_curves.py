"""In-lifetime learning curves (`plastix.curves`): chunked long lifetimes against one scan,
per-position scores against the lifetime totals, and the weight probes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import curves, plastic, tasks

VOCAB, HIDDEN, BATCH, LENGTH = 9, 6, 3, 40
FIRST_USER = plastic.PlasticRNN(
    vocab_size=VOCAB, hidden_size=HIDDEN, readout_bias=True, modulation="reward",
    layer_rules=(("in", "modulated(oja)"), ("rec", "modulated(ABCD_lr)"),
                 ("out", "multilinear_mod")),
    normalise="l2", normalise_layers=("in", "rec"), weight_noise=0.02)
ONE_HOT_COLUMNS = plastic.PlasticRNN(  # the fused column store of W_in, learned initial weights
    vocab_size=VOCAB, hidden_size=HIDDEN, evolve_init=True,
    layer_rules=(("in", "ABCD_lr"), ("out", "ABCD_lr_D_out")))
RLS_READOUT = plastic.PlasticRNN(  # a rule state (P) carried from chunk to chunk
    vocab_size=VOCAB, hidden_size=HIDDEN, readout_bias=True,
    layer_rules=(("out", "annealed(rls(alpha=0.5))"),))
NETS = {"first user": FIRST_USER, "one-hot columns": ONE_HOT_COLUMNS,
        "rls readout": RLS_READOUT}


def setup(net, length=LENGTH):
    params = plastic.init_params(net, jax.random.key(0))
    params["coeffs"] = jax.tree.map(lambda c: c + 0.05, params["coeffs"])
    batch = tasks.random_tokens(VOCAB, length).sample(jax.random.key(1), BATCH)
    return params, batch


@pytest.mark.parametrize("name, chunk", [("first user", 8), ("first user", 100),
                                         ("one-hot columns", 7), ("rls readout", 9)])
def test_chunked_lifetime_equals_one_scan(name, chunk):
    net = NETS[name]
    params, batch = setup(net)
    key = jax.random.key(2)
    (nll, correct), _ = plastic.run_lifetimes(
        net, params, plastic.lifetime_draws(net, key, BATCH), *batch)
    curve = curves.learning_curve(net, params, key, *batch, chunk=chunk)
    np.testing.assert_allclose(curve.nll, nll, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(curve.correct, correct)
    assert curve.steps[-1] == LENGTH and len(curve.steps) == -(-LENGTH // chunk)


def test_an_rls_readout_learns_a_repeating_sequence_within_one_lifetime():
    """Random fixed hidden weights, the readout learning by RLS alone: a period-4 sequence
    is predicted far better by its end than by chance, and better than at its start."""
    net = plastic.PlasticRNN(vocab_size=VOCAB, hidden_size=16, readout_bias=True,
                             init_scale=0.5, layer_rules=(("out", "rls(alpha=0.1)"),))
    params = plastic.init_params(net, jax.random.key(0))
    # Above RLS's own eta = 1: a softmax readout's logits need larger steps than a linear one.
    params["coeffs"]["out"]["eta"] = jnp.asarray(5.0)
    tokens = np.tile([3, 1, 4, 1, 5, 2, 6, 1], 25)[None]      # the next token: period 8
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    curve = curves.learning_curve(net, params, jax.random.key(1), inputs, targets,
                                  np.ones_like(inputs, bool), chunk=50)
    start, end = curve.nll[0, :8].mean(), curve.nll[0, -40:].mean()
    assert end < 0.1 * np.log(VOCAB) and end < 0.2 * start, (start, end)


def test_a_long_lifetime_is_its_chunks_joined():
    """Two chunks of 300 steps give the 600-step lifetime that 10 chunks of 60 give."""
    params, batch = setup(FIRST_USER, length=600)
    key = jax.random.key(3)
    coarse = curves.learning_curve(FIRST_USER, params, key, *batch, chunk=300)
    fine = curves.learning_curve(FIRST_USER, params, key, *batch, chunk=60)
    np.testing.assert_allclose(coarse.nll, fine.nll, rtol=1e-5, atol=1e-5)
    for layer in FIRST_USER.plastic_layers:
        np.testing.assert_allclose(coarse.weight_norm[layer], fine.weight_norm[layer][4::5],
                                   rtol=1e-5)


def test_per_position_nll_divides_the_lifetime_total():
    net = FIRST_USER
    params, (inputs, targets, mask) = setup(net)
    mask = mask.at[:, :5].set(0.0)  # unscored positions count in neither sum
    key = jax.random.key(4)
    stats = plastic.lifetime_stats(net, params, plastic.lifetime_draws(net, key, BATCH),
                                   inputs, targets, mask)
    curve = curves.learning_curve(net, params, key, inputs, targets, mask, chunk=8)
    scored = np.asarray(mask) > 0
    np.testing.assert_allclose(np.sum(curve.nll * scored), stats.nll, rtol=1e-5)
    per_position = (curve.nll * scored).sum(0) / np.maximum(scored.sum(0), 1)
    np.testing.assert_allclose(
        np.sum(per_position * scored.sum(0)) / scored.sum(), stats.nll / stats.count, rtol=1e-5)


def test_probes_are_the_weights_of_the_lifetime():
    net = FIRST_USER
    params, batch = setup(net)
    key = jax.random.key(5)
    _, (w_start, w_end) = plastic.run_lifetimes(
        net, params, plastic.lifetime_draws(net, key, BATCH), *batch)
    curve = curves.learning_curve(net, params, key, *batch, chunk=100, probe_token=4)
    frobenius = lambda w: np.sqrt(np.sum(np.asarray(w) ** 2, axis=(1, 2)))
    for layer in net.plastic_layers:
        np.testing.assert_allclose(curve.weight_norm[layer][-1], frobenius(w_end[layer]).mean(),
                                   rtol=1e-5)
        np.testing.assert_allclose(
            curve.update_rate[layer][-1],
            frobenius(w_end[layer] - w_start[layer]).mean() / LENGTH, rtol=1e-4)
    np.testing.assert_allclose(curve.readout_row[-1], w_end["out"][0, 4], rtol=1e-5)
    # Normalised hidden rows stay unit length; the free readout does not.
    np.testing.assert_allclose(np.linalg.norm(w_end["rec"], axis=-1), 1.0, rtol=1e-5)
    assert not np.allclose(np.linalg.norm(w_end["out"], axis=-1), 1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"chunk": 0}, "chunk must be >= 1"),
    ({"probe_token": VOCAB}, "probe_token must be a token id"),
])
def test_bad_arguments_are_named(kwargs, message):
    params, batch = setup(FIRST_USER)
    with pytest.raises(ValueError, match=message):
        curves.learning_curve(FIRST_USER, params, jax.random.key(0), *batch, **kwargs)


@pytest.mark.parametrize("length", [2, 10, 100, 10_000])
def test_log_bins_cover_every_position_once(length):
    edges = curves.log_bins(length)
    assert edges[0] == 0 and edges[-1] == length and np.all(np.diff(edges) >= 1)
    values = np.random.default_rng(0).normal(size=length)
    means = curves.binned(values, edges)
    np.testing.assert_allclose(np.sum(means * np.diff(edges)), values.sum(), rtol=1e-9)
    np.testing.assert_allclose(curves.binned(np.full(length, 3.0), edges), 3.0)
