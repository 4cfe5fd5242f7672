"""Tests for the differentiable-plasticity and backpropamine rules (hand-computed steps,
the ``w = w0 + alpha * Hebb`` identity, clipping, the required neuromodulator,
gradients against finite differences) and for the pieces of
experiments/pattern_completion.py."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import cli, rules, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import pattern_completion as pc  # noqa: E402

RULES = ("diff_hebb", "diff_oja", "backpropamine", "backpropamine_retro")
MODULATED = ("backpropamine", "backpropamine_retro")


def _f32(x):
    return jnp.asarray(x, jnp.float32)


# A 2 x 2 synapse matrix, pre x = [1, -1], post y = [1, 0.5]: y x^T = [[1, -1], [.5, -.5]].
X, Y = _f32([1.0, -1.0]), _f32([1.0, 0.5])
W = jnp.zeros((2, 2))


# ------------------------------------------------------ hand-computed steps ----

def test_diff_hebb_two_steps_by_hand():
    rule, coeffs = rules.diff_hebb(), {"alpha": _f32(2.0), "eta": _f32(0.5)}
    dw, state = rule.update(coeffs, rule.init(W), W, X, Y)
    # Hebb = 0.5 * 0 + 0.5 * y x^T
    np.testing.assert_allclose(state.hebb, [[0.5, -0.5], [0.25, -0.25]])
    np.testing.assert_allclose(dw, [[1.0, -1.0], [0.5, -0.5]])          # 2 * (Hebb - 0)
    dw, state = rule.update(coeffs, state, W, _f32([0.0, 1.0]), _f32([1.0, 1.0]))
    # Hebb = 0.5 * [[.5, -.5], [.25, -.25]] + 0.5 * [[0, 1], [0, 1]]
    np.testing.assert_allclose(state.hebb, [[0.25, 0.25], [0.125, 0.375]])
    np.testing.assert_allclose(dw, [[-0.5, 1.5], [-0.25, 1.25]])


def test_diff_oja_step_by_hand():
    rule, coeffs = rules.diff_oja(), {"alpha": _f32(2.0), "eta": _f32(0.5)}
    hebb = _f32([[0.5, 0.0], [1.0, 0.0]])
    dw, state = rule.update(coeffs, rules.PlasticTrace(hebb), W, X, Y)
    # Hebb_ij += 0.5 y_i (x_j - y_i Hebb_ij):
    #   row 0 (y = 1):   0.5 + 0.5 (1 - 0.5) = 0.75;    0 + 0.5 (-1) = -0.5
    #   row 1 (y = .5):  1 + 0.25 (1 - 0.5) = 1.125;    0 + 0.25 (-1) = -0.25
    np.testing.assert_allclose(state.hebb, [[0.75, -0.5], [1.125, -0.25]])
    np.testing.assert_allclose(dw, [[0.5, -1.0], [0.25, -0.5]])


def test_backpropamine_step_by_hand_with_one_modulator_per_post_neuron():
    rule = rules.backpropamine()
    hebb = _f32([[0.9, 0.0], [0.0, -0.5]])
    dw, state = rule.update({"alpha": _f32(1.0)}, rules.PlasticTrace(hebb), W, X, Y,
                            _f32([0.5, -2.0]))
    # row 0: [0.9, 0] + 0.5 [1, -1] = [1.4 -> 1 (clipped), -0.5]
    # row 1: [0, -0.5] - 2 [0.5, -0.5] = [-1, 0.5]
    np.testing.assert_allclose(state.hebb, [[1.0, -0.5], [-1.0, 0.5]])
    np.testing.assert_allclose(dw, [[0.1, -0.5], [-1.0, 1.0]], rtol=1e-6)


def test_backpropamine_retro_gates_the_earlier_eligibility_trace():
    rule, coeffs = rules.backpropamine_retro(), {"alpha": _f32(2.0), "eta": _f32(0.5)}
    # From zero traces, the first step only fills the eligibility trace.
    dw, state = rule.update(coeffs, rule.init(W), W, X, Y, _f32(1.0))
    np.testing.assert_array_equal(dw, np.zeros((2, 2)))
    np.testing.assert_allclose(state.eligibility, [[0.5, -0.5], [0.25, -0.25]])
    eligibility = _f32([[1.0, 0.0], [0.0, 0.5]])
    dw, state = rule.update(coeffs, rules.RetroactiveTrace(W, eligibility), W, X, Y,
                            _f32(0.5))
    # Hebb = clip(0 + 0.5 E);  E = 0.5 E + 0.5 y x^T
    np.testing.assert_allclose(state.hebb, [[0.5, 0.0], [0.0, 0.25]])
    np.testing.assert_allclose(state.eligibility, [[1.0, -0.5], [0.25, 0.0]])
    np.testing.assert_allclose(dw, [[1.0, 0.0], [0.0, 0.5]])


# ------------------------------------------------- w = w0 + alpha * Hebb ----

def _random_lifetime(seed, n_post=3, n_pre=4, steps=20):
    rng = np.random.default_rng(seed)
    return (_f32(rng.normal(size=(n_post, n_pre))),
            _f32(np.tanh(rng.normal(size=(steps, n_pre)))),
            _f32(np.tanh(rng.normal(size=(steps, n_post)))),
            _f32(rng.normal(size=(steps, n_post))))


def _live(rule, coeffs, w0, pres, posts, mods):
    """``w <- w + dw`` over the steps (``lax.scan``); returns the final (w, state)."""

    def step(carry, xs):
        w, state = carry
        dw, state = rule.update(coeffs, state, w, *xs)
        return (w + dw, state), None

    return jax.lax.scan(step, (w0, rule.init(w0)), (pres, posts, mods))[0]


@pytest.mark.parametrize("name", RULES)
def test_the_network_holds_w0_plus_alpha_times_hebb(name):
    rule = rules.get(name)
    w0, pres, posts, mods = _random_lifetime(seed=1)
    rng = np.random.default_rng(2)
    coeffs = {k: _f32(v + 0.05 * rng.normal(size=v.shape))
              for k, v in rules.init_coeffs(rule, w0.shape, "synapse").items()}
    coeffs["alpha"] = _f32(rng.normal(size=w0.shape))   # of either sign, per synapse
    w, state = jax.jit(lambda c: _live(rule, c, w0, pres, posts, mods))(coeffs)
    assert np.max(np.abs(np.asarray(state.hebb))) > 0.05          # the trace did move
    np.testing.assert_allclose(w, w0 + coeffs["alpha"] * state.hebb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODULATED)
def test_backpropamine_clips_the_trace(name):
    w0, pres, posts, _ = _random_lifetime(seed=3)
    big = jnp.full(posts.shape, 5.0)             # a strong modulator drives Hebb to the bound
    for clip in (1.0, 2.0):
        rule = rules.get(name, clip=clip)
        coeffs = rules.init_coeffs(rule, w0.shape)
        w, state = _live(rule, coeffs, w0, pres, posts, big)
        hebb = np.abs(np.asarray(state.hebb))
        assert hebb.max() == pytest.approx(clip) and np.all(hebb <= clip)
        np.testing.assert_allclose(w, w0 + coeffs["alpha"] * state.hebb, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="clip must be a finite number > 0"):
        rules.get(name, clip=0.0)


@pytest.mark.parametrize("name", MODULATED)
def test_backpropamine_needs_the_neuromodulator(name):
    rule = rules.get(name)
    with pytest.raises(ValueError, match=f"rule '{name}' needs mod"):
        rule.update(rules.init_coeffs(rule, W.shape), rule.init(W), W, X, Y)
    assert not rule.reads_target                  # M gates plasticity; it is no target


def test_diff_rules_ignore_mod():
    for name in ("diff_hebb", "diff_oja"):
        rule = rules.get(name)
        coeffs = rules.init_coeffs(rule, W.shape)
        with_mod, _ = rule.update(coeffs, rule.init(W), W, X, Y, _f32(3.0))
        without, _ = rule.update(coeffs, rule.init(W), W, X, Y)
        np.testing.assert_array_equal(with_mod, without)


# ------------------------------------------------------------- gradients ----

def _recurrent_loss(rule, coeffs, w0, drive, target):
    """A 4-unit plastic RNN ``x_t = tanh(W x_{t-1} + drive_t)`` for a few steps; the
    modulator (read only by backpropamine) is the network's own ``tanh(sum x)``."""

    def step(carry, d):
        w, state, x = carry
        y = jnp.tanh(w @ x + d)
        dw, state = rule.update(coeffs, state, w, x, y, jnp.tanh(jnp.sum(y)))
        return (w + dw, state, y), None

    start = (w0, rule.init(w0), jnp.zeros(w0.shape[0]))
    (_, _, x), _ = jax.lax.scan(step, start, drive)
    return jnp.sum((x - target) ** 2)


@pytest.mark.parametrize("name", RULES)
def test_gradients_through_a_lifetime_match_finite_differences(name):
    rule = rules.get(name)
    rng = np.random.default_rng(4)
    n = 4
    w0 = _f32(0.3 * rng.normal(size=(n, n)))
    drive = _f32(rng.normal(size=(6, n)))
    target = _f32(np.sign(rng.normal(size=n)))
    coeffs = {"alpha": _f32(0.5 + 0.3 * rng.normal(size=(n, n)))}
    if "eta" in rule.default_coeffs:
        coeffs["eta"] = _f32(0.3)
    loss = jax.jit(lambda c: _recurrent_loss(rule, c, w0, drive, target))
    grads = jax.grad(lambda c: _recurrent_loss(rule, c, w0, drive, target))(coeffs)
    for key in coeffs:
        g = np.asarray(grads[key])
        assert np.all(np.isfinite(g)) and np.any(g != 0.0), key
        direction = _f32(rng.normal(size=coeffs[key].shape))
        eps = 1e-2
        plus = dict(coeffs, **{key: coeffs[key] + eps * direction})
        minus = dict(coeffs, **{key: coeffs[key] - eps * direction})
        numeric = (float(loss(plus)) - float(loss(minus))) / (2 * eps)
        analytic = float(np.sum(g * np.asarray(direction)))
        assert analytic == pytest.approx(numeric, rel=2e-2, abs=1e-3), key


# ------------------------------------------------- the pattern-completion experiment ----

SMALL = pc.Task(bits=10, patterns=2, cycles=2, present=2, gap=1)


def test_episode_layout_and_erasure():
    inputs, target, erased = jax.jit(pc.sample_episode, static_argnums=0)(SMALL,
                                                                          jax.random.key(0))
    inputs, target, erased = map(np.asarray, (inputs, target, erased))
    assert inputs.shape == (SMALL.steps, SMALL.bits) == (2 * 2 * 3 + 2, 10)
    assert erased.sum() == SMALL.bits // 2 and set(np.unique(target)) <= {-1.0, 1.0}
    cue = inputs[-1]
    np.testing.assert_array_equal(cue[erased], 0.0)
    np.testing.assert_array_equal(cue[~erased], target[~erased])
    np.testing.assert_array_equal(inputs[-SMALL.present:], np.broadcast_to(cue, (2, 10)))
    blocks = inputs[:-SMALL.present].reshape(4, SMALL.present + SMALL.gap, SMALL.bits)
    np.testing.assert_array_equal(blocks[:, SMALL.present:], 0.0)          # the gaps
    shown = blocks[:, 0]
    assert any(np.array_equal(target, p) for p in shown)      # the cue is a shown pattern
    for cycle in shown.reshape(2, 2, SMALL.bits):             # each cycle shows each once
        assert {tuple(p) for p in cycle} == {tuple(p) for p in shown}


def test_parameter_counts_match():
    plastic, baseline = pc.nets_for(pc.Task(bits=50), ("diff_hebb", pc.NON_PLASTIC))
    count = lambda net: pc.count_params(  # noqa: E731
        jax.eval_shape(lambda key: pc.init_params(net, key), jax.random.key(0)))
    assert count(plastic) == 2 * 50 * 50 + 1 == 5001      # w, per-synapse alpha, one eta
    assert baseline.rule is None and baseline.units == 71 and count(baseline) == 5041
    assert pc.matched_units(4900, 10) == 70 and pc.matched_units(4970, 10) == 70
    assert pc.matched_units(4972, 10) == 71 and pc.matched_units(9, 5) == 5


def test_plastic_net_with_alpha_zero_is_the_non_plastic_net():
    plastic, fixed = pc.Net(SMALL.bits, "diff_hebb"), pc.Net(SMALL.bits)

    @jax.jit
    def finals(alpha):
        params = pc.init_params(plastic, jax.random.key(1))
        inputs, _, _ = pc.sample_episode(SMALL, jax.random.key(2))
        coeffs = dict(params["coeffs"], alpha=alpha)
        return (pc.final_state(plastic, dict(params, coeffs=coeffs), inputs),
                pc.final_state(fixed, {"w": params["w"]}, inputs))

    np.testing.assert_allclose(*finals(jnp.zeros((SMALL.bits, SMALL.bits))), atol=1e-6)
    assert not np.allclose(*finals(jnp.ones((SMALL.bits, SMALL.bits))), atol=1e-3)


def test_training_lowers_the_loss_on_its_batch():
    net = pc.Net(SMALL.bits, "diff_hebb")
    opt = train.make_optimizer(1e-2, 1.0)
    key = jax.random.key(4)
    # The episodes of update u come from fold_in(key, u): starting again at u = 0
    # scores the trained parameters on the batch they were trained on.
    update = jax.jit(lambda p, s: pc.train_updates(net, SMALL, opt, 8, p, s, key, 0, 1))
    params = jax.jit(lambda k: pc.init_params(net, k))(jax.random.key(3))
    (trained, state), (before, _) = update(params, opt.init(params))
    _, (after, _) = update(trained, state)
    assert float(after[0]) < float(before[0])


@pytest.mark.parametrize("argv", [["--bits", "1"], ["--updates", "0"], ["--seeds", "1", "1"],
                                  ["--lr", "-1"], ["--gap", "-1"], ["--arms", "lstm"]])
def test_bad_flags_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        cli.run(pc.parse_args, argv)
    assert "error:" in capsys.readouterr().err
