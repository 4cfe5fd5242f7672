"""Gradient-trained recurrent models: RNN baselines and fast-weight RNNs.

Every recurrent model here is a flax cell with one shape,

    carry = cell.initialize_carry(key, (batch, features))
    carry, h = cell(carry, x)              # one time step, x: (batch, features)

and `TokenModel` scans it over time with ``flax.linen.RNN`` (a ``lax.scan``),
between a token embedding and a softmax readout. The cells:

==============  ==========================================================================
``control``     IRNN: h' = relu(W h + C x + b), W initialised to the identity
                (Le, Jaitly & Hinton 2015, "A simple way to initialize RNNs of ReLUs").
``rnn-ln``      h' = relu(LN[W h + C x + b])  (Ba, Kiros & Hinton 2016, "Layer normalization").
``rnn-ln-fw``   fast weights (Ba, Hinton, Mnih, Leibo & Ionescu 2016, "Using fast weights
                to attend to the recent past"), explicit-A or attention form.
``gru-ln``      GRU with every gate layer-normalised separately.
``lstm``        flax's LSTM (Hochreiter & Schmidhuber 1997), the paper's baseline.
``delta-fw``    recurrent delta-rule fast-weight net (Schlag, Irie & Schmidhuber 2021,
                "Linear transformers are secretly fast weight programmers").
``deltanet``    the non-recurrent delta-rule layer (DeltaNet; Yang, Wang, Zhang, Shen &
                Kim 2024): keys, queries, values and write strengths from the inputs
                alone, so the whole sequence runs chunkwise (`plastix.delta_rule`).
==============  ==========================================================================

``deltanet`` is a sequence layer, not a cell: `TokenModel` calls it on the whole embedded
sequence instead of scanning it.

Fast weights are plastic layers of the ES networks' kind: a `plastix.plastic.Synapses`
store under the rule ``fast_weight_ba`` or ``fast_weight_delta`` (``drive`` reads the
fast matrix, ``learn`` writes it), so the gradient path and the ES path share one
plastic-layer protocol; the attention form is another store of the same layer.

Image classifiers (`make_classifier`) map the pixel vector of each step of a
``(batch, T, pixels)`` input to class logits (the ``images`` task has T = 1):
``mlp`` (one ReLU hidden layer) and ``cnn`` (two convolutions and a dense layer). Their
last layer is called ``logits``, as in `TokenModel`.

Layer norm always normalises each example over its own hidden features. (The public
TensorFlow reference of the fast-weights model took the moments over the batch axis, which
makes one sequence's hidden state depend on the other sequences in its batch; its GRU-LN fed
the reset gate's pre-activation to the update gate's layer norm.)
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from plastix import delta_rule, plastic, rules

Array = jax.Array


def identity_init(scale: float = 1.0) -> Callable:
    """Initialiser for a square kernel: ``scale * I`` (the IRNN initialisation)."""

    def init(key, shape, dtype=jnp.float32):
        del key
        return scale * jnp.eye(shape[0], shape[1], dtype=dtype)

    return init


def feature_layer_norm(name: str | None = None, gain_init: float = 1.0) -> nn.LayerNorm:
    """Layer norm over the last (feature) axis only: statistics per example, never per batch.

    LN(z) = g * (z - mean(z)) / sqrt(var(z) + eps) + b, moments over z's H features;
    g starts at ``gain_init``, b at 0.
    """
    return nn.LayerNorm(reduction_axes=-1, feature_axes=-1, use_fast_variance=False,
                        scale_init=nn.initializers.constant(gain_init), name=name)


class SlowTransition(nn.Module):
    """The slow-weight pre-activation of a simple RNN: z = W h(t) + C x(t) + b."""

    features: int
    recurrent_scale: float = 1.0  # W starts as recurrent_scale * I (IRNN)

    @nn.compact
    def __call__(self, h: Array, x: Array) -> Array:
        recurrent = nn.Dense(
            self.features, use_bias=False, kernel_init=identity_init(self.recurrent_scale),
            name="recurrent",
        )
        return recurrent(h) + nn.Dense(self.features, name="input")(x)


class HiddenVectorCell(nn.RNNCellBase):
    """Base of the cells here: features on the last axis, carry h(0) = 0 unless overridden."""

    @nn.nowrap
    def initialize_carry(self, rng, input_shape: tuple[int, ...]):
        del rng
        return jnp.zeros(input_shape[:-1] + (self.features,))

    @property
    def num_feature_axes(self) -> int:
        return 1


class SimpleRNNCell(HiddenVectorCell):
    """Simple ReLU RNN, with or without layer norm.

    h(t+1) = relu(W h(t) + C x(t) + b)          (CONTROL / IRNN, layer_norm=False)
    h(t+1) = relu(LN[W h(t) + C x(t) + b])      (RNN-LN, layer_norm=True)
    """

    features: int
    layer_norm: bool = False
    recurrent_scale: float = 1.0

    @nn.compact
    def __call__(self, h: Array, x: Array) -> tuple[Array, Array]:
        z = SlowTransition(self.features, self.recurrent_scale)(h, x)
        if self.layer_norm:
            z = feature_layer_norm()(z)
        h = nn.relu(z)
        return h, h


def explicit_fast_weights(decay: float, fast_lr: float) -> plastic.Synapses:
    """Fast weights stored as the matrix A (H x H): a plastic layer under
    ``rules.fast_weight_ba``, A(t) = lam A(t-1) + eta h(t) h(t)^T, in the store the ES
    networks use (`plastix.plastic.dense_synapses`); reading costs O(H^2) per inner step."""
    coeffs = {"lam": jnp.asarray(decay), "eta": jnp.asarray(fast_lr)}
    return plastic.dense_synapses(rules.get("fast_weight_ba"), coeffs)


def attention_fast_weights(decay: float, fast_lr: float, max_len: int) -> plastic.Synapses:
    """The same plastic layer, A never formed: attention over the stored past hidden states.

    With A(0) = 0 the rule unrolls to A(t) = eta sum_{tau<=t} lam^(t-tau) h(tau) h(tau)^T, so

        A(t) q = eta sum_{tau<=t} lam^(t-tau) <h(tau), q> h(tau)        (Ba et al. 2016, eq. 3)

    which costs O(t H) per inner step instead of O(H^2): cheaper while t < H. The store is
    a fixed ``(B, max_len, H)`` buffer of past states plus a counter, so the carry keeps
    one shape; ``weights`` forms A(t) when asked.
    """

    def init(w0):
        batch, features = w0.shape[0], w0.shape[-1]
        return jnp.zeros((batch, max_len, features), w0.dtype), jnp.zeros((), jnp.int32)

    def age_weights(count, dtype):
        slot = jnp.arange(max_len)
        age = (count - 1 - slot).astype(dtype)
        return jnp.where(slot < count, fast_lr * decay**age, 0.0)

    def drive(store, q, t):
        past, count = store
        scores = jnp.einsum("bsh,bh->bs", past, q) * age_weights(count, q.dtype)
        return jnp.einsum("bsh,bs->bh", past, scores)

    def learn(store, pre, post, mod, t, keys):
        del post, mod, t, keys  # A's write is h h^T: pre and post are the same state
        past, count = store
        return past.at[:, count].set(pre), count + 1

    def weights(store, t):
        past, count = store
        return jnp.einsum("bsi,s,bsj->bij", past, age_weights(count, past.dtype), past)

    return plastic.Synapses("attention", init, drive, learn, weights)


class FastWeightRNNCell(HiddenVectorCell):
    """RNN-LN-FW: a layer-normalised ReLU RNN with a fast associative memory.

    Ba, Hinton, Mnih, Leibo & Ionescu 2016, "Using fast weights to attend to the recent past":

        h_0(t+1)     = relu(W h(t) + C x(t) + b)
        h_{s+1}(t+1) = relu(LN[W h(t) + C x(t) + b + A(t) h_s(t+1)]),   s = 0 .. S-1
        h(t+1)       = h_S(t+1)
        A(t+1)       = lam A(t) + eta h(t+1) h(t+1)^T,                    A(0) = 0 per sequence

    ``form="explicit"`` keeps A in the carry; ``form="attention"`` keeps the past hidden
    states instead (see `attention_fast_weights`). Both give the same h(t).

    Initialisation (the equations are the paper's; only the starting point is chosen here):

    * W = 0.05 I (``recurrent_scale``), as in the public reimplementations of the paper
      (jxwufan/AssociativeRetrieval, jiamings/fast-weights). With W = I the state mostly
      copies itself: on associative retrieval (H = 50, 3000 Adam updates) W = I reached 38%
      validation accuracy where W = 0.05 I reached 96%, all else equal.
    * LN gain g = sqrt(2 / (eta H)) (``ln_gain_init=None``; a number overrides it). A
      layer-normalised ReLU state has |h|^2 ~ g^2 H / 2, so the memory read
      A h = eta sum_tau lam^(t-tau) <h(tau), h> h(tau) is ~ eta g^2 H / 2 times a stored
      state: with g = 1, eta = 0.5, H = 50 that is ~ 12 |h| per stored step, |A h| ~ 160 |h|
      (~ 3H) summed over a sequence, which drowns W h(t) + C x(t); all states of a sequence
      then point the same way (mean cosine 0.97) and the model sat at chance for thousands
      of updates. This g makes eta <h(tau), h> ~ 1 at the start (|A h| ~ 6 |h|, cosine 0.64),
      so memory and input enter on the same scale; training then moves g freely.
    """

    features: int
    max_len: int  # longest sequence; sizes the attention form's buffer
    form: str = "explicit"
    inner_steps: int = 1  # S
    decay: float = 0.95  # lam
    fast_lr: float = 0.5  # eta
    recurrent_scale: float = 0.05  # W(0) = recurrent_scale * I
    activation: Callable[[Array], Array] = nn.relu  # f
    ln_gain_init: float | None = None  # None: sqrt(2 / (eta H)), see above

    @nn.nowrap
    def memory(self) -> plastic.Synapses:
        if self.form == "explicit":
            return explicit_fast_weights(self.decay, self.fast_lr)
        if self.form == "attention":
            return attention_fast_weights(self.decay, self.fast_lr, self.max_len)
        raise ValueError(f"form must be 'explicit' or 'attention', got {self.form!r}")

    @nn.compact
    def __call__(self, carry, x: Array):
        h, memory = carry
        fast = self.memory()
        z = SlowTransition(self.features, self.recurrent_scale)(h, x)
        gain = self.ln_gain_init
        if gain is None:
            gain = (2.0 / (self.fast_lr * self.features)) ** 0.5 if self.fast_lr > 0 else 1.0
        layer_norm = feature_layer_norm(gain_init=gain)  # one LN shared by all S inner steps
        h_s = self.activation(z)
        for _ in range(self.inner_steps):  # S is small and static: unrolled
            h_s = self.activation(layer_norm(z + fast.drive(memory, h_s, None)))
        memory = fast.learn(memory, h_s, h_s, None, None, None)
        return (h_s, memory), h_s

    @nn.nowrap
    def initialize_carry(self, rng, input_shape: tuple[int, ...]):
        del rng
        h = jnp.zeros(input_shape[:-1] + (self.features,))
        return h, self.memory().init(jnp.zeros(h.shape + h.shape[-1:]))


class LayerNormGRUCell(HiddenVectorCell):
    """GRU-LN: a GRU (Cho et al. 2014) whose gates are layer-normalised one by one.

    r  = sigmoid(LN_r[W_r x + U_r h + b_r])
    u  = sigmoid(LN_u[W_u x + U_u h + b_u])
    c  = tanh(LN_c[W_c x + b_c + r * (U_c h)])
    h' = u * h + (1 - u) * c

    Each gate has its own gain and bias and its own moments over its H features.
    """

    features: int

    @nn.compact
    def __call__(self, h: Array, x: Array) -> tuple[Array, Array]:
        gates = nn.Dense(2 * self.features, name="gates")(jnp.concatenate([x, h], axis=-1))
        reset_pre, update_pre = jnp.split(gates, 2, axis=-1)
        reset = nn.sigmoid(feature_layer_norm("ln_reset")(reset_pre))
        update = nn.sigmoid(feature_layer_norm("ln_update")(update_pre))
        candidate_pre = nn.Dense(self.features, name="candidate_input")(x) + reset * nn.Dense(
            self.features, use_bias=False, name="candidate_recurrent"
        )(h)
        candidate = jnp.tanh(feature_layer_norm("ln_candidate")(candidate_pre))
        h = update * h + (1.0 - update) * candidate
        return h, h


class DeltaRNNCell(HiddenVectorCell):
    """Recurrent delta-rule fast-weight net (Schlag, Irie & Schmidhuber 2021).

    From z = [x(t), h(t)] the slow weights program the fast matrix W_f (H x H):

        k = W_k z / |W_k z|,  q = W_q z / |W_q z|,  v = W_v z,  beta = sigmoid(w_b . z)
        W_f(t+1) = W_f(t) + beta (v - W_f(t) k) k^T      (``rules.fast_weight_delta``)
        h(t+1)   = LN[W_f(t+1) q]

    The delta rule overwrites the value stored under k instead of adding to it. Keys are
    L2-normalised so that (I - beta k k^T) has eigenvalues in [1 - beta, 1]: W_f cannot blow
    up however long the sequence (Yang et al. 2024 use the same normalisation). Feeding h(t)
    back into z makes the net recurrent (Irie et al. 2021, "Going beyond linear transformers
    with recurrent fast weight programmers").

    Because k, q, v and beta depend on h(t), this cell runs one token at a time; it has no
    chunkwise form. `DeltaNetLayer` computes them from the inputs alone and runs chunkwise.
    """

    features: int

    @nn.nowrap
    def memory(self) -> plastic.Synapses:
        # The write strength is the dynamic beta, passed as the rule's mod.
        return plastic.dense_synapses(rules.get("fast_weight_delta"), {"beta": jnp.asarray(1.0)})

    @nn.compact
    def __call__(self, carry, x: Array):
        h, memory = carry
        fast = self.memory()
        z = jnp.concatenate([x, h], axis=-1)
        key = _l2_normalise(nn.Dense(self.features, name="key")(z))
        query = _l2_normalise(nn.Dense(self.features, name="query")(z))
        value = nn.Dense(self.features, name="value")(z)
        beta = nn.sigmoid(nn.Dense(1, name="beta")(z))[..., 0]
        memory = fast.learn(memory, key, value, beta, None, None)
        h = feature_layer_norm()(fast.drive(memory, query, None))
        return (h, memory), h

    @nn.nowrap
    def initialize_carry(self, rng, input_shape: tuple[int, ...]):
        del rng
        h = jnp.zeros(input_shape[:-1] + (self.features,))
        return h, self.memory().init(jnp.zeros(h.shape + h.shape[-1:]))


def _l2_normalise(v: Array, eps: float = 1e-6) -> Array:
    return v / jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True) + eps)


DELTA_FORMS = ("chunkwise", "recurrent")


class DeltaNetLayer(nn.Module):
    """Delta-rule fast-weight layer over a whole sequence (DeltaNet; Yang, Wang, Zhang,
    Shen & Kim 2024, "Parallelizing linear transformers with the delta rule over sequence
    length"; Schlag, Irie & Schmidhuber 2021).

    From z(t) = [x(t), x(t-1)] (x(0) = 0; a width-2 causal convolution, the short
    convolution DeltaNet puts before its projections, so that a key can be bound to the
    token after it):

        k = W_k z / |W_k z|,  q = W_q z / |W_q z|,  v = W_v z,  beta = sigmoid(w_b . z)
        W_f(t) = W_f(t-1) + beta (v - W_f(t-1) k) k^T      (``rules.fast_weight_delta``)
        h(t)   = LN[W_f(t) q]

    as `DeltaRNNCell` but with no h(t) in z: nothing recurrent is left but the memory, so
    ``form="chunkwise"`` (`delta_rule.delta_rule_chunkwise`, chunks of ``chunk_size``)
    gives the outputs of ``form="recurrent"`` (the per-token scan) from matrix products.
    """

    features: int
    form: str = "chunkwise"
    chunk_size: int = 64

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """(..., T, inputs) -> (..., T, features), W_f(0) = 0."""
        if self.form not in DELTA_FORMS:
            raise ValueError(f"form must be one of {DELTA_FORMS}, got {self.form!r}")
        previous = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 0), (0, 0)])[..., :-1, :]
        z = jnp.concatenate([x, previous], axis=-1)
        key = _l2_normalise(nn.Dense(self.features, name="key")(z))
        query = _l2_normalise(nn.Dense(self.features, name="query")(z))
        value = nn.Dense(self.features, name="value")(z)
        beta = nn.sigmoid(nn.Dense(1, name="beta")(z))[..., 0]
        if self.form == "chunkwise":
            read, _ = delta_rule.delta_rule_chunkwise(query, key, value, beta,
                                                      chunk_size=self.chunk_size)
        else:
            read, _ = delta_rule.delta_rule_recurrent(query, key, value, beta)
        return feature_layer_norm()(read)


class TokenModel(nn.Module):
    """Token sequence -> next-token logits: embedding, a recurrent cell over time, readout.

    logits(t) = V relu(U h(t) + c) + d, with h(t) from the cell scanned over the embedded
    tokens (the hidden ReLU layer between the RNN and the softmax follows Ba et al. 2016;
    ``readout_features=0`` drops it).
    """

    cell: nn.Module  # a cell scanned over time, or a sequence layer (DeltaNetLayer)
    vocab_size: int
    embed_dim: int = 100
    readout_features: int = 100

    def setup(self):
        self.embed = nn.Embed(self.vocab_size, self.embed_dim)
        self.rnn = nn.RNN(self.cell) if isinstance(self.cell, nn.RNNCellBase) else None
        self.readout = nn.Dense(self.readout_features) if self.readout_features else None
        self.logits = nn.Dense(self.vocab_size)

    def hidden_states(self, tokens: Array) -> Array:
        """(batch, T) int tokens -> (batch, T, H) hidden states h(1..T)."""
        max_len = getattr(self.cell, "max_len", None)
        if max_len is not None and tokens.shape[-1] > max_len:
            raise ValueError(f"sequence length {tokens.shape[-1]} > cell max_len {max_len}")
        if self.rnn is None:
            return self.cell(self.embed(tokens))
        return self.rnn(self.embed(tokens))

    def __call__(self, tokens: Array) -> Array:
        """(batch, T) int tokens -> (batch, T, vocab) logits."""
        h = self.hidden_states(tokens)
        if self.readout is not None:
            h = nn.relu(self.readout(h))
        return self.logits(h)


def _control(features, seq_len):
    return SimpleRNNCell(features, layer_norm=False)


def _rnn_ln(features, seq_len):
    return SimpleRNNCell(features, layer_norm=True)


ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh}


def _rnn_ln_fw(features, seq_len, form="explicit", inner_steps=1, decay=0.95, fast_lr=0.5,
               activation="relu", recurrent_scale=0.05, ln_gain_init=None):
    return FastWeightRNNCell(features, seq_len, form, inner_steps, decay, fast_lr,
                             recurrent_scale, ACTIVATIONS[activation], ln_gain_init)


def _gru_ln(features, seq_len):
    return LayerNormGRUCell(features)


def _lstm(features, seq_len):
    return nn.OptimizedLSTMCell(features)


def _delta_fw(features, seq_len):
    return DeltaRNNCell(features)


def _deltanet(features, seq_len, form="chunkwise", chunk_size=64):
    return DeltaNetLayer(features, form, chunk_size)


CELLS: dict[str, Callable[..., nn.Module]] = {
    "control": _control,
    "rnn-ln": _rnn_ln,
    "rnn-ln-fw": _rnn_ln_fw,
    "gru-ln": _gru_ln,
    "lstm": _lstm,
    "delta-fw": _delta_fw,
    "deltanet": _deltanet,
}


def make_cell(name: str, features: int, seq_len: int, **hyper) -> nn.Module:
    """The recurrent cell called ``name`` (case-insensitive) with ``features`` hidden units.

    ``hyper`` goes to the cell (``rnn-ln-fw``: form, inner_steps, decay, fast_lr, activation,
    recurrent_scale, ln_gain_init; ``deltanet``: form, chunk_size).
    """
    factory = CELLS.get(name.lower())
    if factory is None:
        raise ValueError(f"unknown model {name!r}; known: {sorted(CELLS)}")
    return factory(features, seq_len, **hyper)


def make_model(
    name: str,
    vocab_size: int,
    seq_len: int,
    hidden_size: int,
    embed_dim: int = 100,
    readout_features: int = 100,
    **hyper,
) -> TokenModel:
    """A `TokenModel` around ``make_cell(name, hidden_size, seq_len, **hyper)``.

    Example:
        >>> model = make_model("rnn-ln-fw", vocab_size=37, seq_len=11, hidden_size=50)
        >>> params = model.init(jax.random.key(0), jnp.zeros((1, 11), jnp.int32))
        >>> model.apply(params, jnp.zeros((4, 11), jnp.int32)).shape
        (4, 11, 37)
    """
    cell = make_cell(name, hidden_size, seq_len, **hyper)
    return TokenModel(cell, vocab_size, embed_dim, readout_features)


# --- image classifiers ---------------------------------------------------------------------


class MLPClassifier(nn.Module):
    """Pixels -> class logits through one ReLU hidden layer:

    logits = W_2 relu(W_1 x + b_1) + b_2        (layers "hidden" and "logits")
    """

    num_classes: int
    hidden: int = 128

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """(..., pixels) float -> (..., num_classes) logits."""
        h = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
        return nn.Dense(self.num_classes, name="logits")(h)


class ConvClassifier(nn.Module):
    """A small CNN on square images given as row-major pixel vectors:

    conv 3x3 (c_1) relu -> conv 3x3 stride 2 (c_2) relu -> flatten -> dense (hidden,
    linear) -> logits

    The linear dense layer before the readout follows the example network of the "hebbian
    masks" experiments (conv, conv, fc 128, masked fc 10), so the masked readout ("logits")
    sees inputs of both signs.
    """

    num_classes: int
    hidden: int = 128
    channels: tuple[int, int] = (16, 32)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """(..., side * side) float -> (..., num_classes) logits."""
        side = int(round(x.shape[-1] ** 0.5))
        if side * side != x.shape[-1]:
            raise ValueError(f"ConvClassifier needs square images, got {x.shape[-1]} pixels")
        images = x.reshape(-1, side, side, 1)
        h = nn.relu(nn.Conv(self.channels[0], (3, 3), name="conv1")(images))
        h = nn.relu(nn.Conv(self.channels[1], (3, 3), strides=(2, 2), name="conv2")(h))
        h = nn.Dense(self.hidden, name="fc")(h.reshape(h.shape[0], -1))
        logits = nn.Dense(self.num_classes, name="logits")(h)
        return logits.reshape(*x.shape[:-1], self.num_classes)


CLASSIFIERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLPClassifier,
    "cnn": ConvClassifier,
}


def make_classifier(name: str, num_classes: int, hidden: int = 128, **hyper) -> nn.Module:
    """The image classifier called ``name`` ("mlp" or "cnn", case-insensitive).

    Example:
        >>> model = make_classifier("mlp", num_classes=10)
        >>> params = model.init(jax.random.key(0), jnp.zeros((1, 1, 64)))
        >>> model.apply(params, jnp.zeros((4, 1, 64))).shape
        (4, 1, 10)
    """
    factory = CLASSIFIERS.get(name.lower())
    if factory is None:
        raise ValueError(f"unknown classifier {name!r}; known: {sorted(CLASSIFIERS)}")
    return factory(num_classes, hidden, **hyper)
