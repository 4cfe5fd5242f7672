"""plastix.runs: config, checkpoints and metrics of a run directory, and the ES loop's
kill-and-resume on top of them (the gradient loop's is in test_train.py)."""

import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import evolve, plastic, runs, tasks


@dataclasses.dataclass(frozen=True)
class Inner:
    rate: float = 0.1
    layers: tuple = (("out", "hebb"),)


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner = Inner()
    steps: int = 10
    chunk: int | None = None


# --- run directories -----------------------------------------------------------------------


def test_runs_that_name_no_directory_each_get_a_new_one(tmp_path):
    root = tmp_path / "runs" / "x"
    made = [runs.new_run_dir(root) for _ in range(3)]  # within one second, most likely
    assert len(set(made)) == 3
    for path in made:
        assert os.path.isdir(path) and not os.listdir(path)
        assert re.fullmatch(r"\d{8}-\d{6}(-\d+)?", os.path.basename(path)), path


@pytest.mark.parametrize("mode, verb", [("resume", "continue"), ("overwrite", "replace")])
def test_resume_and_overwrite_need_the_run_named(mode, verb):
    with pytest.raises(ValueError, match=rf"^--{mode} needs --out DIR, the run to {verb} "
                                         rf"\(without --out every run gets a new directory "
                                         rf"under runs/x\)$"):
        runs.check_named(None, mode, "runs/x")
    runs.check_named("mine", mode, "runs/x")
    runs.check_named(None, "new", "runs/x")


# --- config --------------------------------------------------------------------------------


def test_config_dict_is_what_config_json_reads_back(tmp_path):
    cfg = runs.config_dict(Outer())
    assert cfg == {"inner": {"rate": 0.1, "layers": [["out", "hebb"]]}, "steps": 10,
                   "chunk": None}
    runs.write_config(tmp_path, cfg)
    assert runs.read_config(tmp_path) == cfg
    assert os.listdir(tmp_path) == [runs.CONFIG]  # no temporary file left behind
    assert runs.read_config(tmp_path / "nothing") is None


def test_changed_config_is_refused_naming_the_dotted_keys(tmp_path):
    runs.write_config(tmp_path, runs.config_dict(Outer()))
    changed = runs.config_dict(Outer(Inner(rate=0.2, layers=()), steps=20, chunk=4))
    with pytest.raises(ValueError) as refused:
        runs.check_config(tmp_path, changed, resume=True, may_change=("steps",))
    message = str(refused.value)
    assert "differs in: chunk, inner.layers, inner.rate)" in message
    assert str(tmp_path) in message and "\n" not in message

    runs.check_config(tmp_path, changed, resume=False)  # a fresh run replaces the directory
    runs.check_config(tmp_path, changed, resume=True, may_change=("steps", "chunk", "inner"))
    runs.check_config(tmp_path / "new", changed, resume=True)  # nothing saved: nothing to check
    with pytest.raises(ValueError, match=r"differs in: extra\)"):
        runs.check_config(tmp_path, {**runs.config_dict(Outer()), "extra": 1}, resume=True)
    # A saved config of an older layout is upgraded before the comparison.
    runs.write_config(tmp_path, {"steps": 10})
    upgrade = lambda saved: {**runs.config_dict(Outer()), **saved}
    runs.check_config(tmp_path, runs.config_dict(Outer()), True, upgrade=upgrade)


# --- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_round_trip_and_the_older_es_format(tmp_path):
    state = {"mean": jnp.arange(3.0), "count": jnp.array(4, jnp.int32), "nested": (jnp.ones(2),)}
    template = jax.tree.map(jnp.zeros_like, state)
    runs.save_checkpoint(tmp_path / "ckpt", state, 12)
    restored, step = runs.load_checkpoint(tmp_path / "ckpt", template)
    assert step == 12 and os.listdir(tmp_path) == ["ckpt"]
    jax.tree.map(np.testing.assert_array_equal, restored, state)
    assert restored["count"].dtype == jnp.int32

    import flax.serialization

    old = {"generation": 5, "state": flax.serialization.to_state_dict(jax.device_get(state))}
    (tmp_path / "old").write_bytes(flax.serialization.msgpack_serialize(old))
    restored, step = runs.load_checkpoint(tmp_path / "old", template)
    assert step == 5
    jax.tree.map(np.testing.assert_array_equal, restored, state)


# --- metrics -------------------------------------------------------------------------------


def _log_of(tmp_path, steps):
    log = runs.MetricsLog(tmp_path / runs.METRICS, step_key="generation")
    for g in steps:
        log.append({"generation": g, "loss": 1.0 / g})
    return log


def test_a_torn_last_metrics_line_is_dropped_not_fatal(tmp_path):
    log = _log_of(tmp_path, [1, 2, 3])
    with open(log.path, "a") as f:
        f.write('{"generation": 4, "lo')  # the kill came mid-append
    assert [r["generation"] for r in log.read()] == [1, 2, 3]
    assert [r["generation"] for r in log.read(upto_step=2)] == [1, 2]
    assert [r["generation"] for r in log.truncate_to(3)] == [1, 2, 3]
    log.append({"generation": 4, "loss": 0.25})  # appends after the repair land on their own line
    assert [r["generation"] for r in log.read()] == [1, 2, 3, 4]


def test_damage_before_the_last_line_is_an_error(tmp_path):
    log = _log_of(tmp_path, [1])
    with open(log.path, "a") as f:
        f.write("not json\n" + json.dumps({"generation": 2}) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not a JSON record"):
        log.read()


def test_truncate_replaces_the_file_and_a_kill_mid_way_loses_nothing(tmp_path, monkeypatch):
    log = _log_of(tmp_path, [1, 2, 3, 4])
    before = open(log.path).read()

    def killed(*args):
        raise KeyboardInterrupt  # stands in for a kill between writing and renaming

    with monkeypatch.context() as m:
        m.setattr(runs.os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            log.truncate_to(2)
    assert open(log.path).read() == before  # the old file, whole

    inode = os.stat(log.path).st_ino
    assert [r["generation"] for r in log.truncate_to(2)] == [1, 2]
    assert os.stat(log.path).st_ino != inode  # a new file renamed over the old, not an edit
    assert [r["generation"] for r in log.read()] == [1, 2]
    assert not os.path.exists(f"{log.path}.tmp")


# --- the ES loop: killed and resumed equals uninterrupted ----------------------------------


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in evolve.TIMING_FIELDS} for r in records]


def test_killed_and_resumed_es_run_equals_an_uninterrupted_one(tmp_path):
    task = tasks.get("assoc_retrieval", num_pairs=2)
    net = plastic.PlasticRNN(vocab_size=task.vocab_size, hidden_size=8)
    cfg = evolve.ESConfig(population=4, batch=2, eval_batch=16)
    evolution = evolve.make_evolution(net, task, cfg, jax.random.key(0))
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    evolve.evolve(evolution, seed=1, generations=4, out_dir=straight, log_every=2)

    evolve.evolve(evolution, seed=1, generations=2, out_dir=killed, log_every=2)
    with open(os.path.join(killed, runs.METRICS), "a") as f:
        f.write('{"generation": 4, "best_fit')  # killed mid-append of the next record
    _, history = evolve.evolve(evolution, seed=1, generations=4, out_dir=killed, log_every=2,
                               resume=True)

    def read(run_dir, name):
        with open(os.path.join(run_dir, name), "rb") as f:
            return f.read()

    assert read(killed, runs.CHECKPOINT) == read(straight, runs.CHECKPOINT)
    logs = [runs.MetricsLog(os.path.join(d, runs.METRICS), step_key="generation").read()
            for d in (straight, killed)]
    assert _without_timing(logs[1]) == _without_timing(logs[0]) == _without_timing(history)
    assert [r["generation"] for r in history] == [2, 4]

    # Started afresh (no resume) in the same directory, the old checkpoint goes at once.
    evolve.evolve(evolution, seed=1, generations=0, out_dir=killed)
    assert not os.path.exists(os.path.join(killed, runs.CHECKPOINT))
    assert runs.MetricsLog(os.path.join(killed, runs.METRICS), step_key="generation").read() == []
