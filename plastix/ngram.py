"""Count-based character n-gram baselines for next-character prediction.

A plastic network that reads a window of text from scratch and learns while it reads
should at least match a model that simply counts what it has read. This module gives
that yardstick, and a second one fitted on the whole training split (a prior, not a
learner). Data follow the ``text`` task of `plastix.tasks`: ``inputs`` and ``targets``
are int ``(B, T)`` with ``targets[:, t] = inputs[:, t+1]``, tokens in ``[0, V)``, and
every NLL is in nats per character (`plastix.tasks.bits_per_char` converts).

**Add-k (Laplace / Lidstone) smoothing.** An order-n model predicts the next character
``c`` from the ``n - 1`` characters before it, its context::

    p_k(c | ctx) = (n(ctx, c) + k) / (n(ctx) + k V),    n(ctx) = sum_c' n(ctx, c')

with ``k > 0`` (k = 1 is Laplace's rule; Chen & Goodman 1999, "An empirical study of
smoothing techniques for language modeling", section 2.1). Order 1 is the unigram (no
context), order 2 the bigram (context ``inputs[t]``), order 3 the trigram (context
``inputs[t-1], inputs[t]``).

**Jelinek-Mercer interpolation** (Jelinek & Mercer 1980; Chen & Goodman 1999, 2.3)
mixes the three orders linearly with fixed weights ``lambda`` (non-negative, sum 1)::

    p(c | ctx) = lambda_1 p_k1(c) + lambda_2 p_k2(c | x_t) + lambda_3 p_k3(c | x_{t-1}, x_t)

**Beginning context.** Where a context reaches before the start of the window (the
trigram at ``t = 0``), the missing character is the reserved symbol ``V``; every
context axis of a count table therefore has ``V + 1`` entries and the predicted axis
``V``: unigram ``(V,)``, bigram ``(V+1, V)``, trigram ``(V+1, V+1, V)``.

* Online models give that context its own counts, like any other. It occurs only at
  ``t = 0``, where every table is still empty, so it never changes a prediction (every
  order predicts ``1 / V`` at ``t = 0``).
* Fitted models back off: a window is cut at a random place of the text, so at ``t = 0``
  the earlier character is unknown rather than absent, and `fit_counts` fills the
  beginning row of an order-n table with the order-(n-1) counts of the same text
  (``n(BOS, a, c) = n(a, c)``, the trigram counts summed over the unknown character).
  The fitted trigram at ``t = 0`` is thus the fitted add-k bigram.

The two protocols:

* **online** (`online_ngram_nll`, `online_interpolated_nll`): counts start empty at the
  start of every window; after predicting position t the model adds the observed
  (context, target) to its counts, so its prediction at t uses only ``inputs[:t+1]``
  (and ``targets[:t]``, which are ``inputs[1:t+1]``). One ``lax.scan`` over time carries
  the tables; ``vmap`` runs the windows of a batch independently. The trigram table of
  V = 65 is 66 x 66 x 65 float32, 1.1 MB per window of the batch.
* **fitted** (`fit_counts`, `fitted_nll`, `fitted_interpolated_nll`): counts of the whole
  training split, read-only while the window is scored.

* **online, any order** (`online_counts`, `online_counted_probs`,
  `select_online_counted`): the same online models, their counts read off the earlier
  positions of the window that share the context, in NumPy: no table, so a 4-gram or
  longer context costs what the bigram does.

`select_online`, `select_online_counted` and `select_fitted` choose k for each order and
then the mixture weights on the validation split by mean NLL over all its positions.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

ORDERS = (1, 2, 3)
DEFAULT_K_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


@dataclasses.dataclass(frozen=True)
class NgramChoice:
    """Add-k constants and Jelinek-Mercer weights chosen on the validation split.

    Attributes:
      ks: add-k constant of the unigram, bigram, trigram (and higher orders, for
        `select_online_counted`), each the best of the grid for its own order alone.
      weights: interpolation weights of the orders, lowest first, at those ks.
      order_nll: validation mean NLL (nats) of each order alone at its k.
      nll: validation mean NLL (nats) of the chosen mixture.
    """

    ks: tuple[float, ...]
    weights: tuple[float, ...]
    order_nll: tuple[float, ...]
    nll: float


# ---------------------------------------------------------------- checks


def _concrete(x):
    """``x`` as a numpy array, or None under a JAX trace (then values cannot be checked)."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def _check_vocab_size(vocab_size) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
        raise ValueError(f"vocab_size must be an integer >= 1, got {vocab_size!r}")
    return int(vocab_size)


def _check_order(order) -> int:
    if isinstance(order, bool) or order not in ORDERS:
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    return int(order)


def _check_k(k, name: str = "k"):
    value = _concrete(k)
    if value is not None and (value.shape != () or not np.isfinite(value) or value <= 0):
        raise ValueError(f"{name} must be a finite number > 0, got {k!r}")
    return k


def _check_ks(ks):
    if len(ks) != len(ORDERS):
        raise ValueError(f"ks must give one k per order (3 numbers), got {ks!r}")
    for order, k in zip(ORDERS, ks):
        _check_k(k, f"k of order {order}")
    return jnp.asarray(ks, jnp.float32)


def _check_weights(weights):
    if len(weights) != len(ORDERS):
        raise ValueError(f"weights must give one weight per order (3 numbers), got {weights!r}")
    values = [_concrete(w) for w in weights]
    if all(v is not None for v in values):
        values = np.asarray(values, np.float64)
        if not np.all(np.isfinite(values)) or np.any(values < 0) or abs(values.sum() - 1) > 1e-6:
            raise ValueError(f"weights must be non-negative and sum to 1, got {weights!r}")
    return jnp.asarray(weights, jnp.float32)


def _check_tokens(name: str, tokens, vocab_size: int) -> None:
    if not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
        raise ValueError(f"{name} must be integer token ids, got dtype {jnp.result_type(tokens)}")
    values = _concrete(tokens)
    if values is not None and values.size and (values.min() < 0 or values.max() >= vocab_size):
        raise ValueError(f"{name} must lie in [0, {vocab_size}), got values in "
                         f"[{values.min()}, {values.max()}]")


def _check_windows(inputs, targets, vocab_size: int) -> None:
    in_shape, target_shape = jnp.shape(inputs), jnp.shape(targets)
    if len(in_shape) != 2 or in_shape != target_shape:
        raise ValueError(f"inputs and targets must have the same (batch, T) shape, got "
                         f"{in_shape} and {target_shape}")
    _check_tokens("inputs", inputs, vocab_size)
    _check_tokens("targets", targets, vocab_size)


def _table_shape(vocab_size: int, order: int) -> tuple[int, ...]:
    """Count table of an order-n model: ``n - 1`` context axes of ``V + 1`` (the extra
    entry is the beginning symbol ``V``) and the predicted character's axis of ``V``."""
    return (vocab_size + 1,) * (order - 1) + (vocab_size,)


def _check_counts(counts, order: int | None = None) -> int:
    """The vocabulary size of a table from `fit_counts` (of ``order`` when given)."""
    shape = jnp.shape(counts)
    if len(shape) not in ORDERS or (order is not None and len(shape) != order) \
            or shape != _table_shape(shape[-1], len(shape)):
        expected = "an order-1, 2 or 3 table" if order is None else f"an order-{order} table"
        raise ValueError(f"counts must be {expected} from fit_counts, shaped (V+1, ..., V), "
                         f"got shape {shape}")
    return shape[-1]


# ---------------------------------------------------------------- shared pieces


def _contexts(inputs, order: int, vocab_size: int) -> tuple:
    """Context characters of an order-n model at every position, earliest first: a tuple
    of ``n - 1`` int arrays shaped like ``inputs`` (``(..., T)``); entry ``j`` is
    ``inputs[..., t - (n - 2 - j)]``, or the beginning symbol ``V`` before the window."""
    length = inputs.shape[-1]
    contexts = []
    for lag in range(order - 2, -1, -1):
        pad = jnp.full(inputs.shape[:-1] + (lag,), vocab_size, inputs.dtype)
        contexts.append(jnp.concatenate([pad, inputs], axis=-1)[..., :length])
    return tuple(contexts)


def _add_k(count, total, k, vocab_size: int):
    """Add-k probability ``(n(ctx, c) + k) / (n(ctx) + k V)``."""
    return (count + k) / (total + k * vocab_size)


def _simplex_weights(step: float, n: int = 3) -> np.ndarray:
    """Every weight n-tuple on the simplex grid of spacing ``step`` (``1 / step`` must be
    an integer): ``(M, n)``, rows sum to 1."""
    if not (isinstance(step, (int, float)) and 0 < step <= 1):
        raise ValueError(f"weight_step must be in (0, 1], got {step!r}")
    parts = round(1 / step)
    if abs(parts * step - 1) > 1e-9:
        raise ValueError(f"weight_step must divide 1 into a whole number of steps, got {step!r}")
    rows = [row + (parts - sum(row),)
            for row in itertools.product(range(parts + 1), repeat=n - 1) if sum(row) <= parts]
    return np.asarray(rows, np.float64) / parts


def _select(target_probs_of_k: Callable, k_grid: Sequence[float], weight_step: float) -> NgramChoice:
    """Best k per order, then the best mixture of the orders at those ks.

    ``target_probs_of_k(k)`` gives the ``(B, T, n)`` probabilities of the targets under
    the n orders, all at add-k constant k: one evaluation per k serves every order,
    and every mixture is scored from the kept arrays without running a model again.
    """
    if len(k_grid) == 0:
        raise ValueError("k_grid must hold at least one k")
    for k in k_grid:
        _check_k(k, "every k of k_grid")
    best_nll, best_k, best_probs = None, None, None
    for k in k_grid:
        probs = np.asarray(target_probs_of_k(k), np.float64)
        probs = probs.reshape(-1, probs.shape[-1])
        nll = -np.mean(np.log(probs), axis=0)
        if best_nll is None:
            best_nll = np.full(len(nll), np.inf)
            best_k, best_probs = [None] * len(nll), [None] * len(nll)
        for i in range(len(nll)):
            if nll[i] < best_nll[i]:  # strict: ties keep the earlier (smaller) k of the grid
                best_nll[i], best_k[i], best_probs[i] = nll[i], float(k), probs[:, i]
    mixtures = _simplex_weights(weight_step, len(best_nll))
    mixed_nll = -np.mean(np.log(np.stack(best_probs, axis=1) @ mixtures.T), axis=0)
    best = int(np.argmin(mixed_nll))
    return NgramChoice(ks=tuple(best_k), weights=tuple(float(w) for w in mixtures[best]),
                       order_nll=tuple(float(v) for v in best_nll), nll=float(mixed_nll[best]))


# ---------------------------------------------------------------- online models


def _online_target_probs_one(inputs, targets, ks, vocab_size: int, orders: tuple[int, ...]):
    """One window: ``(T, len(orders))`` probabilities of its targets under online add-k
    models of ``orders``; ``ks[i]`` is the constant of ``orders[i]``."""
    contexts = tuple(_contexts(inputs, order, vocab_size) for order in orders)

    def step(tables, at_t):
        context_of, target = at_t
        probs, updated = [], []
        for table, context, k in zip(tables, context_of, ks):
            row = table[context]  # (V,) counts of the next character after this context
            prob = _add_k(row[target], jnp.sum(row), k, vocab_size)
            probs.append(prob)
            # Counted only after predicting, so position t never sees its own target. The
            # count added is 1 + 0 * prob rather than 1: depending on the prediction, the
            # write must follow the read, and XLA then updates the table in place instead
            # of copying it every step (30x faster for the V = 65 trigram on CPU).
            updated.append(table.at[context + (target,)].add(1.0 + 0.0 * prob))
        return tuple(updated), jnp.stack(probs)

    empty = tuple(jnp.zeros(_table_shape(vocab_size, order), jnp.float32) for order in orders)
    _, probs = jax.lax.scan(step, empty, (contexts, targets))
    return probs


@functools.partial(jax.jit, static_argnames=("vocab_size", "orders"))
def _online_target_probs(inputs, targets, ks, vocab_size: int, orders: tuple[int, ...]):
    """``(B, T, len(orders))``: `_online_target_probs_one` of every window."""
    per_window = functools.partial(_online_target_probs_one, ks=ks, vocab_size=vocab_size,
                                   orders=orders)
    return jax.vmap(per_window)(inputs, targets)


def online_target_probs(inputs, targets, vocab_size: int, ks):
    """Probabilities of every target under the online add-k unigram, bigram and trigram.

    The building block of the online models: one ``lax.scan`` per window carries the
    three count tables, which start empty at ``t = 0`` and take in (context, target)
    after position t is predicted.

    Args:
      inputs, targets: int ``(B, T)``, ``targets[:, t] = inputs[:, t+1]``, in ``[0, V)``.
      vocab_size: V.
      ks: add-k constants of orders 1, 2, 3 (each finite and > 0).

    Returns:
      float32 ``(B, T, 3)``; ``[..., n-1]`` is ``p_k(targets[:, t] | context)`` of order n.
    """
    vocab_size = _check_vocab_size(vocab_size)
    _check_windows(inputs, targets, vocab_size)
    return _online_target_probs(inputs, targets, _check_ks(ks), vocab_size, ORDERS)


def online_ngram_nll(inputs, targets, vocab_size: int, order: int, k):
    """Per-position NLL (nats) ``(B, T)`` of the online add-k n-gram of ``order``.

    ``-log p_k(targets[:, t] | context)`` with counts of ``inputs[:, :t+1]`` alone, reset
    for every window (see the module docstring). Only the table of ``order`` is carried.
    """
    vocab_size = _check_vocab_size(vocab_size)
    order = _check_order(order)
    _check_k(k)
    _check_windows(inputs, targets, vocab_size)
    ks = jnp.reshape(jnp.asarray(k, jnp.float32), (1,))
    return -jnp.log(_online_target_probs(inputs, targets, ks, vocab_size, (order,))[..., 0])


def online_interpolated_nll(inputs, targets, vocab_size: int, ks, weights):
    """Per-position NLL (nats) ``(B, T)`` of the Jelinek-Mercer mixture of the online
    add-k unigram, bigram and trigram: ``-log sum_n weights[n-1] p_{ks[n-1]}``."""
    weights = _check_weights(weights)
    return -jnp.log(online_target_probs(inputs, targets, vocab_size, ks) @ weights)


def select_online(valid_inputs, valid_targets, vocab_size: int,
                  k_grid: Sequence[float] = DEFAULT_K_GRID, weight_step: float = 0.1) -> NgramChoice:
    """k of each online order and the interpolation weights, by validation mean NLL.

    Each order takes the k of ``k_grid`` that minimises its own mean NLL over all
    positions of the validation windows; the weights are then the best point of the
    simplex grid of spacing ``weight_step`` for the three orders at those ks.
    """
    vocab_size = _check_vocab_size(vocab_size)
    _check_windows(valid_inputs, valid_targets, vocab_size)

    def target_probs_of_k(k):
        ks = jnp.full((len(ORDERS),), k, jnp.float32)
        return _online_target_probs(valid_inputs, valid_targets, ks, vocab_size, ORDERS)

    return _select(target_probs_of_k, k_grid, weight_step)


# ---------------------------------------------------------------- online models of any order


def _check_any_order(order, name: str) -> None:
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {order!r}")


def _renumber(keys: np.ndarray) -> np.ndarray:
    """``keys`` as 0, 1, ... in order of value: the same partition of the positions."""
    return np.unique(keys, return_inverse=True)[1].reshape(keys.shape)


def _earlier_occurrences(keys: np.ndarray) -> np.ndarray:
    """For every position of ``keys (B, T)`` (non-negative), how often its key occurred
    earlier in its own window."""
    batch, length = keys.shape
    flat = (np.arange(batch)[:, None] * (int(keys.max(initial=0)) + 1) + keys).ravel()
    by_key = np.argsort(flat, kind="stable")  # stable: each key's positions in time order
    sorted_keys = flat[by_key]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    first_of_key = np.repeat(starts, np.diff(np.r_[starts, flat.size]))
    earlier = np.empty(flat.size, np.int64)
    earlier[by_key] = np.arange(flat.size) - first_of_key
    return earlier.reshape(batch, length)


def online_counts(inputs, targets, vocab_size: int, order: int):
    """``(n(ctx, c), n(ctx))``, int ``(B, T)`` each: what the online order-n model of a
    window has counted when it predicts position t, its target ``c = targets[:, t]``
    after the context ``inputs[:, t-n+2 .. t]`` (the beginning symbol ``V`` before the
    window).

    Any order ``n >= 1``: the counts are read off the earlier positions of the window
    that share the context (and the target), so no ``(V+1)^(n-1) V`` table is kept. For
    orders 1-3 they are the counts that `online_target_probs`'s tables hold.
    """
    vocab_size = _check_vocab_size(vocab_size)
    _check_any_order(order, "order")
    _check_windows(inputs, targets, vocab_size)
    inputs, targets = np.asarray(inputs, np.int64), np.asarray(targets, np.int64)
    batch, length = inputs.shape
    context = np.zeros((batch, length), np.int64)
    for lag in range(order - 1):
        back = np.concatenate([np.full((batch, min(lag, length)), vocab_size),
                               inputs[:, :length - lag]], axis=1)
        # Renumbered after every character, so the key stays small at any order.
        context = _renumber(context * (vocab_size + 1) + back)
    return _earlier_occurrences(context * vocab_size + targets), _earlier_occurrences(context)


def online_counted_probs(inputs, targets, vocab_size: int, ks):
    """``(B, T, n)`` float64: probabilities of every target under the online add-k models
    of orders ``1 .. n = len(ks)`` (``ks[i]`` the constant of order ``i + 1``), from
    `online_counts`; orders 1-3 give the numbers of `online_target_probs`."""
    if len(ks) < 1:
        raise ValueError("ks must give one k per order (at least one number)")
    for order, k in enumerate(ks, start=1):
        _check_k(k, f"k of order {order}")
    return np.stack([_add_k(*online_counts(inputs, targets, vocab_size, order), float(k),
                            vocab_size) for order, k in enumerate(ks, start=1)], axis=-1)


def select_online_counted(valid_inputs, valid_targets, vocab_size: int, max_order: int,
                          k_grid: Sequence[float] = DEFAULT_K_GRID,
                          weight_step: float = 0.1) -> NgramChoice:
    """`select_online` for the Jelinek-Mercer mixture of online orders ``1 .. max_order``
    (any order, by `online_counts`): the k of each order, then the weights on the simplex
    grid of spacing ``weight_step``."""
    _check_any_order(max_order, "max_order")
    counts = [online_counts(valid_inputs, valid_targets, vocab_size, order)
              for order in range(1, max_order + 1)]

    def target_probs_of_k(k):
        return np.stack([_add_k(count, total, k, vocab_size) for count, total in counts],
                        axis=-1)

    return _select(target_probs_of_k, k_grid, weight_step)


# ---------------------------------------------------------------- fitted models


def fit_counts(tokens_1d, vocab_size: int, order: int) -> np.ndarray:
    """Count table of every order-n n-gram of a training text.

    ``table[c_1, ..., c_{n-1}, c]`` counts the positions where ``c`` follows the context
    ``c_1 ... c_{n-1}``. The beginning row ``table[V]`` (earlier character unknown) holds
    the order-(n-1) table of the same text, so the fitted models back off one order at
    the start of a window (see the module docstring).

    Args:
      tokens_1d: int ``(N,)`` in ``[0, V)``, the whole training split.
      vocab_size: V.
      order: 1, 2 or 3.

    Returns:
      float32 numpy array shaped ``(V+1,) * (order-1) + (V,)``.
    """
    vocab_size = _check_vocab_size(vocab_size)
    order = _check_order(order)
    tokens = np.asarray(tokens_1d)
    if tokens.ndim != 1:
        raise ValueError(f"tokens_1d must be one sequence (1-D), got shape {tokens.shape}")
    _check_tokens("tokens_1d", tokens, vocab_size)
    tokens = tokens.astype(np.int64)
    shape = _table_shape(vocab_size, order)
    # Position i of the text with its n-1 predecessors, for every i that has them all.
    grams = [tokens[j:len(tokens) - order + 1 + j] for j in range(order)]
    flat = np.ravel_multi_index(grams, shape) if len(grams[0]) else np.zeros(0, np.int64)
    table = np.bincount(flat, minlength=math.prod(shape)).reshape(shape).astype(np.float32)
    if order > 1:
        table[vocab_size] = fit_counts(tokens, vocab_size, order - 1)
    return table


def fit_counts_by_order(tokens_1d, vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`fit_counts` of orders 1, 2 and 3: the tables the interpolated fitted model reads."""
    return tuple(fit_counts(tokens_1d, vocab_size, order) for order in ORDERS)


@jax.jit
def _fitted_target_probs(tables, inputs, targets, ks):
    """``(B, T, len(tables))``: add-k probabilities of the targets under static tables."""
    probs = []
    for table, k in zip(tables, ks):
        vocab_size = table.shape[-1]
        context = _contexts(inputs, table.ndim, vocab_size)
        totals = jnp.sum(table, axis=-1)
        probs.append(_add_k(table[context + (targets,)], totals[context], k, vocab_size))
    return jnp.stack(probs, axis=-1)


def _check_counts_by_order(counts_by_order) -> tuple:
    """The three tables of `fit_counts_by_order` as float32 arrays, after checking them."""
    if len(counts_by_order) != len(ORDERS):
        raise ValueError(f"counts_by_order must hold the orders 1, 2, 3 tables, got "
                         f"{len(counts_by_order)} tables")
    vocab_sizes = {_check_counts(table, order) for order, table in zip(ORDERS, counts_by_order)}
    if len(vocab_sizes) != 1:
        raise ValueError(f"counts_by_order must share one vocabulary, got sizes {sorted(vocab_sizes)}")
    return tuple(jnp.asarray(table, jnp.float32) for table in counts_by_order)


def fitted_target_probs(counts_by_order, inputs, targets, ks):
    """Probabilities ``(B, T, 3)`` of every target under the fitted add-k unigram, bigram
    and trigram (tables from `fit_counts_by_order`; ``ks`` one constant per order)."""
    tables = _check_counts_by_order(counts_by_order)
    _check_windows(inputs, targets, tables[0].shape[-1])
    return _fitted_target_probs(tables, inputs, targets, _check_ks(ks))


def fitted_nll(counts, inputs, targets, k):
    """Per-position NLL (nats) ``(B, T)`` of the static add-k model of one `fit_counts`
    table (its order is the table's rank): no counts change while the window is read."""
    _check_windows(inputs, targets, _check_counts(counts))
    _check_k(k)
    ks = jnp.reshape(jnp.asarray(k, jnp.float32), (1,))
    return -jnp.log(_fitted_target_probs((jnp.asarray(counts, jnp.float32),), inputs, targets, ks)[..., 0])


def fitted_interpolated_nll(counts_by_order, inputs, targets, ks, weights):
    """Per-position NLL (nats) ``(B, T)`` of the Jelinek-Mercer mixture of the fitted add-k
    unigram, bigram and trigram."""
    weights = _check_weights(weights)
    return -jnp.log(fitted_target_probs(counts_by_order, inputs, targets, ks) @ weights)


def select_fitted(counts_by_order, valid_inputs, valid_targets,
                  k_grid: Sequence[float] = DEFAULT_K_GRID, weight_step: float = 0.1) -> NgramChoice:
    """k of each fitted order and the interpolation weights, chosen on the validation
    windows exactly as `select_online` does."""
    tables = _check_counts_by_order(counts_by_order)
    _check_windows(valid_inputs, valid_targets, tables[0].shape[-1])

    def target_probs_of_k(k):
        ks = jnp.full((len(ORDERS),), k, jnp.float32)
        return _fitted_target_probs(tables, valid_inputs, valid_targets, ks)

    return _select(target_probs_of_k, k_grid, weight_step)
