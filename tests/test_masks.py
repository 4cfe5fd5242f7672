"""Tests of plastix.masks: Hebbian masks on gradient-trained layers, kept in the optimiser
state. The step prunes and regrows exactly at its thresholds; a pruned connection has no
effect and no gradient, and keeps its weight and optimiser moments until it regrows; fixed
masks hit their sparsity exactly; a masked training run resumes bit-for-bit."""

import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from plastix import masks, models, rules, runs, tasks, train

LAYER = "dense"


class OneLayer(nn.Module):
    """A single Dense layer called "dense"."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(2, name=LAYER)(x)


def one_layer_params():
    return OneLayer().init(jax.random.key(0), jnp.zeros((1, 2)))


def coactivity_at_first_synapse(agreement):
    """A co-activity that is ``agreement`` at synapse (pre 0 -> post 0), 0 elsewhere."""
    return {LAYER: jnp.zeros((2, 2)).at[0, 0].set(agreement)}


# --- the step -------------------------------------------------------------------------------


def test_step_mask_prunes_below_and_regrows_above_its_thresholds_exactly():
    # rate 0.25 and these agreements keep every value exactly representable.
    step = functools.partial(rules.step_mask, rate=0.25, prune_below=-0.25, regrow_above=0.25,
                             limit=1.0)
    state = rules.HebbianMaskState(jnp.zeros(1), jnp.ones(1))
    expected = [  # (agreement, value after, mask after)
        (-1.0, -0.25, 1.0),   # at prune_below, not below: still connected
        (-1.0, -0.5, 0.0),    # below: pruned
        (1.0, -0.25, 0.0),    # inside the band: stays pruned (hysteresis)
        (1.0, 0.0, 0.0),
        (1.0, 0.25, 0.0),     # at regrow_above, not above: still pruned
        (1.0, 0.5, 1.0),      # above: regrown
        (-1.0, 0.25, 1.0),    # back into the band: stays connected
        (4.0, 1.0, 1.0),      # clipped at the limit
        (-8.0, -1.0, 0.0),    # clipped at -limit
    ]
    for agreement, value, mask in expected:
        state = step(state, jnp.array([agreement]))
        assert (float(state.value[0]), float(state.mask[0])) == (value, mask), agreement


def test_the_rule_and_the_wrapper_take_the_same_step():
    """The hebbian_mask rule on one example and the wrapper on a batch of one agree."""
    masking = masks.HebbianMasking((LAYER,), rate=0.3, prune_below=-0.25, regrow_above=0.25,
                                   limit=1.0)
    rule = rules.hebbian_mask(prune_below=-0.25, regrow_above=0.25, limit=1.0)
    params = one_layer_params()
    optimizer = masking.wrap(optax.sgd(0.0))
    state = optimizer.init(params)
    rule_state = rule.init(jnp.zeros((2, 2)))
    pre = jnp.array([1.0, -2.0])
    for _ in range(3):
        post, coactivity = masking.apply(OneLayer(), params, state, pre[None])
        assert np.all(np.asarray(post) != 0)
        grads = jax.tree.map(jnp.zeros_like, params)
        _, state = optimizer.update(grads, state, params, coactivity=coactivity)
        _, rule_state = rule.update({"rate": jnp.asarray(0.3)}, rule_state, jnp.zeros((2, 2)),
                                    pre, post[0])
    # The rule is laid out (post, pre); a Dense kernel (pre, post).
    np.testing.assert_array_equal(state.masks[LAYER].value, rule_state.value.T)
    np.testing.assert_array_equal(state.masks[LAYER].mask, rule_state.mask.T)
    assert float(masks.sparsity_of(state)) == 0.5


class ThreeKinds(nn.Module):
    """An Embed, a strided Conv and a Dense layer in a row: every maskable kind."""

    @nn.compact
    def __call__(self, tokens):                         # (batch, 6, 6) token ids
        h = nn.Embed(5, 3, name="embed")(tokens)        # (batch, 6, 6, 3)
        h = nn.Conv(4, (3, 3), strides=(2, 2), name="conv")(h)
        return nn.Dense(2, name="dense")(h)             # (batch, 3, 3, 2)


def measured(kind, layers=("embed", "conv", "dense")):
    """(inputs and outputs of every layer, the co-activity ``kind`` measures, params)."""
    model = ThreeKinds()
    tokens = jax.random.randint(jax.random.key(1), (2, 6, 6), 0, 5)
    params = model.init(jax.random.key(0), tokens)
    masking = masks.HebbianMasking(layers, agreement=kind, margin=0.0)
    opt_state = masking.wrap(optax.sgd(0.1)).init(params)
    _, coactivity = masking.apply(model, params, opt_state, tokens)
    _, seen = model.apply(params, tokens, capture_intermediates=True,
                          mutable=["intermediates"])
    out = lambda name: seen["intermediates"][name]["__call__"][0]
    io = {"embed": (jax.nn.one_hot(tokens, 5), out("embed")),
          "conv": (out("embed"), out("conv")), "dense": (out("conv"), out("dense"))}
    return io, coactivity, params


def test_coactivity_is_the_mean_over_examples_and_positions_for_every_layer_kind():
    io, coactivity, _ = measured("sign")
    pre, post = (np.sign(np.asarray(a)) for a in io["embed"])
    np.testing.assert_allclose(coactivity["embed"],
                               np.einsum("bhwi,bhwo->io", pre, post) / 72, rtol=1e-6)
    pre, post = (np.sign(np.asarray(a)) for a in io["dense"])
    np.testing.assert_allclose(coactivity["dense"],
                               np.einsum("bhwi,bhwo->io", pre, post) / 18, rtol=1e-6)
    # A convolution: each kernel entry correlates the input it sees with the output, over
    # the output positions of the layer's own stride and ("SAME") padding.
    pre, post = (np.sign(np.asarray(a)) for a in io["conv"])
    padded = np.pad(pre, ((0, 0), (0, 1), (0, 1), (0, 0)))  # SAME, stride 2, size 6: pad 0/1
    patches = np.stack([np.stack([padded[:, 2 * r:2 * r + 3, 2 * c:2 * c + 3]
                                  for c in range(3)], 1) for r in range(3)], 1)
    expected = np.einsum("brcuvi,brco->uvio", patches, post) / 18
    np.testing.assert_allclose(coactivity["conv"], expected, rtol=1e-5, atol=1e-6)


def test_centred_and_product_coactivities():
    io, centred, _ = measured("centred")
    pre, post = (np.asarray(a).reshape(-1, np.shape(a)[-1]) for a in io["dense"])
    sign_centred = lambda v: np.sign(v - v.mean(axis=0))
    np.testing.assert_allclose(centred["dense"],
                               sign_centred(pre).T @ sign_centred(post) / len(pre), rtol=1e-6)
    _, product, params = measured("product")
    np.testing.assert_allclose(product["dense"], pre.T @ post / len(pre), rtol=1e-5)
    # The agreement weighs it by the weight and scales each output's inputs to mean
    # magnitude 1.
    kernel = params["params"]["dense"]["kernel"]
    a = masks.agreement(masks.HebbianMasking(("dense",), agreement="product"),
                        product["dense"], kernel)
    np.testing.assert_allclose(jnp.mean(jnp.abs(a), axis=0), [1.0, 1.0], rtol=1e-5)
    np.testing.assert_allclose(a * jnp.mean(jnp.abs(kernel * product["dense"]), axis=0),
                               kernel * product["dense"], rtol=1e-5)
    conv = params["params"]["conv"]["kernel"]
    _, product, _ = measured("covariance")
    a = masks.agreement(masks.HebbianMasking(("conv",), agreement="covariance"),
                        product["conv"], conv)
    np.testing.assert_allclose(jnp.mean(jnp.abs(a), axis=(0, 1, 2)), np.ones(4), rtol=1e-5)
    contribution = masks.agreement(masks.HebbianMasking(("dense",), agreement="contribution"),
                                   centred["dense"], kernel)
    np.testing.assert_array_equal(contribution, np.sign(kernel) * centred["dense"])


# --- the forward pass -----------------------------------------------------------------------


@functools.cache
def mlp_setup():
    model = models.make_classifier("mlp", 10, hidden=8)
    params = model.init(jax.random.key(0), jnp.zeros((1, 1, 64)))
    inputs, targets, _ = tasks.image_splits()["valid"]
    return model, params, jnp.asarray(inputs[:16]), jnp.asarray(targets[:16])


FIXED_MASKS = masks.HebbianMasking(("logits",), fixed=True)


def pruned_state(params, masking=FIXED_MASKS):
    opt_state = masking.wrap(optax.adam(1e-2)).init(params)
    kernel = params["params"]["logits"]["kernel"]
    mask = np.ones(kernel.shape, np.float32)
    mask[::2, 3] = 0.0
    return opt_state, jnp.asarray(mask), masks.with_masks(opt_state, {"logits": mask})


def test_a_pruned_connection_has_no_effect_and_no_gradient():
    model, params, inputs, targets = mlp_setup()
    _, mask, opt_state = pruned_state(params)
    outputs, coactivity = FIXED_MASKS.apply(model, params, opt_state, inputs)
    kernel = params["params"]["logits"]["kernel"]
    perturbed = jax.tree.map(lambda x: x, params)
    perturbed["params"]["logits"]["kernel"] = jnp.where(mask == 0, kernel + 100.0, kernel)
    again, _ = FIXED_MASKS.apply(model, perturbed, opt_state, inputs)
    np.testing.assert_array_equal(outputs, again)
    assert not np.array_equal(model.apply(perturbed, inputs), model.apply(params, inputs))

    def loss(params):
        logits, _ = FIXED_MASKS.apply(model, params, opt_state, inputs)
        return train.scores(logits, (inputs, targets, jnp.ones(targets.shape)))[0]

    grad = jax.grad(loss)(params)["params"]["logits"]["kernel"]
    assert np.all(np.asarray(grad)[np.asarray(mask) == 0] == 0.0)
    assert np.any(np.asarray(grad)[np.asarray(mask) == 1] != 0.0)

    # The co-activity is of the layer's input and its masked output, outside the gradient.
    layer = params["params"]["hidden"]
    hidden = nn.relu(inputs @ layer["kernel"] + layer["bias"]).reshape(-1, 8)
    expected = np.sign(hidden).T @ np.sign(np.asarray(outputs).reshape(-1, 10)) / len(hidden)
    np.testing.assert_allclose(coactivity["logits"], expected, rtol=1e-6)
    grad_through_coactivity = jax.grad(lambda p: jnp.sum(FIXED_MASKS.apply(
        model, p, opt_state, inputs)[1]["logits"]))(params)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grad_through_coactivity))


def test_masked_embedding_rows_take_no_part():
    model = models.make_model("rnn-ln", 7, 5, 4, embed_dim=3, readout_features=0)
    tokens = jnp.array([[1, 2, 3, 1, 0]])
    params = model.init(jax.random.key(0), tokens)
    masking = masks.HebbianMasking(("embed",), fixed=True)
    opt_state = masking.wrap(optax.sgd(1.0)).init(params)
    mask = np.ones((7, 3), np.float32)
    mask[1] = 0.0  # token 1 embeds to zero
    opt_state = masks.with_masks(opt_state, {"embed": mask})
    logits, coactivity = masking.apply(model, params, opt_state, tokens)
    # Token 1's embedding is zero: no co-activity; the tokens that occur have some.
    c = np.asarray(coactivity["embed"])
    assert np.all(c[1] == 0) and np.all(np.abs(c[[0, 2, 3]]).sum(axis=1) > 0)
    assert np.all(c[4:] == 0)  # tokens that never occur
    zeroed = jax.tree.map(lambda x: x, params)
    zeroed["params"]["embed"]["embedding"] = params["params"]["embed"]["embedding"] * mask
    np.testing.assert_array_equal(logits, model.apply(zeroed, tokens))


# --- the optimiser state ----------------------------------------------------------------------


def test_a_pruned_connection_keeps_its_weight_and_moments_and_resumes_when_regrown():
    masking = masks.HebbianMasking((LAYER,), rate=1.0, prune_below=-0.5, regrow_above=0.5,
                                   limit=1.0)
    optimizer = masking.wrap(optax.adam(0.1))
    params = one_layer_params()
    grads = jax.tree.map(jnp.ones_like, params)

    @jax.jit
    def step(params, state, signs):
        updates, new = optimizer.update(grads, state, params,
                                        coactivity=coactivity_at_first_synapse(signs))
        return optax.apply_updates(params, updates), new, updates["params"][LAYER]["kernel"]

    def synapse(params, state):  # (w, Adam mu, Adam nu) of synapse (0, 0)
        adam = state.inner[0]
        return [float(t["params"][LAYER]["kernel"][0, 0]) for t in (params, adam.mu, adam.nu)]

    state = optimizer.init(params)
    params, state, _ = step(params, state, 1.0)    # h(0, 0) = 1
    params, state, moved = step(params, state, -1.0)  # h = 0: still connected, still moving
    assert float(moved[0, 0]) != 0.0
    at_pruning = synapse(params, state)
    params, pruned, moved = step(params, state, -1.0)  # h = -1: pruned now
    stats = masks.mask_stats(state, pruned)
    counts = (float(stats["pruned"]), float(stats["regrown"]), float(stats["sparsity"]))
    assert counts == (1, 0, 0.25)
    state = pruned
    for _ in range(3):                              # frozen, while the others move
        assert float(moved[0, 0]) == 0.0 and np.all(np.asarray(moved).ravel()[1:] != 0.0)
        assert synapse(params, state) == at_pruning
        params, state, moved = step(params, state, -1.0)
    params, state, moved = step(params, state, 1.0)   # h: -1 -> 0, still pruned
    params, regrown, moved = step(params, state, 1.0)  # h -> 1: regrown
    stats = masks.mask_stats(state, regrown)
    assert (float(stats["pruned"]), float(stats["regrown"]), float(stats["sparsity"])) == (0, 1, 0)
    # Regrown with the weight and moments it was pruned with; it moves from the next step.
    assert float(moved[0, 0]) == 0.0 and synapse(params, regrown) == at_pruning
    _, _, moved = step(params, regrown, 1.0)
    assert float(moved[0, 0]) != 0.0


def test_frozen_masks_need_no_coactivity_and_never_change():
    params = one_layer_params()
    for masking in (masks.HebbianMasking((LAYER,), fixed=True),
                    masks.HebbianMasking((LAYER,), rate=0.0)):
        optimizer = masking.wrap(optax.sgd(0.1), initial_masks={LAYER: jnp.eye(2)})
        state = optimizer.init(params)
        updates, new = optimizer.update(jax.tree.map(jnp.ones_like, params), state, params)
        np.testing.assert_array_equal(new.masks[LAYER].mask, jnp.eye(2))
        np.testing.assert_array_equal(updates["params"][LAYER]["kernel"], -0.1 * jnp.eye(2))


def test_wrapper_works_under_jit_vmap_and_grad():
    masking = masks.HebbianMasking(("logits",), rate=0.5, prune_below=-0.2, regrow_above=0.2,
                                   limit=1.0, agreement="centred", margin=0.3)
    model, _, inputs, targets = mlp_setup()
    optimizer = masking.wrap(optax.adam(1e-2))
    batch = (inputs, targets, jnp.ones(targets.shape))

    def step(params, opt_state):
        grads, (_, coactivity) = jax.grad(train.masked_loss_and_metrics, has_aux=True)(
            params, model, masking, opt_state, batch)
        updates, new = optimizer.update(grads, opt_state, params, coactivity=coactivity)
        return optax.apply_updates(params, updates), new

    keys = jax.random.split(jax.random.key(2), 3)
    params = jax.vmap(lambda k: model.init(k, inputs[:1]))(keys)  # a batch of param sets
    opt_state = jax.vmap(optimizer.init)(params)
    batched = jax.jit(jax.vmap(step))(params, opt_state)
    for i in range(3):
        one = jax.tree.map(lambda x: x[i], (params, opt_state))
        alone = jax.jit(step)(*one)
        for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(batched)):
            np.testing.assert_allclose(a, b[i], rtol=1e-5, atol=1e-7)
    assert float(masks.sparsity_of(jax.tree.map(lambda x: x[0], batched[1]))) > 0
    # grad through a whole step (a meta-gradient; masks are piecewise constant and pass
    # none). Plain SGD inside: Adam's sqrt(nu) has no derivative where a gradient is 0.
    sgd = masking.wrap(optax.sgd(0.1))
    params0 = jax.tree.map(lambda x: x[0], params)

    def loss_after_one_step(params):
        opt_state = sgd.init(params)
        grads, (_, coactivity) = jax.grad(train.masked_loss_and_metrics, has_aux=True)(
            params, model, masking, opt_state, batch)
        updates, opt_state = sgd.update(grads, opt_state, params, coactivity=coactivity)
        return train.masked_loss_and_metrics(optax.apply_updates(params, updates), model,
                                             masking, opt_state, batch)[0]

    meta = jax.jit(jax.grad(loss_after_one_step))(params0)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(meta))
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(meta))


# --- fixed masks --------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 0.97, 1.0])
def test_magnitude_and_random_masks_hit_the_sparsity_exactly(sparsity):
    _, params, _, _ = mlp_setup()
    kernel = np.asarray(params["params"]["logits"]["kernel"])
    magnitude = np.asarray(masks.magnitude_masks(params, ["logits"], sparsity)["logits"])
    drawn = masks.random_masks(jax.random.key(3), params, ["logits"], sparsity)["logits"]
    drawn = np.asarray(drawn)
    for mask in (magnitude, drawn):
        assert mask.shape == kernel.shape and set(np.unique(mask)) <= {0.0, 1.0}
        assert int((mask == 0).sum()) == round(sparsity * kernel.size)
    if 0 < sparsity < 1:
        assert np.abs(kernel[magnitude == 0]).max() <= np.abs(kernel[magnitude == 1]).min()
        other = masks.random_masks(jax.random.key(4), params, ["logits"], sparsity)["logits"]
        assert not np.array_equal(drawn, other)
        np.testing.assert_array_equal(
            drawn, masks.random_masks(jax.random.key(3), params, ["logits"], sparsity)["logits"])
    opt_state = masks.HebbianMasking(("logits",), fixed=True).wrap(optax.sgd(1.0)).init(params)
    assert masks.sparsity_of(masks.with_masks(opt_state, {"logits": magnitude})) == \
        pytest.approx(round(sparsity * kernel.size) / kernel.size)


# --- training ----------------------------------------------------------------------------------


class Killed(Exception):
    pass


@functools.cache
def digits_run():
    task = tasks.get("images")
    model = models.make_classifier("mlp", 10, hidden=8)
    config = train.TrainConfig(steps=20, batch_size=16, learning_rate=1e-2, log_every=5,
                               eval_every=10, eval_batches=1, checkpoint_every=10)
    masking = masks.HebbianMasking(("logits",), rate=0.3, prune_below=-0.3, regrow_above=0.3,
                                   limit=1.0, agreement="centred", margin=0.2)
    return model, task, config, masking


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in train.TIMING_FIELDS} for r in records]


def test_a_killed_masked_run_resumes_bit_for_bit(tmp_path):
    model, task, config, masking = digits_run()
    quiet = dict(masking=masking, print_fn=lambda _: None)
    straight = train.fit(model, task, config, tmp_path / "straight", **quiet)

    def kill_at_step_15(line):
        if line.startswith("step      15"):
            raise Killed

    with pytest.raises(Killed):
        train.fit(model, task, config, tmp_path / "killed", masking=masking,
                  print_fn=kill_at_step_15)
    resumed = train.fit(model, task, config, tmp_path / "killed", **quiet)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
        np.testing.assert_array_equal(a, b)
    assert 0 < masks.sparsity_of(straight.opt_state) < 1  # the masks did change
    log = lambda d: runs.MetricsLog(tmp_path / d / runs.METRICS).read()
    assert _without_timing(log("killed")) == _without_timing(log("straight"))
    train_records = [r for r in log("straight") if r["split"] == "train"]
    assert {"sparsity", "pruned", "regrown"} <= set(train_records[0])
    # Records hold window means; the counts add up to the final sparsity.
    net_pruned = sum((r["pruned"] - r["regrown"]) * config.log_every for r in train_records)
    assert net_pruned / (8 * 10) == pytest.approx(masks.sparsity_of(straight.opt_state))

    # Stopped after 10 steps, then extended to 20: the same run.
    train.fit(model, task, dataclasses.replace(config, steps=10), tmp_path / "extended",
              **quiet)
    extended = train.fit(model, task, config, tmp_path / "extended", **quiet)
    for a, b in zip(jax.tree.leaves(extended), jax.tree.leaves(straight)):
        np.testing.assert_array_equal(a, b)
    assert _without_timing(log("extended")) == _without_timing(log("straight"))

    saved = json.loads((tmp_path / "straight" / runs.CONFIG).read_text())
    assert saved["masking"]["layers"] == ["logits"] and saved["masking"]["margin"] == 0.2
    other = dataclasses.replace(masking, margin=0.3)
    with pytest.raises(ValueError, match=r"differs in: masking\.margin\)") as refused:
        train.fit(model, task, config, tmp_path / "straight", masking=other,
                  print_fn=lambda _: None)
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match=r"masking\.agreement"):
        train.fit(model, task, config, tmp_path / "straight", print_fn=lambda _: None)


def test_example_inputs_initialise_token_models_as_before():
    task = tasks.get("assoc_retrieval", num_pairs=2)
    model = models.make_model("rnn-ln", task.vocab_size, task.seq_len, 8, embed_dim=8)
    inputs = train.example_inputs(task)
    assert inputs.shape == (1, task.seq_len) and inputs.dtype == jnp.int32
    optimizer = train.make_optimizer(1e-3, 1.0)
    old = train.init_state(jax.random.key(5), model, task.seq_len, optimizer)
    new = train.init_state(jax.random.key(5), model, inputs, optimizer)
    for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)):
        np.testing.assert_array_equal(a, b)
    digits = train.example_inputs(tasks.get("images"))
    assert digits.shape == (1, 1, 64) and digits.dtype == jnp.float32


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("config, message", [
    (dict(layers=()), "at least one"),
    (dict(layers="logits"), "tuple of layer paths"),
    (dict(layers=("a", "a")), "distinct"),
    (dict(layers=("logits",), rate=-0.1), "rate must be finite and >= 0"),
    (dict(layers=("logits",), rate=float("nan")), "rate"),
    (dict(layers=("logits",), prune_below=0.5, regrow_above=0.0), "prune_below <= regrow_above"),
    (dict(layers=("logits",), limit=0.5), "regrow_above < limit"),
    (dict(layers=("logits",), agreement="cosine"), "agreement must be one of"),
    (dict(layers=("logits",), margin=1.0), r"margin must lie in \[-1, 1\) with agreement 'sign'"),
    (dict(layers=("logits",), agreement="product", margin=float("inf")), "margin must be finite"),
])
def test_bad_settings_are_refused_in_one_line(config, message):
    with pytest.raises(ValueError, match=message) as error:
        masks.HebbianMasking(**config)
    assert "\n" not in str(error.value)


def test_bad_use_is_refused_in_one_line():
    _, params, _, _ = mlp_setup()
    errors = []
    unknown = r"no Dense, Conv or Embed layer 'Dense_1'.*\['hidden', 'logits'\]"
    with pytest.raises(ValueError, match=unknown) as e:
        masks.HebbianMasking(("Dense_1",)).wrap(optax.sgd(1.0)).init(params)
    errors.append(e)
    optimizer = masks.HebbianMasking(("logits",)).wrap(optax.sgd(1.0))
    state = optimizer.init(params)
    grads = jax.tree.map(jnp.zeros_like, params)
    with pytest.raises(ValueError, match="need the layers' co-activity") as e:
        optimizer.update(grads, state, params)
    errors.append(e)
    with pytest.raises(ValueError, match="no co-activity of masked layer 'logits'") as e:
        optimizer.update(grads, state, params, coactivity={})
    errors.append(e)
    with pytest.raises(ValueError, match="needs params") as e:
        optimizer.update(grads, state)
    errors.append(e)
    with pytest.raises(ValueError, match="sparsity must lie in") as e:
        masks.magnitude_masks(params, ["logits"], 1.5)
    errors.append(e)
    with pytest.raises(ValueError, match="has shape") as e:
        masks.with_masks(state, {"logits": jnp.ones((3, 3))})
    errors.append(e)
    with pytest.raises(ValueError, match="no masked layer 'hidden'") as e:
        masks.with_masks(state, {"hidden": jnp.ones((64, 8))})
    errors.append(e)
    with pytest.raises(ValueError, match="found 0") as e:
        masks.masks_of(optax.adam(1.0).init(params))
    errors.append(e)
    assert all("\n" not in str(e.value) for e in errors)


@pytest.mark.slow  # end to end: a masked model trained by train.fit; the masks' contract is tested above
def test_masks_train_the_fast_weights_model_through_fit(tmp_path):
    """The gradient path's fast-weights model (Ba et al. 2016) with both its readout layers
    masked: fit prunes them, and what it scores is the masked forward pass."""
    task = tasks.get("assoc_retrieval", num_pairs=2)
    model = models.make_model("rnn-ln-fw", task.vocab_size, task.seq_len, 8, embed_dim=8,
                              readout_features=8)
    masking = masks.HebbianMasking(("readout", "logits"), rate=0.3, prune_below=-0.3,
                                   regrow_above=0.3, limit=1.0, agreement="centred",
                                   margin=0.3)
    config = train.TrainConfig(steps=10, batch_size=8, learning_rate=1e-2, log_every=5,
                               eval_every=10, eval_batches=1, checkpoint_every=10)
    state = train.fit(model, task, config, tmp_path, masking=masking, print_fn=lambda _: None)
    found = masks.masks_of(state.opt_state)
    assert set(found) == {"readout", "logits"}
    assert all(0 < float(jnp.mean(s.mask == 0)) < 1 for s in found.values())
    batch = task.sample(jax.random.key(0), 4)
    masked, _ = masking.apply(model, state.params, state.opt_state, batch[0])
    np.testing.assert_array_equal(
        masked, model.apply(train.effective_params(state, masking), batch[0]))
