"""experiments/text.py end to end on a tiny corpus: every part, the report's figures agree
with the per-position curves, finished cells are read back, bad input is named."""

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import text  # noqa: E402

from plastix import curves  # noqa: E402

LENGTHS = (20, 60)
TINY = ["--lengths", *map(str, LENGTHS), "--test-chars", "120", "--min-windows", "3",
        "--no-plots"]
# Each part's own flags (a flag that a chosen part does not read is refused).
NETWORKS = ["--hidden", "6", "--train-length", "20", "--batch", "2", "--log-every", "2",
            "--chunk", "16"]
RULES = [*NETWORKS, "--rule-updates", "2"]
PRIORS = [*NETWORKS, "--prior-updates", "2", "--seeds", "0", "--backprop-lrs", "0.01"]
LSTM = ["--lstm-hidden", "6", "--lstm-steps", "2", "--lstm-batch", "2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """3,000 characters of words from a small alphabet: valid and test get 150 each."""
    rng = np.random.default_rng(0)
    words = ["the ", "cat ", "sat ", "on ", "a ", "mat, ", "and ", "then\n"]
    text_ = "".join(rng.choice(words, size=1200))[:3000]
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(text_, encoding="utf-8")
    return str(path)


def check_summaries(corpus: str, rows: list[dict]) -> None:
    for row in rows:
        for length in LENGTHS:
            s = row["lengths"][str(length)]
            assert s["windows"] == text.windows_at(text.parse_args(
                ["--corpus", corpus, *TINY]), length)
            if s["diverged"] == 0:  # the binned curve averages back to the lifetime mean
                widths = np.diff(curves.log_bins(length))
                assert np.sum(np.array(s["curve"]) * widths) / length == pytest.approx(
                    s["bits"], rel=1e-5)


def ngram_rows(results: dict) -> list[dict]:
    return [{"lengths": {n: r[name] for n, r in results["ngrams"]["lengths"].items()}}
            for name in results["ngrams"]["lengths"]["20"]]


@pytest.mark.slow  # end to end: the text experiment's parts and report
def test_rules_and_ngrams_report_and_are_read_back(corpus, tmp_path):
    out = str(tmp_path / "text")
    argv = ["--corpus", corpus, "--out", out, *TINY, *RULES, "--parts", "ngrams", "rules",
            "--cells", "readout_only"]
    results = text.main(argv)
    report = open(os.path.join(out, "report.md")).read()
    for expected in ("(i) A learning rule only", "readout rule only (hidden fixed)",
                     "online interpolated (add-k, from zero)", "train-fitted trigram"):
        assert expected in report, expected
    check_summaries(corpus, [*results["rules"], *ngram_rows(results)])
    # Online n-grams start from nothing in every window: the first prediction is uniform.
    online = results["ngrams"]["lengths"]["60"]["online unigram"]
    assert online["curve"][0] == pytest.approx(np.log2(text.text_task(corpus, 20).vocab_size))

    cell = os.path.join(out, "meta", "readout_only_s0", "result.json")
    stamp = os.stat(cell).st_mtime_ns
    again = text.main(argv)
    assert os.stat(cell).st_mtime_ns == stamp  # read back, not run again
    assert again["rules"] == json.loads(json.dumps(results["rules"]))
    # A finished cell is never reported for a run with other settings.
    with pytest.raises(ValueError, match="readout_only_s0 holds a result made with other "
                                         "settings \\(differs in: flags\\)"):
        text.main([*argv, "--rule-updates", "3"])
    with pytest.raises(ValueError, match="differs in: scored windows"):
        text.main([*argv, "--test-chars", "240", "--parts", "rules"])


@pytest.mark.slow
def test_prior_and_lstm_parts_run_and_report(corpus, tmp_path):
    out = str(tmp_path / "text")
    results = text.main(["--corpus", corpus, "--out", out, *TINY, *PRIORS, *LSTM, "--parts",
                         "priors", "lstm", "--cells", "rnn_learned_w0"])
    report = open(os.path.join(out, "report.md")).read()
    for expected in ("(ii) With meta-learned priors", "non-plastic RNN, learned weights",
                     "LSTM 6 (backprop)", "The backprop LSTM at full strength"):
        assert expected in report, expected
    check_summaries(corpus, [*results["priors"], results["lstm"]])


@pytest.mark.parametrize("flags, message", [
    (["--lengths", "2000"], "fewer than the 2001 a window of seq_len=2000 needs"),
    (["--cells", "nope"], "--cells has unknown names ['nope']"),
    (["--hidden", "0"], "--hidden: must be an integer >= 1"),
    (["--grad-lr", "nan"], "--grad-lr: must be a finite number > 0"),
])
def test_bad_input_is_named(corpus, tmp_path, flags, message, capsys):
    argv = ["--corpus", corpus, "--out", str(tmp_path / "x"), *TINY, *RULES, *flags]
    try:
        text.main(argv)
    except SystemExit:
        assert message in capsys.readouterr().err
    except ValueError as e:
        assert message in str(e)
    else:
        pytest.fail("no error")


# --- the sparse part (fast: no cell is run) ------------------------------------------------


def test_sparse_cells_build_the_bundled_network_and_fit_the_text_task():
    from plastix import network as nw, plastic

    vocab = text.text_task(text.DEFAULT_CORPUS, 100).vocab_size
    cells = text.sparse_cells()
    main = cells[0]
    assert text.sparse_network(main, vocab) == nw.load(text.SPARSE_NETWORK).sized(vocab, vocab)
    by_name = {cell.name: cell for cell in cells}
    assert len(by_name) == len(cells)
    for cell in cells:
        net = text.sparse_network(cell, vocab, text.bcpnn_rule(
            {"eta": 1.0, "gain": 1.0, "bias": 0.5}))
        hidden = net.layers[0]
        assert (hidden.size, hidden.activation) == (cell.size, f"kwta({cell.k})")
        assert [c.init_scale for c in hidden.inputs] == list(cell.scales)
        assert net.readout_matrices == ("readout",) and not net.evolve_init
        assert {net.connection(c.name).rule for c in hidden.inputs} == {cell.hidden_rule}
        params = text.sparse_params(cell, net, {"eta": 3.0})
        assert float(params["coeffs"]["readout"]["eta"]) == 3.0
        if cell.fixed:  # the same network as its fixed one, but for the hidden rule
            fixed = by_name[cell.fixed]
            assert fixed.hidden_rule is None
            assert (cell.size, cell.k, cell.scales) == (fixed.size, fixed.k, fixed.scales)
            for conn in hidden.inputs:
                assert params["coeffs"][conn.name]["eta"] == np.float32(cell.hidden_eta)
        plastic.check_task(net, text.text_task(text.DEFAULT_CORPUS, 100))


def test_the_readout_grid_scores_what_the_network_lifetime_scores(corpus):
    """The fast search over the BCPNN readout's settings (k active columns per step) gives
    the NLL of the network's own lifetime at every setting."""
    import jax
    import jax.numpy as jnp

    cell = text.SparseCell("small", "small", size=48, k=4, scales=(1.0, 0.5, 0.25))
    task = text.text_task(corpus, 40)
    inputs, targets, mask = jax.device_get(task.sample(jax.random.key(3), 3, "valid"))
    grid = {"eta": [1.0, 3.0], "gain": [1.4], "bias": [0.5, 1.0]}
    code = text.kwta_code(text.sparse_network(cell, task.vocab_size), jax.random.key(9),
                          inputs)
    nll = text.bcpnn_grid_nll(code, jnp.asarray(targets), cell.size, task.vocab_size,
                              *(jnp.asarray(grid[key]) for key in ("eta", "gain", "bias"))
                              ).sum(axis=(0, 1))
    for i, eta in enumerate(grid["eta"]):
        for j, bias in enumerate(grid["bias"]):
            choice = {"eta": eta, "gain": 1.4, "bias": bias}
            net = text.sparse_network(cell, task.vocab_size, text.bcpnn_rule(choice))
            lifetime = curves.learning_curve(net, text.sparse_params(cell, net, choice),
                                             jax.random.key(9), inputs, targets, mask,
                                             chunk=40)
            assert float(nll[i, 0, j]) == pytest.approx(lifetime.nll.sum(), rel=1e-5)


def test_sparse_part_takes_its_cells_and_refuses_other_parts_flags(corpus, tmp_path):
    argv = ["--corpus", corpus, "--out", str(tmp_path / "x"), *TINY, "--parts", "sparse"]
    args = text.parse_args([*argv, "--cells", "sparse_bcpnn", "sparse_k8"])
    assert args.cells == ["sparse_bcpnn", "sparse_k8"]
    with pytest.raises(ValueError, match="--rule-updates"):
        text.parse_args([*argv, "--rule-updates", "3"])


def test_the_context_code_gives_each_context_units_of_its_own():
    inputs = np.array([[0, 1, 0, 1, 2], [2, 2, 2, 2, 2]])
    ids, n_units = text.context_code(inputs, vocab=3, units=(2, 1))
    assert ids.shape == (2, 5, 3) and n_units == int(ids.max()) + 1 <= 2 * 3 + 5
    first = ids[0]
    # The last char: 0 at steps 0 and 2, 1 at 1 and 3; the last two: (., 0), (0, 1),
    # (1, 0), (0, 1), (1, 2): steps 1 and 3 share, and nothing else does.
    np.testing.assert_array_equal(first[0, :2], first[2, :2])
    np.testing.assert_array_equal(first[1], first[3])
    assert len({tuple(first[t, :2]) for t in range(5)}) == 3
    assert len(set(first[:, 2])) == 4 and not set(first[:, 2]) & set(first[:, :2].ravel())


def test_counted_cells_run_score_and_are_read_back(corpus, tmp_path):
    """The sparse part's cells that run no network: the 4-gram's figure is the online
    4-gram's own on the test windows, and both cells are read back, not rerun."""
    from plastix import ngram

    argv = ["--corpus", corpus, "--out", str(tmp_path / "x"), *TINY, "--parts", "sparse",
            "--cells", "context_code", "online_4gram"]
    rows = {r["cell"]["name"]: r for r in text.main(argv)["sparse"]}
    assert set(rows) == {"context_code", "online_4gram"}
    check_summaries(corpus, rows.values())
    args = text.parse_args(argv)
    for length in LENGTHS:
        vocab = text.text_task(corpus, length).vocab_size
        valid = text.split_windows(args, length, "valid")
        choice = ngram.select_online_counted(valid[0], valid[1], vocab, max_order=4)
        inputs, targets, _ = text.split_windows(args, length)
        nll = -np.log(ngram.online_counted_probs(inputs, targets, vocab, choice.ks)
                      @ np.array(choice.weights))
        assert rows["online_4gram"]["lengths"][str(length)]["bits"] == pytest.approx(
            nll.mean() / np.log(2), rel=1e-6)
        assert set(rows["context_code"]["choices"][str(length)]) == {
            "eta", "gain", "bias", "valid_bits"}
    again = {r["cell"]["name"]: r for r in text.main(argv)["sparse"]}
    assert {name: r["seconds"] for name, r in again.items()} == {
        name: r["seconds"] for name, r in rows.items()}
