"""Sequence tasks and corpora, sampled on the device.

A task is a frozen description of what fixes array shapes (vocabulary size, sequence
length) plus one pure, jitted function::

    inputs, targets, mask = task.sample(key, batch, split="train")

``inputs`` and ``targets`` are int32 ``(batch, T)``; ``targets[:, t]`` is the token the
model must predict after reading ``inputs[:, :t+1]``; ``mask`` is float32 ``(batch, T)``,
1.0 where a prediction is scored (only the answer for recall tasks, every next character
for text). Unscored targets are 0 and mean nothing.

Every task is built from one per-sequence sampler ``sample_one(key, split)``; the batch
is ``vmap`` of it over ``batch`` keys inside one ``jit``. Corpora and fixed data sets are
put on the device once when the task is built and windows or rows are cut inside ``jit``
at random offsets, so sampling does no host work.

Held-out splits:

* Every task folds the split's index into the key (``fold_in(key, 0|1|2)``), so one key
  gives unrelated train, valid and test batches.
* Generated tasks ("assoc_retrieval", "mqar", "recall_overwrite", "copy") sample fresh
  sequences by default; the three splits are then independent streams of the same
  generator (i.i.d. held-out data, not guaranteed disjoint from training data).
  With ``split_sizes=(n_train, n_valid, n_test)`` they instead use fixed data sets drawn
  once from ``seed``, de-duplicated and cut in order, so the splits are disjoint by
  construction (``BA2016_SPLIT_SIZES`` gives the paper's 100k/10k/20k).
* "text" and "pixels" have real splits: TFDS's cut points for text, TFDS's or a seeded
  partition's for images ("pixels", "images"); "images" can also cut its train and valid
  images into cross-validation folds.

One task is not a token sequence: "images" classifies images whose inputs are float32
pixel intensities ``(batch, 1, pixels)`` (one step, T = 1) and whose targets are class ids.

Example::

    task = tasks.get("assoc_retrieval", num_pairs=4)
    inputs, targets, mask = task.sample(jax.random.key(0), 32)
    tasks.decode(task, inputs[0])       # e.g. 'c9k8j3f1??c'; its answer is targets[0, -1]
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import math
import os
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from plastix import checks

SPLITS = ("train", "valid", "test")
BA2016_SPLIT_SIZES = (100_000, 10_000, 20_000)

# TFDS names its held-out split "validation"; plastix calls it "valid".
_TFDS_SPLIT_NAMES = {"train": "train", "valid": "validation", "test": "test"}

# Shared alphabet of the letter/digit recall tasks (Ba et al. 2016): 26 + 10 + 1 = 37.
LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
QUERY_MARK = "?"
_RECALL_SYMBOLS = tuple(LETTERS + DIGITS + QUERY_MARK)
_FIRST_DIGIT = len(LETTERS)
_QUERY_ID = len(LETTERS) + len(DIGITS)

# Shown for characters that never occur in the training text; always its own token id.
UNKNOWN_CHAR = "\ufffd"


class Task(NamedTuple):
    """A sequence task: static shapes plus a pure, jitted batch sampler.

    Attributes:
      name: registry name of the task.
      vocab_size: number of token ids; inputs and targets lie in ``[0, vocab_size)``.
      seq_len: length T of inputs, targets and mask.
      sample: ``sample(key, batch, split="train") -> (inputs, targets, mask)``,
        jitted with ``batch`` and ``split`` static.
      symbols: printable name of every token id (``len(symbols) == vocab_size``),
        for ``decode`` / ``encode``.
      input_size: for a task that feeds vectors, ``inputs`` are float32 ``(B, T,
        input_size)`` and ``vocab_size`` counts the classes of ``targets``; None for a
        task of token ids.
    """

    name: str
    vocab_size: int
    seq_len: int
    sample: Callable
    symbols: tuple[str, ...]
    input_size: int | None = None


# ------------------------------------------------------------------ optional packages


def _optional_import(module: str, package: str, feature: str, extra: str):
    """``module``, which only ``feature`` needs (imported here, so that ``import plastix``
    works without it); without ``package``, one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise checks.MissingDependency(f"{feature} needs {package}: "
                                       f"pip install 'plastix[{extra}]'") from err


def _tfds(feature: str):
    return _optional_import("tensorflow_datasets", "tensorflow-datasets", feature, "tfds")


# --------------------------------------------------------------------------- batching


def _check_split(split: str) -> int:
    """Index of ``split`` in ``SPLITS``; ValueError for anything else."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return SPLITS.index(split)


def _batched(sample_one: Callable) -> Callable:
    """Turns ``sample_one(key, split) -> (inputs, targets, mask)`` of one sequence into
    the jitted ``sample(key, batch, split)`` of a Task.

    The split's index is folded into the key first, so the same key draws unrelated
    sequences for different splits.
    """

    def sample(key, batch, split="train"):
        # An empty batch would score as a NaN mean, or as 0 where a caller sums.
        checks.SIZE.check("batch", batch)
        split_key = jax.random.fold_in(key, _check_split(split))
        keys = jax.random.split(split_key, batch)
        return jax.vmap(lambda k: sample_one(k, split))(keys)

    return jax.jit(sample, static_argnames=("batch", "split"))


def _row_sampler(tables: dict, to_example: Callable) -> Callable:
    """Per-sequence sampler that picks one uniformly random row of a per-split table.

    Args:
      tables: split -> pytree of device arrays sharing a leading row axis.
      to_example: maps one row (the pytree with the row axis removed) to
        ``(inputs, targets, mask)``.
    """

    def sample_one(key, split):
        table = tables[split]
        num_rows = jax.tree_util.tree_leaves(table)[0].shape[0]
        row = jax.random.randint(key, (), 0, num_rows)
        return to_example(jax.tree_util.tree_map(lambda a: a[row], table))

    return sample_one


def _uniform_parts(key, *sizes):
    """Independent U[0, 1) vectors of the given sizes, cut from ONE random draw.

    XLA compiles every random call on its own and on CPU those kernels dominate a
    sampler's compile time (assoc_retrieval, batch 256: 2.5 CPU-s with four calls,
    0.9 with one), so each sequence draws all its randomness at once.
    """
    u = jax.random.uniform(key, (sum(sizes),))
    return jnp.split(u, np.cumsum(sizes)[:-1])


def _ints_below(u, n):
    """Integers in ``[0, n)`` from uniforms ``u`` in ``[0, 1)``: ``floor(u n)``.

    For the small alphabets of generated tasks only: float32 uniforms have 2^23 steps,
    so this is uniform to within ``n / 2^23``; corpus offsets use ``randint`` instead.
    """
    return jnp.minimum(jnp.floor(u * n), n - 1).astype(jnp.int32)


def _distinct_below(u, k):
    """``k`` distinct integers in ``[0, len(u))``, a uniformly random subset in random
    order: the first ``k`` entries of the permutation that sorts ``u``."""
    return jnp.argsort(u)[:k].astype(jnp.int32)


def _answer_at(length: int, positions, answers):
    """Targets and mask of one sequence: ``answers`` at ``positions``, 0 elsewhere."""
    targets = jnp.zeros(length, jnp.int32).at[positions].set(answers.astype(jnp.int32))
    mask = jnp.zeros(length, jnp.float32).at[positions].set(1.0)
    return targets, mask


# ------------------------------------------------------------- generated task plumbing


@functools.partial(jax.jit, static_argnums=0)
def _draw_pool(sample_one, keys):
    """``vmap(sample_one)(keys)`` in one compiled call, cached per generator."""
    return jax.vmap(sample_one)(keys)


def fixed_splits(sample_one: Callable, split_sizes: Sequence[int], seed: int = 0) -> dict:
    """Draws fixed, pairwise disjoint train/valid/test sets from a generator.

    One pool of examples is drawn from ``jax.random.key(seed)`` in a single jitted
    ``vmap`` call, duplicates (equal input rows) are dropped keeping first occurrences,
    and the survivors are cut in order into the splits. Deterministic in ``seed``.

    Args:
      sample_one: ``sample_one(key) -> (inputs, targets, mask)`` of one sequence, whose
        answer is a function of its inputs.
      split_sizes: ``(n_train, n_valid, n_test)``.
      seed: integer seed of the pool.

    Returns:
      dict split -> ``(inputs, targets, mask)`` NumPy arrays with ``n_split`` rows.

    Raises:
      ValueError: if the generator cannot produce that many distinct sequences.
    """
    sizes = tuple(int(n) for n in split_sizes)
    if len(sizes) != len(SPLITS) or min(sizes) < 1:
        raise ValueError(f"split_sizes must be 3 positive ints (train, valid, test), got {split_sizes!r}")
    needed = sum(sizes)
    # A 5% surplus absorbs the duplicates of any sequence space worth splitting.
    pool_size = needed + needed // 20 + 100
    pool = jax.device_get(_draw_pool(sample_one, jax.random.split(jax.random.key(seed), pool_size)))
    _, first = np.unique(pool[0], axis=0, return_index=True)
    keep = np.sort(first)
    if keep.size < needed:
        raise ValueError(
            f"the generator gave only {keep.size} distinct sequences out of {pool_size} draws, "
            f"fewer than the {needed} needed for disjoint splits {sizes}; use a larger "
            "task (more pairs) or smaller split_sizes")
    bounds = np.cumsum((0,) + sizes)
    return {split: tuple(a[keep[lo:hi]] for a in pool)
            for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:])}


def _generated_task(name, vocab_size, seq_len, symbols, sample_one, split_sizes, seed) -> Task:
    """Task of a generator: fresh sequences, or fixed disjoint splits if ``split_sizes``."""
    if split_sizes is None:
        def per_split(key, split):
            del split  # fresh data: _batched already made each split its own key stream
            return sample_one(key)
    else:
        tables = {split: tuple(jnp.asarray(a) for a in data)
                  for split, data in fixed_splits(sample_one, split_sizes, seed).items()}
        per_split = _row_sampler(tables, to_example=lambda row: row)
    return Task(name, vocab_size, seq_len, _batched(per_split), tuple(symbols))


# ------------------------------------------------------------------- recall tasks


def _query_sequence(keys, values, query, answer):
    """One recall sequence ``k1 v1 k2 v2 ... kK vK ? ? q`` and its single scored answer.

    Args:
      keys: ``(K,)`` letter indices (0..25).
      values: ``(K,)`` digit values (0..9).
      query: scalar letter index that is asked for.
      answer: scalar digit value the model must output after reading the query.

    Returns:
      ``(inputs, targets, mask)`` of length ``2K + 3``; only the last position is scored.
    """
    pairs = jnp.stack([keys, _FIRST_DIGIT + values], axis=1).reshape(-1)
    inputs = jnp.concatenate([pairs, jnp.array([_QUERY_ID, _QUERY_ID]), query[None]])
    length = inputs.shape[0]
    targets, mask = _answer_at(length, length - 1, _FIRST_DIGIT + answer)
    return inputs.astype(jnp.int32), targets, mask


def _check_count(what: str, value: int, low: int, high: int | None = None) -> int:
    """Validates an integer config value, naming it in the ValueError."""
    if int(value) != value or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{what} must be an integer {bound}, got {value!r}")
    return int(value)


def assoc_retrieval(num_pairs: int = 4, split_sizes: Sequence[int] | None = None,
                    seed: int = 0) -> Task:
    """Associative retrieval of Ba et al. (2016).

    ``K`` distinct letter keys, each followed by a digit value (values drawn with
    replacement), then ``??`` and one of the keys; the target after the query is that
    key's value: ``c9k8j3f1??c -> 9``. Vocabulary: a-z, 0-9, ``?`` (37 symbols);
    ``T = 2K + 3``; only the last position is scored.

    Args:
      num_pairs: K, at most 26 (keys are distinct letters).
      split_sizes: None for fresh sequences on every call; ``(n_train, n_valid, n_test)``
        for fixed disjoint data sets drawn from ``seed`` (``BA2016_SPLIT_SIZES`` is the
        paper's 100k / 10k / 20k).
      seed: seed of the fixed data sets.

    Reference: Ba, Hinton, Mnih, Leibo, Ionescu, "Using Fast Weights to Attend to the
    Recent Past", NeurIPS 2016, section 4.1.
    """
    num_pairs = _check_count("assoc_retrieval num_pairs (distinct letter keys)",
                             num_pairs, 1, len(LETTERS))

    def sample_one(key):
        u_keys, u_values, u_query = _uniform_parts(key, len(LETTERS), num_pairs, 1)
        keys = _distinct_below(u_keys, num_pairs)
        values = _ints_below(u_values, len(DIGITS))
        asked = _ints_below(u_query[0], num_pairs)
        return _query_sequence(keys, values, keys[asked], values[asked])

    return _generated_task("assoc_retrieval", len(_RECALL_SYMBOLS), 2 * num_pairs + 3,
                           _RECALL_SYMBOLS, sample_one, split_sizes, seed)


def recall_overwrite(num_keys: int = 8, num_pairs: int = 12,
                     split_sizes: Sequence[int] | None = None, seed: int = 0) -> Task:
    """Associative recall with overwrites: the answer is the LAST value of the key.

    ``num_pairs`` key/value pairs with keys drawn WITH replacement from the first
    ``num_keys`` letters, so keys recur and later values overwrite earlier ones; then
    ``??`` and a key that occurred (the key of a uniformly chosen pair). The target is the
    value of that key's last occurrence. Same 37-symbol vocabulary and layout as
    ``assoc_retrieval`` (``T = 2 * num_pairs + 3``). This is the setting where purely
    additive Hebbian memories fail and delta-rule (error-correcting) memories succeed.

    Args:
      num_keys: size of the key alphabet, at most 26.
      num_pairs: number of key/value pairs shown.
      split_sizes, seed: as in ``assoc_retrieval``.

    Reference: Schlag, Irie, Schmidhuber, "Linear Transformers Are Secretly Fast Weight
    Programmers", ICML 2021 (capacity / update-rule experiments).
    """
    num_keys = _check_count("recall_overwrite num_keys (letter alphabet)", num_keys, 1, len(LETTERS))
    num_pairs = _check_count("recall_overwrite num_pairs", num_pairs, 1)

    def sample_one(key):
        u_keys, u_values, u_query = _uniform_parts(key, num_pairs, num_pairs, 1)
        keys = _ints_below(u_keys, num_keys)
        values = _ints_below(u_values, len(DIGITS))
        query = keys[_ints_below(u_query[0], num_pairs)]
        # argmax finds the first match, so search the reversed keys for the last one.
        last = num_pairs - 1 - jnp.argmax(keys[::-1] == query)
        return _query_sequence(keys, values, query, values[last])

    return _generated_task("recall_overwrite", len(_RECALL_SYMBOLS), 2 * num_pairs + 3,
                           _RECALL_SYMBOLS, sample_one, split_sizes, seed)


def mqar(vocab_size: int = 8192, num_pairs: int = 8, seq_len: int = 64, power_a: float = 0.01,
         split_sizes: Sequence[int] | None = None, seed: int = 0) -> Task:
    """Multi-query associative recall (MQAR) of the Zoology benchmark.

    Layout (as Zoology's ``multiquery_ar``): the context ``k1 v1 ... kD vD`` with D
    distinct keys from ids ``[1, V/2)`` and values from ``[V/2, V)``; then the query
    region of the remaining ``T - 2D`` positions, filled with the filler token 0, where
    every key is asked once at position ``2D + 2 g_i``. The gap slots ``g_i`` are drawn
    without replacement from ``{0 .. (T-2D)//2 - 1}`` with probability proportional to
    ``a (g+1)^(a-1)`` (a power law, short gaps most likely; Gumbel top-k). The target at
    each query is the key's value; only the D query positions are scored.

    Args:
      vocab_size: V, total token ids (filler 0, keys, values).
      num_pairs: D, key/value pairs, all queried.
      seq_len: T; needs ``(T - 2D) // 2 >= D``.
      power_a: exponent parameter ``a`` of the gap distribution (Zoology default 0.01).
      split_sizes, seed: as in ``assoc_retrieval``.

    Reference: Arora et al., "Zoology: Measuring and Improving Recall in Efficient
    Language Models", ICLR 2024.
    """
    num_pairs = _check_count("mqar num_pairs", num_pairs, 1)
    first_value = vocab_size // 2
    num_key_ids = first_value - 1
    if num_pairs > num_key_ids:
        raise ValueError(f"mqar num_pairs={num_pairs} exceeds the {num_key_ids} distinct key "
                         f"ids of vocab_size={vocab_size} (keys use ids 1 .. V/2 - 1)")
    num_slots = (seq_len - 2 * num_pairs) // 2
    if num_slots < num_pairs:
        raise ValueError(f"mqar seq_len={seq_len} is too short for {num_pairs} pairs: need "
                         f"seq_len >= {4 * num_pairs} (context 2D plus D query slots of 2)")
    if power_a <= 0:
        raise ValueError(f"mqar power_a must be > 0, got {power_a!r}")
    gap_logits = jnp.asarray((power_a - 1.0) * np.log(np.arange(1, num_slots + 1)))
    context = 2 * num_pairs

    def sample_one(key):
        u_keys, u_values, u_gaps = _uniform_parts(key, num_key_ids, num_pairs, num_slots)
        keys = 1 + _distinct_below(u_keys, num_pairs)
        values = first_value + _ints_below(u_values, vocab_size - first_value)
        # Gumbel top-k = weighted sampling of distinct slots without replacement.
        gumbel = -jnp.log(-jnp.log(u_gaps))
        _, gaps = jax.lax.top_k(gap_logits + gumbel, num_pairs)
        query_positions = context + 2 * gaps
        inputs = (jnp.zeros(seq_len, jnp.int32)
                  .at[:context].set(jnp.stack([keys, values], axis=1).reshape(-1))
                  .at[query_positions].set(keys))
        targets, mask = _answer_at(seq_len, query_positions, values)
        return inputs, targets, mask

    symbols = (["_"] + [f"k{i}" for i in range(1, first_value)]
               + [f"v{i}" for i in range(vocab_size - first_value)])
    return _generated_task("mqar", vocab_size, seq_len, symbols, sample_one, split_sizes, seed)


def copy(length: int = 10, delay: int = 20, num_symbols: int = 8,
         split_sizes: Sequence[int] | None = None, seed: int = 0) -> Task:
    """Delayed copy: reproduce a random string after a blank delay.

    Inputs ``x_1 .. x_L``, then ``delay`` blanks ``_``, then the go mark ``!`` and
    ``L - 1`` blanks; from the go mark on, the target is ``x_1 .. x_L`` (the only scored
    positions). ``T = 2L + delay``; the dependency spans ``L + delay`` steps. Symbols are
    the first ``num_symbols`` letters, then ``_`` and ``!``.

    Args:
      length: L, symbols to remember.
      delay: blanks between the string and the go mark.
      num_symbols: alphabet size of the string, at most 26.
      split_sizes, seed: as in ``assoc_retrieval``.

    Reference: Hochreiter & Schmidhuber, "Long Short-Term Memory", 1997 (experiment 2);
    Arjovsky, Shah, Bengio, "Unitary Evolution RNNs", ICML 2016 (copying memory).
    """
    length = _check_count("copy length", length, 1)
    delay = _check_count("copy delay", delay, 0)
    num_symbols = _check_count("copy num_symbols", num_symbols, 1, len(LETTERS))
    blank, go = num_symbols, num_symbols + 1
    seq_len = 2 * length + delay

    def sample_one(key):
        string = _ints_below(jax.random.uniform(key, (length,)), num_symbols)
        inputs = (jnp.full(seq_len, blank, jnp.int32)
                  .at[:length].set(string)
                  .at[length + delay].set(go))
        targets, mask = _answer_at(seq_len, length + delay + jnp.arange(length), string)
        return inputs, targets, mask

    symbols = tuple(LETTERS[:num_symbols]) + ("_", "!")
    return _generated_task("copy", num_symbols + 2, seq_len, symbols, sample_one, split_sizes, seed)


# ------------------------------------------------------------------------ text

# The corpora shipped with plastix (in plastix/data/), each under a name that stands for it
# wherever a corpus path is asked for: a config or result that names one reads back the
# same in any checkout or install, where a path would tie it to one directory.
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
TINY_SHAKESPEARE = "tinyshakespeare"
TINY_SHAKESPEARE_FILE = os.path.join(DATA_DIR, "tinyshakespeare.txt")
# The public-domain text TFDS serves as "tiny_shakespeare" (1,115,394 characters); the name
# stands for exactly these bytes.
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
BUNDLED_CORPORA = {TINY_SHAKESPEARE: TINY_SHAKESPEARE_FILE}


def corpus_path(corpus: str) -> str:
    """The file of a text corpus: a bundled corpus's name (`BUNDLED_CORPORA`) is its file in
    the package, anything else a path (write ``./tinyshakespeare`` for a file of that name)."""
    return BUNDLED_CORPORA.get(corpus, corpus)


def corpus_sha256(corpus: str) -> str:
    """The sha256 of a corpus's bytes (a bundled corpus's name or a path), to record which
    text a result was computed on."""
    return corpus_fingerprint(corpus)["sha256"]


def corpus_fingerprint(corpus: str) -> dict:
    """``{"size": bytes, "sha256": hex}`` of a corpus (a bundled corpus's name or a path)
    or any data file. The hash is computed once per version of the file (its inode,
    size and times) in a process, so the many runs of a sweep over one corpus read it
    once."""
    stat = os.stat(corpus_path(corpus))
    version = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    return {"size": stat.st_size,
            "sha256": _file_sha256(os.path.abspath(corpus_path(corpus)), version)}


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, version: tuple) -> str:
    del version  # a part of the cache key only: a rewritten file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tfds_cut(text: str) -> dict[str, str]:
    """Splits a corpus at the cut points of TFDS ``tiny_shakespeare``.

    ``train = text[:int(0.9 n)]``; of the rest, ``valid`` is the first half
    (``int(0.5 m)`` chars) and ``test`` the remainder. For the 1,115,394-character
    tiny-shakespeare file this gives 1,003,854 / 55,770 / 55,770, as TFDS serves it.
    """
    train_end = int(len(text) * 0.9)
    valid_end = train_end + int((len(text) - train_end) * 0.5)
    return {"train": text[:train_end], "valid": text[train_end:valid_end], "test": text[valid_end:]}


def read_text_splits(path: str) -> dict[str, str]:
    """Reads a UTF-8 text file (or a bundled corpus, by name: `corpus_path`) and cuts it
    like TFDS (see ``tfds_cut``)."""
    path = os.path.abspath(os.path.expanduser(corpus_path(path)))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text corpus not found: looked for the file {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return tfds_cut(f.read())
    except UnicodeDecodeError as e:  # its message names a byte, not the file
        raise ValueError(f"text corpus {path} is not UTF-8 text (byte {e.start}: {e.reason}); "
                         f"give a UTF-8 text file") from None


def load_tfds_text_splits(name: str = "tiny_shakespeare", data_dir: str | None = None) -> dict[str, str]:
    """Reads the train/validation/test texts of a TFDS text data set (feature ``text``).

    Uses ``tfds.data_source`` (random-access ArrayRecord, no TensorFlow needed); each
    split's examples are joined (``tiny_shakespeare`` has one example per split).
    """
    tfds = _tfds(f"the TFDS text data set {name!r}")

    def split_text(split):
        source = tfds.data_source(name, split=_TFDS_SPLIT_NAMES[split], data_dir=data_dir)
        texts = (source[i]["text"] for i in range(len(source)))
        return "".join(t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts)

    return {split: split_text(split) for split in SPLITS}


def _char_codes(text: str) -> np.ndarray:
    """Unicode code points of ``text`` as a uint32 array (vectorised, no Python loop)."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def _encode_codes(codes: np.ndarray, vocab_codes: np.ndarray) -> np.ndarray:
    """Maps code points to ids: position in the sorted ``vocab_codes``, or the unknown id
    ``len(vocab_codes)`` for characters outside it."""
    ids = np.searchsorted(vocab_codes, codes)
    known = vocab_codes[np.minimum(ids, len(vocab_codes) - 1)] == codes
    return np.where(known, ids, len(vocab_codes)).astype(np.int32)


def encode_text_splits(splits: dict[str, str]) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """``(symbols, {split: int32 ids})`` of a corpus's splits, as the ``text`` task reads
    them: the sorted characters of the train split, then one unknown token (U+FFFD) for
    every valid/test character absent from train."""
    vocab_codes = np.unique(_char_codes(splits["train"]))
    ids = {split: _encode_codes(_char_codes(part), vocab_codes) for split, part in splits.items()}
    return tuple(chr(c) for c in vocab_codes) + (UNKNOWN_CHAR,), ids


def text(path: str | None = None, tfds_name: str | None = None, seq_len: int = 100,
         data_dir: str | None = None) -> Task:
    """Next-character prediction on random windows of a text corpus.

    The corpus comes from a local UTF-8 file or a bundled corpus's name (``path``), or a
    TFDS text data set (``tfds_name``, e.g. ``"tiny_shakespeare"``; needs the
    ``tfds`` extra and the prepared data or internet); with neither it is tiny
    shakespeare as bundled with plastix (`TINY_SHAKESPEARE`). Every corpus is cut at
    TFDS's points (``tfds_cut``), so the bundled one gives TFDS's own splits. The vocabulary is the sorted set of
    characters of the train split plus one unknown token (the last id, shown as
    U+FFFD) that stands for every valid/test character absent from train; it is an
    ordinary, scored target. Each split lives on the device once as int32 ids; a sample
    is ``T + 1`` consecutive ids at a uniform random offset: ``inputs = w[:T]``,
    ``targets = w[1:]``, every position scored.

    Args:
      path: local text file, or the name of a bundled corpus (`BUNDLED_CORPORA`).
      tfds_name: TFDS data set with a ``text`` feature (instead of ``path``).
      seq_len: window length T.
      data_dir: TFDS data directory.
    """
    if path is not None and tfds_name is not None:
        raise ValueError("text task takes one corpus: path='file.txt' or "
                         "tfds_name='tiny_shakespeare', not both")
    if tfds_name is None and path is None:
        path = TINY_SHAKESPEARE
    seq_len = _check_count("text seq_len", seq_len, 1)
    splits = read_text_splits(path) if path is not None else load_tfds_text_splits(tfds_name, data_dir)
    source = path if path is not None else f"tfds:{tfds_name}"
    for split, part in splits.items():
        if len(part) < seq_len + 1:
            raise ValueError(f"the {split} split of {source} has {len(part)} characters, fewer "
                             f"than the {seq_len + 1} a window of seq_len={seq_len} needs")
    symbols, ids = encode_text_splits(splits)
    corpora = {split: jnp.asarray(part) for split, part in ids.items()}

    def sample_one(key, split):
        corpus = corpora[split]
        start = jax.random.randint(key, (), 0, corpus.shape[0] - seq_len)
        window = jax.lax.dynamic_slice(corpus, (start,), (seq_len + 1,))
        return window[:-1], window[1:], jnp.ones(seq_len, jnp.float32)

    return Task("text", len(symbols), seq_len, _batched(sample_one), symbols)


def random_tokens(vocab_size: int = 65, seq_len: int = 100) -> Task:
    """I.i.d. uniform tokens, every position scored: nothing to learn, loss ln(V) at best.

    The throughput benchmarks' workload (`benchmarks/bench_es.py`): the shapes of
    character text without a corpus. ``inputs = w[:T]``, ``targets = w[1:]`` of a window
    ``w`` of ``T + 1`` tokens, as for "text".
    """
    vocab_size = _check_count("random_tokens vocab_size", vocab_size, 2)
    seq_len = _check_count("random_tokens seq_len", seq_len, 1)

    def sample_one(key, split):
        del split  # the split is already folded into the key
        window = jax.random.randint(key, (seq_len + 1,), 0, vocab_size, jnp.int32)
        return window[:-1], window[1:], jnp.ones(seq_len, jnp.float32)

    symbols = tuple(f"<{i}>" for i in range(vocab_size))
    return Task("random_tokens", vocab_size, seq_len, _batched(sample_one), symbols)


# ---------------------------------------------------------------------- pixels


def sklearn_digits() -> dict:
    """scikit-learn's bundled 8x8 digits (1,797 images, intensities 0..16), split
    80/10/10 by a fixed permutation (seed 0). Returns split -> (images in [0, 1], labels)."""
    datasets = _optional_import("sklearn.datasets", "scikit-learn",
                                "the image source 'sklearn_digits'", "images")
    digits = datasets.load_digits()
    images, labels = digits.images / 16.0, digits.target
    order = np.random.default_rng(0).permutation(len(labels))
    bounds = np.round(np.array([0.0, 0.8, 0.9, 1.0]) * len(labels)).astype(int)
    return {split: (images[order[lo:hi]], labels[order[lo:hi]])
            for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:])}


def _image_source(source: str, data_dir: str | None) -> dict:
    """split -> (grey images in [0, 1], labels) of an image set: scikit-learn's bundled
    digits (offline) or a TFDS image set."""
    return sklearn_digits() if source == "sklearn_digits" else _load_tfds_images(source, data_dir)


def image_splits(source: str = "sklearn_digits", fold: int | None = None, folds: int = 5,
                 data_dir: str | None = None) -> dict:
    """The examples of the ``images`` task, whole: split -> ``(inputs, targets, mask)``,
    NumPy arrays of shapes ``(n, 1, pixels)`` float32 (row-major intensities in [0, 1]),
    ``(n, 1)`` int32 (the class) and ``(n, 1)`` float32 ones.

    Without ``fold`` the splits are the image set's (scikit-learn's digits: 1,438 / 179 /
    180 images, `sklearn_digits`). With ``fold = k`` of ``folds``, for k-fold
    cross-validation, the train and valid images are pooled, put in a fixed order
    (a permutation drawn from seed 0) and cut into ``folds`` near-equal parts: part k is
    the valid split and the other parts the train split; the test split stays as it is.
    Over k = 0 .. folds-1 every pooled image is validated exactly once.
    """
    raw = _image_source(source, data_dir)
    if fold is not None:
        folds = _check_count("images folds", folds, 2)
        fold = _check_count("images fold", fold, 0, folds - 1)
        pool = [np.concatenate([raw["train"][i], raw["valid"][i]]) for i in (0, 1)]
        parts = np.array_split(np.random.default_rng(0).permutation(len(pool[1])), folds)
        train = np.concatenate([p for i, p in enumerate(parts) if i != fold])
        raw = {"train": tuple(a[train] for a in pool),
               "valid": tuple(a[parts[fold]] for a in pool), "test": raw["test"]}
    examples = {}
    for split, (pictures, labels) in raw.items():
        n = len(labels)
        examples[split] = (pictures.reshape(n, 1, -1).astype(np.float32),
                           labels.reshape(n, 1).astype(np.int32), np.ones((n, 1), np.float32))
    return examples


def images(source: str = "sklearn_digits", fold: int | None = None, folds: int = 5,
           data_dir: str | None = None) -> Task:
    """Image classification, one image per example (T = 1): ``inputs`` float32
    ``(1, pixels)``, the grey intensities in [0, 1] row by row; ``targets`` int32 ``(1,)``,
    the class, scored. ``vocab_size`` is the number of classes.

    A batch draws images uniformly, with replacement, from its split;
    `image_splits` gives the splits whole (for scoring every image once) and
    describes ``fold`` / ``folds`` (k-fold cross-validation on the train + valid images).

    Args:
      source: ``"sklearn_digits"`` (scikit-learn's bundled 8x8 digits, offline: Alpaydin &
        Kaynak, "Optical recognition of handwritten digits", UCI 1998) or a TFDS image
        set such as ``"mnist"`` (train = first 90% of TFDS train, valid = the rest, test =
        TFDS test; needs internet or prepared data in ``data_dir``).
    """
    splits = image_splits(source, fold, folds, data_dir)
    num_classes = int(max(targets.max() for _, targets, _ in splits.values())) + 1
    tables = {split: tuple(jnp.asarray(a) for a in data) for split, data in splits.items()}
    sample = _batched(_row_sampler(tables, to_example=lambda row: row))
    pixels = int(splits["train"][0].shape[-1])
    return Task("images", num_classes, 1, sample, tuple(str(c) for c in range(num_classes)),
                input_size=pixels)


def _load_tfds_images(name: str, data_dir: str | None) -> dict:
    """A TFDS image set via ``tfds.data_source``: train = first 90% of TFDS train,
    valid = last 10%, test = TFDS test. Returns split -> (grey images in [0, 1], labels)."""
    tfds = _tfds(f"the TFDS image set {name!r}")
    tfds_splits = {"train": "train[:90%]", "valid": "train[90%:]", "test": "test"}

    def read(split):
        source = tfds.data_source(name, split=tfds_splits[split], data_dir=data_dir)
        examples = [source[i] for i in range(len(source))]
        # Average colour channels (omniglot is RGB) to one grey level per pixel.
        images = np.stack([np.asarray(e["image"], np.float32).mean(axis=-1) for e in examples])
        return images / 255.0, np.array([e["label"] for e in examples])

    return {split: read(split) for split in SPLITS}


def quantise(images: np.ndarray, levels: int, downsample: int = 1) -> np.ndarray:
    """Row-major pixel sequences of intensities in [0, 1]:
    ``level = min(floor(x * levels), levels - 1)`` after ``downsample x downsample``
    mean pooling. ``(N, H, W) -> (N, (H // d) * (W // d))`` int32."""
    n, h, w = images.shape
    d = downsample
    pooled = images[:, : h - h % d, : w - w % d].reshape(n, h // d, d, w // d, d).mean(axis=(2, 4))
    return np.minimum(np.floor(pooled * levels), levels - 1).astype(np.int32).reshape(n, -1)


def pixels(source: str = "sklearn_digits", levels: int = 4, predict: str = "next_pixel",
           downsample: int = 1, data_dir: str | None = None) -> Task:
    """Images read one pixel per step, row-major, quantised to ``levels`` grey levels.

    ``predict="next_pixel"``: inputs ``p[:-1]``, targets ``p[1:]`` (T = P - 1, every
    position scored, vocabulary = levels). ``predict="label"``: inputs ``p`` (T = P), the
    only scored target is the class at the last step, as token ``levels + label``
    (vocabulary = levels + classes), i.e. sequential-MNIST style classification.

    Args:
      source: ``"sklearn_digits"`` (bundled with scikit-learn, offline, 8x8) or a TFDS
        image set such as ``"mnist"`` or ``"omniglot"`` (needs internet or prepared data).
      levels: grey levels (>= 2).
      predict: ``"next_pixel"`` or ``"label"``.
      downsample: integer mean-pooling factor before quantising (omniglot is 105x105).
      data_dir: TFDS data directory.

    Reference: Le, Jaitly, Hinton, "A Simple Way to Initialize Recurrent Networks of
    Rectified Linear Units", 2015 (pixel-by-pixel MNIST).
    """
    levels = _check_count("pixels levels", levels, 2)
    downsample = _check_count("pixels downsample", downsample, 1)
    if predict not in ("next_pixel", "label"):
        raise ValueError(f"pixels predict must be 'next_pixel' or 'label', got {predict!r}")
    raw = _image_source(source, data_dir)
    tables = {split: (jnp.asarray(quantise(images, levels, downsample)), jnp.asarray(labels, jnp.int32))
              for split, (images, labels) in raw.items()}
    num_pixels = tables["train"][0].shape[1]
    num_classes = int(max(int(labels.max()) for _, labels in tables.values())) + 1

    if predict == "next_pixel":
        seq_len, vocab_size = num_pixels - 1, levels

        def to_example(row):
            image, _ = row
            return image[:-1], image[1:], jnp.ones(seq_len, jnp.float32)
    else:
        seq_len, vocab_size = num_pixels, levels + num_classes

        def to_example(row):
            image, label = row
            targets, mask = _answer_at(seq_len, seq_len - 1, levels + label)
            return image, targets, mask

    symbols = tuple(str(i) for i in range(levels)) + tuple(f"<{c}>" for c in range(vocab_size - levels))
    return Task("pixels", vocab_size, seq_len, _batched(_row_sampler(tables, to_example)), symbols)


# --------------------------------------------------------------- registry, metrics


# ------------------------------------------------------- classification episodes (vectors)


def _episode_targets(key, num_classes: int, seq_len: int):
    """The classes of one episode's ``seq_len`` steps, uniform, and a mask scoring all."""
    classes = jax.random.randint(key, (seq_len,), 0, num_classes)
    return classes.astype(jnp.int32), jnp.ones(seq_len, jnp.float32)


def pattern_episodes(num_classes: int = 5, dim: int = 32, seq_len: int = 50,
                     noise: float = 0.5) -> Task:
    """Few-shot classification learned within a lifetime, on patterns drawn afresh.

    Every episode draws ``num_classes`` prototypes ``p_c ~ N(0, I_dim)``; at each of its
    ``seq_len`` steps one class c is drawn uniformly and the input is a noisy copy
    ``x = p_c + noise * N(0, I)``, its target c, every step scored. The network predicts
    the class before the step teaches it: since prototypes and labels are new in every
    episode, nothing but the learning within the lifetime can predict them (chance is
    ``1 / num_classes``). Inputs are float32 ``(T, dim)``; the splits are independent
    streams of fresh episodes.
    """
    num_classes = _check_count("num_classes", num_classes, 2)
    dim = _check_count("dim", dim, 1)
    seq_len = _check_count("seq_len", seq_len, 1)
    checks.NONNEGATIVE.check("noise", noise)

    def sample_one(key, split):
        del split  # fresh episodes: _batched gave each split its own key stream
        proto_key, class_key, noise_key = jax.random.split(key, 3)
        prototypes = jax.random.normal(proto_key, (num_classes, dim))
        targets, mask = _episode_targets(class_key, num_classes, seq_len)
        inputs = prototypes[targets] + noise * jax.random.normal(noise_key, (seq_len, dim))
        return inputs, targets, mask

    return Task("pattern_episodes", num_classes, seq_len, _batched(sample_one),
                tuple(str(c) for c in range(num_classes)), input_size=dim)


def digit_episodes(seq_len: int = 100, data_dir: str | None = None,
                   source: str = "sklearn_digits") -> Task:
    """Digit classification learned within a lifetime: the labels are shuffled per episode.

    An episode shows ``seq_len`` images of its split (uniformly, with replacement), their
    grey intensities in [0, 1] as a vector, and scores the class of each before the step
    teaches it. Every episode relabels the ten classes by a random permutation, so which
    label an image has must be learned within the lifetime (a network cannot carry it in
    its weights from one episode to the next); how images of a class resemble each other
    can be. The images are those of `images` (scikit-learn's bundled digits by default).
    """
    seq_len = _check_count("seq_len", seq_len, 1)
    splits = _image_source(source, data_dir)
    num_classes = int(max(labels.max() for _, labels in splits.values())) + 1
    tables = {split: (jnp.asarray(pictures.reshape(len(labels), -1), jnp.float32),
                      jnp.asarray(labels, jnp.int32))
              for split, (pictures, labels) in splits.items()}

    def sample_one(key, split):
        pictures, labels = tables[split]
        rows_key, relabel_key = jax.random.split(key)
        rows = jax.random.randint(rows_key, (seq_len,), 0, labels.shape[0])
        relabel = jax.random.permutation(relabel_key, num_classes)
        return pictures[rows], relabel[labels[rows]], jnp.ones(seq_len, jnp.float32)

    pixels = int(tables["train"][0].shape[1])
    return Task("digit_episodes", num_classes, seq_len, _batched(sample_one),
                tuple(str(c) for c in range(num_classes)), input_size=pixels)


REGISTRY: dict[str, Callable[..., Task]] = {
    "assoc_retrieval": assoc_retrieval,
    "mqar": mqar,
    "recall_overwrite": recall_overwrite,
    "copy": copy,
    "text": text,
    "pixels": pixels,
    "images": images,
    "random_tokens": random_tokens,
    "pattern_episodes": pattern_episodes,
    "digit_episodes": digit_episodes,
}


def settings(name: str) -> tuple[str, ...]:
    """The keyword settings the task ``name`` takes (``tasks.get(name, **settings)``)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(REGISTRY)}")
    return tuple(inspect.signature(REGISTRY[name]).parameters)


def get(name: str, **config) -> Task:
    """Builds the task ``name`` with keyword ``config``; ValueError for an unknown name or
    a setting the task does not take."""
    unknown = sorted(set(config) - set(settings(name)))
    if unknown:
        raise ValueError(f"task {name!r} takes no setting {', '.join(map(repr, unknown))}; "
                         f"it takes {', '.join(settings(name))}")
    return REGISTRY[name](**config)


def check_mask(mask, targets) -> None:
    """Raises ValueError unless ``mask`` fits ``targets``' shape and, where its values are
    known (outside ``jit``), is finite, never negative and scores something: an all-zero
    mask would report an NLL of 0 and a negative one a made-up mean (accuracy -1)."""
    try:
        np.broadcast_shapes(jnp.shape(mask), jnp.shape(targets))
    except ValueError:
        raise ValueError(f"mask {jnp.shape(mask)} does not fit the targets "
                         f"{jnp.shape(targets)}") from None
    if isinstance(mask, jax.core.Tracer) or np.size(mask) == 0:
        return
    # On the host: under a trace, any jax op, even on a known array, gives a tracer.
    values = np.asarray(mask, np.float64)
    if not np.isfinite(values).all():
        raise ValueError("mask holds NaN or infinite weights: 1.0 where scored, 0.0 elsewhere")
    if (values < 0).any():
        raise ValueError(f"mask holds negative weights (down to {values.min():g}): 1.0 where "
                         f"scored, 0.0 elsewhere")
    if not values.any():
        raise ValueError("mask is all zero: it scores no position, so there is no NLL or "
                         "accuracy to report")


def masked_accuracy(logits, targets, mask):
    """Fraction of scored positions where ``argmax(logits) == target``.

    ``sum(mask * [argmax_v logits[..., v] == targets]) / max(sum(mask), 1)``.

    Args:
      logits: ``(..., T, V)``.
      targets: int ``(..., T)``.
      mask: ``(..., T)``, 1.0 where scored; `check_mask` refuses one that scores nothing
        or holds a negative weight.
    """
    check_mask(mask, targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return jnp.sum(correct * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_nll(logits, targets, mask):
    """Mean negative log-likelihood (nats) per scored token.

    ``-sum(mask * log_softmax(logits)[target]) / max(sum(mask), 1)``; shapes and the
    mask's check as in ``masked_accuracy``.
    """
    check_mask(mask, targets)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    target_log_probs = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return -jnp.sum(target_log_probs * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def bits_per_char(nll_nats):
    """Converts nats per character to bits per character: ``nll / ln 2``."""
    return nll_nats / math.log(2.0)


# ---------------------------------------------------------------- printing helpers


def decode(task: Task, ids) -> str:
    """Readable string of a 1-D sequence of token ids (symbols joined; with spaces when a
    task has multi-character symbols, e.g. mqar's ``k12 v7``)."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"decode takes one sequence (1-D ids), got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"decode takes integer token ids, got {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= len(task.symbols)):
        raise ValueError(f"decode: token ids {ids.min()}..{ids.max()} are outside the "
                         f"vocabulary 0..{len(task.symbols) - 1} of task {task.name!r}")
    separator = "" if all(len(s) == 1 for s in task.symbols) else " "
    return separator.join(task.symbols[i] for i in ids.tolist())


def encode(task: Task, string: str) -> np.ndarray:
    """Token ids (int32) of a string written in the task's symbols.

    Single-character vocabularies read one symbol per character, others read
    whitespace-separated symbols. Characters unseen by a text task map to its unknown id;
    other unknown symbols raise ValueError.
    """
    single_char = all(len(s) == 1 for s in task.symbols)
    pieces = list(string) if single_char else string.split()
    ids_of = {}
    for i, symbol in enumerate(task.symbols):
        ids_of.setdefault(symbol, i)
    unknown = task.vocab_size - 1 if task.name == "text" else None  # text's last id
    missing = sorted({p for p in pieces if p not in ids_of})
    if missing and unknown is None:
        raise ValueError(f"symbols {missing!r} are not in the vocabulary of task {task.name!r}")
    return np.array([ids_of.get(p, unknown) for p in pieces], dtype=np.int32)
