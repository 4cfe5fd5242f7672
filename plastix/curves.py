"""In-lifetime learning curves: per-position scores and weight dynamics of long lifetimes.

A lifetime of T steps runs as a chain of jitted scans of ``chunk`` steps each, the carry
(plastic weights, rule states, hidden state) handed from one to the next, so device memory
holds one chunk whatever T is: 10,000-character lifetimes cost what 100-character ones do,
times the number of chunks. The chain is the same computation as one scan over T steps
(`plastic.run_lifetimes`), so a curve does not depend on the chunk size.

At the end of every chunk the weights are probed: their norm, how far the last chunk moved
them (the effective learning rate), and one readout row, for the plots of learning dynamics.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from plastix import network as network_lib
from plastix import plastic


class Curve(NamedTuple):
    """Per-position scores of B lifetimes and their weight dynamics.

    Attributes:
      nll: ``(B, T)`` NLL (nats) of each prediction, made before its step taught anything.
      correct: ``(B, T)`` 1.0 where the arg-max prediction was the target.
      steps: ``(K,)`` the step count at the end of each probed chunk.
      weight_norm: ``{matrix: (K,)}`` mean over lifetimes of ``||W||_F`` after that chunk.
      update_rate: ``{matrix: (K,)}`` mean over lifetimes of ``||W(t) - W(t - c)||_F / c``
        over the chunk of ``c`` steps: how fast the rule moves the weights per step.
      readout_row: ``(K, n_pre)`` the readout row of ``probe_token`` in lifetime 0.
    """

    nll: np.ndarray
    correct: np.ndarray
    steps: np.ndarray
    weight_norm: dict
    update_rate: dict
    readout_row: np.ndarray


def _weights(network: network_lib.Network, layers: dict, stores: dict, t) -> dict:
    return {name: layers[name].weights(stores[name], t) for name in network.plastic_matrices}


def _readout_matrix(network: network_lib.Network) -> str | None:
    """The plastic matrix into the readout whose rows `Curve.readout_row` probes."""
    names = [conn.name for conn in network.readout.inputs if conn.plastic]
    return names[0] if names else None


@functools.partial(jax.jit, static_argnames=("network", "probe_token"))
def _run_chunk(network: network_lib.Network, params: dict, draws: plastic.LifetimeDraws,
               carry: plastic.Carry, xs: plastic.StepInputs, probe_token: int):
    """One chunk of B lifetimes: ``(carry, (nll, correct) each (B, c), probes)``."""
    layers = plastic.layer_synapses(network, params)
    start, length = xs.t[0], xs.t.shape[0]
    before = _weights(network, layers, carry.stores, start)
    carry, (nll, correct) = jax.lax.scan(plastic.lifetime_step(network, params, draws), carry,
                                         xs)
    after = _weights(network, layers, carry.stores, start + length)
    readout = _readout_matrix(network)
    frobenius = lambda w: jnp.sqrt(jnp.sum(w * w, axis=(1, 2)))
    probes = {
        "weight_norm": {layer: jnp.mean(frobenius(w)) for layer, w in after.items()},
        "update_rate": {layer: jnp.mean(frobenius(after[layer] - before[layer])) / length
                        for layer in after},
        "readout_row": after[readout][0, probe_token] if readout else jnp.zeros(0),
    }
    return carry, (nll.T, correct.T), probes


def learning_curve(net, params: dict, key: jax.Array, inputs, targets,
                   mask, chunk: int = 100, probe_token: int = 0) -> Curve:
    """B lifetimes over ``(B, T)`` sequences, run ``chunk`` steps at a time.

    Args:
      net, params: the plastic network (a `network.Network` or a preset) and one
        member's parameters (`plastic.init_params`).
      key: draws every lifetime's initial weights and weight noise, as `plastic.evaluate`
        does (the same key gives the same lifetimes as `plastic.run_lifetimes` with
        ``plastic.lifetime_draws(net, key, B)``).
      inputs, targets, mask: ``(B, T)`` arrays (``plastix.tasks``).
      chunk: steps per jitted scan; results do not depend on it. A chunk that does not
        divide T leaves a shorter last chunk (compiled once more).
      probe_token: the readout row recorded in `Curve.readout_row`.

    Returns:
      A `Curve`. Unlike `plastic.run_lifetimes` the readout also learns from the last
      step when that step teaches nothing; no prediction reads those weights, so the
      scores are the same.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 step, got {chunk}")
    network = plastic.as_network(net)
    if not 0 <= probe_token < network.output_size:
        raise ValueError(f"probe_token must be a token id in [0, {network.output_size}), "
                         f"got {probe_token}")
    draws = plastic.lifetime_draws(network, key, inputs.shape[0])
    carry, xs = plastic.lifetime_start(network, params, draws, inputs, targets, mask)
    length = inputs.shape[1]
    nll, correct, probes, steps = [], [], [], []
    for begin in range(0, length, chunk):
        window = jax.tree.map(lambda x: x[begin:begin + chunk], xs)
        carry, (chunk_nll, chunk_correct), chunk_probes = _run_chunk(
            network, params, draws, carry, window, probe_token)
        nll.append(chunk_nll)
        correct.append(chunk_correct)
        probes.append(chunk_probes)
        steps.append(min(begin + chunk, length))
    probes = jax.device_get(probes)
    stacked = lambda name: {layer: np.array([p[name][layer] for p in probes])
                            for layer in network.plastic_matrices}
    return Curve(
        nll=np.asarray(jnp.concatenate(nll, axis=1)),
        correct=np.asarray(jnp.concatenate(correct, axis=1)),
        steps=np.array(steps),
        weight_norm=stacked("weight_norm"),
        update_rate=stacked("update_rate"),
        readout_row=np.stack([p["readout_row"] for p in probes]),
    )


def log_bins(length: int, per_decade: int = 8) -> np.ndarray:
    """Edges ``0 = e_0 < e_1 < ... = length`` of position bins of equal width in log
    position, for curves that span 1 to 10,000 steps (every bin holds >= 1 position)."""
    edges = np.unique(np.round(np.logspace(0, np.log10(length), 1 + int(
        np.ceil(per_decade * np.log10(max(length, 10)))))).astype(int))
    return np.unique(np.concatenate([[0], edges[edges < length], [length]]))


def binned(per_position: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Means of a ``(T,)`` per-position curve over the bins ``[e_i, e_{i+1})``."""
    sums = np.add.reduceat(per_position, edges[:-1])
    return sums / np.diff(edges)
