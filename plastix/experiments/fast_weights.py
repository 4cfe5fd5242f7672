"""Fast weights vs RNN baselines, trained by gradient descent (Ba et al. 2016).

Subcommands:
  train    train one model on one task:   --model rnn-ln-fw --task assoc_retrieval --hidden 50
  test     score a trained run on its test split:             --run-dir runs/fast_weights/...
  plot     loss / accuracy curves of runs:                    RUN_DIR [RUN_DIR ...] --out x.png
  table1   Table 1 of Ba et al. 2016: test error of IRNN, LSTM and fast weights at R = 20, 50,
           100 hidden units, beside the paper's figures       --task assoc_retrieval | mqar
  charlm   bits per character on tiny shakespeare's validation split, LSTM vs RNN-LN-FW

Every run lives in its own directory (``runs/`` by default), a ``plastix.runs`` run
directory: config.json (the experiment -- model, hidden size, model hyperparameters, task --
and the training settings), metrics.jsonl and checkpoint.msgpack. Running a command again
resumes unfinished runs and skips finished ones; a larger --steps extends them; --overwrite
trains them afresh. A directory that holds a run with other settings is refused with a
one-line error naming them.

table1 and charlm write their tables to --results (``<--runs>/results`` by default); the
published tables in ``experiments/results/`` change only when asked for with
``--results experiments/results``.

Reference: Ba, Hinton, Mnih, Leibo, Ionescu, "Using Fast Weights to Attend to the Recent
Past", NeurIPS 2016 (arXiv:1610.06258), section 4.1 and Table 1.

``plastix fast-weights`` (installed with plastix) and
``python experiments/fast_weights.py`` (in a checkout) run this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import time
from pathlib import Path

import jax

from plastix import checks, cli, models, runs, tasks, train

PUBLISHED_RESULTS = os.path.join("experiments", "results")
DEFAULT_CORPUS = tasks.TINY_SHAKESPEARE

# The task configurations the experiments use: name -> kwargs of tasks.get.
TASK_CONFIGS = {
    # Ba et al.: 4 pairs ("c9k8j3f1??c"), 100k train / 10k valid / 20k test sequences.
    "assoc_retrieval": {"name": "assoc_retrieval", "num_pairs": 4,
                        "split_sizes": list(tasks.BA2016_SPLIT_SIZES)},
    # A small MQAR (Arora et al. 2024) that a CPU can train: 8 pairs asked in one window of
    # 32 tokens, 31 key ids and 32 value ids; 8 scored answers per sequence.
    "mqar": {"name": "mqar", "vocab_size": 64, "num_pairs": 8, "seq_len": 32},
    "text": {"name": "text", "path": DEFAULT_CORPUS, "seq_len": 100},
}
# The model whose cell the --form flag chooses the form of.
FAST_WEIGHTS = "rnn-ln-fw"

# Table 1 of Ba et al. 2016: associative retrieval test error (%), R hidden units.
PAPER_TABLE1 = {
    "IRNN": {20: 62.11, 50: 60.23, 100: 0.34},
    "LSTM": {20: 60.81, 50: 1.85, 100: 0.0},
    "A-LSTM": {20: 60.13, 50: 1.62, 100: 0.0},
    "Fast weights": {20: 1.81, 50: 0.0, 100: 0.0},
}
# Our model for each row of Table 1 (A-LSTM, Danihelka et al. 2016, is not built here).
# Fast weights are trained in the attention form: the same function as the explicit form
# (tests/test_models.py), 5x cheaper at T = 11 (benchmarks/bench_fast_weights.py).
TABLE1_MODELS = {
    "IRNN": ("control", {}),
    "LSTM": ("lstm", {}),
    "Fast weights": ("rnn-ln-fw", {"form": "attention"}),
}
TABLE1_SIZES = (20, 50, 100)


@functools.lru_cache(maxsize=4)
def _task(config_json: str):
    # Cached: the fixed associative-retrieval data sets take seconds to draw.
    config = json.loads(config_json)
    return tasks.get(config.pop("name"), **config)


def build(experiment: dict):
    """(model, task) of an experiment record {"model", "hidden", "model_hyper", "task"}."""
    task = _task(json.dumps(experiment["task"], sort_keys=True))
    model = models.make_model(experiment["model"], task.vocab_size, task.seq_len,
                              experiment["hidden"], **experiment.get("model_hyper", {}))
    return model, task


def train_run(run_dir: Path, experiment: dict, config: train.TrainConfig, mode: str = "auto",
              flag: str = "--run-dir") -> train.TrainState:
    """Train (or resume, or skip if finished; with ``mode="overwrite"`` train afresh) one
    run; returns its final state.

    Raises ValueError if ``run_dir`` holds a run of another experiment or other settings.
    """
    model, task = build(experiment)
    tag = run_dir.name
    return train.fit(model, task, config, run_dir, experiment=experiment, mode=mode, flag=flag,
                     data_files=[experiment["task"].get("path")],  # the text task's corpus
                     print_fn=lambda line: print(f"[{tag}] {line}", flush=True))


def read_run(run_dir: Path) -> tuple[dict, train.TrainConfig]:
    """(experiment, TrainConfig) of a run directory; ValueError naming the directory or
    file if it holds no run of this experiment."""
    if not run_dir.is_dir():
        raise ValueError(f"--run-dir {run_dir} " + (
            "is a file, not a run directory" if run_dir.exists() else "does not exist"))
    saved = runs.read_config(run_dir)
    if saved is None:
        raise ValueError(f"--run-dir {run_dir} holds no run ({runs.CONFIG} is missing)")
    try:
        if "train" in saved:
            return saved["experiment"], train.TrainConfig(**saved["train"])
        # Runs from before the run directory layout: the experiment had a file of its own.
        experiment = json.loads((run_dir / "experiment.json").read_text())
        return experiment, train.TrainConfig(**saved)
    except (KeyError, TypeError, checks.FieldError) as e:
        raise ValueError(f"{run_dir / runs.CONFIG} is not a config of this experiment "
                         f"({type(e).__name__}: {cli.one_line(e)})") from None


@functools.lru_cache(maxsize=8)
def _evaluator(model, task, batch_size: int, batches: int):
    # Cached: scoring the runs of a table, or a run after its training, compiles once.
    return train.make_evaluate(model, task, batch_size, batches)


def score_run(run_dir: Path, split: str = "test", batches: int = 20,
              batch_size: int = 1000) -> dict:
    """Loss (nats), accuracy and bits/char of a trained run on ``batches`` x ``batch_size``
    sequences of ``split``, drawn with a fixed key."""
    experiment, config = read_run(run_dir)
    model, task = build(experiment)
    checkpoint = run_dir / runs.CHECKPOINT
    if not checkpoint.exists():
        raise ValueError(f"--run-dir {run_dir} holds no {runs.CHECKPOINT}: the run stopped "
                         f"before its first checkpoint; train it further first")
    optimizer = train.make_optimizer(config.learning_rate, config.clip_norm)
    template = train.init_state(jax.random.key(0), model, task.seq_len, optimizer)
    state, _ = runs.load_checkpoint(checkpoint, template)
    evaluate = _evaluator(model, task, batch_size, batches)
    scores = {k: float(v) for k, v in evaluate(state.params, jax.random.key(2016), split).items()}
    scores["bits_per_char"] = float(tasks.bits_per_char(scores["loss"]))
    scores["error_pct"] = 100.0 * (1.0 - scores["accuracy"])
    scores["steps"] = int(state.step)
    return scores


def _train_config(args) -> train.TrainConfig:
    return train.TrainConfig(steps=args.steps, batch_size=args.batch_size,
                             learning_rate=args.lr, clip_norm=args.clip, seed=args.seed,
                             log_every=args.log_every, eval_every=args.log_every * 10,
                             checkpoint_every=args.log_every * 10)


def _mode(args) -> str:
    """What to do with a run directory that holds a run (`runs.claim`)."""
    return "overwrite" if args.overwrite else "auto"


def output_dir(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as a directory to write into, created if missing: checked before any
    training, so that hours of runs never end on a directory that cannot take their table.

    Raises ValueError naming ``flag`` if it is a file, cannot be created or is not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot create the directory ({e.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: the directory is not writable")
    return path


def results_dir(args) -> Path:
    """Where table1 and charlm write their tables: --results, else ``<--runs>/results``."""
    return output_dir(args.results or Path(args.runs) / "results",
                      "--results" if args.results else "--runs")


def text_task_config(corpus: str) -> dict:
    """The text task's config on ``corpus``: a bundled corpus by its name, a file by its
    absolute path (so that a run's config names the file however the flag spelled it);
    ValueError naming --corpus if missing."""
    path = tasks.corpus_path(corpus)
    if not os.path.isfile(path):
        raise ValueError(f"--corpus {corpus}: " + (
            "is a directory, not a text file" if os.path.isdir(path) else "no such file")
            + f"; give the path of a UTF-8 text file (or {tasks.TINY_SHAKESPEARE})")
    return {**TASK_CONFIGS["text"],
            "path": corpus if corpus in tasks.BUNDLED_CORPORA else os.path.abspath(corpus)}


def cmd_train(args, given):
    if args.model != FAST_WEIGHTS:
        cli.refuse(given, ["form"], f"to --model {args.model} (only to {FAST_WEIGHTS})")
    if args.task != "text":
        cli.refuse(given, ["corpus"], f"to --task {args.task} (only to text)")
    if args.run_dir is not None:
        cli.refuse(given, ["runs"], "with --run-dir")
    hyper = {"form": args.form} if args.model == FAST_WEIGHTS else {}
    task = text_task_config(args.corpus) if args.task == "text" else TASK_CONFIGS[args.task]
    experiment = {"model": args.model, "hidden": args.hidden, "model_hyper": hyper,
                  "task": task}
    name = f"{args.task}-{args.model}-R{args.hidden}-s{args.seed}"
    run_dir = args.run_dir or output_dir(args.runs, "--runs") / name
    config = _train_config(args)
    train_run(run_dir, experiment, config, _mode(args),
              "--run-dir" if args.run_dir else "--runs")
    print(json.dumps(score_run(run_dir, "valid")))


def cmd_test(args, given):
    print(json.dumps(score_run(Path(args.run_dir), args.split, args.batches), indent=1))


def _check_plot_out(out: Path, formats: dict) -> None:
    """Refuse an --out that cannot take the figure, before anything is drawn."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file name such as {out / 'x.png'}")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: the directory {out.parent} does not exist")
    fmt = out.suffix.lstrip(".").lower() or "png"
    if fmt not in formats:
        raise ValueError(f"--out {out}: unknown image format {fmt!r}; use one of "
                         f"{', '.join(sorted(formats))}")


def _plotted_records(run_dir: Path) -> list[dict]:
    """The metrics of a run to plot; ValueError naming the directory if it has none."""
    if not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} " + (
            "is a file" if run_dir.exists() else "does not exist"))
    records = runs.MetricsLog(run_dir / runs.METRICS).read()
    if not records:
        raise ValueError(f"run directory {run_dir} holds no metrics ({runs.METRICS} is "
                         f"missing or empty): nothing to plot")
    return records


def cmd_plot(args, given):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    _check_plot_out(args.out, fig.canvas.get_supported_filetypes())
    for run_dir, records in [(d, _plotted_records(d)) for d in args.run_dirs]:
        for split, style in (("train", "-"), ("valid", "o--")):
            rows = [r for r in records if r["split"] == split]
            steps = [r["step"] for r in rows]
            label = f"{run_dir.name} {split}"
            ax_loss.plot(steps, [r["loss"] for r in rows], style, label=label)
            ax_acc.plot(steps, [r["accuracy"] for r in rows], style, label=label)
    ax_loss.set(xlabel="update", ylabel="loss (nats per scored token)", yscale="log")
    ax_acc.set(xlabel="update", ylabel="accuracy")
    ax_acc.legend(fontsize=7)
    fig.tight_layout()
    runs.save_figure(fig, args.out, dpi=120)
    plt.close(fig)
    print(f"wrote {args.out}")


def table1_markdown(task_name: str, results: list[dict], minutes: float) -> str:
    """Markdown: our test error per (model, R) next to the paper's Table 1.

    ``results`` are the run records (model, hidden, seed, error_pct, config). A cell is one
    figure, or the mean with the range over seeds and their number; each row names the
    Adam updates its runs had, since rows may be rerun with another budget (``--models``).
    """
    paper = task_name == "assoc_retrieval"
    header = "| Model | updates | " + " | ".join(
        f"R={r} ours" + (f" | R={r} paper" if paper else "") for r in TABLE1_SIZES) + " |"
    rows = [header, "|" + "---|" * (2 + len(TABLE1_SIZES) * (2 if paper else 1))]
    for label in (PAPER_TABLE1 if paper else TABLE1_MODELS):
        runs = [r for r in results if r["model"] == label]
        steps = sorted({r["config"]["steps"] for r in runs})
        cells = [" / ".join(f"{s:,}" for s in steps) or "—"]
        for size in TABLE1_SIZES:
            errors = [r["error_pct"] for r in runs if r["hidden"] == size]
            if not errors:
                cells.append("—")
            elif len(errors) == 1:
                cells.append(f"{errors[0]:.2f}%")
            else:  # mean, and the spread over seeds: single runs of this task vary a lot
                cells.append(f"{sum(errors) / len(errors):.2f}% ({min(errors):.2f}–"
                             f"{max(errors):.2f}, n={len(errors)})")
            if paper:
                cells.append(f"{PAPER_TABLE1[label][size]:.2f}%")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    shared = {k: sorted({str(r["config"][k]) for r in results})
              for k in ("batch_size", "learning_rate", "clip_norm")}
    settings = (f"Test error (%) on `{task_name}` {json.dumps(TASK_CONFIGS[task_name])}; Adam, "
                f"batch {'/'.join(shared['batch_size'])}, lr {'/'.join(shared['learning_rate'])}, "
                f"clip {'/'.join(shared['clip_norm'])}; seeds "
                f"{sorted({r['seed'] for r in results})} (mean, range); {minutes:.1f} min of "
                f"training on a shared 2-core CPU (a resumed run counts only its continuation).")
    return settings + "\n\n" + "\n".join(rows) + "\n"


def _kept_results(stem: Path, rerun: set[str]) -> list[dict]:
    """Run records of the rows not rerun this time, from the table's previous JSON."""
    path = stem.with_suffix(".json")
    if not path.exists():
        return []
    try:
        previous = json.loads(path.read_text())
        kept = [r for r in previous["runs"] if r["model"] not in rerun]
        for r in kept:  # each record carries the settings it was trained with
            r.setdefault("config", previous["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a table1 result ({type(e).__name__}: "
                         f"{cli.one_line(e)}); without --models the whole table is rerun"
                         ) from None
    return kept


def _distinct_seeds(seeds: list[int]) -> list[int]:
    """``seeds``, refused if one is given twice (its run would count twice in the mean)."""
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise checks.FieldError("--seeds", f"gives {', '.join(map(str, twice))} more than "
                                           f"once; give each seed once")
    return seeds


def cmd_table1(args, given):
    config = _train_config(args)
    seeds = _distinct_seeds(args.seeds)
    runs_root = output_dir(args.runs, "--runs") / "table1" / args.task
    stem = results_dir(args) / f"table1_{args.task}"
    rows = args.models or list(TABLE1_MODELS)
    start, results = time.perf_counter(), []
    for label, (model_name, hyper) in TABLE1_MODELS.items():
        if label not in rows:
            continue
        for hidden in TABLE1_SIZES:
            for seed in seeds:
                experiment = {"model": model_name, "hidden": hidden, "model_hyper": hyper,
                              "task": TASK_CONFIGS[args.task]}
                run_dir = runs_root / f"{model_name}-R{hidden}-s{seed}"
                run_start = time.perf_counter()
                train_run(run_dir, experiment, dataclasses.replace(config, seed=seed),
                          _mode(args), "--runs")
                scores = score_run(run_dir, "test")
                results.append({"model": label, "hidden": hidden, "seed": seed,
                                "minutes": (time.perf_counter() - run_start) / 60, **scores,
                                "config": dataclasses.asdict(
                                    dataclasses.replace(config, seed=seed))})
                print(json.dumps(results[-1]), flush=True)
    minutes = (time.perf_counter() - start) / 60
    kept = _kept_results(stem, set(rows)) if args.models else []
    results = kept + results
    minutes += sum(r["minutes"] for r in kept)
    markdown = table1_markdown(args.task, results, minutes)
    if kept:
        markdown += ("\nRows kept from the previous table (not rerun): "
                     + ", ".join(sorted({r["model"] for r in kept})) + "; each run's settings "
                     "are in the JSON.\n")
    runs.write_text(stem.with_suffix(".md"), markdown)
    runs.write_json(stem.with_suffix(".json"), {
        "task": TASK_CONFIGS[args.task], "config": dataclasses.asdict(config), "runs": results,
        "paper": PAPER_TABLE1 if args.task == "assoc_retrieval" else None})
    print(markdown)
    print(f"wrote {stem.with_suffix('.md')} and {stem.with_suffix('.json')}")


def cmd_charlm(args, given):
    config = _train_config(args)
    task = text_task_config(args.corpus)
    runs_root = output_dir(args.runs, "--runs") / "charlm"
    results = results_dir(args)
    start, rows = time.perf_counter(), []
    for model_name, hyper in (("lstm", {}), (FAST_WEIGHTS, {"form": args.form})):
        experiment = {"model": model_name, "hidden": args.hidden, "model_hyper": hyper,
                      "task": task}
        run_dir = runs_root / f"{model_name}-R{args.hidden}-s{args.seed}"
        run_start = time.perf_counter()
        train_run(run_dir, experiment, config, _mode(args), "--runs")
        scores = score_run(run_dir, "valid", batches=args.eval_batches, batch_size=100)
        rows.append({"model": model_name, "hidden": args.hidden,
                     "minutes": (time.perf_counter() - run_start) / 60, **scores})
        print(json.dumps(rows[-1]), flush=True)
    minutes = (time.perf_counter() - start) / 60
    lines = [f"Tiny shakespeare, validation bits per character ({args.eval_batches} x 100 "
             f"windows of {task['seq_len']} chars); {config.steps} Adam updates "
             f"of batch {config.batch_size}, lr {config.learning_rate}, hidden {args.hidden}, "
             f"seed {args.seed}; {minutes:.1f} min wall-clock on a shared 2-core CPU.", "",
             "| Model | valid bits/char | valid accuracy |", "|---|---|---|"]
    lines += [f"| {r['model']} | {r['bits_per_char']:.3f} | {r['accuracy']:.3f} |" for r in rows]
    runs.write_text(results / "charlm_tinyshakespeare.md", "\n".join(lines) + "\n")
    runs.write_json(results / "charlm_tinyshakespeare.json",
                    {"config": dataclasses.asdict(config), "runs": rows})
    print("\n".join(lines))
    print(f"wrote {results / 'charlm_tinyshakespeare.md'} and .json")


def path_flag(text: str) -> Path:
    """A command-line path; an empty one would silently mean the current directory."""
    if not text:
        raise argparse.ArgumentTypeError("must be a path, got ''")
    return Path(text)


def _add_training_flags(p, steps, batch_size, lr):
    p.add_argument("--steps", type=checks.SIZE, default=steps,
                   help="Adam updates (a finished run given more is extended)")
    p.add_argument("--batch-size", type=checks.SIZE, default=batch_size)
    p.add_argument("--lr", type=checks.RATE, default=lr, help="Adam's learning rate")
    p.add_argument("--clip", type=checks.RATE, default=1.0, help="global gradient-norm clip")
    p.add_argument("--log-every", type=checks.SIZE, default=100,
                   help="log every N steps; evaluate and checkpoint every 10 N")
    p.add_argument("--runs", type=path_flag, default=Path("runs/fast_weights"),
                   help="root of the run directories")
    p.add_argument("--overwrite", action="store_true",
                   help="train the runs afresh, replacing what their directories hold "
                        "(without it a run is resumed, or skipped if finished)")


def _add_results_flag(p):
    p.add_argument("--results", type=path_flag, default=None,
                   help=f"directory of the tables (default <--runs>/results; the published "
                        f"ones are in {PUBLISHED_RESULTS})")


def _add_corpus_flag(p):
    p.add_argument("--corpus", default=DEFAULT_CORPUS,
                   help="any UTF-8 text file, or the name of a corpus bundled with plastix")


def parser() -> cli.Parser:
    """The command line: one subparser per subcommand, every number checked as it is read."""
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model")
    p.add_argument("--model", default=FAST_WEIGHTS, choices=sorted(models.CELLS))
    p.add_argument("--task", default="assoc_retrieval", choices=sorted(TASK_CONFIGS))
    p.add_argument("--hidden", type=checks.SIZE, default=50)
    p.add_argument("--form", default="attention", choices=("explicit", "attention"),
                   help=f"form of the {FAST_WEIGHTS} cell")
    p.add_argument("--seed", type=checks.SEED, default=0)
    p.add_argument("--run-dir", type=path_flag,
                   help="the run directory (default <--runs>/<task>-<model>-R<hidden>-s<seed>)")
    _add_corpus_flag(p)
    _add_training_flags(p, steps=10_000, batch_size=128, lr=1e-3)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("test", help="score a trained run")
    p.add_argument("--run-dir", type=path_flag, required=True)
    p.add_argument("--split", default="test", choices=tasks.SPLITS)
    p.add_argument("--batches", type=checks.SIZE, default=20, help="batches of 1000 sequences")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("plot", help="plot training curves")
    p.add_argument("run_dirs", nargs="+", type=path_flag)
    p.add_argument("--out", type=path_flag, default=Path("fast_weights.png"))
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("table1", help="reproduce Table 1 of Ba et al. 2016")
    p.add_argument("--task", default="assoc_retrieval", choices=("assoc_retrieval", "mqar"))
    p.add_argument("--seeds", type=checks.SEED, nargs="+", default=[0])
    p.add_argument("--models", nargs="+", choices=list(TABLE1_MODELS),
                   help="rerun only these rows; the others are kept from the previous JSON "
                        "in --results")
    _add_training_flags(p, steps=3_000, batch_size=128, lr=1e-3)
    _add_results_flag(p)
    p.set_defaults(func=cmd_table1, seed=0)

    p = sub.add_parser("charlm", help="char-level LM on tiny shakespeare")
    p.add_argument("--hidden", type=checks.SIZE, default=128)
    p.add_argument("--form", default="attention", choices=("explicit", "attention"))
    p.add_argument("--seed", type=checks.SEED, default=0)
    p.add_argument("--eval-batches", type=checks.SIZE, default=20,
                   help="validation batches of 100 windows")
    _add_corpus_flag(p)
    _add_training_flags(p, steps=1_500, batch_size=32, lr=3e-3)
    _add_results_flag(p)
    p.set_defaults(func=cmd_charlm)
    return parser


def main(argv=None):
    args, given = cli.parse(parser(), argv)
    args.func(args, given)

