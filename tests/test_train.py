"""Tests for plastix.train: checkpoints round-trip, a killed run resumes losing nothing, and
a run directory of other settings is refused (by train.fit and by fast_weights.py train)."""

import dataclasses
import json
import os
import sys

import flax.serialization
import jax
import numpy as np
import pytest

from plastix import models, runs, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import fast_weights  # noqa: E402
from conftest import small_train_run  # noqa: E402


class Killed(Exception):
    """Stands in for SIGKILL: raised from inside the training loop, after the step-10
    checkpoint and after step 15's metrics record has been written."""




def _kill_at_step_15(line):
    if line.startswith("step      15"):
        raise Killed


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in train.TIMING_FIELDS} for r in records]


def _metrics(run_dir):
    return runs.MetricsLog(run_dir / runs.METRICS).read()


def test_resume_after_kill_gives_identical_params_and_metrics(tmp_path):
    model, task, config = small_train_run()
    straight = train.fit(model, task, config, tmp_path / "straight", print_fn=lambda _: None)

    with pytest.raises(Killed):
        train.fit(model, task, config, tmp_path / "killed", print_fn=_kill_at_step_15)
    logged = []
    resumed = train.fit(model, task, config, tmp_path / "killed", print_fn=logged.append)

    assert logged[0].startswith("resumed from") and "step 10" in logged[0]
    assert int(resumed.step) == int(straight.step) == 20
    for a, b in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(straight)):
        np.testing.assert_array_equal(a, b)  # bit-identical, not merely close
    assert json.loads((tmp_path / "killed" / runs.CONFIG).read_text())["train"]["steps"] == 20
    assert ((tmp_path / "killed" / runs.CHECKPOINT).read_bytes()
            == (tmp_path / "straight" / runs.CHECKPOINT).read_bytes())
    straight_log = _metrics(tmp_path / "straight")
    resumed_log = _metrics(tmp_path / "killed")
    assert _without_timing(resumed_log) == _without_timing(straight_log)
    steps = [(r["step"], r["split"]) for r in resumed_log]
    assert steps == [(5, "train"), (10, "train"), (10, "valid"), (15, "train"),
                     (20, "train"), (20, "valid")]
    assert resumed_log[-2]["loss"] < resumed_log[0]["loss"]  # and it did learn something


def test_checkpoint_round_trip(tmp_path):
    model, task, config = small_train_run()
    optimizer = train.make_optimizer(config.learning_rate, config.clip_norm)
    state = train.init_state(jax.random.key(3), model, task.seq_len, optimizer)
    runs.save_checkpoint(tmp_path / "ckpt", state, 7)
    # A run from before the shared format saved the bare TrainState.
    (tmp_path / "old").write_bytes(flax.serialization.to_bytes(state))
    template = train.init_state(jax.random.key(4), model, task.seq_len, optimizer)
    for path, step in ((tmp_path / "ckpt", 7), (tmp_path / "old", 0)):
        restored, saved_step = runs.load_checkpoint(path, template)
        assert saved_step == step
        for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
            np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "ckpt.tmp").exists()


def test_resume_with_other_settings_is_refused_but_more_steps_extend(tmp_path):
    model, task, config = small_train_run()
    config = dataclasses.replace(config, steps=10)
    quiet = dict(print_fn=lambda _: None)
    train.fit(model, task, config, tmp_path, **quiet)
    saved = (tmp_path / runs.CONFIG).read_text()

    with pytest.raises(ValueError, match=r"differs in: train\.learning_rate\)") as refused:
        train.fit(model, task, dataclasses.replace(config, learning_rate=0.1), tmp_path, **quiet)
    assert str(tmp_path) in str(refused.value) and "\n" not in str(refused.value)
    wider = models.make_model("rnn-ln", task.vocab_size, task.seq_len, 16, embed_dim=8,
                              readout_features=0)
    with pytest.raises(ValueError, match=r"experiment\.model\.cell\.features"):
        train.fit(wider, task, config, tmp_path, **quiet)
    assert (tmp_path / runs.CONFIG).read_text() == saved  # a refusal changes nothing

    state = train.fit(model, task, dataclasses.replace(config, steps=20), tmp_path, **quiet)
    assert int(state.step) == 20
    assert [r["step"] for r in _metrics(tmp_path) if r["split"] == "valid"] == [10, 20]


def test_fast_weights_train_refuses_a_run_directory_of_other_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(fast_weights, "score_run", lambda *args, **kwargs: {})  # not tested here
    flags = ["train", "--model", "rnn-ln", "--task", "mqar", "--hidden", "4", "--steps", "2",
             "--batch-size", "4", "--log-every", "1", "--run-dir", str(tmp_path)]
    fast_weights.main(flags)
    saved = runs.read_config(tmp_path)
    assert saved["experiment"]["hidden"] == 4 and saved["train"]["steps"] == 2
    experiment, config = fast_weights.read_run(tmp_path)
    assert experiment["model"] == "rnn-ln" and config.batch_size == 4

    with pytest.raises(ValueError, match=r"experiment\.hidden"):
        fast_weights.main(flags[:6] + ["8"] + flags[7:])
    with pytest.raises(ValueError, match=r"train\.learning_rate"):
        fast_weights.main(flags + ["--lr", "0.01"])
    assert runs.read_config(tmp_path) == saved


def test_config_rejects_checkpoints_off_the_logging_grid():
    with pytest.raises(ValueError, match="multiple of log_every"):
        train.TrainConfig(log_every=100, checkpoint_every=150)


@pytest.mark.parametrize("field, value", [("steps", 0), ("batch_size", 0),
                                          ("learning_rate", float("nan")), ("clip_norm", 0.0),
                                          ("log_every", -1), ("eval_batches", 0),
                                          ("seed", 1.5)])
def test_config_refuses_a_setting_out_of_its_bound_by_name(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        train.TrainConfig(**{field: value})


def test_fit_modes_never_mix_or_lose_a_run(tmp_path):
    model, task, config = small_train_run()
    config = dataclasses.replace(config, steps=10)
    quiet = dict(print_fn=lambda _: None)
    with pytest.raises(ValueError, match="nothing to resume"):
        train.fit(model, task, config, tmp_path / "none", mode="resume", **quiet)
    train.fit(model, task, config, tmp_path, **quiet)
    with pytest.raises(ValueError, match="already holds a run"):
        train.fit(model, task, config, tmp_path, mode="new", **quiet)
    other = dataclasses.replace(config, learning_rate=0.1)
    state = train.fit(model, task, other, tmp_path, mode="overwrite", **quiet)
    assert int(state.step) == 10 and runs.read_config(tmp_path)["train"]["learning_rate"] == 0.1

    # A run stopped before its first checkpoint is still its directory's run: another's
    # settings are refused there, its own start it again from the beginning.
    (tmp_path / runs.CHECKPOINT).unlink()
    with pytest.raises(ValueError, match=r"train\.learning_rate"):
        train.fit(model, task, config, tmp_path, **quiet)
    said = []
    train.fit(model, task, other, tmp_path, print_fn=said.append)
    assert said[0].endswith("has no checkpoint yet: the run starts from the beginning")
    assert [r["step"] for r in _metrics(tmp_path)] == [5, 10, 10]
