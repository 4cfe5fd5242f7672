"""Error-driven local learning that trains networks: CHL, GeneRec and the trace rule
against backprop on the same architecture (`plastix.settling`).

    python experiments/local_learning.py                      # ra25, every method, 5 seeds
    python experiments/local_learning.py --task digits --epochs 30

For every variant (a method and its settings) the learning rate is picked from
``--lrs`` on tuning seeds that are not reported (ra25: the fewest epochs to criterion;
digits: the best validation accuracy), then ``--seeds`` fresh seeds are trained at once
under ``vmap``. Writes to ``--out``: ``report.md`` / ``report.json`` (epochs to criterion,
final errors or accuracy, learning curves per seed, the mean weight change per epoch)
and ``curves.png`` (errors or accuracy per epoch, mean over seeds).

``plastix local-learning`` (installed with plastix) and
``python experiments/local_learning.py`` (in a checkout) run this module.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from plastix import checks, cli, runs, settling, tasks

TUNE_SEED_OFFSET = 1000  # tuning seeds never overlap the reported ones
REPORT_FILES = ("report.md", "report.json", "curves.png")
KIND = runs.RunKind("local-learning", files=REPORT_FILES,
                    recognise=runs.json_with_keys("report.json", "sizes", "rows"))


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of the report: a method and the network settings it trains."""

    label: str
    method: str
    net: dict


VARIANTS = (
    Variant("CHL", "chl", {}),
    Variant("CHL, mean change subtracted", "chl", {"subtract_mean": True}),
    Variant("GeneRec", "generec", {}),
    Variant("trace (error: activity change)", "trace", {"err_activity": 1.0}),
    Variant("trace (error: 3/4 net input, 1/4 activity)", "trace", {"err_activity": 0.25}),
    Variant("trace, mean change subtracted", "trace",
            {"err_activity": 1.0, "subtract_mean": True}),
    Variant("backprop (same network, bottom-up)", "backprop", {}),
    Variant("backprop (no inhibition)", "backprop", {"k_fraction": None}),
)


def load_task(name: str, data_seed: int, hidden: tuple[int, ...]):
    """``(sizes, train, tune, test)``; each split ``(inputs, targets)``. ra25 trains and is
    scored on its 25 patterns; digits tunes on valid and reports test."""
    if name == "ra25":
        data = settling.random_associator(jax.random.key(data_seed))
        return (25, *hidden, 25), data, data, data
    splits = tasks.sklearn_digits()
    one_hot = lambda labels: jax.nn.one_hot(labels, 10)
    arrays = {s: (jnp.asarray(x.reshape(len(x), -1), jnp.float32), one_hot(y))
              for s, (x, y) in splits.items()}
    return (64, *hidden, 10), arrays["train"], arrays["valid"], arrays["test"]


def train_seeds(net, method, lr, seeds, epochs, train, test):
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
    run = lambda key: settling.train(net, method, lr, key, *train, epochs, *test)[1]
    return jax.tree.map(np.asarray, jax.vmap(run)(keys))


def tuning_score(task: str, history) -> float:
    """Lower is better: mean epochs to criterion (never: epochs + 1), or minus the final
    accuracy."""
    if task == "ra25":
        epochs = history.errors.shape[-1]
        hit = np.array([int(settling.epochs_to_criterion(e)) for e in history.errors])
        return float(np.mean(np.where(hit > 0, hit, epochs + 1)))
    return -float(np.mean(history.accuracy[:, -1]))


def summarise(task: str, variant: Variant, lr: float, history, seconds: float) -> dict:
    crit = [int(settling.epochs_to_criterion(e)) for e in history.errors]
    reached = [c for c in crit if c > 0]
    balance = history.mean_dw / np.maximum(history.mean_abs_dw, 1e-12)
    row = {"variant": variant.label, "method": variant.method, "net": variant.net, "lr": lr,
           "seconds": round(seconds, 1),
           "final_errors": history.errors[:, -1].tolist(),
           "final_accuracy": history.accuracy[:, -1].tolist(),
           # learning curves, (seeds, epochs)
           "errors_per_epoch": history.errors.tolist(),
           "accuracy_per_epoch": history.accuracy.tolist(),
           "mean_dw_per_epoch": history.mean_dw.mean(axis=0).tolist(),
           "mean_abs_dw_per_epoch": history.mean_abs_dw.mean(axis=0).tolist(),
           # mean change over mean |change|, averaged over the first 10 epochs
           "balance_first_10": float(np.mean(balance[:, :10]))}
    if task == "ra25":
        row.update(epochs_to_criterion=crit, reached=len(reached),
                   median_epochs=float(np.median(reached)) if reached else None)
    return row


def markdown(task: str, rows: list[dict], args) -> str:
    lines = [f"# Local learning on {task}", "",
             f"{args.seeds} seeds, {args.epochs} epochs, hidden {args.hidden}, "
             f"learning rate picked from {args.lrs} on {args.tune_seeds} tuning seeds.", ""]
    if task == "ra25":
        lines += ["| variant | lr | reached criterion | epochs to criterion (per seed) | "
                  "median | mean dw / mean abs dw, first 10 epochs |", "|---|---|---|---|---|---|"]
        for r in rows:
            crit = ", ".join(str(c) if c else "-" for c in r["epochs_to_criterion"])
            lines.append(f"| {r['variant']} | {r['lr']:g} | {r['reached']}/{args.seeds} | "
                         f"{crit} | {r['median_epochs'] if r['median_epochs'] else '-'} | "
                         f"{r['balance_first_10']:+.3f} |")
    else:
        lines += ["| variant | lr | test accuracy (mean ± sd) | per seed | "
                  "mean dw / mean abs dw, first 10 epochs |", "|---|---|---|---|---|"]
        for r in rows:
            acc = np.array(r["final_accuracy"]) * 100
            lines.append(f"| {r['variant']} | {r['lr']:g} | {acc.mean():.1f} ± {acc.std():.1f}% | "
                         f"{', '.join(f'{a:.1f}' for a in acc)} | "
                         f"{r['balance_first_10']:+.3f} |")
    return "\n".join(lines) + "\n"


def plot(task: str, curves: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, values in curves.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("patterns wrong (mean over seeds)" if task == "ra25" else "test accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    runs.save_figure(fig, path, dpi=120)
    plt.close(fig)


def parser() -> cli.Parser:
    p = cli.Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("ra25", "digits"), default="ra25")
    p.add_argument("--hidden", type=checks.SIZE, nargs="+", default=None,
                   help="hidden layer sizes (default: 49 49 for ra25, 128 for digits)")
    p.add_argument("--epochs", type=checks.SIZE, default=100)
    p.add_argument("--seeds", type=checks.SIZE, default=5, help="seeds reported")
    p.add_argument("--tune-seeds", type=checks.SIZE, default=2,
                   help="seeds the learning rate is picked on (never reported)")
    p.add_argument("--lrs", type=checks.RATE, nargs="+", default=[0.003, 0.01, 0.03, 0.1, 0.3])
    p.add_argument("--variants", nargs="+", default=None,
                   help="labels (or methods) to run; default: all")
    p.add_argument("--data-seed", type=checks.SEED, default=0,
                   help="draws ra25's random patterns")
    p.add_argument("--out", default="runs/local_learning")
    return p


def chosen_variants(names: list[str] | None) -> list[Variant]:
    """The variants named by label or method (all for None); an unknown name is refused."""
    if names is None:
        return list(VARIANTS)
    known = {v.label for v in VARIANTS} | {v.method for v in VARIANTS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise checks.FieldError("--variants", f"has unknown names {unknown}; choose labels "
                                              f"from {[v.label for v in VARIANTS]} or methods "
                                              f"{sorted({v.method for v in VARIANTS})}")
    return [v for v in VARIANTS if v.label in names or v.method in names]


def parse_args(argv=None):
    """The checked command line; ValueError naming the flag for a mistake."""
    args, given = cli.parse(parser(), argv)
    if args.task != "ra25":
        cli.refuse(given, ["data_seed"], f"to --task {args.task} (its images are fixed)")
    chosen_variants(args.variants)
    if args.hidden is None:
        args.hidden = [49, 49] if args.task == "ra25" else [128]
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    chosen = chosen_variants(args.variants)
    runs.check_dir(args.out, KIND, "auto")
    sizes, train, tune, test = load_task(args.task, args.data_seed, tuple(args.hidden))
    runs.take_dir(args.out, KIND, "auto")  # the task is sound: nothing is refused after this
    rows, curves = [], {}
    tune_seeds = [TUNE_SEED_OFFSET + s for s in range(args.tune_seeds)]
    for variant in chosen:
        net = settling.SettlingNet(sizes, **variant.net)
        start = time.perf_counter()
        scores = {lr: tuning_score(args.task, train_seeds(net, variant.method, lr, tune_seeds,
                                                          args.epochs, train, tune))
                  for lr in args.lrs}
        lr = min(scores, key=scores.get)
        history = train_seeds(net, variant.method, lr, list(range(args.seeds)), args.epochs,
                              train, test)
        row = summarise(args.task, variant, lr, history, time.perf_counter() - start)
        row["tuning"] = scores
        rows.append(row)
        curves[variant.label] = (history.errors if args.task == "ra25"
                                 else history.accuracy).mean(axis=0)
        print(f"{variant.label}: lr {lr:g}, " + (
            f"criterion reached {row['reached']}/{args.seeds}, epochs {row['epochs_to_criterion']}"
            if args.task == "ra25" else
            f"test accuracy {np.mean(row['final_accuracy']):.4f}") +
              f" ({row['seconds']} s)", flush=True)
    report = markdown(args.task, rows, args)
    runs.write_text(os.path.join(args.out, "report.md"), report)
    runs.write_json(os.path.join(args.out, "report.json"),
                    {"args": vars(args), "sizes": sizes, "rows": rows})
    plot(args.task, curves, os.path.join(args.out, "curves.png"))
    print("\n" + report)
    print(f"wrote {args.out}/: report.md report.json curves.png")
    return rows

