"""Recover a plasticity rule from noisy, subsampled recordings of the weights it shaped
(`plastix.recovery`; after Confavreux et al. 2020 and Mehta, Tyulmankov et al. 2024).

    python experiments/rule_recovery.py                            # the full grid
    python experiments/rule_recovery.py --rules oja --methods gradient --noises 0 \\
        --synapse-fractions 1 --time-fractions 1 --no-ablations     # one quick fit

Oja's rule and the delta rule each train a linear layer; each recording is corrupted with
observation noise (on the weights, and on the activity) and subsampled (a fraction of the
synapses, a fraction of the time steps). The coefficients of the polynomial rule family
are then fitted to it from zero, by gradient (Adam with clipping, then L-BFGS) and by ES
(evosax's CMA-ES by default, through `plastix.evolve.make_strategy`), over the grid
``--noises`` x ``--synapse-fractions`` x ``--time-fractions``. Ablations (full
observation): the model's post computed from its own weights instead of recorded; noise on
the weights only or on the activity only; ``--more-recordings`` recordings; the delta rule
in the 54-term family, also with a longer fit.

Writes ``report.md`` and ``report.json`` to ``--out``: per fit the largest error of any
term after scaling both rules so that their largest ``|term|`` is 1, the R^2 of the fitted
rule's closed-loop weight trajectories against the true ones on held-out recordings, the
loss of the fit and of the true rule on the observation, the wall seconds, and the
coefficients themselves.

``plastix rule-recovery`` (installed with plastix) and
``python experiments/rule_recovery.py`` (in a checkout) run this module.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from plastix import checks, cli, evolve, recovery, runs

FAMILIES = {"oja": "polynomial", "delta": "multilinear_mod"}  # the fitted family per rule
METHODS = ("gradient", "es")
REPORT_FILES = ("report.md", "report.json")
KIND = runs.RunKind("rule-recovery", files=REPORT_FILES,
                    recognise=runs.json_with_keys("report.json", "terms", "rows"))


@dataclasses.dataclass(frozen=True)
class Cell:
    """One fit: which recording, how it is observed, what is fitted and how."""

    group: str
    rule: str
    family: str
    post: str
    method: str
    weight_noise: float
    activity_noise: float
    synapse_fraction: float
    time_fraction: float
    recordings: int
    budget: int = 1  # the fit's L-BFGS steps or ES generations, times this

    @property
    def data_spec(self) -> tuple:
        return self.rule, self.recordings

    @property
    def observation_spec(self) -> tuple:
        return (self.weight_noise, self.activity_noise, self.synapse_fraction,
                self.time_fraction)


def grid_cells(args) -> list[Cell]:
    """The main grid: every rule x method x noise x synapse fraction x time fraction."""
    return [Cell("grid", rule, FAMILIES[rule], args.post, method, noise,
                 noise * args.activity_noise_scale, synapses, steps, args.recordings)
            for rule, method, noise, synapses, steps in itertools.product(
                args.rules, args.methods, args.noises, args.synapse_fractions,
                args.time_fractions)]


def ablation_cells(args) -> list[Cell]:
    """Fully observed recordings, gradient fits: the other post source at every noise
    level; the largest noise on the weights only and on the activity only;
    ``--more-recordings`` recordings at every nonzero noise level; and delta in the 54-term
    family by every method, with the default budget and with ``--long-budget`` times it."""
    other_post = "model" if args.post == "recorded" else "recorded"
    top = max(args.noises)
    cells = []

    def cell(what, rule, weight_noise, activity_noise, post=args.post, family=None,
             method="gradient", recordings=args.recordings, budget=1):
        cells.append(Cell(what, rule, family or FAMILIES[rule], post, method, weight_noise,
                          activity_noise, 1.0, 1.0, recordings, budget))

    for rule in args.rules:
        for noise in args.noises:
            cell(f"post from {other_post}", rule, noise, noise * args.activity_noise_scale,
                 post=other_post)
        if top > 0:
            cell("noise on weights only", rule, top, 0.0)
            cell("noise on activity only", rule, 0.0, top * args.activity_noise_scale)
        if args.more_recordings != args.recordings:
            for noise in [n for n in args.noises if n > 0]:
                cell(f"{args.more_recordings} recordings", rule, noise,
                     noise * args.activity_noise_scale, recordings=args.more_recordings)
    if "delta" in args.rules:
        for method, budget in itertools.product(args.methods, sorted({1, args.long_budget})):
            what = "delta in the 54-term family" + (
                f", x{budget} L-BFGS steps / ES generations" if budget > 1 else "")
            cell(what, "delta", 0.0, 0.0, family="polynomial_mod", method=method,
                 budget=budget)
    return cells


def es_config(args) -> evolve.ESConfig:
    # Open_ES: Adam on its gradient estimate, sigma decaying to a tenth; CMA-ES adapts its
    # own step size and reads only `sigma` (its initial std).
    return evolve.ESConfig(strategy=args.strategy, population=args.population,
                           sigma=args.sigma, optimizer="adam", lr=args.es_lr, lr_decay=0.99,
                           lr_min=args.es_lr / 20, sigma_decay=0.99, sigma_min=args.sigma / 10,
                           noise_table=0 if args.strategy == "Open_ES" else None)


def fit(cell: Cell, objective, observation, args, key):
    theta0 = jnp.zeros(objective.n_terms)  # every fit starts from the zero rule
    if cell.method == "gradient":
        return recovery.fit_gradient(objective, observation, theta0,
                                     adam_steps=args.adam_steps, lr=args.lr, clip=args.clip,
                                     lbfgs_steps=args.lbfgs_steps * cell.budget)
    return recovery.fit_es(key, objective, observation, theta0, es_config(args),
                           args.generations * cell.budget)


def rule_data(rule: str, recordings: int, args):
    """``(setup, recording, heldout)`` of one true rule: the fitted recordings and as many
    fresh ones (new inputs and initial weights, the same input statistics and teacher)."""
    setup = recovery.Setup(rule=rule, n_pre=args.n_pre, n_post=args.n_post, steps=args.steps,
                           recordings=recordings)
    rule_key = jax.random.fold_in(jax.random.key(args.seed), list(recovery.TRUE_TERMS).index(rule))
    world_key, record_key, heldout_key = jax.random.split(rule_key, 3)
    world = recovery.make_world(world_key, setup)
    return (setup, recovery.record(record_key, setup, world),
            recovery.record(heldout_key, setup, world))


def run_cells(cells: list[Cell], args) -> list[dict]:
    key = jax.random.key(args.seed)
    data, observations, compiled, rows = {}, {}, set(), []
    for cell in cells:
        if cell.data_spec not in data:
            data[cell.data_spec] = rule_data(*cell.data_spec, args)
        setup, recording, heldout = data[cell.data_spec]
        spec = (cell.data_spec, cell.observation_spec)
        if spec not in observations:  # every method and model sees the same observation
            observations[spec] = recovery.observe(
                jax.random.fold_in(key, 1000 + len(observations)), recording,
                *cell.observation_spec)
        observation = observations[spec]
        objective = recovery.Objective(cell.family, args.model_eta, cell.post)
        signature = (cell.rule, cell.family, cell.post, cell.method, cell.recordings,
                     cell.budget)
        start = time.perf_counter()
        result = jax.block_until_ready(fit(cell, objective, observation, args,
                                           jax.random.fold_in(key, 2000 + len(rows))))
        seconds = time.perf_counter() - start
        truth = recovery.true_theta(setup, objective)
        theta = np.asarray(result.theta)
        row = {**dataclasses.asdict(cell),
               "observed_fraction": float(jnp.mean(recovery.loss_mask(observation))),
               **recovery.summary(setup, objective, theta, heldout),
               "fit_loss": float(recovery.loss(objective, result.theta, observation)),
               "truth_loss": float(recovery.loss(objective, jnp.asarray(truth), observation)),
               "seconds": round(seconds, 2),
               "includes_compile": signature not in compiled,
               "theta": _rounded(theta),
               "scaled_theta": _rounded(recovery.scaled(theta))}
        compiled.add(signature)
        rows.append(row)
        print(f"{cell.group:28s} {cell.rule:5s} {cell.family:15s} {cell.post:8s} "
              f"{cell.method:8s} noise {cell.weight_noise:g}/{cell.activity_noise:g} "
              f"syn {cell.synapse_fraction:g} steps {cell.time_fraction:g}: "
              f"err {row['max_term_error']:.3f} R2 {row['heldout_r2']:.4f} "
              f"({seconds:.1f} s)", flush=True)
    return rows


def _rounded(values) -> list[float]:
    return [float(f"{v:.6g}") for v in np.asarray(values, np.float64)]


def terms(rules_fitted: set[tuple[str, str]]) -> dict[str, dict]:
    """Per fitted ``"rule in family"``: the term names (the order of every row's theta)
    and the true rule's theta, scaled so that its largest ``|term|`` is 1."""
    out = {}
    for rule, family in sorted(rules_fitted):
        objective = recovery.Objective(family)
        truth = recovery.true_theta(recovery.Setup(rule=rule), objective)
        out[f"{rule} in {family}"] = {"terms": recovery.term_names(objective),
                                      "true_scaled_theta": _rounded(recovery.scaled(truth))}
    return out


def zero_rule_r2(args) -> dict[str, float]:
    """Held-out R^2 of the zero rule (weights frozen at W_0), per true rule: the floor
    that the R^2 of a fit is to be read against."""
    out = {}
    for rule in args.rules:
        _, _, heldout = rule_data(rule, args.recordings, args)
        objective = recovery.Objective(FAMILIES[rule], args.model_eta, args.post)
        out[rule] = recovery.heldout_r2(objective, jnp.zeros(objective.n_terms), heldout)
    return out


def _fmt_r2(r2: float) -> str:
    return f"{r2:.4f}" if r2 > -10 else f"{r2:.3g}"


def table(rows: list[dict], with_group: bool) -> list[str]:
    head = ("| " + ("what | " if with_group else "") + "rule | family | post | method | "
            "noise (weights / activity) | synapses | steps | max term error | held-out R² | "
            "loss fit / truth | wall s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            "| " + (f"{r['group']} | " if with_group else "") +
            f"{r['rule']} | {r['family']} | {r['post']} | {r['method']} | "
            f"{r['weight_noise']:g} / {r['activity_noise']:g} | {r['synapse_fraction']:g} | "
            f"{r['time_fraction']:g} | {r['max_term_error']:.3f} | {_fmt_r2(r['heldout_r2'])} | "
            f"{r['fit_loss']:.2e} / {r['truth_loss']:.2e} | "
            f"{r['seconds']:.1f}{'*' if r['includes_compile'] else ''} |")
    return lines


def coefficient_table(rows: list[dict], rule: str) -> list[str]:
    """The noiseless, fully observed grid fits of ``rule`` beside the truth: every term
    that is at least 0.005 in some column, after scaling."""
    fits = [r for r in rows if r["group"] == "grid" and r["rule"] == rule
            and r["weight_noise"] == 0 and r["activity_noise"] == 0
            and r["synapse_fraction"] == 1 and r["time_fraction"] == 1]
    if not fits:
        return []
    family = terms({(rule, fits[0]["family"])})[f"{rule} in {fits[0]['family']}"]
    names, truth = family["terms"], family["true_scaled_theta"]
    lines = [f"**{rule}** ({fits[0]['family']}, {len(names)} terms; terms below 0.005 in "
             f"every column left out)", "",
             "| term | true | " + " | ".join(r["method"] for r in fits) + " |",
             "|---|---|" + "---|" * len(fits)]
    for n, name in enumerate(names):
        values = [truth[n]] + [r["scaled_theta"][n] for r in fits]
        if max(abs(v) for v in values) >= 0.005:
            lines.append(f"| {name} | " + " | ".join(f"{v:+.4f}" for v in values) + " |")
    return lines + [""]


def markdown(rows: list[dict], args, zero_r2: dict[str, float], total_seconds: float) -> str:
    grid = [r for r in rows if r["group"] == "grid"]
    ablations = [r for r in rows if r["group"] != "grid"]
    es = es_config(args)
    lines = [
        "# Rule recovery from recorded weights", "",
        f"A linear layer y = W x ({args.n_post} post, {args.n_pre} pre), correlated Gaussian "
        f"inputs, trained by the true rule (eta {recovery.Setup.eta}) for {args.steps} steps; "
        f"{args.recordings} recordings fitted, {args.recordings} fresh ones held out. "
        f"Families: Oja in `{FAMILIES['oja']}` (degree 2), delta in `{FAMILIES['delta']}`; "
        f"model eta {args.model_eta} (theta absorbs the true rate). Fits start from theta = 0. "
        f"Gradient: Adam ({args.adam_steps} steps, lr {args.lr}, clip {args.clip}) then "
        f"L-BFGS (up to {args.lbfgs_steps} steps). ES: {es.strategy}, population {es.population}, "
        f"sigma {es.sigma}, {args.generations} generations. Both search theta times each "
        f"term's RMS (`recovery.term_scales`). Seed {args.seed}; total {total_seconds:.0f} s.", "",
        "Noise: std relative to the recorded quantity's std (weights; activity x, y, m). "
        "Synapses / steps: fraction followed over time / fraction of snapshots taken (the "
        "initial snapshot is always taken in full). Max term error: the largest |error| over "
        "all terms after scaling fit and truth so that the largest |term| is 1. Held-out R²: "
        "the fitted rule run in the closed loop (y = W x) from the true W_0 of held-out "
        "recordings, against their true noiseless weights; the spread is each synapse's "
        "variance over time, so a frozen W_0 scores " +
        ", ".join(f"{rule} {r2:.2f}" for rule, r2 in zero_r2.items()) + ". Loss fit / "
        "truth: the fitting loss (MSE on the observed entries) of the fit and of the true "
        "rule: a fit at or below the truth's loss is as good as these data allow (what is "
        "left is the noise's doing, not the optimiser's). "
        "Wall s: the fit alone; * includes compilation.", "",
        "## Grid", ""] + table(grid, with_group=False) + [""]
    lines += ["## Recovered coefficients (no noise, all observed)", ""]
    for rule in args.rules:
        lines += coefficient_table(rows, rule)
    if ablations:
        lines += [
            "## Ablations (all observed)", "",
            "Post from model: the model computes y = W x from its own weights instead of "
            "reading the recorded y. Noise on weights / activity only: one noise source at "
            f"a time. {args.more_recordings} recordings: more data at the same noise. Delta "
            "in the 54-term family: `polynomial_mod` (degree 2 with m) instead of "
            "`multilinear_mod`, also with a longer fit.", ""] + table(
                ablations, with_group=True) + [""]
    return "\n".join(lines) + "\n"


OBSERVED = checks.number(above=0, at_most=1)  # a fraction observed: none observed is no data
# The dests of the flags only the gradient fits, or only the ES fits, read.
GRADIENT_FLAGS = ("adam_steps", "lbfgs_steps", "lr", "clip")
ES_FLAGS = ("strategy", "generations", "population", "sigma", "es_lr")
# ESConfig's fields by the flags that set them (`es_config`), for its errors.
ES_FIELD_FLAGS = {"strategy": "--strategy", "population": "--population", "sigma": "--sigma",
                  "lr": "--es-lr", "lr_min": "--es-lr", "sigma_min": "--sigma"}


def parser() -> cli.Parser:
    p = cli.Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=checks.SEED, default=0)
    p.add_argument("--rules", nargs="+", choices=sorted(FAMILIES), default=["oja", "delta"])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--noises", nargs="+", type=checks.NONNEGATIVE, default=[0.0, 0.05, 0.2],
                   help="observation noise std, relative to the weights' (and activity's) std")
    p.add_argument("--activity-noise-scale", type=checks.NONNEGATIVE, default=1.0,
                   help="activity noise = this times the weight noise level")
    p.add_argument("--synapse-fractions", nargs="+", type=OBSERVED, default=[1.0, 0.5, 0.1])
    p.add_argument("--time-fractions", nargs="+", type=OBSERVED, default=[1.0, 0.2])
    p.add_argument("--post", choices=recovery.POST_SOURCES, default="recorded",
                   help="the model's post: the recorded y, or y = W x from its own weights")
    p.add_argument("--steps", type=checks.SIZE, default=300, help="time steps per recording")
    p.add_argument("--recordings", type=checks.SIZE, default=4,
                   help="recordings fitted (and as many held out)")
    p.add_argument("--more-recordings", type=checks.SIZE, default=16,
                   help="recordings of the ablation that asks whether more data helps")
    p.add_argument("--n-pre", type=checks.SIZE, default=10)
    p.add_argument("--n-post", type=checks.SIZE, default=3)
    p.add_argument("--model-eta", type=checks.RATE, default=0.01)
    p.add_argument("--adam-steps", type=checks.COUNT, default=300)
    p.add_argument("--lbfgs-steps", type=checks.COUNT, default=300)
    p.add_argument("--lr", type=checks.RATE, default=0.05, help="Adam's initial step size")
    p.add_argument("--clip", type=checks.RATE, default=1.0, help="Adam's gradient-norm clip")
    p.add_argument("--strategy", choices=("CMA_ES", "Open_ES"), default="CMA_ES")
    p.add_argument("--generations", type=checks.SIZE, default=250)
    p.add_argument("--population", type=checks.integer(at_least=2), default=32)
    p.add_argument("--sigma", type=checks.RATE, default=0.5, help="ES initial search std")
    p.add_argument("--es-lr", type=checks.RATE, default=0.05, help="Open_ES's Adam step size")
    p.add_argument("--long-budget", type=checks.SIZE, default=4,
                   help="the 54-term ablation also runs with this many times the L-BFGS "
                        "steps and ES generations")
    p.add_argument("--no-ablations", action="store_true")
    p.add_argument("--out", default="runs/rule_recovery")
    return p


def refuse_inapplicable(args, given: dict[str, str]) -> None:
    """Refuse the flags of fits that do not run: the ablations fit by gradient (and the
    54-term delta by every method), the grid by --methods."""
    ablations = not args.no_ablations
    if "gradient" not in args.methods and not ablations:
        cli.refuse(given, GRADIENT_FLAGS, "without gradient fits (--methods es --no-ablations)")
    if "es" not in args.methods:
        cli.refuse(given, ES_FLAGS, "without ES fits (--methods gradient)")
    elif args.strategy != "Open_ES":
        cli.refuse(given, ["es_lr"], f"to --strategy {args.strategy} (only to Open_ES)")
    if not ablations:
        cli.refuse(given, ["more_recordings", "long_budget"], "with --no-ablations")
    elif "delta" not in args.rules:
        cli.refuse(given, ["long_budget"], "without the delta rule (its 54-term ablation)")


def parse_args(argv=None):
    """The checked command line; ValueError naming the flag for a mistake."""
    args, given = cli.parse(parser(), argv)
    refuse_inapplicable(args, given)
    for dest in ("rules", "methods", "noises", "synapse_fractions", "time_fractions"):
        values = getattr(args, dest)
        if len(set(values)) != len(values):
            raise checks.FieldError(f"--{dest.replace('_', '-')}",
                                    f"must not repeat a value, got {values}")
    if args.adam_steps + args.lbfgs_steps == 0:
        raise checks.FieldError("--adam-steps and --lbfgs-steps", "cannot both be 0")
    try:
        es_config(args)
    except checks.FieldError as error:
        raise error.renamed(lambda field: ES_FIELD_FLAGS.get(field, field)) from None
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    runs.check_dir(args.out, KIND, "auto")
    cells = grid_cells(args) + ([] if args.no_ablations else ablation_cells(args))
    runs.take_dir(args.out, KIND, "auto")  # the cells are sound: nothing is refused after this
    start = time.perf_counter()
    rows = run_cells(cells, args)
    total = time.perf_counter() - start
    zero_r2 = zero_rule_r2(args)
    report = markdown(rows, args, zero_r2, total)
    runs.write_text(os.path.join(args.out, "report.md"), report)
    runs.write_json(os.path.join(args.out, "report.json"), {
        "args": vars(args), "total_seconds": total, "zero_rule_heldout_r2": zero_r2,
        "terms": terms({(r["rule"], r["family"]) for r in rows}), "rows": rows})
    print("\n" + report)
    print(f"wrote {args.out}/: report.md report.json ({total:.0f} s)")
    return rows

