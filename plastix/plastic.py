"""Plastic recurrent networks: random weights at birth, learning only by plasticity rules.

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

**One lifetime, several storage layouts.** Which signal each matrix learns from is
data (`Wiring`: the names of its pre, post and mod signals), and each matrix is held
in a `Synapses` store -- ``init / drive / learn / weights`` -- that the lifetime picks
by itself from the rule and the input (`synapses_for`):

* ``dense``: the weights and the rule's state; ``rule.update`` every step. Any rule.
* ``outer_affine``: rules whose update is ``dW = (a*y + b) x^T + (c*y + d)`` (the ABCD
  family, ``rule.outer_affine``) update in one fused elementwise pass on coefficients
  whose learning rate was folded in once per lifetime.
* ``one_hot_columns``: an outer-affine input matrix under a one-hot input is never
  updated densely. Only column ``i = token`` sees the ``a`` and ``b`` terms, and the
  ``c`` and ``d`` terms add the same matrix to every column, so
  ``W_in(t) = G(t) + c * (S(t) 1^T) + t d`` with ``S(t) = sum_{s<t} h_s``, where ``G``
  changes in one column per step: each step costs O(N) instead of O(N V).
* ``fixed`` / ``fixed_columns``: matrices without a rule (a one-hot input reads a column).

Every store is batched over the B sequences of a member, laid out ``(B, n_post, n_pre)``
so the matrix-vector products are batched dots on the contiguous pre axis.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from plastix import checks
from plastix import rules as rules_lib

LAYERS = ("in", "rec", "out")
NORMALISATIONS = ("none", "maxabs", "l2")
READOUT_POSTS = ("auto", "teacher", "prediction")
MODULATIONS = ("none", "reward", "network")


@dataclasses.dataclass(frozen=True)
class PlasticRNN:
    """Static configuration of a plastic RNN (everything that changes shapes or code).

    Attributes:
      vocab_size: one-hot input and readout size V.
      hidden_size: recurrent units N.
      layer_rules: ``(layer, rule)`` pairs; layers not listed stay fixed. Layers are
        "in" (N x V), "rec" (N x N), "out" (V x N). A rule is a ``plastix.rules``
        registry name (e.g. ``"ABCD_lr"``, ``"multilinear_mod"``) or a `rules.Rule`
        value, registered or not.
      granularity: "shared", "post" or "synapse" coefficients.
      init_scale: initial weights are U(-init_scale, init_scale).
      evolve_init: evolve initial weights too instead of drawing them per lifetime.
      normalise: after each update, "maxabs" divides each plastic matrix by its
        largest |w| (Najarro & Risi 2020); "l2" scales each row to unit norm.
      weight_noise: std of Gaussian noise added to plastic weights every step.
      normalise_layers: the plastic layers that ``normalise`` and ``weight_noise``
        act on (all three by default; ``("in", "rec")`` keeps the readout free while the
        hidden layers are normalised, as in a reward-modulated Hebbian RNN).
      readout_post: what the readout rule sees as its post activity: the
        teacher's one-hot ("teacher"), the softmax prediction ("prediction"),
        or "auto" (prediction for rules that read a target, teacher otherwise).
        The readout's ``mod`` is always the teacher's one-hot.
      modulation: modulatory signal of the hidden layers: "none"; "reward",
        r_t = -(NLL_t - running mean of NLL), the third factor of the
        reward-modulated Hebbian RNN; or "network", a neuromodulator the network
        computes from its own state, m_t = tanh(v . h_t + b) with v and b learned
        (``params["neuromod"]``; Miconi et al. 2019, "Backpropamine", ICLR).
      readout_bias: give the readout an always-on presynaptic unit (W_out is
        V x (N+1)); its synapses follow the readout rule like any other, which
        lets a rule learn token frequencies within a lifetime.
      log_rates: the evolved parameter of every rule's learning rate ``eta`` is
        log(eta). Useful rates span orders of magnitude (0.01 to 100 here), which
        an isotropic search distribution crosses far faster in log space.
    """

    vocab_size: int = checks.field(dataclasses.MISSING, checks.integer(at_least=2))
    hidden_size: int = checks.field(32, checks.SIZE)
    layer_rules: tuple[tuple[str, str | rules_lib.Rule], ...] = (("out", "ABCD_lr"),)
    granularity: str = "shared"
    init_scale: float = checks.field(0.1, checks.NONNEGATIVE)
    evolve_init: bool = False
    normalise: str = "none"
    weight_noise: float = checks.field(0.0, checks.NONNEGATIVE)
    normalise_layers: tuple[str, ...] = LAYERS
    readout_post: str = "auto"
    modulation: str = "none"
    readout_bias: bool = False
    log_rates: bool = False

    def __post_init__(self):
        checks.validate(self, prefix="PlasticRNN ")
        for layer, rule in self.layer_rules:
            if layer not in LAYERS:
                raise ValueError(f"unknown layer {layer!r}; layers are {LAYERS}")
            as_rule(rule)  # raises on an unknown rule name
        # Hashable however given (a list from a command line or config.json).
        object.__setattr__(self, "normalise_layers", tuple(self.normalise_layers))
        unknown = set(self.normalise_layers) - set(LAYERS)
        if unknown:
            raise ValueError(f"normalise_layers: unknown layer(s) {sorted(unknown)}; layers "
                             f"are {LAYERS}")
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
        return as_rule(dict(self.layer_rules)[layer])

    def rule_names(self) -> dict[str, str]:
        """``{layer: rule name}``, e.g. for logs and ``config.json``."""
        return {layer: self.rule(layer).name for layer in self.plastic_layers}

    def readout_sees_teacher(self) -> bool:
        if self.readout_post == "auto":
            return "out" not in self.plastic_layers or not self.rule("out").reads_target
        return self.readout_post == "teacher"

    def wiring(self) -> dict[str, Wiring]:
        """Which signals every matrix learns from (see `Wiring`)."""
        hidden_mod = {"none": None, "reward": "reward", "network": "neuromod"}[self.modulation]
        readout_post = "teacher" if self.readout_sees_teacher() else "prediction"
        return {
            "in": Wiring("x", "h", hidden_mod),
            "rec": Wiring("h_prev", "h", hidden_mod),
            "out": Wiring("readout_in", readout_post, "teacher"),
        }


class Wiring(NamedTuple):
    """The names of the step signals a matrix's rule reads as pre, post and mod.

    Signals of step t (each batched over the B sequences): ``x`` the one-hot input,
    ``h_prev`` / ``h`` the hidden state before / after the step, ``readout_in`` the
    readout's input (``h``, plus the always-on unit with ``readout_bias``),
    ``prediction`` the readout's softmax, ``teacher`` the teaching signal's one-hot
    (zero where nothing teaches), ``reward`` -(NLL_t - its running mean), ``neuromod``
    the network's own neuromodulator tanh(v . h + b).
    """

    pre: str
    post: str
    mod: str | None


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {choices}")


def as_rule(rule: str | rules_lib.Rule) -> rules_lib.Rule:
    """A registry name built with its defaults, or a `rules.Rule` value as it is."""
    return rules_lib.get(rule) if isinstance(rule, str) else rule


class LifetimeStats(NamedTuple):
    """Sums over one lifetime's scored positions (divide by ``count``)."""

    nll: jax.Array
    correct: jax.Array
    count: jax.Array


class LifetimeDraws(NamedTuple):
    """The randomness of B lifetimes: initial weights ``{layer: (B, n_post, n_pre)}``
    (None when they are evolved) and one weight-noise key per sequence."""

    w0: dict | None
    noise_keys: jax.Array


# --- the evolvable parameters ---------------------------------------------------------


def init_params(net: PlasticRNN, key: jax.Array) -> dict:
    """The evolvable pytree: rule coefficients per plastic layer (+ the neuromodulator's
    weights with ``modulation="network"``, + initial weights with ``evolve_init``)."""
    shapes = net.weight_shapes()
    coeffs = {
        layer: rules_lib.init_coeffs(net.rule(layer), shapes[layer], net.granularity)
        for layer in net.plastic_layers
    }
    params = {"coeffs": evolved_coeffs(net, coeffs)}
    if net.modulation == "network":
        # Zero: the neuromodulator starts silent, m = tanh(0) = 0, and learns to gate.
        params["neuromod"] = {"v": jnp.zeros(net.hidden_size), "b": jnp.zeros(())}
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


def lifetime_draws(net: PlasticRNN, key: jax.Array, batch: int) -> LifetimeDraws:
    """Initial weights and noise keys of ``batch`` lifetimes, one key per sequence.

    Drawn once and shared by every member of a population (common random numbers), so
    they are computed outside the population's ``vmap``.
    """
    init_keys, noise_keys = jnp.moveaxis(
        jax.vmap(jax.random.split)(jax.random.split(key, batch)), 1, 0)
    w0 = None if net.evolve_init else jax.vmap(functools.partial(draw_weights, net))(init_keys)
    return LifetimeDraws(w0, noise_keys)


def start_weights(net: PlasticRNN, params: dict, draws: LifetimeDraws) -> dict:
    """``(B, n_post, n_pre)`` initial weights: drawn, or the evolved ``params["w0"]``."""
    if not net.evolve_init:
        return draws.w0
    batch = draws.noise_keys.shape[0]
    return {k: jnp.broadcast_to(w, (batch,) + w.shape) for k, w in params["w0"].items()}


# --- storage layouts of one plastic matrix --------------------------------------------


class Synapses(NamedTuple):
    """One matrix during B lifetimes, stored however is cheapest (pure functions).

    init(w0) -> store                          w0: (B, n_post, n_pre)
    drive(store, pre, t) -> (B, n_post)        W(t) pre, W(t) after t updates
    learn(store, pre, post, mod, t, keys) -> store     W(t+1) = settle(W(t) + dW)
    weights(store, t) -> (B, n_post, n_pre)    W(t), dense

    ``reads_token``: ``pre`` is the one-hot input's token ``(B,)``, not its one-hot.
    ``keys`` are per-sequence weight-noise keys ``(B,)`` (None without noise).
    """

    name: str
    init: Callable
    drive: Callable
    learn: Callable
    weights: Callable
    reads_token: bool = False


def _matvec(w, pre):
    return jnp.einsum("bij,bj->bi", w, pre)


def _rows(token):
    return jnp.arange(token.shape[0])


def _no_learning(store, *args):
    del args
    return store


def fixed_synapses() -> Synapses:
    """A matrix without a rule."""
    return Synapses("fixed", lambda w0: w0, lambda w, pre, t: _matvec(w, pre), _no_learning,
                    lambda w, t: w)


def fixed_columns() -> Synapses:
    """A matrix without a rule under a one-hot input: ``W x`` is a gather of one column.

    Stored transposed, ``(B, n_pre, n_post)``, so the column is a contiguous row.
    """
    return Synapses("fixed_columns", lambda w0: jnp.swapaxes(w0, 1, 2),
                    lambda g, token, t: g[_rows(token), token], _no_learning,
                    lambda g, t: jnp.swapaxes(g, 1, 2), reads_token=True)


def normalise_weights(w: jax.Array, how: str) -> jax.Array:
    """Keep plastic weights bounded: divide each ``(n_post, n_pre)`` matrix by its max
    |w|, or scale its rows to unit L2 norm (leading axes are batch axes)."""
    if how == "maxabs":
        return w / jnp.maximum(jnp.max(jnp.abs(w), axis=(-2, -1), keepdims=True), 1e-12)
    if how == "l2":
        return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-12)
    return w


def _settle(w, noise: float, normalise: str, keys):
    """``normalise(w + noise * N(0, 1))``, a noise key per sequence."""
    if noise > 0:
        w = w + noise * jax.vmap(lambda k, x: jax.random.normal(k, x.shape, x.dtype))(keys, w)
    return normalise_weights(w, normalise)


def dense_synapses(rule: rules_lib.Rule, coeffs: dict, noise: float = 0.0,
                   normalise: str = "none") -> Synapses:
    """Any rule: the weights and the rule's state, ``rule.update`` every step.

    The forward pass uses ``rule.effective_weights(w, state)`` when the rule has one
    (e.g. a Hebbian mask's ``w * mask``).
    """
    # mod may be None (an empty pytree), so one vmap serves modulated and plain rules.
    update = jax.vmap(rule.update, in_axes=(None, 0, 0, 0, 0, 0))

    def init(w0):
        return w0, jax.vmap(rule.init)(w0)

    def drive(store, pre, t):
        w, state = store
        if rule.effective_weights is not None:
            w = jax.vmap(rule.effective_weights)(w, state)
        return _matvec(w, pre)

    def learn(store, pre, post, mod, t, keys):
        w, state = store
        dw, state = update(coeffs, state, w, pre, post, mod)
        return _settle(w + dw, noise, normalise, keys), state

    return Synapses("dense", init, drive, learn, lambda store, t: store[0])


def _affine(scale, y, shift):
    """``scale * y + shift`` where either term may be absent (None)."""
    out = None if scale is None else scale * y
    if shift is None:
        return out
    return shift if out is None else out + shift


def outer_affine_synapses(terms: rules_lib.OuterAffine, noise: float = 0.0,
                          normalise: str = "none") -> Synapses:
    """``W += (a*y + b) x^T + (c*y + d)`` in one fused elementwise pass per step.

    ``terms`` (learning rate folded in once per lifetime) broadcast against
    ``(n_post, n_pre)``; absent terms are skipped at trace time.
    """

    def learn(w, pre, post, mod, t, keys):
        y, x = post[:, :, None], pre[:, None, :]
        slope, offset = _affine(terms.a, y, terms.b), _affine(terms.c, y, terms.d)
        # Grouped as (a y + b) x + (c y + d): three multiply-adds per synapse and one
        # read-modify-write of w, which XLA emits as a single elementwise loop.
        if slope is not None:
            w = w + slope * x
        if offset is not None:
            w = w + offset
        return _settle(w, noise, normalise, keys)

    return Synapses("outer_affine", lambda w0: w0, lambda w, pre, t: _matvec(w, pre), learn,
                    lambda w, t: w)


class InputColumns(NamedTuple):
    """A one-hot input matrix kept lazily: ``W(t)[:, j] = g[j] + c[:, j] * s + t d[:, j]``.

    Attributes:
      g: ``(B, n_pre, n_post)``, ``G`` transposed: row ``j`` is column ``j`` of ``G``.
      s: ``(B, n_post)``, ``S(t)``: the post activity summed over the steps so far.
    """

    g: jax.Array
    s: jax.Array


def one_hot_columns(terms: rules_lib.OuterAffine, shape: tuple[int, int]) -> Synapses:
    """An outer-affine rule on a one-hot pre: O(n_post) per step (module docstring)."""
    # Transposed to (n_pre, n_post) so that a token selects a contiguous row.
    terms_t = rules_lib.OuterAffine(
        *(None if x is None else jnp.broadcast_to(x, shape).T for x in terms))

    def init(w0):
        return InputColumns(jnp.swapaxes(w0, 1, 2), jnp.zeros(w0.shape[:2], w0.dtype))

    def drive(cols, token, t):
        out = cols.g[_rows(token), token]
        if terms_t.c is not None:
            out = out + terms_t.c[token] * cols.s
        if terms_t.d is not None:
            out = out + t * terms_t.d[token]
        return out

    def learn(cols, token, post, mod, t, keys):
        column = _affine(None if terms_t.a is None else terms_t.a[token], post,
                         None if terms_t.b is None else terms_t.b[token])
        g = cols.g if column is None else cols.g.at[_rows(token), token].add(column)
        return InputColumns(g, cols.s + post if terms_t.c is not None else cols.s)

    def weights(cols, t):
        w = jnp.swapaxes(cols.g, 1, 2)
        if terms.c is not None:
            w = w + terms.c * cols.s[:, :, None]
        if terms.d is not None:
            w = w + t * terms.d
        return w

    return Synapses("one_hot_columns", init, drive, learn, weights, reads_token=True)


def synapses_for(net: PlasticRNN, layer: str, coeffs: dict | None,
                 dense: bool = False) -> Synapses:
    """The cheapest exact storage of one matrix for this rule, input and settings;
    ``dense=True`` the plain one (weights, ``rule.update``) the others are tested against."""
    one_hot_pre = net.wiring()[layer].pre == "x" and not dense
    if layer not in net.plastic_layers:
        return fixed_columns() if one_hot_pre else fixed_synapses()
    rule = net.rule(layer)
    noise, normalise = net.weight_noise, net.normalise
    if layer not in net.normalise_layers:
        noise, normalise = 0.0, "none"
    if dense or rule.outer_affine is None or rule.effective_weights is not None:
        return dense_synapses(rule, coeffs, noise, normalise)
    terms = rule.outer_affine(coeffs)
    if one_hot_pre and noise == 0 and normalise == "none":
        return one_hot_columns(terms, net.weight_shapes()[layer])
    return outer_affine_synapses(terms, noise, normalise)


def layer_synapses(net: PlasticRNN, params: dict, dense: bool = False) -> dict[str, Synapses]:
    """Every matrix's store; ``dense=True`` forces ``rule.update`` on every plastic one
    (the reference the fused layouts are tested against)."""
    coeffs = rule_coeffs(net, params)
    return {layer: synapses_for(net, layer, coeffs.get(layer), dense) for layer in LAYERS}


# --- the lifetime -----------------------------------------------------------------------


def teaching_signal(inputs, targets, mask):
    """Per-step teacher token and whether the readout may learn from it.

    The teacher at step t is the scored target where there is one, else the
    next input token (the sequence itself teaches next-token prediction). The
    last unscored step has no next token and so teaches nothing. Works on ``(T,)``
    arrays or ``(B, T)`` with time last.
    """
    next_inputs = jnp.concatenate([inputs[..., 1:], inputs[..., -1:]], axis=-1)
    scored = mask > 0
    teacher = jnp.where(scored, targets, next_inputs)
    length = inputs.shape[-1]
    has_next = jnp.arange(length) < length - 1
    return teacher, (scored | has_next).astype(jnp.float32)


class Carry(NamedTuple):
    stores: dict
    h: jax.Array          # (B, N)
    nll_baseline: jax.Array  # (B,)


def _step(net: PlasticRNN, layers: dict[str, Synapses], neuromod: dict | None, noise_keys,
          emit: str, carry: Carry, xs):
    """One time step of B lifetimes: predict, score, then let every plastic matrix learn."""
    t, token, target, teacher_token, teach_on = xs
    stores = carry.stores
    signals = {"token": token, "x": jax.nn.one_hot(token, net.vocab_size), "h_prev": carry.h}

    def pre_of(layer, name):
        return signals["token"] if layers[layer].reads_token else signals[name]

    wiring = net.wiring()
    h = jnp.tanh(layers["in"].drive(stores["in"], pre_of("in", "x"), t)
                 + layers["rec"].drive(stores["rec"], carry.h, t))
    readout_in = jnp.concatenate([h, jnp.ones_like(h[:, :1])], 1) if net.readout_bias else h
    logits = layers["out"].drive(stores["out"], readout_in, t)
    log_probs = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_probs, target[:, None], axis=1)[:, 0]
    signals.update(
        h=h, readout_in=readout_in, prediction=jnp.exp(log_probs),
        teacher=jax.nn.one_hot(teacher_token, net.vocab_size) * teach_on[:, None],
        reward=-(nll - carry.nll_baseline))
    if neuromod is not None:
        signals["neuromod"] = jnp.tanh(h @ neuromod["v"] + neuromod["b"])

    new_stores = dict(stores)
    for index, layer in enumerate(LAYERS):
        if layer not in net.plastic_layers:
            continue
        pre_name, post_name, mod_name = wiring[layer]
        keys = None
        if net.weight_noise > 0 and layer in net.normalise_layers:
            keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, t), 3)[index])(
                noise_keys)
        new_stores[layer] = layers[layer].learn(
            stores[layer], pre_of(layer, pre_name), signals[post_name],
            None if mod_name is None else signals[mod_name], t, keys)

    baseline = 0.9 * carry.nll_baseline + 0.1 * nll
    if emit == "logits":
        out = logits
    else:
        out = (nll, (jnp.argmax(logits, axis=1) == target).astype(jnp.float32))
    return Carry(new_stores, h, baseline), out


def check_tokens(net: PlasticRNN, inputs, targets) -> None:
    """Raises ValueError unless ``inputs`` and ``targets`` are ``(B, T)`` token ids below
    ``net.vocab_size`` (a larger id is a zero one-hot row and a NaN loss, not an error).

    The values are checked only where they are known (outside ``jit``); shapes always.
    """
    for name, tokens in (("inputs", inputs), ("targets", targets)):
        if jnp.ndim(tokens) != 2:
            raise ValueError(f"{name} must be (batch, time) token ids, got shape "
                             f"{jnp.shape(tokens)}")
        if isinstance(tokens, jax.core.Tracer) or tokens.size == 0:
            continue
        # On the host: under a trace, any jax op, even on a known array, gives a tracer.
        values = np.asarray(tokens)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= net.vocab_size:
            raise ValueError(f"{name} hold token ids {low}..{high}, outside the network's "
                             f"vocabulary 0..{net.vocab_size - 1}: build the PlasticRNN with "
                             f"the task's vocab_size")


def lifetime_start(net: PlasticRNN, params: dict, draws: LifetimeDraws, inputs, targets,
                   mask, dense: bool = False) -> tuple[Carry, tuple]:
    """``(carry, xs)``: the state of B lifetimes at birth and the per-step inputs of the
    scan over time, ``(t, token, target, teacher token, teaching on)``, each ``(T, B)``.

    With `lifetime_step` this is the lifetime as a ``lax.scan``, for callers that cut it
    into windows (`run_lifetimes` scans it whole).
    """
    check_tokens(net, inputs, targets)
    layers = layer_synapses(net, params, dense)
    w0 = start_weights(net, params, draws)
    batch, length = inputs.shape
    carry = Carry({layer: layers[layer].init(w0[layer]) for layer in LAYERS},
                  jnp.zeros((batch, net.hidden_size)), jnp.zeros(batch))
    teacher, teach_on = teaching_signal(inputs, targets, mask)
    return carry, (jnp.arange(length), inputs.T, targets.T, teacher.T, teach_on.T)


def lifetime_step(net: PlasticRNN, params: dict, draws: LifetimeDraws, emit: str = "stats",
                  dense: bool = False) -> Callable:
    """``step(carry, xs_t) -> (carry, out_t)``: one time step of B lifetimes (see
    `run_lifetimes` for ``emit`` and ``dense``)."""
    return functools.partial(_step, net, layer_synapses(net, params, dense),
                             params.get("neuromod"), draws.noise_keys, emit)


def run_lifetimes(net: PlasticRNN, params: dict, draws: LifetimeDraws, inputs, targets, mask,
                  emit: str = "stats", dense: bool = False):
    """B lifetimes, one per sequence, in one ``lax.scan`` over time.

    Args:
      net: static configuration.
      params: ``init_params``-shaped pytree (one member).
      draws: `LifetimeDraws` of the B lifetimes (`lifetime_draws`).
      inputs, targets, mask: ``(B, T)`` arrays (see ``plastix.tasks``).
      emit: "stats" for per-step ``(nll, correct)``, each ``(B, T)``; "logits" for
        ``(B, T, V)`` logits.
      dense: update every plastic matrix through ``rule.update`` (the reference layout).

    Returns:
      ``(outputs, (w_start, w_end))``; ``outputs[:, t]`` is the prediction made before
      any teaching signal of step t was seen; weights are ``{layer: (B, n_post, n_pre)}``.
    """
    layers = layer_synapses(net, params, dense)
    carry, xs = lifetime_start(net, params, draws, inputs, targets, mask, dense)
    step = lifetime_step(net, params, draws, emit, dense)
    # Only the last step can lack a teacher (every earlier step has a next token), so
    # the scan learns unconditionally and the readout's last update is kept or dropped
    # per sequence afterwards, instead of gating every step's update.
    before_last, outputs = jax.lax.scan(step, carry, jax.tree.map(lambda x: x[:-1], xs))
    final, last = step(before_last, jax.tree.map(lambda x: x[-1], xs))
    if "out" in net.plastic_layers:
        *_, teach_on = xs  # (T, B): whether step t has a teacher
        keep = teach_on[-1] > 0
        final.stores["out"] = jax.tree.map(
            lambda new, old: jnp.where(keep.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
            final.stores["out"], before_last.stores["out"])
    outputs = jax.tree.map(lambda seq, x: jnp.moveaxis(jnp.concatenate([seq, x[None]]), 0, 1),
                           outputs, last)
    length = inputs.shape[1]
    w_end = {layer: layers[layer].weights(final.stores[layer], length) for layer in LAYERS}
    w0 = start_weights(net, params, draws)
    return outputs, (w0, w_end)


def lifetime_stats(net: PlasticRNN, params: dict, draws: LifetimeDraws, inputs, targets,
                   mask) -> LifetimeStats:
    """`LifetimeStats` summed over B lifetimes' scored positions."""
    (nll, correct), _ = run_lifetimes(net, params, draws, inputs, targets, mask)
    return LifetimeStats(jnp.sum(nll * mask), jnp.sum(correct * mask), jnp.sum(mask))


def mean_scores(stats: LifetimeStats) -> tuple[jax.Array, jax.Array]:
    """Mean NLL (nats per scored token) and accuracy of summed `LifetimeStats`."""
    count = jnp.maximum(stats.count, 1.0)
    return stats.nll / count, stats.correct / count


def lifetime_logits(net: PlasticRNN, params: dict, key: jax.Array, inputs, targets, mask):
    """One lifetime over one ``(T,)`` sequence: ``(logits (T, V), (w_start, w_end))``.

    ``key`` draws the lifetime's initial weights (unless evolved) and weight noise, as
    `evaluate` does for a batch of one sequence.
    """
    draws = lifetime_draws(net, key, 1)
    logits, (w_start, w_end) = run_lifetimes(
        net, params, draws, inputs[None], targets[None], mask[None], emit="logits")
    first = lambda tree: jax.tree.map(lambda x: x[0], tree)
    return logits[0], (first(w_start), first(w_end))


def lifetime(net: PlasticRNN, params: dict, key: jax.Array, inputs, targets, mask):
    """``LifetimeStats`` of one lifetime (arguments as for ``lifetime_logits``)."""
    return lifetime_stats(net, params, lifetime_draws(net, key, 1), inputs[None], targets[None],
                          mask[None])


def evaluate(net: PlasticRNN, params: dict, key: jax.Array, inputs, targets, mask):
    """Mean NLL (nats per scored token) and accuracy over a batch of lifetimes.

    Every sequence gets its own lifetime key, so its own random initial weights.
    Non-finite NLL (divergent plastic weights) is passed through for the
    caller to contain.
    """
    draws = lifetime_draws(net, key, inputs.shape[0])
    return mean_scores(lifetime_stats(net, params, draws, inputs, targets, mask))


def synapse_updates_per_lifetime(net: PlasticRNN, length: int) -> int:
    """Plastic synapses times update steps of one lifetime of ``length`` steps: the unit of
    the throughput figures (synapse updates per second)."""
    shapes = net.weight_shapes()
    return length * sum(shapes[layer][0] * shapes[layer][1] for layer in net.plastic_layers)
