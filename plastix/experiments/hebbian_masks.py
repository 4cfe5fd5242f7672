"""Hebbian masks on gradient-trained layers: how many of a readout's connections can a
Hebbian rule prune while training, at what cost in error, against magnitude pruning and
random masks of the same sparsity.

The masked layer is the final one of each model (as in the original "hebbian masks"
experiment, which wrapped the final layer of a wide ResNet and reported over 90% of its
synapses pruned at the same validation error):

* ``mlp``: scikit-learn's 8x8 digits, MLP 64 -> 128 ReLU -> 10; the 128 -> 10 layer.
* ``cnn``: the same digits, a small CNN (two convolutions, a linear dense layer of 128);
  its 128 -> 10 readout.
* ``lm``: next-character prediction on ``--corpus`` (tiny-shakespeare by default), an LSTM
  whose state feeds the logits directly; the hidden -> vocabulary readout.

Images are scored by ``--folds``-fold cross-validation: the train + valid images (1,617 of
scikit-learn's digits) are cut into folds (`plastix.tasks.image_splits`), every run is
trained once per fold, and its validation error is over all of them, each scored by the
model that did not train on it (one digit image is 0.06 points, where the fixed 179-image
split resolves only 0.56). The test images (180 digits) are never used to choose
anything: their error is the mean of the fold models'. ``--image-source mnist`` runs the
same parts on MNIST through TFDS. Text is scored on fixed windows of its valid and test
splits.

Per part, over ``--seeds`` (same data stream and initial weights per seed and fold):

* **dense**: no mask.
* **Hebbian**: `plastix.masks` on the readout. Several settings of the rule (``SETTINGS``)
  are run (at every seed for the digits parts, at the first seed for text:
  ``--tune-every-seed``) and one is chosen on VALIDATION only: the sparsest that meets the
  aim (at least 90% pruned, mean validation score within 0.5 error points of dense for
  digits, 0.02 bits/char for text), or, if none does, the one closest to dense among those
  at least 90% sparse. The chosen setting then runs at every seed.
* **magnitude** (Han et al. 2015): the dense run's first half, then the smallest |w| of the
  readout pruned to the Hebbian run's final sparsity (same seed and fold), fine-tuned with
  that mask fixed for the second half: the same total steps.
* **random**: a uniformly random fixed mask of that sparsity from step 0.

and a sparsity-versus-error curve (``--curve-parts``): magnitude and random masks at
``--curve-sparsities`` (first seed), with every Hebbian run as a point.

Every run is a `plastix.train.fit` run directory under ``--out`` with a ``result.json``
written when it is scored; a finished run is read back and a killed one resumes from its
checkpoint, so running the same command again completes an interrupted experiment.
``--out`` receives ``report.md``, ``report.json``, ``sparsity_vs_error.png`` and
``sparsity_over_time.png``.

    python experiments/hebbian_masks.py                          # everything
    python experiments/hebbian_masks.py --parts mlp --seeds 0    # one part, one seed
    python experiments/hebbian_masks.py --quick --out /tmp/hm    # a tiny smoke run

``plastix hebbian-masks`` (installed with plastix) and
``python experiments/hebbian_masks.py`` (in a checkout) run this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
import time

import jax
import numpy as np

from plastix import checks, cli, masks, models, runs, tasks, train

DEFAULT_CORPUS = tasks.TINY_SHAKESPEARE
EMBEDDED = "embedded"  # --corpus value: the short text below, for tests and smoke runs
VALID_SEED, TEST_SEED, MASK_SEED = 778, 777, 1000
PARTS = ("mlp", "cnn", "lm")
LAYER = "logits"  # the masked layer of every model: its readout
LN2 = math.log(2)

# The rule's settings tried on each part (chosen on validation, see choose_setting): the
# agreements of plastix.masks, each at the margins (what a connection needs to stay) that
# span the sparsities of interest. "sign" is the rule as plastix.rules.hebbian_mask states
# it; "product" the reference implementation's update; "centred" and "covariance" their
# versions against each neuron's batch mean.
THRESHOLDS = dict(prune_below=-0.5, regrow_above=0.5, limit=1.0)  # and --rate
SETTINGS = {
    "sign": dict(agreement="sign", margin=0.0),
    "contribution": dict(agreement="contribution", margin=0.0),
    "product_m0.5": dict(agreement="product", margin=0.5),
    "product_m1": dict(agreement="product", margin=1.0),
    "product_m2": dict(agreement="product", margin=2.0),
    "product_m3": dict(agreement="product", margin=3.0),
    "centred_m0.2": dict(agreement="centred", margin=0.2),
    "centred_m0.35": dict(agreement="centred", margin=0.35),
    "centred_m0.5": dict(agreement="centred", margin=0.5),
    "centred_m0.7": dict(agreement="centred", margin=0.7),
    "covariance_m0.5": dict(agreement="covariance", margin=0.5),
    "covariance_m1": dict(agreement="covariance", margin=1.0),
    "covariance_m1.5": dict(agreement="covariance", margin=1.5),
    "covariance_m2": dict(agreement="covariance", margin=2.0),
    "covariance_m3": dict(agreement="covariance", margin=3.0),
    "covariance_m4": dict(agreement="covariance", margin=4.0),
}
DIGITS_SETTINGS = tuple(name for name in SETTINGS if name != "covariance_m1.5")
PART_SETTINGS = {"mlp": DIGITS_SETTINGS, "cnn": DIGITS_SETTINGS,
                 "lm": ("sign", "centred_m0.35", "covariance_m0.5", "covariance_m1",
                        "covariance_m1.5", "covariance_m2")}
AIM_SPARSITY = 0.9  # the aim: at least this fraction of the readout pruned
REPORT_FILES = ("report.md", "report.json", "sparsity_vs_error.png", "sparsity_over_time.png")
# What --out holds: the report, the lm part's embedded corpus, and a directory of runs per part.
KIND = runs.RunKind("hebbian-masks", files=(*REPORT_FILES, "embedded_corpus.txt"),
                    dirs=PARTS, recognise=runs.has_entry(*PARTS))

EMBEDDED_TEXT = """\
Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee.
Let me not to the marriage of true minds
Admit impediments. Love is not love
Which alters when it alteration finds,
Or bends with the remover to remove.
O no! it is an ever-fixed mark
That looks on tempests and is never shaken;
It is the star to every wand'ring bark,
Whose worth's unknown, although his height be taken.
Love's not Time's fool, though rosy lips and cheeks
Within his bending sickle's compass come;
Love alters not with his brief hours and weeks,
But bears it out even to the edge of doom.
If this be error and upon me proved,
I never writ, nor no man ever loved.
"""


# --quick: the defaults of a smoke run (a few seconds of training per part).
QUICK = dict(seeds=[0], folds=2, digits_steps=40, lm_steps=20, log_every=10, digits_hidden=16,
             cnn_channels=[4, 4], lm_hidden=16, lm_embed=8, lm_seq_len=16, lm_batch=8,
             lm_eval_batches=2, curve_sparsities=[0.5, 0.9],
             rate=0.2)  # a rate that prunes within a few steps


@dataclasses.dataclass(frozen=True)
class Part:
    name: str
    label: str
    unit: str         # of the scores: "error %" or "bits/char"
    tolerance: float  # the aim: within this of dense on validation


PART_INFO = {
    "mlp": Part("mlp", "{images}, MLP pixels-{hidden}-classes (masked: {hidden} -> classes)",
                "error %", 0.5),
    "cnn": Part("cnn", "{images}, CNN (masked: {hidden} -> classes readout)", "error %", 0.5),
    "lm": Part("lm", "characters, LSTM {lm_hidden} (masked: {lm_hidden} -> vocabulary readout)",
               "bits/char", 0.02),
}


def parser() -> cli.Parser:
    p = cli.Parser(description=__doc__)
    p.add_argument("--out", default="runs/hebbian_masks", help="where runs and report go")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--seeds", type=checks.SEED, nargs="+", default=[0, 1, 2])
    p.add_argument("--corpus", default=DEFAULT_CORPUS,
                   help=f"UTF-8 text for the lm part, the name of a corpus bundled with "
                        f"plastix, or '{EMBEDDED}' for a short built-in one")
    p.add_argument("--digits-steps", type=checks.SIZE, default=2000)
    p.add_argument("--digits-batch", type=checks.SIZE, default=64)
    p.add_argument("--digits-lr", type=checks.RATE, default=1e-3)
    p.add_argument("--digits-hidden", type=checks.SIZE, default=128)
    p.add_argument("--image-source", default="sklearn_digits",
                   help="images of the mlp and cnn parts: 'sklearn_digits' (offline) or a "
                        "TFDS image set such as 'mnist' (downloaded or in --data-dir)")
    p.add_argument("--data-dir", default=None, help="TFDS data directory (--image-source)")
    p.add_argument("--folds", type=checks.integer(at_least=2), default=5,
                   help="cross-validation folds of the digits parts' train + valid images")
    p.add_argument("--cnn-channels", type=checks.SIZE, nargs=2, default=[8, 16])
    p.add_argument("--lm-steps", type=checks.SIZE, default=2000)
    p.add_argument("--lm-batch", type=checks.SIZE, default=32)
    p.add_argument("--lm-lr", type=checks.RATE, default=3e-3)
    p.add_argument("--lm-hidden", type=checks.SIZE, default=256)
    p.add_argument("--lm-embed", type=checks.SIZE, default=32)
    p.add_argument("--lm-seq-len", type=checks.SIZE, default=64)
    p.add_argument("--lm-eval-batches", type=checks.SIZE, default=16,
                   help="batches of 64 windows scored for the lm's valid and test bits/char")
    p.add_argument("--log-every", type=checks.SIZE, default=40,
                   help="steps per logged record; must divide half of every part's steps")
    p.add_argument("--curve-parts", nargs="*", default=list(PARTS), choices=PARTS,
                   help="parts that get the sparsity-versus-error curve")
    p.add_argument("--curve-sparsities", type=checks.number(above=0, below=1), nargs="*",
                   default=[0.5, 0.8, 0.9, 0.95, 0.98])
    p.add_argument("--settings", nargs="+", default=None, choices=sorted(SETTINGS),
                   help="Hebbian settings to tune over (default: each part's own list)")
    p.add_argument("--tune-every-seed", nargs="*", default=["mlp", "cnn"], choices=PARTS,
                   help="parts whose Hebbian settings run at every seed and are chosen on "
                        "the mean validation score (default the digits parts, whose "
                        "179-image validation split resolves 0.56 points per seed); the "
                        "others are tuned on the first seed")
    p.add_argument("--rate", type=checks.RATE, default=0.01,
                   help="the Hebbian rule's step per batch (every setting)")
    p.add_argument("--quick", action="store_true",
                   help="tiny runs (a smoke test): few steps, one seed, small models")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: report the runs already finished under --out")
    return p


IMAGE_PARTS = ("mlp", "cnn")
# The dests of the flags only some parts read, and those parts.
PART_FLAGS = {
    **{dest: IMAGE_PARTS for dest in ("digits_steps", "digits_batch", "digits_lr",
                                      "digits_hidden", "image_source", "data_dir", "folds")},
    "cnn_channels": ("cnn",),
    **{dest: ("lm",) for dest in ("corpus", "lm_steps", "lm_batch", "lm_lr", "lm_hidden",
                                  "lm_embed", "lm_seq_len", "lm_eval_batches")},
}


def refuse_inapplicable(args, given: dict[str, str]) -> None:
    """Refuse a flag that no chosen part reads, a part list naming a part not chosen,
    and settings of parts or sources that are not run."""
    cli.refuse(given, [dest for dest, parts in PART_FLAGS.items()
                       if not set(parts) & set(args.parts)], f"to --parts {' '.join(args.parts)}")
    for dest in ("curve_parts", "tune_every_seed"):
        others = [part for part in getattr(args, dest) if part not in args.parts]
        if dest in given and others:
            raise checks.FieldError(given[dest], f"names {' '.join(others)}, not in --parts "
                                                 f"{' '.join(args.parts)}")
    if not set(args.curve_parts) & set(args.parts):
        cli.refuse(given, ["curve_sparsities"], "without a curve (--curve-parts is empty)")
    if args.image_source == "sklearn_digits":
        cli.refuse(given, ["data_dir"], "to --image-source sklearn_digits (only to TFDS sets)")


def check_budgets(args) -> None:
    """Each chosen part's steps fall on a logged record at their half, where the dense
    run's state is kept for magnitude pruning."""
    for part, flag in (("mlp", "digits_steps"), ("cnn", "digits_steps"), ("lm", "lm_steps")):
        steps = getattr(args, flag)
        if part in args.parts and steps % (2 * args.log_every):
            raise checks.FieldError(f"--{flag.replace('_', '-')}", (
                f"must be a multiple of 2 x --log-every ({2 * args.log_every}), so that the "
                f"dense run is logged at its half, got {steps}"))


def parse_args(argv=None) -> argparse.Namespace:
    """The checked command line; ValueError naming the flag for a mistake."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    if "--quick" in argv:
        p.set_defaults(**QUICK)  # flags given explicitly still win
    args, given = cli.parse(p, argv)
    refuse_inapplicable(args, given)
    check_budgets(args)
    if len(set(args.seeds)) != len(args.seeds):
        raise checks.FieldError("--seeds", f"must be distinct, got {args.seeds}")
    if "lm" in args.parts and args.corpus != EMBEDDED and \
            not os.path.isfile(tasks.corpus_path(args.corpus)):
        raise checks.FieldError("--corpus", f"{args.corpus}: no such file; give a UTF-8 text "
                                            f"file or '{EMBEDDED}'")
    if args.report_only and not os.path.isdir(args.out):
        raise checks.FieldError("--out", f"{args.out}: no such directory, so --report-only "
                                         f"has no finished runs to report")
    return args


# --- models, tasks, scores ------------------------------------------------------------------


def corpus_path(args) -> str:
    """The lm part's corpus as its runs record it: a bundled corpus by its name, a file by
    its absolute path, the embedded text as a file under --out."""
    if args.corpus in tasks.BUNDLED_CORPORA:
        return args.corpus
    if args.corpus != EMBEDDED:
        return os.path.abspath(args.corpus)
    path = os.path.join(args.out, "embedded_corpus.txt")
    if not os.path.exists(path):
        os.makedirs(args.out, exist_ok=True)
        runs.write_text(path, EMBEDDED_TEXT)
    return path


@functools.lru_cache(maxsize=4)
def _text_task(path: str, seq_len: int) -> tasks.Task:
    return tasks.text(path, seq_len=seq_len)


@functools.lru_cache(maxsize=16)
def _image_folds(source: str, fold: int, folds: int, data_dir: str | None
                 ) -> tuple[tasks.Task, dict]:
    return (tasks.get("images", source=source, fold=fold, folds=folds, data_dir=data_dir),
            tasks.image_splits(source, fold, folds, data_dir))


def images_of(args, fold: int) -> tuple[tasks.Task, dict]:
    """The images task at a fold and its splits, whole."""
    return _image_folds(args.image_source, fold, args.folds, args.data_dir)


def part_label(args, info: Part) -> str:
    images = "digits" if args.image_source == "sklearn_digits" else args.image_source
    return info.label.format(images=images, hidden=args.digits_hidden,
                             lm_hidden=args.lm_hidden)


def folds_of(args, part: str) -> list[int | None]:
    """The cross-validation folds a part's runs train on (None: the text part's one split)."""
    return [None] if part == "lm" else list(range(args.folds))


def part_setup(args, part: str, fold: int | None = None):
    """``(model, task, description)`` of a part (at a fold); ``description`` goes into
    every run's config.json."""
    if part == "lm":
        path = corpus_path(args)
        task = _text_task(path, args.lm_seq_len)
        model = models.make_model("lstm", task.vocab_size, args.lm_seq_len, args.lm_hidden,
                                  embed_dim=args.lm_embed, readout_features=0)
        return model, task, {"model": model, "task": {"name": "text", "path": path,
                                                      "seq_len": args.lm_seq_len}}
    task, _ = images_of(args, fold)
    hyper = {"channels": tuple(args.cnn_channels)} if part == "cnn" else {}
    model = models.make_classifier(part, task.vocab_size, args.digits_hidden, **hyper)
    return model, task, {"model": model, "task": {"name": "images", "source": args.image_source,
                                                  "fold": fold, "folds": args.folds}}


def train_config(args, part: str, seed: int) -> train.TrainConfig:
    """A part's training settings; it evaluates and checkpoints at the half and the end."""
    lm = part == "lm"
    steps = args.lm_steps if lm else args.digits_steps
    return train.TrainConfig(
        steps=steps, batch_size=args.lm_batch if lm else args.digits_batch,
        learning_rate=args.lm_lr if lm else args.digits_lr, seed=seed,
        log_every=args.log_every, eval_every=steps // 2, checkpoint_every=steps // 2,
        eval_batches=4)


def score(args, part: str, fold: int | None, model, task, params) -> dict:
    """Validation and test score of ``params`` (the effective, masked weights): digits,
    the error in % over every image of the fold's split (and the count of errors and
    images, which the folds pool); text, bits/char over a fixed set of windows (the same
    for every run)."""
    if part == "lm":
        evaluate = _lm_evaluate(model, task, args.lm_eval_batches)
        return {split: float(evaluate(params, jax.random.key(seed), split)["loss"]) / LN2
                for split, seed in (("valid", VALID_SEED), ("test", TEST_SEED))}
    _, splits = images_of(args, fold)
    scored = {}
    for split in ("valid", "test"):
        inputs, targets, _ = splits[split]
        predicted = np.argmax(np.asarray(_apply(model)(params, inputs)), axis=-1)
        errors = int(np.sum(predicted != targets))
        scored.update({split: 100.0 * errors / len(targets), f"{split}_errors": errors,
                       f"{split}_count": len(targets)})
    return scored


@functools.lru_cache(maxsize=8)
def _lm_evaluate(model, task, batches: int):
    return train.make_evaluate(model, task, 64, batches)


@functools.lru_cache(maxsize=8)
def _apply(model):
    return jax.jit(model.apply)


# --- runs -------------------------------------------------------------------------------------


# What a run's result.json holds (`fit_and_score`), as the tables read it.
RESULT_FIELDS = {"part": str, "seed": int, "method": str, "seconds": runs.NUMBER,
                 "valid": runs.NUMBER, "test": runs.NUMBER, "sparsity": runs.NUMBER}


def read_result(run_dir: str) -> dict | None:
    return runs.read_result(os.path.join(run_dir, "result.json"), RESULT_FIELDS)


def write_result(run_dir: str, result: dict) -> dict:
    runs.write_json(os.path.join(run_dir, "result.json"), result)
    return result


def training_seconds(run_dir: str, log_every: int) -> float:
    """Seconds the run's own steps took (compilation included), from the steps/s of its
    logged windows, every one ``log_every`` steps long: a resumed run counts the share
    of every process."""
    return sum(log_every / r["steps_per_s"]
               for r in runs.MetricsLog(os.path.join(run_dir, runs.METRICS)).read()
               if r["split"] == "train")


def mask_history(run_dir: str) -> dict:
    """Sparsity and the per-step pruned / regrown counts (averaged over each logged window)
    of a masked run, from its metrics.jsonl."""
    records = [r for r in runs.MetricsLog(os.path.join(run_dir, runs.METRICS)).read()
               if r["split"] == "train" and "sparsity" in r]
    return {key: [r[key] for r in records] for key in ("step", "sparsity", "pruned", "regrown")}


def run_dir_of(args, part: str, name: str, seed: int, fold: int | None) -> str:
    return os.path.join(args.out, part,
                        f"{name}_s{seed}" + ("" if fold is None else f"_f{fold}"))


def fit_and_score(args, part: str, name: str, method: dict, seed: int, fold: int | None,
                  masking: masks.HebbianMasking | None = None, start=None) -> dict:
    """One `plastix.train.fit` run (read back if finished, resumed if killed), scored."""
    run_dir = run_dir_of(args, part, name, seed, fold)
    model, task, description = part_setup(args, part, fold)
    config = train_config(args, part, seed)
    data_files = [description["task"].get("path")]  # the lm part's corpus
    if (done := read_result(run_dir)) is not None:
        # A run finished under other settings is refused, never reported as this one.
        runs.check_config(run_dir, train.run_config(model, task, config, {
            **description, "method": method}, masking, data_files), resume=True)
        return done
    tag = f"{part}/{os.path.basename(run_dir)}"
    state = train.fit(model, task, config, run_dir, experiment={**description, "method": method},
                      masking=masking, start=start, data_files=data_files,
                      print_fn=lambda line: print(f"[{tag}] {line}", flush=True))
    result = {"part": part, "seed": seed, "fold": fold, **method,
              "seconds": training_seconds(run_dir, config.log_every),
              **score(args, part, fold, model, task, train.effective_params(state, masking))}
    if masking is not None:
        result.update(mask_summary(state.opt_state), history=mask_history(run_dir))
    else:
        result.update(sparsity=0.0, unconnected_outputs=0)
    return write_result(run_dir, result)


def mask_summary(opt_state) -> dict:
    """The sparsity of the readout's mask, and how many of its outputs it leaves with no
    connection at all (a class then predicted from its bias alone)."""
    mask = np.asarray(masks.masks_of(opt_state)[LAYER].mask)  # (in, out)
    return {"sparsity": masks.sparsity_of(opt_state),
            "unconnected_outputs": int(np.sum(mask.sum(axis=0) == 0))}


def saved_state(args, part: str, checkpoint: str, masking=None) -> train.TrainState:
    """The state saved in a checkpoint of one of the part's runs."""
    model, task, _ = part_setup(args, part, folds_of(args, part)[0])
    config = train_config(args, part, 0)
    optimizer = train.make_optimizer(config.learning_rate, config.clip_norm, masking)
    template = train.init_state(jax.random.key(0), model, train.example_inputs(task), optimizer)
    return runs.load_checkpoint(checkpoint, template)[0]


def half_path(args, part: str, seed: int, fold: int | None) -> str:
    return run_dir_of(args, part, "dense", seed, fold) + "_half.msgpack"


def dense_run(args, part: str, seed: int, fold: int | None) -> dict:
    """The dense run, trained in two calls so that its state at half the steps (where
    magnitude pruning starts) is kept beside it (``dense_s<seed>[_f<fold>]_half.msgpack``);
    fitting N/2 steps and then extending to N equals fitting N straight."""
    run_dir = run_dir_of(args, part, "dense", seed, fold)
    if read_result(run_dir) is None and not os.path.exists(half_path(args, part, seed, fold)):
        _save_half(args, part, seed, fold, run_dir)
    return fit_and_score(args, part, "dense", {"method": "dense"}, seed, fold)


def _save_half(args, part: str, seed: int, fold: int | None, run_dir: str) -> None:
    model, task, description = part_setup(args, part, fold)
    config = train_config(args, part, seed)
    half = config.steps // 2
    tag = f"{part}/{os.path.basename(run_dir)}"
    state = train.fit(model, task, dataclasses.replace(config, steps=half), run_dir,
                      experiment={**description, "method": {"method": "dense"}},
                      data_files=[description["task"].get("path")],
                      print_fn=lambda line: print(f"[{tag}] {line}", flush=True))
    runs.save_checkpoint(half_path(args, part, seed, fold), state, half)


def dense_half_state(args, part: str, seed: int, fold: int | None) -> train.TrainState:
    """The dense run's state at half its steps (recomputed in a side directory if the
    saved copy is gone)."""
    path = half_path(args, part, seed, fold)
    if not os.path.exists(path):
        _save_half(args, part, seed, fold, run_dir_of(args, part, "dense_half", seed, fold))
    return saved_state(args, part, path)


def hebbian_masking(args, name: str) -> masks.HebbianMasking:
    return masks.HebbianMasking((LAYER,), rate=args.rate, **THRESHOLDS, **SETTINGS[name])


def hebbian_run(args, part: str, name: str, seed: int, fold: int | None) -> dict:
    method = {"method": "hebbian", "setting": name}
    return fit_and_score(args, part, f"hebbian_{name}", method, seed, fold,
                         masking=hebbian_masking(args, name))


FIXED = masks.HebbianMasking((LAYER,), fixed=True)


def baseline_name(method: str, sparsity: float, match: str | None) -> str:
    """Run name of a fixed-mask baseline: at a Hebbian setting's sparsity, or at a curve
    point."""
    return f"{method}_at_{match}" if match else f"{method}_{sparsity:.6f}"


def magnitude_run(args, part: str, sparsity: float, seed: int, fold: int | None,
                  match: str | None = None) -> dict:
    """Dense for the first half (the dense run's own first half), then the readout pruned
    by magnitude and fine-tuned with the mask fixed to the same total steps. ``match``:
    the Hebbian setting whose sparsity (same seed and fold) this run takes."""
    method = {"method": "magnitude", "target_sparsity": sparsity, "match": match}

    def start(fresh: train.TrainState) -> train.TrainState:
        half = dense_half_state(args, part, seed, fold)
        pruned = masks.magnitude_masks(half.params, [LAYER], sparsity)
        opt_state = fresh.opt_state._replace(inner=half.opt_state)  # the dense run's Adam
        return train.TrainState(half.step, half.params, masks.with_masks(opt_state, pruned))

    if read_result(run_dir_of(args, part, baseline_name("magnitude", sparsity, match), seed,
                              fold)) is None:
        dense_run(args, part, seed, fold)  # its first half is this run's first half
    return fit_and_score(args, part, baseline_name("magnitude", sparsity, match), method, seed,
                         fold, masking=FIXED, start=start)


def random_run(args, part: str, sparsity: float, seed: int, fold: int | None,
               match: str | None = None) -> dict:
    method = {"method": "random", "target_sparsity": sparsity, "match": match}

    def start(fresh: train.TrainState) -> train.TrainState:
        drawn = masks.random_masks(jax.random.key(MASK_SEED + seed), fresh.params, [LAYER],
                                   sparsity)
        return fresh._replace(opt_state=masks.with_masks(fresh.opt_state, drawn))

    return fit_and_score(args, part, baseline_name("random", sparsity, match), method, seed,
                         fold, masking=FIXED, start=start)


# --- the experiment ---------------------------------------------------------------------------


def group_key(result: dict) -> tuple:
    """What a result is a fold of: one method (setting, matched setting or curve point) at
    one seed."""
    match = result.get("match")
    return (result["method"], result.get("setting"), match,
            None if match else result.get("target_sparsity"), result["seed"])


def over_folds(results: list[dict]) -> list[dict]:
    """One record per method and seed from its folds' records: validation error pooled over
    the folds (every image once), test error, sparsity and unconnected outputs the folds'
    means, seconds their sum, mask histories their mean. Records of one split pass as
    they are; methods missing a fold are left out."""
    groups: dict[tuple, list[dict]] = {}
    for result in results:
        groups.setdefault(group_key(result), []).append(result)
    combined = []
    for rows in groups.values():
        if rows[0].get("fold") is None:
            combined += rows
            continue
        rows = sorted(rows, key=lambda r: r["fold"])
        record = {key: rows[0].get(key) for key in
                  ("part", "seed", "method", "setting", "match") if key in rows[0]}
        record["folds"] = len(rows)
        record["valid"] = 100.0 * sum(r["valid_errors"] for r in rows) / sum(
            r["valid_count"] for r in rows)
        record["valid_count"] = sum(r["valid_count"] for r in rows)
        record["test_count"] = rows[0]["test_count"]  # every fold scores the same test images
        for key in ("test", "sparsity", "unconnected_outputs", "target_sparsity"):
            if rows[0].get(key) is not None:
                record[key] = float(np.mean([r[key] for r in rows]))
        record["seconds"] = float(sum(r["seconds"] for r in rows))
        if "history" in rows[0]:
            record["history"] = {key: np.mean([r["history"][key] for r in rows], axis=0).tolist()
                                 for key in rows[0]["history"]}
        combined.append(record)
    return combined


def complete(results: list[dict], folds: int | None) -> list[dict]:
    """The methods that have all their folds (``folds`` None: one split)."""
    return [r for r in results if r.get("folds") == folds]


def tuning_seeds(args, part: str) -> list[int]:
    return list(args.seeds) if part in args.tune_every_seed else list(args.seeds[:1])


def tuning(dense: dict[int, dict], hebbian: list[dict], seeds: list[int]) -> dict[str, dict]:
    """Each Hebbian setting's VALIDATION score, gap to dense and sparsity, averaged over the
    tuning ``seeds`` (settings not yet run at all of them are left out)."""
    table = {}
    for name in dict.fromkeys(r["setting"] for r in hebbian):
        runs_ = {r["seed"]: r for r in hebbian if r["setting"] == name and r["seed"] in seeds}
        if set(runs_) != set(seeds) or not set(seeds) <= set(dense):
            continue
        table[name] = {key: float(np.mean([runs_[s][key] for s in seeds]))
                       for key in ("valid", "sparsity", "test")}
        table[name]["gap"] = float(np.mean([runs_[s]["valid"] - dense[s]["valid"]
                                            for s in seeds]))
        # Shown beside the choice, never used for it.
        table[name]["test_gap"] = float(np.mean([runs_[s]["test"] - dense[s]["test"]
                                                 for s in seeds]))
    return table


def choose_setting(part: Part, table: dict[str, dict], seeds: list[int]) -> tuple[str, str]:
    """The Hebbian setting reported, from VALIDATION only, and why: the sparsest of those
    that meet the aim (at least ``AIM_SPARSITY`` pruned, within the tolerance of dense);
    if none does, the one closest to dense among those at least ``AIM_SPARSITY`` sparse
    (the cost of the aim's sparsity); if none is that sparse, the sparsest."""
    on = f"validation, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
    sparse = [name for name, t in table.items() if t["sparsity"] >= AIM_SPARSITY]
    meeting = [name for name in sparse if table[name]["gap"] <= part.tolerance]
    if meeting:
        best = max(meeting, key=lambda name: (table[name]["sparsity"], -table[name]["gap"]))
        return best, (f"the sparsest setting at least {AIM_SPARSITY:.0%} sparse within "
                      f"{part.tolerance:g} {part.unit} of dense on {on}")
    if sparse:
        best = min(sparse, key=lambda name: table[name]["gap"])
        return best, (f"no setting at least {AIM_SPARSITY:.0%} sparse came within "
                      f"{part.tolerance:g} {part.unit} of dense on {on}; of those, the "
                      "closest to dense")
    best = max(table, key=lambda name: table[name]["sparsity"])
    return best, f"no setting pruned {AIM_SPARSITY:.0%} on {on}; the sparsest"


def run_part(args, part: str) -> dict | None:
    """Every run of one part, or (with --report-only) those finished; None if none are."""
    info = PART_INFO[part]
    first, folds = args.seeds[0], folds_of(args, part)
    settings = args.settings or PART_SETTINGS[part]
    if args.report_only:
        directory = os.path.join(args.out, part)
        found = [read_result(os.path.join(directory, d))
                 for d in sorted(os.listdir(directory))] if os.path.isdir(directory) else []
        found = [r for r in found if r]
        return collect(args, info, found) if found else None
    results = [dense_run(args, part, seed, fold) for seed in args.seeds for fold in folds]
    tune = tuning_seeds(args, part)
    results += [hebbian_run(args, part, name, seed, fold)
                for name in settings for seed in tune for fold in folds]
    chosen = collect(args, info, results)["chosen"]
    results += [hebbian_run(args, part, chosen, seed, fold)
                for seed in args.seeds if seed not in tune for fold in folds]
    for seed in args.seeds:
        for fold in folds:
            target = hebbian_run(args, part, chosen, seed, fold)["sparsity"]
            results += [magnitude_run(args, part, target, seed, fold, match=chosen),
                        random_run(args, part, target, seed, fold, match=chosen)]
    if part in args.curve_parts:
        for sparsity in args.curve_sparsities:
            for fold in folds:
                results += [magnitude_run(args, part, sparsity, first, fold),
                            random_run(args, part, sparsity, first, fold)]
    return collect(args, info, results)


def collect(args, info: Part, fold_results: list[dict]) -> dict:
    """A part's runs arranged for the report: the table's rows (mean ± sd over seeds), the
    tuning, the curve and the Hebbian runs' mask histories."""
    unique = {(group_key(r), r.get("fold")): r for r in fold_results}
    folds = len(folds_of(args, info.name)) if info.name != "lm" else None
    results = complete(over_folds(list(unique.values())), folds)
    dense = {r["seed"]: r for r in results if r["method"] == "dense"}
    hebbian = [r for r in results if r["method"] == "hebbian"]
    seeds = tuning_seeds(args, info.name)
    table = tuning(dense, hebbian, seeds)
    part = {"part": info.name, "label": part_label(args, info), "unit": info.unit,
            "tolerance": info.tolerance, "folds": folds, "rows": [], "tuning": [],
            "curve": [], "histories": {}, "tuning_seeds": seeds}
    if folds:
        for key in ("valid_count", "test_count"):
            part[key] = dense[min(dense)][key] if dense else None
    if not dense or not table:
        part["rows"] = [summarise("dense", list(dense.values()), dense)] if dense else []
        return part
    chosen, why = choose_setting(info, table, seeds)
    part.update(chosen=chosen, chosen_masking=dataclasses.asdict(hebbian_masking(args, chosen)),
                why=why)
    chosen_runs = [r for r in hebbian if r["setting"] == chosen]
    matched = lambda method: [r for r in results
                              if r["method"] == method and r.get("match") == chosen]
    part["rows"] = [summarise("dense", list(dense.values()), dense),
                    summarise(f"Hebbian ({chosen})", chosen_runs, dense),
                    summarise("magnitude (Han et al. 2015), same sparsity", matched("magnitude"),
                              dense),
                    summarise("random fixed mask, same sparsity", matched("random"), dense)]
    part["tuning"] = [{"setting": name, **t, "chosen": name == chosen}
                      for name, t in table.items()]
    part["curve"] = sorted(({"method": r["method"], "setting": r.get("setting"),
                             "seed": r["seed"], "sparsity": r["sparsity"], "valid": r["valid"],
                             "test": r["test"], "gap": r["valid"] - dense[r["seed"]]["valid"]}
                            for r in results if r["method"] != "dense" and r["seed"] in dense),
                           key=lambda p: (p["method"], p["sparsity"]))
    part["dense_valid"] = float(np.mean([r["valid"] for r in dense.values()]))
    part["seconds"], part["runs"] = (float(sum(r["seconds"] for r in results)),
                                     len(unique))
    part["histories"] = {f"{r['setting']}_s{r['seed']}": r["history"] for r in hebbian}
    return part


def summarise(label: str, rows: list[dict], dense: dict) -> dict:
    """Mean and sd over seeds of one method's scores, and its gap to dense (per seed)."""
    stat = lambda values: {"mean": float(np.mean(values)) if values else None,
                           "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
    gap = lambda split: [r[split] - dense[r["seed"]][split] for r in rows if r["seed"] in dense]
    return {"method": label, "seeds": sorted(r["seed"] for r in rows),
            "valid": stat([r["valid"] for r in rows]), "test": stat([r["test"] for r in rows]),
            "sparsity": stat([r["sparsity"] for r in rows]), "valid_gap": stat(gap("valid")),
            "test_gap": stat(gap("test")),
            "unconnected_outputs": stat([r.get("unconnected_outputs", 0) for r in rows]),
            "seconds": stat([r["seconds"] for r in rows])}


# --- report -----------------------------------------------------------------------------------


def fmt(stat: dict, digits: int) -> str:
    if stat["mean"] is None:
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def format_report(args, parts: dict) -> str:
    lines = ["# Hebbian masks on a gradient-trained readout", "",
             "Masks on the final layer, stepped every batch from the co-activity of its input "
             "and output (`plastix.masks`); rule settings "
             f"rate {args.rate}, prune below {THRESHOLDS['prune_below']}, regrow above "
             f"{THRESHOLDS['regrow_above']}, limit {THRESHOLDS['limit']}, plus the agreement "
             "and margin of each setting. Mean ± sd over seeds "
             f"{args.seeds}; the gap is the validation score minus the same seed's dense one. "
             "The aim: at least 90% of the layer pruned within 0.5 error points (digits) or "
             "0.02 bits/char (text) of dense, on validation. Digits: validation error by "
             f"{args.folds}-fold cross-validation over the train + valid images (each scored "
             "once, by the model that did not train on it), test error over the held-out "
             "test images, the mean of the fold models'. Text: bits/char over "
             f"{64 * args.lm_eval_batches} fixed windows of {args.lm_seq_len} characters per "
             "split.", ""]
    for part in parts.values():
        digits = 2 if part["unit"] == "error %" else 3
        counted = (f"Validation: {part['valid_count']} images ({part['folds']} folds; 1 image = "
                   f"{100 / part['valid_count']:.2f} points); test: {part['test_count']} "
                   f"images (1 image = {100 / part['test_count']:.2f} points)."
                   if part.get("valid_count") else "")
        lines += [f"## {part['label']}", "", counted, "",
                  f"| method | valid {part['unit']} | test {part['unit']} | sparsity | "
                  "valid gap to dense | outputs left unconnected | seconds/run* |",
                  "|---|---|---|---|---|---|---|"]
        for row in part["rows"]:
            lines.append(f"| {row['method']} | {fmt(row['valid'], digits)} | "
                         f"{fmt(row['test'], digits)} | {fmt(row['sparsity'], 3)} | "
                         f"{fmt(row['valid_gap'], digits)} | "
                         f"{fmt(row['unconnected_outputs'], 1)} | {row['seconds']['mean']:.0f} |")
        if "seconds" in part:
            folds = f", its {part['folds']} folds together" if part.get("folds") else ""
            lines.append(f"\n*Training seconds of a run's own steps (magnitude: its fine-tuning "
                         f"half){folds}, compilation included. All {part['runs']} runs of this "
                         f"part: {part['seconds'] / 60:.1f} min.")
        lines.append("")
        if part.get("chosen"):
            hebb = part["rows"][1]
            met = (hebb["sparsity"]["mean"] >= AIM_SPARSITY
                   and hebb["valid_gap"]["mean"] <= part["tolerance"])
            lines += [f"Chosen Hebbian setting: **{part['chosen']}** ({part['why']}). "
                      f"Aim {'met' if met else 'missed'}: {100 * hebb['sparsity']['mean']:.1f}% "
                      f"pruned at a validation gap of {hebb['valid_gap']['mean']:+.{digits}f} "
                      f"{part['unit']} (tolerance {part['tolerance']:g}); on test the gap is "
                      f"{hebb['test_gap']['mean']:+.{digits}f} (magnitude "
                      f"{part['rows'][2]['test_gap']['mean']:+.{digits}f}, random "
                      f"{part['rows'][3]['test_gap']['mean']:+.{digits}f}).", "",
                      f"Settings tried (validation, mean over seeds {part['tuning_seeds']}):",
                      "",
                      "| setting | valid | gap to dense | sparsity | test (not used to "
                      "choose) | test gap |", "|---|---|---|---|---|---|"]
            for t in part["tuning"]:
                lines.append(f"| {t['setting']}{' (chosen)' if t['chosen'] else ''} | "
                             f"{t['valid']:.{digits}f} | {t['gap']:+.{digits}f} | "
                             f"{t['sparsity']:.3f} | {t['test']:.{digits}f} | "
                             f"{t['test_gap']:+.{digits}f} |")
            lines.append("")
            curve = [p for p in part["curve"] if p["method"] != "hebbian"
                     and p["seed"] == args.seeds[0]]
            if curve:
                lines += ["Sparsity against validation score (first seed):", "",
                          "| method | sparsity | valid | gap to dense | test |",
                          "|---|---|---|---|---|"]
                lines += [f"| {p['method']} | {p['sparsity']:.3f} | {p['valid']:.{digits}f} | "
                          f"{p['gap']:+.{digits}f} | {p['test']:.{digits}f} |" for p in curve]
                lines.append("")
    return "\n".join(lines)


def save_plots(args, parts: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [p for p in parts.values() if p["curve"]]
    if not shown:
        return
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4.2), squeeze=False)
    first = args.seeds[0]
    for ax, part in zip(axes[0], shown):
        # Each point against the same seed's dense run: seeds differ more than methods.
        for method, style in (("magnitude", "s-"), ("random", "^-")):
            points = [p for p in part["curve"] if p["method"] == method and p["seed"] == first]
            ax.plot([p["sparsity"] for p in points], [p["gap"] for p in points], style,
                    label=f"{method} (seed {first})", alpha=0.8)
        for kind, marker in (("sign", "P"), ("contribution", "X"), ("product", "D"),
                             ("centred", "o"), ("covariance", "v")):
            points = [t for t in part["tuning"] if SETTINGS[t["setting"]]["agreement"] == kind]
            if points:
                ax.plot([t["sparsity"] for t in points], [t["gap"] for t in points], marker,
                        ls="none", ms=6, alpha=0.8,
                        label=f"Hebbian {kind} (mean, seeds {part['tuning_seeds']})")
        chosen = next(t for t in part["tuning"] if t["chosen"])
        ax.plot(chosen["sparsity"], chosen["gap"], "*", ms=16, mfc="none", color="k",
                label=f"chosen: {part['chosen']}")
        ax.axhline(0.0, color="k", ls="--", lw=1, label="dense")
        ax.axhline(part["tolerance"], color="grey", ls=":", lw=1, label="tolerance of the aim")
        ax.axvline(AIM_SPARSITY, color="grey", ls=":", lw=1)
        ax.set_xlabel("fraction of the readout pruned")
        ax.set_ylabel(f"validation {part['unit']} minus the same seed's dense")
        ax.set_title(part["label"], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    runs.save_figure(fig, os.path.join(args.out, "sparsity_vs_error.png"), dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, len(shown), figsize=(5.5 * len(shown), 7), squeeze=False,
                             sharex="col")
    for column, part in enumerate(shown):
        # The chosen setting at every seed, drawn thick; at the first seed, the other
        # margins of its agreement and the plain sign rule.
        kind = SETTINGS[part["chosen"]]["agreement"] if part.get("chosen") else None
        for name, h in sorted(part["histories"].items()):
            setting, seed = name.rsplit("_s", 1)
            chosen = setting == part.get("chosen")
            related = SETTINGS[setting]["agreement"] == kind or setting == "sign"
            if not (chosen or (related and int(seed) == args.seeds[0])):
                continue
            line, = axes[0, column].plot(h["step"], h["sparsity"], lw=2 if chosen else 1,
                                         label=name)
            axes[1, column].plot(h["step"], h["pruned"], color=line.get_color(),
                                 lw=2 if chosen else 1)
            axes[1, column].plot(h["step"], h["regrown"], color=line.get_color(), ls="--",
                                 lw=2 if chosen else 1)
        axes[0, column].set_title(part["label"], fontsize=9)
        axes[0, column].set_ylabel("sparsity")
        axes[0, column].legend(fontsize=6, ncol=2)
        axes[1, column].set_ylabel("connections per step: pruned (—), regrown (--)")
        axes[1, column].set_yscale("symlog", linthresh=0.1)
        axes[1, column].set_xlabel("step")
        for ax in axes[:, column]:
            ax.grid(alpha=0.3)
    fig.tight_layout()
    runs.save_figure(fig, os.path.join(args.out, "sparsity_over_time.png"), dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    runs.claim(args.out, KIND, "auto")  # its runs are its subdirectories
    began = time.perf_counter()
    parts = {part: run_part(args, part) for part in args.parts}
    parts = {name: part for name, part in parts.items() if part}
    report = format_report(args, parts)
    print("\n" + report)
    runs.write_text(os.path.join(args.out, "report.md"), report + "\n")
    runs.write_json(os.path.join(args.out, "report.json"), {
        "args": vars(args), "seconds": time.perf_counter() - began, "thresholds": THRESHOLDS,
        "settings": SETTINGS, "parts": parts})
    if not args.no_plots:
        save_plots(args, parts)
    print(f"wrote {args.out}/report.md, report.json"
          + ("" if args.no_plots else ", sparsity_vs_error.png, sparsity_over_time.png"))
    return parts

