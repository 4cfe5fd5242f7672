"""Tests for plastix.models: the fast-weight forms agree, layer norm is per example,
the GRU-LN gates are the right ones, and every model can fit a tiny batch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from plastix import models, tasks, train

VOCAB, SEQ_LEN, HIDDEN = 37, 11, 16


def _tokens(key, batch=4):
    return jax.random.randint(key, (batch, SEQ_LEN), 0, VOCAB)


def _fast_weight_model(form, inner_steps=2):
    return models.make_model("rnn-ln-fw", VOCAB, SEQ_LEN, HIDDEN, embed_dim=8,
                             readout_features=8, form=form, inner_steps=inner_steps)


def test_fast_weight_forms_give_same_hidden_states_and_gradients():
    tokens = _tokens(jax.random.key(1))
    explicit, attention = _fast_weight_model("explicit"), _fast_weight_model("attention")
    params = explicit.init(jax.random.key(0), tokens)

    def loss_and_hidden(model):
        def f(p):
            hidden = model.apply(p, tokens, method=models.TokenModel.hidden_states)
            return jnp.mean(jnp.sin(hidden) * jnp.arange(HIDDEN)), hidden
        return jax.jit(jax.value_and_grad(f, has_aux=True))

    (_, h_explicit), g_explicit = loss_and_hidden(explicit)(params)
    (_, h_attention), g_attention = loss_and_hidden(attention)(params)
    assert h_explicit.shape == (4, SEQ_LEN, HIDDEN)
    assert float(jnp.abs(h_explicit).max()) > 0.1  # not a trivially-zero agreement
    np.testing.assert_allclose(h_attention, h_explicit, rtol=1e-5, atol=1e-5)
    assert float(optax.tree.norm(g_explicit)) > 1e-3
    for a, e in zip(jax.tree_util.tree_leaves(g_attention), jax.tree_util.tree_leaves(g_explicit)):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-6)


def _numpy_layer_norm(z, scale, bias, eps=1e-6):
    return scale * (z - z.mean()) / np.sqrt(z.var() + eps) + bias


def test_fast_weight_cell_matches_paper_equations_in_numpy():
    """Ba et al. 2016 eqs. 1-2 by hand, S = 2 inner steps, A(0) = 0, one sequence."""
    lam, eta, steps = 0.9, 0.4, 2
    cell = models.FastWeightRNNCell(HIDDEN, SEQ_LEN, "explicit", steps, lam, eta)
    xs = np.asarray(jax.random.normal(jax.random.key(3), (SEQ_LEN, 5)))
    rnn = nn.RNN(cell)
    params = rnn.init(jax.random.key(4), jnp.asarray(xs[None]))
    hs = rnn.apply(params, jnp.asarray(xs[None]))[0]

    p = jax.tree_util.tree_map(np.asarray, params["params"]["cell"])
    w, c, b = (p["SlowTransition_0"]["recurrent"]["kernel"].T,
               p["SlowTransition_0"]["input"]["kernel"].T, p["SlowTransition_0"]["input"]["bias"])
    ln = p["LayerNorm_0"]
    # The initialisation, not the equations, is what made the model trainable (models.py):
    np.testing.assert_allclose(w, 0.05 * np.eye(HIDDEN))
    np.testing.assert_allclose(ln["scale"], np.sqrt(2.0 / (eta * HIDDEN)), rtol=1e-6)
    h, a = np.zeros(HIDDEN), np.zeros((HIDDEN, HIDDEN))
    for t, x in enumerate(xs):
        z = w @ h + c @ x + b
        h_s = np.maximum(z, 0.0)
        for _ in range(steps):
            h_s = np.maximum(_numpy_layer_norm(z + a @ h_s, ln["scale"], ln["bias"]), 0.0)
        h = h_s
        a = lam * a + eta * np.outer(h, h)
        np.testing.assert_allclose(hs[t], h, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["rnn-ln", "rnn-ln-fw", "gru-ln", "delta-fw"])
def test_layer_norm_is_per_example_not_over_batch(name):
    """A sequence's hidden states must not depend on which other sequences share its batch
    (the bug of layer norm over the batch axis)."""
    model = models.make_model(name, VOCAB, SEQ_LEN, HIDDEN, embed_dim=8, readout_features=0)
    tokens = _tokens(jax.random.key(5), batch=6)
    params = model.init(jax.random.key(0), tokens)
    hidden = jax.jit(lambda t: model.apply(params, t, method=models.TokenModel.hidden_states))
    other_company = jnp.concatenate([tokens[:1], 1 + tokens[1:] % (VOCAB - 1)])
    np.testing.assert_array_equal(hidden(tokens)[0], hidden(other_company)[0])


def test_feature_layer_norm_normalises_each_row_over_features():
    z = jax.random.normal(jax.random.key(6), (5, 32)) * jnp.arange(1.0, 6.0)[:, None] + 3.0
    ln = models.feature_layer_norm()
    out = ln.apply(ln.init(jax.random.key(0), z), z)
    np.testing.assert_allclose(out.mean(axis=-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=-1), 1.0, atol=1e-3)
    assert float(jnp.abs(out.mean(axis=0)).max()) > 0.05  # columns are NOT normalised


def test_gru_ln_update_gate_uses_its_own_layer_norm():
    """u = sigmoid(LN_u[...]): saturating LN_u's bias to +20 makes u = 1, so h' = h whatever
    the reset gate does (the TF reference computed u from LN(reset pre-activation))."""
    cell = models.LayerNormGRUCell(HIDDEN)
    h = jax.random.normal(jax.random.key(7), (3, HIDDEN))
    x = jax.random.normal(jax.random.key(8), (3, 5))
    params = cell.init(jax.random.key(9), h, x)
    params["params"]["ln_update"]["bias"] = jnp.full((HIDDEN,), 20.0)
    params["params"]["ln_reset"]["bias"] = jnp.full((HIDDEN,), -20.0)
    apply = jax.jit(cell.apply)
    h_next, _ = apply(params, h, x)
    np.testing.assert_allclose(h_next, h, atol=1e-6)
    params["params"]["ln_update"]["bias"] = jnp.full((HIDDEN,), -20.0)
    h_next, _ = apply(params, h, x)
    assert float(jnp.abs(h_next - h).max()) > 0.1


def test_attention_form_rejects_sequences_longer_than_its_buffer():
    model = _fast_weight_model("attention")
    params = model.init(jax.random.key(0), _tokens(jax.random.key(0)))
    with pytest.raises(ValueError, match="max_len"):
        model.apply(params, jnp.zeros((1, SEQ_LEN + 1), jnp.int32))


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(ValueError, match="rnn-ln-fw"):
        models.make_cell("transformer", 8, 8)


@pytest.mark.slow  # trains each model to a criterion; the cells' equations are tested step by step above
@pytest.mark.parametrize("name", sorted(models.CELLS))
def test_each_model_overfits_a_tiny_batch(name):
    task = tasks.get("assoc_retrieval")
    batch = task.sample(jax.random.key(0), 4)
    model = models.make_model(name, task.vocab_size, task.seq_len, HIDDEN, embed_dim=16,
                              readout_features=16)
    optimizer = optax.adam(1e-2)
    state = train.init_state(jax.random.key(1), model, task.seq_len, optimizer)
    update = train.make_update(model, optimizer)

    @jax.jit
    def run(state):
        return jax.lax.scan(lambda s, _: update(s, batch), state, length=150)

    _, metrics = run(state)
    first, last = float(metrics["loss"][0]), float(metrics["loss"][-1])
    assert last < first / 10, (name, first, last)


def test_fast_weight_init_puts_memory_read_on_the_input_scale():
    """At initialisation |A(t) h| must not drown |W h(t) + C x(t)| (Ba et al. 2016 with
    g = 1 gave |A h| ~ 3H |h| and all states of a sequence pointing one way)."""
    model = models.make_model("rnn-ln-fw", VOCAB, 11, 50, form="attention")
    tokens = _tokens(jax.random.key(11), batch=64)
    params = model.init(jax.random.key(0), tokens)
    h = model.apply(params, tokens, method=models.TokenModel.hidden_states)
    cell = params["params"]["cell"]
    gain = float(cell["LayerNorm_0"]["scale"][0])
    assert abs(gain - (2.0 / (0.5 * 50)) ** 0.5) < 1e-6
    # eta <h, h> ~ eta g^2 H / 2 ~ 1: one stored state is read back at about its own size.
    sq_norm = jnp.sum(h[:, -1] ** 2, axis=-1)
    assert 0.3 < float(jnp.mean(0.5 * sq_norm)) < 3.0


def test_attention_store_forms_the_explicit_fast_matrix():
    """The attention form is another store of the same fast_weight_ba layer: the matrix it
    forms on demand equals the explicit store's A after the same writes."""
    explicit = models.explicit_fast_weights(decay=0.9, fast_lr=0.5)
    attention = models.attention_fast_weights(decay=0.9, fast_lr=0.5, max_len=6)
    states = np.random.default_rng(0).standard_normal((5, 2, 4)).astype(np.float32)
    stores = [store.init(jnp.zeros((2, 4, 4))) for store in (explicit, attention)]
    for h in states:
        stores = [s.learn(st, h, h, None, None, None) for s, st in zip((explicit, attention), stores)]
    np.testing.assert_allclose(attention.weights(stores[1], None), explicit.weights(stores[0], None),
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ image classifiers


@pytest.mark.parametrize("name", sorted(models.CLASSIFIERS))
def test_classifiers_map_each_step_to_logits_and_fit_a_tiny_batch(name):
    task = tasks.get("images")
    batch = task.sample(jax.random.key(0), 8)
    hyper = {"channels": (4, 4)} if name == "cnn" else {}
    model = models.make_classifier(name, 10, hidden=16, **hyper)
    optimizer = optax.adam(1e-2)
    state = train.init_state(jax.random.key(1), model, train.example_inputs(task), optimizer)
    assert model.apply(state.params, batch[0]).shape == (8, 1, 10)
    assert state.params["params"]["logits"]["kernel"].shape == (16, 10)
    update = train.make_update(model, optimizer)

    @jax.jit
    def run(state):
        return jax.lax.scan(lambda s, _: update(s, batch), state, length=60)

    _, metrics = run(state)
    assert float(metrics["accuracy"][-1]) == 1.0


def test_unknown_classifier_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown classifier 'resnet'.*'cnn', 'mlp'"):
        models.make_classifier("resnet", 10)
    with pytest.raises(ValueError, match="square images"):
        model = models.make_classifier("cnn", 10)
        model.init(jax.random.key(0), jnp.zeros((1, 1, 60)))
