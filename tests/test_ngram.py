"""Tests of plastix.ngram: online and fitted add-k n-grams, their mixture, selection, errors."""

import collections
from fractions import Fraction as F

import jax
import numpy as np
import pytest

from plastix import ngram

A, B, C = 0, 1, 2  # the three characters of the hand-worked examples (V = 3)
BOS = "^"  # beginning of the window in the reference loops (never a token id)


def windows_of(sequences):
    """inputs, targets of windows given as whole sequences (targets = next character)."""
    sequences = np.asarray(sequences, np.int32)
    return sequences[:, :-1], sequences[:, 1:]


def random_windows(seed, batch, length, vocab_size):
    return windows_of(np.random.default_rng(seed).integers(0, vocab_size, (batch, length + 1)))


def reference_online_probs(sequence, vocab_size, order, k):
    """Online add-k probability of each next character, by counting in a Python loop."""
    pair_counts, context_counts = collections.Counter(), collections.Counter()
    probs = []
    for t in range(len(sequence) - 1):
        history = [BOS] * (order - 1) + list(sequence[:t + 1])
        context = tuple(history[len(history) - (order - 1):])
        target = sequence[t + 1]
        probs.append((pair_counts[context, target] + k) / (context_counts[context] + k * vocab_size))
        pair_counts[context, target] += 1
        context_counts[context] += 1
    return probs


def reference_fitted_probs(train, sequence, vocab_size, order, k):
    """Fitted add-k probabilities; where the window is too short for the context, the
    model of the longest context it has (the back-off of `ngram.fit_counts`)."""
    def counts_of(n):
        counts = collections.defaultdict(collections.Counter)
        for i in range(n - 1, len(train)):
            counts[tuple(train[i - n + 1:i])][train[i]] += 1
        return counts

    counts_by_order = {n: counts_of(n) for n in range(1, order + 1)}
    probs = []
    for t in range(len(sequence) - 1):
        context = tuple(sequence[max(0, t + 2 - order):t + 1])
        row = counts_by_order[len(context) + 1][context]
        probs.append((row[sequence[t + 1]] + k) / (sum(row.values()) + k * vocab_size))
    return probs


def as_floats(fractions):
    return np.asarray([float(f) for f in fractions])


# ---------------------------------------------------------------- online models

# "abacaba" read online with k = 1/2, V = 3 (k V = 3/2). Positions t = 0..5 predict
# b a c a b a after reading a, ab, aba, abac, abaca, abacab.
HAND_WINDOW = [A, B, A, C, A, B, A]
HAND_K = 0.5
HAND_ONLINE = {
    # counts of the targets so far: {}, {b}, {a,b}, {a,b,c}, {2a,b,c}, {2a,2b,c}
    1: [F(1, 3), F(1, 5), F(1, 7), F(3, 9), F(3, 11), F(5, 13)],
    # context inputs[t] = a, b, a, c, a, b; seen before: -, -, a->b, -, a->b a->c, b->a
    2: [F(1, 3), F(1, 3), F(1, 5), F(1, 3), F(3, 7), F(3, 5)],
    # contexts ^a, ab, ba, ac, ca, ab: only the last was seen before (ab -> a at t = 1)
    3: [F(1, 3), F(1, 3), F(1, 3), F(1, 3), F(1, 3), F(3, 5)],
}


@pytest.mark.parametrize("order", ngram.ORDERS)
def test_online_matches_hand_computed_probabilities(order):
    inputs, targets = windows_of([HAND_WINDOW])
    nll = ngram.online_ngram_nll(inputs, targets, 3, order, HAND_K)
    np.testing.assert_allclose(np.exp(-np.asarray(nll[0])), as_floats(HAND_ONLINE[order]), rtol=1e-6)


def test_online_target_probs_gives_the_three_orders_at_their_own_k():
    inputs, targets = windows_of([HAND_WINDOW])
    probs = np.asarray(ngram.online_target_probs(inputs, targets, 3, (HAND_K,) * 3))
    for order in ngram.ORDERS:
        np.testing.assert_allclose(probs[0, :, order - 1], as_floats(HAND_ONLINE[order]), rtol=1e-6)
    ks = (0.25, 1.0, 2.0)
    probs = np.asarray(ngram.online_target_probs(inputs, targets, 3, ks))
    for order, k in zip(ngram.ORDERS, ks):
        np.testing.assert_allclose(probs[0, :, order - 1],
                                   reference_online_probs(HAND_WINDOW, 3, order, k), rtol=1e-6)


def test_online_interpolation_of_hand_example():
    inputs, targets = windows_of([HAND_WINDOW])
    weights = (0.2, 0.3, 0.5)
    mixed = sum(w * as_floats(HAND_ONLINE[order]) for w, order in zip(weights, ngram.ORDERS))
    nll = ngram.online_interpolated_nll(inputs, targets, 3, (HAND_K,) * 3, weights)
    np.testing.assert_allclose(np.asarray(nll[0]), -np.log(mixed), rtol=1e-6)


@pytest.mark.parametrize("order", ngram.ORDERS)
def test_online_nll_matches_reference_loop(order):
    vocab_size, k = 3, 0.3
    inputs, targets = random_windows(seed=order, batch=3, length=40, vocab_size=vocab_size)
    nll = np.asarray(ngram.online_ngram_nll(inputs, targets, vocab_size, order, k))
    for row in range(inputs.shape[0]):
        sequence = list(inputs[row]) + [targets[row, -1]]
        expected = -np.log(reference_online_probs(sequence, vocab_size, order, k))
        np.testing.assert_allclose(nll[row], expected, rtol=1e-5)


def test_online_windows_are_independent():
    inputs, targets = random_windows(seed=7, batch=2, length=40, vocab_size=3)
    ks, weights = (0.1, 0.3, 0.01), (0.2, 0.3, 0.5)
    together = np.asarray(ngram.online_interpolated_nll(inputs, targets, 3, ks, weights))
    for row in range(2):
        alone = ngram.online_interpolated_nll(inputs[row:row + 1], targets[row:row + 1], 3, ks, weights)
        np.testing.assert_allclose(together[row], np.asarray(alone[0]), rtol=1e-6)
    # A window repeated is scored the same both times: nothing carries over between them.
    repeated = np.asarray(ngram.online_interpolated_nll(inputs[[0, 0]], targets[[0, 0]], 3, ks, weights))
    np.testing.assert_allclose(repeated[0], repeated[1], rtol=0)


@pytest.mark.parametrize("order", ngram.ORDERS)
def test_online_interpolation_with_one_weight_is_that_order(order):
    inputs, targets = random_windows(seed=3, batch=2, length=40, vocab_size=3)
    ks = (0.1, 0.3, 0.01)
    weights = tuple(float(n == order) for n in ngram.ORDERS)
    mixed = ngram.online_interpolated_nll(inputs, targets, 3, ks, weights)
    alone = ngram.online_ngram_nll(inputs, targets, 3, order, ks[order - 1])
    np.testing.assert_allclose(np.asarray(mixed), np.asarray(alone), rtol=1e-6)


def test_online_nll_is_jittable_with_traced_k():
    inputs, targets = windows_of([HAND_WINDOW])
    jitted = jax.jit(ngram.online_ngram_nll, static_argnums=(2, 3))
    np.testing.assert_allclose(np.asarray(jitted(inputs, targets, 3, 2, HAND_K)),
                               np.asarray(ngram.online_ngram_nll(inputs, targets, 3, 2, HAND_K)),
                               rtol=1e-6)


def repeating_windows(pattern, batch, length, seed=0):
    """Windows of ``pattern`` repeated, each starting at a random phase."""
    starts = np.random.default_rng(seed).integers(0, len(pattern), batch)
    return windows_of([[pattern[(s + t) % len(pattern)] for t in range(length + 1)] for s in starts])


def test_select_online_weights_trigram_with_small_k_on_a_repeating_text():
    # "aab" repeated: after a the next character is a or b, after aa, ab, ba it is fixed,
    # so the trigram is deterministic once it has seen each context once.
    inputs, targets = repeating_windows([A, A, B], batch=4, length=30)
    choice = ngram.select_online(inputs, targets, 3)
    assert choice.ks[2] == min(ngram.DEFAULT_K_GRID)
    assert choice.weights == (0.0, 0.0, 1.0)
    assert choice.nll == pytest.approx(choice.order_nll[2])
    assert choice.order_nll[2] < choice.order_nll[1] < choice.order_nll[0]
    # The reported NLL is the one the chosen model gives.
    nll = ngram.online_interpolated_nll(inputs, targets, 3, choice.ks, choice.weights)
    np.testing.assert_allclose(float(np.mean(nll)), choice.nll, rtol=1e-5)


def test_select_online_prefers_large_k_on_uniform_noise():
    # On i.i.d. uniform characters every count is noise, so the most smoothing wins.
    inputs, targets = random_windows(seed=11, batch=8, length=30, vocab_size=3)
    choice = ngram.select_online(inputs, targets, 3, k_grid=(0.01, 1.0), weight_step=0.5)
    assert choice.ks == (1.0, 1.0, 1.0)
    assert choice.weights in {(a / 2, b / 2, 1 - (a + b) / 2) for a in range(3) for b in range(3 - a)}
    assert choice.nll <= min(choice.order_nll) + 1e-9


# ---------------------------------------------------------------- online models of any order


def test_counted_probs_are_the_table_models_at_orders_one_to_three():
    inputs, targets = random_windows(seed=5, batch=4, length=60, vocab_size=4)
    ks = (0.1, 0.3, 0.01)
    np.testing.assert_allclose(ngram.online_counted_probs(inputs, targets, 4, ks),
                               np.asarray(ngram.online_target_probs(inputs, targets, 4, ks)),
                               rtol=1e-6)
    inputs, targets = windows_of([HAND_WINDOW])
    probs = ngram.online_counted_probs(inputs, targets, 3, (HAND_K,) * 3)
    for order in ngram.ORDERS:
        np.testing.assert_allclose(probs[0, :, order - 1], as_floats(HAND_ONLINE[order]))


@pytest.mark.parametrize("order", [4, 6])
def test_counted_probs_of_longer_contexts_match_reference_loop(order):
    vocab_size, k = 2, 0.2  # two characters: contexts of 3 and 5 repeat within 50 steps
    inputs, targets = random_windows(seed=order, batch=3, length=50, vocab_size=vocab_size)
    probs = ngram.online_counted_probs(inputs, targets, vocab_size, (1.0,) * (order - 1) + (k,))
    for row in range(inputs.shape[0]):
        sequence = list(inputs[row]) + [targets[row, -1]]
        np.testing.assert_allclose(probs[row, :, -1],
                                   reference_online_probs(sequence, vocab_size, order, k))
    # Windows never share counts: a window alone gets the numbers it gets in the batch.
    alone = ngram.online_counted_probs(inputs[1:2], targets[1:2], vocab_size, (k,) * order)
    together = ngram.online_counted_probs(inputs, targets, vocab_size, (k,) * order)
    np.testing.assert_array_equal(alone[0], together[1])


def test_select_online_counted_is_select_online_at_order_three_and_goes_further():
    inputs, targets = random_windows(seed=2, batch=6, length=40, vocab_size=3)
    table, counted = (ngram.select_online(inputs, targets, 3),
                      ngram.select_online_counted(inputs, targets, 3, max_order=3))
    assert (counted.ks, counted.weights) == (table.ks, table.weights)
    assert counted.nll == pytest.approx(table.nll, rel=1e-5)
    # "aaab" repeated: the trigram cannot tell the a after "aa" (a or b), the 4-gram can.
    inputs, targets = repeating_windows([A, A, A, B], batch=4, length=40)
    choice = ngram.select_online_counted(inputs, targets, 3, max_order=4)
    assert len(choice.ks) == len(choice.weights) == 4
    assert choice.weights == (0.0, 0.0, 0.0, 1.0)
    assert choice.order_nll[3] < choice.order_nll[2]


# ---------------------------------------------------------------- fitted models

HAND_TRAIN = [A, B, A, C, A, B, A]  # "abacaba"


def test_fit_counts_of_hand_example():
    unigram, bigram, trigram = ngram.fit_counts_by_order(HAND_TRAIN, 3)
    np.testing.assert_array_equal(unigram, [4, 2, 1])  # a a a a, b b, c
    assert bigram.shape == (4, 3) and trigram.shape == (4, 4, 3)
    expected_bigram = np.zeros((4, 3))
    expected_bigram[A, B] = 2  # ab twice
    expected_bigram[B, A] = 2  # ba twice
    expected_bigram[A, C] = 1
    expected_bigram[C, A] = 1
    expected_bigram[3] = [4, 2, 1]  # beginning row: the unigram counts
    np.testing.assert_array_equal(bigram, expected_bigram)
    expected_trigram = np.zeros((4, 4, 3))
    expected_trigram[A, B, A] = 2  # aba twice
    expected_trigram[B, A, C] = 1
    expected_trigram[A, C, A] = 1
    expected_trigram[C, A, B] = 1
    expected_trigram[3] = expected_bigram  # beginning row: the bigram table
    np.testing.assert_array_equal(trigram, expected_trigram)
    assert trigram.dtype == np.float32
    np.testing.assert_array_equal(ngram.fit_counts(HAND_TRAIN, 3, 3), trigram)


# Window "bac" (inputs b a, targets a c) under counts of "abacaba", k = 1/2, k V = 3/2.
HAND_FITTED = {
    1: [F(9, 17), F(3, 17)],  # n(a) = 4, n(c) = 1 of 7
    2: [F(5, 7), F(1, 3)],  # b -> a: 2 of 2; a -> c: 1 of 3
    3: [F(5, 7), F(3, 5)],  # ^b backs off to b -> a; ba -> c: 1 of 1
}


@pytest.mark.parametrize("order", ngram.ORDERS)
def test_fitted_nll_of_hand_example(order):
    inputs, targets = windows_of([[B, A, C]])
    counts = ngram.fit_counts(HAND_TRAIN, 3, order)
    nll = ngram.fitted_nll(counts, inputs, targets, HAND_K)
    np.testing.assert_allclose(np.exp(-np.asarray(nll[0])), as_floats(HAND_FITTED[order]), rtol=1e-6)


@pytest.mark.parametrize("order", ngram.ORDERS)
def test_fitted_nll_matches_reference_loop(order):
    vocab_size, k = 4, 0.2
    train = list(np.random.default_rng(0).integers(0, vocab_size, 300))
    inputs, targets = random_windows(seed=order, batch=3, length=20, vocab_size=vocab_size)
    nll = np.asarray(ngram.fitted_nll(ngram.fit_counts(train, vocab_size, order), inputs, targets, k))
    for row in range(inputs.shape[0]):
        sequence = list(inputs[row]) + [targets[row, -1]]
        expected = -np.log(reference_fitted_probs(train, sequence, vocab_size, order, k))
        np.testing.assert_allclose(nll[row], expected, rtol=1e-5)


def test_fitted_interpolation_with_one_weight_is_that_order_and_mixes_linearly():
    counts = ngram.fit_counts_by_order(HAND_TRAIN, 3)
    inputs, targets = windows_of([[B, A, C]])
    ks = (HAND_K,) * 3
    for order in ngram.ORDERS:
        weights = tuple(float(n == order) for n in ngram.ORDERS)
        np.testing.assert_allclose(
            np.asarray(ngram.fitted_interpolated_nll(counts, inputs, targets, ks, weights)),
            np.asarray(ngram.fitted_nll(counts[order - 1], inputs, targets, HAND_K)), rtol=1e-6)
    weights = (0.2, 0.3, 0.5)
    mixed = sum(w * as_floats(HAND_FITTED[order]) for w, order in zip(weights, ngram.ORDERS))
    nll = ngram.fitted_interpolated_nll(counts, inputs, targets, ks, weights)
    np.testing.assert_allclose(np.asarray(nll[0]), -np.log(mixed), rtol=1e-6)


def test_select_fitted_weights_trigram_with_small_k_on_a_repeating_text():
    train = [A, A, B] * 50
    counts = ngram.fit_counts_by_order(train, 3)
    inputs, targets = repeating_windows([A, A, B], batch=4, length=20, seed=1)
    choice = ngram.select_fitted(counts, inputs, targets)
    assert choice.ks[2] == min(ngram.DEFAULT_K_GRID)
    assert choice.weights == (0.0, 0.0, 1.0)
    nll = ngram.fitted_interpolated_nll(counts, inputs, targets, choice.ks, choice.weights)
    np.testing.assert_allclose(float(np.mean(nll)), choice.nll, rtol=1e-5)


# ---------------------------------------------------------------- errors

GOOD_INPUTS, GOOD_TARGETS = windows_of([HAND_WINDOW])


@pytest.mark.parametrize("call, match", [
    (lambda: ngram.online_ngram_nll(GOOD_INPUTS, GOOD_TARGETS, 3, 4, 0.5), "order must be 1, 2 or 3"),
    (lambda: ngram.fit_counts(HAND_TRAIN, 3, 0), "order must be 1, 2 or 3"),
    (lambda: ngram.online_ngram_nll(GOOD_INPUTS, GOOD_TARGETS, 3, 2, 0.0), "k must be a finite number > 0"),
    (lambda: ngram.online_ngram_nll(GOOD_INPUTS, GOOD_TARGETS, 3, 2, float("nan")),
     "k must be a finite number > 0"),
    (lambda: ngram.fitted_nll(ngram.fit_counts(HAND_TRAIN, 3, 2), GOOD_INPUTS, GOOD_TARGETS, -1.0),
     "k must be a finite number > 0"),
    (lambda: ngram.online_target_probs(GOOD_INPUTS, GOOD_TARGETS, 3, (0.1, float("inf"), 0.1)),
     "k of order 2 must be a finite number > 0"),
    (lambda: ngram.online_target_probs(GOOD_INPUTS, GOOD_TARGETS, 3, (0.1, 0.1)), "one k per order"),
    (lambda: ngram.online_interpolated_nll(GOOD_INPUTS, GOOD_TARGETS, 3, (0.1,) * 3, (0.5, 0.5, 0.5)),
     "weights must be non-negative and sum to 1"),
    (lambda: ngram.online_interpolated_nll(GOOD_INPUTS, GOOD_TARGETS, 3, (0.1,) * 3, (1.5, -0.5, 0.0)),
     "weights must be non-negative and sum to 1"),
    (lambda: ngram.online_interpolated_nll(GOOD_INPUTS, GOOD_TARGETS, 3, (0.1,) * 3, (1.0, 0.0)),
     "one weight per order"),
    (lambda: ngram.online_ngram_nll(GOOD_INPUTS, GOOD_TARGETS + 1, 3, 2, 0.5), r"targets must lie in \[0, 3\)"),
    (lambda: ngram.online_ngram_nll(GOOD_INPUTS - 1, GOOD_TARGETS, 3, 2, 0.5), r"inputs must lie in \[0, 3\)"),
    (lambda: ngram.fit_counts([0, 1, 3], 3, 2), r"tokens_1d must lie in \[0, 3\)"),
    (lambda: ngram.fit_counts([[0, 1]], 3, 2), "tokens_1d must be one sequence"),
    (lambda: ngram.online_ngram_nll(GOOD_INPUTS, GOOD_TARGETS[:, 1:], 3, 2, 0.5),
     "inputs and targets must have the same"),
    (lambda: ngram.online_ngram_nll(GOOD_INPUTS[0], GOOD_TARGETS[0], 3, 2, 0.5),
     "inputs and targets must have the same"),
    (lambda: ngram.online_ngram_nll(GOOD_INPUTS * 1.0, GOOD_TARGETS, 3, 2, 0.5), "integer token ids"),
    (lambda: ngram.fitted_nll(np.zeros((3, 3)), GOOD_INPUTS, GOOD_TARGETS, 0.5), "counts must be"),
    (lambda: ngram.fitted_target_probs(ngram.fit_counts_by_order(HAND_TRAIN, 3)[:2], GOOD_INPUTS,
                                       GOOD_TARGETS, (0.1,) * 3), "counts_by_order must hold"),
    (lambda: ngram.fitted_target_probs(ngram.fit_counts_by_order(HAND_TRAIN, 3)[::-1], GOOD_INPUTS,
                                       GOOD_TARGETS, (0.1,) * 3), "counts must be an order-1 table"),
    (lambda: ngram.online_ngram_nll(GOOD_INPUTS, GOOD_TARGETS, 0, 2, 0.5), "vocab_size must be"),
    (lambda: ngram.select_online(GOOD_INPUTS, GOOD_TARGETS, 3, weight_step=0.3), "weight_step must divide"),
    (lambda: ngram.select_online(GOOD_INPUTS, GOOD_TARGETS, 3, k_grid=()), "k_grid must hold"),
    (lambda: ngram.select_online(GOOD_INPUTS, GOOD_TARGETS, 3, k_grid=(0.1, 0.0)),
     "every k of k_grid must be a finite number > 0"),
    (lambda: ngram.online_counts(GOOD_INPUTS, GOOD_TARGETS, 3, 0), "order must be an integer >= 1"),
    (lambda: ngram.online_counts(GOOD_INPUTS, GOOD_TARGETS + 1, 3, 4), r"targets must lie in \[0, 3\)"),
    (lambda: ngram.online_counted_probs(GOOD_INPUTS, GOOD_TARGETS, 3, ()), "one k per order"),
    (lambda: ngram.online_counted_probs(GOOD_INPUTS, GOOD_TARGETS, 3, (0.1, -1.0)),
     "k of order 2 must be a finite number > 0"),
    (lambda: ngram.select_online_counted(GOOD_INPUTS, GOOD_TARGETS, 3, max_order=0),
     "max_order must be an integer >= 1"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()
