"""Networks of any shape (`plastix.network`): the main job's network as a preset, fused stores
against `rule.update` on dense weights and against plain references written here, both outer
loops on a network written here, Najarro & Risi's feed-forward network against a NumPy
transcription of their update, files and run configs, and bad networks named."""

import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import evolve, metagrad, najarro, plastic, runs, tasks
from plastix import network as nw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import es_abcd  # noqa: E402
from test_najarro import reference_weight_update  # noqa: E402

VOCAB, BATCH, LENGTH = 7, 3, 9


def random_params(network, seed, scale=0.3):
    """The network's learned parameters filled with N(0, scale) (NumPy: no compiled PRNG)."""
    rng = np.random.default_rng(seed)
    params = plastic.init_params(network, jax.random.key(0))
    return jax.tree.map(lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), jnp.float32),
                        params)


def random_draws(network, seed, scale=0.3):
    rng = np.random.default_rng(seed)
    w0 = {name: jnp.asarray(rng.uniform(-scale, scale, (BATCH,) + shape), jnp.float32)
          for name, shape in network.weight_shapes().items()}
    return plastic.LifetimeDraws(w0, jax.random.split(jax.random.key(seed), BATCH))


def token_data(seed):
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, VOCAB, (BATCH, LENGTH), dtype=np.int32)
    targets = rng.integers(0, VOCAB, (BATCH, LENGTH), dtype=np.int32)
    return inputs, targets, np.ones((BATCH, LENGTH), np.float32)


def vector_data(seed, dim, classes):
    rng = np.random.default_rng(seed)
    inputs = rng.standard_normal((BATCH, LENGTH, dim)).astype(np.float32)
    targets = rng.integers(0, classes, (BATCH, LENGTH), dtype=np.int32)
    return inputs, targets, np.ones((BATCH, LENGTH), np.float32)


def lifetimes(network, params, draws, data, dense=False):
    fn = jax.jit(lambda p, d: plastic.run_lifetimes(network, p, d, *data, emit="logits",
                                                    dense=dense))
    with jax.default_matmul_precision("highest"):
        return fn(params, draws)


def assert_same(a, b, tol=1e-5):
    (logits_a, (_, end_a)), (logits_b, (_, end_b)) = a, b
    np.testing.assert_allclose(logits_a, logits_b, rtol=tol, atol=tol)
    assert end_a.keys() == end_b.keys()
    for name in end_a:
        np.testing.assert_allclose(end_a[name], end_b[name], rtol=tol, atol=tol, err_msg=name)


# --- the main job's network is a preset --------------------------------------------------


def test_the_main_jobs_network_is_a_preset_written_with_layers():
    """`PlasticRNN.network` is the network written by hand below, and both give the same
    lifetimes to the bit (so every figure of the main job stands)."""
    net = plastic.PlasticRNN(vocab_size=VOCAB, hidden_size=5, readout_bias=True,
                             modulation="reward", normalise="l2", weight_noise=0.01,
                             normalise_layers=("in", "rec"),
                             layer_rules=(("in", "modulated(hebb)"), ("out", "delta")))
    by_hand = nw.Network(
        layers=(
            nw.Layer("h", 5, (nw.Connection("in", "x", "modulated(hebb)", mod="reward",
                                            normalise="l2", weight_noise=0.01),
                              nw.Connection("rec", "h@prev"))),
            nw.Layer("out", VOCAB, (nw.Connection("out", "h", "delta", post="prediction",
                                                  mod="teacher", bias=True),),
                     activation="softmax")),
        input="tokens", input_size=VOCAB)
    assert net.network() == by_hand
    params, draws, data = random_params(net, 0), random_draws(net, 0), token_data(0)
    for a, b in zip(jax.tree.leaves(lifetimes(net, params, draws, data)),
                    jax.tree.leaves(lifetimes(by_hand, params, draws, data))):
        np.testing.assert_array_equal(a, b)


# --- fused stores against rule.update on dense weights, and plain references ---------------

FEED_FORWARD = nw.Network(
    layers=(
        nw.Layer("h1", 6, (nw.Connection("fc1", "x", "ABCD_lr", "synapse"),)),
        nw.Layer("h2", 5, (nw.Connection("fc2", "h1", "oja", normalise="maxabs"),),
                 activation="relu"),
        nw.Layer("out", 4, (nw.Connection("fc3", "h2", "delta", "post", bias=True),),
                 activation="softmax")),
    input="vector", input_size=3)

RECURRENT = nw.Network(
    layers=(
        nw.Layer("h1", 6, (nw.Connection("in", "x", "ABCD_lr", "post"),
                           nw.Connection("rec1", "h1@prev", "oja"))),
        nw.Layer("h2", 5, (nw.Connection("mid", "h1", "hebb"),
                           nw.Connection("lag", "x@2", init_scale=1.0),
                           nw.Connection("lag_plastic", "x@1", "A", "synapse")),
                 activation="kwta(2)"),
        nw.Layer("out", VOCAB, (nw.Connection("out", "h2", "delta", bias=True),
                                nw.Connection("skip", "h1@prev")),
                 activation="softmax")),
    input="tokens", input_size=VOCAB)


def reference_recurrent(params, w0, inputs, targets):
    """`RECURRENT` written straightforwardly: one sequence, ``rule.update`` on dense weights
    every step, vmapped over the sequences."""
    names = RECURRENT.plastic_matrices

    def one_sequence(w, tokens, answers):
        states = {name: RECURRENT.rule(name).init(w[name]) for name in names}

        def step(carry, xs):
            w, states, h1_prev, x_back = carry
            token, target = xs
            x = jax.nn.one_hot(token, VOCAB)
            h1 = jnp.tanh(w["in"] @ x + w["rec1"] @ h1_prev)
            drive = w["mid"] @ h1 + w["lag"] @ x_back[1] + w["lag_plastic"] @ x_back[0]
            h2 = (drive >= jnp.sort(drive)[-2]).astype(drive.dtype)  # the 2 largest win
            h2_bias = jnp.concatenate([h2, jnp.ones(1)])
            logits = w["out"] @ h2_bias + w["skip"] @ h1_prev
            y, teacher = jax.nn.softmax(logits), jax.nn.one_hot(target, VOCAB)
            signals = {"in": (x, h1, None), "rec1": (h1_prev, h1, None),
                       "mid": (h1, h2, None), "lag_plastic": (x_back[0], h2, None),
                       "out": (h2_bias, y, teacher)}
            new_w, new_states = dict(w), {}
            for name in names:
                pre, post, mod = signals[name]
                dw, new_states[name] = RECURRENT.rule(name).update(
                    params["coeffs"][name], states[name], w[name], pre, post, mod)
                new_w[name] = w[name] + dw
            return (new_w, new_states, h1, jnp.stack([x, x_back[0]])), logits

        start = (w, states, jnp.zeros(6), jnp.zeros((2, VOCAB)))
        (w, *_), logits = jax.lax.scan(step, start, (tokens, answers))
        return logits, w

    return jax.vmap(one_sequence)(w0, inputs, targets)


def test_a_two_hidden_layer_recurrent_network_is_its_plain_reference():
    params, draws, data = random_params(RECURRENT, 1), random_draws(RECURRENT, 1), token_data(1)
    logits, (_, w_end) = lifetimes(RECURRENT, params, draws, data)
    with jax.default_matmul_precision("highest"):
        ref_logits, ref_end = jax.jit(reference_recurrent)(params, draws.w0, *data[:2])
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    for name, w in ref_end.items():
        np.testing.assert_allclose(w_end[name], w, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("network, data", [
    (FEED_FORWARD, vector_data(2, 3, 4)),
    (RECURRENT, token_data(3)),
], ids=["three-layer feed-forward, vector input", "two hidden layers, recurrent, lagged tokens"])
def test_fused_stores_equal_rule_update_on_dense_weights(network, data):
    params, draws = random_params(network, 4), random_draws(network, 4)
    stores = {name: plastic.synapses_for(network, name, params["coeffs"].get(name)).name
              for name in network.matrices}
    if network is RECURRENT:  # lazy columns on the current and the lagged token
        assert stores["in"] == "one_hot_columns" and stores["lag"] == "fixed_columns"
        assert stores["lag_plastic"] == "one_hot_columns"
    assert_same(lifetimes(network, params, draws, data),
                lifetimes(network, params, draws, data, dense=True))


def test_an_input_from_before_the_first_step_reads_and_writes_nothing():
    """``x@k`` is absent for the first k steps: a lagged matrix's drive is zero there and
    its columns learn nothing (dW = eta A y x^T), in the lazy store as in the dense one."""
    network = nw.Network(layers=(
        nw.Layer("h", 4, (nw.Connection("lag", "x@3", "A"), nw.Connection("now", "x"))),
        nw.Layer("out", VOCAB, (nw.Connection("out", "h"),), activation="softmax")),
        input="tokens", input_size=VOCAB)
    params, draws = random_params(network, 5), random_draws(network, 5)
    inputs, targets, mask = token_data(5)
    short = [a[:, :3] for a in (inputs, targets, mask)]
    for dense in (False, True):
        _, (w0, w_end) = lifetimes(network, params, draws, short, dense)
        np.testing.assert_array_equal(w_end["lag"], w0["lag"])
    _, (w0, w_end) = lifetimes(network, params, draws, (inputs, targets, mask))
    assert not np.array_equal(w_end["lag"], w0["lag"])  # from the fourth step on, it learns


# --- both outer loops on a network written here ------------------------------------------


def test_a_network_written_here_is_evolved_and_trained_by_gradient():
    task = tasks.get("pattern_episodes", num_classes=3, dim=6, seq_len=12)
    network = nw.Network(layers=(
        nw.Layer("h", 16, (nw.Connection("fc1", "x", init_scale=0.5),), activation="relu"),
        nw.Layer("out", None, (nw.Connection("fc2", "h", "delta", bias=True),),
                 activation="softmax")),
        input="vector", log_rates=True).sized(task.input_size, task.vocab_size)
    start = plastic.init_params(network, jax.random.key(0))
    evolution = evolve.make_evolution(
        network, task, evolve.ESConfig(population=8, batch=4, eval_batch=16, lr=0.5,
                                       optimizer="adam"), jax.random.key(0))
    state, metrics = evolution.run(evolution.place(evolution.init(jax.random.key(1))),
                                   jax.random.key(2), 0, 4)
    evolved = evolution.params(state)
    assert np.all(np.isfinite(metrics["best_fitness"]))
    assert not np.allclose(evolved["coeffs"]["fc2"]["eta"], start["coeffs"]["fc2"]["eta"])
    meta = metagrad.make_meta_gradient(network, task, metagrad.GradConfig(batch=4),
                                       jax.random.key(0))
    state, steps = meta.run(meta.init(), jax.random.key(2), 0, 4)
    assert np.all(np.isfinite(steps.nll)) and not np.any(steps.nonfinite)
    assert not np.allclose(meta.params(state)["coeffs"]["fc2"]["eta"],
                           start["coeffs"]["fc2"]["eta"])


def test_a_network_that_does_not_fit_the_task_is_named():
    task = tasks.get("pattern_episodes", dim=6)
    with pytest.raises(ValueError, match="feeds vectors of 6 but the network expects 5"):
        plastic.check_task(dataclasses.replace(FEED_FORWARD, input_size=5), task)
    with pytest.raises(ValueError, match="feeds vector, but the network's input is tokens"):
        plastic.check_task(RECURRENT, task)
    with pytest.raises(ValueError, match="readout size is 4, the task's 5"):
        FEED_FORWARD.sized(3, 5)


# --- Najarro & Risi's feed-forward network ------------------------------------------------


@pytest.mark.parametrize("variant", ["A", "AD_lr", "ABCD_lr", "ABCD_lr_D_in_and_out"])
def test_their_coefficient_vector_on_their_network_gives_their_update(variant):
    """MLP_heb, 27 -> 128 -> 64 -> 8: their vector loads one to one, and two steps of the
    lifetime equal two steps of their loop (forward, hebbian_update_<variant>, W /= max|W|)."""
    network = najarro.feedforward(27, 8, variant, readout_activation="identity",
                                  readout_post="self")
    shapes = list(network.weight_shapes().values())
    assert shapes == [(128, 27), (64, 128), (8, 64)]
    rng = np.random.default_rng(0)
    columns = len(najarro.REFERENCE_COLUMNS[variant])
    table = rng.standard_normal((najarro.reference_size(network) // columns, columns))
    table = table.astype(np.float32) * 0.1
    params = najarro.coefficients_from_reference(table.squeeze(), network)
    weights = [rng.uniform(-0.1, 0.1, shape).astype(np.float32) for shape in shapes]
    observations = rng.standard_normal((2, 27)).astype(np.float32)

    draws = plastic.LifetimeDraws(
        {name: jnp.asarray(w)[None] for name, w in zip(network.matrices, weights)},
        jax.random.split(jax.random.key(0), 1))
    with jax.default_matmul_precision("highest"):
        _, (_, w_end) = plastic.run_lifetimes(network, params, draws, observations[None],
                                              np.zeros((1, 2), np.int32), np.ones((1, 2)))
    theirs = [w.astype(np.float64) for w in weights]
    for o0 in observations.astype(np.float64):
        o1 = np.tanh(theirs[0] @ o0)
        o2 = np.tanh(theirs[1] @ o1)
        o3 = theirs[2] @ o2
        coefficient_rows = table[:, 0] if columns == 1 else table
        theirs = reference_weight_update(variant, coefficient_rows.astype(np.float64), theirs,
                                         [(o0, o1), (o1, o2), (o2, o3)])
    for name, w in zip(network.matrices, theirs):
        np.testing.assert_allclose(w_end[name][0], w, rtol=1e-4, atol=1e-5, err_msg=name)


# --- files and run configs ----------------------------------------------------------------


def test_a_network_round_trips_through_json_toml_and_a_run_config(tmp_path):
    path = tmp_path / "net.json"
    nw.save(RECURRENT, path)
    assert nw.load(path) == RECURRENT
    assert runs.config_dict(RECURRENT) == RECURRENT.to_dict()
    toml = tmp_path / "net.toml"
    toml.write_text('input = "vector"\n\n[[layers]]\nname = "h"\nsize = 8\n'
                    'activation = "kwta(3)"\n[[layers.inputs]]\nname = "fc1"\nsource = "x"\n\n'
                    '[[layers]]\nname = "out"\nactivation = "softmax"\n[[layers.inputs]]\n'
                    'name = "fc2"\nsource = "h"\nrule = "rls(alpha=10.0)"\n')
    loaded = nw.load(toml)
    assert loaded.layers[0].activation == "kwta(3)" and loaded.readout.size is None
    assert loaded.rule("fc2").name == "rls(alpha=10.0)"


def test_a_network_file_is_recorded_in_config_json_and_a_changed_one_refuses_resume(tmp_path):
    network = nw.Network(layers=(
        nw.Layer("h", 8, (nw.Connection("fc1", "x", "oja"),)),
        nw.Layer("out", None, (nw.Connection("fc2", "h", "delta"),), activation="softmax")),
        input="vector")
    path, out = tmp_path / "net.json", str(tmp_path / "run")
    nw.save(network, path)
    flags = ["--task", "pattern_episodes", "--network", str(path), "--pop", "4", "--batch", "2",
             "--generations", "1", "--eval-batch", "8", "--report", "rule", "--no-plots"]
    es_abcd.main(flags + ["--out", out])
    with open(os.path.join(out, "config.json")) as f:
        saved = nw.Network.from_dict(json.load(f)["net"])
    task = tasks.get("pattern_episodes")
    assert saved == network.sized(task.input_size, task.vocab_size)
    wider = dataclasses.replace(network, layers=(
        dataclasses.replace(network.layers[0], size=16), network.layers[1]))
    nw.save(wider, path)
    with pytest.raises(ValueError, match=r"differs in: net\.layers\.0\.size\)"):
        es_abcd.main(flags + ["--out", out, "--resume"])


def test_the_preset_of_najarro_and_risi_runs_from_the_command_line(tmp_path):
    cfg, _ = es_abcd.parse_config(["--task", "pattern_episodes", "--preset", "najarro2020",
                                   "--pop", "20", "--out", str(tmp_path)])
    assert cfg.init_mean == "normal" and cfg.es.population == 20  # a flag given wins
    assert (cfg.es.fitness_shaping, cfg.es.l2_penalty) == ("centered_ranks_std", 0.01)
    assert cfg.net == najarro.feedforward(32, 5)
    start = es_abcd.initial_mean(cfg.net, cfg)["coeffs"]["fc2"]["A"]
    assert start.shape == (64, 128) and 0.9 < float(np.std(start)) < 1.1


# --- bad networks are named ---------------------------------------------------------------


def layers(*specs):
    return tuple(nw.Layer(name, size, conns, *rest) for name, size, conns, *rest in specs)


@pytest.mark.parametrize("build, message", [
    (lambda: nw.Network(layers(("h", 4, (nw.Connection("a", "g"),)),
                               ("out", 3, (nw.Connection("b", "h"),)))),
     "source 'g' names no layer"),
    (lambda: nw.Network(layers(("h", 4, (nw.Connection("a", "out"),)),
                               ("out", 3, (nw.Connection("b", "h"),)))),
     "layer 'out' is not computed before 'h'"),
    (lambda: nw.Network(layers(("h", 4, (nw.Connection("a", "x"),)),
                               ("out", 3, (nw.Connection("a", "h"),)))),
     r"connection names must be unique; repeated: \['a'\]"),
    (lambda: nw.Layer("h", 4, (nw.Connection("a", "x"),), "swish"), "activation must be one"),
    (lambda: nw.Layer("h", 4, (nw.Connection("a", "x"),), "kwta(5)"), "keeps more units"),
    (lambda: nw.Layer("h", 4, ()), "has no inputs"),
    (lambda: nw.Connection("a", "x", "no_such_rule"), "unknown rule 'no_such_rule'"),
    (lambda: nw.Connection("a", "x", "hebb", weight_noise=float("nan")),
     "weight_noise must be a finite number >= 0"),
    (lambda: nw.Connection("a", "x", post="teacher"), "is fixed"),
    (lambda: nw.Network(layers(("h", 4, (nw.Connection("a", "x", "hebb", post="reward"),)),
                               ("out", 3, (nw.Connection("b", "h"),)))),
     "post 'reward' is one number per sequence"),
    (lambda: nw.Network(layers(("h", 4, (nw.Connection("a", "x", "hebb", mod="neuromod"),)),
                               ("out", 3, (nw.Connection("b", "h"),)))),
     "the network has none"),
    (lambda: nw.Network(layers(("h", 4, (nw.Connection("a", "x", "hebb", post="out"),)),
                               ("out", 3, (nw.Connection("b", "h"),))), input_size=5)
     .check_sizes(), "its post signal 'out' has 3 units, its layer 'h' 4"),
    (lambda: nw.Network.from_dict({"layers": [], "colour": 1}), r"unknown key\(s\) \['colour'\]"),
    (lambda: nw.Network.from_dict({"layers": [{"name": "out", "size": 3}]}),
     r"missing key\(s\) \['inputs'\]"),
    (lambda: nw.Network(layers(("x", 4, (nw.Connection("a", "x"),)),)), "reserved"),
])
def test_a_bad_network_is_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_bundled_networks_load_by_name():
    assert "feedforward_classifier" in nw.bundled()
    net = nw.load("feedforward_classifier")
    assert net.input == "vector" and net.rule("fc2").name == "delta"
    with pytest.raises(ValueError, match="no_such_net: no such network file"):
        nw.load("no_such_net")


def test_a_network_file_that_is_not_one_is_named(tmp_path):
    path = tmp_path / "net.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a network file"):
        nw.load(path)
    path.write_text('{"layers": [{"name": "h", "size": 2, "inputs": [{"name": "a"}]}]}')
    with pytest.raises(ValueError, match=r"net.json: layers\[0\].inputs\[0\]: missing key"):
        nw.load(path)


# --- tasks that feed vectors --------------------------------------------------------------


@pytest.mark.parametrize("name, config", [
    ("pattern_episodes", {"num_classes": 4, "dim": 10, "seq_len": 7}),
    ("digit_episodes", {"seq_len": 7}),
])
def test_vector_tasks_feed_float_vectors_and_score_every_class(name, config):
    task = tasks.get(name, **config)
    inputs, targets, mask = task.sample(jax.random.key(0), 5, "valid")
    assert inputs.shape == (5, 7, task.input_size) and inputs.dtype == jnp.float32
    assert targets.shape == mask.shape == (5, 7) and np.all(np.asarray(mask) == 1)
    assert 0 <= int(targets.min()) and int(targets.max()) < task.vocab_size
    again = task.sample(jax.random.key(0), 5, "valid")
    np.testing.assert_array_equal(inputs, again[0])


def test_digit_episodes_relabel_the_classes_per_episode():
    """Within an episode equal images keep equal labels; across episodes the labels of a
    digit differ (each episode draws its own permutation)."""
    task = tasks.get("digit_episodes", seq_len=400)
    inputs, targets, _ = jax.device_get(task.sample(jax.random.key(1), 2, "train"))
    maps = []
    for x, y in zip(inputs, targets):
        seen = {}
        for row, label in zip(map(bytes, x), y):
            assert seen.setdefault(row, label) == label
        maps.append(seen)
    shared = set(maps[0]) & set(maps[1])
    assert shared and any(maps[0][row] != maps[1][row] for row in shared)
