"""Evolve plasticity rules for in-lifetime sequence prediction (Najarro & Risi 2020 style),
or learn them by gradient descent through the lifetime.

Every lifetime starts from random weights; the network learns only through its
plasticity rule while it reads a sequence. ES (evosax; OpenAI-ES by default) evolves the rule
coefficients so that this in-lifetime learning predicts the scored tokens; ``--outer
gradient`` trains the same parameters of the same network on the same loss by Adam on its
gradient through the lifetime (plastix.metagrad).

    python experiments/es_abcd.py                          # associative retrieval, ABCD_lr readout
    python experiments/es_abcd.py --task recall_overwrite --rule-out multilinear_mod \\
        --strategy CMA_ES --log-rates --init-mean zero --sigma 0.3 --batch 128
    python experiments/es_abcd.py --task text --rule-out polynomial_mod --rule-rec ABCD_lr
    python experiments/es_abcd.py --task recall_overwrite --rule-out multilinear_mod \\
        --log-rates --init-mean zero --batch 128 --outer gradient --grad-lr 0.03
    python experiments/es_abcd.py --task pattern_episodes --network my_network.json
    python experiments/es_abcd.py --task pattern_episodes --preset najarro2020
    python experiments/es_abcd.py --out runs/x --resume    # continue a killed run
    python experiments/es_abcd.py --out runs/x --resume --generations 800  # or extend it

Writes to --out, or without it to a new directory runs/es_abcd/YYYYmmdd-HHMMSS of its own
(so the same command runs again and again; --resume and --overwrite need --out). The run
directory (plastix.runs) holds config.json (the RunConfig: task, net,
es, seed, ...), metrics.jsonl, checkpoint.msgpack, report.json, report.md and plots
(fitness.png, coefficients.png, weights.png). --resume refuses a directory whose
config.json differs in anything but --generations, --chunk-size, --memory-budget-mb,
--out, --no-plots and --report (--report rule writes the learned rule's row alone).
Every field of plastix.evolve.ESConfig has a flag (see the ES group below; a bool field F
is --F / --no-F), and so has every field of plastix.metagrad.GradConfig (the gradient
group; --batch, --eval-batch, --l2 and --l2-reduce serve both outer loops).
--generations counts ES generations or gradient updates.

The network is the main job's (plastix.plastic.PlasticRNN: --hidden, --rule-in/-rec/-out,
...) unless --network FILE gives one of any shape (a JSON or TOML file in the layout of
plastix.network.Network.to_dict; sizes left null are the task's), or --preset najarro2020
sets up Najarro & Risi (2020): their feed-forward network, their ES settings as defaults
(flags given still win) and coefficients drawn N(0, 1) at the start.

``plastix evolve`` (installed with plastix) and
``python experiments/es_abcd.py`` (in a checkout) run this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import math
import os
import re
import time
import typing
from collections.abc import Callable
from typing import Any

from plastix import devices

# The device policy, before anything starts JAX (importing evosax's algorithms does).
devices.use_all_cpu_cores()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from plastix import checks, cli, evolve, metagrad, najarro, plastic, runs, tasks  # noqa: E402
from plastix import network as network_lib  # noqa: E402

HAND_RULE_ETAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
# Hebb with decay keeps a fraction 1 - eta*decay of each weight per step: the grid is over
# that retention (eta*decay >= 1 would flip or erase the memory every step).
HAND_RULE_RETENTIONS = (0.99, 0.95, 0.9, 0.8, 0.6)
RANDOM_COEFF_DRAWS = 8
# --init-mean delta: the delta rule's best rate on recall_overwrite at U(-0.1, 0.1) weights.
DELTA_START_RATE = 100.0


# ESConfig fields whose flags are older than the generated ones keep their spelling; the
# field's own name works too where the units agree. Every other field F is --F (dashes
# for underscores), a bool field --F / --no-F.
ES_FLAG_NAMES = {
    "population": ("--pop", "--population"),
    "l2_penalty": ("--l2", "--l2-penalty"),
    "memory_budget": ("--memory-budget-mb",),
}
# GradConfig fields named as the ES flags that set them: one lifetime batch, held-out
# batch and L2 penalty for both outer loops, so one command line is one problem.
SHARED_FIELDS = ("batch", "eval_batch", "l2_penalty", "l2_reduce")
GRAD_FLAG_NAMES = {
    "learning_rate": ("--grad-lr",),
    "lr_decay": ("--grad-lr-decay",),
    "lr_min": ("--grad-lr-min",),
    "clip_norm": ("--grad-clip",),
}
# Each outer loop's host loop (the same signature and run directory), and what it counts.
OUTER_LOOPS = {"es": evolve.evolve, "gradient": metagrad.descend}
STEP_NAMES = {"es": "generation", "gradient": "update"}
MIB = 2**20
# The report's held-out figures: the test split drawn with this key (and the hand rules'
# settings chosen on the validation split, drawn with the next).
TEST_KEY = 777
# What a run writes besides its run files; --overwrite removes them with the run.
REPORT_FILES = ("report.md", "report.json", "fitness.png", "coefficients.png", "weights.png")
# The run directory's kind: its run files, its report, and the result.json an experiment
# that runs it as one of its cells (text.py, compare_outer.py) writes beside them. A run
# from before markers is known by its config (`upgrade_config`'s layouts).
KIND = runs.RunKind("evolve", files=(*runs.RUN_FILES, *REPORT_FILES, "result.json"),
                    state=runs.CONFIG,
                    recognise=runs.json_with_keys(runs.CONFIG, "es", "pop", any_of=True))

# Where a run that names no --out gets a new directory of its own (`runs.new_run_dir`).
RUNS_ROOT = os.path.join("runs", "es_abcd")

# config.json keys a resumed run may set afresh: its length (the schedules and keys depend
# only on the generation index, so a finished run resumed with more generations equals one
# run for that many from the start), how the population is chunked (memory, not results),
# where the directory lives and whether plots are drawn.
MAY_CHANGE_ON_RESUME = ("generations", "es.chunk_size", "es.memory_budget", "out", "plots",
                        "report")
REPORTS = ("full", "rule")
INIT_MEANS = ("defaults", "zero", "delta", "normal")
PRESETS = ("najarro2020",)
# The flags (dests) that build the main job's network; a network given whole
# (--network, --preset) takes none of them.
NETWORK_FLAGS = ("hidden", "rule_in", "rule_rec", "rule_out", "granularity", "readout_post",
                 "normalise", "modulation", "weight_noise", "normalise_layers", "evolve_init",
                 "readout_bias", "log_rates", "init_scale")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """A ``plastix.tasks`` task: its name and the ``tasks.get`` keyword arguments given on
    the command line (None: the task's own default)."""

    name: str = "assoc_retrieval"
    num_pairs: int | None = None
    num_keys: int | None = None
    path: str | None = None
    seq_len: int | None = None

    def kwargs(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "name" and getattr(self, f.name) is not None}

    def build(self):
        return _build_task(self)


@functools.lru_cache(maxsize=4)
def _build_task(cfg: TaskConfig):
    # Cached: a config is built into its task more than once (vocabulary, then the run),
    # and fixed data sets take seconds to draw.
    return tasks.get(cfg.name, **cfg.kwargs())


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything the command line says about a run; ``config.json`` is its
    ``runs.config_dict``.

    Attributes:
      task: the task.
      net: the plastic network: the main job's (`plastic.PlasticRNN`) or any
        `network.Network` (its input and readout sized to the task).
      es: the ES settings.
      outer: what learns the parameters: "es" or "gradient".
      grad: the gradient settings (its batch, eval batch and L2 penalty are the ES ones).
      init_mean: where ES starts: "defaults", "zero", "delta" or "normal"
        (``initial_mean``).
      init_hidden_eta: the rate the hidden layers' rules start from under "zero" and
        "delta" (the readout starts at eta = 1, or the delta rule's rate).
      seed: seeds the ES run and the starting point.
      generations: how many generations the run lasts (may grow on resume).
      log_every: generations per logged, checkpointed block.
      out: the run directory (None: a new one under `RUNS_ROOT`, made by `main`).
      plots: draw fitness.png, coefficients.png and weights.png.
      report: "full" scores the baselines beside the learned rule, "rule" only it.
    """

    task: TaskConfig
    net: plastic.PlasticRNN | network_lib.Network
    es: evolve.ESConfig
    outer: str = "es"
    grad: metagrad.GradConfig = metagrad.GradConfig()
    init_mean: str = "defaults"
    init_hidden_eta: float = 1.0
    seed: int = 0
    generations: int = 300
    log_every: int = 10
    out: str | None = None
    plots: bool = True
    report: str = "full"


def _mebibytes(text: str) -> int:
    return int(checks.RATE.parse(text) * MIB)


def _json_value(text: str):
    # Fields of a type argparse cannot convert are given as JSON (lists become tuples,
    # so the frozen config stays hashable).
    value = json.loads(text)
    return tuple(value) if isinstance(value, list) else value


# The ES and gradient flags are generated from the config dataclasses here, not by a
# command-line library: tyro 1.0 (tried on ESConfig and GradConfig) reports a bad value
# as a boxed panel of 8-10 lines, not one `error:` line; cannot tell which flags a
# command line wrote, which cli.refuse needs; has no map of other spellings (--pop,
# --l2, --grad-lr would need tyro annotations on plastix's own configs) and spells
# nested configs --es.lr, --grad.learning-rate; and flattening both configs into one
# namespace fails on the fields they share (an AssertionError "Name conflict").


def _attribute_docs(cls: type) -> dict[str, str]:
    """``name -> description`` from the "Attributes:" section of ``cls``'s docstring
    (an entry may describe several names: ``lr, lr_decay, lr_min: ...``)."""
    docs, names, inside = {}, [], False
    for line in (inspect.getdoc(cls) or "").splitlines():
        if line.strip() == "Attributes:":
            inside = True
            continue
        if not inside:
            continue
        entry = re.match(r"^  (\w+(?:, \w+)*): (.*)$", line)
        if entry:
            names = entry.group(1).split(", ")
            for name in names:
                docs[name] = entry.group(2)
        elif line.startswith("    ") and names:
            for name in names:
                docs[name] += " " + line.strip()
        elif line.strip():
            break
    return docs


def _flag_kwargs(hint, bound: checks.Bound | None = None) -> dict:
    """argparse keyword arguments for a dataclass field of type ``hint``, its values
    checked against the field's declared ``bound``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if type(None) in typing.get_args(hint) and len(args) == 1:
        hint = args[0]  # Optional[X]: the flag takes an X, its absence means None
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if bound is not None:
        return {"type": bound}
    if hint in (int, float, str):
        return {"type": hint}
    if typing.get_origin(hint) is typing.Literal:
        choices = typing.get_args(hint)
        return {"type": type(choices[0]), "choices": choices}
    return {"type": _json_value}


def es_flags(cls: type = evolve.ESConfig, names: dict | None = None,
             skip: tuple[str, ...] = ()) -> list[tuple[str, tuple[str, ...], dict]]:
    """``(field, flags, argparse kwargs)`` for every field of a config class (the ES one by
    default) but those in ``skip``, so that a field added to it is reachable from the
    command line without touching this file. ``names``: flags spelt otherwise than
    ``--field-name`` (default `ES_FLAG_NAMES`)."""
    hints, docs = typing.get_type_hints(cls), _attribute_docs(cls)
    names = ES_FLAG_NAMES if names is None else names
    out = []
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flags = names.get(field.name, (f"--{field.name.replace('_', '-')}",))
        kwargs = _flag_kwargs(hints[field.name], checks.bound_of(field))
        if field.default is not dataclasses.MISSING:
            kwargs["default"] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            kwargs["default"] = field.default_factory()
        else:
            kwargs["required"] = True
        kwargs["help"] = docs.get(field.name, "").replace("%", "%%")
        if field.name == "memory_budget":
            kwargs.update(type=_mebibytes, help="memory budget in MiB: evaluate the "
                          "population in the largest chunks that fit it")
        kwargs["help"] += " (default: %(default)s)"
        out.append((field.name, flags, {"dest": field.name, **kwargs}))
    return out


def add_es_flags(parser: argparse.ArgumentParser, cls: type = evolve.ESConfig) -> None:
    group = parser.add_argument_group(f"ES ({cls.__module__}.{cls.__name__})")
    for _, flags, kwargs in es_flags(cls):
        group.add_argument(*flags, **kwargs)


def add_grad_flags(parser: argparse.ArgumentParser, cls: type = metagrad.GradConfig) -> None:
    group = parser.add_argument_group(
        f"gradient, with --outer gradient ({cls.__module__}.{cls.__name__})")
    for field, flags, kwargs in es_flags(cls, GRAD_FLAG_NAMES, skip=SHARED_FIELDS):
        # Its own namespace: ES has fields of the same names (lr_decay, lr_min).
        group.add_argument(*flags, **{**kwargs, "dest": f"grad_{field}"})


def parse_args(argv=None) -> argparse.Namespace:
    """The parsed command line (checked value by value, not yet as a whole)."""
    return parse_flags(argv)[0]


def parser() -> cli.Parser:
    """The command line: the run's own flags, then every ES and gradient setting."""
    p = cli.Parser(description=__doc__)
    p.add_argument("--task", default="assoc_retrieval", help="plastix.tasks name")
    p.add_argument("--num-pairs", type=checks.SIZE, default=None,
                   help="pairs per sequence, retrieval tasks (default: the task's own)")
    p.add_argument("--num-keys", type=checks.SIZE, default=None,
                   help="key alphabet, recall_overwrite (default: the task's own)")
    p.add_argument("--text-path", default=tasks.TINY_SHAKESPEARE,
                   help="--task text's corpus: a UTF-8 text file, or the name of a corpus "
                        "bundled with plastix")
    p.add_argument("--seq-len", type=checks.SIZE, default=None,
                   help="window length, text tasks (default: the task's own)")
    for layer in plastic.LAYERS:
        default = "ABCD_lr" if layer == "out" else "none"
        p.add_argument(f"--rule-{layer}", default=default, help=f"rule of W_{layer} ('none': fixed)")
    p.add_argument("--granularity", default="shared", choices=("shared", "post", "synapse"))
    p.add_argument("--readout-post", default="auto", choices=plastic.READOUT_POSTS)
    p.add_argument("--normalise", default="none", choices=plastic.NORMALISATIONS)
    p.add_argument("--modulation", default="none", choices=plastic.MODULATIONS)
    p.add_argument("--weight-noise", type=checks.NONNEGATIVE, default=0.0,
                   help="std of the noise added to plastic weights every step")
    p.add_argument("--normalise-layers", nargs="+", default=list(plastic.LAYERS),
                   choices=plastic.LAYERS,
                   help="the plastic layers --normalise and --weight-noise act on (all)")
    p.add_argument("--evolve-init", action="store_true", help="coevolve the initial weights")
    p.add_argument("--readout-bias", action="store_true", help="always-on unit into the readout")
    p.add_argument("--log-rates", action="store_true", help="evolve log(eta) instead of eta")
    p.add_argument("--network", default=None, metavar="FILE",
                   help="a network of any shape from a JSON or TOML file (plastix.network); "
                        "then the network flags of the main job's (--hidden, --rule-*, ...) "
                        "do not apply")
    p.add_argument("--preset", default=None, choices=PRESETS,
                   help="najarro2020: Najarro & Risi's feed-forward network (hidden "
                        "128, 64), their ES settings as defaults and an N(0, 1) start")
    p.add_argument("--abcd-variant", default="ABCD_lr", choices=tuple(najarro.REFERENCE_COLUMNS),
                   help="with --preset najarro2020: the ABCD variant of every matrix")
    p.add_argument("--init-mean", default="defaults", choices=INIT_MEANS,
                   help="ES start: the rules' default coefficients, all zero with eta = 1, "
                        "the readout at the delta rule (eta = 100), or every coefficient "
                        "N(0, 1) (Najarro & Risi)")
    p.add_argument("--init-hidden-eta", type=checks.RATE, default=1.0,
                   help="with --init-mean zero or delta: the rate the hidden layers' rules "
                        "start from (a small one lets the outer loop grow hidden plasticity "
                        "from nearly none)")
    p.add_argument("--hidden", type=checks.SIZE, default=32)
    p.add_argument("--init-scale", type=checks.NONNEGATIVE, default=0.1,
                   help="initial weights U(-a, a) each lifetime (Najarro & Risi: 0.1)")
    p.add_argument("--generations", type=checks.COUNT, default=300,
                   help="ES generations or gradient updates (0: report the starting point)")
    p.add_argument("--log-every", type=checks.SIZE, default=10)
    p.add_argument("--seed", type=checks.SEED, default=0)
    p.add_argument("--out", default=None,
                   help=f"the run directory (default: a new one, "
                        f"{RUNS_ROOT}/YYYYmmdd-HHMMSS)")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its checkpoint (needs --out)")
    choice.add_argument("--overwrite", action="store_true",
                        help="replace the run --out holds (needs --out; without either, a "
                             "directory that holds a run is refused)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--report", default="full", choices=REPORTS,
                   help="full: the learned rule beside the baselines (hand rules, random "
                        "coefficients, plasticity off, n-grams); rule: its own row only")
    p.add_argument("--outer", default="es", choices=tuple(OUTER_LOOPS),
                   help="what learns the rule: ES (evosax) or gradient descent through the "
                        "lifetime (optax); the same network, loss and starting point")
    add_es_flags(p)
    add_grad_flags(p)
    return p


def parse_flags(argv=None) -> tuple[argparse.Namespace, dict[str, str]]:
    """``(args, given)``: the parsed command line and the flags it wrote (`cli.parse`)."""
    return cli.parse(parser(), argv)


def task_config(args) -> TaskConfig:
    # --text-path has a default (the bundled corpus) that only the tasks with a corpus take.
    path = args.text_path if "path" in tasks.settings(args.task) else None
    return TaskConfig(name=args.task, num_pairs=args.num_pairs, num_keys=args.num_keys,
                      path=path, seq_len=args.seq_len)


def build_task(args):
    return task_config(args).build()


def build_net(args, task) -> plastic.PlasticRNN | network_lib.Network:
    """The run's network: from --network or --preset, sized to the task, or the main
    job's from its flags."""
    output_size = task.vocab_size
    input_size = task.vocab_size if task.input_size is None else task.input_size
    input_kind = "tokens" if task.input_size is None else "vector"
    if args.network is not None:
        return network_lib.load(args.network).sized(input_size, output_size)
    if args.preset == "najarro2020":
        return najarro.feedforward(input_size, output_size, args.abcd_variant,
                                   input=input_kind)
    if task.input_size is not None:
        raise ValueError(f"--task {task.name} feeds vectors; the main job's network reads "
                         f"tokens: give a network with --network FILE or --preset")
    vocab_size = task.vocab_size
    layer_rules = tuple(
        (layer, getattr(args, f"rule_{layer}"))
        for layer in plastic.LAYERS
        if getattr(args, f"rule_{layer}") != "none"
    )
    return plastic.PlasticRNN(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        init_scale=args.init_scale,
        layer_rules=layer_rules,
        granularity=args.granularity,
        evolve_init=args.evolve_init,
        normalise=args.normalise,
        weight_noise=args.weight_noise,
        normalise_layers=tuple(args.normalise_layers),
        readout_post=args.readout_post,
        modulation=args.modulation,
        readout_bias=args.readout_bias,
        log_rates=args.log_rates,
    )


def build_es_config(args, cls: type = evolve.ESConfig,
                    given: dict[str, str] | None = None) -> evolve.ESConfig:
    """The ES settings of the flags; with --preset, the preset's settings where no flag
    was written (``given``: the flags written, `cli.parse`)."""
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(cls)}
    if getattr(args, "preset", None) == "najarro2020":
        preset = dataclasses.asdict(najarro.PRESET.es)
        values.update({name: preset[name] for name in values
                       if name not in (given or {}) and name in preset})
    return cls(**values)


def build_grad_config(args, cls: type = metagrad.GradConfig) -> metagrad.GradConfig:
    """The gradient settings: its own flags, and the lifetime batch, held-out batch and
    L2 penalty of the ES flags (`SHARED_FIELDS`)."""
    return cls(**{f.name: getattr(args, f.name if f.name in SHARED_FIELDS else f"grad_{f.name}")
                  for f in dataclasses.fields(cls)})


# The task flags (dests) and the task settings they give.
TASK_FLAGS = {"num_pairs": "num_pairs", "num_keys": "num_keys", "text_path": "path",
              "seq_len": "seq_len"}


def refuse_inapplicable(args, given: dict[str, str]) -> None:
    """Refuse, by name, flags written on the command line that the run would ignore: a
    task setting the task does not take, a setting of the other outer loop, a hidden
    start rate with the rules' default start."""
    takes = tasks.settings(args.task)
    cli.refuse(given, [dest for dest, setting in TASK_FLAGS.items() if setting not in takes],
               f"to --task {args.task}")
    es_only = [f.name for f in dataclasses.fields(evolve.ESConfig) if f.name not in SHARED_FIELDS]
    grad_only = [f"grad_{f.name}" for f in dataclasses.fields(metagrad.GradConfig)
                 if f.name not in SHARED_FIELDS]
    cli.refuse(given, es_only if args.outer == "gradient" else grad_only,
               f"to --outer {args.outer}")
    if args.init_mean in ("defaults", "normal"):
        cli.refuse(given, ["init_hidden_eta"], f"to --init-mean {args.init_mean} (use zero or "
                                               f"delta)")
    if args.network is not None and args.preset is not None:
        raise ValueError("--network and --preset both give the network: choose one")
    if args.network is not None or args.preset is not None:
        cli.refuse(given, NETWORK_FLAGS, "with --network or --preset (the network is given)")
    if args.preset is None:
        cli.refuse(given, ["abcd_variant"], "without --preset najarro2020")
    runs.check_named(args.out, run_mode(args), RUNS_ROOT)


def flag_of(field: str) -> str:
    """The command-line flag of an ES or gradient setting (``"gradient lr_min"`` is the
    gradient loop's)."""
    if field.startswith("gradient "):
        field = field.removeprefix("gradient ")
        if field not in SHARED_FIELDS:
            return GRAD_FLAG_NAMES.get(field, (f"--{field.replace('_', '-')}",))[0]
    return ES_FLAG_NAMES.get(field, (f"--{field.replace('_', '-')}",))[0]


def _named_by_flags(build: Callable[[], Any]) -> Any:
    # A setting refused for another's sake (lr below lr_min) names both by their flags.
    try:
        return build()
    except checks.FieldError as e:
        raise e.renamed(flag_of) from None


def run_config(args, given: dict[str, str] | None = None) -> RunConfig:
    """The parsed command line as one frozen config (builds the task for its sizes);
    ``given``: the flags written, which win over a preset's settings."""
    task = task_config(args)
    net = build_net(args, task.build())
    network = plastic.as_network(net)
    if not network.plastic_matrices and not network.evolve_init:
        if network is net:
            raise ValueError("nothing to learn: the network has no rule on any matrix and "
                             "its initial weights are not learned (evolve_init)")
        raise ValueError("nothing to learn: every layer is fixed (--rule-in, --rule-rec and "
                         "--rule-out are none) and --evolve-init is off")
    init_mean = "normal" if args.preset and "init_mean" not in (given or {}) else args.init_mean
    return RunConfig(task=task, net=net,
                     es=_named_by_flags(lambda: build_es_config(args, given=given)),
                     outer=args.outer, grad=_named_by_flags(lambda: build_grad_config(args)),
                     init_mean=init_mean, init_hidden_eta=args.init_hidden_eta,
                     seed=args.seed,
                     generations=args.generations, log_every=args.log_every, out=args.out,
                     plots=not args.no_plots, report=args.report)


def run_mode(args) -> str:
    """What to do with --out (`runs.claim`): resume its run, replace it, or start anew."""
    return "resume" if args.resume else "overwrite" if args.overwrite else "new"


def parse_config(argv=None) -> tuple[RunConfig, str]:
    """``(run config, run-directory mode)`` of a command line."""
    args, given = parse_flags(argv)
    refuse_inapplicable(args, given)
    return run_config(args, given), run_mode(args)


# Keys of the flat config.json of runs written before RunConfig that name an ESConfig
# field differently.
_FLAT_ES_KEYS = {"pop": "population", "l2": "l2_penalty"}


def upgrade_config(saved: dict) -> dict:
    """A saved config in RunConfig's layout. Older runs saved their flags flat
    (``{"hidden": 32, "pop": 64, ...}``); those become the config the same flags give
    today (flags added since then take their defaults). Runs from before the gradient
    outer loop were ES runs."""
    if "es" in saved:
        # Network fields added since the run was saved take their defaults (the main
        # job's network; a `network.Network`, with its layers, is saved whole).
        if "layers" not in saved["net"]:
            defaults = runs.config_dict(plastic.PlasticRNN(vocab_size=2))
            saved = {**saved, "net": {**defaults, **saved["net"]}}
        # So do top-level settings added since (their defaults are what the run used).
        saved = {"init_hidden_eta": RunConfig.init_hidden_eta, **saved}
        if "outer" in saved:
            return saved
        shared = {name: saved["es"][name] for name in SHARED_FIELDS if name in saved["es"]}
        return {**saved, "outer": "es",
                "grad": runs.config_dict(metagrad.GradConfig(**shared))}
    args = parse_args([])
    for key, value in saved.items():
        key = _FLAT_ES_KEYS.get(key, key)
        if hasattr(args, key):
            setattr(args, key, value)
    return runs.config_dict(run_config(args))


def initial_mean(net, cfg) -> dict:
    """Where ES starts (``cfg.init_mean``; ``cfg`` is a RunConfig or the parsed flags).
    "zero": no plasticity term at all but a unit learning rate, so the
    first generations measure which terms help instead of climbing out of a default rule.
    "delta": as "zero", but the readout polynomial starts AT the delta rule
    eta (m - y) x with eta = DELTA_START_RATE -- a diagnostic: does ES stay there?
    "normal": every coefficient N(0, 1), as Najarro & Risi start."""
    if cfg.init_mean == "normal":
        return najarro.initial_coefficients(net, jax.random.key(cfg.seed))
    params = plastic.init_params(net, jax.random.key(cfg.seed))
    if cfg.init_mean == "defaults":
        return params
    readout = net.readout_matrices
    # Built as the rules see them (eta itself), then mapped to what ES evolves.
    coeffs = {
        name: {term: jnp.full_like(v, 0.0 if term != "eta" else
                                   1.0 if name in readout else cfg.init_hidden_eta)
               for term, v in matrix_coeffs.items()}
        for name, matrix_coeffs in plastic.rule_coeffs(net, params).items()
    }
    if cfg.init_mean == "delta":
        polynomials = [name for name in readout
                       if "theta" in coeffs.get(name, {}) and coeffs[name]["theta"].ndim >= 4]
        if not polynomials:
            raise ValueError("--init-mean delta needs a readout rule with a teacher term "
                             "(polynomial_mod or multilinear_mod)")
        for name in polynomials:
            out = coeffs[name]
            # theta[px, py, pw, pm] multiplies x^px y^py w^pw m^pm: delta = x*m - x*y.
            out["theta"] = out["theta"].at[1, 0, 0, 1].set(1.0).at[1, 1, 0, 0].set(-1.0)
            out["eta"] = jnp.full_like(out["eta"], DELTA_START_RATE)
    params["coeffs"] = plastic.evolved_coeffs(net, coeffs)
    return params


# --- baselines for the report ---------------------------------------------------------


def with_readout_rule(net, rule_name: str):
    """The same network with only the readout plastic, under ``rule_name``."""
    return net.with_readout_rule(rule_name)


def hand_rule_candidates(net):
    """(label, net, params) for the fixed hand rules, over a small grid of eta (and decay)."""
    for eta in HAND_RULE_ETAS:
        hebb = with_readout_rule(net, "hebb")
        yield "Hebb (readout)", hebb, _coeffs(hebb, eta=eta, decay=0.0), {"eta": eta}
        for retention in HAND_RULE_RETENTIONS:
            decay = (1.0 - retention) / eta
            yield (
                "Hebb with decay (readout)", hebb, _coeffs(hebb, eta=eta, decay=decay),
                {"eta": eta, "decay": round(decay, 6)},
            )
        delta = with_readout_rule(net, "delta")
        yield "Delta rule (readout)", delta, _coeffs(delta, eta=eta), {"eta": eta}


def _coeffs(net, **values) -> dict:
    """Parameters of a network with only its readout plastic: its readout matrices'
    coefficients set to ``values``."""
    params = plastic.init_params(net, jax.random.key(0))
    for coeffs in params["coeffs"].values():
        for name, value in values.items():
            coeffs[name] = jnp.full_like(coeffs[name], value)
    return params


def random_coefficients(params: dict, key: jax.Array) -> dict:
    """Every evolved coefficient ~ U(-1, 1) (initial weights kept as they are)."""
    leaves, treedef = jax.tree.flatten(params["coeffs"])
    keys = jax.random.split(key, len(leaves))
    leaves = [jax.random.uniform(k, x.shape, minval=-1.0, maxval=1.0) for k, x in zip(keys, leaves)]
    return {**params, "coeffs": jax.tree.unflatten(treedef, leaves)}


def score(net, task, params, key, split, batch) -> tuple[float, float]:
    nll, acc = evolve.score(net, task, params, key, split, batch)
    return float(nll), float(acc)


def result_row(label: str, nll: float, accuracy: float, note: str = "") -> dict:
    """One row of a report: a model's held-out NLL (nats and bits per token) and accuracy."""
    return {"model": label, "test_nll": nll, "test_bits": nll / math.log(2),
            "test_accuracy": accuracy, "note": note}


def build_report(outer, evolved_params: dict, eval_batch: int,
                 label: str = "evolved rule", baselines: bool = True,
                 note: str = "") -> list[dict]:
    """Held-out (test split) comparison of the learned rule (``label``, its row's
    ``note``) with the baselines (without ``baselines``: its row alone); ``outer`` is the
    run's `evolve.Evolution` or `metagrad.MetaGradient`.

    Hand rules take their best eta/decay on the validation split, then are
    scored on the test split like everything else. A row whose figures are not finite
    says so in its note.
    """
    net, task = outer.net, outer.task
    test_key = jax.random.key(TEST_KEY)

    def row(label, row_net, params, note=""):
        return result_row(label, *score(row_net, task, params, test_key, "test", eval_batch),
                          note)

    rows = [row(label, net, evolved_params, note)]
    if not baselines:
        return noted_nonfinite(rows)
    rows.append(row("plasticity off", net.frozen(), {"coeffs": {}, **_w0(evolved_params)}))
    draws = [score(net, task, random_coefficients(evolved_params, jax.random.key(1000 + i)),
                   test_key, "test", eval_batch) for i in range(RANDOM_COEFF_DRAWS)]
    nlls, accs = np.array(draws).T
    finite = np.isfinite(nlls)
    # A draw that diverged ranks as the worst (inf), so the median stays a number while
    # fewer than half diverge.
    median_nll = float(np.median(np.where(finite, nlls, np.inf)))
    rows.append({"model": "random coefficients", "test_nll": median_nll,
                 "test_bits": median_nll / math.log(2),
                 "test_accuracy": float(np.median(accs)),
                 "note": f"median of {RANDOM_COEFF_DRAWS} draws U(-1,1); {int((~finite).sum())} diverged"})
    for label, hand_net, params, setting in best_hand_rules(net, task, eval_batch):
        rows.append(row(label, hand_net, params, note=f"best on valid: {setting}"))
    return noted_nonfinite(rows + ngram_rows(task, eval_batch=eval_batch))


FIGURES = ("test_nll", "test_bits", "test_accuracy")


def finite_row(row: dict) -> bool:
    """Whether every figure of a report row is a finite number."""
    return all(row[key] is not None and math.isfinite(row[key]) for key in FIGURES)


def noted_nonfinite(rows: list[dict]) -> list[dict]:
    """``rows``, each whose figures are not all finite saying so in its note (its
    lifetimes diverged on the test split), unless the note says so already."""
    diverge = "not finite: its test lifetimes diverge"
    return [row if finite_row(row) or "not finite" in row["note"] else
            {**row, "note": "; ".join(filter(None, (row["note"], diverge)))}
            for row in rows]


def best_hand_rules(net, task, eval_batch: int,
                    valid_seed: int = 778) -> list[tuple]:
    """``(label, net, params, setting)`` of each hand rule at its best eta (and decay) on
    ``eval_batch`` validation sequences (`hand_rule_candidates`)."""
    best = {}
    for label, hand_net, params, setting in hand_rule_candidates(net):
        nll, _ = score(hand_net, task, params, jax.random.key(valid_seed), "valid", eval_batch)
        if np.isfinite(nll) and (label not in best or nll < best[label][0]):
            best[label] = (nll, hand_net, params, setting)
    return [(label, *rest) for label, (_, *rest) in best.items()]


def ngram_rows(task, fit_batch: int = 4096, eval_batch: int = 512) -> list[dict]:
    """Unigram and bigram (last input token -> target) models fitted on sampled train
    sequences (add-one smoothing), scored on the test split's scored positions; a task
    that feeds vectors has no input token, and gets the unigram (class frequencies) alone."""
    v = task.vocab_size
    inputs, targets, mask = jax.device_get(task.sample(jax.random.key(900), fit_batch, "train"))
    scored = mask > 0
    unigram = np.bincount(targets[scored], minlength=v) + 1.0
    tokens = task.input_size is None
    bigram = np.ones((v, v))
    if tokens:
        np.add.at(bigram, (inputs[scored], targets[scored]), 1.0)
    unigram, bigram = unigram / unigram.sum(), bigram / bigram.sum(1, keepdims=True)
    inputs, targets, mask = jax.device_get(task.sample(jax.random.key(TEST_KEY), eval_batch,
                                                       "test"))
    scored = mask > 0
    rows = []
    models = [("unigram (train-fitted)", unigram[targets[scored]])]
    if tokens:
        models.append(("bigram (train-fitted)", bigram[inputs[scored], targets[scored]]))
    for label, probs in models:
        table = unigram[None] if label.startswith("uni") else bigram[inputs[scored]]
        accuracy = np.mean(np.argmax(table, axis=-1) == targets[scored])
        nll = float(-np.mean(np.log(probs)))
        rows.append({"model": label, "test_nll": nll, "test_bits": nll / math.log(2),
                     "test_accuracy": float(accuracy),
                     "note": f"{int(scored.sum())} scored test tokens"})
    return rows


def _w0(params: dict) -> dict:
    return {"w0": params["w0"]} if "w0" in params else {}


def polynomial_terms(theta) -> dict[str, float]:
    """Name every shared polynomial coefficient by its monomial, e.g. theta[1,0,0,1] -> "x*m"."""
    theta = np.asarray(theta)
    names = {}
    for index in np.ndindex(theta.shape[: 4 if theta.ndim >= 4 else 3]):
        factors = [f"{v}^{p}" if p > 1 else v for v, p in zip("xywm", index) if p > 0]
        names["*".join(factors) or "1"] = float(np.mean(theta[index]))
    return names


def delta_sign_pattern(evolved_params: dict, readout: str = "out") -> str | None:
    """The learned readout polynomial (of the matrix ``readout``) beside the delta rule
    eta (m - y) x, largest terms first.

    Both are scaled so their largest |coefficient| is 1 (the rule's eta absorbs scale).
    """
    out = evolved_params["coeffs"].get(readout, {})
    if "theta" not in out or np.asarray(out["theta"]).ndim < 4:
        return None
    evolved = polynomial_terms(out["theta"])
    delta = {name: 0.0 for name in evolved} | {"x*m": 1.0, "x*y": -1.0}
    scale = max(abs(v) for v in evolved.values()) or 1.0
    eta = float(np.mean(out["eta"]))
    # With --log-rates, eta and theta share one free scale (only their product acts), so
    # eta alone can drift to 1e-4 with theta at 1e4; the product is what to report.
    lines = [f"Readout rule: learned polynomial vs the delta rule (effective rate "
             f"eta * max|c| = {eta * scale:.4g}; coefficients scaled to max |c| = 1)", "",
             "| term | learned | delta rule |", "|---|---|---|"]
    for name in sorted(evolved, key=lambda n: -abs(evolved[n]))[:8]:
        lines.append(f"| {name} | {evolved[name] / scale:+.3f} | {delta[name]:+.0f} |")
    return "\n".join(lines)


def significant_figures(x, digits: int = 4) -> list | float:
    """``x`` as (nested) Python floats rounded to ``digits`` significant figures, so that
    coefficients of 1e-4 and 1e4 both print legibly."""
    return np.vectorize(lambda v: float(f"{v:.{digits}g}"))(np.asarray(x)).tolist()


def summarise(x, max_values: int = 16):
    """``x`` to print: up to ``max_values`` numbers as they are (4 significant figures),
    a larger array (per-post or per-synapse coefficients) as its shape and statistics."""
    x = np.asarray(x)
    if x.size <= max_values:
        return significant_figures(x)
    stats = {"mean": np.mean(x), "std": np.std(x), "min": np.min(x), "max": np.max(x)}
    return {"shape": list(x.shape), **{k: significant_figures(v) for k, v in stats.items()}}


def format_report(rows: list[dict], task, test_sequences: int) -> str:
    lines = [f"Held-out in-lifetime prediction on {task.name!r}: the test split, "
             f"{test_sequences} sequences (key {TEST_KEY}); hand rules' settings chosen on "
             f"{test_sequences} validation sequences", "",
             "| model | test NLL (nats) | bits/token | accuracy | note |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {_figure(r['test_nll'])} | {_figure(r['test_bits'])} | "
                     f"{_figure(r['test_accuracy'])} | {r['note']} |")
    return "\n".join(lines)


def _figure(x: float | None) -> str:
    return "not finite" if x is None or not math.isfinite(x) else f"{x:.4f}"


# --- plots --------------------------------------------------------------------------


def save_plots(out_dir: str, history: list[dict], outer, evolved_params) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):  # None (no finite figure) plots as a gap
        return [np.nan if r[key] is None else r[key] for r in history]

    fig, ax = plt.subplots(figsize=(6, 4))
    if history and "generation" in history[0]:
        steps, what = [r["generation"] for r in history], "generation"
        ax.plot(steps, series("mean_fitness"), label="train: population mean NLL")
        ax.plot(steps, series("best_fitness"), label="train: best member fitness")
        ax.plot(steps, series("valid_nll"), label="valid: ES mean NLL")
    else:
        steps, what = [r["step"] for r in history], "gradient update"
        ax.plot(steps, series("train_nll"), label="train: batch NLL (block mean)")
        ax.plot(steps, series("valid_nll"), label="valid NLL")
    ax.set_xlabel(what), ax.set_ylabel("NLL (nats / scored token)"), ax.legend()
    fig.tight_layout(), runs.save_figure(fig, os.path.join(out_dir, "fitness.png"), dpi=120)
    plt.close(fig)

    coeffs = evolved_params["coeffs"]
    names = [(layer, name) for layer in coeffs for name in coeffs[layer]]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(2.4 * max(len(names), 1), 2.6),
                             squeeze=False)
    for ax, (layer, name) in zip(axes[0], names):
        ax.hist(np.ravel(coeffs[layer][name]), bins=30)
        ax.set_title(f"{layer}: {name}", fontsize=8)
    fig.tight_layout(), runs.save_figure(fig, os.path.join(out_dir, "coefficients.png"), dpi=120)
    plt.close(fig)

    inputs, targets, mask = outer.task.sample(jax.random.key(5), 1, "test")
    _, (w_start, w_end) = plastic.lifetime_logits(outer.net, evolved_params, jax.random.key(6),
                                                  inputs[0], targets[0], mask[0])
    network = plastic.as_network(outer.net)
    layers = network.plastic_matrices or network.readout_matrices[:1]
    fig, axes = plt.subplots(len(layers), 2, figsize=(7, 3 * len(layers)), squeeze=False)
    for row_axes, layer in zip(axes, layers):
        for ax, w, when in zip(row_axes, (w_start[layer], w_end[layer]), ("start", "end")):
            limit = float(np.max(np.abs(w))) or 1.0  # symmetric, so white is zero
            im = ax.imshow(np.asarray(w), aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_title(f"W_{layer} at lifetime {when}", fontsize=9), fig.colorbar(im, ax=ax)
    fig.tight_layout(), runs.save_figure(fig, os.path.join(out_dir, "weights.png"), dpi=120)
    plt.close(fig)


# --- main ---------------------------------------------------------------------------

LEARNED_LABELS = {"es": "evolved rule", "gradient": "learned rule (gradient)"}


def write_report(cfg: RunConfig, task, net, rows: list[dict], learned: dict,
                 seconds: float) -> tuple[str, dict]:
    """Write a finished run's ``report.md`` and ``report.json`` into ``cfg.out``.

    Returns the report's text and the learned coefficients as the rules read them
    (eta, not log eta).
    """
    report = format_report(rows, task, cfg.es.eval_batch)
    effective = jax.device_get(plastic.rule_coeffs(net, learned))
    pattern = delta_sign_pattern({"coeffs": effective}, net.readout_matrices[0])
    if pattern is not None:
        report += "\n\n" + pattern
    runs.write_text(os.path.join(cfg.out, "report.md"), report + "\n")
    # A figure that is not finite is null (JSON has no NaN); its row's note says why.
    json_rows = [{**row, **{key: evolve.finite_or_none(row[key]) for key in FIGURES
                            if row[key] is not None}} for row in rows]
    runs.write_json(os.path.join(cfg.out, "report.json"), {
        "rows": json_rows, "seconds": seconds, "outer": cfg.outer,
        "test_split": {"sequences": cfg.es.eval_batch, "key": TEST_KEY},
        "evolved_coeffs": jax.tree.map(lambda x: np.asarray(x).tolist(), effective)})
    return report, effective


def nonfinite_parameters(net, learned: dict) -> list[str]:
    """The learned parameters, as the rules read them (eta, not log eta), that hold a
    value that is not finite: ``out.eta`` (a coefficient of W_out), ``w0.rec`` (learned
    initial weights)."""
    seen = {**learned, "coeffs": plastic.rule_coeffs(net, learned)}
    return [".".join(str(getattr(k, "key", k)) for k in path).removeprefix("coeffs.")
            for path, x in jax.tree_util.tree_leaves_with_path(jax.device_get(seen))
            if not np.all(np.isfinite(np.asarray(x)))]


def _same_parameters(a: dict, b: dict) -> bool:
    a, b = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
    return len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                    for x, y in zip(a, b))


def learned_outcome(cfg: RunConfig, history: list[dict], start: dict, learned: dict,
                    net) -> tuple[str, str | None]:
    """``(note, problem)`` of the learned row: its note ("" for a rule that learned),
    and why the run failed (None if it did not): its learned parameters are not finite,
    or no step of the outer loop had a finite result, so that nothing was learned.

    ``history``: every logged record of the run; ``start``: where the outer loop started.
    """
    step = STEP_NAMES[cfg.outer]
    diverged = nonfinite_parameters(net, learned)
    if diverged:
        problem = f"the learned parameters {', '.join(diverged)} are not finite"
        return f"{problem}: no rule was learned", problem
    unchanged = _same_parameters(learned, start)
    starting = "this is the starting rule" if unchanged else "nothing was learned"
    if not history:
        return (f"no {step} ran: this is the starting rule" if unchanged else ""), None
    done = history[-1]["generation" if cfg.outer == "es" else "step"]
    failed = sum(record["nonfinite"] for record in history)
    if cfg.outer == "es" and failed == cfg.es.population * done:
        problem = (f"no generation had a finite member (all {cfg.es.population} members of "
                   f"each of the {done} generations diverged)")
        return f"{problem}: {starting}", problem
    if cfg.outer == "gradient" and failed == done:
        problem = f"every update was skipped ({done} of {done} had a loss or gradient not finite)"
        return f"{problem}: {starting}", problem
    if unchanged:
        return f"unchanged by {done} {step}s: this is the starting rule", None
    return "", None


def make_outer(cfg: RunConfig):
    """The outer loop of a run: an `evolve.Evolution` or a `metagrad.MetaGradient` on the
    same network, task and starting point."""
    # Built once per configuration and process (keyed without the run's length and
    # directory, which it does not read), so that runs of one configuration in one
    # process -- a resume, the cells of an experiment, a notebook -- compile once.
    return _build_outer(dataclasses.replace(cfg, out="", generations=0, log_every=1,
                                            plots=False, report="full"))


@functools.lru_cache(maxsize=8)
def _build_outer(cfg: RunConfig):
    task, net = cfg.task.build(), cfg.net
    key, start = jax.random.key(cfg.seed), initial_mean(cfg.net, cfg)
    if cfg.outer == "gradient":
        outer = metagrad.make_meta_gradient(net, task, cfg.grad, key, init_params=start)
    else:
        outer = evolve.make_evolution(net, task, cfg.es, key, init_mean=start)
    # A lifetime traced abstractly (no compilation, no computation): a network its rules
    # cannot run (a rule that needs a target on a matrix that has none) is refused here,
    # before a run writes anything, not in its first generation.
    jax.eval_shape(lambda params, k: outer.score(params, k, "valid", 2), start, key)
    return outer


def describe(cfg: RunConfig, outer) -> str:
    """The run's first line: task, rules, outer loop, parameters, devices."""
    task, net = outer.task, outer.net
    n_params = sum(np.size(x) for x in jax.tree.leaves(outer.start if cfg.outer == "gradient"
                                                        else outer.solution))
    if cfg.outer == "gradient":
        how = (f"gradient (Adam {cfg.grad.learning_rate:g}, clip {cfg.grad.clip_norm:g}"
               + (f", truncated BPTT {cfg.grad.truncation}" if cfg.grad.truncation else "")
               + f") x {cfg.grad.batch} lifetimes | {n_params} learned parameters")
    else:
        how = (f"{cfg.es.strategy} pop {cfg.es.population} x {cfg.es.batch} lifetimes | "
               f"{n_params} evolved parameters")
    network = plastic.as_network(net)
    rules = {name: network.rule(name).name for name in network.plastic_matrices}
    granularities = {network.connection(name).granularity for name in network.plastic_matrices}
    granularity = (next(iter(granularities)) if len(granularities) == 1 else
                   {name: network.connection(name).granularity
                    for name in network.plastic_matrices})
    sizes = (f"vocab {task.vocab_size}" if task.input_size is None else
             f"inputs {task.input_size}, classes {task.vocab_size}")
    return (f"plastix {'ES' if cfg.outer == 'es' else 'meta-gradient'} | task {task.name} "
            f"({sizes}, T={task.seq_len}) | rules {rules} {granularity} | {how} | "
            f"{len(outer.mesh.devices.ravel())} {jax.default_backend()} device(s)")


def _shown(x, digits: int = 4) -> str:
    return "none finite" if x is None else f"{x:.{digits}f}"


def progress_line(r: dict, valid_sequences: int | None = None) -> str:
    """One logged block of either outer loop; ``valid_sequences``: how many validation
    sequences its held-out figures average."""
    speed = (f"{r['lifetimes_per_s']:.0f} lifetimes/s = "
             f"{r['synapse_updates_per_s']:.3g} synapse updates/s")
    sample = f" ({valid_sequences} seqs)" if valid_sequences else ""
    held_out = (f"valid NLL {_shown(r['valid_nll'])} acc {r['valid_accuracy']:.3f}{sample} | "
                f"nonfinite {r['nonfinite']}")
    if "generation" in r:
        if r["best_fitness"] is None:
            fitness = f"no finite member of {r.get('finite_members', 0) + r['nonfinite']}"
        else:
            fitness = (f"fitness best {r['best_fitness']:.4f} mean {r['mean_fitness']:.4f} | "
                       f"acc mean {r['mean_accuracy']:.3f}")
        return f"gen {r['generation']:5d} | {fitness} | {held_out} | {speed}"
    train = ("every update skipped" if r["train_nll"] is None else
             f"train NLL {r['train_nll']:.4f} acc {r['train_accuracy']:.3f}")
    grad_norm = "nonfinite" if r["grad_norm"] is None else f"{r['grad_norm']:.3g}"
    return f"step {r['step']:5d} | {train} | |g| {grad_norm} | {held_out} | {speed}"


def saved_config(cfg: RunConfig) -> dict:
    """What ``config.json`` holds for ``cfg``: its `runs.config_dict`, and the task's data
    file (a text corpus) by content, so that a resume refuses a rewritten one."""
    return runs.with_data_files(runs.config_dict(cfg), [cfg.task.path])


def check_run(cfg: RunConfig, mode: str = "new") -> bool:
    """Check everything a run needs before any file is written, so that a refused run
    leaves its directory as it was: the directory (`runs.check_dir`; ``cfg.out`` None is
    a new one), a resume's saved config, and the outer loop, built and its lifetime traced
    (`make_outer`). Returns whether the run continues from what the directory holds."""
    resume = False if cfg.out is None else runs.check_dir(cfg.out, KIND, mode)
    runs.check_config(cfg.out, saved_config(cfg), resume, MAY_CHANGE_ON_RESUME,
                      upgrade=upgrade_config)
    make_outer(cfg)
    return resume


def run_outer(cfg: RunConfig, mode: str = "new", time_budget_s: float | None = None):
    """The run every entry point shares: check the whole configuration (`check_run`),
    take the run directory (``mode``: a `runs.check_dir` mode), write ``config.json``,
    then run the loop with progress lines.

    Returns ``(outer, history, learned)``: the outer loop (its ``net`` and ``task``), the
    logged records, and the learned parameters on the host.
    """
    cfg_dict = saved_config(cfg)
    resume = check_run(cfg, mode)
    outer = make_outer(cfg)
    print(describe(cfg, outer), flush=True)

    def start(step: int) -> None:  # the checkpoint and history are sound: claim the run
        runs.take_dir(cfg.out, KIND, mode)
        runs.write_config(cfg.out, cfg_dict)
        if resume:
            print(f"resumed {cfg.out} at {STEP_NAMES[cfg.outer]} {step} of {cfg.generations}"
                  if step else f"{cfg.out} holds no checkpoint yet: the run starts afresh",
                  flush=True)

    state, history = OUTER_LOOPS[cfg.outer](
        outer, cfg.seed, cfg.generations, out_dir=cfg.out, log_every=cfg.log_every,
        resume=resume, time_budget_s=time_budget_s, on_start=start,
        on_log=lambda r: print(progress_line(r, valid_sequences=cfg.es.eval_batch), flush=True))
    return outer, history, jax.device_get(outer.params(state))


def main(argv=None) -> list[dict]:
    cfg, mode = parse_config(argv)
    if cfg.out is None:  # a directory of its own, so that the same command runs again
        check_run(cfg, mode)  # first: a refused run leaves no directory behind
        cfg = dataclasses.replace(cfg, out=runs.new_run_dir(RUNS_ROOT))
        print(f"writing to {cfg.out}", flush=True)
    t0 = time.perf_counter()
    outer, history, learned = run_outer(cfg, mode)
    task, net = outer.task, outer.net
    if cfg.report == "full":  # about 75 held-out scorings: minutes on a wide network
        print(f"report: the learned rule and its baselines on {cfg.es.eval_batch} held-out "
              f"sequences each (--report rule scores the rule alone)", flush=True)
    start = outer.start if cfg.outer == "gradient" else outer.solution
    note, problem = learned_outcome(cfg, history, start, learned, net)
    rows = build_report(outer, learned, cfg.es.eval_batch, label=LEARNED_LABELS[cfg.outer],
                        baselines=cfg.report == "full", note=note)
    if problem is None and not finite_row(rows[0]):
        problem = "the learned rule's test lifetimes diverge (its test NLL is not finite)"
    report, effective = write_report(cfg, task, net, rows, learned, time.perf_counter() - t0)
    print("\n" + report)
    what = "ES mean" if cfg.outer == "es" else "after the last update"
    print(f"\nlearned coefficients ({what}): {jax.tree.map(summarise, effective)}")
    plots = cfg.plots and problem is None  # nothing finite to draw
    if plots:
        save_plots(cfg.out, history, outer, learned)
    print(f"\nwrote {cfg.out}/: config.json metrics.jsonl checkpoint.msgpack report.md "
          f"report.json" + (" fitness.png coefficients.png weights.png" if plots else ""))
    if problem is not None:
        raise checks.Diverged(f"the run diverged: {problem}; its report in {cfg.out} says so")
    return rows

