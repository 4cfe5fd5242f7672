"""Recovering a plasticity rule from recorded weights (`plastix.recovery`)."""

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import cli, evolve, recovery, rules


# Small recordings; the experiment's smoke test below uses the same shapes, so it reuses
# the compiled fit.
STEPS, RECORDINGS = 60, 2
FAMILIES = {"oja": "polynomial", "delta": "multilinear_mod"}


@pytest.fixture(scope="session")
def data():
    """``rule -> (setup, recording)``, noiseless and complete."""
    out = {}
    for n, rule in enumerate(FAMILIES):
        setup = recovery.Setup(rule=rule, steps=STEPS, recordings=RECORDINGS)
        world = recovery.make_world(jax.random.key(n), setup)
        out[rule] = setup, recovery.record(jax.random.key(10 + n), setup, world)
    return out


@pytest.mark.parametrize("post", recovery.POST_SOURCES)
@pytest.mark.parametrize("rule", FAMILIES)
def test_the_true_rule_has_zero_loss_on_noiseless_data(data, rule, post):
    setup, recording = data[rule]
    objective = recovery.Objective(FAMILIES[rule], post=post)
    observation = recovery.observe(jax.random.key(0), recording, synapse_fraction=0.5,
                                   time_fraction=0.5)
    truth = jnp.asarray(recovery.true_theta(setup, objective))
    assert float(recovery.loss(objective, truth, observation)) < 1e-12
    # not a loss that is small for any rule: the frozen weights miss by far more
    assert float(recovery.loss(objective, jnp.zeros_like(truth), observation)) > 1e-4


@pytest.mark.parametrize("rule", FAMILIES)
def test_the_family_with_the_true_coefficients_reproduces_the_registry_rule(data, rule):
    """The polynomial with Oja's terms (the delta rule's) rolled in the closed loop gives
    the weights that ``rules.get("oja")`` (``"delta"``) gave."""
    setup, recording = data[rule]
    objective = recovery.Objective(FAMILIES[rule], eta=0.004)
    truth = recovery.true_theta(setup, objective)
    assert np.count_nonzero(truth) == 2 and np.max(np.abs(truth)) == pytest.approx(5.0)
    predicted = recovery.closed_loop(objective, jnp.asarray(truth), recording)
    np.testing.assert_allclose(predicted, recording.weights, rtol=1e-4, atol=1e-5)
    # the registry rule itself, stepped here by hand for one recording
    w = recording.weights[0, 0]
    rule_fn = rules.get(rule)
    mod = None if recording.mod is None else recording.mod[0]
    for t in range(5):
        y = w @ recording.pre[0, t]
        dw, _ = rule_fn.update({"eta": setup.eta}, (), w, recording.pre[0, t], y,
                               None if mod is None else mod[t])
        w = w + dw
        np.testing.assert_allclose(w, recording.weights[0, t + 1], rtol=1e-5, atol=1e-6)


def test_oja_rows_head_for_the_principal_component(data):
    """The data are what Oja's rule is for: long enough, the rows line up with the
    leading eigenvector of the input covariance (the fitted recordings are shorter)."""
    setup = dataclasses.replace(data["oja"][0], steps=1500, recordings=1)
    world = recovery.make_world(jax.random.key(0), setup)
    w = np.asarray(recovery.record(jax.random.key(1), setup, world).weights[0, -1])
    covariance = np.asarray(world.input_factor @ world.input_factor.T)
    leading = np.linalg.eigh(covariance)[1][:, -1]
    np.testing.assert_allclose(np.abs(w @ leading), 1.0, atol=0.1)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, atol=0.1)


def test_masks_select_the_requested_fractions_and_hide_the_rest(data):
    _, recording = data["oja"]
    obs = recovery.observe(jax.random.key(1), recording, synapse_fraction=0.5,
                           time_fraction=0.2)
    n_syn = recording.weights[0, 0].size
    np.testing.assert_array_equal(obs.synapse_mask.reshape(RECORDINGS, -1).sum(1), n_syn // 2)
    np.testing.assert_array_equal(obs.time_mask.sum(1), round(0.2 * STEPS))
    seen = np.asarray(recovery.loss_mask(obs))
    assert np.all(np.isnan(np.asarray(obs.weights[:, 1:])[~seen]))
    assert not np.any(np.isnan(np.asarray(obs.weights[:, 1:])[seen]))
    assert not np.any(np.isnan(np.asarray(obs.weights[:, 0])))  # the initial snapshot: all
    # different recordings follow different synapses
    assert not np.array_equal(obs.synapse_mask[0], obs.synapse_mask[1])


def test_unobserved_entries_leave_the_loss_and_its_gradient_unchanged(data):
    setup, recording = data["oja"]
    objective = recovery.Objective("polynomial")
    obs = recovery.observe(jax.random.key(2), recording, weight_noise=0.05,
                           synapse_fraction=0.3, time_fraction=0.5)
    theta = 0.5 * jnp.asarray(recovery.true_theta(setup, objective))
    seen = recovery.loss_mask(obs)
    value_and_grad = jax.jit(jax.value_and_grad(objective.loss))
    loss, grad = value_and_grad(theta, obs)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(grad))
    changed = obs._replace(weights=obs.weights.at[:, 1:].set(
        jnp.where(seen, obs.weights[:, 1:], 123.0)))
    loss2, grad2 = value_and_grad(theta, changed)
    assert float(loss2) == float(loss)
    np.testing.assert_array_equal(grad2, grad)
    # while an observed entry does count
    b, t, i, j = map(int, np.argwhere(np.asarray(seen))[0])
    moved = obs._replace(weights=obs.weights.at[b, t + 1, i, j].add(1.0))
    assert float(value_and_grad(theta, moved)[0]) > float(loss)


def test_term_scales_are_the_rms_of_each_term(data):
    _, recording = data["oja"]
    objective = recovery.Objective("polynomial")
    obs = recovery.observe(jax.random.key(3), recording)
    scales = np.asarray(recovery.term_scales(objective, obs))
    names = recovery.term_names(objective)
    x = np.asarray(recording.pre)
    assert scales[names.index("1")] == pytest.approx(1.0)
    assert scales[names.index("x")] == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-4)
    w = np.asarray(recording.weights[:, :-1])
    assert scales[names.index("w^2")] == pytest.approx(np.sqrt(np.mean(w**4)), rel=1e-4)


def test_a_short_gradient_fit_moves_the_dominant_terms_to_the_truth(data):
    setup, recording = data["oja"]
    objective = recovery.Objective("polynomial")
    obs = recovery.observe(jax.random.key(4), recording)
    theta0 = jnp.zeros(objective.n_terms)
    # the experiment's smoke test below passes the same settings, so reuses this compile
    fit = recovery.fit_gradient(objective, obs, theta0, adam_steps=30, lr=0.05, clip=1.0,
                                lbfgs_steps=20)
    first, last = float(fit.losses[0]), float(recovery.loss(objective, fit.theta, obs))
    assert last < first / 100
    scaled = recovery.describe(fit.theta, objective)
    assert list(scaled)[:2] in (["x y", "y^2 w"], ["y^2 w", "x y"])
    assert scaled["x y"] == pytest.approx(1.0, abs=0.2)
    assert scaled["y^2 w"] == pytest.approx(-1.0, abs=0.2)


def test_a_short_es_fit_reduces_the_loss(data):
    setup, recording = data["delta"]
    objective = recovery.Objective("multilinear_mod")
    obs = recovery.observe(jax.random.key(5), recording)
    cfg = evolve.ESConfig(strategy="CMA_ES", population=16, sigma=0.5)
    theta0 = jnp.zeros(objective.n_terms)
    fit = recovery.fit_es(jax.random.key(6), objective, obs, theta0, cfg, generations=150)
    zero = float(recovery.loss(objective, theta0, obs))
    assert float(fit.losses[-1]) < zero / 100
    scaled = recovery.describe(fit.theta, objective, top=2)
    assert set(scaled) == {"x m", "x y"} and scaled["x m"] * scaled["x y"] < 0


def test_metrics():
    truth = np.array([0.0, 2.0, -2.0])
    assert recovery.max_term_error(truth * 3.0, truth) == 0.0  # the overall rate is free
    assert recovery.max_term_error([0.1, 1.0, -0.5], truth) == pytest.approx(0.5)
    assert recovery.max_term_error(-truth, truth) == pytest.approx(2.0)  # the sign is not
    w = np.cumsum(np.ones((1, 5, 1, 1)), axis=1)
    assert recovery.trajectory_r2(w, w) == 1.0
    # a frozen trajectory explains none of the change; the initial offset earns nothing
    assert recovery.trajectory_r2(np.full_like(w, w.mean()), w) == pytest.approx(0.0)


def test_bad_inputs_are_refused_with_a_clear_message(data):
    setup, recording = data["oja"]
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="synapse_fraction must be in"):
        recovery.observe(key, recording, synapse_fraction=0.0)
    with pytest.raises(ValueError, match="time_fraction must be in"):
        recovery.observe(key, recording, time_fraction=1.5)
    with pytest.raises(ValueError, match="noise levels must be >= 0"):
        recovery.observe(key, recording, weight_noise=-0.1)
    with pytest.raises(ValueError, match="unknown true rule"):
        recovery.Setup(rule="hebb")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        recovery.Setup(steps=0)
    with pytest.raises(ValueError, match="post must be one of"):
        recovery.Objective(post="teacher")
    with pytest.raises(ValueError, match="not a polynomial-family rule"):
        recovery.Objective("oja")
    with pytest.raises(ValueError, match="lacks term"):
        recovery.true_theta(setup, recovery.Objective("multilinear"))
    obs = recovery.observe(key, recording)
    with pytest.raises(ValueError, match="theta must have shape"):
        recovery.loss(recovery.Objective("polynomial"), jnp.zeros(8), obs)
    with pytest.raises(ValueError, match="cannot read"):
        recovery.loss(recovery.Objective("polynomial"), jnp.zeros(27),
                      obs._replace(mod=jnp.zeros(obs.post.shape)))
    with pytest.raises(ValueError, match="reads a target m"):
        recovery.loss(recovery.Objective("multilinear_mod"), jnp.zeros(16), obs)
    with pytest.raises(ValueError, match="not both 0"):
        recovery.fit_gradient(recovery.Objective(), obs, jnp.zeros(27), adam_steps=0,
                              lbfgs_steps=0)
    with pytest.raises(ValueError, match="generations must be >= 1"):
        recovery.fit_es(key, recovery.Objective(), obs, jnp.zeros(27),
                        evolve.ESConfig(strategy="CMA_ES"), generations=0)


@pytest.mark.slow  # end to end: the rule-recovery experiment and its report
def test_the_experiment_writes_its_report(tmp_path, capsys):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments"))
    import rule_recovery

    # the shapes and fit settings of the gradient test above: its compiled fit is reused
    rows = rule_recovery.main([
        "--rules", "oja", "--methods", "gradient", "--noises", "0", "--synapse-fractions",
        "1", "0.5", "--time-fractions", "1", "--steps", str(STEPS), "--recordings",
        str(RECORDINGS), "--adam-steps", "30", "--lbfgs-steps", "20", "--no-ablations",
        "--out", str(tmp_path)])
    assert [(r["rule"], r["method"], r["synapse_fraction"]) for r in rows] == [
        ("oja", "gradient", 1.0), ("oja", "gradient", 0.5)]
    assert {"report.md", "report.json"} <= set(os.listdir(tmp_path))
    report = (tmp_path / "report.md").read_text()
    assert "| x y | +1.0000 |" in report and "held-out R²" in report
    assert rows[1]["observed_fraction"] == pytest.approx(0.5)
    for bad in (["--synapse-fractions", "0"], ["--noises", "-1"], ["--generations", "0"],
                ["--adam-steps", "0", "--lbfgs-steps", "0"],
                ["--strategy", "Open_ES", "--population", "7"]):
        with pytest.raises(SystemExit):
            cli.run(rule_recovery.main, bad + ["--out", str(tmp_path)])
    assert "error:" in capsys.readouterr().err
