"""The Najarro & Risi (2020) preset and coefficient layout against NumPy transcriptions of
their reference code (github.com/enajx/HebbianMetaLearning)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from evosax.core.fitness_shaping import centered_rank_fitness_shaping_fn
from jax.flatten_util import ravel_pytree

from plastix import evolve, najarro, plastic, rules

VOCAB, HIDDEN = 5, 3  # non-square matrices, so a transposed layout cannot pass


# --- NumPy transcriptions of the reference code ------------------------------------------


def reference_centered_ranks_std(reward):
    """evolution_strategy_hebb.py: compute_centered_ranks, then (r - mean) / std."""
    ranks = np.empty(len(reward), dtype=int)
    ranks[reward.argsort()] = np.arange(len(reward))
    r = ranks.astype(np.float64) / (reward.size - 1) - 0.5
    return (r - r.mean()) / r.std()


def reference_synapse_update(variant, c, x, y):
    """One synapse of hebbian_update_<variant>: c its coefficient row, x pre, y post."""
    if variant == "A":
        return c * x * y
    abc = c[0] * x * y + c[1] * x + c[2] * y if variant.startswith("ABC") else None
    return {
        "AD": lambda: c[0] * x * y + c[1],
        "AD_lr": lambda: (c[0] * x * y + c[1]) * c[2],
        "ABC": lambda: abc,
        "ABC_lr": lambda: c[3] * abc,
        "ABCD": lambda: c[3] + abc,
        "ABCD_lr": lambda: c[3] * (abc + c[4]),
        "ABCD_lr_D_out": lambda: c[3] * abc + c[4],
        "ABCD_lr_D_in_and_out": lambda: c[3] * (abc + c[4]) + c[5],
    }[variant]()


def reference_weight_update(variant, heb_coeffs, weights, activities):
    """hebbian_update_<variant> over consecutive layers, then fitness_functions.py's
    per-layer ``W /= |W|.max()``. ``weights`` are (n_out, n_in) like torch Linear."""
    weights = [w.copy() for w in weights]
    offset = 0
    for w, (o_pre, o_post) in zip(weights, activities):
        for i in range(w.shape[1]):
            for j in range(w.shape[0]):
                idx = offset + (w.shape[0] - 1) * i + i + j
                w[:, i][j] += reference_synapse_update(variant, heb_coeffs[idx], o_pre[i],
                                                       o_post[j])
        offset += w.shape[1] * w.shape[0]
    return [w / np.abs(w).max() for w in weights]


# --- (a) ES generations ---------------------------------------------------------------------


def test_es_generations_equal_the_reference_update_on_the_same_noise_and_fitness():
    """Three generations of the preset's strategy, scanned as `Evolution.run` scans them,
    replayed by a NumPy transcription of their EvolutionStrategyHebb._update_coeffs."""
    net = najarro.PRESET.network(VOCAB, hidden_size=HIDDEN)
    cfg = najarro.PRESET.es
    n, generations = cfg.population, 3
    solution = najarro.initial_coefficients(net, jax.random.key(0))
    strategy, es_params = evolve.make_strategy(cfg, solution)
    ravel = jax.vmap(lambda p: ravel_pytree(p)[0])
    episode_rewards = np.random.default_rng(0).normal(size=(generations, n))

    def generation(state, xs):
        key, episode_reward = xs
        population, asked = strategy.ask(key, state, es_params)
        # as Evolution.generation: minimised fitness plus the L2 penalty
        fitness = -episode_reward + jax.vmap(lambda p: evolve.l2_penalty(cfg, p))(population)
        new_state, _ = strategy.tell(key, population, fitness, asked, es_params)
        return new_state, (ravel(population), state.mean, state.std, new_state.mean)

    start = strategy.init(jax.random.key(1), solution, es_params)
    keys = jax.random.split(jax.random.key(2), generations)
    final, (members, means, stds, new_means) = jax.lax.scan(
        generation, start, (keys, jnp.asarray(episode_rewards, jnp.float32)))

    theirs = np.asarray(ravel_pytree(solution)[0], np.float64)  # their self.coeffs
    lr, sigma = cfg.lr, cfg.sigma
    for g in range(generations):
        np.testing.assert_allclose(float(stds[g]), sigma, rtol=1e-6)
        # the noise p of their _get_population, recovered from the asked members
        member = np.asarray(members[g], np.float64)
        noise = (member - np.asarray(means[g], np.float64)) / float(stds[g])
        np.testing.assert_allclose(noise[: n // 2], -noise[n // 2:], atol=1e-4)  # antithetic
        # worker_process_hebb: r = reward - 0.01 * mean(coeffs^2); then _update_coeffs
        reward = episode_rewards[g] - 0.01 * np.mean(member**2, axis=1)
        theirs = theirs + lr / (n * sigma) * noise.T @ reference_centered_ranks_std(reward)
        if lr > 0.001:
            lr *= cfg.lr_decay
        if sigma > 0.01:
            sigma *= 0.999
        np.testing.assert_allclose(np.asarray(new_means[g]), theirs, atol=1e-6)
    np.testing.assert_allclose(float(final.std), sigma, rtol=1e-6)


def test_decays_stop_at_the_floor_like_the_reference_loop():
    schedule = evolve.decay_schedule(0.2, 0.995, 0.001, mode="stop")
    lr, expected = 0.2, []
    for _ in range(1200):
        expected.append(lr)
        if lr > 0.001:
            lr *= 0.995
    np.testing.assert_allclose(schedule(jnp.arange(1200)), expected, rtol=1e-5)
    clamp = evolve.decay_schedule(0.2, 0.995, 0.001)
    assert float(clamp(2000)) == pytest.approx(0.001)


def test_fitness_shapings():
    fitness = jnp.array([3.0, -1.0, 2.0, 10.0])  # minimised; their reward is -fitness
    shaped = evolve.centered_ranks_std(None, fitness, None, None)
    # ES descends along the shaped fitness, their code ascends along the shaped reward
    np.testing.assert_allclose(shaped, -reference_centered_ranks_std(-np.asarray(fitness)),
                               rtol=1e-6)
    assert np.all(evolve.centered_ranks_std(None, jnp.ones(4), None, None) == 0)
    # the default changes nothing: the strategy's own class and shaping
    default, _ = evolve.make_strategy(evolve.ESConfig(population=4, noise_table=0),
                                      {"x": jnp.zeros(2)})
    assert default.fitness_shaping_fn is centered_rank_fitness_shaping_fn
    assert type(default) is evolve.STRATEGIES["Open_ES"]
    for name, fn in evolve.FITNESS_SHAPINGS.items():
        strategy, _ = evolve.make_strategy(
            evolve.ESConfig(population=4, fitness_shaping=name), {"x": jnp.zeros(2)})
        assert strategy.fitness_shaping_fn is fn


def test_l2_penalty_sum_and_mean():
    tree = {"a": jnp.ones((2, 3)), "b": 2 * jnp.ones(2)}
    assert float(evolve.l2_penalty(evolve.ESConfig(l2_penalty=0.5), tree)) == 7.0
    mean_cfg = evolve.ESConfig(l2_penalty=0.5, l2_reduce="mean")
    assert float(evolve.l2_penalty(mean_cfg, tree)) == pytest.approx(0.5 * 14 / 8)


# --- (b) their coefficient vector drives the plastix rule like their update --------------


@pytest.mark.parametrize("variant", ["A", "AD_lr", "ABC", "ABCD_lr", "ABCD_lr_D_in_and_out"])
def test_reference_vector_updates_weights_like_their_hebbian_update(variant):
    net = najarro.najarro2020(variant).network(VOCAB, hidden_size=HIDDEN)
    rng = np.random.default_rng(1)
    shapes = net.weight_shapes()
    layers = najarro.reference_layers(net)
    weights = [rng.uniform(-0.1, 0.1, shapes[layer]).astype(np.float32) for layer in layers]
    activities = [(rng.normal(size=shapes[layer][1]).astype(np.float32),
                   rng.normal(size=shapes[layer][0]).astype(np.float32)) for layer in layers]
    n_synapses = sum(w.size for w in weights)
    heb_coeffs = rng.normal(size=(n_synapses, len(najarro.REFERENCE_COLUMNS[variant])))
    heb_coeffs = heb_coeffs.astype(np.float32).squeeze()  # as their torch.randn(...).squeeze()

    expected = reference_weight_update(variant, heb_coeffs, weights, activities)
    params = najarro.coefficients_from_reference(heb_coeffs, net)
    rule = rules.get(variant)
    for layer, w, (pre, post), want in zip(layers, weights, activities, expected):
        w = jnp.asarray(w)
        dw, _ = rule.update(params["coeffs"][layer], rule.init(w), w, jnp.asarray(pre),
                            jnp.asarray(post))
        got = plastic.normalise_weights(w + dw, net.normalise)
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"layer {layer}")


# --- (c) the layout, both ways ---------------------------------------------------------------


def test_layout_is_pre_major_per_layer_with_their_column_order():
    net = plastic.PlasticRNN(vocab_size=VOCAB, hidden_size=HIDDEN, granularity="synapse",
                             layer_rules=(("out", "ABCD_lr"), ("in", "AD_lr")))
    assert najarro.reference_layers(net) == ("in", "out")
    # entry = 1000 * block + 100 * pre + 10 * post + column
    parts = []
    for block, layer in enumerate(("in", "out")):
        n_post, n_pre = net.weight_shapes()[layer]
        n_cols = len(najarro.REFERENCE_COLUMNS[net.rule(layer).name])
        i, j, c = np.meshgrid(np.arange(n_pre), np.arange(n_post), np.arange(n_cols),
                              indexing="ij")
        parts.append((1000 * block + 100 * i + 10 * j + c).reshape(-1))
    vector = np.concatenate(parts).astype(np.float32)
    coeffs = najarro.coefficients_from_reference(vector, net)["coeffs"]
    assert float(coeffs["in"]["eta"][2, 4]) == 0 + 100 * 4 + 10 * 2 + 2  # AD_lr: [A, D, eta]
    assert float(coeffs["out"]["eta"][4, 1]) == 1000 + 100 * 1 + 10 * 4 + 3  # [A,B,C,eta,D]
    assert float(coeffs["out"]["D"][0, 2]) == 1000 + 100 * 2 + 0 + 4
    np.testing.assert_array_equal(najarro.coefficients_to_reference({"coeffs": coeffs}, net),
                                  vector)


@pytest.mark.parametrize("log_rates", [False, True])
def test_round_trip(log_rates):
    net = najarro.PRESET.network(VOCAB, hidden_size=HIDDEN, log_rates=log_rates)
    table = np.random.default_rng(2).normal(size=(39, 5)).astype(np.float32)
    table[:, 3] = np.abs(table[:, 3])  # eta, column 3 of ABCD_lr; log(eta) needs eta > 0
    vector = table.reshape(-1)
    params = najarro.coefficients_from_reference(vector, net)
    template = plastic.init_params(net, jax.random.key(0))
    assert jax.tree.structure(params) == jax.tree.structure(template)
    back = najarro.coefficients_to_reference(params, net)
    assert back.shape == (najarro.reference_size(net),) and back.dtype == np.float32
    np.testing.assert_allclose(back, vector, rtol=1e-6)
    from_table = najarro.coefficients_from_reference(table, net)  # their 2-D array
    jax.tree.map(np.testing.assert_array_equal, from_table, params)
    again = najarro.coefficients_from_reference(back, net)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 again, params)


def test_initial_coefficients_are_standard_normal_per_synapse():
    net = najarro.PRESET.network(VOCAB, hidden_size=HIDDEN)
    params = najarro.initial_coefficients(net, jax.random.key(3))
    template = plastic.init_params(net, jax.random.key(0))
    assert jax.tree.structure(params) == jax.tree.structure(template)
    values = ravel_pytree(params)[0]
    assert values.size == najarro.reference_size(net) == 195
    assert abs(float(jnp.mean(values))) < 0.25 and abs(float(jnp.std(values)) - 1) < 0.2


def test_shared_coefficients_are_written_to_every_synapse():
    net = plastic.PlasticRNN(vocab_size=VOCAB, hidden_size=HIDDEN,
                             layer_rules=(("rec", "ABC"),))
    vector = najarro.coefficients_to_reference(plastic.init_params(net, jax.random.key(0)), net)
    np.testing.assert_allclose(vector.reshape(-1, 3), np.tile([0.01, 0, 0], (9, 1)))


# --- (d) bad inputs --------------------------------------------------------------------------


def test_bad_inputs_give_one_line_errors():
    net = najarro.PRESET.network(VOCAB, hidden_size=HIDDEN)
    with pytest.raises(ValueError, match=r"must have 195 entries \(in 3x5x5 \+ rec 3x3x5 \+ "
                                         r"out 5x3x5\), got shape \(194,\)"):
        najarro.coefficients_from_reference(np.zeros(194), net)
    with pytest.raises(ValueError, match="must have 195 entries"):
        najarro.coefficients_from_reference(np.zeros((5, 39)), net)  # transposed table
    with pytest.raises(ValueError, match="granularity='shared'"):
        najarro.coefficients_from_reference(np.zeros(195), dataclasses.replace(
            net, granularity="shared"))
    with pytest.raises(ValueError, match="rule 'oja'"):
        najarro.coefficients_to_reference({}, dataclasses.replace(
            net, layer_rules=(("rec", "oja"),)))
    with pytest.raises(ValueError, match="eta <= 0"):
        najarro.coefficients_from_reference(-np.ones(195), dataclasses.replace(
            net, log_rates=True))
    with pytest.raises(ValueError, match="unknown ABCD variant 'hebb'"):
        najarro.najarro2020("hebb")
    for kwargs, message in [({"fitness_shaping": "ranks"}, "unknown ES fitness_shaping"),
                            ({"l2_reduce": "max"}, "unknown ES l2_reduce"),
                            ({"floor_mode": "hold"}, "unknown ES floor_mode"),
                            ({"strategy": "CMA_ES", "sigma_lag": False}, "no sigma schedule")]:
        with pytest.raises(ValueError, match=message):
            evolve.ESConfig(**kwargs)
