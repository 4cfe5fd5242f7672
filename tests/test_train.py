"""Tests for plastix.train: checkpoints round-trip, and a killed run resumes losing nothing."""

import json

import jax
import numpy as np
import pytest

from plastix import models, tasks, train


class Killed(Exception):
    """Stands in for SIGKILL: raised from inside the training loop, after the step-10
    checkpoint and after step 15's metrics record has been written."""


def _small_run():
    task = tasks.get("assoc_retrieval", num_pairs=2)
    model = models.make_model("rnn-ln", task.vocab_size, task.seq_len, 8, embed_dim=8,
                              readout_features=0)
    config = train.TrainConfig(steps=20, batch_size=8, learning_rate=1e-2, log_every=5,
                               eval_every=10, eval_batches=2, checkpoint_every=10)
    return model, task, config


def _kill_at_step_15(line):
    if line.startswith("step      15"):
        raise Killed


def _without_timing(records):
    return [{k: v for k, v in r.items() if k != "steps_per_s"} for r in records]


def test_resume_after_kill_gives_identical_params_and_metrics(tmp_path):
    model, task, config = _small_run()
    straight = train.fit(model, task, config, tmp_path / "straight", print_fn=lambda _: None)

    with pytest.raises(Killed):
        train.fit(model, task, config, tmp_path / "killed", print_fn=_kill_at_step_15)
    logged = []
    resumed = train.fit(model, task, config, tmp_path / "killed", print_fn=logged.append)

    assert logged[0].startswith("resumed from") and "step 10" in logged[0]
    assert int(resumed.step) == int(straight.step) == 20
    for a, b in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(straight)):
        np.testing.assert_array_equal(a, b)  # bit-identical, not merely close
    assert json.loads((tmp_path / "killed" / train.CONFIG).read_text())["steps"] == 20
    straight_log = train.read_metrics(tmp_path / "straight" / train.METRICS)
    resumed_log = train.read_metrics(tmp_path / "killed" / train.METRICS)
    assert _without_timing(resumed_log) == _without_timing(straight_log)
    steps = [(r["step"], r["split"]) for r in resumed_log]
    assert steps == [(5, "train"), (10, "train"), (10, "valid"), (15, "train"),
                     (20, "train"), (20, "valid")]
    assert resumed_log[-2]["loss"] < resumed_log[0]["loss"]  # and it did learn something


def test_checkpoint_round_trip(tmp_path):
    model, task, config = _small_run()
    optimizer = train.make_optimizer(config.learning_rate, config.clip_norm)
    state = train.init_state(jax.random.key(3), model, task.seq_len, optimizer)
    train.save_checkpoint(tmp_path / "ckpt", state)
    template = train.init_state(jax.random.key(4), model, task.seq_len, optimizer)
    restored = train.restore_checkpoint(tmp_path / "ckpt", template)
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "ckpt.tmp").exists()


def test_config_rejects_checkpoints_off_the_logging_grid():
    with pytest.raises(ValueError, match="multiple of log_every"):
        train.TrainConfig(log_every=100, checkpoint_every=150)
