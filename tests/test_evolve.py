"""The ES path: NaN containment, resume equivalence, devices, learning, bad input."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_on_cpu_devices

from plastix import evolve, plastic, tasks

TASK = tasks.get("assoc_retrieval", num_pairs=2)
NET = plastic.PlasticRNN(vocab_size=TASK.vocab_size, hidden_size=16,
                         layer_rules=(("out", "ABCD_lr"),))
CFG = evolve.ESConfig(population=16, batch=8, eval_batch=64)


def _mean_vector(evolution, state):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(evolution.mean(state))])


def test_contain_nonfinite_ranks_divergent_members_last():
    fitness = jnp.array([1.0, jnp.nan, 3.0, jnp.inf, -jnp.inf, 2.0])
    clean, count = evolve.contain_nonfinite(fitness)
    assert int(count) == 3
    assert np.all(np.isfinite(clean))
    np.testing.assert_allclose(clean, [1.0, 4.0, 3.0, 4.0, 4.0, 2.0])
    clean, count = evolve.contain_nonfinite(jnp.full(4, jnp.nan))
    assert int(count) == 4 and np.all(np.isfinite(clean))


def test_divergent_plastic_weights_never_poison_the_es_state():
    """Huge search noise on a polynomial rule with w^2 terms makes members blow up to NaN/inf."""
    net = plastic.PlasticRNN(vocab_size=TASK.vocab_size, hidden_size=8,
                             layer_rules=(("out", "polynomial"),))
    cfg = evolve.ESConfig(population=16, batch=4, sigma=200.0, sigma_min=200.0, eval_batch=16)
    evolution = evolve.make_evolution(net, TASK, cfg, jax.random.key(0))
    state = evolution.init(jax.random.key(1))
    state, metrics = evolution.run(state, jax.random.key(2), 0, 3)
    assert int(jnp.sum(metrics["nonfinite"])) > 0
    assert np.all(np.isfinite(_mean_vector(evolution, state)))
    # The logged best is a finite member's, or inf where no member was finite: never the
    # stand-in fitness the strategy ranked the divergent members by.
    all_diverged = np.asarray(metrics["nonfinite"]) == cfg.population
    best = np.asarray(metrics["best_fitness"])
    assert np.all(np.isfinite(best) != all_diverged)


@pytest.mark.slow  # learns to a criterion; a generation is tested against evosax's ask and tell
def test_short_es_run_improves_held_out_fitness():
    evolution = evolve.make_evolution(NET, TASK, CFG, jax.random.key(0))
    state, history = evolve.evolve(evolution, seed=0, generations=30, log_every=15)
    initial_nll, _ = evolution.score(evolution.mean(evolution.init(jax.random.key(0))),
                                     jax.random.key(12345), "valid", CFG.eval_batch)
    assert history[-1]["valid_nll"] < 0.7 * float(initial_nll)
    assert history[-1]["valid_accuracy"] > 0.9


def test_killed_and_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path):
    evolution = evolve.make_evolution(NET, TASK, CFG, jax.random.key(0))
    straight, _ = evolve.evolve(evolution, seed=3, generations=6, out_dir=str(tmp_path / "a"),
                                log_every=2)
    resumed_dir = str(tmp_path / "b")
    evolve.evolve(evolution, seed=3, generations=4, out_dir=resumed_dir, log_every=2)
    with open(os.path.join(resumed_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"generation": 99}) + "\n")  # a record written after the last ckpt
    resumed, history = evolve.evolve(evolution, seed=3, generations=6, out_dir=resumed_dir,
                                     log_every=2, resume=True)
    np.testing.assert_array_equal(_mean_vector(evolution, straight),
                                  _mean_vector(evolution, resumed))
    assert [r["generation"] for r in history] == [2, 4, 6]
    with open(os.path.join(resumed_dir, "metrics.jsonl")) as f:
        assert [json.loads(line)["generation"] for line in f] == [2, 4, 6]


def test_one_and_four_devices_agree():
    """The population sharded over 4 CPU devices gives the 1-device result."""
    stdout = run_on_cpu_devices("""
        import jax, numpy as np
        from plastix import evolve, plastic, tasks
        assert len(jax.devices()) == 4, jax.devices()
        task = tasks.get("assoc_retrieval", num_pairs=2)
        net = plastic.PlasticRNN(vocab_size=task.vocab_size, hidden_size=8,
                                 layer_rules=(("rec", "ABCD_lr"), ("out", "ABCD_lr")),
                                 granularity="post")
        cfg = evolve.ESConfig(population=8, batch=4)
        means = []
        for devices in (jax.devices()[:1], jax.devices()):
            evolution = evolve.make_evolution(net, task, cfg, jax.random.key(0), devices)
            state = evolution.init(jax.random.key(1))
            state, metrics = evolution.run(state, jax.random.key(2), 0, 3)
            means.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(evolution.mean(state))]))
        np.testing.assert_allclose(means[0], means[1], rtol=1e-5, atol=1e-6)
        print("AGREE", float(np.abs(means[0] - means[1]).max()))
    """)
    assert "AGREE" in stdout


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strategy": "NoSuchES"}, "unknown ES strategy 'NoSuchES'"),
        ({"population": 7}, "population must be even"),
        ({"optimizer": "rmsprop"}, "unknown ES optimizer 'rmsprop'"),
        ({"population": 1}, "population must be an integer >= 2, got 1"),
        ({"lr": float("nan")}, "lr must be a finite number > 0, got nan"),
        ({"sigma": 0.005}, r"sigma_min \(0.01\) must not exceed sigma \(0.005\)"),
    ],
)
def test_bad_es_configuration_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        evolve.ESConfig(**kwargs)


def test_population_must_split_over_devices():
    with pytest.raises(ValueError, match="cannot be split evenly over 4 devices"):
        evolve.population_mesh(6, devices=[jax.devices()[0]] * 4)


def test_vocabulary_mismatch_is_named():
    net = plastic.PlasticRNN(vocab_size=5)
    with pytest.raises(ValueError, match="vocabulary 37"):
        evolve.make_evolution(net, TASK, CFG, jax.random.key(0))


@pytest.mark.slow
def test_other_evosax_strategies_run():
    for name in ("SNES", "CMA_ES"):
        cfg = evolve.ESConfig(strategy=name, population=8, batch=4)
        evolution = evolve.make_evolution(NET, TASK, cfg, jax.random.key(0))
        state, metrics = evolution.run(evolution.init(jax.random.key(1)), jax.random.key(2), 0, 2)
        assert np.all(np.isfinite(_mean_vector(evolution, state)))


def test_chunked_population_evaluation_equals_unchunked():
    population_key = jax.random.key(4)
    results = []
    for chunking in ({}, {"chunk_size": 3}):
        cfg = evolve.ESConfig(population=8, batch=4, **chunking)
        evolution = evolve.make_evolution(NET, TASK, cfg, jax.random.key(0))
        state = evolution.init(jax.random.key(1))
        population, _ = evolution.strategy.ask(population_key, state, evolution.es_params)
        results.append(jax.jit(evolution.population_scores)(population, jax.random.key(5)))
    for chunked in results[1:]:
        np.testing.assert_allclose(chunked[0], results[0][0], rtol=1e-5)
        np.testing.assert_allclose(chunked[1], results[0][1], rtol=1e-5)


def test_a_rule_written_here_unregistered_is_evolved():
    """A rule value built in a notebook cell goes into a network layer and evolves."""
    from plastix import rules

    def update(coeffs, state, w, pre, post, mod):
        del w, mod  # teacher-gated Hebb with its own rate: eta * y x^T
        return coeffs["eta"] * post[:, None] * pre[None, :], state

    gated_hebb = rules.make_rule("gated_hebb", update, {"eta": 0.0})
    assert "gated_hebb" not in rules.REGISTRY
    net = plastic.PlasticRNN(vocab_size=TASK.vocab_size, hidden_size=16,
                             layer_rules=(("out", gated_hebb),))
    assert net.rule_names() == {"out": "gated_hebb"}
    cfg = evolve.ESConfig(population=8, batch=8, sigma=0.5, lr=1.0, eval_batch=64)
    evolution = evolve.make_evolution(net, TASK, cfg, jax.random.key(0))
    state, history = evolve.evolve(evolution, seed=0, generations=10, log_every=10)
    assert float(evolution.mean(state)["coeffs"]["out"]["eta"]) > 0.1  # learns to learn
    assert history[-1]["valid_accuracy"] > 0.5


def test_shared_noise_table_perturbations_are_antithetic_windows_of_the_table():
    cfg = evolve.ESConfig(population=8, batch=4, noise_table=1000)
    evolution = evolve.make_evolution(NET, TASK, cfg, jax.random.key(0))
    state = evolution.init(jax.random.key(1))
    population, _ = evolution.strategy.ask(jax.random.key(2), state, evolution.es_params)
    z = (np.asarray(population) - np.asarray(state.mean)) / float(state.std)
    np.testing.assert_allclose(z[0::2], -z[1::2], atol=1e-5)  # pairs side by side
    table = np.asarray(evolution.es_params.noise_table)
    dims = z.shape[1]
    windows = np.lib.stride_tricks.sliding_window_view(table, dims)
    for row in z[0::2]:
        assert np.min(np.max(np.abs(windows - row), axis=1)) < 1e-4
    assert jax.tree.leaves(state)[0].size < 1000  # the table is in the params, not the state


def test_shared_noise_table_evolves_and_resumes_exactly(tmp_path):
    cfg = evolve.ESConfig(population=16, batch=8, eval_batch=64, noise_table=4096)
    evolution = evolve.make_evolution(NET, TASK, cfg, jax.random.key(0))
    straight, history = evolve.evolve(evolution, seed=0, generations=30, log_every=15)
    assert history[-1]["valid_accuracy"] > 0.9
    evolve.evolve(evolution, seed=0, generations=15, out_dir=str(tmp_path), log_every=15)
    resumed, _ = evolve.evolve(evolution, seed=0, generations=30, out_dir=str(tmp_path),
                               log_every=15, resume=True)
    np.testing.assert_array_equal(_mean_vector(evolution, straight),
                                  _mean_vector(evolution, resumed))


@pytest.mark.parametrize("settings", [
    {},
    {"antithetic": False, "fitness_shaping": "centered_ranks_std", "optimizer": "adam"},
])
def test_telling_named_members_equals_evosax_tell_on_the_population(settings):
    cfg = evolve.ESConfig(population=8, sigma=0.3, **settings)
    solution = jnp.linspace(-1.0, 1.0, 53)  # flat, as `Evolution` hands it to evosax
    strategy, es_params = evolve.make_strategy(cfg, solution)
    state = strategy.init(jax.random.key(0), solution, es_params)
    state = state.replace(best_fitness=0.5)  # one member below beats it, the NaN does not
    fitness = jnp.array([3.0, jnp.nan, 0.2, -1.0, 5.0, 0.0, 2.0, 1.0]) + 1.0
    names = strategy.ask_perturbations(jax.random.key(1), state, es_params)
    population, _ = strategy.ask(jax.random.key(1), state, es_params)
    np.testing.assert_allclose(jax.vmap(lambda n: strategy.member(state, es_params, n))(names),
                               population, rtol=1e-6, atol=1e-6)
    for _ in range(2):  # a second step exercises the optimiser state and the schedule
        reference, _ = strategy.tell(jax.random.key(2), population, fitness, state, es_params)
        state = strategy.tell_perturbations(jax.random.key(2), names, fitness, state, es_params)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
                     state, reference)
        population = jax.vmap(lambda n: strategy.member(state, es_params, n))(names)
    assert float(state.best_fitness) == 0.0  # -1.0 + 1.0, member 3


def test_a_generation_of_named_members_equals_evosax_ask_and_tell():
    """Members named by their noise window, built where they are evaluated (with their
    L2 penalty), give the generation evosax's ask -> evaluate -> tell gives on the
    materialised population."""
    cfg = evolve.ESConfig(population=8, batch=4, sigma=0.3, l2_penalty=0.05)
    evolution = evolve.make_evolution(NET, TASK, cfg, jax.random.key(0))
    strategy, es_params = evolution.strategy, evolution.es_params
    assert evolution.names_members  # the default for Open_ES
    state = evolution.init(jax.random.key(1))
    key = jax.random.key(2)
    named, _ = jax.jit(evolution.generation)(state, key)

    def by_evosax(state, key):  # the generation through evosax's own interface
        ask_key, eval_key, tell_key = jax.random.split(key, 3)
        population, state = strategy.ask(ask_key, state, es_params)
        scores = evolution.population_scores(population, eval_key)
        fitness = scores.nll + jax.vmap(lambda x: evolve.l2_penalty(cfg, x))(population)
        return strategy.tell(tell_key, population, fitness, state, es_params)[0]

    reference = jax.jit(by_evosax)(state, key)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
                 named, reference)
    assert not np.allclose(named.mean, state.mean)  # it moved


def test_noise_source_defaults():
    dims = 100
    cfg = evolve.ESConfig()
    assert evolve.noise_table_size(cfg, dims) == 2**20  # the floor
    assert evolve.noise_table_size(cfg, 165_120) == 2**24  # 100 floats per parameter
    assert evolve.noise_table_size(cfg, 10**7) == 2**28  # the ceiling
    assert evolve.noise_table_size(cfg, 2 * 10**8) == 4 * 10**8  # two windows at least
    assert evolve.noise_table_size(evolve.ESConfig(noise_table=0), dims) == 0
    assert evolve.noise_table_size(evolve.ESConfig(strategy="CMA_ES"), dims) == 0
    assert evolve.noise_table_size(evolve.ESConfig(noise_table=5000), dims) == 5000


@pytest.mark.parametrize("kwargs, message", [
    ({"noise_table": -1}, "noise_table must be an integer >= 0, got -1"),
    ({"noise_table": 100, "strategy": "CMA_ES"}, "noise_table must be None .* with strategy 'CMA_ES'"),
])
def test_noise_table_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        evolve.ESConfig(**kwargs)


def test_noise_table_shorter_than_the_parameters_is_refused():
    cfg = evolve.ESConfig(population=4, batch=2, noise_table=3)
    with pytest.raises(ValueError, match="shorter than the"):
        evolve.make_evolution(NET, TASK, cfg, jax.random.key(0)).strategy
