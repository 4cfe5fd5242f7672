"""Text: plastic RNNs that learn to predict characters within a lifetime, against learners
that start from nothing too, and against priors fitted on the training text.

A lifetime reads one window of a text file, one character at a time, predicting each next
character before it is seen. Every figure is bits per character on windows of the test
split, averaged over a whole lifetime of 100, 1,000 or 10,000 characters (``--lengths``),
and reported per position as the in-lifetime learning curve.

Two kinds of plastic result, never mixed:

* **a learning rule only**: shared coefficients, random weights drawn afresh every lifetime.
  Its yardstick is the online n-gram learners (add-k unigram, bigram, trigram and their
  interpolation, counts from zero in every window, k and the mixture chosen on the
  validation split for each lifetime length).
* **a rule plus a meta-learned prior**: per-neuron or per-synapse coefficients and/or learned
  initial weights (differentiable plasticity, backpropamine). Their yardsticks are priors
  too: n-grams fitted on the training split, and a non-plastic RNN and an LSTM of the same
  hidden size trained by backprop on the same number of 100-character windows.

The sparse part (``--parts sparse``) is a learning rule only too, on another network: a
wide layer of fixed random matrices from the last few characters whose k units of largest
drive are 1 and the others 0 (``kwta(k)``), under the BCPNN readout, whose weights are the
log odds of Hebbian co-occurrence counts (`plastix.rules.bcpnn`). Its three settings
(rate, gain, bias) are chosen on the validation windows of each length, as the n-grams'
k and mixture are, by a search that runs the grid in one pass over the fixed code
(`bcpnn_grid_nll`); the test windows are scored by the network's own lifetime. Its cells
vary width, k and lags, put Hebb or instar on the hidden matrices (the readout keeping the
fixed layer's settings), and measure the readout's headroom on a code with units of their
own for every context (`context_code`); beside them, the online interpolated 4-gram, the
count-based learner that reads the same three characters (`ngram.select_online_counted`).

The first user's network is the preset every hidden-rule row shares: reward-modulated
three-factor hidden layers (``modulated(rule)`` on W_in and W_rec, third factor
r = -(NLL - running mean)), rows of the hidden matrices L2-normalised after every update with
weight noise, and a readout that learns from the teacher by the 16-term ``multilinear_mod``
rule (started at zero). Only the hidden rule changes from row to row. The readout rows keep
the random hidden weights fixed and change the readout's rule: ``multilinear_mod``, the same
with a rate annealed by presynaptic use (``annealed``), and recursive least squares
(``rls``) at each prior precision alpha.

    python experiments/text.py                                   # everything (hours on 2 CPU cores)
    python experiments/text.py --parts ngrams rules              # some parts
    python experiments/text.py --parts sparse --cells sparse_bcpnn   # one cell
    python experiments/text.py --corpus pg1342.txt --out runs/text_austen   # another book

The corpus is tiny shakespeare as bundled with plastix unless ``--corpus`` names a file;
results name it ``tinyshakespeare`` (and report.json its sha256), so they read back in any
checkout.

Each part is a set of cells, each an ``es_abcd.py`` or ``plastix.train`` run directory
under ``--out`` with a ``result.json`` written when its evaluation is done; a finished
cell is read back and an unfinished one resumes from its checkpoint, so a killed run is
completed by running the same command again. ``--out`` receives ``report.md``,
``report.json``, ``learning_curve.png`` (bits/char against position, log-scaled, every rule
and baseline), ``dynamics.png`` (weight norms, update rate and a readout row across the
longest lifetime) and, with the sparse part, ``sparse.png`` (its network against the
online n-grams, and each plastic hidden layer against the same layer fixed).

``plastix text`` (installed with plastix) and
``python experiments/text.py`` (in a checkout) run this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import time

from plastix.experiments import es_abcd  # first: it sets the device policy before JAX starts
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from plastix import (  # noqa: E402
    checks, cli, curves, models, ngram, plastic, rules, runs, tasks, train,
)
from plastix import network as network_lib  # noqa: E402

DEFAULT_CORPUS = tasks.TINY_SHAKESPEARE
TEST_SEED, VALID_SEED, LIFETIME_SEED = 777, 778, 779
PARTS = ("ngrams", "rules", "sparse", "priors", "lstm")
LN2 = math.log(2)
REPORT_FILES = ("report.md", "report.json", "learning_curve.png", "dynamics.png", "sparse.png")
# What --out holds: the report, and the cells in a directory per kind of cell.
CELL_DIRS = ("ngrams", "meta", "sparse", "backprop")
KIND = runs.RunKind("text", files=REPORT_FILES, dirs=CELL_DIRS,
                    recognise=runs.has_entry(*CELL_DIRS))


def readout_flags(rule: str) -> tuple[str, ...]:
    """The readout of every rule-table row: biased, learning by ``rule`` from coefficients
    that start at zero with a unit rate (log rates)."""
    return ("--readout-bias", "--rule-out", rule, "--log-rates", "--init-mean", "zero")


# The readout's 16 terms start at zero with a unit rate (the delta rule's own start,
# eta = 100, makes text lifetimes diverge at once), so the outer loop finds its terms.
READOUT = readout_flags("multilinear_mod")
# The same readout rule with a rate that falls as each presynaptic unit is used,
# (1 + n_j / tau)^(-kappa) (`rules.annealed`), kappa and tau learned with the rest: the
# n-grams' rates fall as 1 / count, and a constant rate learns no better after 10,000
# characters than after 100.
ANNEALED_READOUT = readout_flags("annealed(multilinear_mod)")
# Recursive least squares on the readout (`rules.rls`): the delta rule through the inverse
# correlation of the hidden units seen so far (under a one-hot input, exactly 1 / count per
# column); its prior precision alpha is a hyperparameter, not learned, so each is a row.
RLS_ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0)


def rls_readout(alpha: float) -> tuple[str, ...]:
    return readout_flags(f"rls(alpha={alpha!r})")


# The first user's hidden layers. Hidden rules start at eta = 0.01 (with every term zero):
# from eta = 1 the meta-gradient could not bring a hidden rule back to the readout rule's
# score within the budget.
HIDDEN_PRESET = ("--modulation", "reward", "--normalise", "l2", "--normalise-layers", "in",
                 "rec", "--weight-noise", "0.01", "--init-hidden-eta", "0.01")
HIDDEN_RULES = {"Hebb": "hebb", "Oja": "oja", "competitive (instar)": "instar",
                "covariance": "covariance", "BCM": "bcm", "HPCA": "hpca", "ABCD": "ABCD_lr"}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One meta-learned network: its ``es_abcd.py`` flags beyond the shared ones.

    ``kind`` is "rule" (a learning rule only) or "prior" (a rule plus a meta-learned prior);
    ``train_length`` overrides ``--train-length`` (longer lifetimes are learned by truncated
    BPTT in windows of ``--train-length``).
    """

    name: str
    label: str
    kind: str
    outer: str
    flags: tuple[str, ...]
    train_length: int | None = None


def hidden_rule_flags(rule: str, readout: tuple[str, ...] = READOUT) -> tuple[str, ...]:
    """The first user's preset with ``rule`` on both hidden layers and ``readout``'s flags
    for the readout."""
    hidden = f"modulated({rule})"
    return (*readout, *HIDDEN_PRESET, "--rule-in", hidden, "--rule-rec", hidden)


def rule_cells() -> list[Cell]:
    """The rule table: the readout alone, then each hidden rule under the first user's preset,
    by gradient, and the preset's ABCD row by ES as well; then the readout rules whose rate
    falls with use (annealed, and RLS at each alpha)."""
    cells = [Cell("readout_only", "readout rule only (hidden fixed)", "rule", "gradient",
                  READOUT)]
    cells += [Cell(f"hidden_{rule}", f"{label} hidden + readout rule", "rule", "gradient",
                   hidden_rule_flags(rule)) for label, rule in HIDDEN_RULES.items()]
    cells.append(Cell("hidden_ABCD_lr_es", "ABCD hidden + readout rule (ES)", "rule", "es",
                      hidden_rule_flags("ABCD_lr")))
    # Does a rule meta-learned on longer lifetimes learn better over them?
    cells.append(Cell("readout_only_T1000", "readout rule only, meta-learned on 1,000-char "
                      "lifetimes", "rule", "gradient", READOUT, train_length=1000))
    annealed = "readout rule, annealed rate"
    cells += [Cell("readout_annealed", f"{annealed} (hidden fixed)", "rule", "gradient",
                   ANNEALED_READOUT),
              Cell("readout_annealed_T1000", f"{annealed}, meta-learned on 1,000-char "
                   "lifetimes", "rule", "gradient", ANNEALED_READOUT, train_length=1000)]
    cells += [Cell(f"readout_rls_a{alpha:g}", f"readout RLS rule, alpha = {alpha:g} (hidden "
                   "fixed)", "rule", "gradient", rls_readout(alpha)) for alpha in RLS_ALPHAS]
    # alpha = 10 is the best of RLS_ALPHAS on the validation windows.
    cells += [Cell("readout_rls_a10_T1000", "readout RLS rule, alpha = 10, meta-learned on "
                   "1,000-char lifetimes", "rule", "gradient", rls_readout(10.0),
                   train_length=1000),
              Cell("hidden_oja_rls", "Oja hidden + readout RLS rule, alpha = 10", "rule",
                   "gradient", hidden_rule_flags("oja", readout=rls_readout(10.0)))]
    # The sparse part's wide random layer under an error-driven readout instead of BCPNN:
    # the delta rule with a rate annealed by each unit's use, from eta = 1.
    cells.append(Cell("sparse_annealed_delta", "4,096 random kWTA(32) units on 3 chars + "
                      "annealed delta readout", "rule", "gradient",
                      ("--network", "sparse_text_delta", "--init-mean", "zero")))
    return cells


def prior_cells() -> list[Cell]:
    """Meta-learned priors: the non-plastic RNN of the same network and budget,
    backpropamine, and the first user's preset with learned initial weights, by gradient
    (three seeds each) and by ES."""
    learned_w0 = ("--evolve-init", "--readout-bias")
    return [
        Cell("rnn_learned_w0", "non-plastic RNN, learned weights (backprop)", "prior",
             "gradient", (*learned_w0, "--rule-out", "none")),
        Cell("backpropamine", "backpropamine W_rec + readout rule, learned weights", "prior",
             "gradient", (*READOUT, "--evolve-init", "--rule-rec", "backpropamine",
                          "--modulation", "network")),
        # Shared coefficients: per-neuron ones (--granularity post) diverge within the
        # first updates here, as the readout's polynomial rule then grows some rows without
        # bound (see the README's text section).
        Cell("first_user_w0", "first user's preset (ABCD), learned weights", "prior",
             "gradient", (*hidden_rule_flags("ABCD_lr"), "--evolve-init")),
        Cell("first_user_w0_es", "first user's preset (ABCD), learned weights (ES)", "prior",
             "es", (*hidden_rule_flags("ABCD_lr"), "--evolve-init")),
        # The non-plastic RNN's learned weights with the annealed readout rule on top.
        Cell("rnn_w0_annealed_readout", "RNN + annealed readout rule, learned weights",
             "prior", "gradient", (*ANNEALED_READOUT, "--evolve-init")),
        Cell("rnn_w0_rls_readout", "RNN + RLS readout rule (alpha = 1), learned weights",
             "prior", "gradient", (*rls_readout(1.0), "--evolve-init")),
    ]


def parser() -> cli.Parser:
    p = cli.Parser(description=__doc__)
    p.add_argument("--corpus", default=DEFAULT_CORPUS,
                   help="any UTF-8 plain-text file, or the name of a corpus bundled with "
                        "plastix")
    p.add_argument("--out", default="runs/text", help="where cells, report and plots go")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--cells", nargs="+", default=None, metavar="NAME",
                   help="only these cells of the rules, sparse and priors parts (default "
                        "all; names as in the report.json)")
    p.add_argument("--lengths", type=checks.integer(at_least=2), nargs="+",
                   default=[100, 1000, 10000],
                   help="lifetime lengths (characters) every model is scored at")
    p.add_argument("--test-chars", type=checks.SIZE, default=51200,
                   help="characters scored per lifetime length (windows = this / length, "
                        "at least --min-windows)")
    p.add_argument("--min-windows", type=checks.SIZE, default=16)
    p.add_argument("--chunk", type=checks.SIZE, default=500,
                   help="steps per jitted scan when scoring")
    p.add_argument("--hidden", type=checks.SIZE, default=64, help="hidden units of every network")
    p.add_argument("--train-length", type=checks.SIZE, default=100,
                   help="lifetime length the outer loops and backprop train on")
    p.add_argument("--batch", type=checks.SIZE, default=16, help="windows per update")
    p.add_argument("--rule-updates", type=checks.SIZE, default=150,
                   help="gradient updates of each rule-table cell")
    p.add_argument("--prior-updates", type=checks.SIZE, default=200,
                   help="gradient updates (and backprop steps) of each prior cell")
    p.add_argument("--grad-lr", type=checks.RATE, default=0.03)
    p.add_argument("--es-generations", type=checks.SIZE, default=40)
    p.add_argument("--es-pop", type=checks.integer(at_least=2), default=64,
                   help="ES population (even: members come in antithetic pairs)")
    p.add_argument("--es-batch", type=checks.SIZE, default=8)
    p.add_argument("--seeds", type=checks.SEED, nargs="+", default=[0, 1, 2],
                   help="seeds of the prior cells and their backprop baselines")
    p.add_argument("--backprop-lrs", type=checks.RATE, nargs="+",
                   default=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
                   help="Adam rates tried for the LSTM baseline (chosen on valid, seed 0)")
    p.add_argument("--lstm-hidden", type=checks.SIZE, default=256,
                   help="hidden units of the stand-alone LSTM baseline (part lstm)")
    p.add_argument("--lstm-steps", type=checks.SIZE, default=6000)
    p.add_argument("--lstm-batch", type=checks.SIZE, default=32)
    p.add_argument("--lstm-lr", type=checks.RATE, default=3e-3)
    p.add_argument("--log-every", type=checks.SIZE, default=50)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: report the cells already finished under --out")
    return p


# The dests of the flags each piece of work reads: every invocation, the meta-learned
# cells (and those of each outer loop), the priors part's backprop baselines, the lstm part.
FLAGS_READ = {
    "always": {"corpus", "out", "parts", "lengths", "test_chars", "min_windows", "no_plots",
               "report_only"},
    "meta": {"cells", "chunk", "hidden", "train_length"},
    "gradient": {"grad_lr", "batch", "log_every"},
    "gradient rule": {"rule_updates"},
    "es": {"es_generations", "es_pop", "es_batch"},
    "priors": {"cells", "chunk", "hidden", "train_length", "batch", "log_every",
               "prior_updates", "seeds", "backprop_lrs"},
    "lstm": {"train_length", "log_every", "lstm_hidden", "lstm_steps", "lstm_batch", "lstm_lr"},
    "sparse": {"cells", "chunk"},
}


def all_cells() -> dict[str, list[Cell]]:
    return {"rules": rule_cells(), "priors": prior_cells()}


def chosen_cells(args) -> dict[str, list[Cell]]:
    """The meta-learned cells this invocation runs, per part (none for a part not chosen)."""
    return {part: [cell for cell in cells if part in args.parts
                   and (args.cells is None or cell.name in args.cells)]
            for part, cells in all_cells().items()}


def flags_read(args) -> set[str]:
    """The dests of the flags that the chosen parts and cells read (`FLAGS_READ`)."""
    meta = [cell for cells in chosen_cells(args).values() for cell in cells]
    work = {"always", *(part for part in ("priors", "lstm", "sparse") if part in args.parts),
            *(cell.outer for cell in meta)}
    if {"rules", "priors"} & set(args.parts):
        work.add("meta")
    if any(cell.outer == "gradient" and cell.kind == "rule" for cell in meta):
        work.add("gradient rule")
    return set().union(*(FLAGS_READ[name] for name in work))


def check_cells(args) -> None:
    """Every name in --cells is a cell of a chosen part: a name that selects nothing
    would leave its part silently empty."""
    if args.cells is None:
        return
    part_of = {cell.name: part for part, cells in all_cells().items() for cell in cells}
    part_of.update({cell.name: "sparse" for cell in sparse_cells()},
                   **{CONTEXT_CELL: "sparse", NGRAM4_CELL: "sparse"})
    unknown = sorted(set(args.cells) - set(part_of))
    if unknown:
        raise checks.FieldError("--cells", f"has unknown names {unknown}; known: "
                                           f"{sorted(part_of)}")
    elsewhere = [name for name in args.cells if part_of[name] not in args.parts]
    if elsewhere:
        parts = " ".join(sorted({part_of[name] for name in elsewhere}))
        raise checks.FieldError("--cells", f"names {', '.join(elsewhere)} of --parts {parts}, "
                                           f"a part not chosen; add it to --parts or drop them")


def parse_args(argv=None) -> argparse.Namespace:
    """The checked command line; ValueError naming the flag for a mistake."""
    args, given = cli.parse(parser(), argv)
    check_cells(args)
    read = flags_read(args)
    context = f"to --parts {' '.join(args.parts)}" + (" with these --cells" if args.cells else "")
    cli.refuse(given, [dest for dest in given if dest not in read], context)
    if args.es_pop % 2:
        raise checks.FieldError("--es-pop", f"must be even (ES members come in antithetic "
                                            f"pairs), got {args.es_pop}")
    if len(set(args.seeds)) != len(args.seeds):
        raise checks.FieldError("--seeds", f"must not repeat a seed, got {args.seeds}")
    if not os.path.isfile(tasks.corpus_path(args.corpus)):
        raise checks.FieldError("--corpus", f"{args.corpus}: no such file; give a UTF-8 "
                                            f"text file")
    if args.report_only and not os.path.isdir(args.out):
        raise checks.FieldError("--out", f"{args.out}: no such directory, so --report-only "
                                         f"has no finished cells to report")
    args.lengths = sorted(set(args.lengths))
    return args


# --- data -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def text_task(corpus: str, length: int) -> tasks.Task:
    return tasks.text(corpus, seq_len=length)


def windows_at(args, length: int) -> int:
    return max(args.min_windows, math.ceil(args.test_chars / length))


def split_windows(args, length: int, split: str = "test"):
    """The windows every model is scored on: the same for every row of a table."""
    return _sampled_windows(args.corpus, length, split, windows_at(args, length))


@functools.lru_cache(maxsize=16)
def _sampled_windows(corpus: str, length: int, split: str, count: int):
    seed = TEST_SEED if split == "test" else VALID_SEED
    task = text_task(corpus, length)
    return jax.device_get(task.sample(jax.random.key(seed), count, split))


def summary(nll: np.ndarray, edges: np.ndarray) -> dict:
    """Lifetime-mean bits/char of ``(B, T)`` NLLs, its standard error over windows, the
    fraction of windows that diverged, and the per-position curve in log bins."""
    finite = np.all(np.isfinite(nll), axis=1)
    per_window = nll.mean(axis=1) / LN2
    kept = per_window[finite] if finite.any() else per_window
    curve = curves.binned(nll[finite].mean(axis=0) / LN2, edges) if finite.any() else \
        np.full(len(edges) - 1, np.nan)
    return {"bits": float(kept.mean()),
            "sem": float(kept.std(ddof=1) / math.sqrt(len(kept))) if len(kept) > 1 else 0.0,
            "diverged": float(1 - finite.mean()), "windows": int(nll.shape[0]),
            "curve": [float(x) for x in curve]}


def curve_edges(length: int) -> np.ndarray:
    return curves.log_bins(length, per_decade=8)


# --- cells ------------------------------------------------------------------------------


def read_result(args, cell_dir: str, settings: dict) -> dict | None:
    """A finished cell's result, or None if it has not finished.

    ``settings`` are the result's fields that this invocation would set (its flags, rate,
    budget), and the windows it is scored on must be this invocation's: a cell finished
    under other settings is refused, not reported as if it were this run's.
    """
    result = runs.read_result(os.path.join(cell_dir, "result.json"), {"lengths": dict},
                              check=summaries_problem)
    if result is None:
        return None
    # The corpus it was computed on, by content (results from before it was recorded
    # name none): one rewritten under the same path gives other windows and scores.
    if "corpus" in result:
        changed = runs.changed_data_files({runs.DATA_FILES: {args.corpus: result["corpus"]}},
                                          {runs.DATA_FILES: {args.corpus: corpus_file(args)}})
        if changed:
            raise ValueError(f"{changed[0]}; {cell_dir} holds a result computed on the "
                             f"original: put it back or choose another --out")
    expected = {**settings, "scored windows": {str(n): windows_at(args, n) for n in args.lengths}}
    found = {**{key: result.get(key) for key in settings}, "scored windows": {
        length: next(iter_summaries(rows))["windows"]
        for length, rows in result["lengths"].items()}}
    differs = [key for key in expected if found[key] != expected[key]]
    if differs:
        raise ValueError(f"{cell_dir} holds a result made with other settings (differs in: "
                         f"{', '.join(differs)}); choose another --out or delete it")
    return result


def summaries_problem(result: dict) -> str | None:
    """What is wrong with a cell result's per-length summaries (`summary`), if anything."""
    for length, rows in result["lengths"].items():
        if not isinstance(rows, dict):
            return f"its length {length} is {json.dumps(rows)[:40]}"
        for s in iter_summaries(rows):
            if not isinstance(s, dict) or not all(isinstance(s.get(k), runs.NUMBER)
                                                  for k in ("bits", "diverged", "windows")):
                return f"a summary of length {length} lacks its figures"
    if "cell" in result and not isinstance(result["cell"], dict):
        return "its 'cell' is not an object"
    return None


def iter_summaries(rows: dict):
    """The `summary` dicts of one length's entry: itself, or each of its named rows."""
    if "windows" in rows:
        yield rows
    else:
        yield from rows.values()


def corpus_file(args) -> dict:
    """The corpus's size and sha256 (`runs.file_fingerprint`), which every result records."""
    return runs.file_fingerprint(args.corpus)


def write_result(args, cell_dir: str, result: dict) -> dict:
    os.makedirs(cell_dir, exist_ok=True)
    result = {**result, "corpus": corpus_file(args)}
    runs.write_json(os.path.join(cell_dir, "result.json"), result)
    return result


def ngram_cell(args) -> dict:
    """Online n-grams (k and mixture chosen on valid at every length) and train-fitted ones
    (chosen on valid 100-character windows), scored on the test windows."""
    cell_dir = os.path.join(args.out, "ngrams")
    if (done := read_result(args, cell_dir, {})) is not None or args.report_only:
        return done
    vocab = text_task(args.corpus, args.lengths[0]).vocab_size
    _, ids = tasks.encode_text_splits(tasks.read_text_splits(args.corpus))
    counts = ngram.fit_counts_by_order(ids["train"], vocab)
    valid = split_windows(args, min(args.lengths), "valid")
    fitted = ngram.select_fitted(counts, valid[0], valid[1])
    result = {"fitted_choice": dataclasses.asdict(fitted), "online_choice": {}, "lengths": {}}
    for length in args.lengths:
        valid = split_windows(args, length, "valid")
        online = ngram.select_online(valid[0], valid[1], vocab)
        result["online_choice"][str(length)] = dataclasses.asdict(online)
        inputs, targets, _ = split_windows(args, length)
        edges = curve_edges(length)
        rows = {}
        probs = np.asarray(ngram.online_target_probs(inputs, targets, vocab, online.ks))
        for order, name in enumerate(("unigram", "bigram", "trigram")):
            rows[f"online {name}"] = summary(-np.log(probs[..., order]), edges)
        rows["online interpolated"] = summary(-np.log(probs @ np.array(online.weights)), edges)
        fitted_probs = np.asarray(ngram.fitted_target_probs(counts, inputs, targets, fitted.ks))
        for order, name in enumerate(("unigram", "bigram", "trigram")):
            rows[f"train-fitted {name}"] = summary(-np.log(fitted_probs[..., order]), edges)
        rows["train-fitted interpolated"] = summary(
            -np.log(fitted_probs @ np.array(fitted.weights)), edges)
        result["lengths"][str(length)] = rows
    return write_result(args, cell_dir, result)


def cell_flags(args, cell: Cell, seed: int, out: str) -> list[str]:
    updates = args.rule_updates if cell.kind == "rule" else args.prior_updates
    length = cell.train_length or args.train_length
    # A network given whole (--network) has its own sizes.
    hidden = () if "--network" in cell.flags else ("--hidden", str(args.hidden))
    flags = ["--task", "text", "--text-path", args.corpus, "--seq-len", str(length),
             *hidden, "--batch", str(args.batch), *cell.flags,
             "--outer", cell.outer, "--seed", str(seed), "--out", out, "--no-plots"]
    if length > args.train_length:
        flags += ["--truncation", str(args.train_length)]
    if cell.outer == "gradient":
        flags += ["--grad-lr", str(args.grad_lr), "--generations", str(updates),
                  "--log-every", str(min(args.log_every, updates))]
    else:
        flags += ["--optimizer", "adam", "--lr", "0.1", "--pop", str(args.es_pop),
                  "--batch", str(args.es_batch), "--generations", str(args.es_generations),
                  "--log-every", str(min(10, args.es_generations))]
    return flags


def score_plastic(args, net, params: dict, probe_token: int, per_length=None) -> dict:
    """Every lifetime length's summary; the dynamics of the longest. ``per_length(length)
    -> (net, params)`` gives each length its own network and parameters."""
    scores = {}
    for length in args.lengths:
        if per_length is not None:
            net, params = per_length(length)
        inputs, targets, mask = split_windows(args, length)
        curve = curves.learning_curve(net, params, jax.random.key(LIFETIME_SEED), inputs,
                                      targets, mask, chunk=min(args.chunk, length),
                                      probe_token=probe_token)
        scores[str(length)] = summary(curve.nll, curve_edges(length))
    return {"lengths": scores, "dynamics": {
        "steps": curve.steps.tolist(),
        "weight_norm": {k: v.tolist() for k, v in curve.weight_norm.items()},
        "update_rate": {k: v.tolist() for k, v in curve.update_rate.items()},
        "readout_row": curve.readout_row.tolist(), "probe_token": probe_token}}


def meta_cell(args, cell: Cell, seed: int, probe_token: int) -> dict:
    """One ``es_abcd.py`` run (resumed if killed), then scored at every lifetime length."""
    cell_dir = os.path.join(args.out, "meta", f"{cell.name}_s{seed}")
    flags = cell_flags(args, cell, seed, cell_dir)
    if (done := read_result(args, cell_dir, {"flags": flags})) is not None or args.report_only:
        return done
    cfg, _ = es_abcd.parse_config(flags)
    began = time.perf_counter()
    outer, history, params = es_abcd.run_outer(cfg, mode="auto")  # a killed cell resumes
    seconds = time.perf_counter() - began
    n_params = sum(np.size(x) for x in jax.tree.leaves(params))
    return write_result(args, cell_dir, {
        "cell": dataclasses.asdict(cell), "seed": seed, "flags": flags,
        "seconds": seconds, "loop_seconds": sum(r["seconds"] for r in history),
        "updates": cfg.generations, "learned_parameters": int(n_params),
        **score_plastic(args, outer.net, params, probe_token)})


# --- the sparse part: a wide random kWTA layer under a counting readout -----------------


# The bundled network of the part: of 4,096 units, the 32 with the largest drive from the
# last three characters are 1 and the others 0 (fixed random matrices, smaller for older
# characters), under the BCPNN readout. Its cells change width, k, lags or scales.
SPARSE_NETWORK = "sparse_text_bcpnn"
# The readout's settings, chosen on the validation windows of each length as the online
# n-grams' k and mixture are: BCPNN's rate eta (1 / the weight of its prior), the gain of
# the units' evidence and that of the prior log p_j.
BCPNN_GRID = {"eta": (0.3, 1.0, 3.0, 10.0, 30.0, 100.0), "gain": (0.5, 0.7, 1.0, 1.4, 2.0),
              "bias": (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0)}


@dataclasses.dataclass(frozen=True)
class SparseCell:
    """`SPARSE_NETWORK` with these fields: ``size`` hidden units of which ``k`` win, driven
    by the characters ``0 .. len(scales) - 1`` steps back through fixed matrices
    U(-scale, scale), and ``hidden_rule`` (at rate ``hidden_eta``) on those matrices.

    A cell whose hidden layer is fixed chooses its readout's settings on the validation
    windows of each length (`BCPNN_GRID`); one with a plastic hidden layer takes those of
    ``fixed``, the same network with the layer fixed, so the two differ by the hidden
    rule alone.
    """

    name: str
    label: str
    size: int = 4096
    k: int = 32
    scales: tuple[float, ...] = (1.0, 0.4, 0.16)
    hidden_rule: str | None = None
    hidden_eta: float | None = None
    fixed: str | None = None


def sparse_cells() -> list[SparseCell]:
    """The part's network, what drives it (width, k, lags, scales), and its hidden layer
    learning, each rule at a few rates, against the same network fixed."""
    main = "sparse_bcpnn"
    cells = [SparseCell(main, "4,096 random kWTA(32) units on 3 chars + BCPNN readout"),
             SparseCell("sparse_n1024", "width 1,024", size=1024),
             SparseCell("sparse_k8", "k = 8", k=8),
             SparseCell("sparse_k128", "k = 128", k=128),
             SparseCell("sparse_lags1", "the last char only", scales=(1.0,)),
             SparseCell("sparse_lags2", "the last 2 chars", scales=(1.0, 0.4)),
             SparseCell("sparse_lags4", "the last 4 chars", scales=(1.0, 0.4, 0.16, 0.064)),
             SparseCell("sparse_flat", "3 chars, equal scales", scales=(1.0, 1.0, 1.0))]
    # On a binary kWTA layer Oja's rule is instar (y = y^2) and BCM and covariance are
    # nearly Hebb (y (y - theta) and y - <y> are about y for a unit that wins 1 step in
    # 128), so Hebb and instar stand for the hidden rules here.
    for rule, label, rates in (("hebb", "Hebb", (0.001, 0.01)),
                               ("instar", "competitive (instar)", (0.001, 0.003, 0.01))):
        cells += [SparseCell(f"sparse_{rule}_{eta:g}", f"{label} hidden, eta = {eta:g}",
                             hidden_rule=rule, hidden_eta=eta, fixed=main) for eta in rates]
    return cells


def sparse_network(cell: SparseCell, vocab: int, readout_rule: str = "bcpnn"):
    """The cell's network, sized to the task, with ``readout_rule`` on its readout."""
    base = network_lib.load(SPARSE_NETWORK)
    hidden, readout = base.layers
    inputs = tuple(network_lib.Connection("now" if lag == 0 else f"back{lag}",
                                          "x" if lag == 0 else f"x@{lag}",
                                          rule=cell.hidden_rule, init_scale=scale)
                   for lag, scale in enumerate(cell.scales))
    hidden = dataclasses.replace(hidden, size=cell.size, activation=f"kwta({cell.k})",
                                 inputs=inputs)
    readout = dataclasses.replace(readout, inputs=tuple(
        dataclasses.replace(conn, rule=readout_rule) for conn in readout.inputs))
    return dataclasses.replace(base, layers=(hidden, readout)).sized(vocab, vocab)


def bcpnn_rule(choice: dict) -> str:
    return f"bcpnn(bias={choice['bias']!r}, gain={choice['gain']!r})"


def sparse_params(cell: SparseCell, net, choice: dict) -> dict:
    """The network's coefficients: the readout's rate ``choice["eta"]``, the hidden rule's
    ``cell.hidden_eta`` (its other coefficients at their defaults)."""
    params = plastic.init_params(net, jax.random.key(0))
    for name, coeffs in params["coeffs"].items():
        eta = choice["eta"] if name in net.readout_matrices else cell.hidden_eta
        coeffs["eta"] = jnp.full_like(coeffs["eta"], eta)
    return params


def kwta_code(net, key: jax.Array, inputs) -> jax.Array:
    """``(B, T, k)`` the winners of the fixed kWTA layer at every step of B lifetimes,
    their weights drawn from ``key`` as `curves.learning_curve` draws them."""
    hidden = net.layers[0]
    k, vocab = network_lib.kwta_k(hidden.activation), net.input_size
    w0 = plastic.lifetime_draws(net, key, inputs.shape[0]).w0
    length = inputs.shape[1]

    def winners(weights, tokens):
        drive = 0.0
        for conn in hidden.inputs:
            lag = min(network_lib.input_lag(conn.source), length)
            # Before the first step an input k steps back is absent: a zero column.
            back = jnp.concatenate([jnp.full((lag,), vocab, tokens.dtype),
                                    tokens[:length - lag]])
            drive = drive + weights[conn.name].at[:, back].get(mode="fill", fill_value=0).T
        return jax.lax.top_k(drive, k)[1]

    return jax.lax.map(lambda a: winners(*a),
                       ({conn.name: w0[conn.name] for conn in hidden.inputs}, inputs))


@functools.partial(jax.jit, static_argnames=("n_units", "vocab"))
def bcpnn_grid_nll(code, targets, n_units: int, vocab: int, etas, gains,
                   biases) -> jax.Array:
    """``(B, T, etas, gains, biases)`` NLL of the BCPNN readout at every step of B
    lifetimes on a fixed k-of-``n_units`` code ``code (B, T, k)``, every setting of the
    grid at once.

    The counts are the same for every setting (a rate eta scales them all), and a step
    reads only the k active columns' weights (`rules.bcpnn_weights`, what the network's
    readout computes for every column), so the grid costs about what one lifetime does.
    """

    def lifetime(active, target):
        def step(carry, xs):
            counts, pre_count, post_count, steps = carry
            units, y = xs

            def support(eta):
                # kWTA: k units active at every step, so the summed activity is k * steps.
                state = (eta * counts[units].T, eta * pre_count[units], eta * post_count,
                         eta * steps, eta * steps * units.shape[0])
                evidence = rules.bcpnn_weights(*state, gain=1.0, bias=0.0).sum(1)
                prior = rules.bcpnn_weights(*state, gain=0.0, bias=1.0).sum(1)
                return evidence, prior

            evidence, prior = jax.vmap(support)(etas)  # (E, V) each
            logits = (gains[None, :, None, None] * evidence[:, None, None]
                      + biases[None, None, :, None] * prior[:, None, None])
            nll = -jax.nn.log_softmax(logits)[..., y]
            carry = (counts.at[units, y].add(1.0), pre_count.at[units].add(1.0),
                     post_count.at[y].add(1.0), steps + 1.0)
            return carry, nll

        start = (jnp.zeros((n_units, vocab)), jnp.zeros(n_units), jnp.zeros(vocab),
                 jnp.zeros(()))
        return jax.lax.scan(step, start, (active, target))[1]

    return jax.lax.map(lambda a: lifetime(*a), (code, targets))


def choose_readout(args, cell: SparseCell, length: int) -> dict:
    """The readout's (eta, gain, bias) of `BCPNN_GRID` with the lowest mean NLL over the
    validation windows of lifetimes of ``length``, and that NLL in bits."""
    inputs, targets, _ = split_windows(args, length, "valid")
    vocab = text_task(args.corpus, length).vocab_size
    net = sparse_network(cell, vocab)
    code = kwta_code(net, jax.random.key(LIFETIME_SEED), inputs)
    return best_readout(code, targets, cell.size, vocab)


def best_readout(code, targets, n_units: int, vocab: int) -> dict:
    """The setting of `BCPNN_GRID` with the lowest mean NLL on ``code``, and that NLL in
    bits (``valid_bits``)."""
    grid = [jnp.asarray(BCPNN_GRID[key], jnp.float32) for key in ("eta", "gain", "bias")]
    nll = np.asarray(bcpnn_grid_nll(jnp.asarray(code), jnp.asarray(targets), n_units, vocab,
                                    *grid)).mean(axis=(0, 1))
    best = np.unravel_index(np.argmin(nll), nll.shape)
    choice = {key: BCPNN_GRID[key][i] for key, i in zip(("eta", "gain", "bias"), best)}
    return {**choice, "valid_bits": float(nll[best] / LN2)}


def sparse_cell(args, cell: SparseCell, probe_token: int, fixed: dict | None) -> dict | None:
    """One sparse network: its readout's settings per length (chosen on valid, or those
    of ``fixed``, the result of the same network with the hidden layer fixed), scored on
    the test windows by the network's own lifetime (`curves.learning_curve`)."""
    cell_dir = os.path.join(args.out, "sparse", cell.name)
    settings = json.loads(json.dumps({"cell": dataclasses.asdict(cell),
                                      "network": SPARSE_NETWORK, "grid": BCPNN_GRID}))
    if (done := read_result(args, cell_dir, settings)) is not None or args.report_only:
        return done
    if fixed is None and cell.fixed is not None:
        raise ValueError(f"sparse cell {cell.name} takes its readout from {cell.fixed}, "
                         f"which has not finished")
    vocab = text_task(args.corpus, args.lengths[0]).vocab_size
    began = time.perf_counter()
    choices = (fixed["choices"] if fixed is not None else
               {str(length): choose_readout(args, cell, length) for length in args.lengths})
    chosen = time.perf_counter()

    def at(length):
        choice = choices[str(length)]
        net = sparse_network(cell, vocab, bcpnn_rule(choice))
        return net, sparse_params(cell, net, choice)

    # Scores alone: the part plots no dynamics, and the readout row across the lifetime of
    # a 4,096-unit layer would make each result 0.8 MB.
    scores = score_plastic(args, None, None, probe_token, per_length=at)["lengths"]
    return write_result(args, cell_dir, {
        **settings, "choices": choices, "select_seconds": chosen - began,
        "seconds": time.perf_counter() - began, "lengths": scores})


# The readout's headroom: BCPNN on a code that no random layer has, with units of their
# own for every context of the last 1, 2, 3 and 4 characters (CONTEXT_UNITS of them per
# context; as if a hidden layer had learned one unit set per context, with no collisions).
CONTEXT_CELL = "context_code"
CONTEXT_UNITS = (8, 8, 8, 8)


def context_code(inputs, vocab: int, units: tuple[int, ...] = CONTEXT_UNITS):
    """``((B, T, sum(units)) unit ids, number of units)``: at every step, ``units[o]``
    units that belong to the context of the last ``o + 1`` characters alone (numbered
    per window in order of first use, so that no two contexts share a unit)."""
    inputs = np.asarray(inputs)
    batch, length = inputs.shape
    ids = np.zeros((batch, length, sum(units)), np.int32)
    n_units = 0
    for b in range(batch):
        key, first, column = np.zeros(length, np.int64), 0, 0
        for order, m in enumerate(units):
            lag = min(order, length)
            back = np.concatenate([np.full(lag, vocab), inputs[b, :length - lag]])
            key = key * (vocab + 1) + back  # the context of the last order + 1 characters
            _, context = np.unique(key, return_inverse=True)
            ids[b, :, column:column + m] = first + context[:, None] * m + np.arange(m)
            first, column = first + (context.max() + 1) * m, column + m
        n_units = max(n_units, first)
    return ids, n_units


def counted_cell(args, cell: dict, settings: dict, choose, test_nll) -> dict | None:
    """A cell of the sparse part that runs no network (``cell`` its name, label and other
    fields): at every length its settings ``choose(inputs, targets, vocab)`` on the valid
    windows (a JSON-ready dict), then ``test_nll(inputs, targets, vocab, choice)``, the
    ``(B, T)`` NLL of the test windows."""
    cell_dir = os.path.join(args.out, "sparse", cell["name"])
    settings = json.loads(json.dumps({"cell": {**cell, "fixed": None}, **settings}))
    if (done := read_result(args, cell_dir, settings)) is not None or args.report_only:
        return done
    began = time.perf_counter()
    choices, scores = {}, {}
    for length in args.lengths:
        vocab = text_task(args.corpus, length).vocab_size
        inputs, targets, _ = split_windows(args, length, "valid")
        choices[str(length)] = choice = choose(inputs, targets, vocab)
        inputs, targets, _ = split_windows(args, length)
        scores[str(length)] = summary(test_nll(inputs, targets, vocab, choice),
                                      curve_edges(length))
    return write_result(args, cell_dir, {**settings, "choices": choices, "select_seconds": 0.0,
                                   "seconds": time.perf_counter() - began, "lengths": scores})


def context_code_cell(args) -> dict | None:
    """`CONTEXT_UNITS`'s code under the BCPNN readout: its settings chosen on valid per
    length, scored on the test windows (by `bcpnn_grid_nll`: the code is no network)."""
    def choose(inputs, targets, vocab):
        code, n_units = context_code(inputs, vocab)
        return best_readout(code, targets, n_units, vocab)

    def test_nll(inputs, targets, vocab, choice):
        code, n_units = context_code(inputs, vocab)
        nll = bcpnn_grid_nll(jnp.asarray(code), jnp.asarray(targets), n_units, vocab,
                             *(jnp.asarray([choice[key]], jnp.float32)
                               for key in ("eta", "gain", "bias")))
        return np.asarray(nll)[..., 0, 0, 0]

    label = (f"headroom: {CONTEXT_UNITS[0]} units of their own per context of the last "
             f"1-{len(CONTEXT_UNITS)} chars (no random layer)")
    return counted_cell(args, {"name": CONTEXT_CELL, "label": label, "units": CONTEXT_UNITS},
                        {"grid": BCPNN_GRID}, choose, test_nll)


# The count-based learner with the sparse network's context: the online interpolated
# n-gram of orders 1 to 4 (the last 3 characters), as the ngrams part chooses its own.
NGRAM4_CELL = "online_4gram"


def online_4gram_cell(args) -> dict | None:
    """The online add-k 4-gram interpolated with orders 1-3 (`ngram.select_online_counted`):
    k and mixture chosen on valid per length, scored on the test windows."""
    def choose(inputs, targets, vocab):
        return dataclasses.asdict(ngram.select_online_counted(inputs, targets, vocab,
                                                              max_order=4))

    def test_nll(inputs, targets, vocab, choice):
        probs = ngram.online_counted_probs(inputs, targets, vocab, choice["ks"])
        return -np.log(probs @ np.array(choice["weights"]))

    label = "online interpolated 4-gram (add-k, from zero; the last 3 chars)"
    return counted_cell(args, {"name": NGRAM4_CELL, "label": label}, {}, choose, test_nll)


def sparse_results(args, probe_token: int) -> list[dict]:
    """The chosen sparse cells in order, each plastic one after the fixed one it shares
    its readout with (run first when not chosen itself), then the readout's headroom."""
    cells = sparse_cells()
    chosen = {cell.name for cell in cells if args.cells is None or cell.name in args.cells}
    chosen |= {cell.fixed for cell in cells if cell.name in chosen and cell.fixed}
    done: dict[str, dict] = {}
    for cell in cells:
        if cell.name in chosen:
            result = sparse_cell(args, cell, probe_token, done.get(cell.fixed))
            if result:
                done[cell.name] = result
    results = list(done.values())
    if args.cells is None or CONTEXT_CELL in args.cells:
        results.append(context_code_cell(args))
    if args.cells is None or NGRAM4_CELL in args.cells:
        results.append(online_4gram_cell(args))
    return [r for r in results if r]


def backprop_model(args, name: str, hidden: int, embed: int | None = None,
                   readout: int = 0):
    """A flax ``TokenModel`` baseline (``plastix.models``); ``embed`` defaults to
    ``hidden`` so that the recurrent core, not a wide embedding, sets the size."""
    task = text_task(args.corpus, args.train_length)
    return models.make_model(name, task.vocab_size, args.train_length, hidden,
                             embed_dim=embed or hidden, readout_features=readout)


def score_backprop(args, model, params) -> dict:
    """Every lifetime length's summary of a trained model reading from a zero state."""
    apply = jax.jit(model.apply)
    scores = {}
    for length in args.lengths:
        inputs, targets, _ = split_windows(args, length)
        per_batch = max(1, 2048 // length)
        nll = np.concatenate([np.asarray(-jnp.take_along_axis(
            jax.nn.log_softmax(apply(params, inputs[i:i + per_batch])),
            targets[i:i + per_batch, :, None], axis=-1)[..., 0])
            for i in range(0, len(inputs), per_batch)])
        scores[str(length)] = summary(nll, curve_edges(length))
    return {"lengths": scores}


def backprop_cell(args, name: str, label: str, model, seed: int, steps: int, batch: int,
                  lr: float) -> dict:
    """``plastix.train.fit`` on the training windows, scored like the plastic networks."""
    tag = f"{name}_lr{lr:g}_s{seed}"
    cell_dir = os.path.join(args.out, "backprop", tag)
    settings = {"steps": steps, "batch": batch, "lr": lr, "seed": seed}
    if (done := read_result(args, cell_dir, settings)) is not None or args.report_only:
        return done
    task = text_task(args.corpus, args.train_length)
    every = min(args.log_every, steps)
    config = train.TrainConfig(steps=steps, batch_size=batch, learning_rate=lr, seed=seed,
                               log_every=every, eval_every=every * 5,
                               checkpoint_every=every * 5, eval_batches=8)
    began = time.perf_counter()
    state = train.fit(model, task, config, cell_dir, data_files=[args.corpus],
                      print_fn=lambda line: print(f"[{tag}] {line}", flush=True))
    seconds = time.perf_counter() - began
    valid_nll = float(train.make_evaluate(model, task, 64, 16)(
        state.params, jax.random.key(VALID_SEED), "valid")["loss"])
    n_params = sum(np.size(x) for x in jax.tree.leaves(state.params))
    return write_result(args, cell_dir, {
        "name": name, "label": label, "seed": seed, "lr": lr, "steps": steps,
        "batch": batch, "seconds": seconds, "valid_bits": valid_nll / LN2,
        "learned_parameters": int(n_params), **score_backprop(args, model, state.params)})


def lstm_baselines(args) -> list[dict]:
    """The same-size LSTM for the prior table: its rate chosen on valid at seed 0 over
    ``--backprop-lrs``, then every seed at that rate; same windows and updates as the
    plastic priors."""
    model = backprop_model(args, "lstm", args.hidden)
    run = functools.partial(backprop_cell, args, "lstm_same_size",
                            f"LSTM {args.hidden} (backprop)", model, steps=args.prior_updates,
                            batch=args.batch)
    tried = [r for r in (run(seed=args.seeds[0], lr=lr) for lr in args.backprop_lrs) if r]
    if len(tried) < len(args.backprop_lrs):  # --report-only before the tuning finished
        return [{**r, "tuning_only": True} for r in tried]
    best = min(tried, key=lambda r: r["valid_bits"])
    others = [run(seed=seed, lr=best["lr"]) for seed in args.seeds[1:]]
    return [best] + [r for r in others if r] + \
        [{**r, "tuning_only": True} for r in tried if r is not best]


def lstm_aim_cell(args) -> dict:
    """The stand-alone LSTM baseline (the first user's backprop baseline at full strength):
    ``--lstm-hidden`` units, ``--lstm-steps`` updates; valid bits/char and wall clock."""
    model = backprop_model(args, "lstm", args.lstm_hidden, embed=100, readout=100)
    result = backprop_cell(args, "lstm_large", f"LSTM {args.lstm_hidden} (backprop)", model,
                           seed=0, steps=args.lstm_steps, batch=args.lstm_batch,
                           lr=args.lstm_lr)
    return result


# --- report -----------------------------------------------------------------------------


# A lifetime mean this far above uniform (6 bits for 66 symbols) is a lifetime whose
# weights ran away while staying finite: shown as such, not as a score to the third decimal.
RUNAWAY_BITS = 100.0
# The learning-curve plot's top: well above uniform (6 bits), so every learner is in view.
CURVE_TOP_BITS = 9.0


def bits_cell(row: dict, length) -> str:
    s = row["lengths"].get(str(length))
    if s is None:
        return "–"
    if s["diverged"] == 1:
        return f"diverged (all {s['windows']} windows)"
    text = f"{s['bits']:.3f} ± {s['sem']:.3f}" if s["bits"] < RUNAWAY_BITS else \
        f"runaway ({s['bits']:.1e})"
    if s["diverged"] > 0:
        text += f" ({100 * s['diverged']:.0f}% diverged)"
    return text


def meta_budget(args, result: dict) -> str:
    """What a meta-learned cell was trained with, e.g. "gradient, 150 updates x 16"."""
    length = result["cell"].get("train_length") or args.train_length
    if result["cell"]["outer"] == "gradient":
        return (f"gradient, {result['updates']} updates x {args.batch} windows of {length}"
                + (f" (truncated BPTT {args.train_length})" if length > args.train_length
                   else ""))
    return (f"ES, {result['updates']} generations x {args.es_pop} members x "
            f"{args.es_batch} windows")


def ngram_row(ngrams: dict, name: str) -> dict:
    """One n-gram model's summaries, shaped like a cell's: ``{"lengths": {T: summary}}``."""
    return {"lengths": {length: rows[name] for length, rows in ngrams["lengths"].items()}}


def seed_mean(rows: list[dict], length) -> str:
    values = [r["lengths"][str(length)]["bits"] for r in rows
              if r["lengths"][str(length)]["diverged"] < 1]
    if not values:
        return "diverged"
    if np.mean(values) >= RUNAWAY_BITS:
        return f"runaway ({np.mean(values):.1e}, n={len(values)})"
    spread = f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
    return f"{np.mean(values):.3f}{spread} (n={len(values)})"


def format_report(args, results: dict) -> str:
    lengths = args.lengths
    head = "| " + " | ".join(f"T = {n}" for n in lengths) + " |"
    counts = ", ".join(f"{windows_at(args, n)} windows at T = {n}" for n in lengths)
    lines = [f"# Text within a lifetime: {os.path.basename(args.corpus)}", "",
             f"Bits per character on the test split, averaged over whole lifetimes of T "
             f"characters (± standard error over windows; {counts}; the same windows for "
             f"every row). Networks have {args.hidden} hidden units and were meta-learned on "
             f"{args.train_length}-character lifetimes of the train split.", ""]
    if "ngrams" in results:
        ng = results["ngrams"]
        online = ng["online_choice"][str(lengths[-1])]
        lines += [f"Online n-grams: k per order and mixture chosen on valid windows of each "
                  f"length (at T = {lengths[-1]}: k = {online['ks']}, weights "
                  f"{online['weights']}). Train-fitted: k = {ng['fitted_choice']['ks']}, "
                  f"weights {ng['fitted_choice']['weights']}.", ""]
    if "rules" in results or "ngrams" in results:
        lines += ["## (i) A learning rule only: shared coefficients, random weights every "
                  "lifetime", "", "| model | meta-learning | " + head[2:],
                  "|---|---|" + "---|" * len(lengths)]
        for r in results.get("rules", []):
            how = (f"{meta_budget(args, r)}, {r['seconds']:.0f} s, "
                   f"{r['learned_parameters']} params")
            lines.append(f"| {r['cell']['label']} | {how} | "
                         + " | ".join(bits_cell(r, n) for n in lengths) + " |")
        for name in ("online unigram", "online bigram", "online trigram", "online interpolated"):
            if "ngrams" in results:
                row = ngram_row(results["ngrams"], name)
                lines.append(f"| {name} (add-k, from zero) | none | "
                             + " | ".join(bits_cell(row, n) for n in lengths) + " |")
        lines.append("")
    if "sparse" in results:
        lines += sparse_report(args, results)
    if "priors" in results or "ngrams" in results:
        lines += ["## (ii) With meta-learned priors (mean ± sd over seeds)", "",
                  "| model | training | " + head[2:], "|---|---|" + "---|" * len(lengths)]
        by_label: dict[str, list] = {}
        for r in results.get("priors", []):
            if not r.get("tuning_only"):
                by_label.setdefault(r["cell"]["label"] if "cell" in r else r["label"],
                                    []).append(r)
        for label, rows in by_label.items():
            first = rows[0]
            if "cell" in first:
                how = (f"{meta_budget(args, first)}, "
                       f"~{np.mean([r['seconds'] for r in rows]):.0f} s, "
                       f"{first['learned_parameters']} params")
            else:
                how = (f"Adam {first['lr']:g} (best on valid), {first['steps']} updates x "
                       f"{first['batch']} windows, ~{np.mean([r['seconds'] for r in rows]):.0f}"
                       f" s, {first['learned_parameters']} params")
            lines.append(f"| {label} | {how} | "
                         + " | ".join(seed_mean(rows, n) for n in lengths) + " |")
        if "ngrams" in results:
            for name in ("train-fitted unigram", "train-fitted bigram", "train-fitted trigram",
                         "train-fitted interpolated"):
                row = ngram_row(results["ngrams"], name)
                lines.append(f"| {name} | counts of the train split | "
                             + " | ".join(bits_cell(row, n) for n in lengths) + " |")
        lines.append("")
    if "lstm" in results:
        r = results["lstm"]
        lines += ["## The backprop LSTM at full strength", "",
                  f"LSTM, {args.lstm_hidden} units (embedding 100, ReLU readout 100), "
                  f"{r['steps']} Adam updates of {r['batch']} windows of "
                  f"{args.train_length} characters, rate {r['lr']:g}: validation "
                  f"**{r['valid_bits']:.3f} bits/char** (1024 windows) after "
                  f"{r['seconds'] / 60:.1f} min of wall clock on this machine "
                  f"({jax.device_count()} {jax.default_backend()} device(s)); test "
                  + ", ".join(f"T = {n}: {bits_cell(r, n)}" for n in lengths) + ".", ""]
    return "\n".join(lines)


def sparse_report(args, results: dict) -> list[str]:
    """The sparse part's table: each network's readout settings per length, wall time and
    scores, beside the online interpolated n-gram."""
    lengths = args.lengths
    lines = ["## (i-b) A wide, sparse random layer under a counting readout (BCPNN)", "",
             "Shared coefficients, random weights every lifetime, no learned prior. The "
             "BCPNN readout's rate, gain and bias (eta, gain, bias) are chosen on the valid "
             f"windows of each length ({np.prod([len(v) for v in BCPNN_GRID.values()])} "
             "settings), as the online n-grams' k and mixture are; a network with a "
             "plastic hidden layer keeps the readout settings of the same network with the "
             "layer fixed (the first row), and its rule's rate is the row's.", "",
             "| model | readout (eta, gain, bias) at " + ", ".join(map(str, lengths))
             + " | wall | " + " | ".join(f"T = {n}" for n in lengths) + " |",
             "|---|---|---|" + "---|" * len(lengths)]
    ngram_settings = "k and mixture chosen on valid per length"
    for r in results["sparse"]:
        cell = r["cell"]
        if cell["name"] == NGRAM4_CELL:
            settings = ngram_settings
        elif cell["fixed"]:
            settings = f"as {cell['fixed']}"
        else:
            settings = " / ".join(f"{c['eta']:g}, {c['gain']:g}, {c['bias']:g}"
                                  for c in (r["choices"][str(n)] for n in lengths))
        wall = f"{r['seconds']:.0f} s"
        lines.append(f"| {cell['label']} | {settings} | {wall} | "
                     + " | ".join(bits_cell(r, n) for n in lengths) + " |")
    if "ngrams" in results:
        row = ngram_row(results["ngrams"], "online interpolated")
        lines.append("| online interpolated trigram (add-k, from zero; the last 2 chars) | "
                     f"{ngram_settings} | – | "
                     + " | ".join(bits_cell(row, n) for n in lengths) + " |")
    return lines + [""]


def save_sparse_plot(args, results: dict, centres: np.ndarray) -> None:
    """``sparse.png``: the sparse network against the online n-grams along the longest
    lifetime, and what each plastic hidden layer changes against the same layer fixed."""
    import matplotlib.pyplot as plt

    length = str(args.lengths[-1])
    by_name = {r["cell"]["name"]: r for r in results["sparse"]}
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    main = sparse_cells()[0].name
    rows = [(by_name.get(main), "-"), (by_name.get(CONTEXT_CELL), ":"),
            (by_name.get(NGRAM4_CELL), "--")]
    rows += [(r, "-.") for r in results.get("rules", []) if r["cell"]["name"].startswith("sparse")]
    for r, style in rows:
        if r is not None:
            left.plot(centres, r["lengths"][length]["curve"], style, label=r["cell"]["label"])
    trigram = results.get("ngrams", {}).get("lengths", {}).get(length, {})
    if "online interpolated" in trigram:
        left.plot(centres, trigram["online interpolated"]["curve"], "--",
                  label="online interpolated trigram (add-k, from zero)")
    left.set_ylabel("bits/char (test windows, log-binned)")
    left.set_ylim(top=6.5)  # uniform over the 65 characters is 6.02
    left.set_title("a learning rule only: sparse random layer + plastic readout", fontsize=10)
    for r in results["sparse"]:
        fixed = by_name.get(r["cell"].get("fixed"))
        if fixed is not None:
            change = np.subtract(r["lengths"][length]["curve"], fixed["lengths"][length]["curve"])
            right.plot(centres, change, label=r["cell"]["label"])
    right.axhline(0.0, color="k", lw=0.8)
    right.axhline(-0.1, color="k", lw=0.8, ls=":", label="0.1 bits/char better")
    right.set_ylabel(f"bits/char, plastic hidden layer minus fixed ({main})")
    right.set_title("hidden layers that learn, against the same layer fixed", fontsize=10)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("position in the lifetime (characters)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    runs.save_figure(fig, os.path.join(args.out, "sparse.png"), dpi=110)
    plt.close(fig)


def save_plots(args, results: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    length = args.lengths[-1]
    edges = curve_edges(length)
    centres = np.sqrt(np.maximum(edges[:-1], 0.5) * edges[1:])
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), sharey=True)
    for ax in axes:  # more rows than the default cycle has colours
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
    at = lambda r: r["lengths"].get(str(length))

    def draw(ax, label, summary_, style="-"):
        # A lifetime that ran away (the table says so) would flatten every other curve.
        if summary_ is not None and np.all(np.isfinite(summary_["curve"])) \
                and summary_["bits"] < RUNAWAY_BITS:
            ax.plot(centres, summary_["curve"], style, label=label)

    ngrams = results.get("ngrams", {}).get("lengths", {}).get(str(length), {})
    for r in results.get("rules", []):
        draw(axes[0], r["cell"]["label"], at(r))
    for r in results.get("sparse", []):
        if r["cell"]["name"] == sparse_cells()[0].name:  # the part's network, not its ablations
            draw(axes[0], r["cell"]["label"], at(r), "-.")
    for name, s in ngrams.items():
        draw(axes[0] if name.startswith("online") else axes[1], name, s, "--")
    for r in results.get("priors", []):
        if r.get("seed") == args.seeds[0] and not r.get("tuning_only"):
            draw(axes[1], r["cell"]["label"] if "cell" in r else r["label"], at(r))
    if "lstm" in results:
        draw(axes[1], results["lstm"]["label"], at(results["lstm"]), ":")
    for ax, title in zip(axes, ("(i) a learning rule only, random weights every lifetime",
                                "(ii) meta-learned priors, and priors fitted on train")):
        ax.set_xscale("log")
        ax.set_xlabel("position in the lifetime (characters)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"bits/char (test windows, log-binned; axis cut at {CURVE_TOP_BITS:g})")
    axes[0].set_ylim(top=CURVE_TOP_BITS)
    fig.tight_layout()
    runs.save_figure(fig, os.path.join(args.out, "learning_curve.png"), dpi=110)
    plt.close(fig)
    if results.get("sparse"):
        save_sparse_plot(args, results, centres)

    # A row read back from a report.json has no dynamics (`without_dynamics`).
    rule_rows = [r for r in results.get("rules", [])
                 if "dynamics" in r and at(r)["diverged"] == 0]
    if not rule_rows:
        return
    best = min(rule_rows, key=lambda r: at(r)["bits"])
    d = best["dynamics"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for layer, norms in d["weight_norm"].items():
        axes[0].plot(d["steps"], norms, label=f"W_{layer}")
        axes[1].plot(d["steps"], d["update_rate"][layer], label=f"W_{layer}")
    axes[0].set_title("||W||_F (mean over lifetimes)", fontsize=10)
    axes[1].set_title("||W(t) - W(t - c)||_F / c: the effective rate", fontsize=10)
    axes[1].set_yscale("log")
    for ax in axes[:2]:
        ax.set_xscale("log")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    symbol = text_task(args.corpus, length).symbols[d["probe_token"]]
    row = np.asarray(d["readout_row"]).T
    limit = np.abs(row).max() or 1.0
    image = axes[2].imshow(row, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit,
                           extent=(0, d["steps"][-1], row.shape[0], 0))
    axes[2].set_title(f"readout row of {symbol!r} across lifetime 0", fontsize=10)
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("presynaptic unit (last: bias)")
    fig.colorbar(image, ax=axes[2])
    fig.suptitle(f"Learning dynamics: {best['cell']['label']}", fontsize=11)
    fig.tight_layout()
    runs.save_figure(fig, os.path.join(args.out, "dynamics.png"), dpi=110)
    plt.close(fig)


def without_dynamics(results: dict) -> dict:
    """The report's results less the per-chunk weight probes, which stay in each cell's
    ``result.json`` (they are long and only the plot reads them)."""
    return {part: [{k: v for k, v in row.items() if k != "dynamics"} for row in value]
            if isinstance(value, list) else value for part, value in results.items()}


def most_frequent_token(args) -> int:
    _, ids = tasks.encode_text_splits(tasks.read_text_splits(args.corpus))
    return int(np.argmax(np.bincount(ids["train"])))


def main(argv=None) -> dict:
    args = parse_args(argv)
    cells = chosen_cells(args)
    runs.check_dir(args.out, KIND, "auto")
    # A corpus too short for a lifetime fails before any work.
    for length in {*args.lengths, args.train_length, *(
            cell.train_length for part_cells in cells.values() for cell in part_cells
            if cell.train_length)}:
        text_task(args.corpus, length)
    runs.take_dir(args.out, KIND, "auto")  # its runs are its subdirectories
    probe = most_frequent_token(args)
    results: dict = {}
    if "ngrams" in args.parts:
        results["ngrams"] = ngram_cell(args)
    if "rules" in args.parts:
        results["rules"] = [meta_cell(args, cell, 0, probe) for cell in cells["rules"]]
    if "sparse" in args.parts:
        results["sparse"] = sparse_results(args, probe)
    if "priors" in args.parts:
        results["priors"] = [meta_cell(args, cell, seed, probe) for cell in cells["priors"]
                             for seed in (args.seeds if cell.outer == "gradient"
                                          else args.seeds[:1])]
        results["priors"] += lstm_baselines(args)
    if "lstm" in args.parts:
        results["lstm"] = lstm_aim_cell(args)
    # With --report-only, the cells not finished yet are left out.
    results = {part: [r for r in value if r] if isinstance(value, list) else value
               for part, value in results.items() if value}
    report = format_report(args, results)
    print("\n" + report)
    runs.write_text(os.path.join(args.out, "report.md"), report + "\n")
    runs.write_json(os.path.join(args.out, "report.json"),
                    {"args": vars(args), "corpus_sha256": tasks.corpus_sha256(args.corpus),
                     "results": without_dynamics(results)})
    if not args.no_plots:
        save_plots(args, results)
    print(f"wrote {args.out}/report.md, report.json"
          + ("" if args.no_plots else ", learning_curve.png, dynamics.png"
                                      + (", sparse.png" if results.get("sparse") else "")))
    return results

