"""Tests for rules as values: hashable `Rule`s, the registry and `get`'s cache, the
named polynomial variants, the facts a rule declares for a network (``reads_target``,
``effective_weights``, ``outer_affine``), and the package's exports."""

import dataclasses
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import rules
from plastix.rules import abcd

N_POST, N_PRE = 3, 4
GRANULARITIES = ("shared", "post", "synapse")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _example(seed=0):
    """A random float32 (w, pre, post, mod); post and mod are (n_post,)."""
    rng = np.random.default_rng(seed)
    arrays = (rng.normal(size=(N_POST, N_PRE)) * 0.5, rng.normal(size=N_PRE),
              rng.normal(size=N_POST), rng.normal(size=N_POST))
    return tuple(jnp.asarray(a, jnp.float32) for a in arrays)


def _random_coeffs(rule, granularity, seed):
    """Coefficients of the rule's layout at ``granularity``, every entry N(0, 1)."""
    rng = np.random.default_rng(seed)
    return {name: jnp.asarray(rng.normal(size=value.shape), jnp.float32)
            for name, value in rules.init_coeffs(rule, (N_POST, N_PRE), granularity).items()}


def _local_hebb(coeffs, state, w, pre, post, mod):
    del mod
    return coeffs["eta"] * post[:, None] * pre[None, :] - coeffs["decay"] * w, state


# ------------------------------------------------------------ rules as values ----

def test_rule_keeps_its_fields_and_adds_the_new_ones_with_defaults():
    assert rules.Rule._fields == ("name", "init", "update", "default_coeffs",
                                  "coeffs_per_synapse", "reads_target", "effective_weights",
                                  "outer_affine")
    rule = rules.Rule("r", lambda w: (), lambda *a: a, rules.Coefficients({"eta": 0.1}), 1)
    assert (rule.reads_target, rule.effective_weights, rule.outer_affine) == (False, None, None)


@pytest.mark.parametrize("name", sorted(rules.REGISTRY))
def test_every_registry_rule_is_a_hashable_value(name):
    rule = rules.get(name)
    assert rules.get(name) == rule and hash(rules.get(name)) == hash(rule)

    @dataclasses.dataclass(frozen=True)
    class Config:
        rule: rules.Rule
        hidden_size: int = 8

    assert hash(Config(rule)) == hash(Config(rules.get(name)))
    assert Config(rule) == Config(rules.get(name))
    assert dict(rule.default_coeffs).keys() == set(rule.default_coeffs)


def test_a_rule_made_in_a_test_is_hashable_and_a_static_jit_argument():
    rule = rules.make_rule("local_hebb", _local_hebb, {"eta": 0.5, "decay": 0.1})
    assert "local_hebb" not in rules.REGISTRY
    assert {rule: "cached"}[rule] == "cached"

    @functools.partial(jax.jit, static_argnums=0)
    def step(rule, w, pre, post):
        dw, _ = rule.update(rules.init_coeffs(rule, w.shape), rule.init(w), w, pre, post)
        return w + dw

    w, pre, post, _ = _example(seed=1)
    w1 = step(rule, w, pre, post)
    step(rule, w1, pre, post)
    assert step._cache_size() == 1
    np.testing.assert_allclose(w1, w + 0.5 * np.outer(post, pre) - 0.1 * w, rtol=1e-5,
                               atol=1e-6)
    # Equal `get` calls give one compilation too.
    step(rules.get("oja"), w, pre, post)
    step(rules.get("oja"), w, pre, post)
    assert step._cache_size() == 2


def test_make_rule_keeps_the_trace_time_checks():
    rule = rules.make_rule("local_hebb", _local_hebb, {"eta": 0.5, "decay": 0.1})
    w, pre, post, _ = _example()
    with pytest.raises(ValueError, match=r"rule 'local_hebb': pre \(3,\)"):
        rule.update(rules.init_coeffs(rule, w.shape), (), w, pre[:3], post)
    with pytest.raises(ValueError, match=r"rule 'local_hebb': coeffs must have keys"):
        rule.update({"eta": 0.5}, (), w, pre, post)


def test_coefficients_are_a_read_only_mapping_equal_by_names_shapes_and_values():
    source = np.ones((2, 2))
    c = rules.Coefficients({"eta": 0.01, "theta": source})
    assert list(c) == ["eta", "theta"] and len(c) == 2 and c["theta"].dtype == np.float32
    assert dict(c).keys() == {"eta", "theta"} and dict(c.items())["eta"] == np.float32(0.01)
    source[0, 0] = 5.0                                      # a private copy
    assert c["theta"][0, 0] == 1.0
    with pytest.raises(TypeError):
        c["eta"] = 1.0
    with pytest.raises(ValueError):
        c["theta"][0, 0] = 2.0

    same = rules.Coefficients({"theta": np.ones((2, 2), np.float64), "eta": np.float32(0.01)})
    assert c == same and hash(c) == hash(same)              # order and input dtype ignored
    assert c != rules.Coefficients({"eta": 0.02, "theta": np.ones((2, 2))})
    assert c != rules.Coefficients({"eta": 0.01, "theta": np.ones(4)})
    assert c != rules.Coefficients({"eta": 0.01})
    assert c == {"eta": np.float32(0.01), "theta": np.ones((2, 2))}
    zero, negative_zero = rules.Coefficients({"d": 0.0}), rules.Coefficients({"d": -0.0})
    assert zero == negative_zero and hash(zero) == hash(negative_zero)


# ------------------------------------------------------------------- registry ----

def test_get_returns_equal_rules_for_equal_calls():
    assert rules.get("oja") is rules.get("oja")
    assert rules.get("krotov", p=3.0, k=3) == rules.get("krotov", k=3, p=3.0)
    assert hash(rules.get("krotov", p=3.0, k=3)) == hash(rules.get("krotov", k=3, p=3.0))
    assert rules.get("krotov", k=3) != rules.get("krotov")
    assert rules.get("oja") != rules.get("hebb")


def test_register_replaces_a_name_and_get_follows():
    name = "_registry_test_rule"

    def version(eta):
        def factory():
            return rules.make_rule(name, _local_hebb, {"eta": eta, "decay": 0.0})
        factory.__name__ = name
        return factory

    oja = rules.get("oja")
    try:
        assert rules.register(version(0.1)) is not None     # decorator form: __name__
        first = rules.get(name)
        assert rules.get(name) is first
        rules.register(version(0.2), name=name)             # a re-run cell: no error
        second = rules.get(name)
        assert second != first and second.default_coeffs["eta"] == np.float32(0.2)
        assert rules.get("oja") is oja                       # other rules keep their identity
        namespace = {}
        exec("from plastix.rules import *", namespace)      # still works
        assert name not in namespace                        # reachable through get only
    finally:
        rules.REGISTRY.pop(name, None)
    with pytest.raises(ValueError, match="unknown rule"):
        rules.get(name)


def test_star_import_exports_every_registry_name():
    for name in rules.__all__:
        assert hasattr(rules, name), name
    for name in rules.REGISTRY:
        assert getattr(rules, name) is rules.REGISTRY[name], name
    namespace = {}
    exec("from plastix.rules import *", namespace)
    assert set(rules.REGISTRY) <= set(namespace)
    assert {"Rule", "Coefficients", "OuterAffine", "get", "make_rule", "register",
            "init_coeffs", "modulated", "apply_mask"} <= set(namespace)


def test_import_plastix_exposes_subpackages_lazily():
    code = "\n".join([
        "import sys, plastix",
        "assert 'plastix.rules' not in sys.modules and 'jax' not in sys.modules",
        "assert plastix.rules.get('oja').name == 'oja'",
        "for name in ('tasks', 'plastic', 'evolve', 'models', 'train', 'batching'):",
        "    assert getattr(plastix, name) is sys.modules['plastix.' + name], name",
        "assert set(plastix.__all__) <= set(dir(plastix))",
        "assert not hasattr(plastix, 'no_such_module')",
    ])
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------- named variants ----

VARIANT_HYPER = {"polynomial_mod": ({"use_mod": True}, 54),
                 "multilinear": ({"degree": 1}, 8),
                 "multilinear_mod": ({"degree": 1, "use_mod": True}, 16)}


@pytest.mark.parametrize("name", sorted(VARIANT_HYPER))
def test_named_variant_is_the_polynomial_with_its_hyperparameters(name):
    hyper, terms = VARIANT_HYPER[name]
    variant, base = getattr(rules, name)(), rules.polynomial(**hyper)
    assert variant.name == name and name in rules.REGISTRY
    assert variant.default_coeffs == base.default_coeffs
    assert variant.coeffs_per_synapse == base.coeffs_per_synapse == terms + 1
    assert variant.reads_target == base.reads_target == hyper.get("use_mod", False)
    w, pre, post, mod = _example(seed=2)
    for seed, granularity in enumerate(GRANULARITIES):
        coeffs = _random_coeffs(base, granularity, seed)
        dw, _ = variant.update(coeffs, (), w, pre, post, mod)
        expected, _ = base.update(coeffs, (), w, pre, post, mod)
        np.testing.assert_allclose(dw, expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------- reads_target ----

def _needs_mod(rule):
    """Whether ``rule.update`` refuses ``mod=None``."""
    w, pre, post, _ = _example()
    try:
        rule.update(rules.init_coeffs(rule, w.shape), rule.init(w), w, pre, post)
    except ValueError as error:
        if "needs mod" in str(error):
            return True
        raise
    return False


def test_reads_target_is_declared_by_every_error_driven_rule():
    registry = {name: rules.get(name) for name in rules.REGISTRY}
    needs_mod = {name for name, rule in registry.items() if _needs_mod(rule)}
    reads_target = {name for name, rule in registry.items() if rule.reads_target}
    # In the registry mod is required as a target, or as backpropamine's neuromodulator
    # (a gate, not a target: any other rule is gated by the unregistered `modulated`).
    gated = {"backpropamine", "backpropamine_retro"}
    assert needs_mod - gated <= reads_target
    assert gated <= needs_mod and not gated & reads_target
    # The rest are error-driven without a target (err_credit's error is the temporal
    # difference of its own output): they ignore mod, so a teacher there is harmless.
    w, pre, post, mod = _example(seed=3)
    for name in reads_target - needs_mod:
        rule = registry[name]
        coeffs, state = rules.init_coeffs(rule, w.shape), rule.init(w)
        with_mod, _ = rule.update(coeffs, state, w, pre, post, mod)
        without, _ = rule.update(coeffs, state, w, pre, post)
        np.testing.assert_array_equal(with_mod, without, err_msg=name)
    assert {"delta", "chl", "generec", "err_credit", "polynomial_mod",
            "multilinear_mod"} <= reads_target
    assert rules.polynomial(use_mod=True).reads_target
    assert not rules.polynomial().reads_target and not rules.hebb().reads_target
    assert not rules.modulated(rules.hebb()).reads_target   # mod gates, it is no target


# ------------------------------------------------------------- outer_affine ----

OUTER_AFFINE_RULES = sorted(n for n in rules.REGISTRY if rules.get(n).outer_affine is not None)


def test_every_abcd_variant_declares_its_outer_affine_factors():
    assert set(abcd.VARIANTS) <= set(OUTER_AFFINE_RULES)
    for variant, terms in abcd.VARIANTS.items():
        coeffs = rules.init_coeffs(rules.get(variant), (N_POST, N_PRE))
        a, b, c, d = rules.get(variant).outer_affine(coeffs)
        assert isinstance(rules.get(variant).outer_affine(coeffs), rules.OuterAffine)
        assert a is not None, variant
        assert (b is None) == ("B" not in terms) and (c is None) == ("C" not in terms), variant
        assert (d is None) == ("D" not in terms and "D_out" not in terms), variant


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("name", OUTER_AFFINE_RULES)
def test_outer_affine_equals_the_update(name, granularity):
    """``dw = (a y + b) x^T + (c y + d)``, skipping absent terms, is the rule's dw."""
    rule = rules.get(name)
    w, pre, post, _ = _example(seed=4)
    coeffs = _random_coeffs(rule, granularity, seed=5)
    dw, _ = rule.update(coeffs, rule.init(w), w, pre, post)
    a, b, c, d = rule.outer_affine(coeffs)
    x, y = pre[None, :], post[:, None]
    expected = jnp.zeros(w.shape)
    for term, factor in ((a, y * x), (b, x), (c, y), (d, 1.0)):
        if term is not None:
            expected = expected + term * factor
    np.testing.assert_allclose(dw, expected, rtol=1e-6, atol=1e-6)


def test_outer_affine_rejects_coefficients_of_another_variant():
    with pytest.raises(ValueError, match=r"rule 'ABCD_lr': coeffs must have keys"):
        rules.ABCD_lr().outer_affine({"A": 1.0, "B": 1.0, "C": 1.0, "D": 1.0})


def test_only_rules_with_an_outer_affine_form_declare_one():
    for name in ("hebb", "oja", "delta", "polynomial", "hebbian_mask"):
        assert rules.get(name).outer_affine is None, name
    assert rules.modulated(rules.A()).outer_affine is None


# -------------------------------------------------------- effective_weights ----

def test_hebbian_mask_effective_weights_are_apply_mask():
    rule = rules.hebbian_mask(prune_below=-0.25, regrow_above=0.25, limit=1.0)
    assert rule.effective_weights is rules.apply_mask
    coeffs = {"rate": jnp.asarray(0.1)}
    w = jnp.asarray(np.random.default_rng(6).normal(size=(2, 2)), jnp.float32)
    pre, post = jnp.array([1.0, -1.0]), jnp.array([1.0, 1.0])
    state = rule.init(w)
    for _ in range(3):
        _, state = rule.update(coeffs, state, w, pre, post)
    assert np.any(np.asarray(state.mask) == 0.0)
    np.testing.assert_array_equal(rule.effective_weights(w, state), rules.apply_mask(w, state))
    np.testing.assert_array_equal(rule.effective_weights(w, state), w * state.mask)

    # Modulating the mask keeps it, reading the mask's state inside the eligibility state.
    assert rules.modulated(rule).effective_weights is rules.apply_mask
    traced = rules.modulated(rule, trace_decay=0.5)
    traced_state = traced.init(w)
    for _ in range(3):
        _, traced_state = traced.update(coeffs, traced_state, w, pre, post, 1.0)
    np.testing.assert_array_equal(traced.effective_weights(w, traced_state),
                                  rules.apply_mask(w, traced_state.inner))


@pytest.mark.parametrize("name", sorted(rules.REGISTRY))
def test_effective_weights_keep_the_shape_of_w(name):
    rule = rules.get(name)
    if rule.effective_weights is None:          # the forward pass uses w itself
        return
    w = _example()[0]
    assert jax.jit(rule.effective_weights)(w, rule.init(w)).shape == w.shape


def test_wrapped_rule_names_build_the_wrapped_rule_back():
    """``modulated(<rule>[, trace_decay])`` is a registry name too: a rule's name builds it
    again, so a config that saves names saves three-factor rules."""
    plain = rules.get("modulated(oja)")
    traced = rules.get("modulated(hebb, 0.9)")
    assert plain.name == rules.modulated(rules.oja()).name == "modulated(oja)"
    assert traced.name == rules.modulated(rules.hebb(), trace_decay=0.9).name
    assert rules.get(plain.name) is plain and rules.get(traced.name) is traced
    w, pre, post = jnp.ones((2, 3)), jnp.arange(3.0), jnp.array([1.0, -2.0])
    coeffs = rules.init_coeffs(plain, w.shape, "shared")
    np.testing.assert_allclose(
        plain.update(coeffs, plain.init(w), w, pre, post, 0.5)[0],
        0.5 * rules.oja().update(coeffs, (), w, pre, post, None)[0])


def test_a_name_may_carry_hyperparameters_and_the_rule_keeps_them_in_its_name():
    """``rls(alpha=0.1)`` is ``rls`` built with alpha 0.1, named so that its name (saved in
    a config) builds it back; wrappers take such a rule too."""
    rule = rules.get("rls(forget=0.99, alpha=0.1)")
    assert rule.name == "rls(alpha=0.1, forget=0.99)" and rules.get(rule.name) is rule
    w = jnp.zeros((2, 3))
    np.testing.assert_allclose(rule.init(w), rules.rls(alpha=0.1, forget=0.99).init(w))
    assert rules.get("krotov(k=3)").update is not rules.get("krotov").update
    wrapped = rules.get("annealed(rls(alpha=0.1))")
    assert wrapped.name == "annealed(rls(alpha=0.1))" and rules.get(wrapped.name) is wrapped


def test_nested_wrapper_names_split_at_their_own_commas():
    nested = rules.get("annealed(modulated(hebb, 0.9))")
    assert nested.name == rules.annealed(rules.modulated(rules.hebb(), 0.9)).name
    assert rules.get(nested.name) is nested


@pytest.mark.parametrize("name, message", [
    ("modulated(nope)", "unknown rule 'nope'"),
    ("annealed(modulated(hebb, fast))", "must be numbers"),
    ("rls(alpha)", r"expected rls\(<name>=<number>, \.\.\.\), got 'alpha'"),
    ("rls(alpha=fast)", r"expected rls\(<name>=<number>"),
    ("rls(alpha=0.1", r"expected rls\(<name>=<number>"),
    ("rls(beta=1)", r"rls has no hyperparameter beta; it takes \['alpha', 'forget'\]"),
    ("rls(alpha=0)", "rule 'rls': alpha must be a finite number > 0"),
    ("modulated(hebb, fast)", "must be numbers"),
    ("modulated(hebb", r"expected modulated\(<rule>"),
    ("modulated(hebb, 1.5)", r"trace_decay must be a finite number in \[0, 1\)"),
])
def test_bad_wrapped_rule_names_are_named(name, message):
    with pytest.raises(ValueError, match=message):
        rules.get(name)
