"""Plastic networks: random weights at birth, learning only by plasticity rules.

A lifetime runs any `plastix.network.Network` over one sequence. At every step t the
layers are computed in order, the readout's prediction is scored, and then every plastic
matrix learns:

    a_L(t)   = f_L( sum_c W_c(t) s_c(t) )           for every layer L, in order
    logits_t = the readout's drive (softmax readout) or activity   scored against targets_t
    W_c      <- normalise(W_c + dW_c)  for every plastic matrix, dW_c from its rule

The readout may learn from the teaching signal (the true next token or the step's
class), but only after its prediction for step t has been scored, like the plus phase of
CHL: the prediction at step t depends on inputs up to t and teaching signals before t.

Weights are drawn afresh for every lifetime, W ~ U(-a, a) with a = 0.1 as in
Najarro & Risi 2020 ("Meta-Learning through Hebbian Plasticity in Random
Networks", NeurIPS), or taken from learned initial weights (``evolve_init``).
What evolution (or gradient descent) optimises is the ``params`` pytree:
``{"coeffs": {matrix: rule coefficients}}`` plus ``"w0"`` when initial weights
are learned too and ``"neuromod"`` for a network with a neuromodulator.

Every function here takes the network as a `network.Network` or as a preset that builds
one (`PlasticRNN`, the main job's network).

**One lifetime, several storage layouts.** Which signal each matrix learns from is data
(the network's wiring), and each matrix is held in a `Synapses` store -- ``init / drive /
learn / weights`` -- that the lifetime picks by itself from the rule and the input
(`synapses_for`):

* ``dense``: the weights and the rule's state; ``rule.update`` every step. Any rule.
* ``outer_affine``: rules whose update is ``dW = (a*y + b) x^T + (c*y + d)`` (the ABCD
  family, ``rule.outer_affine``) update in one fused elementwise pass on coefficients
  whose learning rate was folded in once per lifetime.
* ``one_hot_columns``: an outer-affine matrix on a one-hot token input is never
  updated densely. Only column ``i = token`` sees the ``a`` and ``b`` terms, and the
  ``c`` and ``d`` terms add the same matrix to every column, so
  ``W(t) = G(t) + c * (S(t) 1^T) + t d`` with ``S(t) = sum_{s<t} post_s``, where ``G``
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

from plastix import checks, tasks
from plastix import network as network_lib
from plastix import rules as rules_lib

LAYERS = ("in", "rec", "out")
NORMALISATIONS = network_lib.NORMALISATIONS
READOUT_POSTS = ("auto", "teacher", "prediction")
MODULATIONS = ("none", "reward", "network")


@dataclasses.dataclass(frozen=True)
class PlasticRNN:
    """The network of the main job, as a preset of `network.Network` (`PlasticRNN.network`):
    one tanh hidden layer ``h`` fed a one-hot token through ``W_in`` and its own previous
    state through ``W_rec``, and a readout ``W_out``.

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

    def frozen(self) -> PlasticRNN:
        """The same network with every matrix fixed: plasticity off."""
        return dataclasses.replace(self, layer_rules=())

    def with_readout_rule(self, rule: str | rules_lib.Rule) -> PlasticRNN:
        """The same network with only the readout plastic, under ``rule`` (shared
        coefficients, its default wiring, drawn initial weights)."""
        return dataclasses.replace(self, layer_rules=(("out", rule),), granularity="shared",
                                   evolve_init=False, readout_post="auto", log_rates=False)

    @property
    def readout_matrices(self) -> tuple[str, ...]:
        return ("out",)

    def network(self) -> network_lib.Network:
        """The same network as a `network.Network`: layer ``h`` with connections "in"
        (from "x") and "rec" (from "h@prev"), and the readout layer "out" with connection
        "out" (from "h", plus an always-on unit with ``readout_bias``)."""
        return _preset_network(self)


@functools.cache
def _preset_network(net: PlasticRNN) -> network_lib.Network:
    rules = dict(net.layer_rules)
    hidden_mod = {"none": None, "reward": "reward", "network": "neuromod"}[net.modulation]

    def connection(name, source, **wiring):
        plastic = name in rules
        settles = plastic and name in net.normalise_layers
        return network_lib.Connection(
            name, source, rules.get(name), net.granularity,
            normalise=net.normalise if settles else "none",
            weight_noise=net.weight_noise if settles else 0.0,
            **(wiring if plastic else {}))

    readout_post = "teacher" if net.readout_sees_teacher() else "prediction"
    return network_lib.Network(
        layers=(
            network_lib.Layer("h", net.hidden_size, (
                connection("in", "x", mod=hidden_mod),
                connection("rec", "h@prev", mod=hidden_mod))),
            network_lib.Layer("out", net.vocab_size, (
                connection("out", "h", post=readout_post, mod="teacher",
                           bias=net.readout_bias),), activation="softmax"),
        ),
        input="tokens", input_size=net.vocab_size, init_scale=net.init_scale,
        evolve_init=net.evolve_init, log_rates=net.log_rates,
        neuromod="h" if net.modulation == "network" else None)


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {choices}")


def as_rule(rule: str | rules_lib.Rule) -> rules_lib.Rule:
    """A registry name built with its defaults, or a `rules.Rule` value as it is."""
    return rules_lib.get(rule) if isinstance(rule, str) else rule


def as_network(net) -> network_lib.Network:
    """``net`` as a `network.Network`: itself, or the network a preset builds."""
    if isinstance(net, network_lib.Network):
        return net
    if hasattr(net, "network"):
        return net.network()
    raise TypeError(f"expected a plastix.network.Network or a preset with .network(), got "
                    f"{type(net).__name__}")


class LifetimeStats(NamedTuple):
    """Sums over one lifetime's scored positions (divide by ``count``)."""

    nll: jax.Array
    correct: jax.Array
    count: jax.Array


class LifetimeDraws(NamedTuple):
    """The randomness of B lifetimes: initial weights ``{matrix: (B, n_post, n_pre)}``
    (None when they are learned) and one weight-noise key per sequence."""

    w0: dict | None
    noise_keys: jax.Array


# --- the learned parameters -------------------------------------------------------------


def init_params(net, key: jax.Array) -> dict:
    """The learned pytree: rule coefficients per plastic matrix (+ the neuromodulator's
    weights for a network with one, + initial weights with ``evolve_init``)."""
    network = as_network(net)
    shapes = network.weight_shapes()
    coeffs = {
        name: rules_lib.init_coeffs(network.rule(name), shapes[name],
                                    network.connection(name).granularity)
        for name in network.plastic_matrices
    }
    params = {"coeffs": evolved_coeffs(network, coeffs)}
    if network.neuromod is not None:
        # Zero: the neuromodulator starts silent, m = tanh(0) = 0, and learns to gate.
        size = network.layer(network.neuromod).size
        params["neuromod"] = {"v": jnp.zeros(size), "b": jnp.zeros(())}
    if network.evolve_init:
        params["w0"] = draw_weights(network, key)
    return params


@functools.lru_cache(maxsize=64)
def _param_shapes(network) -> dict:
    # Shapes only: eval_shape traces init_params without computing it.
    return jax.eval_shape(functools.partial(init_params, network), jax.random.key(0))


def check_params(net, params) -> None:
    """Raises ValueError unless ``params`` is an `init_params` pytree of this network:
    its keys, every plastic matrix's coefficients with its rule's names and a shape the
    rule takes for that matrix (any granularity, `rules.init_coeffs`), and every other
    entry of `init_params`' shape. The error names the entry, its shape and the one
    expected. Shapes only, so under ``jit`` it costs nothing after tracing."""
    network = as_network(net)
    want = _param_shapes(network)
    if not isinstance(params, dict) or set(params) != set(want):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"params must have keys {sorted(want)} (init_params of this "
                         f"network), got {got}")
    coeffs = params["coeffs"]
    if not isinstance(coeffs, dict) or set(coeffs) != set(want["coeffs"]):
        got = sorted(coeffs) if isinstance(coeffs, dict) else type(coeffs).__name__
        raise ValueError(f"params['coeffs'] must have the plastic matrices "
                         f"{sorted(want['coeffs'])}, got {got}")
    shapes = network.weight_shapes()
    for name in network.plastic_matrices:
        rule = network.rule(name)
        try:
            rules_lib.check_coeffs(rule.name, rule.default_coeffs, coeffs[name], shapes[name])
        except ValueError as e:
            raise ValueError(f"params['coeffs'][{name!r}]: {e}") from None
    rest = {k: v for k, v in params.items() if k != "coeffs"}
    wanted = {k: v for k, v in want.items() if k != "coeffs"}
    if jax.tree.structure(rest) != jax.tree.structure(wanted):
        raise ValueError(f"params hold {jax.tree.map(jnp.shape, rest)}, this network "
                         f"needs {jax.tree.map(lambda x: x.shape, wanted)}")
    for (where, expected), got in zip(jax.tree_util.tree_leaves_with_path(wanted),
                                      jax.tree.leaves(rest)):
        if jnp.shape(got) != expected.shape:
            raise ValueError(f"params{jax.tree_util.keystr(where)} has shape {jnp.shape(got)}, "
                             f"this network needs {expected.shape}")


def _map_rate(coeffs: dict, fn) -> dict:
    return {name: fn(value) if name == "eta" else value for name, value in coeffs.items()}


def evolved_coeffs(net, coeffs: dict) -> dict:
    """The inverse of `rule_coeffs`: rule coefficients ``{matrix: {name: value}}`` as they
    are learned (each ``eta`` as log(eta) when the network's ``log_rates`` is on)."""
    if not as_network(net).log_rates:
        return coeffs
    return {name: _map_rate(c, jnp.log) for name, c in coeffs.items()}


def rule_coeffs(net, params: dict) -> dict:
    """The coefficients the rules see: learned log-rates exponentiated."""
    if not as_network(net).log_rates:
        return params["coeffs"]
    return {name: _map_rate(c, jnp.exp) for name, c in params["coeffs"].items()}


def draw_weights(net, key: jax.Array) -> dict[str, jax.Array]:
    """W ~ U(-a, a) for every matrix, a its connection's ``init_scale`` or the network's
    (one key per matrix, in connection order)."""
    network = as_network(net)
    shapes = network.weight_shapes()
    keys = jax.random.split(key, len(shapes))
    out = {}
    for k, conn in zip(keys, network.connections):
        a = network.init_scale if conn.init_scale is None else conn.init_scale
        out[conn.name] = jax.random.uniform(k, shapes[conn.name], minval=-a, maxval=a)
    return out


def lifetime_draws(net, key: jax.Array, batch: int) -> LifetimeDraws:
    """Initial weights and noise keys of ``batch`` lifetimes, one key per sequence.

    Drawn once and shared by every member of a population (common random numbers), so
    they are computed outside the population's ``vmap``.
    """
    network = as_network(net)
    init_keys, noise_keys = jnp.moveaxis(
        jax.vmap(jax.random.split)(jax.random.split(key, batch)), 1, 0)
    w0 = (None if network.evolve_init
          else jax.vmap(functools.partial(draw_weights, network))(init_keys))
    return LifetimeDraws(w0, noise_keys)


def start_weights(net, params: dict, draws: LifetimeDraws) -> dict:
    """``(B, n_post, n_pre)`` initial weights: drawn, or the learned ``params["w0"]``."""
    if not as_network(net).evolve_init:
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


def _column(table, token, may_be_absent: bool):
    """Row ``token`` of each sequence's ``(B, n_pre, ...)`` table; zeros where the token
    is absent (``token == n_pre``: an input before the first step)."""
    if may_be_absent:
        return table.at[_rows(token), token].get(mode="fill", fill_value=0)
    return table[_rows(token), token]


def _term_row(term, token, may_be_absent: bool):
    """Row ``token`` of an ``(n_pre, n_post)`` coefficient table, zeros for an absent one."""
    if may_be_absent:
        return term.at[token].get(mode="fill", fill_value=0)
    return term[token]


def fixed_columns(may_be_absent: bool = False) -> Synapses:
    """A matrix without a rule under a one-hot input: ``W x`` is a gather of one column.

    Stored transposed, ``(B, n_pre, n_post)``, so the column is a contiguous row.
    ``may_be_absent``: the token may be ``n_pre`` (no input: an input from before the
    first step), whose column is zero.
    """
    return Synapses("fixed_columns", lambda w0: jnp.swapaxes(w0, 1, 2),
                    lambda g, token, t: _column(g, token, may_be_absent), _no_learning,
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


def one_hot_columns(terms: rules_lib.OuterAffine, shape: tuple[int, int],
                    may_be_absent: bool = False) -> Synapses:
    """An outer-affine rule on a one-hot pre: O(n_post) per step (module docstring).

    ``may_be_absent``: the token may be ``n_pre`` (no input), which reads and writes no
    column (the ``c`` and ``d`` terms, which change every column, still apply).
    """
    # Transposed to (n_pre, n_post) so that a token selects a contiguous row.
    terms_t = rules_lib.OuterAffine(
        *(None if x is None else jnp.broadcast_to(x, shape).T for x in terms))

    def init(w0):
        return InputColumns(jnp.swapaxes(w0, 1, 2), jnp.zeros(w0.shape[:2], w0.dtype))

    def row(term, token):
        return None if term is None else _term_row(term, token, may_be_absent)

    def drive(cols, token, t):
        out = _column(cols.g, token, may_be_absent)
        if terms_t.c is not None:
            out = out + row(terms_t.c, token) * cols.s
        if terms_t.d is not None:
            out = out + t * row(terms_t.d, token)
        return out

    def learn(cols, token, post, mod, t, keys):
        column = _affine(row(terms_t.a, token), post, row(terms_t.b, token))
        g = cols.g if column is None else cols.g.at[_rows(token), token].add(
            column, mode="drop" if may_be_absent else None)
        return InputColumns(g, cols.s + post if terms_t.c is not None else cols.s)

    def weights(cols, t):
        w = jnp.swapaxes(cols.g, 1, 2)
        if terms.c is not None:
            w = w + terms.c * cols.s[:, :, None]
        if terms.d is not None:
            w = w + t * terms.d
        return w

    return Synapses("one_hot_columns", init, drive, learn, weights, reads_token=True)


def _reads_a_token(network: network_lib.Network, conn: network_lib.Connection) -> bool:
    """Whether the matrix's pre is a one-hot token (so a store may read its column)."""
    return (network.input == "tokens" and not conn.bias
            and (conn.source == "x" or network_lib.input_lag(conn.source) > 0))


def synapses_for(net, name: str, coeffs: dict | None, dense: bool = False) -> Synapses:
    """The cheapest exact storage of one matrix for its rule, input and settings;
    ``dense=True`` the plain one (weights, ``rule.update``) the others are tested against."""
    network = as_network(net)
    conn = network.connection(name)
    one_hot_pre = _reads_a_token(network, conn) and not dense
    may_be_absent = conn.source != "x"  # an input k steps back is absent at first
    if not conn.plastic:
        return fixed_columns(may_be_absent) if one_hot_pre else fixed_synapses()
    rule = conn.learning_rule()
    noise, normalise = conn.weight_noise, conn.normalise
    if dense or rule.outer_affine is None or rule.effective_weights is not None:
        return dense_synapses(rule, coeffs, noise, normalise)
    terms = rule.outer_affine(coeffs)
    if one_hot_pre and noise == 0 and normalise == "none":
        return one_hot_columns(terms, network.weight_shapes()[name], may_be_absent)
    return outer_affine_synapses(terms, noise, normalise)


def layer_synapses(net, params: dict, dense: bool = False) -> dict[str, Synapses]:
    """Every matrix's store; ``dense=True`` forces ``rule.update`` on every plastic one
    (the reference the fused layouts are tested against)."""
    network = as_network(net)
    coeffs = rule_coeffs(network, params)
    return {name: synapses_for(network, name, coeffs.get(name), dense)
            for name in network.matrices}


# --- the lifetime -----------------------------------------------------------------------


def teaching_signal(inputs, targets, mask, next_input_teaches: bool = True):
    """Per-step teacher and whether the rules reading it may learn from it.

    The teacher at step t is the scored target where there is one, else (for a token
    sequence, ``next_input_teaches``) the next input token: the sequence itself teaches
    next-token prediction. The last unscored step has no next token and so teaches
    nothing; neither does an unscored step of a vector sequence. Works on ``(T,)`` arrays
    or ``(B, T)`` with time last.
    """
    scored = mask > 0
    if not next_input_teaches:
        return targets, scored.astype(jnp.float32)
    next_inputs = jnp.concatenate([inputs[..., 1:], inputs[..., -1:]], axis=-1)
    teacher = jnp.where(scored, targets, next_inputs)
    length = inputs.shape[-1]
    has_next = jnp.arange(length) < length - 1
    return teacher, (scored | has_next).astype(jnp.float32)


class Carry(NamedTuple):
    """The state of B lifetimes between steps."""

    stores: dict          # {matrix: its store}
    activity: dict        # {layer: (B, size)} for the layers read one step back
    nll_baseline: jax.Array  # (B,): the reward's running mean of the NLL


class StepInputs(NamedTuple):
    """What the scan over time feeds each step, every field ``(T, B, ...)``.

    ``x`` the input (token ids, or vectors ``(T, B, D)``), ``target`` the scored token or
    class, ``teacher`` / ``teach_on`` the teaching signal (`teaching_signal`), ``lagged``
    ``{k: the input k steps back}`` (a token id ``V``, or zeros, before the first step).
    """

    t: jax.Array
    x: jax.Array
    target: jax.Array
    teacher: jax.Array
    teach_on: jax.Array
    lagged: dict


def activate(activation: str, drive: jax.Array) -> jax.Array:
    """A layer's activity from its drive ``(B, n)`` (`network.Layer`'s activations)."""
    k = network_lib.kwta_k(activation)
    if k is not None:
        # The k largest drives win: a binary code with k active units (ties aside).
        threshold = jax.lax.top_k(drive, k)[0][:, -1:]
        return (drive >= threshold).astype(drive.dtype)
    return {"tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid,
            "identity": lambda a: a, "softmax": jax.nn.softmax}[activation](drive)


def _step(network: network_lib.Network, stores_of: dict[str, Synapses], neuromod: dict | None,
          noise_keys, emit: str, carry: Carry, xs: StepInputs):
    """One time step of B lifetimes: predict, score, then let every plastic matrix learn."""
    t, stores = xs.t, carry.stores
    vocab = network.input_size if network.input == "tokens" else None
    inputs = {"x": xs.x, **{f"x@{k}": lagged for k, lagged in xs.lagged.items()}}

    def pre_of(conn):
        source = conn.source
        if source in inputs:
            if stores_of[conn.name].reads_token:
                return inputs[source]
            pre = inputs[source] if vocab is None else jax.nn.one_hot(inputs[source], vocab)
        elif source.endswith("@prev"):
            pre = carry.activity[source.removesuffix("@prev")]
        else:
            pre = signals[source]
        return jnp.concatenate([pre, jnp.ones_like(pre[:, :1])], 1) if conn.bias else pre

    signals, pres = {}, {}
    for layer in network.layers:
        drive = None
        for conn in layer.inputs:
            pres[conn.name] = pre_of(conn)
            part = stores_of[conn.name].drive(stores[conn.name], pres[conn.name], t)
            drive = part if drive is None else drive + part
        if layer is network.readout:
            logits = drive if layer.activation == "softmax" else activate(layer.activation,
                                                                          drive)
        else:
            signals[layer.name] = activate(layer.activation, drive)
    log_probs = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_probs, xs.target[:, None], axis=1)[:, 0]
    signals.update(
        prediction=jnp.exp(log_probs),
        teacher=jax.nn.one_hot(xs.teacher, network.output_size) * xs.teach_on[:, None],
        reward=-(nll - carry.nll_baseline))
    signals[network.readout.name] = (signals["prediction"]
                                     if network.readout.activation == "softmax" else logits)
    if neuromod is not None:
        signals["neuromod"] = jnp.tanh(signals[network.neuromod] @ neuromod["v"]
                                       + neuromod["b"])

    new_stores = dict(stores)
    for index, conn in enumerate(network.connections):
        if not conn.plastic:
            continue
        post, mod = network.post_signal(conn), network.mod_signal(conn)
        keys = None
        if conn.weight_noise > 0:
            keys = jax.vmap(lambda k: jax.random.split(
                jax.random.fold_in(k, t), len(network.connections))[index])(noise_keys)
        new_stores[conn.name] = stores_of[conn.name].learn(
            stores[conn.name], pres[conn.name], signals[post],
            None if mod is None else signals[mod], t, keys)

    # The reward's baseline, a running mean of the NLL: b_t = 0.9 b_{t-1} + 0.1 NLL_t.
    baseline = 0.9 * carry.nll_baseline + 0.1 * nll
    activity = {name: signals[name] for name in carry.activity}
    if emit == "logits":
        out = logits
    else:
        out = (nll, (jnp.argmax(logits, axis=1) == xs.target).astype(jnp.float32))
    return Carry(new_stores, activity, baseline), out


def check_inputs(net, inputs, targets) -> None:
    """Raises ValueError unless ``inputs`` and ``targets`` fit the network: ``(B, T)`` token
    ids below its vocabulary (or ``(B, T, D)`` vectors of its input size) and ``(B, T)``
    targets below its readout size (a larger id is a zero one-hot row and a NaN loss, not
    an error).

    The values are checked only where they are known (outside ``jit``); shapes always.
    """
    network = as_network(net)
    vector = network.input == "vector"
    if vector and (jnp.ndim(inputs) != 3 or jnp.shape(inputs)[-1] != network.input_size):
        raise ValueError(f"inputs must be (batch, time, {network.input_size}) vectors for "
                         f"the network's vector input, got shape {jnp.shape(inputs)}")
    checked = [("targets", targets, network.output_size)]
    if not vector:
        checked.insert(0, ("inputs", inputs, network.input_size))
    for name, tokens, size in checked:
        if jnp.ndim(tokens) != 2:
            raise ValueError(f"{name} must be (batch, time) token ids, got shape "
                             f"{jnp.shape(tokens)}")
        if isinstance(tokens, jax.core.Tracer) or tokens.size == 0:
            continue
        # On the host: under a trace, any jax op, even on a known array, gives a tracer.
        values = np.asarray(tokens)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= size:
            what = "vocabulary" if name == "inputs" else "readout"
            raise ValueError(f"{name} hold token ids {low}..{high}, outside the network's "
                             f"{what} 0..{size - 1}: build the network with the task's sizes")
    if jnp.shape(inputs)[:2] != jnp.shape(targets):
        raise ValueError(f"inputs {jnp.shape(inputs)} and targets {jnp.shape(targets)} "
                         f"differ in (batch, time)")


def check_task(net, task) -> None:
    """Raises ValueError unless the network's input and readout fit ``task``'s sizes."""
    network = as_network(net)
    task_kind = "tokens" if task.input_size is None else "vector"
    if task_kind != network.input:
        raise ValueError(f"task {task.name!r} feeds {task_kind}, but the network's input is "
                         f"{network.input}")
    if task_kind == "tokens" and task.vocab_size != network.input_size:
        raise ValueError(f"task {task.name!r} has vocabulary {task.vocab_size} but the "
                         f"network expects {network.input_size}")
    if task_kind == "vector" and task.input_size != network.input_size:
        raise ValueError(f"task {task.name!r} feeds vectors of {task.input_size} but the "
                         f"network expects {network.input_size}")
    if task.vocab_size != network.output_size:
        raise ValueError(f"task {task.name!r} has {task.vocab_size} targets but the network's "
                         f"readout has {network.output_size} units")


def _lagged(inputs, k: int, absent):
    """The ``(B, T, ...)`` inputs ``k`` steps back: ``absent`` before the first step."""
    pad = jnp.full((inputs.shape[0], min(k, inputs.shape[1])) + inputs.shape[2:], absent,
                   inputs.dtype)
    return jnp.concatenate([pad, inputs[:, :max(inputs.shape[1] - k, 0)]], axis=1)


def lifetime_start(net, params: dict, draws: LifetimeDraws, inputs, targets,
                   mask, dense: bool = False) -> tuple[Carry, StepInputs]:
    """``(carry, xs)``: the state of B lifetimes at birth and the per-step inputs of the
    scan over time (`StepInputs`, time first).

    With `lifetime_step` this is the lifetime as a ``lax.scan``, for callers that cut it
    into windows (`run_lifetimes` scans it whole).
    """
    network = as_network(net)
    check_inputs(network, inputs, targets)
    network.check_sizes()
    layers = layer_synapses(network, params, dense)
    w0 = start_weights(network, params, draws)
    batch, length = inputs.shape[:2]
    activity = {name: jnp.zeros((batch, network.layer(name).size))
                for name in network.recurrent_layers()}
    carry = Carry({name: layers[name].init(w0[name]) for name in network.matrices},
                  activity, jnp.zeros(batch))
    vector = network.input == "vector"
    teacher, teach_on = teaching_signal(inputs if not vector else targets, targets, mask,
                                        next_input_teaches=not vector)
    absent = 0.0 if vector else network.input_size  # a zero vector; a token without a column
    time_first = lambda x: jnp.moveaxis(x, 1, 0)
    lagged = {k: time_first(_lagged(inputs, k, absent)) for k in network.lags()}
    return carry, StepInputs(jnp.arange(length), time_first(inputs), targets.T, teacher.T,
                             teach_on.T, lagged)


def lifetime_step(net, params: dict, draws: LifetimeDraws, emit: str = "stats",
                  dense: bool = False) -> Callable:
    """``step(carry, xs_t) -> (carry, out_t)``: one time step of B lifetimes (see
    `run_lifetimes` for ``emit`` and ``dense``)."""
    network = as_network(net)
    return functools.partial(_step, network, layer_synapses(network, params, dense),
                             params.get("neuromod"), draws.noise_keys, emit)


def run_lifetimes(net, params: dict, draws: LifetimeDraws, inputs, targets, mask,
                  emit: str = "stats", dense: bool = False):
    """B lifetimes, one per sequence, in one ``lax.scan`` over time.

    Args:
      net: the network (a `network.Network` or a preset such as `PlasticRNN`).
      params: ``init_params``-shaped pytree (one member).
      draws: `LifetimeDraws` of the B lifetimes (`lifetime_draws`).
      inputs, targets, mask: ``(B, T)`` arrays (inputs ``(B, T, D)`` for a vector input;
        see ``plastix.tasks``).
      emit: "stats" for per-step ``(nll, correct)``, each ``(B, T)``; "logits" for
        ``(B, T, V)`` logits.
      dense: update every plastic matrix through ``rule.update`` (the reference layout).

    Returns:
      ``(outputs, (w_start, w_end))``; ``outputs[:, t]`` is the prediction made before
      any teaching signal of step t was seen; weights are ``{matrix: (B, n_post, n_pre)}``.
    """
    network = as_network(net)
    layers = layer_synapses(network, params, dense)
    carry, xs = lifetime_start(network, params, draws, inputs, targets, mask, dense)
    step = lifetime_step(network, params, draws, emit, dense)
    # Only the last step can lack a teacher (every earlier step of a token sequence has a
    # next token), so the scan learns unconditionally and the last update of the matrices
    # that read the teacher is kept or dropped per sequence afterwards, instead of gating
    # every step's update.
    before_last, outputs = jax.lax.scan(step, carry, jax.tree.map(lambda x: x[:-1], xs))
    final, last = step(before_last, jax.tree.map(lambda x: x[-1], xs))
    keep = xs.teach_on[-1] > 0  # (B,): whether the last step has a teacher
    for name in network.teacher_matrices():
        final.stores[name] = jax.tree.map(
            lambda new, old: jnp.where(keep.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
            final.stores[name], before_last.stores[name])
    outputs = jax.tree.map(lambda seq, x: jnp.moveaxis(jnp.concatenate([seq, x[None]]), 0, 1),
                           outputs, last)
    length = inputs.shape[1]
    w_end = {name: layers[name].weights(final.stores[name], length) for name in network.matrices}
    w0 = start_weights(network, params, draws)
    return outputs, (w0, w_end)


def lifetime_stats(net, params: dict, draws: LifetimeDraws, inputs, targets,
                   mask) -> LifetimeStats:
    """`LifetimeStats` summed over B lifetimes' scored positions."""
    (nll, correct), _ = run_lifetimes(net, params, draws, inputs, targets, mask)
    return LifetimeStats(jnp.sum(nll * mask), jnp.sum(correct * mask), jnp.sum(mask))


def mean_scores(stats: LifetimeStats) -> tuple[jax.Array, jax.Array]:
    """Mean NLL (nats per scored token) and accuracy of summed `LifetimeStats`."""
    count = jnp.maximum(stats.count, 1.0)
    return stats.nll / count, stats.correct / count


def lifetime_logits(net, params: dict, key: jax.Array, inputs, targets, mask):
    """One lifetime over one ``(T,)`` sequence (``(T, D)`` for a vector input):
    ``(logits (T, V), (w_start, w_end))``.

    ``key`` draws the lifetime's initial weights (unless learned) and weight noise, as
    `evaluate` does for a batch of one sequence.
    """
    draws = lifetime_draws(net, key, 1)
    logits, (w_start, w_end) = run_lifetimes(
        net, params, draws, inputs[None], targets[None], mask[None], emit="logits")
    first = lambda tree: jax.tree.map(lambda x: x[0], tree)
    return logits[0], (first(w_start), first(w_end))


def lifetime(net, params: dict, key: jax.Array, inputs, targets, mask):
    """``LifetimeStats`` of one lifetime (arguments as for ``lifetime_logits``)."""
    return lifetime_stats(net, params, lifetime_draws(net, key, 1), inputs[None], targets[None],
                          mask[None])


def evaluate(net, params: dict, key: jax.Array, inputs, targets, mask):
    """Mean NLL (nats per scored token) and accuracy over a batch of lifetimes.

    Every sequence gets its own lifetime key, so its own random initial weights.
    Non-finite NLL (divergent plastic weights) is passed through for the
    caller to contain. ``params`` must be this network's (`check_params`) and ``mask``
    must score something and weigh nothing negatively (`tasks.check_mask`).
    """
    check_params(net, params)
    tasks.check_mask(mask, targets)
    draws = lifetime_draws(net, key, inputs.shape[0])
    return mean_scores(lifetime_stats(net, params, draws, inputs, targets, mask))


def synapse_updates_per_lifetime(net, length: int) -> int:
    """Plastic synapses times update steps of one lifetime of ``length`` steps: the unit of
    the throughput figures (synapse updates per second)."""
    network = as_network(net)
    shapes = network.weight_shapes()
    return length * sum(shapes[name][0] * shapes[name][1] for name in network.plastic_matrices)
