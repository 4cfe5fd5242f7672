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
