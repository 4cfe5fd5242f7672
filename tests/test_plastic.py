"""The plastic RNN: causality of the teaching signal, learning, shapes and bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import plastic, tasks

TASK = tasks.get("assoc_retrieval", num_pairs=3)
NET = plastic.PlasticRNN(vocab_size=TASK.vocab_size, hidden_size=16,
                         layer_rules=(("in", "ABCD_lr"), ("rec", "oja"), ("out", "delta")))


def _one_sequence(seed=0):
    inputs, targets, mask = TASK.sample(jax.random.key(seed), 1)
    return inputs[0], targets[0], mask[0]


def _params(net, **out_coeffs):
    params = plastic.init_params(net, jax.random.key(0))
    for name, value in out_coeffs.items():
        params["coeffs"]["out"][name] = jnp.full_like(params["coeffs"]["out"][name], value)
    return params


@pytest.mark.parametrize("t", [0, 3, 6])
def test_prediction_at_t_ignores_everything_after_t(t):
    """Changing inputs after t, and targets and mask from t on, never changes the logits at t."""
    params = _params(NET, eta=1.0)
    inputs, targets, mask = _one_sequence()
    rng = np.random.default_rng(t)
    future_inputs = inputs.at[t + 1:].set(rng.integers(0, TASK.vocab_size, inputs.shape[0] - t - 1))
    future_targets = targets.at[t:].set(rng.integers(0, TASK.vocab_size, targets.shape[0] - t))
    run = jax.jit(plastic.lifetime_logits, static_argnums=0)
    key = jax.random.key(1)
    logits, _ = run(NET, params, key, inputs, targets, mask)
    changed, _ = run(NET, params, key, future_inputs, future_targets, mask.at[t:].set(1.0))
    np.testing.assert_array_equal(logits[: t + 1], changed[: t + 1])
    assert not np.allclose(logits[t + 1:], changed[t + 1:])  # the future does matter later


def test_teaching_signal_uses_next_input_or_scored_target():
    inputs = jnp.array([3, 4, 5, 6])
    targets = jnp.array([0, 0, 0, 9])
    mask = jnp.array([0.0, 0.0, 0.0, 1.0])
    teacher, teach_on = plastic.teaching_signal(inputs, targets, mask)
    np.testing.assert_array_equal(teacher, [4, 5, 6, 9])
    np.testing.assert_array_equal(teach_on, [1, 1, 1, 1])
    teacher, teach_on = plastic.teaching_signal(inputs, targets, jnp.zeros(4))
    np.testing.assert_array_equal(teach_on, [1, 1, 1, 0])


@pytest.mark.slow  # learns to a criterion; the lifetime is tested against its reference below
def test_hebbian_readout_learns_retrieval_and_frozen_net_does_not():
    """Plain Hebb on (h, teacher) stores key -> value; without plasticity accuracy is chance."""
    inputs, targets, mask = TASK.sample(jax.random.key(3), 256, "valid")
    hebb = dataclasses.replace(NET, layer_rules=(("out", "hebb"),))
    _, acc = plastic.evaluate(hebb, _params(hebb, eta=1.0), jax.random.key(4), inputs, targets, mask)
    frozen = dataclasses.replace(NET, layer_rules=())
    _, acc_off = plastic.evaluate(frozen, {"coeffs": {}}, jax.random.key(4), inputs, targets, mask)
    assert acc > 0.8
    assert acc_off < 0.3


def test_fresh_random_weights_per_lifetime_and_evolved_init_is_used():
    inputs, targets, mask = _one_sequence()
    params = _params(NET)
    _, (w_a, _) = plastic.lifetime_logits(NET, params, jax.random.key(0), inputs, targets, mask)
    _, (w_b, _) = plastic.lifetime_logits(NET, params, jax.random.key(1), inputs, targets, mask)
    assert not np.allclose(w_a["rec"], w_b["rec"])
    assert np.max(np.abs(w_a["in"])) <= NET.init_scale

    coevolved = dataclasses.replace(NET, evolve_init=True)
    params = plastic.init_params(coevolved, jax.random.key(2))
    _, (w_c, _) = plastic.lifetime_logits(coevolved, params, jax.random.key(0), inputs, targets, mask)
    np.testing.assert_array_equal(w_c["rec"], params["w0"]["rec"])


@pytest.mark.parametrize("how", ["maxabs", "l2"])
def test_normalisation_bounds_plastic_weights(how):
    net = dataclasses.replace(NET, normalise=how, weight_noise=0.01)
    params = _params(net, eta=50.0)
    _, (_, w_end) = plastic.lifetime_logits(net, params, jax.random.key(0), *_one_sequence())
    if how == "maxabs":
        assert np.isclose(np.max(np.abs(w_end["out"])), 1.0)
    else:
        np.testing.assert_allclose(np.linalg.norm(w_end["out"], axis=1), 1.0, rtol=1e-5)


def test_reward_modulation_and_granularity_shapes():
    net = plastic.PlasticRNN(vocab_size=TASK.vocab_size, hidden_size=8, granularity="synapse",
                             layer_rules=(("rec", "ABCD_lr"), ("out", "ABCD_lr")),
                             modulation="reward")
    params = plastic.init_params(net, jax.random.key(0))
    assert params["coeffs"]["rec"]["A"].shape == (8, 8)
    assert params["coeffs"]["out"]["A"].shape == (TASK.vocab_size, 8)
    nll, acc = plastic.evaluate(net, params, jax.random.key(1), *TASK.sample(jax.random.key(2), 4))
    assert np.isfinite(nll) and 0.0 <= acc <= 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layer_rules": (("out", "no_such_rule"),)}, "unknown rule 'no_such_rule'"),
        ({"layer_rules": (("hidden", "hebb"),)}, "unknown layer 'hidden'"),
        ({"layer_rules": (("out", "hebb"), ("out", "oja"))}, "each layer takes one rule"),
        ({"normalise": "softmax"}, "unknown normalise 'softmax'"),
        ({"granularity": "layer"}, "unknown granularity 'layer'"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"init_scale": -0.1}, "init_scale must be a finite number >= 0, got -0.1"),
        ({"init_scale": float("nan")}, "init_scale must be a finite number >= 0, got nan"),
        ({"weight_noise": -1.0}, "weight_noise must be a finite number >= 0, got -1.0"),
    ],
)
def test_bad_configuration_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plastic.PlasticRNN(vocab_size=10, **kwargs)


def test_readout_bias_is_a_plastic_always_on_unit():
    net = dataclasses.replace(NET, layer_rules=(("out", "hebb"),), readout_bias=True)
    assert net.weight_shapes()["out"] == (TASK.vocab_size, NET.hidden_size + 1)
    inputs, targets, mask = _one_sequence()
    _, (w_start, w_end) = plastic.lifetime_logits(net, _params(net, eta=1.0), jax.random.key(0),
                                                  inputs, targets, mask)
    teacher, teach_on = plastic.teaching_signal(inputs, targets, mask)
    # Hebb on the bias column adds eta * 1 for every teaching step of each token.
    counts = np.bincount(np.asarray(teacher)[np.asarray(teach_on) > 0], minlength=TASK.vocab_size)
    np.testing.assert_allclose(w_end["out"][:, -1] - w_start["out"][:, -1], counts, rtol=1e-5)


def test_log_rates_evolve_log_eta_and_give_the_same_lifetime():
    linear = dataclasses.replace(NET, layer_rules=(("out", "delta"),))
    logged = dataclasses.replace(linear, log_rates=True)
    params = plastic.init_params(logged, jax.random.key(0))
    np.testing.assert_allclose(params["coeffs"]["out"]["eta"], np.log(0.01), rtol=1e-6)
    params["coeffs"]["out"]["eta"] = jnp.log(jnp.asarray(3.0))
    data = _one_sequence()
    a, _ = plastic.lifetime_logits(logged, params, jax.random.key(1), *data)
    b, _ = plastic.lifetime_logits(linear, _params(linear, eta=3.0), jax.random.key(1), *data)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
