"""Plastic recurrent networks: random weights at birth, learning only by a plasticity rule.

A lifetime reads one token sequence. At every step t

    h_t      = tanh(W_in x_t + W_rec h_{t-1})          x_t one-hot
    logits_t = W_out h_t                               scored against targets_t
    W        <- normalise(W + dW)  for every plastic matrix, dW from its rule

The readout may learn from the teaching signal (the true next token), but only
after its prediction for step t has been scored, like the plus phase of CHL:
the prediction at step t depends on tokens up to t and teaching signals before t.

Weights are drawn afresh for every lifetime, W ~ U(-a, a) with a = 0.1 as in
Najarro & Risi 2020 ("Meta-Learning through Hebbian Plasticity in Random
Networks", NeurIPS), or taken from evolved initial weights (``evolve_init``).
What evolution (or gradient descent) optimises is the ``params`` pytree:
``{"coeffs": {layer: rule coefficients}}`` plus ``"w0"`` when initial weights
are evolved too.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from plastix import rules as rules_lib

LAYERS = ("in", "rec", "out")
NORMALISATIONS = ("none", "maxabs", "l2")
READOUT_POSTS = ("auto", "teacher", "prediction")
MODULATIONS = ("none", "reward")

# Named variants of registry rules, for command lines and configs.
RULE_VARIANTS = {
    "polynomial_mod": ("polynomial", {"use_mod": True}),  # 54 terms in x, y, w, m
    "multilinear": ("polynomial", {"degree": 1}),  # 8 terms: powers 0..1 of x, y, w
    "multilinear_mod": ("polynomial", {"degree": 1, "use_mod": True}),  # 16 terms
}

# Rules that compare the readout's own prediction (post) with the teaching signal (mod);
# every other rule sees the teacher clamped as the readout's post activity.
ERROR_DRIVEN_RULES = frozenset(
    {"delta", "chl", "generec", "err_credit", "polynomial_mod", "multilinear_mod"}
)


@dataclasses.dataclass(frozen=True)
class PlasticRNN:
    """Static configuration of a plastic RNN (everything that changes shapes or code).

    Attributes:
      vocab_size: one-hot input and readout size V.
      hidden_size: recurrent units N.
      layer_rules: ``(layer, rule_name)`` pairs; layers not listed stay fixed.
        Layers are "in" (N x V), "rec" (N x N), "out" (V x N). A rule name is
        any ``plastix.rules`` registry name or a ``RULE_VARIANTS`` name (the
        polynomial rule with a teaching factor, or of degree 1).
      granularity: "shared", "post" or "synapse" coefficients.
      init_scale: initial weights are U(-init_scale, init_scale).
      evolve_init: evolve initial weights too instead of drawing them per lifetime.
      normalise: after each update, "maxabs" divides each plastic matrix by its
        largest |w| (Najarro & Risi 2020); "l2" scales each row to unit norm.
      weight_noise: std of Gaussian noise added to plastic weights every step.
      readout_post: what the readout rule sees as its post activity: the
        teacher's one-hot ("teacher"), the softmax prediction ("prediction"),
        or "auto" (prediction for error-driven rules, teacher otherwise).
        The readout's ``mod`` is always the teacher's one-hot.
      modulation: modulatory signal of the hidden layers: "none", or "reward",
        r_t = -(NLL_t - running mean of NLL), the third factor of the
        reward-modulated Hebbian RNN.
      readout_bias: give the readout an always-on presynaptic unit (W_out is
        V x (N+1)); its synapses follow the readout rule like any other, which
        lets a rule learn token frequencies within a lifetime.
      log_rates: the evolved parameter of every rule's learning rate ``eta`` is
        log(eta). Useful rates span orders of magnitude (0.01 to 100 here), which
        an isotropic search distribution crosses far faster in log space.
    """

    vocab_size: int
    hidden_size: int = 32
    layer_rules: tuple[tuple[str, str], ...] = (("out", "ABCD_lr"),)
    granularity: str = "shared"
    init_scale: float = 0.1
    evolve_init: bool = False
    normalise: str = "none"
    weight_noise: float = 0.0
    readout_post: str = "auto"
    modulation: str = "none"
    readout_bias: bool = False
    log_rates: bool = False

    def __post_init__(self):
        if self.vocab_size < 2 or self.hidden_size < 1:
            raise ValueError(
                f"PlasticRNN needs vocab_size >= 2 and hidden_size >= 1, got "
                f"vocab_size={self.vocab_size}, hidden_size={self.hidden_size}"
            )
        if not self.init_scale >= 0 or self.weight_noise < 0:
            raise ValueError(
                f"PlasticRNN needs init_scale >= 0 and weight_noise >= 0, got "
                f"init_scale={self.init_scale}, weight_noise={self.weight_noise}"
            )
        for layer, rule_name in self.layer_rules:
            if layer not in LAYERS:
                raise ValueError(f"unknown layer {layer!r}; layers are {LAYERS}")
            make_rule(rule_name)  # raises on an unknown rule name
        layers = [layer for layer, _ in self.layer_rules]
        if len(set(layers)) != len(layers):
            raise ValueError(f"each layer takes one rule, got {self.layer_rules}")
        _check_choice("normalise", self.normalise, NORMALISATIONS)
        _check_choice("readout_post", self.readout_post, READOUT_POSTS)
        _check_choice("modulation", self.modulation, MODULATIONS)
        _check_choice("granularity", self.granularity, ("shared", "post", "synapse"))

    @property
    def plastic_layers(self) -> tuple[str, ...]:
        return tuple(layer for layer, _ in self.layer_rules)

    def weight_shapes(self) -> dict[str, tuple[int, int]]:
        n, v = self.hidden_size, self.vocab_size
        return {"in": (n, v), "rec": (n, n), "out": (v, n + self.readout_bias)}

    def rule(self, layer: str) -> rules_lib.Rule:
        return make_rule(dict(self.layer_rules)[layer])

    def readout_sees_teacher(self) -> bool:
        if self.readout_post == "auto":
            return dict(self.layer_rules).get("out") not in ERROR_DRIVEN_RULES
        return self.readout_post == "teacher"


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {choices}")


@functools.cache
def make_rule(rule_name: str) -> rules_lib.Rule:
    """The registry rule ``rule_name``, or a named variant from ``RULE_VARIANTS``."""
    name, hyper = RULE_VARIANTS.get(rule_name, (rule_name, {}))
    return rules_lib.get(name, **hyper)


class LifetimeStats(NamedTuple):
    """Sums over one lifetime's scored positions (divide by ``count``)."""

    nll: jax.Array
    correct: jax.Array
    count: jax.Array


class Carry(NamedTuple):
    weights: dict
    rule_states: dict
    h: jax.Array
    nll_baseline: jax.Array


def init_params(net: PlasticRNN, key: jax.Array) -> dict:
    """The evolvable pytree: rule coefficients per plastic layer (+ initial weights)."""
    shapes = net.weight_shapes()
    coeffs = {
        layer: rules_lib.init_coeffs(net.rule(layer), shapes[layer], net.granularity)
        for layer in net.plastic_layers
    }
    params = {"coeffs": evolved_coeffs(net, coeffs)}
    if net.evolve_init:
        params["w0"] = draw_weights(net, key)
    return params


def _map_rate(coeffs: dict, fn) -> dict:
    return {name: fn(value) if name == "eta" else value for name, value in coeffs.items()}


def evolved_coeffs(net: PlasticRNN, coeffs: dict) -> dict:
    """The inverse of `rule_coeffs`: rule coefficients ``{layer: {name: value}}`` as ES
    evolves them (each ``eta`` as log(eta) when ``net.log_rates``)."""
    if not net.log_rates:
        return coeffs
    return {layer: _map_rate(c, jnp.log) for layer, c in coeffs.items()}


def rule_coeffs(net: PlasticRNN, params: dict) -> dict:
    """The coefficients the rules see: evolved log-rates exponentiated."""
    if not net.log_rates:
        return params["coeffs"]
    return {layer: _map_rate(c, jnp.exp) for layer, c in params["coeffs"].items()}


def draw_weights(net: PlasticRNN, key: jax.Array) -> dict[str, jax.Array]:
    """W ~ U(-a, a) for every matrix, a = ``net.init_scale`` (one key per matrix)."""
    keys = dict(zip(LAYERS, jax.random.split(key, len(LAYERS))))
    a = net.init_scale
    return {
        layer: jax.random.uniform(keys[layer], shape, minval=-a, maxval=a)
        for layer, shape in net.weight_shapes().items()
    }


def normalise_weights(w: jax.Array, how: str) -> jax.Array:
    """Keep plastic weights bounded: divide by max |w|, or scale rows to unit L2 norm."""
    if how == "maxabs":
        return w / jnp.maximum(jnp.max(jnp.abs(w)), 1e-12)
    if how == "l2":
        return w / jnp.maximum(jnp.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    return w


def teaching_signal(inputs, targets, mask):
    """Per-step teacher token and whether the readout may learn from it.

    The teacher at step t is the scored target where there is one, else the
    next input token (the sequence itself teaches next-token prediction). The
    last unscored step has no next token and so teaches nothing.
    """
    next_inputs = jnp.concatenate([inputs[1:], inputs[-1:]])
    scored = mask > 0
    teacher = jnp.where(scored, targets, next_inputs)
    has_next = jnp.arange(inputs.shape[0]) < inputs.shape[0] - 1
    return teacher, (scored | has_next).astype(jnp.float32)


def lifetime_logits(
    net: PlasticRNN,
    params: dict,
    key: jax.Array,
    inputs: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
):
    """Run one lifetime over a sequence; return every step's logits and the weights.

    Args:
      net: static configuration.
      params: ``init_params``-shaped pytree (one member).
      key: draws this lifetime's initial weights (unless evolved) and weight noise.
      inputs, targets, mask: ``(T,)`` arrays of one sequence (see ``plastix.tasks``).

    Returns:
      ``(logits (T, V), (w_start, w_end))``: logits[t] is the prediction made
      before any teaching signal of step t was seen.
    """
    init_key, noise_key = jax.random.split(key)
    weights = params["w0"] if net.evolve_init else draw_weights(net, init_key)
    rule_states = {layer: net.rule(layer).init(weights[layer]) for layer in net.plastic_layers}
    carry = Carry(weights, rule_states, jnp.zeros(net.hidden_size), jnp.zeros(()))
    teacher, teach_on = teaching_signal(inputs, targets, mask)
    steps = jnp.arange(inputs.shape[0])
    step_fn = functools.partial(_step, net, rule_coeffs(net, params), noise_key)
    final, logits = jax.lax.scan(step_fn, carry, (steps, inputs, targets, teacher, teach_on))
    return logits, (weights, final.weights)


def lifetime(net: PlasticRNN, params: dict, key: jax.Array, inputs, targets, mask):
    """``LifetimeStats`` of one lifetime (arguments as for ``lifetime_logits``)."""
    logits, _ = lifetime_logits(net, params, key, inputs, targets, mask)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[:, None], axis=1)[:, 0]
    correct = (jnp.argmax(logits, axis=1) == targets).astype(jnp.float32)
    return LifetimeStats(
        nll=jnp.sum(nll * mask), correct=jnp.sum(correct * mask), count=jnp.sum(mask)
    )


def _step(net: PlasticRNN, coeffs: dict, noise_key, carry: Carry, xs):
    """One time step: predict, score, then let every plastic matrix learn."""
    t, token, target, teacher_token, teach_on = xs
    w = carry.weights
    x = jax.nn.one_hot(token, net.vocab_size)
    h = jnp.tanh(w["in"] @ x + w["rec"] @ carry.h)
    readout_pre = jnp.append(h, 1.0) if net.readout_bias else h
    logits = w["out"] @ readout_pre
    log_probs = jax.nn.log_softmax(logits)
    nll = -log_probs[target]

    teacher = jax.nn.one_hot(teacher_token, net.vocab_size) * teach_on
    readout_post = teacher if net.readout_sees_teacher() else jnp.exp(log_probs)
    reward = -(nll - carry.nll_baseline)
    hidden_mod = reward if net.modulation == "reward" else None
    pre_post_mod = {
        "in": (x, h, hidden_mod),
        "rec": (carry.h, h, hidden_mod),
        "out": (readout_pre, readout_post, teacher),
    }
    layer_keys = jax.random.split(jax.random.fold_in(noise_key, t), len(LAYERS))
    new_w, new_states = dict(w), dict(carry.rule_states)
    for layer, layer_key in zip(LAYERS, layer_keys):
        if layer not in net.plastic_layers:
            continue
        pre, post, mod = pre_post_mod[layer]
        dw, new_states[layer] = net.rule(layer).update(
            coeffs[layer], carry.rule_states[layer], w[layer], pre, post, mod
        )
        if layer == "out":  # no teacher, no readout learning (the final step)
            dw = dw * teach_on
        updated = w[layer] + dw
        if net.weight_noise > 0:
            updated = updated + net.weight_noise * jax.random.normal(layer_key, updated.shape)
        new_w[layer] = normalise_weights(updated, net.normalise)

    baseline = 0.9 * carry.nll_baseline + 0.1 * nll
    return Carry(new_w, new_states, h, baseline), logits


def evaluate(net: PlasticRNN, params: dict, key: jax.Array, inputs, targets, mask):
    """Mean NLL (nats per scored token) and accuracy over a batch of lifetimes.

    Every sequence gets its own lifetime key, so its own random initial weights.
    Non-finite NLL (divergent plastic weights) is passed through for the
    caller to contain.
    """
    keys = jax.random.split(key, inputs.shape[0])
    one_lifetime = functools.partial(lifetime, net, params)
    stats = jax.vmap(one_lifetime)(keys, inputs, targets, mask)
    count = jnp.maximum(jnp.sum(stats.count), 1.0)
    return jnp.sum(stats.nll) / count, jnp.sum(stats.correct) / count
