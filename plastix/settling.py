"""Layered rate networks that settle in two phases and learn by local error-driven rules.

Contrastive Hebbian learning (CHL; Movellan 1991), GeneRec (O'Reilly 1996) and the
Err x Credit trace rule (the emer/axon framework) train a network with feedback
connections from the difference between two settled states of one trial:

* minus phase: the input clamped, the rest of the network settles to its own answer;
* plus phase: the input and the target both clamped.

Unit j of layer l >= 1 integrates its input from the layer below, the feedback from the
layer above and a bias, and relaxes towards a sigmoid of it::

    u_j = sum_i W_ji x_i + gamma sum_k B_jk z_k + b_j
    y_j <- y_j + dt (sigmoid(g (u_j - theta_l)) - y_j)

``theta_l`` is the layer's lateral inhibition: the k-winners-take-all threshold midway
between the k-th and (k+1)-th largest net input (O'Reilly & Munakata 2000, ch. 3), so
about k units are active; or 0 without inhibition. The feedback ``B`` is ``W^T``
(symmetric, as CHL's derivation assumes), fixed random (feedback alignment), or learned
by the same rule as ``W``. Every matrix then learns from its own layer's two phases by a
`plastix.rules` rule, so every update is local:

* CHL, ``rules.chl``:           dW = eta (y+ x+^T - y- x-^T)
* GeneRec, ``rules.generec``:   dW = eta (y+ - y-) x-^T
* trace, ``rules.err_credit``:  dW = eta err * credit, ``credit`` a running average of
  y- x-^T over trials (step ``credit_rate``; 1 keeps this trial's alone) and ``err`` the
  receiver's temporal difference across the trial,
  a mix of its net input's change (``1 - err_activity``) and its activity's change
  (``err_activity``; about one quarter in axon).

Biases learn by ``db = eta (y+ - y-)`` (the bias unit's activity is 1 in both phases;
the trace rule uses its ``err``). ``subtract_mean`` removes each receiving unit's mean
weight change (O'Reilly & Munakata 2000), which CHL is said to need and the trace rule
not. The same architecture trained by backprop (a bottom-up pass without feedback,
cross-entropy of the sigmoid outputs, `backprop_trial`) is the reference.

Everything is pure and jit-able; `train` runs whole epochs in ``lax.scan`` and many seeds
at once under ``vmap``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from plastix import rules

LOCAL_RULES = ("chl", "generec", "trace")
FEEDBACK = ("symmetric", "random", "learned")


@dataclasses.dataclass(frozen=True)
class SettlingNet:
    """Static configuration of a two-phase settling network.

    Attributes:
      sizes: units per layer, input first, output last, e.g. ``(25, 49, 49, 25)``.
      feedback: "symmetric" (B = W^T), "random" (fixed) or "learned" (B learns by the
        rule, with the roles of pre and post swapped).
      feedback_gain: gamma, the strength of top-down input relative to bottom-up.
      k_fraction: lateral inhibition of the hidden layers: about this fraction of units
        active (k-winners-take-all); None for none. The output layer is not inhibited.
      gain: slope g of the sigmoid.
      steps, dt: settling iterations per phase and their step size.
      init_scale: weights start ~ U(-init_scale, init_scale).
      subtract_mean: remove each receiving unit's mean weight change.
      err_activity: the trace rule's share of activity change in its error.
      credit_rate: the trace rule's step size of the credit trace, per trial.
    """

    sizes: tuple[int, ...]
    feedback: str = "symmetric"
    feedback_gain: float = 0.3
    k_fraction: float | None = 0.2
    gain: float = 4.0
    steps: int = 40
    dt: float = 0.25
    init_scale: float = 0.5
    subtract_mean: bool = False
    err_activity: float = 0.25
    credit_rate: float = 1.0

    def __post_init__(self):
        if len(self.sizes) < 2 or min(self.sizes) < 1:
            raise ValueError(f"sizes needs an input and an output layer of >= 1 unit, "
                             f"got {self.sizes}")
        if self.feedback not in FEEDBACK:
            raise ValueError(f"unknown feedback {self.feedback!r}; choose one of "
                             f"{list(FEEDBACK)}")
        if self.k_fraction is not None and not 0 < self.k_fraction < 1:
            raise ValueError(f"k_fraction must be in (0, 1) or None, got {self.k_fraction}")
        if self.steps < 1 or not 0 < self.dt <= 1:
            raise ValueError(f"need steps >= 1 and 0 < dt <= 1, got steps={self.steps}, "
                             f"dt={self.dt}")

    @property
    def layers(self) -> int:
        """Number of weight matrices."""
        return len(self.sizes) - 1


class Phase(NamedTuple):
    """A settled state: activity and net input of every layer (input first)."""

    acts: tuple[jax.Array, ...]
    nets: tuple[jax.Array, ...]
    last_change: jax.Array  # max |dy| of the final settling step


def init_params(net: SettlingNet, key: jax.Array) -> dict:
    """``{"w": [W_l (n_{l+1}, n_l)], "b": [b_l], "fb": [B_l (n_l, n_{l+1})]}``; ``fb`` holds
    the hidden layers' feedback (empty lists where feedback is symmetric)."""
    keys = jax.random.split(key, 2 * net.layers)
    shapes = list(zip(net.sizes[1:], net.sizes[:-1]))
    uniform = lambda k, shape: jax.random.uniform(k, shape, minval=-net.init_scale,
                                                  maxval=net.init_scale)
    params = {"w": [uniform(k, s) for k, s in zip(keys[: net.layers], shapes)],
              "b": [jnp.zeros(n) for n in net.sizes[1:]], "fb": []}
    if net.feedback != "symmetric":
        params["fb"] = [uniform(k, (m, n)) for k, (n, m) in
                        zip(keys[net.layers + 1:], shapes[1:])]
    return params


def feedback_weights(net: SettlingNet, params: dict, l: int) -> jax.Array:
    """B of hidden layer ``l`` (1-based over layers): ``(n_l, n_{l+1})``."""
    return params["w"][l].T if net.feedback == "symmetric" else params["fb"][l - 1]


def kwta_threshold(u: jax.Array, k: int) -> jax.Array:
    """The inhibition that leaves about ``k`` units of net input ``u`` above it: midway
    between the k-th and (k+1)-th largest values."""
    top = jax.lax.top_k(u, k + 1)[0]
    return 0.5 * (top[k - 1] + top[k])


def activation(net: SettlingNet, u: jax.Array, inhibited: bool) -> jax.Array:
    """sigmoid(g (u - theta)), theta the layer's k-winners-take-all threshold if inhibited."""
    if inhibited and net.k_fraction is not None:
        k = max(1, min(round(net.k_fraction * u.shape[-1]), u.shape[-1] - 1))
        u = u - kwta_threshold(u, k)
    return jax.nn.sigmoid(net.gain * u)


def _net_inputs(net: SettlingNet, params: dict, acts, l: int) -> jax.Array:
    """u of layer ``l`` (1-based) given every layer's activity."""
    u = params["w"][l - 1] @ acts[l - 1] + params["b"][l - 1]
    if l < net.layers:  # hidden: feedback from the layer above
        u = u + net.feedback_gain * feedback_weights(net, params, l) @ acts[l + 1]
    return u


def settle(net: SettlingNet, params: dict, x: jax.Array, target: jax.Array | None = None,
           start: Phase | None = None) -> Phase:
    """Settle with ``x`` clamped (and the output clamped to ``target`` if given), from
    ``start``'s activity or from rest (all 0), for ``net.steps`` steps. Within a step the
    layers move bottom-up, each reading the layers below as already moved."""
    if start is None:
        acts = (x,) + tuple(jnp.zeros(n) for n in net.sizes[1:])
    else:
        acts = (x,) + start.acts[1:]
    if target is not None:
        acts = acts[:-1] + (target,)
    free = net.layers if target is None else net.layers - 1  # layers that move

    def step(carry, _):
        acts, _ = carry
        new, nets = list(acts), [jnp.zeros(0)] * (net.layers + 1)
        for l in range(1, net.layers + 1):
            nets[l] = _net_inputs(net, params, new, l)
            if l <= free:
                goal = activation(net, nets[l], inhibited=l < net.layers)
                new[l] = acts[l] + net.dt * (goal - acts[l])
        change = jnp.max(jnp.stack([jnp.max(jnp.abs(n - a)) for n, a in zip(new[1:], acts[1:])]))
        return (tuple(new), change), tuple(nets)

    (acts, change), nets = jax.lax.scan(step, (acts, jnp.zeros(())), None, length=net.steps)
    return Phase(acts, (x,) + tuple(n[-1] for n in nets[1:]), change)


class LearnState(NamedTuple):
    """What the local rules carry between trials (the trace rule's credit)."""

    w: list
    fb: list


def init_learn_state(net: SettlingNet, method: str, params: dict) -> LearnState:
    """The local rule's state for every matrix of ``params`` (feedback included)."""
    rule = _rule(method, net)
    return LearnState([rule.init(w) for w in params["w"]], [rule.init(b) for b in params["fb"]])


def _rule(method: str, net: SettlingNet) -> rules.Rule:
    if method not in LOCAL_RULES:
        raise ValueError(f"unknown local rule {method!r}; choose one of {list(LOCAL_RULES)}")
    if method == "trace":
        return rules.get("err_credit", credit_rate=net.credit_rate, late_phase=True)
    return rules.get(method)


def _phase_error(net: SettlingNet, minus: Phase, plus: Phase, l: int) -> jax.Array:
    """The trace rule's error of layer ``l``: its temporal difference across the trial,
    ``(1 - a) (u+ - u-) + a (y+ - y-)``, ``a = err_activity``."""
    a = net.err_activity
    return (1 - a) * (plus.nets[l] - minus.nets[l]) + a * (plus.acts[l] - minus.acts[l])


def _local_update(rule, method, coeffs, state, w, pre_minus, post_minus, pre_plus,
                  post_plus, err):
    """One matrix's weight change from its two phases, by ``rule``."""
    if method == "chl":
        mod = rules.PlusPhase(pre_plus, post_plus)
    elif method == "generec":
        mod = post_plus
    else:  # trace: the rule reads err = mod - post
        mod = post_minus + err
    return rule.update(coeffs, state, w, pre_minus, post_minus, mod)


def _centred(dw: jax.Array, subtract_mean: bool) -> jax.Array:
    """``dw`` less each receiving unit's (row's) mean change, if asked."""
    return dw - jnp.mean(dw, axis=1, keepdims=True) if subtract_mean else dw


class TrialStats(NamedTuple):
    """Per-trial learning statistics: sum and sum of |.| of every weight change."""

    dw_sum: jax.Array
    dw_abs: jax.Array


def local_trial(net: SettlingNet, method: str, lr: float, params: dict, state: LearnState,
                x: jax.Array, target: jax.Array):
    """Settle both phases on one pattern and apply every matrix's local update.

    Returns ``(params, state, stats)``.
    """
    rule = _rule(method, net)
    coeffs = {"eta": jnp.asarray(lr, jnp.float32)}
    minus = settle(net, params, x)
    plus = settle(net, params, x, target, start=minus)
    # errs[l]: the trace rule's error of layer l (errs[0], the clamped input, unused)
    errs = [None] + [_phase_error(net, minus, plus, l) for l in range(1, net.layers + 1)]
    new_w, new_state, new_b, total, total_abs = [], [], [], 0.0, 0.0
    for l in range(net.layers):
        err = errs[l + 1]
        dw, s = _local_update(rule, method, coeffs, state.w[l], params["w"][l],
                              minus.acts[l], minus.acts[l + 1], plus.acts[l],
                              plus.acts[l + 1], err)
        dw = _centred(dw, net.subtract_mean)
        db = lr * (err if method == "trace" else plus.acts[l + 1] - minus.acts[l + 1])
        new_w.append(params["w"][l] + dw)
        new_b.append(params["b"][l] + db)
        new_state.append(s)
        total, total_abs = total + jnp.sum(dw), total_abs + jnp.sum(jnp.abs(dw))
    new_fb, fb_state = list(params["fb"]), list(state.fb)
    if net.feedback == "learned":  # top-down: pre is the layer above, post the one below
        for l in range(1, net.layers):
            dfb, fb_state[l - 1] = _local_update(
                rule, method, coeffs, state.fb[l - 1], params["fb"][l - 1],
                minus.acts[l + 1], minus.acts[l], plus.acts[l + 1], plus.acts[l], errs[l])
            new_fb[l - 1] = params["fb"][l - 1] + _centred(dfb, net.subtract_mean)
    params = {"w": new_w, "b": new_b, "fb": new_fb}
    stats = TrialStats(total, total_abs)
    return params, LearnState(new_state, fb_state), stats


def output_logits(net: SettlingNet, params: dict, x: jax.Array) -> jax.Array:
    """``g u`` of the output layer after one bottom-up pass (no feedback): the network
    backprop trains, whose output is ``sigmoid`` of these."""
    a = x
    for l in range(net.layers - 1):
        a = activation(net, params["w"][l] @ a + params["b"][l], inhibited=True)
    return net.gain * (params["w"][-1] @ a + params["b"][-1])


def feedforward(net: SettlingNet, params: dict, x: jax.Array) -> jax.Array:
    """The output of one bottom-up pass (no feedback)."""
    return jax.nn.sigmoid(output_logits(net, params, x))


def backprop_trial(net: SettlingNet, lr: float, params: dict, x: jax.Array,
                   target: jax.Array):
    """One SGD step on the cross-entropy of `feedforward`'s sigmoid outputs against the
    binary target (the backprop reference; its output error is ``y - t``, as in GeneRec)."""
    loss = lambda p: jnp.sum(optax.sigmoid_binary_cross_entropy(
        output_logits(net, p, x), target))
    grads = jax.grad(loss)(params)
    new = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    dw = [n - p for n, p in zip(new["w"], params["w"])]
    stats = TrialStats(sum(jnp.sum(d) for d in dw), sum(jnp.sum(jnp.abs(d)) for d in dw))
    return new, stats


def predict(net: SettlingNet, method: str, params: dict, x: jax.Array) -> jax.Array:
    """The network's answer: the settled minus phase (local rules) or the bottom-up pass
    (backprop)."""
    if method == "backprop":
        return feedforward(net, params, x)
    return settle(net, params, x).acts[-1]


class EpochStats(NamedTuple):
    """Per epoch: patterns wrong (any output unit on the wrong side of 0.5), summed
    squared error, argmax accuracy, and the epoch's mean and mean |.| weight change per
    synapse."""

    errors: jax.Array
    sse: jax.Array
    accuracy: jax.Array
    mean_dw: jax.Array
    mean_abs_dw: jax.Array


def score(net: SettlingNet, method: str, params: dict, xs: jax.Array, ts: jax.Array):
    """``(errors, sse, accuracy)`` of the answers to every pattern of ``xs``."""
    ys = jax.vmap(lambda x: predict(net, method, params, x))(xs)
    wrong = jnp.any(jnp.abs(ys - ts) > 0.5, axis=-1)
    accuracy = jnp.mean(jnp.argmax(ys, -1) == jnp.argmax(ts, -1))
    return jnp.sum(wrong), jnp.sum(jnp.square(ys - ts)), accuracy


@functools.partial(jax.jit, static_argnames=("net", "method", "epochs"))
def train(net: SettlingNet, method: str, lr: float, key: jax.Array, xs: jax.Array,
          ts: jax.Array, epochs: int, test_xs: jax.Array | None = None,
          test_ts: jax.Array | None = None):
    """Train from fresh weights drawn from ``key``, one pattern at a time in a new random
    order every epoch, and score after every epoch (on ``test_xs``/``test_ts`` if given,
    else on the training patterns).

    Returns ``(params, EpochStats)`` with a leading ``epochs`` axis on the stats.
    """
    init_key, order_key = jax.random.split(key)
    params = init_params(net, init_key)
    state = None if method == "backprop" else init_learn_state(net, method, params)
    eval_xs, eval_ts = (xs, ts) if test_xs is None else (test_xs, test_ts)
    synapses = sum(a * b for a, b in zip(net.sizes[1:], net.sizes[:-1]))

    def trial(carry, pattern):
        params, state = carry
        x, t = pattern
        if method == "backprop":
            params, stats = backprop_trial(net, lr, params, x, t)
        else:
            params, state, stats = local_trial(net, method, lr, params, state, x, t)
        return (params, state), stats

    def epoch(carry, epoch_key):
        order = jax.random.permutation(epoch_key, xs.shape[0])
        carry, stats = jax.lax.scan(trial, carry, (xs[order], ts[order]))
        errors, sse, accuracy = score(net, method, carry[0], eval_xs, eval_ts)
        return carry, EpochStats(errors, sse, accuracy, jnp.sum(stats.dw_sum) / synapses,
                                 jnp.sum(stats.dw_abs) / synapses)

    (params, _), history = jax.lax.scan(epoch, (params, state),
                                        jax.random.split(order_key, epochs))
    return params, history


def epochs_to_criterion(errors: jax.Array) -> jax.Array:
    """1-based epoch after which no pattern was wrong for the first time; 0 if never."""
    hit = errors == 0
    return jnp.where(jnp.any(hit), jnp.argmax(hit) + 1, 0)


def random_associator(key: jax.Array, patterns: int = 25, units: int = 25,
                      active: int = 6) -> tuple[jax.Array, jax.Array]:
    """ra25: ``patterns`` random binary inputs on a 5x5 layer mapped to random binary
    outputs on another, ``active`` of ``units`` on in each (the emergent framework's
    standard test). Returns ``(inputs, targets)``, each ``(patterns, units)`` float32."""
    def pattern(k):
        on = jax.random.permutation(k, units)[:active]
        return jnp.zeros(units).at[on].set(1.0)

    in_key, out_key = jax.random.split(key)
    return (jax.vmap(pattern)(jax.random.split(in_key, patterns)),
            jax.vmap(pattern)(jax.random.split(out_key, patterns)))
