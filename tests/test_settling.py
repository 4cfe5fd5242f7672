"""Two-phase settling networks and the local error-driven rules that train them."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from plastix import settling

XS, TS = settling.random_associator(jax.random.key(0))
NET = settling.SettlingNet((25, 49, 49, 25))


def test_settling_converges_to_a_fixed_point():
    net = settling.SettlingNet((25, 49, 49, 25), steps=200)
    params = settling.init_params(net, jax.random.key(1))
    minus = settling.settle(net, params, XS[0])
    assert float(minus.last_change) < 1e-4
    again = settling.settle(net, params, XS[0], start=minus)  # a fixed point stays put
    for a, b in zip(minus.acts, again.acts):
        np.testing.assert_allclose(a, b, atol=1e-3)


def test_the_plus_phase_clamps_input_and_output_and_the_minus_phase_only_the_input():
    params = settling.init_params(NET, jax.random.key(1))
    minus = settling.settle(NET, params, XS[3])
    plus = settling.settle(NET, params, XS[3], TS[3], start=minus)
    np.testing.assert_array_equal(plus.acts[-1], TS[3])
    np.testing.assert_array_equal(plus.acts[0], XS[3])
    np.testing.assert_array_equal(minus.acts[0], XS[3])
    assert not np.allclose(minus.acts[-1], TS[3])
    assert not np.allclose(minus.acts[1], plus.acts[1])  # the target reaches the hidden layers


def test_k_winners_take_all_leaves_about_k_units_active():
    net = settling.SettlingNet((25, 100, 25), k_fraction=0.2, gain=50.0)
    u = jax.random.normal(jax.random.key(2), (100,))
    assert int(jnp.sum(settling.activation(net, u, inhibited=True) > 0.5)) == 20


def _generec_step_and_gradient(init_scale, loss):
    """GeneRec's weight change on a one-layer network, and the gradient of ``loss(y or
    logits, t)`` with respect to the same weights."""
    net = settling.SettlingNet((25, 25), init_scale=init_scale)
    params = settling.init_params(net, jax.random.key(3))
    state = settling.init_learn_state(net, "generec", params)
    new, _, _ = settling.local_trial(net, "generec", 1e-4, params, state, XS[0], TS[0])
    grad = jax.grad(lambda w: loss(net, {**params, "w": [w]}))(params["w"][0])
    return (new["w"][0] - params["w"][0]).ravel(), grad.ravel()


def _cosine(a, b):
    return float(jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def test_generec_on_one_layer_follows_the_negative_error_gradient():
    """With no hidden layer the minus phase is sigmoid(g u) and the plus phase the target:
    GeneRec's dW = eta (t - y) x^T. At small weights it points along minus the gradient of
    the squared error (sigmoid' nearly uniform); at any weights along minus the
    cross-entropy gradient."""
    squared = lambda net, p: 0.5 * jnp.sum((settling.feedforward(net, p, XS[0]) - TS[0]) ** 2)
    dw, grad = _generec_step_and_gradient(0.01, squared)
    assert _cosine(dw, -grad) > 0.99
    cross_entropy = lambda net, p: jnp.sum(optax.sigmoid_binary_cross_entropy(
        settling.output_logits(net, p, XS[0]), TS[0]))
    dw, grad = _generec_step_and_gradient(1.0, cross_entropy)
    assert _cosine(dw, -grad) > 0.9999
    dw, grad = _generec_step_and_gradient(1.0, squared)  # large weights: only roughly
    assert 0.3 < _cosine(dw, -grad) < 0.99


def test_subtracting_the_mean_change_zeroes_each_units_mean():
    net = settling.SettlingNet((25, 49, 25), subtract_mean=True)
    params = settling.init_params(net, jax.random.key(4))
    state = settling.init_learn_state(net, "chl", params)
    new, _, stats = settling.local_trial(net, "chl", 0.1, params, state, XS[1], TS[1])
    for w_new, w_old in zip(new["w"], params["w"]):
        np.testing.assert_allclose(jnp.mean(w_new - w_old, axis=1), 0.0, atol=1e-7)
    assert abs(float(stats.dw_sum)) < 1e-5 and float(stats.dw_abs) > 0


@pytest.mark.slow  # learns to a criterion; the settling and the rules' steps are tested exactly above
@pytest.mark.parametrize("method", ["chl", "generec"])
def test_local_rules_learn_ra25_to_criterion(method):
    _, history = settling.train(NET, method, 0.1, jax.random.key(1), XS, TS, 30)
    assert 0 < int(settling.epochs_to_criterion(history.errors)) <= 30
    assert int(history.errors[0]) > 0  # not solved before learning


@pytest.mark.parametrize("feedback", ["random", "learned"])
def test_non_symmetric_feedback_trains(feedback):
    net = settling.SettlingNet((25, 49, 25), feedback=feedback)
    params, history = settling.train(net, "chl", 0.1, jax.random.key(1), XS, TS, 5)
    assert len(params["fb"]) == 1 and params["fb"][0].shape == (49, 25)
    assert np.all(np.isfinite(history.sse)) and history.sse[-1] < history.sse[0]


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="unknown feedback"):
        settling.SettlingNet((2, 2), feedback="mirror")
    with pytest.raises(ValueError, match="k_fraction"):
        settling.SettlingNet((2, 2), k_fraction=1.5)
    with pytest.raises(ValueError, match="unknown local rule"):
        settling.local_trial(NET, "hebb", 0.1, settling.init_params(NET, jax.random.key(0)),
                             None, XS[0], TS[0])


@pytest.mark.slow  # end to end: the local-learning experiment and its report
def test_the_experiment_writes_its_report(tmp_path):
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments"))
    import local_learning

    rows = local_learning.main(["--epochs", "3", "--seeds", "2", "--tune-seeds", "1",
                                "--lrs", "0.1", "--variants", "CHL", "backprop (no inhibition)",
                                "--hidden", "20", "--out", str(tmp_path)])
    assert [r["method"] for r in rows] == ["chl", "backprop"]
    assert {"report.md", "report.json", "curves.png"} <= set(os.listdir(tmp_path))
    assert len(rows[0]["mean_dw_per_epoch"]) == 3 and len(rows[0]["epochs_to_criterion"]) == 2
    assert np.shape(rows[1]["errors_per_epoch"]) == (2, 3)
    with pytest.raises(SystemExit):
        local_learning.main(["--epochs", "0", "--out", str(tmp_path)])
