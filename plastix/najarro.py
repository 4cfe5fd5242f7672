"""The setup of Najarro & Risi (2020), and their coefficient vectors in and out of plastix.

Najarro & Risi, "Meta-Learning through Hebbian Plasticity in Random Networks",
NeurIPS 2020; reference code github.com/enajx/HebbianMetaLearning. Their method:

* every synapse of every layer has its own ABCD coefficients (``granularity="synapse"``),
  drawn N(0, 1) at the start of evolution (`initial_coefficients`);
* weights are drawn U(-0.1, 0.1) afresh for every lifetime, updated by the rule after
  every step, and each matrix is divided by its largest |w| after every update
  (``normalise="maxabs"``);
* OpenAI-ES (Salimans et al. 2017) with antithetic pairs (z, -z), population 200,
  fitness ``R - 0.01 mean(theta^2)`` (the penalty is added by their multiprocessing
  worker, the default ``--threads -1``), shaped into centred ranks divided by their std,
  and a plain gradient step ``theta += lr / (N sigma) sum_k z_k f_k``; after every
  generation lr <- 0.995 lr while lr > 0.001 and sigma <- 0.999 sigma while
  sigma > 0.01 (`najarro2020` writes this as an `evolve.ESConfig`).

**Their coefficient layout** (``hebbian_weights_update.py``, ``hebbian_update_<variant>``).
Their weights are PyTorch ``nn.Linear`` matrices, ``(n_out, n_in)`` = ``(n_post, n_pre)``,
the same orientation as a plastix matrix. The evolved coefficients are one float32 array
``(n_synapses, n_columns)`` (for ``A``, squeezed to ``(n_synapses,)``); its row for
synapse ``W[j, i]`` (post j, pre i) of the layer that starts at row ``offset`` is::

    offset + i * n_post + j

(their ``idx = (W.shape[0]-1)*i + i + j``): within a layer, rows run pre-major, i.e. a
layer's rows are its ``(n_post, n_pre)`` matrix flattened in column-major (Fortran)
order, and layers follow one another from input to output. The flat vector that
`coefficients_from_reference` reads and `coefficients_to_reference` writes is that
array flattened row by row, so coefficient ``c`` of row ``s`` sits at
``s * n_columns + c``. The columns of each variant, in their index order, are
`REFERENCE_COLUMNS`; note that ``AD_lr`` is ``[A, D, eta]`` while ``ABCD_lr`` is
``[A, B, C, eta, D]``.

**Layers.** Their networks are feed-forward: ``fc1, fc2, fc3`` (``MLP_heb``: input ->
128 -> 64 -> actions, tanh hidden layers, no biases; ``CNN_heb``'s dense part is 648 ->
128 -> 64 -> actions). `feedforward` builds that network here, its matrices named
``fc1, fc2, fc3``, and their vector loads onto it one to one. On any network the plastic
matrices are taken in connection order (layer by layer, as `network.Network.connections`
lists them), skipping fixed ones: the k-th plastic matrix here takes the k-th block of
their vector. On the main job's recurrent network (`PlasticRNN`) that order is ``"in"``
(x -> h, ``N x V``), ``"rec"`` (h_{t-1} -> h, ``N x N``), ``"out"`` (h -> y, ``V x N``).
A vector maps one to one only onto a network whose matrices have the shapes it was laid
out for.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from plastix import evolve, plastic
from plastix import network as network_lib
from plastix.rules import abcd

# variant -> coefficient names in the column order of their hebbian_update_<variant>.
REFERENCE_COLUMNS: dict[str, tuple[str, ...]] = abcd.VARIANTS


class Preset(NamedTuple):
    """What a run in the manner of Najarro & Risi needs.

    Attributes:
      es: the ES configuration.
      net: `plastic.PlasticRNN` field overrides; sizes come from the task
        (`Preset.network`).
    """

    es: evolve.ESConfig
    net: dict[str, Any]

    def network(self, vocab_size: int, **overrides) -> plastic.PlasticRNN:
        """``PlasticRNN(vocab_size, **self.net, **overrides)``."""
        return plastic.PlasticRNN(vocab_size=vocab_size, **{**self.net, **overrides})


def najarro2020(variant: str = "ABCD_lr", **es_overrides) -> Preset:
    """The preset of Najarro & Risi (2020) for one ABCD variant (their default ABCD_lr).

    ES (``train_hebb.py`` defaults, ``EvolutionStrategyHebb``): Open_ES with plain SGD,
    population 200, antithetic pairs, lr 0.2 decayed by 0.995 while above 0.001,
    sigma 0.1 decayed by 0.999 while above 0.01, both decays applied after the
    generation that used the value, centred ranks divided by their std, fresh
    Gaussian perturbations, and fitness penalty 0.01 mean(theta^2). ``es_overrides``
    replace any `evolve.ESConfig` field, e.g. ``batch`` (their fitness is one episode
    per member; plastix averages ``batch`` lifetimes).

    Network: every layer plastic under ``variant``, per-synapse coefficients, max-abs
    normalisation, W ~ U(-0.1, 0.1) per lifetime, no biases. Their networks have no
    teaching signal, so the readout's post activity (``readout_post``) is left at
    plastix's default.
    """
    if variant not in REFERENCE_COLUMNS:
        raise ValueError(f"unknown ABCD variant {variant!r}; choose one of "
                         f"{list(REFERENCE_COLUMNS)}")
    es = dict(
        strategy="Open_ES", optimizer="sgd", population=200, antithetic=True,
        lr=0.2, lr_decay=0.995, lr_min=0.001,
        sigma=0.1, sigma_decay=0.999, sigma_min=0.01,
        floor_mode="stop", sigma_lag=False,
        fitness_shaping="centered_ranks_std", l2_penalty=0.01, l2_reduce="mean",
        noise_table=0,
    )
    net = dict(
        layer_rules=tuple((layer, variant) for layer in plastic.LAYERS),
        granularity="synapse", normalise="maxabs", init_scale=0.1, evolve_init=False,
        weight_noise=0.0, modulation="none", readout_bias=False, log_rates=False,
    )
    return Preset(evolve.ESConfig(**{**es, **es_overrides}), net)


PRESET = najarro2020()


@functools.partial(jax.jit, static_argnames="net")  # one compile, not one per leaf
def initial_coefficients(net, key: jax.Array) -> dict:
    """A `plastic.init_params` pytree whose coefficients are all drawn N(0, 1).

    As ``torch.randn(n_synapses, n_columns)`` in their ``EvolutionStrategyHebb``: one
    independent draw per synapse and coefficient (per coefficient slot of
    ``net.granularity``), in the space ES evolves (log eta under ``net.log_rates``).
    Initial weights, if evolved, are drawn as `plastic.init_params` draws them.
    """
    weights_key, coeffs_key = jax.random.split(key)
    params = plastic.init_params(net, weights_key)
    flat, unravel = ravel_pytree(params["coeffs"])
    params["coeffs"] = unravel(jax.random.normal(coeffs_key, flat.shape, flat.dtype))
    return params


def feedforward(input_size: int | None = None, output_size: int | None = None,
                variant: str = "ABCD_lr", hidden: tuple[int, ...] = (128, 64),
                input: str = "vector", readout_activation: str = "softmax",
                readout_post: str = "auto") -> network_lib.Network:
    """Their feed-forward network (``MLP_heb``): ``input -> 128 -> 64 -> output``, tanh
    hidden layers, no biases, every matrix under ``variant`` with per-synapse
    coefficients, each matrix divided by its largest |w| after every update, weights
    U(-0.1, 0.1) every lifetime. The matrices are ``fc1, fc2, ...``; the layers ``h1, h2,
    ..., out``.

    Args:
      input_size, output_size: their observation and action sizes here, the task's
        input and its classes or tokens (None: the task's, `network.Network.sized`).
      variant: an ABCD variant (`REFERENCE_COLUMNS`).
      hidden: the hidden layers' sizes.
      input: "vector" (their observations) or "tokens" (a one-hot token, as their code
        one-hot encodes a discrete observation).
      readout_activation: "softmax" scores the drive as logits; "identity" or "tanh"
        make the readout their ``o3`` (linear, or tanh for the Bullet tasks).
      readout_post: what the readout's rule reads as post: "auto" (the teacher for the
        ABCD rules, which read no target: plastix's default for a readout) or "self" (the
        readout's own activity, their ``o3``: their networks have no teacher).
    """
    if variant not in REFERENCE_COLUMNS:
        raise ValueError(f"unknown ABCD variant {variant!r}; choose one of "
                         f"{list(REFERENCE_COLUMNS)}")
    sizes = (*hidden, output_size)
    names = [f"h{i + 1}" for i in range(len(hidden))] + ["out"]
    sources = ["x", *names[:-1]]
    layers = tuple(
        network_lib.Layer(name, size, (network_lib.Connection(
            f"fc{i + 1}", source, variant, "synapse", normalise="maxabs",
            post=readout_post if name == "out" else "auto"),),
            activation=readout_activation if name == "out" else "tanh")
        for i, (name, size, source) in enumerate(zip(names, sizes, sources)))
    return network_lib.Network(layers, input=input, input_size=input_size, init_scale=0.1)


def reference_layers(net) -> tuple[str, ...]:
    """The plastic matrices in the order of their blocks in a reference vector."""
    return plastic.as_network(net).plastic_matrices


def _columns(network: network_lib.Network, name: str) -> tuple[str, ...]:
    rule = network.rule(name)
    columns = REFERENCE_COLUMNS.get(rule.name)
    if columns is None or set(columns) != set(rule.default_coeffs):
        raise ValueError(f"layer {name!r} has rule {rule.name!r}; the reference layout "
                         f"covers the ABCD variants {list(REFERENCE_COLUMNS)}")
    return columns


def _blocks(net) -> list[tuple[str, tuple[int, int], tuple[str, ...]]]:
    network = plastic.as_network(net)
    shapes = network.weight_shapes()
    return [(name, shapes[name], _columns(network, name)) for name in reference_layers(network)]


def reference_size(net) -> int:
    """Length of a reference coefficient vector for ``net``: sum of synapses x columns."""
    return sum(n_post * n_pre * len(cols) for _, (n_post, n_pre), cols in _blocks(net))


def _layout(blocks) -> str:
    return " + ".join(f"{layer} {n_post}x{n_pre}x{len(cols)}"
                      for layer, (n_post, n_pre), cols in blocks)


def coefficients_from_reference(vector, net) -> dict:
    """Their coefficient vector as plastix params ``{"coeffs": {layer: {name: (n_post, n_pre)}}}``.

    Args:
      vector: their coefficients in the layout of the module docstring: the flat
        vector, or their ``(n_synapses, n_columns)`` array when every layer has the
        same variant.
      net: a network (a `network.Network` or a preset) with per-synapse coefficients
        and an ABCD variant on every plastic matrix.

    Returns:
      The ``"coeffs"`` part of `plastic.init_params`, in the space ES evolves
      (``eta`` mapped to log(eta) under ``net.log_rates``); no ``"w0"``.

    Raises:
      ValueError: the network is not per-synapse ABCD, the vector has the wrong
        length (the message names the expected one), or ``net.log_rates`` meets an
        eta <= 0.
    """
    network = plastic.as_network(net)
    coarse = {name: network.connection(name).granularity for name in network.plastic_matrices
              if network.connection(name).granularity != "synapse"}
    if coarse:
        granularity = coarse[next(iter(coarse))] if len(set(coarse.values())) == 1 else coarse
        raise ValueError(f"the reference layout has coefficients per synapse; the network "
                         f"has granularity={granularity!r}")
    blocks = _blocks(network)
    expected = reference_size(net)
    array = np.asarray(vector, np.float32)
    widths = {len(cols) for _, _, cols in blocks}
    n_synapses = sum(n_post * n_pre for _, (n_post, n_pre), _ in blocks)
    table_ok = array.ndim == 2 and len(widths) == 1 and array.shape == (n_synapses, *widths)
    if array.size != expected or not (array.ndim == 1 or table_ok):
        raise ValueError(f"reference coefficient vector must have {expected} entries "
                         f"({_layout(blocks)}), got shape {array.shape}")
    flat = array.reshape(-1)
    coeffs, offset = {}, 0
    for layer, (n_post, n_pre), cols in blocks:
        size = n_post * n_pre * len(cols)
        # rows pre-major: block[i, j, c] is coefficient c of synapse (post j, pre i)
        block = flat[offset:offset + size].reshape(n_pre, n_post, len(cols))
        coeffs[layer] = {name: jnp.asarray(block[:, :, c].T) for c, name in enumerate(cols)}
        offset += size
    if network.log_rates and any(np.any(c["eta"] <= 0) for c in coeffs.values() if "eta" in c):
        raise ValueError("net.log_rates evolves log(eta), but the vector has eta <= 0")
    return {"coeffs": plastic.evolved_coeffs(network, coeffs)}


def coefficients_to_reference(params: dict, net) -> np.ndarray:
    """Plastix params as their flat float32 coefficient vector (the inverse of
    `coefficients_from_reference`).

    Shared or per-neuron coefficients are broadcast to every synapse first, so any
    granularity can be written out. ``.reshape(-1, n_columns)`` gives their
    ``(n_synapses, n_columns)`` array when every layer has the same variant.
    """
    blocks = _blocks(net)
    coeffs = plastic.rule_coeffs(net, params)
    parts = []
    for layer, shape, cols in blocks:
        table = np.stack([np.broadcast_to(np.asarray(coeffs[layer][name], np.float32), shape)
                          for name in cols], axis=-1)  # (n_post, n_pre, n_columns)
        parts.append(table.transpose(1, 0, 2).reshape(-1))  # pre-major rows
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


__all__ = [
    "REFERENCE_COLUMNS", "Preset", "najarro2020", "PRESET", "feedforward", "initial_coefficients",
    "reference_layers", "reference_size", "coefficients_from_reference",
    "coefficients_to_reference",
]
