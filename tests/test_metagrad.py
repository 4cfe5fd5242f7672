"""Meta-learning by gradient through the lifetime: the gradient itself (finite differences,
truncation, checkpointing), bounded memory, divergence, resume, devices, bad input."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_on_cpu_devices

from plastix import metagrad, plastic, tasks

TASK = tasks.get("assoc_retrieval", num_pairs=2)
# Every kind of evolvable parameter: dense and fused rules, per-neuron coefficients,
# learned initial weights, log rates, and backpropamine's plastic trace gated by the
# network's own neuromodulator.
NET = plastic.PlasticRNN(
    vocab_size=TASK.vocab_size, hidden_size=6, granularity="post", evolve_init=True,
    log_rates=True, modulation="network",
    layer_rules=(("in", "ABCD_lr"), ("rec", "backpropamine_retro"), ("out", "multilinear_mod")))


# A smaller network for the checks that compile many gradients.
SMALL_NET = plastic.PlasticRNN(vocab_size=TASK.vocab_size, hidden_size=6, evolve_init=True,
                               layer_rules=(("rec", "oja"), ("out", "ABCD_lr")))


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _loss_and_grad(net, params, draws, data, truncation=None, checkpoint_every=None):
    return metagrad.loss_and_grad(net, params, draws, data, truncation, checkpoint_every)


def _problem(batch=3, seed=0, net=NET):
    params = plastic.init_params(net, jax.random.key(seed))
    # Nonzero everywhere, so that every parameter moves the loss.
    params = jax.tree.map(lambda x, k: x + 0.3 * jax.random.normal(k, x.shape),
                          params, _keys_like(params, jax.random.key(seed + 1)))
    draws = plastic.lifetime_draws(net, jax.random.key(seed + 2), batch)
    data = TASK.sample(jax.random.key(seed + 3), batch, "train")
    return net, params, draws, data


def _keys_like(tree, key):
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, list(jax.random.split(key, len(leaves))))


def _flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_gradient_through_the_lifetime_matches_finite_differences():
    with jax.enable_x64(True):
        net, params, draws, data = _problem()
        params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
        draws = jax.tree.map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x,
                             draws)
        loss = jax.jit(lambda p: metagrad.loss_and_grad(net, p, draws, data)[0])
        _, _, grads = jax.jit(lambda p: metagrad.loss_and_grad(net, p, draws, data))(params)
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        analytic = jax.flatten_util.ravel_pytree(grads)[0]
        rng = np.random.default_rng(0)
        for index in rng.choice(flat.size, 12, replace=False):
            e = jnp.zeros_like(flat).at[index].set(1e-6)
            numeric = (loss(unravel(flat + e)) - loss(unravel(flat - e))) / 2e-6
            np.testing.assert_allclose(analytic[index], numeric, rtol=1e-5, atol=1e-9)
        # Every kind of parameter acts on the loss (the input columns of tokens no sequence
        # holds do not, hence per kind rather than per entry).
        for path, grad in jax.tree_util.tree_leaves_with_path(grads):
            assert np.any(np.asarray(grad) != 0), jax.tree_util.keystr(path)


def test_checkpointed_and_whole_window_truncation_give_the_exact_gradient():
    net, params, draws, data = _problem(net=SMALL_NET)
    exact = _loss_and_grad(net, params, draws, data)
    for truncation, checkpoint_every in ((None, 4), (100, 3)):
        other = _loss_and_grad(net, params, draws, data, truncation, checkpoint_every)
        np.testing.assert_allclose(other[0], exact[0], rtol=1e-6)
        np.testing.assert_allclose(_flat(other[2]), _flat(exact[2]), rtol=1e-4, atol=1e-6)


# K = 3 cuts the 11 steps unevenly (a remainder window); 1 and 4 are slow extras.
@pytest.mark.parametrize("truncation", [pytest.param(1, marks=pytest.mark.slow), 3,
                                        pytest.param(4, marks=pytest.mark.slow)])
def test_truncated_gradient_stops_at_every_window_boundary(truncation):
    """Reference: the whole lifetime in one scan whose carry is cut from the gradient
    at every step t with t % K == 0, t > 0."""
    net, params, draws, data = _problem(net=SMALL_NET)
    inputs, targets, mask = data
    count = jnp.sum(mask)

    def reference_loss(params):
        carry, xs = plastic.lifetime_start(net, params, draws, inputs, targets, mask)
        step = plastic.lifetime_step(net, params, draws)

        def cut_step(carry, x):
            t = x[0]
            carry = jax.lax.cond((t > 0) & (t % truncation == 0), jax.lax.stop_gradient,
                                 lambda c: c, carry)
            return step(carry, x)

        _, (nll, _) = jax.lax.scan(cut_step, carry, xs)
        return jnp.sum(nll * mask.T) / count

    expected = jax.jit(jax.grad(reference_loss))(params)
    nll, _, grads = _loss_and_grad(net, params, draws, data, truncation)
    np.testing.assert_allclose(nll, jax.jit(reference_loss)(params), rtol=1e-6)
    np.testing.assert_allclose(_flat(grads), _flat(expected), rtol=1e-4, atol=1e-6)
    exact = _loss_and_grad(net, params, draws, data)[2]
    assert not np.allclose(_flat(grads), _flat(exact), rtol=1e-3)  # truncation does cut


def _temp_bytes(net, length, truncation, checkpoint_every):
    task = tasks.get("random_tokens", vocab_size=8, seq_len=length)
    params = plastic.init_params(net, jax.random.key(0))
    draws = plastic.lifetime_draws(net, jax.random.key(1), 2)
    data = task.sample(jax.random.key(2), 2, "train")
    fn = jax.jit(lambda p: metagrad.loss_and_grad(net, p, draws, data, truncation,
                                                  checkpoint_every))
    return fn.lower(params).compile().memory_analysis().temp_size_in_bytes


def test_truncated_bptt_memory_does_not_grow_with_the_lifetime():
    """XLA's own estimate of the working set of one gradient, lifetimes of 64 and 1024 steps."""
    net = plastic.PlasticRNN(vocab_size=8, hidden_size=16,
                             layer_rules=(("rec", "oja"), ("out", "delta")))
    truncated = [_temp_bytes(net, t, 16, 4) for t in (64, 1024)]
    whole = [_temp_bytes(net, t, None, None) for t in (64, 1024)]
    checkpointed = _temp_bytes(net, 1024, None, 32)
    assert truncated[1] <= 1.1 * truncated[0], truncated
    assert whole[1] > 8 * whole[0], whole           # storing every step grows with T
    assert checkpointed < whole[1] / 4, (checkpointed, whole)


def test_divergent_updates_are_skipped_and_counted():
    net = plastic.PlasticRNN(vocab_size=TASK.vocab_size, hidden_size=8,
                             layer_rules=(("out", "polynomial"),))
    params = plastic.init_params(net, jax.random.key(0))
    out = params["coeffs"]["out"]
    out["theta"], out["eta"] = out["theta"].at[0, 0, 2].set(1.0), jnp.asarray(10.0)  # dw ~ w^2
    meta = metagrad.make_meta_gradient(net, TASK, metagrad.GradConfig(batch=4), jax.random.key(0),
                                       init_params=params)
    state = meta.init()
    new, metrics = meta.run(state, jax.random.key(1), 0, 2)
    assert np.all(np.asarray(metrics.nonfinite) == 1)
    assert int(new.step) == 2
    np.testing.assert_array_equal(_flat(new.params), _flat(state.params))
    assert np.all(np.isfinite(_flat(new.opt_state)))


@pytest.mark.slow  # learns to a criterion; the gradient itself is tested against finite differences
def test_a_short_descent_learns_the_task():
    net = plastic.PlasticRNN(vocab_size=TASK.vocab_size, hidden_size=16, log_rates=True,
                             layer_rules=(("out", "ABCD_lr"),))
    cfg = metagrad.GradConfig(learning_rate=0.1, batch=16, eval_batch=64)
    meta = metagrad.make_meta_gradient(net, TASK, cfg, jax.random.key(0))
    state, history = metagrad.descend(meta, seed=0, steps=60, log_every=30)
    initial_nll, _ = meta.score(meta.start, jax.random.key(12345), "valid", cfg.eval_batch)
    assert history[-1]["valid_nll"] < 0.5 * float(initial_nll)
    assert history[-1]["valid_accuracy"] > 0.9


def test_killed_and_resumed_descent_ends_exactly_like_an_uninterrupted_one(tmp_path):
    net = plastic.PlasticRNN(vocab_size=TASK.vocab_size, hidden_size=8,
                             layer_rules=(("out", "ABCD_lr"),))
    meta = metagrad.make_meta_gradient(net, TASK, metagrad.GradConfig(batch=4, eval_batch=8,
                                                                      lr_decay=0.9),
                                       jax.random.key(0))
    straight, straight_history = metagrad.descend(meta, 3, 6, str(tmp_path / "a"), log_every=2)
    resumed_dir = str(tmp_path / "b")
    metagrad.descend(meta, 3, 4, resumed_dir, log_every=2)
    with open(os.path.join(resumed_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": 99}) + "\n")  # a record written after the last checkpoint
    resumed, history = metagrad.descend(meta, 3, 6, resumed_dir, log_every=2, resume=True)
    np.testing.assert_array_equal(_flat(straight.params), _flat(resumed.params))
    np.testing.assert_array_equal(_flat(straight.opt_state), _flat(resumed.opt_state))
    untimed = lambda h: [{k: v for k, v in r.items() if k not in metagrad.TIMING_FIELDS}
                         for r in h]
    assert untimed(history) == untimed(straight_history)
    with open(os.path.join(resumed_dir, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [2, 4, 6]


def test_one_and_four_devices_agree():
    """The batch of lifetimes split over 4 CPU devices gives the 1-device parameters."""
    stdout = run_on_cpu_devices("""
        import jax, numpy as np
        from plastix import metagrad, plastic, tasks
        assert len(jax.devices()) == 4, jax.devices()
        task = tasks.get("assoc_retrieval", num_pairs=2)
        net = plastic.PlasticRNN(vocab_size=task.vocab_size, hidden_size=8,
                                 layer_rules=(("rec", "oja"), ("out", "ABCD_lr")),
                                 granularity="post")
        cfg = metagrad.GradConfig(batch=8, truncation=5)
        finals = []
        for devices in (jax.devices()[:1], jax.devices()):
            meta = metagrad.make_meta_gradient(net, task, cfg, jax.random.key(0), devices)
            assert meta.mesh.devices.size == len(devices)
            state, _ = meta.run(meta.init(), jax.random.key(2), 0, 3)
            finals.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.params)]))
        np.testing.assert_allclose(finals[0], finals[1], rtol=1e-5, atol=1e-6)
        print("AGREE", float(np.abs(finals[0] - finals[1]).max()))
    """)
    assert "AGREE" in stdout


@pytest.mark.parametrize("kwargs, message", [
    ({"learning_rate": 0.0}, "gradient learning_rate must be a finite number > 0, got 0.0"),
    ({"learning_rate": float("nan")}, "gradient learning_rate must be a finite number > 0"),
    ({"clip_norm": -1.0}, "gradient clip_norm must be a finite number > 0"),
    ({"batch": 0}, "gradient batch must be an integer >= 1, got 0"),
    ({"truncation": 0}, "gradient truncation must be an integer >= 1"),
    ({"checkpoint_every": -2}, "gradient checkpoint_every must be an integer >= 1"),
    ({"l2_penalty": -1.0}, "gradient l2_penalty must be a finite number >= 0"),
    ({"l2_reduce": "max"}, "unknown l2_reduce 'max'"),
    ({"lr_decay": 1.5}, "gradient lr_decay must be a finite number in (0, 1]"),
    ({"lr_min": 1.0}, "gradient lr_min (1) must not exceed gradient learning_rate (0.01)"),
])
def test_bad_gradient_configuration_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        metagrad.GradConfig(**kwargs)


def test_descend_compiles_its_block_once():
    """The first block's state (weakly typed, on one device) is placed as later blocks'
    are, so the block of updates compiles once per run, not again at the second log."""
    cfg = metagrad.GradConfig(batch=2, eval_batch=2)
    meta = metagrad.make_meta_gradient(SMALL_NET, TASK, cfg, jax.random.key(0))
    before = metagrad.MetaGradient._run._cache_size()
    metagrad.descend(meta, seed=0, steps=3, log_every=1)
    assert metagrad.MetaGradient._run._cache_size() == before + 1

