"""The gradient path: train a :mod:`plastix.models` model on a :mod:`plastix.tasks` task.

Minimise the in-lifetime next-token loss of the ES path,

    L(theta) = masked_nll(model(theta, inputs), targets, mask)      (nats per scored token)

with Adam (Kingma & Ba 2015) after clipping the global gradient norm (Pascanu et al. 2013).

Pieces, each a small pure function: :func:`make_optimizer`, :func:`loss_and_metrics`,
:func:`make_update` (one optimiser step on a given batch), :func:`make_train_step` (sample a
batch on device and update, jitted), :func:`make_evaluate` (jitted), checkpoint save/restore,
and :func:`fit`, the host loop that logs, evaluates and checkpoints.

Resuming loses nothing: the batch of step i is drawn from ``fold_in(data_key, i)``, so it
depends on the step only, never on how many processes ran before; a checkpoint holds
(step, params, optimiser state) and is written atomically; on resume, metrics records past the
checkpoint are dropped and recomputed. N straight steps and N/2 + kill + resume give
bit-identical parameters.

Example:
    >>> task = tasks.get("assoc_retrieval")
    >>> model = models.make_model("rnn-ln-fw", task.vocab_size, task.seq_len, 50)
    >>> state = fit(model, task, TrainConfig(steps=1000), "runs/fw50")
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import flax.serialization
import jax
import jax.numpy as jnp
import optax

from plastix import tasks

CHECKPOINT = "checkpoint.msgpack"
METRICS = "metrics.jsonl"
CONFIG = "config.json"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Numbers that steer training; none of them changes a shape the model sees."""

    steps: int = 10_000
    batch_size: int = 128
    learning_rate: float = 1e-3
    clip_norm: float = 1.0
    seed: int = 0
    log_every: int = 100
    eval_every: int = 1_000
    eval_batches: int = 8
    checkpoint_every: int = 1_000

    def __post_init__(self):
        # A resumed run must restart at a logging boundary, or its first logged window of
        # training metrics would average fewer steps than the straight run's.
        if self.checkpoint_every % self.log_every:
            raise ValueError("checkpoint_every must be a multiple of log_every")


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: number of updates applied
    params: Any
    opt_state: Any


Batch = tuple[jax.Array, jax.Array, jax.Array]  # inputs, targets, mask


def make_optimizer(learning_rate: float, clip_norm: float) -> optax.GradientTransformation:
    """Adam on gradients whose global norm is clipped to ``clip_norm``."""
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(learning_rate))


def init_state(key, model, seq_len: int, optimizer: optax.GradientTransformation) -> TrainState:
    params = model.init(key, jnp.zeros((1, seq_len), jnp.int32))
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def loss_and_metrics(params, model, batch: Batch) -> tuple[jax.Array, dict]:
    """Masked next-token NLL (nats) and accuracy of ``model`` on one batch."""
    inputs, targets, mask = batch
    logits = model.apply(params, inputs)
    loss = tasks.masked_nll(logits, targets, mask)
    return loss, {"loss": loss, "accuracy": tasks.masked_accuracy(logits, targets, mask)}


def make_update(model, optimizer: optax.GradientTransformation) -> Callable:
    """``update(state, batch) -> (state, metrics)``: one optimiser step on ``batch`` (pure)."""

    def update(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        grads, metrics = jax.grad(loss_and_metrics, has_aux=True)(state.params, model, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return TrainState(state.step + 1, params, opt_state), metrics

    return update


def make_train_step(model, task, optimizer, batch_size: int) -> Callable:
    """Jitted ``train_step(state, data_key) -> (state, metrics)``.

    The batch is sampled on device from ``fold_in(data_key, state.step)``.
    """
    update = make_update(model, optimizer)

    @jax.jit
    def train_step(state: TrainState, data_key) -> tuple[TrainState, dict]:
        batch = task.sample(jax.random.fold_in(data_key, state.step), batch_size, "train")
        return update(state, batch)

    return train_step


def make_evaluate(model, task, batch_size: int, num_batches: int) -> Callable:
    """Jitted ``evaluate(params, key, split) -> {"loss", "accuracy"}`` over ``num_batches``."""

    def evaluate(params, key, split: str = "valid") -> dict:
        def one_batch(batch_key):
            batch = task.sample(batch_key, batch_size, split)
            return loss_and_metrics(params, model, batch)[1]

        per_batch = jax.lax.map(one_batch, jax.random.split(key, num_batches))
        return jax.tree_util.tree_map(jnp.mean, per_batch)

    return jax.jit(evaluate, static_argnames="split")


def save_checkpoint(path: str | os.PathLike, state: TrainState) -> None:
    """Write ``state`` atomically: a kill mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(flax.serialization.to_bytes(jax.device_get(state)))
    os.replace(tmp, path)


def restore_checkpoint(path: str | os.PathLike, template: TrainState) -> TrainState:
    """Read a checkpoint into the structure (and dtypes) of ``template``."""
    return flax.serialization.from_bytes(template, Path(path).read_bytes())


def read_metrics(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _keep_metrics_up_to(path: Path, step: int) -> None:
    """Drop records logged after ``step``: the resumed run logs them again."""
    kept = [r for r in read_metrics(path) if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def _append_metrics(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _to_floats(metrics: dict) -> dict:
    return {name: float(value) for name, value in metrics.items()}


@functools.lru_cache(maxsize=4)
def _compiled_functions(model, task, config: TrainConfig) -> tuple[Callable, Callable]:
    """(train_step, evaluate) of a run, cached so that a run resumed in the same process
    (or fitted again with the same model, task and config) does not compile again."""
    optimizer = make_optimizer(config.learning_rate, config.clip_norm)
    return (make_train_step(model, task, optimizer, config.batch_size),
            make_evaluate(model, task, config.batch_size, config.eval_batches))


def fit(
    model,
    task,
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    print_fn: Callable[[str], None] = print,
) -> TrainState:
    """Train ``model`` on ``task`` for ``config.steps`` steps, resuming from ``run_dir``.

    Writes to ``run_dir``: ``config.json``, ``metrics.jsonl`` (one record per log / eval,
    ``{"step", "split", "loss", "accuracy", ...}``) and ``checkpoint.msgpack``.
    Returns the final :class:`TrainState`.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG).write_text(json.dumps(dataclasses.asdict(config), indent=1))
    metrics_path, checkpoint_path = run_dir / METRICS, run_dir / CHECKPOINT

    optimizer = make_optimizer(config.learning_rate, config.clip_norm)
    init_key, data_key, eval_key = jax.random.split(jax.random.key(config.seed), 3)
    state = init_state(init_key, model, task.seq_len, optimizer)
    if checkpoint_path.exists():
        state = restore_checkpoint(checkpoint_path, state)
        print_fn(f"resumed from {checkpoint_path} at step {int(state.step)}")
    _keep_metrics_up_to(metrics_path, int(state.step))

    train_step, evaluate = _compiled_functions(model, task, config)

    window, window_start = [], time.perf_counter()
    for step in range(int(state.step) + 1, config.steps + 1):
        state, metrics = train_step(state, data_key)
        window.append(metrics)  # stays on device until logged: no per-step host sync
        if step % config.log_every == 0 or step == config.steps:
            mean = _to_floats(jax.tree_util.tree_map(lambda *m: jnp.mean(jnp.stack(m)), *window))
            rate = len(window) / (time.perf_counter() - window_start)
            _append_metrics(metrics_path, {"step": step, "split": "train", **mean,
                                           "steps_per_s": rate})
            print_fn(f"step {step:>7}  loss {mean['loss']:.4f}  acc {mean['accuracy']:.4f}"
                     f"  |g| {mean['grad_norm']:.2f}  {rate:.0f} steps/s")
            window, window_start = [], time.perf_counter()
        if step % config.eval_every == 0 or step == config.steps:
            scores = _to_floats(evaluate(state.params, eval_key, "valid"))
            _append_metrics(metrics_path, {"step": step, "split": "valid", **scores})
            print_fn(f"step {step:>7}  valid loss {scores['loss']:.4f}"
                     f"  acc {scores['accuracy']:.4f}")
            if not window:  # keep evaluation time out of the next steps/s figure
                window_start = time.perf_counter()
        if step % config.checkpoint_every == 0 or step == config.steps:
            save_checkpoint(checkpoint_path, state)
    return state
