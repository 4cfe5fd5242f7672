"""Tests of plastix.tasks: determinism, structure of every task, splits, errors, metrics."""

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import checks, cli, tasks


KEY = jax.random.key(0)

# Small configurations of every task that needs no download (text gets a file below).
SMALL_CONFIGS = {
    "assoc_retrieval": dict(num_pairs=4),
    "recall_overwrite": dict(num_keys=8, num_pairs=12),
    "mqar": dict(vocab_size=64, num_pairs=4, seq_len=32),
    "copy": dict(length=5, delay=7, num_symbols=6),
    "pixels": dict(levels=4),
}


CORPUS_WINDOW = 30
BATCH = 256  # one batch size everywhere, so each (task, split) compiles once


def random_text(size, alphabet, seed):
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(list(alphabet), size=size))


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    """A 4,000-character random text; its windows of 30 characters are unique, so a
    window found in one split cannot also come from another."""
    text = random_text(4000, "abcdefghij klmnop\n", seed=0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return str(path), text


@pytest.fixture(scope="session")
def small_tasks(corpus_file):
    built = {name: tasks.get(name, **config) for name, config in SMALL_CONFIGS.items()}
    built["text"] = tasks.get("text", path=corpus_file[0], seq_len=CORPUS_WINDOW)
    return built


@pytest.fixture(scope="module", params=sorted(SMALL_CONFIGS) + ["text"])
def task(request, small_tasks):
    return small_tasks[request.param]


def as_strings(task, ids):
    return [tasks.decode(task, row) for row in np.asarray(ids)]


def sample_np(task, split="train", seed=0):
    return tuple(np.asarray(a) for a in task.sample(jax.random.key(seed), BATCH, split))


# ------------------------------------------------------------------ every task


def test_shapes_dtypes_and_vocabulary(task):
    inputs, targets, mask = task.sample(KEY, BATCH)
    assert inputs.shape == targets.shape == mask.shape == (BATCH, task.seq_len)
    assert (inputs.dtype, targets.dtype, mask.dtype) == (jnp.int32, jnp.int32, jnp.float32)
    assert len(task.symbols) == task.vocab_size
    for ids in (inputs, targets):
        assert 0 <= int(ids.min()) and int(ids.max()) < task.vocab_size
    assert set(np.unique(mask)) <= {0.0, 1.0} and float(mask.sum()) > 0


def test_same_key_same_batch(task):
    first, again = sample_np(task), sample_np(task)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], sample_np(task, seed=1)[0])


# Each split compiles anew; generated tasks share one split mechanism (fold_in), so one
# of them plus the two table-backed tasks cover every code path.
@pytest.mark.parametrize("name", ["assoc_retrieval", "pixels", "text"])
def test_same_key_gives_different_splits(small_tasks, name):
    train, valid = sample_np(small_tasks[name], "train"), sample_np(small_tasks[name], "valid")
    assert not np.array_equal(train[0], valid[0])


# Vmapping a whole sampler (e.g. one batch per population member) compiles anew per
# task; one generated and one corpus task cover both code paths.
@pytest.mark.parametrize("name", ["assoc_retrieval", "text"])
def test_sample_vmaps_over_keys(small_tasks, name):
    task = small_tasks[name]
    keys = jax.random.split(KEY, 2)
    stacked = jax.vmap(lambda k: task.sample(k, BATCH))(keys)
    for i, k in enumerate(keys):
        for batched, single in zip(stacked, task.sample(k, BATCH)):
            np.testing.assert_array_equal(batched[i], single)


# ------------------------------------------------------------- recall tasks


def split_recall(task, inputs, targets, mask):
    """(keys, values, query, answer) of letter/digit recall sequences."""
    pairs = inputs[:, :-3]
    np.testing.assert_array_equal(mask[:, -1], 1.0)
    assert mask[:, :-1].sum() == 0
    assert all(s[-3:-1] == "??" for s in as_strings(task, inputs))
    return pairs[:, 0::2], pairs[:, 1::2] - 26, inputs[:, -1], targets[:, -1] - 26


def test_assoc_retrieval_structure(small_tasks):
    task = small_tasks["assoc_retrieval"]
    assert (task.vocab_size, task.seq_len) == (37, 11)
    keys, values, query, answer = split_recall(task, *sample_np(task))
    assert keys.min() >= 0 and keys.max() < 26
    assert values.min() >= 0 and values.max() < 10
    for k, v, q, a in zip(keys, values, query, answer):
        assert len(set(k.tolist())) == len(k), "keys must be distinct"
        assert q in k, "query must be one of the keys"
        assert a == v[list(k).index(q)], "target must be the query's value"


def test_assoc_retrieval_paper_example_round_trip(small_tasks):
    task = small_tasks["assoc_retrieval"]
    ids = tasks.encode(task, "c9k8j3f1??c")
    assert ids.tolist() == [2, 35, 10, 34, 9, 29, 5, 27, 36, 36, 2]
    assert tasks.decode(task, ids) == "c9k8j3f1??c"


def test_recall_overwrite_answer_is_last_value(small_tasks):
    task = small_tasks["recall_overwrite"]
    keys, values, query, answer = split_recall(task, *sample_np(task))
    assert keys.max() < SMALL_CONFIGS["recall_overwrite"]["num_keys"]
    overwritten_differently = 0
    for k, v, q, a in zip(keys, values, query, answer):
        where = np.flatnonzero(k == q)
        assert where.size > 0, "query must be a key that occurred"
        assert a == v[where[-1]], "target must be the LAST value of the queried key"
        overwritten_differently += v[where[0]] != v[where[-1]]
    # Only a test of overwriting if first and last values of the query often differ.
    assert overwritten_differently > BATCH // 4


def test_mqar_answers_are_the_right_values(small_tasks):
    task = small_tasks["mqar"]
    vocab, pairs, length = (SMALL_CONFIGS["mqar"][k] for k in ("vocab_size", "num_pairs", "seq_len"))
    context = 2 * pairs
    slots = []
    for x, y, m in zip(*sample_np(task)):
        keys, values = x[:context:2], x[1:context:2]
        assert len(set(keys.tolist())) == pairs and 1 <= keys.min() and keys.max() < vocab // 2
        assert vocab // 2 <= values.min() and values.max() < vocab
        scored = np.flatnonzero(m)
        assert scored.min() >= context and len(scored) == pairs
        assert sorted(x[scored].tolist()) == sorted(keys.tolist()), "every key queried once"
        for pos in scored:
            assert y[pos] == values[list(keys).index(x[pos])]
        # Outside the context and the queries the input is the filler 0.
        assert not np.delete(x[context:], scored - context).any()
        slots.extend(((scored - context) // 2).tolist())
    # Power-law gaps: slot 0 is the most likely, far above uniform (1 / 12 slots).
    counts = np.bincount(slots, minlength=(length - context) // 2)
    assert counts.argmax() == 0 and counts[0] / len(slots) > 0.15


def test_copy_targets_are_the_string_after_the_go_mark(small_tasks):
    task = small_tasks["copy"]
    length, delay = SMALL_CONFIGS["copy"]["length"], SMALL_CONFIGS["copy"]["delay"]
    assert task.seq_len == 2 * length + delay
    inputs, targets, mask = sample_np(task)
    answer = slice(length + delay, None)
    np.testing.assert_array_equal(targets[:, answer], inputs[:, :length])
    np.testing.assert_array_equal(mask[:, answer], 1.0)
    assert mask[:, : length + delay].sum() == 0
    assert all(s[length:] == "_" * delay + "!" + "_" * (length - 1) for s in as_strings(task, inputs))


# ----------------------------------------------------------- fixed splits


def rows(inputs):
    return {row.tobytes() for row in np.asarray(inputs)}


def test_fixed_splits_are_fixed_and_disjoint():
    # 2 pairs: 26*25*100*2 = 130,000 sequences, so the 1,400-draw pool has duplicates.
    sizes = (1000, 100, 200)
    task = tasks.get("assoc_retrieval", num_pairs=2, split_sizes=sizes, seed=3)
    seen = {split: rows(task.sample(KEY, 6000, split)[0]) for split in tasks.SPLITS}
    for split, size in zip(tasks.SPLITS, sizes):
        assert size * 0.95 < len(seen[split]) <= size  # a fixed table, nearly all of it seen
    assert not seen["train"] & seen["valid"]
    assert not seen["train"] & seen["test"]
    assert not seen["valid"] & seen["test"]


def tiny_space(key):
    """A generator of only 50 distinct sequences: its pools are full of duplicates."""
    x = jax.random.randint(key, (2,), 0, jnp.array([5, 10]))
    return x, x, jnp.ones(2)


def test_fixed_splits_drop_duplicates_and_follow_the_seed():
    splits = tasks.fixed_splits(tiny_space, (30, 5, 10), seed=0)
    all_rows = np.concatenate([splits[s][0] for s in tasks.SPLITS])
    assert len(all_rows) == 45 and len(rows(all_rows)) == 45
    again = tasks.fixed_splits(tiny_space, (30, 5, 10), seed=0)
    other = tasks.fixed_splits(tiny_space, (30, 5, 10), seed=1)
    np.testing.assert_array_equal(again["test"][0], splits["test"][0])
    assert not np.array_equal(other["test"][0], splits["test"][0])
    with pytest.raises(ValueError, match="distinct sequences"):
        tasks.fixed_splits(tiny_space, (40, 5, 10))


def test_ba2016_validation_split_has_the_paper_size():
    task = tasks.get("assoc_retrieval", split_sizes=tasks.BA2016_SPLIT_SIZES)
    draws = 60_000  # 6 draws per row: all but ~e^-6 = 0.25% of the 10k rows are seen
    valid = rows(task.sample(KEY, draws, "valid")[0])
    assert 9_900 < len(valid) <= 10_000


# -------------------------------------------------------------------- text


def test_text_windows_are_substrings_of_their_split(small_tasks, corpus_file):
    task = small_tasks["text"]
    cut = tasks.tfds_cut(corpus_file[1])
    assert [len(cut[s]) for s in tasks.SPLITS] == [3600, 200, 200]
    for split in tasks.SPLITS:
        inputs, targets, mask = sample_np(task, split)
        np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
        np.testing.assert_array_equal(mask, 1.0)
        for x, y in zip(as_strings(task, inputs), as_strings(task, targets)):
            assert x + y[-1] in cut[split]
            assert all(x not in cut[other] for other in tasks.SPLITS if other != split)


def test_text_vocabulary_from_train_and_unseen_characters(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("ab" * 45 + "abZab" + "babab", encoding="utf-8")  # 'Z' only in valid
    task = tasks.get("text", path=str(path), seq_len=4)
    assert task.symbols == ("a", "b", tasks.UNKNOWN_CHAR)
    assert tasks.encode(task, "abZ").tolist() == [0, 1, 2]
    inputs = sample_np(task, "valid")[0]
    assert (inputs == 2).any(), "the unseen 'Z' must appear as the unknown id"


def test_tfds_cut_points_of_tiny_shakespeare():
    cut = tasks.tfds_cut("x" * 1_115_394)
    assert [len(cut[s]) for s in tasks.SPLITS] == [1_003_854, 55_770, 55_770]


def test_tiny_shakespeare_is_bundled_and_the_default_corpus():
    assert tasks.corpus_sha256(tasks.TINY_SHAKESPEARE) == tasks.TINY_SHAKESPEARE_SHA256
    assert tasks.corpus_path(tasks.TINY_SHAKESPEARE) == tasks.TINY_SHAKESPEARE_FILE
    assert tasks.corpus_path("book.txt") == "book.txt"  # any other name is a path
    splits = tasks.read_text_splits(tasks.TINY_SHAKESPEARE)
    assert [len(splits[s]) for s in tasks.SPLITS] == [1_003_854, 55_770, 55_770]
    task = tasks.text(seq_len=8)  # neither path nor tfds_name
    assert task.vocab_size == 66  # its 65 characters and the unknown id
    assert task.symbols == tasks.text(tasks.TINY_SHAKESPEARE_FILE, seq_len=8).symbols


def test_tfds_paths_without_tensorflow_datasets_name_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if not installed
    for load in (lambda: tasks.text(tfds_name="tiny_shakespeare"),
                 lambda: tasks.images("mnist")):
        with pytest.raises(checks.MissingDependency,
                           match=r"needs tensorflow-datasets: pip install 'plastix\[tfds\]'"):
            load()
    # A command line says so in one line, with the usage exit status.
    with pytest.raises(SystemExit) as exit_:
        cli.run(lambda argv: tasks.text(tfds_name="tiny_shakespeare"), [])
    assert exit_.value.code == cli.EXIT_USAGE
    assert capsys.readouterr().err == ("error: the TFDS text data set 'tiny_shakespeare' needs "
                                       "tensorflow-datasets: pip install 'plastix[tfds]'\n")


def test_tfds_and_local_file_agree_on_the_cut_points(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    text = random_text(1_115_394, "ABCDEFGH ,.\n", seed=1)
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8")
    # TFDS serves tiny_shakespeare as one example per split, cut at these published points.
    served = {"train": text[:1_003_854], "validation": text[1_003_854:1_059_624],
              "test": text[1_059_624:]}

    def as_data_source(builder, split, **kwargs):
        return [{"text": served[str(split)].encode("utf-8")}]

    with tfds.testing.mock_data(as_data_source_fn=as_data_source):
        assert tasks.load_tfds_text_splits("tiny_shakespeare") == tasks.read_text_splits(str(path))
        task = tasks.get("text", tfds_name="tiny_shakespeare")
    assert task.seq_len == 100 and task.symbols[:-1] == tuple(sorted(set(served["train"])))
    inputs, targets, _ = sample_np(task, "test")
    assert all(x + y[-1] in served["test"]
               for x, y in zip(as_strings(task, inputs[:16]), as_strings(task, targets[:16])))


# ------------------------------------------------------------------ pixels


def test_pixels_next_pixel_mode_is_shifted_digits(small_tasks):
    task = small_tasks["pixels"]
    assert (task.seq_len, task.vocab_size) == (63, 4)
    inputs, targets, _ = sample_np(task)
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])


def test_pixels_label_mode_scores_the_class_at_the_end():
    task = tasks.get("pixels", levels=4, predict="label")
    assert (task.seq_len, task.vocab_size) == (64, 14)
    _, targets, mask = sample_np(task)
    np.testing.assert_array_equal(mask.sum(axis=1), 1.0)
    np.testing.assert_array_equal(mask[:, -1], 1.0)
    assert set(np.unique(targets[:, -1] - 4)) == set(range(10))


def test_images_task_gives_pixel_vectors_and_class_targets():
    task = tasks.get("images")
    assert (task.name, task.vocab_size, task.seq_len) == ("images", 10, 1)
    inputs, targets, mask = sample_np(task, "valid")
    assert inputs.shape == (BATCH, 1, 64) and inputs.dtype == np.float32
    assert targets.shape == mask.shape == (BATCH, 1) and targets.dtype == np.int32
    assert 0.0 <= inputs.min() and inputs.max() <= 1.0 and np.all(mask == 1.0)
    assert set(np.unique(targets)) == set(range(10))
    splits = tasks.image_splits()
    assert [len(splits[s][0]) for s in tasks.SPLITS] == [1438, 179, 180]
    rows = {row.tobytes(): label for row, label in zip(splits["valid"][0], splits["valid"][1])}
    for row, label in zip(inputs, targets):  # sampled from the valid split, labels intact
        assert rows[row.tobytes()] == label
    again = tasks.image_splits()
    for split in tasks.SPLITS:
        for a, b in zip(splits[split], again[split]):
            np.testing.assert_array_equal(a, b)


def test_image_folds_validate_every_pooled_image_once_and_keep_the_test_split():
    whole = tasks.image_splits()
    key = lambda images, labels: sorted(zip(map(bytes, images), labels.ravel().tolist()))
    pool = key(np.concatenate([whole["train"][0], whole["valid"][0]]),
               np.concatenate([whole["train"][1], whole["valid"][1]]))
    validated = []
    for fold in range(5):
        splits = tasks.image_splits(fold=fold, folds=5)
        np.testing.assert_array_equal(splits["test"][0], whole["test"][0])
        train, valid = (key(*splits[s][:2]) for s in ("train", "valid"))
        assert len(valid) in (323, 324) and sorted(train + valid) == pool
        validated += valid
    assert sorted(validated) == pool
    assert tasks.get("images", fold=2).vocab_size == 10
    for bad, message in [(dict(fold=5), "images fold must be an integer between 0 and 4"),
                         (dict(fold=0, folds=1), "images folds must be an integer >= 2")]:
        with pytest.raises(ValueError, match=message):
            tasks.image_splits(**bad)


def test_images_task_reads_a_tfds_image_set():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=40):
        task = tasks.get("images", source="mnist")
        splits = tasks.image_splits("mnist")
    inputs, targets, _ = task.sample(jax.random.key(0), 8, "train")
    assert inputs.shape == (8, 1, 784) and inputs.dtype == jnp.float32
    assert 0.0 <= float(inputs.min()) and float(inputs.max()) <= 1.0
    assert task.vocab_size == int(max(s[1].max() for s in splits.values())) + 1
    assert [len(splits[s][0]) for s in tasks.SPLITS] == [40, 40, 40]  # mock: 40 per split


def test_quantise_row_major_and_pooling():
    image = np.array([[[0.0, 0.3], [0.6, 1.0]]])
    np.testing.assert_array_equal(tasks.quantise(image, levels=4), [[0, 1, 2, 3]])
    np.testing.assert_array_equal(tasks.quantise(image, levels=4, downsample=2), [[1]])


def test_pixels_from_tfds_mock():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=20):
        task = tasks.get("pixels", source="mnist", levels=3)
    inputs, _, _ = sample_np(task)
    assert task.seq_len == 28 * 28 - 1 and int(inputs.max()) < 3


# ------------------------------------------------------------ bad input


@pytest.mark.parametrize("name, config, message", [
    ("nonsense", {}, "unknown task 'nonsense'.*assoc_retrieval"),
    ("assoc_retrieval", dict(num_pairs=27), "num_pairs.*between 1 and 26"),
    ("recall_overwrite", dict(num_keys=30), "num_keys.*between 1 and 26"),
    ("mqar", dict(vocab_size=64, num_pairs=8, seq_len=20), "seq_len=20 is too short"),
    ("mqar", dict(vocab_size=10, num_pairs=8, seq_len=64), "num_pairs=8 exceeds"),
    ("copy", dict(num_symbols=40), "num_symbols"),
    ("text", dict(path="a.txt", tfds_name="tiny_shakespeare"), "one corpus.*not both"),
    ("pixels", dict(predict="colour"), "predict"),
])
def test_bad_config_raises_clear_error(name, config, message):
    with pytest.raises(ValueError, match=message):
        tasks.get(name, **config)


def test_unknown_split_raises(small_tasks):
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        small_tasks["copy"].sample(KEY, BATCH, split="validation")


def test_missing_file_names_where_it_looked(tmp_path):
    missing = tmp_path / "nowhere.txt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        tasks.get("text", path=str(missing))


def test_corpus_shorter_than_window(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("x" * 500, encoding="utf-8")  # valid and test splits: 25 characters
    with pytest.raises(ValueError, match="valid split .* 25 characters"):
        tasks.get("text", path=str(path), seq_len=100)


def test_encode_rejects_symbols_outside_vocabulary(small_tasks):
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tasks.encode(small_tasks["assoc_retrieval"], "c9A")


# ------------------------------------------------------------------ metrics


def test_masked_metrics_match_hand_computation():
    logits = jnp.array([[[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 5.0]]])
    targets = jnp.array([[0, 2, 2]])
    mask = jnp.array([[1.0, 1.0, 0.0]])
    log_probs = np.asarray(jax.nn.log_softmax(logits))
    expected_nll = -(log_probs[0, 0, 0] + log_probs[0, 1, 2]) / 2
    assert float(tasks.masked_accuracy(logits, targets, mask)) == pytest.approx(0.5)
    assert float(tasks.masked_nll(logits, targets, mask)) == pytest.approx(expected_nll, rel=1e-6)
    assert tasks.bits_per_char(math.log(2.0)) == pytest.approx(1.0)
    # A mask that scores nothing has no figure to report: refused, not a made-up 0.
    with pytest.raises(ValueError, match="mask is all zero"):
        tasks.masked_accuracy(logits, targets, jnp.zeros((1, 3)))
