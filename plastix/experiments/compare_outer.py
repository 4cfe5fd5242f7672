"""ES against gradient descent through the lifetime, on one configuration at a time.

For each preset, the same plastic network, rule family, task, lifetime batch and starting
point are handed to both outer loops of ``es_abcd.py`` (``--outer es`` and ``--outer
gradient``), each for the same wall-clock budget, and both results are scored on the same
held-out test sequences with the same initial weights:

    python experiments/compare_outer.py                                 # every preset, 240 s each
    python experiments/compare_outer.py --presets overwrite --budget-s 900 --seeds 0 1 2

Presets (their flags are printed in the report): ``assoc`` (associative retrieval, ABCD
readout), ``overwrite`` (recall with overwrites, the 16-term ``multilinear_mod`` readout
from zero, against the hand-tuned delta rule) and ``text`` (100-character lifetimes of a
text file; ``--text-path``, default tiny shakespeare as bundled with plastix).

Writes ``--out/report.md`` and ``report.json`` (default ``runs/compare_outer``; the
published copy, ``experiments/results/compare_outer.md``, changes only when copied there):
test NLL and accuracy, wall time, updates, lifetimes evaluated and the learned coefficients
side by side. Each run is an ``es_abcd.py`` run directory under
``--out/<preset>_<outer>_s<seed>/``; a run that finished is read back instead of run again,
so a killed comparison is completed by running the command again.

``plastix compare-outer`` (installed with plastix) and
``python experiments/compare_outer.py`` (in a checkout) run this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

from plastix.experiments import es_abcd  # first: it sets the device policy before JAX starts
import jax  # noqa: E402
import numpy as np  # noqa: E402

from plastix import checks, cli, plastic, runs, tasks  # noqa: E402

TEST_SEED = 777
# Far more updates than any budget allows: the budget ends every run.
UNBOUNDED = 10**9


@dataclasses.dataclass(frozen=True)
class Preset:
    """``es_abcd.py`` flags of one comparison: those both outer loops share, and each
    loop's own (its optimiser settings and how many updates make one logged block)."""

    shared: tuple[str, ...]
    es: tuple[str, ...]
    gradient: tuple[str, ...]
    hand_rules: tuple[str, ...] = ("Delta rule (readout)", "Hebb (readout)")


PRESETS = {
    "assoc": Preset(
        shared=("--task", "assoc_retrieval", "--rule-out", "ABCD_lr", "--log-rates",
                "--batch", "32"),
        es=("--log-every", "10"),
        gradient=("--grad-lr", "0.1", "--log-every", "50")),
    "overwrite": Preset(
        shared=("--task", "recall_overwrite", "--rule-out", "multilinear_mod", "--log-rates",
                "--init-mean", "zero", "--batch", "128"),
        es=("--strategy", "CMA_ES", "--sigma", "0.3", "--log-every", "5"),
        gradient=("--grad-lr", "0.03", "--grad-lr-decay", "0.999", "--grad-lr-min", "0.003",
                  "--log-every", "50")),
    "text": Preset(
        shared=("--task", "text", "--seq-len", "100", "--rule-out", "multilinear_mod",
                "--rule-rec", "ABCD_lr", "--readout-bias", "--hidden", "32", "--batch", "16"),
        es=("--optimizer", "adam", "--lr", "0.1", "--log-every", "5"),
        gradient=("--grad-lr", "0.03", "--log-every", "20")),
}


REPORT_FILES = ("report.md", "report.json")
# What --out holds: the report, and a run directory per preset, outer loop and seed.
KIND = runs.RunKind("compare-outer", files=REPORT_FILES, dirs=("*_es_s*", "*_gradient_s*"),
                    recognise=runs.json_with_keys("report.json", "results", "hand_rules"))


def parser() -> cli.Parser:
    p = cli.Parser(description=__doc__)
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--budget-s", type=checks.RATE, default=240.0,
                   help="wall-clock seconds per run (compilation included)")
    p.add_argument("--seeds", type=checks.SEED, nargs="+", default=[0])
    p.add_argument("--eval-batch", type=checks.SIZE, default=1024,
                   help="held-out sequences scored (validation while running, test at the end)")
    p.add_argument("--text-path", default=tasks.TINY_SHAKESPEARE,
                   help="corpus of the text preset: a UTF-8 text file, or the name of a "
                        "corpus bundled with plastix")
    p.add_argument("--out", default="runs/compare_outer")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The checked command line; ValueError naming the flag for a mistake."""
    args, given = cli.parse(parser(), argv)
    if "text" not in args.presets:
        cli.refuse(given, ["text_path"], "without the text preset (--presets text)")
    elif not os.path.isfile(tasks.corpus_path(args.text_path)):
        raise checks.FieldError("--text-path", f"{args.text_path}: no such file (the text "
                                               f"preset needs a corpus); give a text file")
    for flag, values in (("--presets", args.presets), ("--seeds", args.seeds)):
        if len(set(values)) != len(values):
            raise checks.FieldError(flag, f"must not repeat a value, got {values}")
    return args


def run_flags(args, preset: str, outer: str, seed: int) -> list[str]:
    """The ``es_abcd.py`` command line of one run."""
    spec = PRESETS[preset]
    flags = [*spec.shared, *getattr(spec, outer), "--outer", outer, "--seed", str(seed),
             "--eval-batch", str(args.eval_batch), "--generations", str(UNBOUNDED),
             "--out", os.path.join(args.out, f"{preset}_{outer}_s{seed}"), "--no-plots"]
    if preset == "text":
        flags += ["--text-path", args.text_path]
    return flags


# What a run's result.json holds (`run_one`), as the report reads it.
RESULT_FIELDS = {"preset": str, "outer": str, "seed": int, "test_nll": runs.NUMBER,
                 "test_accuracy": runs.NUMBER, "seconds": runs.NUMBER, "updates": int,
                 "lifetimes": int, "coefficients": dict, "flags": list}


def finished_result(path: str, settings: dict) -> dict | None:
    """The result at ``path`` if the run finished, else None; a result made under other
    ``settings`` (its flags, its budget) is refused, never reported as this run's."""
    result = runs.read_result(path, RESULT_FIELDS)
    if result is None:
        return None
    differs = [key for key, value in settings.items() if result.get(key) != value]
    if differs:
        raise ValueError(f"{path} holds a result made with other settings (differs in: "
                         f"{', '.join(differs)}); choose another --out or delete it")
    return result


def run_one(args, preset: str, outer_name: str, seed: int) -> dict:
    """One outer loop for the budget (or its finished result), scored on the test split."""
    flags = run_flags(args, preset, outer_name, seed)
    cfg, _ = es_abcd.parse_config(flags)
    result_path = os.path.join(cfg.out, "result.json")
    settings = {"flags": flags, "budget_s": args.budget_s}
    if (done := finished_result(result_path, settings)) is not None:
        return done
    began = time.perf_counter()
    # Not resumed: a run killed before its result was written starts again, so that
    # every reported run had one uninterrupted budget.
    outer, history, params = es_abcd.run_outer(cfg, mode="overwrite",
                                               time_budget_s=args.budget_s)
    seconds = time.perf_counter() - began
    nll, accuracy = es_abcd.score(outer.net, outer.task, params, jax.random.key(TEST_SEED),
                                  "test", args.eval_batch)
    updates = history[-1]["step" if outer_name == "gradient" else "generation"]
    per_update = cfg.grad.batch if outer_name == "gradient" else cfg.es.population * cfg.es.batch
    result = {
        "preset": preset, "outer": outer_name, "seed": seed, "test_nll": nll,
        "test_accuracy": accuracy, "seconds": seconds, "updates": updates,
        "lifetimes": updates * per_update,
        "coefficients": shown_coefficients(outer.net, params), **settings,
    }
    runs.write_json(result_path, result)
    return result


def shown_coefficients(net: plastic.PlasticRNN, params: dict) -> dict[str, float]:
    """The shared coefficients a reader compares: polynomial terms scaled to max |c| = 1
    (their scale is the rate's), the effective rate, and any other coefficient as it is."""
    shown = {}
    for layer, coeffs in jax.device_get(plastic.rule_coeffs(net, params)).items():
        if "theta" in coeffs:
            terms = es_abcd.polynomial_terms(coeffs["theta"])
            scale = max(abs(v) for v in terms.values()) or 1.0
            shown[f"{layer}: rate x max|c|"] = float(np.mean(coeffs["eta"])) * scale
            shown.update({f"{layer}: {name}": v / scale for name, v in terms.items()})
        else:
            shown.update({f"{layer}: {name}": float(np.mean(v)) for name, v in coeffs.items()})
    return shown


def hand_rows(args, preset: str) -> list[dict]:
    """The preset's hand rules at their best rate on validation, scored like the runs."""
    cfg, _ = es_abcd.parse_config(run_flags(args, preset, "es", 0))
    task = cfg.task.build()
    rows = []
    for label, net, params, setting in es_abcd.best_hand_rules(cfg.net, task, args.eval_batch):
        if label in PRESETS[preset].hand_rules:
            nll, accuracy = es_abcd.score(net, task, params, jax.random.key(TEST_SEED), "test",
                                          args.eval_batch)
            rows.append({"preset": preset, "model": label, "setting": setting,
                         "test_nll": nll, "test_accuracy": accuracy})
    return rows


def format_report(args, results: list[dict], hands: list[dict]) -> str:
    lines = [f"ES vs gradient through the lifetime, {args.budget_s:g} s of wall clock per run "
             f"on this machine ({jax.device_count()} {jax.default_backend()} device(s)); "
             f"test split, {args.eval_batch} sequences, the same for every row.", ""]
    for preset in args.presets:
        mine = [r for r in results if r["preset"] == preset]
        lines += [f"## {preset}", "", "Shared flags: `" + " ".join(PRESETS[preset].shared) + "`",
                  "", "| outer loop | seed | test NLL | accuracy | wall s | updates | "
                  "lifetimes | own flags |", "|---|---|---|---|---|---|---|---|"]
        for r in mine:
            own = " ".join(getattr(PRESETS[preset], r["outer"]))
            lines.append(f"| {r['outer']} | {r['seed']} | {r['test_nll']:.4f} | "
                         f"{r['test_accuracy']:.4f} | {r['seconds']:.0f} | {r['updates']} | "
                         f"{r['lifetimes']} | `{own}` |")
        for h in (h for h in hands if h["preset"] == preset):
            lines.append(f"| hand: {h['model']} {h['setting']} | – | {h['test_nll']:.4f} | "
                         f"{h['test_accuracy']:.4f} | – | – | – | – |")
        names = list(dict.fromkeys(n for r in mine for n in r["coefficients"]))
        columns = [f"{r['outer']} s{r['seed']}" for r in mine]
        lines += ["", "| coefficient | " + " | ".join(columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for name in names:
            lines.append(f"| {name.replace('|', '&#124;')} | " + " | ".join(
                f"{r['coefficients'][name]:+.3g}" for r in mine) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    runs.check_dir(args.out, KIND, "auto")
    for preset in args.presets:  # every run checked whole before the directory is touched
        for seed in args.seeds:
            for outer in es_abcd.OUTER_LOOPS:
                cfg, _ = es_abcd.parse_config(run_flags(args, preset, outer, seed))
                es_abcd.check_run(cfg, "overwrite")
    runs.take_dir(args.out, KIND, "auto")  # its runs are its subdirectories
    results = [run_one(args, preset, outer, seed) for preset in args.presets
               for seed in args.seeds for outer in es_abcd.OUTER_LOOPS]
    hands = [row for preset in args.presets for row in hand_rows(args, preset)]
    report = format_report(args, results, hands)
    print("\n" + report)
    runs.write_text(os.path.join(args.out, "report.md"), report + "\n")
    runs.write_json(os.path.join(args.out, "report.json"),
                    {"results": results, "hand_rules": hands})
    print(f"wrote {args.out}/report.md and report.json")
    return results

