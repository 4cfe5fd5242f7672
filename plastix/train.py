"""The gradient path: train a `plastix.models` model on a `plastix.tasks` task.

Minimise the in-lifetime next-token loss of the ES path,

    L(theta) = masked_nll(model(theta, inputs), targets, mask)      (nats per scored token)

with Adam (Kingma & Ba 2015) after clipping the global gradient norm (Pascanu et al. 2013).

Pieces, each a small pure function: `make_optimizer`, `loss_and_metrics`,
`make_update` (one optimiser step on a given batch), `make_train_step` (sample a
batch on device and update, jitted), `make_evaluate` (jitted), and `fit`, the
host loop that logs, evaluates and checkpoints into a `plastix.runs` run directory.

With ``masking`` (a `plastix.masks.HebbianMasking`), named layers carry Hebbian
masks that prune and regrow their connections during training: the optimiser is wrapped
so that its state holds the masks, the loss uses the masked forward pass
(`plastix.masks.HebbianMasking.apply`) and the optimiser steps the masks from the
layers' co-activity; the training metrics gain ``sparsity``, ``pruned`` and ``regrown``.
Without it every number is what it was before masks existed.

Resuming loses nothing: the batch of step i is drawn from ``fold_in(data_key, i)``, so it
depends on the step only, never on how many processes ran before; a checkpoint holds
(step, params, optimiser state) and is written atomically; on resume, metrics records past the
checkpoint are dropped and recomputed. N straight steps and N/2 + kill + resume give
bit-identical parameters and metrics (but for the timing fields, `TIMING_FIELDS`). A
directory whose saved config differs from the run's (in anything but ``steps``), whose
metrics do not reach its checkpoint, or whose checkpoint is past the steps asked for is
not resumed but refused. A finished run extended to more steps has the parameters of a
straight run too; its history keeps the records of its old last step, which a straight run
logs only if that step is on the logging grid.

Example:
    >>> task = tasks.get("assoc_retrieval")
    >>> model = models.make_model("rnn-ln-fw", task.vocab_size, task.seq_len, 50)
    >>> state = fit(model, task, TrainConfig(steps=1000), "runs/fw50")
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from plastix import checks, masks, progress, runs, tasks

# config.json keys a resumed run may set afresh: more steps extend a finished run.
MAY_CHANGE_ON_RESUME = ("train.steps",)
# A training run's directory: its run files, and the result.json an experiment that runs
# it as a cell writes beside them. A run from before markers is known by its config.
KIND = runs.RunKind("train", files=(*runs.RUN_FILES, "experiment.json", "result.json"),
                    state=runs.CONFIG,
                    recognise=runs.json_with_keys(runs.CONFIG, "experiment", "train",
                                                  any_of=True))
# Record fields that measure speed, not results: they differ between equal runs.
TIMING_FIELDS = ("steps_per_s",)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Numbers that steer training; none of them changes a shape the model sees.

    Every field is checked when the config is made (`plastix.checks.validate`): a
    run of no steps, a rate of 0 or NaN, a batch of none is refused by name.
    """

    steps: int = checks.field(10_000, checks.SIZE)
    batch_size: int = checks.field(128, checks.SIZE)
    learning_rate: float = checks.field(1e-3, checks.RATE)
    clip_norm: float = checks.field(1.0, checks.RATE)
    seed: int = checks.field(0, checks.SEED)
    log_every: int = checks.field(100, checks.SIZE)
    eval_every: int = checks.field(1_000, checks.SIZE)
    eval_batches: int = checks.field(8, checks.SIZE)
    checkpoint_every: int = checks.field(1_000, checks.SIZE)

    def __post_init__(self):
        checks.validate(self)
        # A resumed run must restart at a logging boundary, or its first logged window of
        # training metrics would average fewer steps than the straight run's; and every
        # checkpoint then follows the training record of its own step, which is what lets
        # a resume check that the history reaches the checkpoint (`check_history`).
        if self.checkpoint_every % self.log_every:
            raise checks.FieldError(
                "checkpoint_every", f"({self.checkpoint_every}) must be a multiple of "
                                    f"log_every ({self.log_every})", other="log_every")


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: number of updates applied
    params: Any
    opt_state: Any


Batch = tuple[jax.Array, jax.Array, jax.Array]  # inputs, targets, mask


def make_optimizer(learning_rate: float | optax.Schedule, clip_norm: float,
                   masking: masks.HebbianMasking | None = None) -> optax.GradientTransformation:
    """Adam on gradients whose global norm is clipped to ``clip_norm``; with ``masking``,
    wrapped so that its state carries the Hebbian masks (`HebbianMasking.wrap`)."""
    optimizer = optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(learning_rate))
    return optimizer if masking is None else masking.wrap(optimizer)


def example_inputs(task) -> jax.Array:
    """Zeros shaped like one example's inputs (batch 1) of ``task``: what a model is
    initialised on. Only the sampler's output shape is computed (``jax.eval_shape``)."""
    shape = jax.eval_shape(lambda key: task.sample(key, 1, "train")[0], jax.random.key(0))
    return jnp.zeros(shape.shape, shape.dtype)


def init_state(key, model, inputs: int | jax.Array,
               optimizer: optax.GradientTransformation) -> TrainState:
    """The state before the first step: ``model`` initialised on ``inputs`` (a batch of
    example inputs, e.g. `example_inputs`; an int ``T`` stands for the token batch
    ``zeros((1, T), int32)``)."""
    if isinstance(inputs, int):
        inputs = jnp.zeros((1, inputs), jnp.int32)
    params = model.init(key, inputs)
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def scores(logits, batch: Batch) -> tuple[jax.Array, dict]:
    """Masked next-token NLL (nats) and accuracy of ``logits`` on ``batch``."""
    _, targets, mask = batch
    loss = tasks.masked_nll(logits, targets, mask)
    return loss, {"loss": loss, "accuracy": tasks.masked_accuracy(logits, targets, mask)}


def loss_and_metrics(params, model, batch: Batch) -> tuple[jax.Array, dict]:
    """Masked next-token NLL (nats) and accuracy of ``model`` on one batch."""
    return scores(model.apply(params, batch[0]), batch)


def masked_loss_and_metrics(params, model, masking: masks.HebbianMasking, opt_state,
                            batch: Batch) -> tuple[jax.Array, tuple]:
    """As `loss_and_metrics` with the masks of ``opt_state`` applied: ``(loss,
    (metrics, coactivity))``, ``coactivity`` the masked layers' co-activity that the
    optimiser steps the masks from (`plastix.masks.HebbianMasking.apply`)."""
    logits, coactivity = masking.apply(model, params, opt_state, batch[0])
    loss, metrics = scores(logits, batch)
    return loss, (metrics, coactivity)


def effective_params(state: TrainState, masking: masks.HebbianMasking | None):
    """The weights the model runs with: ``w * mask`` at the masked layers, else ``params``."""
    return state.params if masking is None else masks.masked_params(state.params,
                                                                      state.opt_state)


def make_update(model, optimizer: optax.GradientTransformation,
                masking: masks.HebbianMasking | None = None) -> Callable:
    """``update(state, batch) -> (state, metrics)``: one optimiser step on ``batch`` (pure).

    With ``masking`` (``optimizer`` from ``make_optimizer(..., masking)``) the forward pass
    is masked, the masks step from its co-activity and the metrics gain the mask statistics.
    """

    def update(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        if masking is None:
            grads, metrics = jax.grad(loss_and_metrics, has_aux=True)(state.params, model, batch)
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        else:
            grads, (metrics, coactivity) = jax.grad(masked_loss_and_metrics, has_aux=True)(
                state.params, model, masking, state.opt_state, batch)
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params,
                                                  coactivity=coactivity)
            metrics.update(masks.mask_stats(state.opt_state, opt_state))
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return TrainState(state.step + 1, params, opt_state), metrics

    return update


def make_train_step(model, task, optimizer, batch_size: int,
                    masking: masks.HebbianMasking | None = None) -> Callable:
    """Jitted ``train_step(state, data_key) -> (state, metrics)``.

    The batch is sampled on device from ``fold_in(data_key, state.step)``.
    """
    update = make_update(model, optimizer, masking)

    @jax.jit
    def train_step(state: TrainState, data_key) -> tuple[TrainState, dict]:
        batch = task.sample(jax.random.fold_in(data_key, state.step), batch_size, "train")
        return update(state, batch)

    return train_step


def make_evaluate(model, task, batch_size: int, num_batches: int) -> Callable:
    """Jitted ``evaluate(params, key, split) -> {"loss", "accuracy"}`` over ``num_batches``.

    A masked model is scored on its `effective_params` (``w * mask``), which is its
    masked forward pass; evaluation needs nothing else of the masks.
    """

    def evaluate(params, key, split: str = "valid") -> dict:
        def one_batch(batch_key):
            batch = task.sample(batch_key, batch_size, split)
            return loss_and_metrics(params, model, batch)[1]

        per_batch = jax.lax.map(one_batch, jax.random.split(key, num_batches))
        return jax.tree_util.tree_map(jnp.mean, per_batch)

    return jax.jit(evaluate, static_argnames="split")


def run_config(model, task, config: TrainConfig, experiment: Mapping | None = None,
               masking: masks.HebbianMasking | None = None,
               data_files: Iterable[str] = ()) -> dict:
    """What defines a run, as saved in ``config.json``: ``{"experiment": ..., "train": ...}``,
    plus ``"masking"`` (the `plastix.masks.HebbianMasking`) for a masked run, and the
    ``data_files`` the task reads (a text corpus) by content (`runs.with_data_files`).

    ``experiment`` describes what built the model and the task (e.g. a model name, its
    hyperparameters and the task's ``tasks.get`` kwargs). Without it they describe
    themselves: the model by its (flax dataclass) fields, the task by name and shapes.
    """
    if experiment is None:
        experiment = {"model": model, "task": {"name": task.name, "vocab_size": task.vocab_size,
                                               "seq_len": task.seq_len}}
    run = {"experiment": experiment, "train": config}
    if masking is not None:  # absent, not null, so that the configs of older runs still match
        run["masking"] = masking
    return runs.with_data_files(runs.config_dict(run), data_files)


def _to_floats(metrics: dict) -> dict:
    return {name: float(value) for name, value in metrics.items()}


def _compiled_functions(model, task, config: TrainConfig,
                        masking: masks.HebbianMasking | None) -> tuple[Callable, Callable]:
    """(train_step, evaluate) of a run, cached so that a run resumed in the same process
    (or fitted again, or extended, with the same model, task and settings) does not compile
    again: each key holds only the settings its compiled code depends on (evaluation reads
    the effective weights, so runs with and without masks share it)."""
    return (_compile_train_step(model, task, config.learning_rate, config.clip_norm,
                                config.batch_size, masking),
            _compile_evaluate(model, task, config.batch_size, config.eval_batches))


@functools.lru_cache(maxsize=4)
def _compile_train_step(model, task, learning_rate: float, clip_norm: float, batch_size: int,
                        masking: masks.HebbianMasking | None) -> Callable:
    optimizer = make_optimizer(learning_rate, clip_norm, masking)
    return make_train_step(model, task, optimizer, batch_size, masking)


@functools.lru_cache(maxsize=4)
def _compile_evaluate(model, task, batch_size: int, eval_batches: int) -> Callable:
    return make_evaluate(model, task, batch_size, eval_batches)


def fit(
    model,
    task,
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    experiment: Mapping | None = None,
    masking: masks.HebbianMasking | None = None,
    start: Callable[[TrainState], TrainState] | None = None,
    mode: str = "auto",
    flag: str = "run_dir",
    data_files: Iterable[str] = (),
    print_fn: Callable[[str], None] = print,
) -> TrainState:
    """Train ``model`` on ``task`` for ``config.steps`` steps in ``run_dir``.

    Writes to ``run_dir`` (a `plastix.runs` run directory): ``config.json``
    (`run_config`, with ``experiment`` describing the model and task),
    ``metrics.jsonl`` (one record per log / eval, ``{"step", "split", "loss", "accuracy",
    ...}``) and ``checkpoint.msgpack`` (``{"step", "state": TrainState}``), each written
    atomically or appended a line at a time. Returns the final `TrainState`.

    ``mode`` is what to do with a directory that already holds a run (`runs.check_dir`):
    "auto" (the default) continues it, "resume" continues it and refuses a directory
    without one, "new" refuses it, "overwrite" replaces it. A run is continued from its
    checkpoint (or from the start, if it was stopped before its first) only if its saved
    config equals this run's but for ``steps`` (and the ``data_files`` the task reads, a
    corpus, are as they were: `runs.with_data_files`), its metrics hold every record up
    to the checkpoint (`check_history`) and the checkpoint is not past ``config.steps``;
    otherwise
    it is refused with a one-line ValueError naming the directory (as ``flag`` names it)
    or the file. A finished run continued with the same ``steps`` returns its state at
    once; with more, it is extended.

    ``masking`` trains with Hebbian masks (see the module docstring); the masks live in
    the optimiser state, so checkpoints and resume carry them. ``start`` maps the fresh
    initial state to the one a new run starts from (e.g. another run's weights and a
    fixed mask, at a later step); a resumed run starts from its checkpoint instead.
    What ``start`` does is not in the config: describe it in ``experiment``.
    """
    run_dir = Path(run_dir)
    checkpoint_path = run_dir / runs.CHECKPOINT
    continues = runs.check_dir(run_dir, KIND, mode, flag=flag)
    cfg_dict = run_config(model, task, config, experiment, masking, data_files)
    if continues:
        _check_resumable(run_dir, cfg_dict)
    log = runs.MetricsLog(run_dir / runs.METRICS, step_key="step")

    optimizer = make_optimizer(config.learning_rate, config.clip_norm, masking)
    init_key, data_key, eval_key = jax.random.split(jax.random.key(config.seed), 3)
    state = init_state(init_key, model, example_inputs(task), optimizer)
    if continues and checkpoint_path.exists():
        state, step = runs.load_checkpoint(checkpoint_path, state)
        check_history(log, step, config)
        print_fn(f"resumed from {checkpoint_path} at step {step} of {config.steps}")
    else:
        if continues:
            print_fn(f"{run_dir} has no checkpoint yet: the run starts from the beginning")
        if start is not None:
            state = start(state)
    # Only now, every check passed: a refused run leaves the directory as it was.
    runs.take_dir(run_dir, KIND, mode)
    runs.write_config(run_dir, cfg_dict)
    kept = log.truncate_to(int(state.step))  # the resumed run logs later steps again
    # Where the next records' blocks begin (`runs.block_record`): the checkpoint's step,
    # which is a logging step, and the last evaluation's.
    logged = int(state.step)
    evaluated = max((r["step"] for r in kept if r.get("split") == "valid"), default=0)

    train_step, evaluate = _compiled_functions(model, task, config, masking)

    window, window_start = [], time.perf_counter()
    # On a terminal, a progress bar with the ETA under the logged lines (plastix.progress).
    with progress.bar(config.steps, initial=int(state.step), desc=run_dir.name) as bar:
        for step in range(int(state.step) + 1, config.steps + 1):
            state, metrics = train_step(state, data_key)
            window.append(metrics)  # stays on device until logged: no per-step host sync
            bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                mean = _to_floats(jax.tree_util.tree_map(lambda *m: jnp.mean(jnp.stack(m)),
                                                         *window))
                rate = len(window) / (time.perf_counter() - window_start)
                log.append(runs.block_record({"step": step, "split": "train", **mean,
                                              "steps_per_s": rate}, logged))
                logged = step
                sparse = f"  sparsity {mean['sparsity']:.3f}" if masking is not None else ""
                with bar.above():
                    print_fn(f"step {step:>7}  loss {mean['loss']:.4f}  acc "
                             f"{mean['accuracy']:.4f}  |g| {mean['grad_norm']:.2f}{sparse}  "
                             f"{rate:.0f} steps/s")
                window, window_start = [], time.perf_counter()
            if step % config.eval_every == 0 or step == config.steps:
                valid = _to_floats(evaluate(effective_params(state, masking), eval_key,
                                            "valid"))
                log.append(runs.block_record({"step": step, "split": "valid", **valid},
                                             evaluated))
                evaluated = step
                with bar.above():
                    print_fn(f"step {step:>7}  valid loss {valid['loss']:.4f}"
                             f"  acc {valid['accuracy']:.4f}")
                if not window:  # keep evaluation time out of the next steps/s figure
                    window_start = time.perf_counter()
            # After the step's records: a kill between the two leaves records past the
            # checkpoint, which the resumed run drops and logs again.
            if step % config.checkpoint_every == 0 or step == config.steps:
                runs.save_checkpoint(checkpoint_path, state, step)
    return state


def check_history(log: runs.MetricsLog, step: int, config: TrainConfig) -> None:
    """Refuse to resume from a checkpoint at ``step`` unless ``log`` holds the whole history
    up to it: the training record of every logged window (`runs.check_history`), and the
    validation record of every evaluation, each once and in order, the last of them at
    the last evaluation due by ``step`` (at ``step`` itself if it ended a run, as a
    checkpoint off the checkpoint grid does). One-line ValueError naming the file."""
    runs.check_history(log, step, config.steps, split="train")
    if step == 0:
        return
    valid = [r for r in log.read(upto_step=step) if r.get("split") == "valid"]
    broken = runs.history_break(valid, "step", "valid ")
    due = step if step % config.checkpoint_every else step - step % config.eval_every
    if broken is None and due and (valid[-1]["step"] if valid else 0) < due:
        broken = f"has no valid record of step {due}"
    if broken is not None:
        raise ValueError(f"{log.path} {broken}: the run's history is damaged; start afresh "
                         f"with --overwrite")


def _check_resumable(run_dir: Path, cfg_dict: dict) -> None:
    """Refuse to continue the run ``run_dir`` holds unless it is this one: its saved config
    equals ``cfg_dict`` but for `MAY_CHANGE_ON_RESUME` (`runs.check_config`), and a
    checkpoint comes with the config that says whose it is."""
    saved = runs.read_config(run_dir)
    if saved is None:
        if (run_dir / runs.CHECKPOINT).exists():
            raise ValueError(f"{run_dir / runs.CHECKPOINT} has no {runs.CONFIG} beside it, so "
                             f"whose run it is cannot be checked; move it away or start "
                             f"afresh with --overwrite")
        return
    # config.json of runs from before this layout held the TrainConfig alone: only the
    # training settings of such a run can be compared.
    upgrade = lambda saved: saved if "train" in saved else {**cfg_dict, "train": saved}
    runs.check_config(run_dir, cfg_dict, True, MAY_CHANGE_ON_RESUME, upgrade=upgrade)
