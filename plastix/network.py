"""A plastic network as a value the user writes: layers, their inputs, and each matrix's rule.

A `Network` is an ordered tuple of `Layer`s. Each layer sums what its `Connection`s
deliver, one weight matrix each, and applies its activation:

    a_L(t) = f_L( sum_c W_c(t) s_c(t) )        W_c: (size of L, size of s_c)

where the source ``s_c`` of a connection is the network's input ``x`` (a one-hot token or a
vector), the input ``k`` steps back (``"x@k"``), a layer computed earlier in the same step
(``"h1"``), or any layer's activity of the previous step (``"h1@prev"``: recurrence). The
last layer is the readout: its logits are scored against the target of every step, its
activity is the prediction. Feed-forward or recurrent, of any depth and width, the network
is hashable and static under ``jit`` like a `plastix.rules.Rule`.

Every matrix is fixed or learns by its rule (`plastix.rules`) after each step's prediction
was scored, reading the signals its `Connection` names as pre, post and mod:

* pre: the source (plus an always-on unit with ``bias``);
* post: the layer's own activity, or the ``"teacher"`` (one-hot of the step's target),
  the ``"prediction"`` (the readout's softmax) or another layer's activity;
* mod: none, the ``"teacher"``, a ``"reward"`` r_t = -(NLL_t - its running mean) (the third
  factor of reward-modulated Hebbian learning), the network's own ``"neuromod"``
  m_t = tanh(v . a_L(t) + b) with v and b learned (Miconi et al. 2019, "Backpropamine",
  ICLR), or another layer's activity.

``"auto"`` wiring is what a layer of its kind learns from: a hidden layer's rule reads its
own activity as post and no mod; the readout's reads the teacher as mod and, as post, its
own prediction when the rule is error-driven (``rule.reads_target``: delta, CHL, ...) or the
clamped teacher otherwise (a Hebbian rule associates input and target).

Networks are written in Python or in a JSON / TOML file (`load`, `save`): the file is the
nested dict of the values' fields, exactly what a run's ``config.json`` records, with sizes
the task fixes (the input's and the readout's) left ``null`` to be filled by `sized`.

Presets: `plastix.plastic.PlasticRNN` (one tanh hidden layer on a one-hot token, with
recurrence: the network of the main job) and `plastix.najarro.feedforward` (Najarro &
Risi 2020's three-layer feed-forward networks).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from plastix import checks
from plastix import rules as rules_lib

INPUT_KINDS = ("tokens", "vector")
ACTIVATIONS = ("tanh", "relu", "sigmoid", "identity", "softmax", "kwta(<k>)")
NORMALISATIONS = ("none", "maxabs", "l2")
GRANULARITIES = ("shared", "post", "synapse")  # `plastix.rules.init_coeffs`
# Signals of every step besides the input and the layers' activities.
STEP_SIGNALS = ("teacher", "prediction", "reward", "neuromod")
# Signals one number per sequence (a mod that scales the whole update); the others are a
# vector with one entry per unit.
SCALAR_SIGNALS = ("reward", "neuromod")
_KWTA = re.compile(r"^kwta\((\d+)\)$")
_LAGGED_INPUT = re.compile(r"^x@(\d+)$")
_PREVIOUS = "@prev"


def _as_rule(rule: str | rules_lib.Rule) -> rules_lib.Rule:
    return rules_lib.get(rule) if isinstance(rule, str) else rule


@dataclasses.dataclass(frozen=True)
class Connection:
    """One weight matrix into a layer, ``(n_post, n_pre)`` = (the layer's size, its source's
    size + ``bias``), fixed or plastic.

    Attributes:
      name: the matrix's name: its key in ``params["coeffs"]``, in the weights a lifetime
        returns and in a run's config (unique in the network).
      source: what the matrix reads: ``"x"`` (the step's input), ``"x@k"`` (the input k >= 1
        steps back; nothing before the first step), a layer computed earlier in the step,
        or ``"<layer>@prev"`` (that layer's activity one step back; zero at the first).
      rule: a `plastix.rules` registry name (``"oja"``, ``"rls(alpha=10.0)"``,
        ``"modulated(hebb)"``) or a `rules.Rule` value; None keeps the matrix fixed.
      granularity: "shared", "post" (one value per post unit) or "synapse" coefficients.
      post: the signal the rule reads as post activity: "auto" (module docstring), "self"
        (the layer's activity), "teacher", "prediction" or a layer's name.
      mod: the rule's modulatory signal: "auto", None, "teacher", "reward", "neuromod" or a
        layer's name.
      bias: an always-on unit appended to the source, whose synapses learn like the others.
      normalise: after every update, "maxabs" divides the matrix by its largest |w|
        (Najarro & Risi 2020); "l2" scales each row to unit norm; "none".
      weight_noise: std of the Gaussian noise added to the weights at every update.
      init_scale: its weights start U(-a, a) every lifetime, a = this (None: the
        network's ``init_scale``).
    """

    name: str
    source: str
    rule: str | rules_lib.Rule | None = None
    granularity: str = "shared"
    post: str = "auto"
    mod: str | None = "auto"
    bias: bool = False
    normalise: str = "none"
    weight_noise: float = checks.field(0.0, checks.NONNEGATIVE)
    init_scale: float | None = checks.field(None, checks.number(at_least=0, optional=True))

    def __post_init__(self):
        checks.validate(self, prefix=f"connection {self.name!r} ")
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"connection name {self.name!r} must be an identifier (letters, "
                             f"digits, _)")
        if self.rule is not None:
            _as_rule(self.rule)  # an unknown name is refused here, by name
        checks.choice(f"connection {self.name!r} granularity", self.granularity, GRANULARITIES)
        checks.choice(f"connection {self.name!r} normalise", self.normalise, NORMALISATIONS)
        if self.mod == "none":
            object.__setattr__(self, "mod", None)
        if self.rule is None and (self.post not in ("auto", "self")
                                  or self.mod not in ("auto", None)):
            raise ValueError(f"connection {self.name!r} is fixed (no rule), so it reads no "
                             f"post or mod")

    @property
    def plastic(self) -> bool:
        return self.rule is not None

    def learning_rule(self) -> rules_lib.Rule:
        """The `rules.Rule` of a plastic connection."""
        if self.rule is None:
            raise ValueError(f"connection {self.name!r} is fixed: it has no rule")
        return _as_rule(self.rule)


@dataclasses.dataclass(frozen=True)
class Layer:
    """Units whose activity is ``activation(sum of their connections' drives)``.

    Attributes:
      name: the layer's name, which connections name as a source or signal.
      size: its units; None for the readout, whose size the task gives (`Network.sized`).
      inputs: its connections (at least one).
      activation: "tanh", "relu", "sigmoid", "identity", "softmax" or "kwta(k)" (the k
        units of largest drive are 1, the others 0: a sparse binary code). On the readout,
        "softmax" makes the drive itself the logits; any other activation's output is.
    """

    name: str
    size: int | None
    inputs: tuple[Connection, ...]
    activation: str = "tanh"

    def __post_init__(self):
        _check_name("layer", self.name)
        object.__setattr__(self, "inputs", tuple(self.inputs))
        if not self.inputs:
            raise ValueError(f"layer {self.name!r} has no inputs: give it a connection")
        if self.size is not None:
            checks.SIZE.check(f"layer {self.name!r} size", self.size)
        k = kwta_k(self.activation)
        if k is None:
            checks.choice(f"layer {self.name!r} activation", self.activation, ACTIVATIONS[:-1])
        elif self.size is not None and k > self.size:
            raise ValueError(f"layer {self.name!r}: kwta({k}) keeps more units than the "
                             f"layer's {self.size}")


def kwta_k(activation: str) -> int | None:
    """k of a "kwta(k)" activation (k >= 1); None for any other activation."""
    match = _KWTA.match(activation)
    if match is None:
        return None
    k = int(match.group(1))
    if k < 1:
        raise ValueError(f"activation {activation!r}: k must be >= 1")
    return k


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{kind} name {name!r} must be an identifier (letters, digits, _)")
    if name in ("x", "self", "auto", *STEP_SIGNALS):
        raise ValueError(f"{kind} name {name!r} is reserved for a signal")


@dataclasses.dataclass(frozen=True)
class Network:
    """A plastic network: its input, its layers in step order (the last is the readout)
    and what every lifetime starts from.

    Attributes:
      layers: the layers, computed in this order at every step.
      input: "tokens" (a token id, read as its one-hot) or "vector" (a float vector).
      input_size: the vocabulary V or the vector's length (None: the task's, `sized`).
      init_scale: weights start U(-a, a) afresh every lifetime, a = this (Najarro & Risi
        2020: 0.1), unless a connection says otherwise.
      evolve_init: the initial weights are learned (``params["w0"]``) instead of drawn.
      log_rates: every rule's learning rate ``eta`` is learned as log(eta): useful rates
        span orders of magnitude, which an isotropic search crosses faster in log space.
      neuromod: the layer whose activity drives the network's neuromodulator (the
        "neuromod" signal; ``params["neuromod"]``), or None.
    """

    layers: tuple[Layer, ...]
    input: str = "tokens"
    input_size: int | None = None
    init_scale: float = checks.field(0.1, checks.NONNEGATIVE)
    evolve_init: bool = False
    log_rates: bool = False
    neuromod: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        checks.validate(self, prefix="network ")
        checks.choice("network input", self.input, INPUT_KINDS)
        if self.input_size is not None:
            checks.integer(at_least=2 if self.input == "tokens" else 1).check(
                "network input_size", self.input_size)
        if not self.layers:
            raise ValueError("a network needs at least one layer (the readout)")
        for kind, names in (("layer", [layer.name for layer in self.layers]),
                            ("connection", self.matrices)):
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"{kind} names must be unique; repeated: {repeated}")
        for layer in self.layers[:-1]:
            if layer.size is None:
                raise ValueError(f"layer {layer.name!r} needs a size (only the readout's "
                                 f"comes from the task)")
        if self.neuromod is not None and self.neuromod not in self._layer_index:
            raise ValueError(f"network neuromod {self.neuromod!r} names no layer; layers "
                             f"are {list(self._layer_index)}")
        for index, layer in enumerate(self.layers):
            for conn in layer.inputs:
                self._check_wiring(index, layer, conn)

    # --- structure ---------------------------------------------------------------------

    @property
    def _layer_index(self) -> dict[str, int]:
        return {layer.name: i for i, layer in enumerate(self.layers)}

    @property
    def readout(self) -> Layer:
        return self.layers[-1]

    @property
    def connections(self) -> tuple[Connection, ...]:
        """Every connection, layer by layer in step order."""
        return tuple(conn for layer in self.layers for conn in layer.inputs)

    @property
    def matrices(self) -> tuple[str, ...]:
        """The connections' names, in the order of `connections`."""
        return tuple(conn.name for conn in self.connections)

    @property
    def plastic_matrices(self) -> tuple[str, ...]:
        """The names of the connections that have a rule."""
        return tuple(conn.name for conn in self.connections if conn.plastic)

    def connection(self, name: str) -> Connection:
        for conn in self.connections:
            if conn.name == name:
                return conn
        raise ValueError(f"no connection {name!r}; connections are {list(self.matrices)}")

    def layer(self, name: str) -> Layer:
        if name not in self._layer_index:
            raise ValueError(f"no layer {name!r}; layers are {list(self._layer_index)}")
        return self.layers[self._layer_index[name]]

    def target_of(self, name: str) -> Layer:
        """The layer a connection feeds."""
        for layer in self.layers:
            if any(conn.name == name for conn in layer.inputs):
                return layer
        raise ValueError(f"no connection {name!r}; connections are {list(self.matrices)}")

    def rule(self, name: str) -> rules_lib.Rule:
        """The `rules.Rule` of a plastic connection."""
        return self.connection(name).learning_rule()

    @property
    def output_size(self) -> int | None:
        """The readout's size: the number of tokens or classes predicted."""
        return self.readout.size

    @property
    def vocab_size(self) -> int | None:
        """The readout's size (what a `plastix.tasks.Task` calls its ``vocab_size``)."""
        return self.readout.size

    def lags(self) -> tuple[int, ...]:
        """The input delays k >= 1 some connection reads (``"x@k"``), sorted."""
        return tuple(sorted({input_lag(conn.source) for conn in self.connections
                             if input_lag(conn.source)}))

    def recurrent_layers(self) -> tuple[str, ...]:
        """The layers whose previous activity some connection reads (``"<layer>@prev"``)."""
        return tuple(layer.name for layer in self.layers
                     if any(conn.source == layer.name + _PREVIOUS for conn in self.connections))

    def source_size(self, source: str) -> int | None:
        if source == "x" or input_lag(source):
            return self.input_size
        return self.layer(source.removesuffix(_PREVIOUS)).size

    def weight_shapes(self) -> dict[str, tuple[int, int]]:
        """``{connection: (n_post, n_pre)}``, in the order of `connections`."""
        self._require_sizes()
        return {conn.name: (self.target_of(conn.name).size,
                            self.source_size(conn.source) + conn.bias)
                for conn in self.connections}

    def wiring(self) -> dict[str, tuple[str, str, str | None]]:
        """``{connection: (pre, post, mod)}``: the signals each matrix's rule reads, with
        "auto" and "self" resolved (signal names as in the module docstring)."""
        return {conn.name: (conn.source, self.post_signal(conn), self.mod_signal(conn))
                for conn in self.connections}

    def post_signal(self, conn: Connection) -> str:
        layer = self.target_of(conn.name)
        if conn.post == "self":
            return layer.name
        if conn.post != "auto":
            return conn.post
        if layer is not self.readout:
            return layer.name
        return "prediction" if conn.plastic and conn.learning_rule().reads_target else "teacher"

    def mod_signal(self, conn: Connection) -> str | None:
        if conn.mod != "auto":
            return conn.mod
        return "teacher" if self.target_of(conn.name) is self.readout else None

    def teacher_matrices(self) -> tuple[str, ...]:
        """The plastic connections whose rule reads the teacher (as post or mod): at a step
        with nothing to teach they must not learn."""
        return tuple(conn.name for conn in self.connections if conn.plastic
                     and "teacher" in (self.post_signal(conn), self.mod_signal(conn)))

    def _check_wiring(self, index: int, layer: Layer, conn: Connection) -> None:
        where = f"connection {conn.name!r} (into layer {layer.name!r})"
        source = conn.source
        base = source.removesuffix(_PREVIOUS)
        if source != "x" and not input_lag(source):
            if base not in self._layer_index:
                raise ValueError(f"{where}: source {source!r} names no layer; a source is "
                                 f"'x', 'x@k', a layer or '<layer>@prev'")
            if source == base and self._layer_index[base] >= index:
                raise ValueError(f"{where}: layer {base!r} is not computed before "
                                 f"{layer.name!r} in a step; read '{base}@prev' for its "
                                 f"activity one step back")
        known = {"self", "auto", *STEP_SIGNALS, *self._layer_index}
        for role, signal in (("post", conn.post), ("mod", conn.mod)):
            if signal is not None and signal not in known:
                raise ValueError(f"{where}: unknown {role} signal {signal!r}; choose 'auto', "
                                 f"'self', one of {list(STEP_SIGNALS)} or a layer")
        if conn.post in SCALAR_SIGNALS:
            raise ValueError(f"{where}: post {conn.post!r} is one number per sequence, not "
                             f"one per unit; use it as mod")
        if "neuromod" in (conn.post, conn.mod) and self.neuromod is None:
            raise ValueError(f"{where} reads 'neuromod', but the network has none: set "
                             f"Network.neuromod to the layer that drives it")

    def _require_sizes(self) -> None:
        if self.input_size is None or self.readout.size is None:
            raise ValueError("the network's input_size and readout size are not set: "
                             "Network.sized(input_size, output_size) fills them from a task")

    def check_sizes(self) -> None:
        """Raises ValueError unless every post and mod signal has its layer's size."""
        self._require_sizes()
        sizes = {layer.name: layer.size for layer in self.layers}
        sizes.update(teacher=self.output_size, prediction=self.output_size)
        for conn in self.connections:
            if not conn.plastic:
                continue
            layer = self.target_of(conn.name)
            for role, signal in (("post", self.post_signal(conn)),
                                 ("mod", self.mod_signal(conn))):
                if signal is None or signal in SCALAR_SIGNALS:
                    continue
                if sizes[signal] != layer.size:
                    raise ValueError(
                        f"connection {conn.name!r}: its {role} signal {signal!r} has "
                        f"{sizes[signal]} units, its layer {layer.name!r} {layer.size}")

    @property
    def readout_matrices(self) -> tuple[str, ...]:
        """The names of the connections into the readout."""
        return tuple(conn.name for conn in self.readout.inputs)

    # --- variants (the baselines a report sets beside a learned rule) ----------------------

    def frozen(self) -> Network:
        """The same network with every matrix fixed: plasticity off."""
        layers = tuple(dataclasses.replace(layer, inputs=tuple(
            _fixed(conn) for conn in layer.inputs)) for layer in self.layers)
        return dataclasses.replace(self, layers=layers)

    def with_readout_rule(self, rule: str | rules_lib.Rule) -> Network:
        """The same network with only the readout's matrices plastic, under ``rule`` with
        shared coefficients and its default wiring, from drawn initial weights."""
        layers = tuple(dataclasses.replace(layer, inputs=tuple(
            dataclasses.replace(conn, rule=rule, granularity="shared", post="auto", mod="auto")
            if layer is self.readout else _fixed(conn) for conn in layer.inputs))
            for layer in self.layers)
        return dataclasses.replace(self, layers=layers, evolve_init=False, log_rates=False)

    # --- sizes the task fixes ------------------------------------------------------------

    def sized(self, input_size: int, output_size: int) -> Network:
        """This network with its input and readout sizes set (where they are None) and
        checked against a task's (where they are given)."""
        for what, mine, theirs in (("input_size", self.input_size, input_size),
                                   ("readout size", self.readout.size, output_size)):
            if mine is not None and mine != theirs:
                raise ValueError(f"the network's {what} is {mine}, the task's {theirs}")
        readout = dataclasses.replace(self.readout, size=output_size)
        network = dataclasses.replace(self, input_size=input_size,
                                      layers=self.layers[:-1] + (readout,))
        network.check_sizes()
        return network

    # --- files -----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """The nested dict of the fields (rules by name): the file format, and what a run's
        ``config.json`` records."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping) -> Network:
        """The inverse of `to_dict`; unknown or missing keys are named."""
        data = dict(_fields_of(cls, data, "network"))
        layers = data.get("layers")
        if not isinstance(layers, (list, tuple)):
            raise ValueError("network: 'layers' must be a list of layers")
        built = []
        for i, layer in enumerate(layers):
            # The readout's size may be left out: the task gives it (`sized`).
            if isinstance(layer, Mapping):
                layer = {"size": None, **layer}
            layer = _fields_of(Layer, layer, f"layers[{i}]")
            conns = layer.get("inputs")
            if not isinstance(conns, (list, tuple)):
                raise ValueError(f"layers[{i}]: 'inputs' must be a list of connections")
            layer["inputs"] = tuple(Connection(**_fields_of(Connection, c, f"layers[{i}]."
                                                            f"inputs[{j}]"))
                                    for j, c in enumerate(conns))
            built.append(Layer(**layer))
        data["layers"] = tuple(built)
        return cls(**data)


def _fixed(conn: Connection) -> Connection:
    return dataclasses.replace(conn, rule=None, post="auto", mod="auto", normalise="none",
                               weight_noise=0.0)


def input_lag(source: str) -> int:
    """k of an input source ``"x@k"`` (k >= 1); 0 for any other source."""
    match = _LAGGED_INPUT.match(source)
    if match is None:
        return 0
    k = int(match.group(1))
    if k < 1:
        raise ValueError(f"source {source!r}: the input k steps back needs k >= 1")
    return k


def _plain(value: Any) -> Any:
    if isinstance(value, rules_lib.Rule):
        return value.name
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _fields_of(cls: type, data: Any, where: str) -> dict:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be an object with keys "
                         f"{[f.name for f in dataclasses.fields(cls)]}, got {data!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; a {cls.__name__} has "
                         f"{sorted(names)}")
    required = sorted(f.name for f in dataclasses.fields(cls)
                      if f.default is dataclasses.MISSING and f.name not in data)
    if required:
        raise ValueError(f"{where}: missing key(s) {required}")
    return dict(data)


# Networks that ship with plastix (examples, and the experiments' networks), by name.
BUNDLED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "networks")


def bundled() -> tuple[str, ...]:
    """The names of the networks that ship with plastix (`load` takes them)."""
    if not os.path.isdir(BUNDLED_DIR):
        return ()
    return tuple(sorted(os.path.splitext(name)[0] for name in os.listdir(BUNDLED_DIR)
                        if name.endswith((".json", ".toml"))))


def network_path(name_or_path: str | os.PathLike) -> str:
    """The file of a bundled network's name, or ``name_or_path`` itself."""
    path = os.fspath(name_or_path)
    if not os.path.exists(path) and path in bundled():
        for suffix in (".json", ".toml"):
            candidate = os.path.join(BUNDLED_DIR, path + suffix)
            if os.path.exists(candidate):
                return candidate
    return path


def load(path: str | os.PathLike) -> Network:
    """A network from a ``.json`` or ``.toml`` file (the layout of `Network.to_dict`), or
    a bundled network by its name (`bundled`)."""
    path = network_path(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such network file (bundled networks: "
                         f"{list(bundled())})")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        if path.endswith(".toml"):
            import tomllib

            data = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a network file ({str(e).splitlines()[0]})") from None
    try:
        return Network.from_dict(data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def save(network: Network, path: str | os.PathLike) -> None:
    """Write ``network`` as JSON (`load` reads it back equal)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(network.to_dict(), f, indent=1)
        f.write("\n")
