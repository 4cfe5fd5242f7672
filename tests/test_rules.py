"""Tests for plastix.rules: the contract over the whole registry, a NumPy reference
step per rule, theory on generated data, the ES flattening round trip, and bad input."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from plastix import rules

N_POST, N_PRE = 3, 4
GRANULARITIES = ("shared", "post", "synapse")

# Every registry entry with its default hyperparameters, plus the non-default
# configurations and wrappers that change the code path.
RULE_CASES = {name: (lambda name=name: rules.get(name)) for name in rules.REGISTRY}
RULE_CASES.update({
    "polynomial(use_mod)": lambda: rules.polynomial(use_mod=True),
    "instar(wta)": lambda: rules.instar(winner_take_all=True),
    "krotov(p=3)": lambda: rules.krotov(p=3.0, k=3),
    "modulated(hebb)": lambda: rules.modulated(rules.hebb()),
    "modulated(bcm, trace)": lambda: rules.modulated(rules.bcm(), trace_decay=0.9),
    "annealed(oja)": lambda: rules.annealed(rules.oja()),
    "annealed(modulated(covariance, trace))": lambda: rules.get(
        "annealed(modulated(covariance, 0.5))"),
})


# Test data comes from NumPy: eager jax.random compiles a kernel per call and shape,
# which costs more than the learning itself on a 2-core machine.

def _f32(x):
    return jnp.asarray(x, jnp.float32)


def _example(seed=0, n_post=N_POST, n_pre=N_PRE):
    """A random (w, pre, post, mod) in float32; post and mod are (n_post,)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_post, n_pre)) * 0.5
    pre, post, mod = rng.normal(size=n_pre), rng.normal(size=n_post), rng.normal(size=n_post)
    return tuple(_f32(a) for a in (w, pre, post, mod))


def _random_coeffs(rule, granularity, seed):
    """The rule's coefficient pytree at ``granularity`` filled with N(default, 0.1)."""
    rng = np.random.default_rng(seed)
    return {name: value + _f32(0.1 * rng.normal(size=value.shape))
            for name, value in rules.init_coeffs(rule, (N_POST, N_PRE), granularity).items()}


def _assert_trees_close(a, b, **tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


# ---------------------------------------------------------------- contract ----

@pytest.mark.parametrize("case", sorted(RULE_CASES))
def test_contract(case):
    """Shapes, dtype, finite values, one compile per shape, vmap == loop, scan == loop."""
    rule = RULE_CASES[case]()
    w, pre, post, mod = _example()
    state = rule.init(w)
    update = jax.jit(rule.update)

    for granularity in GRANULARITIES:
        coeffs = rules.init_coeffs(rule, w.shape, granularity)
        dw, new_state = update(coeffs, state, w, pre, post, mod)
        assert dw.shape == w.shape and dw.dtype == w.dtype
        assert np.all(np.isfinite(dw)), granularity
        assert jax.tree.structure(new_state) == jax.tree.structure(state)
        assert [(a.shape, a.dtype) for a in jax.tree.leaves(new_state)] == \
            [(a.shape, a.dtype) for a in jax.tree.leaves(state)]
    # New values at an already-seen shape must not retrace.
    update(coeffs, state, w + 1.0, pre * 2.0, post, mod)
    assert update._cache_size() == len(GRANULARITIES)

    # A population of per-synapse coefficient pytrees, each living 5 steps with w and
    # the rule state as scan carry: vmap(scan) == a Python loop over members and steps.
    population = [_random_coeffs(rule, "synapse", seed) for seed in range(3)]
    steps = _f32(np.random.default_rng(1).normal(size=(5, N_PRE + 2 * N_POST)))

    def step(coeffs, carry, xs):
        w, state = carry
        pre, post, mod = jnp.split(xs, [N_PRE, N_PRE + N_POST])
        dw, state = update(coeffs, state, w, pre, post, mod)
        return (w + dw, state), dw

    def lifetime(coeffs):
        return jax.lax.scan(lambda carry, xs: step(coeffs, carry, xs), (w, state), steps)

    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *population)
    batched = jax.jit(jax.vmap(lifetime))(stacked)
    for member, coeffs in enumerate(population):
        carry, dws = (w, state), []
        for xs in steps:
            carry, dw = step(coeffs, carry, xs)
            dws.append(dw)
        # Loose: fused vs unfused float32 rounding compounds over steps (fast_weight_delta).
        _assert_trees_close(jax.tree.map(lambda x: x[member], batched), (carry, jnp.stack(dws)),
                            rtol=1e-4, atol=1e-5)


# Names other modules (and docs/CONTRACTS.md) rely on; the registry may hold more.
CONTRACT_NAMES = {
    "hebb", "oja", "sanger", "hpca", "instar", "soft_wta", "krotov", "covariance", "bcm", "bcpnn",
    "anti_hebb", "A", "AD", "AD_lr", "ABC", "ABC_lr", "ABCD", "ABCD_lr", "ABCD_lr_D_out",
    "ABCD_lr_D_in_and_out", "polynomial", "polynomial_mod", "multilinear", "multilinear_mod",
    "delta", "chl", "generec", "err_credit", "hebbian_mask", "fast_weight_ba",
    "fast_weight_delta"}


def test_registry_holds_the_contract_names():
    assert CONTRACT_NAMES <= set(rules.REGISTRY)


@pytest.mark.parametrize("name", sorted(rules.REGISTRY))
def test_every_registry_entry_is_importable_named_and_documented(name):
    factory = getattr(rules, name)
    assert factory is rules.REGISTRY[name] and name in rules.__all__
    rule = factory()
    assert rule.name == name and rules.get(name).name == name
    assert rule.coeffs_per_synapse == sum(v.size for v in rule.default_coeffs.values())
    assert "Reference" in factory.__doc__, name   # equation + source


def test_coeffs_per_synapse_match_reference_code():
    # coefficients_per_synapse of Najarro & Risi's evolution_strategy_hebb.py.
    expected = {"A": 1, "AD": 2, "AD_lr": 3, "ABC": 3, "ABC_lr": 4, "ABCD": 4, "ABCD_lr": 5,
                "ABCD_lr_D_out": 5, "ABCD_lr_D_in_and_out": 6}
    assert {n: rules.get(n).coeffs_per_synapse for n in expected} == expected
    assert rules.polynomial().coeffs_per_synapse == 27 + 1
    assert rules.polynomial(use_mod=True).coeffs_per_synapse == 54 + 1


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_init_coeffs_shapes(granularity):
    g = {"shared": (), "post": (N_POST, 1), "synapse": (N_POST, N_PRE)}[granularity]
    coeffs = rules.init_coeffs(rules.polynomial(use_mod=True), (N_POST, N_PRE), granularity)
    assert coeffs["theta"].shape == (3, 3, 3, 2) + g and coeffs["eta"].shape == g
    assert np.all(coeffs["theta"][1, 1, 0, 0] == 1.0) and np.sum(coeffs["theta"]) == np.prod(g)


# ------------------------------------------------------- NumPy references ----
# Each reference is written from the equation, element by element where that is
# what the paper writes, independently of the vectorised implementation.

def _np(tree):
    return jax.tree.map(np.asarray, tree)


def _ref_gha(c, w, x, y):
    dw = np.zeros_like(w)
    for i in range(len(y)):
        residual = x - sum(y[k] * w[k] for k in range(i + 1))
        dw[i] = c["eta"][i] * y[i] * residual
    return dw


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _ref_krotov(c, w, x, p, k, anti):
    current = np.array([np.sum(np.abs(w[m]) ** (p - 2) * w[m] * x) for m in range(len(w))])
    order = np.argsort(-current)
    g = np.zeros(len(w))
    g[order[0]], g[order[k - 1]] = 1.0, -anti
    return np.stack([c["eta"][m] * g[m] * (x - current[m] * w[m]) for m in range(len(w))])


def _ref_polynomial(c, w, x, y, m=None):
    dw = np.zeros_like(w)
    for a in range(w.shape[0]):
        for b in range(w.shape[1]):
            for i, j, k in np.ndindex(3, 3, 3):
                if m is None:
                    dw[a, b] += c["theta"][i, j, k, a, b] * x[b] ** i * y[a] ** j * w[a, b] ** k
                else:
                    for l in range(2):
                        dw[a, b] += (c["theta"][i, j, k, l, a, b] * x[b] ** i * y[a] ** j
                                     * w[a, b] ** k * m[a] ** l)
    return c["eta"] * dw


REFERENCES = {
    "hebb": lambda c, s, w, x, y, m: c["eta"] * (np.outer(y, x) - c["decay"] * w),
    "oja": lambda c, s, w, x, y, m: c["eta"] * (np.outer(y, x) - (y**2)[:, None] * w),
    "sanger": lambda c, s, w, x, y, m: _ref_gha(c, w, x, y),
    "hpca": lambda c, s, w, x, y, m: _ref_gha(c, w, x, y),
    "anti_hebb": lambda c, s, w, x, y, m: -c["eta"] * (np.outer(y, x) - c["target"]),
    "instar": lambda c, s, w, x, y, m: c["eta"] * y[:, None] * (x[None] - w),
    "soft_wta": lambda c, s, w, x, y, m: c["eta"] * _softmax(y)[:, None] * (x[None] - w),
    "krotov": lambda c, s, w, x, y, m: _ref_krotov(c, w, x, p=2.0, k=2, anti=0.4),
    "delta": lambda c, s, w, x, y, m: c["eta"] * np.outer(m - y, x),
    "chl": lambda c, s, w, x, y, m: c["eta"] * (np.outer(m, x) - np.outer(y, x)),
    "generec": lambda c, s, w, x, y, m: c["eta"] * np.outer(m - y, x),
    "fast_weight_ba": lambda c, s, w, x, y, m: c["lam"] * w + c["eta"] * np.outer(y, x) - w,
    "fast_weight_delta": lambda c, s, w, x, y, m: c["beta"] * m[:, None] * np.outer(y - w @ x, x),
    "polynomial": lambda c, s, w, x, y, m: _ref_polynomial(c, w, x, y),
    "hebbian_mask": lambda c, s, w, x, y, m: np.zeros_like(w),
    "covariance": lambda c, s, w, x, y, m: c["eta"] * np.outer(y - s.post_mean, x - s.pre_mean),
    "bcm": lambda c, s, w, x, y, m: c["eta"] * np.outer(y * (y - s.theta), x),
    "bcpnn": lambda c, s, w, x, y, m: c["eta"] * np.outer(y, x),
    "rls": lambda c, s, w, x, y, m: c["eta"] * np.outer(m - y, s @ x / (1.0 + x @ s @ x)),
    "err_credit": lambda c, s, w, x, y, m: (
        c["eta"] * (y - s.post_avg)[:, None] * (s.credit + 0.1 * (np.outer(y, x) - s.credit))),
}


def _random_state(rule, w, seed=7):
    """A non-trivial state of the right structure (zeros would hide state bugs)."""
    state = rule.init(w)
    leaves, treedef = jax.tree.flatten(state)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(
        treedef, [jnp.asarray(rng.uniform(0.2, 1.0, l.shape), l.dtype) for l in leaves])


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_reference_step(name):
    rule = rules.get(name)
    w, pre, post, mod = _example(seed=3)
    if name == "hpca":  # HPCA's post is a nonlinear response
        post = jax.nn.relu(post)
    coeffs = _random_coeffs(rule, "synapse", seed=5)
    state = _random_state(rule, w)
    dw, _ = rule.update(coeffs, state, w, pre, post, mod)
    expected = REFERENCES[name](_np(coeffs), _np(state), *_np((w, pre, post, mod)))
    np.testing.assert_allclose(dw, expected, rtol=1e-5, atol=1e-6)


def test_reference_state_updates():
    w, pre, post, _ = _example(seed=4)
    x, y = np.asarray(pre), np.asarray(post)

    cov = rules.covariance(rate=0.2)
    s = _random_state(cov, w)
    _, new = cov.update(rules.init_coeffs(cov, w.shape), s, w, pre, post)
    np.testing.assert_allclose(new.pre_mean, 0.8 * np.asarray(s.pre_mean) + 0.2 * x, rtol=1e-6)
    np.testing.assert_allclose(new.post_mean, 0.8 * np.asarray(s.post_mean) + 0.2 * y, rtol=1e-6)

    bcm = rules.bcm(rate=0.3)
    s = _random_state(bcm, w)
    _, new = bcm.update(rules.init_coeffs(bcm, w.shape), s, w, pre, post)
    np.testing.assert_allclose(new.theta, 0.7 * np.asarray(s.theta) + 0.3 * y**2, rtol=1e-6)

    ec = rules.err_credit(credit_rate=0.1, post_rate=0.5)
    s = _random_state(ec, w)
    coeffs = rules.init_coeffs(ec, w.shape)
    _, new = ec.update(coeffs, s, w, pre, post)
    credit = 0.9 * np.asarray(s.credit) + 0.1 * np.outer(y, x)
    np.testing.assert_allclose(new.credit, credit, rtol=1e-5)
    np.testing.assert_allclose(new.post_avg, 0.5 * np.asarray(s.post_avg) + 0.5 * y, rtol=1e-6)
    # two phases: the error is the late signal minus post, and the slow average stays
    two_phase = rules.err_credit(credit_rate=0.1, late_phase=True)
    late = y + np.linspace(-0.5, 0.5, y.size)
    dw, new = two_phase.update(coeffs, s, w, pre, post, jnp.asarray(late))
    np.testing.assert_allclose(dw, 0.01 * (late - y)[:, None] * credit, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(new.post_avg, s.post_avg)
    with pytest.raises(ValueError, match="needs mod"):
        two_phase.update(coeffs, s, w, pre, post)


def test_bcpnn_counts_and_weights_follow_its_equations():
    """Counts at rate eta, then BCPNN's weights from them, transcribed from the docstring;
    a unit never active has no vote (its weight is the prior's alone)."""
    gain, bias, eta, n_post, n_pre = 1.3, 0.6, 2.0, 3, 5
    rule = rules.bcpnn(gain=gain, bias=bias)
    w = jnp.zeros((n_post, n_pre))
    state = rule.init(w)
    coeffs = {"eta": jnp.asarray(eta)}
    c, ci, cj, n, a = np.zeros((n_post, n_pre)), np.zeros(n_pre), np.zeros(n_post), 0.0, 0.0

    def expected():
        p_j = (cj + 1) / (n + n_post)
        p_cond = (c + p_j[:, None]) / (ci[None, :] + 1)
        m = a / n if n else 1.0
        return (gain * np.log(p_cond / p_j[:, None]) + bias * np.log(p_j)[:, None]) / m

    np.testing.assert_allclose(rule.effective_weights(w, state), expected(), rtol=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(6):
        x = (rng.random(n_pre) < 0.5).astype(np.float32)
        x[-1] = 0.0  # never active
        y = np.eye(n_post, dtype=np.float32)[rng.integers(n_post)]
        dw, state = rule.update(coeffs, state, w, _f32(x), _f32(y))
        w = w + dw
        c, ci, cj = c + eta * np.outer(y, x), ci + eta * x, cj + eta * y
        n, a = n + eta, a + eta * x.sum()
        np.testing.assert_allclose(w, c, rtol=1e-6)
        np.testing.assert_allclose(rule.effective_weights(w, state), expected(), rtol=1e-5,
                                   atol=1e-6)
    p_j = (cj + 1) / (n + n_post)
    np.testing.assert_allclose(rule.effective_weights(w, state)[:, -1],
                               bias * np.log(p_j) / (a / n), rtol=1e-5)
    assert rules.get("bcpnn(bias=0.6, gain=1.3)").name == "bcpnn(bias=0.6, gain=1.3)"


def test_hebbian_mask_prunes_disagreeing_and_regrows_agreeing_synapses():
    rule = rules.hebbian_mask(prune_below=-0.25, regrow_above=0.25, limit=1.0)
    coeffs = {"rate": jnp.asarray(0.1)}
    w = jnp.ones((2, 2))
    pre, post = jnp.array([1.0, -1.0]), jnp.array([1.0, 1.0])   # agree on column 0 only

    update = jax.jit(rule.update)

    def run(state, sign, n):
        for _ in range(n):
            _, state = update(coeffs, state, w, pre, sign * post)
        return state

    state = run(rule.init(w), 1.0, 3)  # h = [+0.3, -0.3]: column 1 pruned
    np.testing.assert_allclose(state.value, [[0.3, -0.3]] * 2, atol=1e-6)
    np.testing.assert_array_equal(state.mask, [[1.0, 0.0]] * 2)
    np.testing.assert_array_equal(rules.apply_mask(w, state), [[1.0, 0.0]] * 2)
    state = run(state, -1.0, 4)        # h = [-0.1, +0.1]: inside the band, mask kept
    np.testing.assert_array_equal(state.mask, [[1.0, 0.0]] * 2)
    state = run(state, -1.0, 2)        # h = [-0.3, +0.3]: column 0 pruned, 1 regrown
    np.testing.assert_array_equal(state.mask, [[0.0, 1.0]] * 2)
    state = run(state, -1.0, 20)       # clipped at the limit
    np.testing.assert_allclose(state.value, [[-1.0, 1.0]] * 2, atol=1e-6)


def test_chl_plus_phase_pair_and_generec():
    w, pre, post, mod = _example(seed=6)
    coeffs = {"eta": jnp.asarray(0.5)}
    plus_pre = pre + 1.0
    dw, _ = rules.chl().update(coeffs, (), w, pre, post, rules.PlusPhase(plus_pre, mod))
    x, xp, y, yp = _np((pre, plus_pre, post, mod))
    np.testing.assert_allclose(dw, 0.5 * (np.outer(yp, xp) - np.outer(y, x)), rtol=1e-5, atol=1e-6)
    # When the sender is the same in both phases, CHL and GeneRec coincide.
    dw_chl, _ = rules.chl().update(coeffs, (), w, pre, post, mod)
    dw_generec, _ = rules.generec().update(coeffs, (), w, pre, post, mod)
    np.testing.assert_allclose(dw_chl, dw_generec, rtol=1e-5, atol=1e-6)


def test_fast_weights_match_contract_equations():
    w, h, v, _ = _example(seed=8, n_post=4, n_pre=4)
    ba = rules.fast_weight_ba()
    dw, _ = ba.update({"lam": jnp.asarray(0.9), "eta": jnp.asarray(0.3)}, (), w, h, h)
    np.testing.assert_allclose(w + dw, 0.9 * w + 0.3 * jnp.outer(h, h), rtol=1e-5, atol=1e-6)

    fwd = rules.fast_weight_delta()
    k, beta = h, {"beta": jnp.asarray(0.7)}
    dw_none, _ = fwd.update(beta, (), w, k, v)
    dw_gate, _ = fwd.update(beta, (), w, k, v, jnp.asarray(0.5))
    np.testing.assert_allclose(w + dw_none, w + 0.7 * jnp.outer(v - w @ k, k),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw_gate, 0.5 * dw_none, rtol=1e-5, atol=1e-6)
    # beta * mod = 1 with a unit key writes v exactly: the memory now returns v for k.
    k_unit = k / jnp.linalg.norm(k)
    dw, _ = fwd.update({"beta": jnp.asarray(1.0)}, (), w, k_unit, v)
    np.testing.assert_allclose((w + dw) @ k_unit, v, rtol=1e-5, atol=1e-5)


def test_modulated_gates_and_traces():
    w, pre, post, mod = _example(seed=9)
    hebb = rules.hebb()
    coeffs = _random_coeffs(hebb, "post", seed=2)
    pre2 = 1.0 - 0.5 * pre
    u1, _ = hebb.update(coeffs, (), w, pre, post)
    u2, _ = hebb.update(coeffs, (), w, pre2, post)

    dw, _ = rules.modulated(hebb).update(coeffs, (), w, pre, post, mod)
    np.testing.assert_allclose(dw, np.asarray(mod)[:, None] * u1, rtol=1e-5, atol=1e-6)

    traced = rules.modulated(hebb, trace_decay=0.5)
    state = traced.init(w)
    _, state = traced.update(coeffs, state, w, pre, post, 0.0)   # no reward: trace only
    dw, state = traced.update(coeffs, state, w, pre2, post, 2.0)
    np.testing.assert_allclose(state.trace, 0.5 * u1 + u2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw, 2.0 * (0.5 * u1 + u2), rtol=1e-5, atol=1e-6)


def test_rls_weights_are_the_ridge_regression_of_the_inputs_seen():
    """With eta = 1 and the layer's own prediction as post, RLS after t inputs holds
    W_t = Y X^T (X X^T + alpha I)^-1 exactly (with forgetting, each sample weighted
    forget^(t-s)); P is the inverse of the same matrix."""
    rng = np.random.default_rng(0)
    n_post, n_pre, steps, alpha, forget = 3, 5, 12, 0.5, 0.9
    xs = rng.normal(size=(steps, n_pre))
    ys = xs @ rng.normal(size=(n_pre, n_post)) + 0.1 * rng.normal(size=(steps, n_post))
    rule = rules.rls(alpha=alpha, forget=forget)
    coeffs = rules.init_coeffs(rule, (n_post, n_pre))
    w = jnp.zeros((n_post, n_pre))
    state = rule.init(w)
    for x, y in zip(xs, ys):
        x = _f32(x)
        dw, state = rule.update(coeffs, state, w, x, w @ x, _f32(y))
        w = w + dw
    decay = forget ** np.arange(steps - 1, -1, -1.0)
    gram = (xs.T * decay) @ xs + forget ** steps * alpha * np.eye(n_pre)
    np.testing.assert_allclose(w, np.linalg.solve(gram, (xs.T * decay) @ ys).T, rtol=2e-4,
                               atol=2e-5)
    np.testing.assert_allclose(state, np.linalg.inv(gram), rtol=2e-4, atol=2e-5)


def test_rls_under_a_one_hot_input_learns_each_column_at_one_over_its_count():
    rule = rules.rls(alpha=2.0)
    w = jnp.zeros((2, 3))
    coeffs = rules.init_coeffs(rule, w.shape)
    state, counts = rule.init(w), np.zeros(3)
    target = _f32([1.0, 0.0])
    for token in (1, 1, 0, 1, 2):
        counts[token] += 1
        pre = jnp.eye(3)[token]
        dw, state = rule.update(coeffs, state, w, pre, jnp.zeros(2), target)
        np.testing.assert_allclose(dw, np.outer(target, pre) / (2.0 + counts[token]),
                                   rtol=1e-6)
    np.testing.assert_allclose(state, np.diag(1 / (2.0 + counts)), rtol=1e-6)


def test_annealed_scales_each_column_by_its_presynaptic_count():
    """dw_ij = (1 + n_j / tau)^(-kappa) u_ij with n_j the summed x_j^2 so far: under a
    one-hot input and kappa = 1, tau = 1, column j learns at 1 / (1 + its count)."""
    rule = rules.annealed(rules.hebb())
    w = jnp.zeros((2, 3))
    post = _f32([1.0, -2.0])
    coeffs = {"eta": _f32(0.5), "decay": _f32(0.0), "kappa": _f32(1.0), "log_tau": _f32(0.0)}
    state = rule.init(w)
    counts = np.zeros(3)
    for token in (0, 2, 0, 0, 1):
        pre = jnp.eye(3)[token]
        counts[token] += 1
        dw, state = rule.update(coeffs, state, w, pre, post)
        expected = 0.5 * np.outer(post, pre) / (1.0 + counts)
        np.testing.assert_allclose(dw, expected, rtol=1e-6)
    np.testing.assert_allclose(state.count, counts)

    # tau and kappa per post neuron, on a dense input: the general formula.
    w, pre, post, mod = _example(seed=4)
    inner = rules.oja()
    coeffs = {**_random_coeffs(inner, "post", seed=1),
              "kappa": _f32([[0.5], [1.0], [2.0]]), "log_tau": _f32([[0.0], [1.0], [-1.0]])}
    state = rules.annealed(inner).init(w)
    state = state._replace(count=_f32([3.0, 0.0, 1.0, 2.0]))
    dw, _ = rules.annealed(inner).update(coeffs, state, w, pre, post)
    u, _ = inner.update({k: coeffs[k] for k in inner.default_coeffs}, (), w, pre, post)
    n = np.asarray([3.0, 0.0, 1.0, 2.0]) + np.asarray(pre) ** 2
    scale = (1 + n[None, :] / np.exp(np.asarray(coeffs["log_tau"]))) ** (
        -np.asarray(coeffs["kappa"]))
    np.testing.assert_allclose(dw, scale * np.asarray(u), rtol=1e-5, atol=1e-7)


def test_annealed_with_default_coefficients_is_the_wrapped_rule():
    """kappa = 0 by default, so wrapping changes nothing until the outer loop moves it; the
    wrapped rule keeps its state, its target reading and its error-driven flag."""
    w, pre, post, mod = _example(seed=6)
    for inner in (rules.multilinear_mod(), rules.modulated(rules.bcm(), trace_decay=0.5)):
        wrapped = rules.annealed(inner)
        assert wrapped.reads_target == inner.reads_target
        coeffs = rules.init_coeffs(wrapped, w.shape, "synapse")
        state, inner_state = wrapped.init(w), inner.init(w)
        for _ in range(3):
            dw, state = wrapped.update(coeffs, state, w, pre, post, mod)
            du, inner_state = inner.update({k: coeffs[k] for k in inner.default_coeffs},
                                           inner_state, w, pre, post, mod)
            np.testing.assert_allclose(dw, du, rtol=1e-6)
        _assert_trees_close(state.inner, inner_state, rtol=1e-6)


def test_annealed_refuses_a_rule_with_its_coefficient_names():
    clash = rules.make_rule("clash", lambda c, s, w, x, y, m: (jnp.zeros_like(w), s),
                            {"kappa": 1.0})
    with pytest.raises(ValueError, match="already has a coefficient 'kappa'"):
        rules.annealed(clash)


# Najarro & Risi's hebbian_update_<variant>, transcribed for one layer: their flat
# coefficient row for synapse (post j, pre i) is heb_coeffs[i * n_post + j], columns
# in their order; w[j, i] += ...
NAJARRO_COLUMNS = {
    "A": ("A",), "AD": ("A", "D"), "AD_lr": ("A", "D", "eta"), "ABC": ("A", "B", "C"),
    "ABC_lr": ("A", "B", "C", "eta"), "ABCD": ("A", "B", "C", "D"),
    "ABCD_lr": ("A", "B", "C", "eta", "D"), "ABCD_lr_D_out": ("A", "B", "C", "eta", "D_out"),
    "ABCD_lr_D_in_and_out": ("A", "B", "C", "eta", "D", "D_out"),
}


def _najarro_step(variant, h, o0, o1, n_post, n_pre):
    dw = np.zeros((n_post, n_pre))
    for i in range(n_pre):
        for j in range(n_post):
            c = h[(n_post - 1) * i + i + j]
            abc = lambda: c[0] * o0[i] * o1[j] + c[1] * o0[i] + c[2] * o1[j]  # noqa: E731
            dw[j, i] = {
                "A": lambda: c[0] * o0[i] * o1[j],
                "AD": lambda: c[0] * o0[i] * o1[j] + c[1],
                "AD_lr": lambda: (c[0] * o0[i] * o1[j] + c[1]) * c[2],
                "ABC": abc,
                "ABC_lr": lambda: c[3] * abc(),
                "ABCD": lambda: c[3] + abc(),
                "ABCD_lr": lambda: c[3] * (abc() + c[4]),
                "ABCD_lr_D_out": lambda: c[3] * abc() + c[4],
                "ABCD_lr_D_in_and_out": lambda: c[3] * (abc() + c[4]) + c[5],
            }[variant]()
    return dw


@pytest.mark.parametrize("variant", sorted(NAJARRO_COLUMNS))
def test_abcd_matches_najarro_reference_code(variant):
    w, pre, post, _ = _example(seed=10)
    columns = NAJARRO_COLUMNS[variant]
    heb_coeffs = np.random.default_rng(11).normal(size=(N_PRE * N_POST, len(columns)))
    # Their pre-major flat layout -> plastix (n_post, n_pre) arrays.
    coeffs = {name: jnp.asarray(heb_coeffs[:, col].reshape(N_PRE, N_POST).T, jnp.float32)
              for col, name in enumerate(columns)}
    dw, _ = rules.get(variant).update(coeffs, (), w, pre, post)
    expected = _najarro_step(variant, heb_coeffs, np.asarray(pre), np.asarray(post), N_POST, N_PRE)
    np.testing.assert_allclose(dw, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ theory ----

def _gaussian_with_known_covariance(rng, n, eigenvalues):
    """Samples x ~ N(0, C), C = Q diag(eigenvalues) Q^T with a random rotation Q;
    returns (samples, Q) with Q's columns the eigenvectors in the given order."""
    q, _ = np.linalg.qr(rng.normal(size=(len(eigenvalues),) * 2))
    z = rng.normal(size=(n, len(eigenvalues))) * np.sqrt(eigenvalues)
    return _f32(z @ q.T), q


def _run_linear(rule, w0, xs, eta0=0.01, half_life=500.0):
    """Trains ``w`` with linear ``post = w @ pre`` over the samples ``xs`` in one jitted
    lax.scan, with the decaying rate ``eta0 / (1 + t / half_life)`` that stochastic
    approximation needs for Oja's and Sanger's convergence theorems."""

    def step(w, x_eta):
        x, eta = x_eta
        dw, _ = rule.update({"eta": eta}, (), w, x, w @ x)
        return w + dw, None

    etas = eta0 / (1.0 + jnp.arange(len(xs)) / half_life)
    return jax.jit(lambda w0, xs, etas: jax.lax.scan(step, w0, (xs, etas))[0])(w0, xs, etas)


def _abs_cos(a, b):
    return np.abs(np.dot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b))


def test_oja_converges_to_unit_principal_eigenvector():
    rng = np.random.default_rng(0)
    xs, q = _gaussian_with_known_covariance(rng, 3000, [4.0, 2.0, 1.0, 0.5])
    w0 = _f32(0.1 * rng.normal(size=(1, 4)))
    w = np.asarray(_run_linear(rules.oja(), w0, xs))[0]
    assert _abs_cos(w, np.asarray(q[:, 0])) > 0.99
    assert abs(np.linalg.norm(w) - 1.0) < 0.05


def test_sanger_rows_converge_to_top_k_orthonormal_eigenvectors():
    rng = np.random.default_rng(2)
    xs, q = _gaussian_with_known_covariance(rng, 5000, [5.0, 3.0, 1.5, 0.5, 0.2])
    w0 = _f32(0.1 * rng.normal(size=(3, 5)))
    w = np.asarray(_run_linear(rules.sanger(), w0, xs))
    for i in range(3):
        assert _abs_cos(w[i], np.asarray(q[:, i])) > 0.95, i
    np.testing.assert_allclose(w @ w.T, np.eye(3), atol=0.1)


def test_competitive_instar_moves_weights_to_cluster_centres():
    centres = np.array([[4.0, 0.0], [-2.0, 3.5], [-2.0, -3.5]])
    rng = np.random.default_rng(4)
    xs = _f32(centres[rng.integers(0, 3, 3000)] + 0.3 * rng.normal(size=(3000, 2)))
    w0 = _f32(centres + rng.normal(size=(3, 2)))   # each unit starts ~1 away
    rule, coeffs = rules.instar(winner_take_all=True), {"eta": jnp.asarray(0.02)}

    def step(w, x):
        # Competitive units respond by closeness: post = -|x - w_i|^2.
        dw, _ = rule.update(coeffs, (), w, x, -jnp.sum((x - w) ** 2, axis=1))
        return w + dw, None

    w = jax.jit(lambda w0, xs: jax.lax.scan(step, w0, xs)[0])(w0, xs)
    assert np.max(np.linalg.norm(w0 - centres, axis=1)) > 0.5
    np.testing.assert_array_less(np.linalg.norm(w - centres, axis=1), 0.15)


def test_bcm_ends_selective_to_one_pattern():
    patterns = jnp.asarray(np.random.default_rng(0).uniform(0.0, 1.0, (3, 5)), jnp.float32)
    idx = jnp.asarray(np.random.default_rng(5).integers(0, 3, 20000))
    rule, coeffs = rules.bcm(rate=0.05), {"eta": jnp.asarray(0.005)}
    w0 = jnp.full((1, 5), 0.2)

    def step(carry, i):
        w, state = carry
        x = patterns[i]
        dw, state = rule.update(coeffs, state, w, x, jax.nn.relu(w @ x))
        return (w + dw, state), None

    w, _ = jax.jit(lambda c, idx: jax.lax.scan(step, c, idx)[0])((w0, rule.init(w0)), idx)
    responses = np.sort(np.maximum(np.asarray(w @ patterns.T)[0], 0.0))
    initial = np.asarray(w0 @ patterns.T)[0]
    assert initial.min() > 0.4 * initial.max()            # responds to all at the start
    assert responses[-1] > 1.0 and responses[-2] < 0.1 * responses[-1], responses


def test_covariance_rule_mean_change_zero_for_independent_and_cov_for_correlated():
    n, eta = 6000, 0.01
    rng = np.random.default_rng(6)
    pre = _f32(1.0 + rng.uniform(size=(n, 2)))
    noise = _f32(rng.normal(size=(n, 2)))
    independent_post = 2.0 + noise
    correlated_post = 2.0 + noise + 3.0 * (pre - 1.5)  # cov(x_i, y_i) = 3 var(U) = 0.25
    rule, coeffs = rules.covariance(rate=0.01), {"eta": jnp.asarray(eta)}

    def mean_dw(posts):
        w0 = jnp.zeros((2, 2))

        def step(state, xy):
            dw, state = rule.update(coeffs, state, w0, *xy)
            return state, dw

        return jax.lax.scan(step, rule.init(w0), (pre, posts))[1][1000:].mean(0)

    ind, cor = jax.jit(jax.vmap(mean_dw))(jnp.stack([independent_post, correlated_post]))
    hebbian_mean = eta * 2.0 * 1.5                         # eta E[y] E[x]
    assert np.max(np.abs(ind)) < 0.02 * hebbian_mean, ind
    np.testing.assert_allclose(np.diag(cor), eta * 0.25, rtol=0.25)
    assert np.max(np.abs(cor - np.diag(np.diag(cor)))) < 0.02 * hebbian_mean


def test_abcd_with_only_a_equals_hebb():
    w, pre, post, _ = _example(seed=12)
    a = _random_coeffs(rules.A(), "synapse", seed=3)["A"]
    zeros = jnp.zeros_like(a)
    hebb_dw, _ = rules.hebb().update({"eta": a, "decay": zeros}, (), w, pre, post)
    only_a = {"A": a, "B": zeros, "C": zeros, "D": zeros, "eta": jnp.ones_like(a), "D_out": zeros}
    for variant, columns in NAJARRO_COLUMNS.items():
        dw, _ = rules.get(variant).update({k: only_a[k] for k in columns}, (), w, pre, post)
        np.testing.assert_allclose(dw, hebb_dw, rtol=1e-6, atol=1e-7, err_msg=variant)


def test_polynomial_reproduces_hebb_oja_abcd_and_delta():
    w, pre, post, mod = _example(seed=13)
    g = (N_POST, N_PRE)
    eta = jnp.full(g, 0.3)

    def theta_with(entries, shape=(3, 3, 3)):
        theta = np.zeros(shape + g, np.float32)
        for index, value in entries.items():
            theta[index] = value
        return jnp.asarray(theta)

    def poly(entries, **kw):
        rule = rules.polynomial(**kw)
        shape = (3, 3, 3, 2) if kw else (3, 3, 3)
        return rule.update({"theta": theta_with(entries, shape), "eta": eta}, (), w, pre, post,
                           mod if kw else None)[0]

    def check(ours, theirs):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)

    decay = 0.2
    check(poly({(1, 1, 0): 1.0, (0, 0, 1): -decay}),
          rules.hebb().update({"eta": eta, "decay": jnp.full(g, decay)}, (), w, pre, post)[0])
    check(poly({(1, 1, 0): 1.0, (0, 2, 1): -1.0}),
          rules.oja().update({"eta": eta}, (), w, pre, post)[0])
    abcd = _random_coeffs(rules.ABCD_lr(), "synapse", seed=4)
    check(rules.polynomial().update(
              {"theta": theta_with({}).at[1, 1, 0].set(abcd["A"]).at[1, 0, 0].set(abcd["B"])
               .at[0, 1, 0].set(abcd["C"]).at[0, 0, 0].set(abcd["D"]), "eta": abcd["eta"]},
              (), w, pre, post)[0],
          rules.ABCD_lr().update(abcd, (), w, pre, post)[0])
    check(poly({(1, 0, 0, 1): 1.0, (1, 1, 0, 0): -1.0}, use_mod=True),
          rules.delta().update({"eta": eta}, (), w, pre, post, mod)[0])


def test_polynomial_with_mod_matches_reference():
    w, pre, post, mod = _example(seed=14)
    rule = rules.polynomial(use_mod=True)
    coeffs = _random_coeffs(rule, "synapse", seed=6)
    dw, _ = rule.update(coeffs, (), w, pre, post, mod)
    np.testing.assert_allclose(dw, _ref_polynomial(_np(coeffs), *_np((w, pre, post, mod))),
                               rtol=1e-4, atol=1e-5)
    # A scalar mod acts like the same value for every post neuron.
    dw_scalar, _ = rule.update(coeffs, (), w, pre, post, mod[0])
    dw_vector, _ = rule.update(coeffs, (), w, pre, post, jnp.full(N_POST, mod[0]))
    np.testing.assert_allclose(dw_scalar, dw_vector, rtol=1e-6, atol=1e-7)


def test_krotov_with_p3_matches_reference():
    w, pre, post, _ = _example(seed=15)
    rule = rules.krotov(p=3.0, k=3, anti=0.3)
    coeffs = _random_coeffs(rule, "post", seed=7)
    dw, _ = rule.update(coeffs, (), w, pre, post)
    c = {"eta": np.broadcast_to(np.asarray(coeffs["eta"]), w.shape)}
    np.testing.assert_allclose(dw, _ref_krotov(c, *_np((w, pre)), p=3.0, k=3, anti=0.3),
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------ flattening for ES ----

def test_flat_per_synapse_coefficient_maps_to_its_post_pre_entry():
    """Flatten like evosax (ravel_pytree), bump one entry, unflatten: exactly the
    synapse (post a, pre b) of that entry changes."""
    w, pre, post, _ = _example(seed=16)
    rule = rules.ABCD_lr()
    zero = {k: jnp.zeros_like(v) for k, v in rules.init_coeffs(rule, w.shape, "synapse").items()}
    zero["eta"] = jnp.ones_like(zero["eta"])
    flat, unravel = ravel_pytree(zero)
    keys = sorted(zero)                          # ravel_pytree orders dict keys
    per_key = N_POST * N_PRE
    for a, b in [(0, 0), (0, N_PRE - 1), (N_POST - 1, 1), (2, 3)]:
        index = keys.index("C") * per_key + a * N_PRE + b   # C order over (post, pre)
        coeffs = unravel(flat.at[index].set(1.0))
        dw, _ = rule.update(coeffs, (), w, pre, post)
        expected = np.zeros(w.shape)
        expected[a, b] = post[a]                 # C multiplies the post activity
        np.testing.assert_allclose(dw, expected, atol=1e-7)


def test_flat_polynomial_population_round_trip():
    rule = rules.polynomial()
    template = rules.init_coeffs(rule, (N_POST, N_PRE), "synapse")
    flat, unravel = ravel_pytree(template)
    population = _f32(np.random.default_rng(8).normal(size=(4, flat.size)))   # as an ES asks
    members = jax.vmap(unravel)(population)
    i, j, k, a, b, m = 2, 0, 1, 1, 3, 2
    offset = sorted(template).index("theta") * N_POST * N_PRE
    index = offset + np.ravel_multi_index((i, j, k, a, b), (3, 3, 3, N_POST, N_PRE))
    assert members["theta"][m, i, j, k, a, b] == population[m, index]
    assert members["eta"][m, a, b] == population[m, a * N_PRE + b]
    np.testing.assert_array_equal(jax.vmap(lambda c: ravel_pytree(c)[0])(members), population)


# --------------------------------------------------------------- bad input ----

def test_unknown_rule_name_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown rule 'hebbb'.*'hebb'"):
        rules.get("hebbb")


def test_pre_post_not_matching_w_fails_at_trace_time():
    rule = rules.oja()
    w, pre, post, _ = _example()
    coeffs = rules.init_coeffs(rule, w.shape)
    with pytest.raises(ValueError,
                       match=r"rule 'oja': pre \(3,\) and post \(3,\) do not match w \(3, 4\)"):
        jax.jit(rule.update)(coeffs, (), w, pre[:3], post)
    with pytest.raises(ValueError, match=r"rule 'oja'.*post \(4,\).*w \(3, 4\)"):
        jax.jit(rule.update)(coeffs, (), w, pre, pre)
    with pytest.raises(ValueError, match=r"rule 'oja': w must be \(n_post, n_pre\)"):
        jax.jit(rule.update)(coeffs, (), w[0], pre, post)


@pytest.mark.parametrize("bad, message", [
    ({"eta": jnp.zeros((N_PRE, N_POST))},  # transposed per-synapse
     r"coefficient 'eta' has shape \(4, 3\); for w \(3, 4\)"),
    ({"eta": jnp.zeros((N_POST,))}, r"coefficient 'eta' has shape \(3,\); for w \(3, 4\)"),
    ({"eta": jnp.zeros((1, N_PRE))}, r"coefficient 'eta' has shape \(1, 4\); for w \(3, 4\)"),
    ({}, r"coeffs must have keys \['eta'\], got \[\]"),
    ({"eta": jnp.zeros(()), "lr": jnp.zeros(())},
     r"coeffs must have keys \['eta'\], got \['eta', 'lr'\]"),
])
def test_wrong_coefficient_pytree_fails_at_trace_time(bad, message):
    w, pre, post, mod = _example()
    with pytest.raises(ValueError, match=r"rule 'delta': " + message):
        jax.jit(rules.delta().update)(bad, (), w, pre, post, mod)


def test_polynomial_theta_of_wrong_term_shape_fails():
    rule = rules.polynomial(use_mod=True)
    w, pre, post, mod = _example()
    bad = {"theta": jnp.zeros((3, 3, 3)), "eta": jnp.zeros(())}
    with pytest.raises(ValueError,
                       match=r"rule 'polynomial': coefficient 'theta' has shape \(3, 3, 3\)"):
        rule.update(bad, (), w, pre, post, mod)


def test_missing_or_malformed_mod_fails():
    w, pre, post, _ = _example()
    for rule in (rules.delta(), rules.generec(), rules.chl(), rules.polynomial(use_mod=True),
                 rules.modulated(rules.oja())):
        with pytest.raises(ValueError, match=rf"rule '{re.escape(rule.name)}' needs mod"):
            rule.update(rules.init_coeffs(rule, w.shape), rule.init(w), w, pre, post)
    with pytest.raises(ValueError, match=r"rule 'delta': mod must be a scalar or \(3,\)"):
        rules.delta().update({"eta": jnp.zeros(())}, (), w, pre, post, pre)
    with pytest.raises(ValueError, match=r"rule 'chl': plus phase"):
        rules.chl().update({"eta": jnp.zeros(())}, (), w, pre, post, rules.PlusPhase(post, post))


def test_bad_hyperparameters_fail():
    with pytest.raises(ValueError, match="granularity"):
        rules.init_coeffs(rules.hebb(), (3, 4), "per_neuron")
    with pytest.raises(ValueError, match="trace_decay"):
        rules.modulated(rules.hebb(), trace_decay=1.5)
    with pytest.raises(ValueError, match="krotov"):
        rules.krotov(k=1)
    with pytest.raises(ValueError, match=r"krotov.*k=5.*\(3, 4\)"):
        rules.krotov(k=5).update({"eta": jnp.zeros(())}, (), *_example()[:3])
    with pytest.raises(ValueError, match="hebbian_mask"):
        rules.hebbian_mask(prune_below=1.0, regrow_above=0.0)
    with pytest.raises(ValueError, match="rule 'rls': alpha must be a finite number > 0"):
        rules.rls(alpha=0.0)
    with pytest.raises(ValueError, match=r"'rls': forget must be a finite number in \(0, 1\]"):
        rules.rls(forget=1.5)


@pytest.mark.parametrize("use_mod", [False, True])
@pytest.mark.parametrize("degree", [1, 2])
@pytest.mark.parametrize("granularity", ["shared", "post"])
def test_polynomial_fast_paths_equal_the_full_basis(use_mod, degree, granularity):
    """Shared and per-neuron theta take a contraction path; broadcast to per synapse, the
    full-basis path must give the same dw."""
    w, pre, post, mod = _example(seed=21)
    rule = rules.polynomial(use_mod=use_mod, degree=degree)
    coeffs = _random_coeffs(rule, granularity, seed=8)
    m = mod if use_mod else None
    fast, _ = rule.update(coeffs, (), w, pre, post, m)
    term_ndim = rule.default_coeffs["theta"].ndim
    per_synapse = {
        "theta": jnp.broadcast_to(
            coeffs["theta"].reshape(coeffs["theta"].shape[:term_ndim] + (-1, 1)
                                    if granularity == "post" else coeffs["theta"].shape + (1, 1)),
            coeffs["theta"].shape[:term_ndim] + w.shape),
        "eta": jnp.broadcast_to(coeffs["eta"].reshape(-1, 1) if granularity == "post"
                                else coeffs["eta"], w.shape),
    }
    full, _ = rule.update(per_synapse, (), w, pre, post, m)
    np.testing.assert_allclose(fast, full, rtol=1e-5, atol=1e-6)


def test_degree_one_polynomial_expresses_delta_and_hebb_with_decay():
    w, pre, post, mod = _example(seed=22)
    rule = rules.polynomial(use_mod=True, degree=1)
    assert rule.coeffs_per_synapse == 16 + 1
    theta = np.zeros((2, 2, 2, 2), np.float32)
    theta[1, 0, 0, 1], theta[1, 1, 0, 0] = 1.0, -1.0
    dw, _ = rule.update({"theta": jnp.asarray(theta), "eta": jnp.asarray(0.3)}, (), w, pre, post, mod)
    np.testing.assert_allclose(dw, 0.3 * np.outer(mod - post, pre), rtol=1e-5, atol=1e-6)
    theta = np.zeros((2, 2, 2, 2), np.float32)
    theta[1, 0, 0, 1], theta[0, 0, 1, 0] = 1.0, -0.2  # Hebb on (x, teacher) with decay
    dw, _ = rule.update({"theta": jnp.asarray(theta), "eta": jnp.asarray(0.3)}, (), w, pre, post, mod)
    np.testing.assert_allclose(dw, 0.3 * (np.outer(mod, pre) - 0.2 * w), rtol=1e-5, atol=1e-6)
