"""experiments/fast_weights.py under bad input and kills: every mistake is refused in one
line naming the flag, value or file, and a training run killed at any phase resumes to the
very run an uninterrupted one gives (metrics, checkpoint and printed scores).

Everything runs in this process on one tiny task (a small associative-retrieval data set,
an 8-unit IRNN), so the train step and the evaluations compile once for the whole file.
"""

import contextlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from plastix import cli, runs, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import fast_weights  # noqa: E402

# Ba et al.'s splits take seconds to draw; these take a fraction of one.
TINY_TASK = {"name": "assoc_retrieval", "num_pairs": 2, "split_sizes": [512, 128, 256]}
# 40 steps, a record every 2, an evaluation and a checkpoint at steps 20 and 40.
TRAIN = ["train", "--task", "assoc_retrieval", "--model", "control", "--hidden", "8",
         "--steps", "40", "--batch-size", "8", "--log-every", "2"]


class Killed(BaseException):
    """Stands in for SIGKILL: a BaseException, so that no ``except Exception`` catches it."""


@pytest.fixture(scope="module", autouse=True)
def tiny_task():
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(fast_weights.TASK_CONFIGS, "assoc_retrieval", TINY_TASK)
        yield


def train_quietly(argv) -> list[str]:
    """Run ``fast_weights.py`` in this process; its stdout lines."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fast_weights.main(argv)
    return out.getvalue().splitlines()


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted tiny run; its printed score is in ``score.json``."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    lines = train_quietly([*TRAIN, "--run-dir", str(run_dir)])
    (run_dir.parent / "score.json").write_text(lines[-1])
    return run_dir


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in train.TIMING_FIELDS} for r in records]


def _metrics(run_dir: Path) -> list[dict]:
    return runs.MetricsLog(run_dir / runs.METRICS).read()


# --- bad input ---------------------------------------------------------------------------

LATIN1 = "café naïve\n".encode("latin-1") * 50


def _prepare(tmp: Path, run: Path) -> dict[str, str]:
    """The paths the bad-input cases name: copies of a finished run, damaged in one way
    each, a file, a missing path, a non-UTF-8 corpus."""
    paths = {"tmp": tmp, "missing": tmp / "missing", "file": tmp / "file.txt",
             "latin1": tmp / "latin1.txt", "empty": tmp / "empty"}
    paths["file"].write_text("not a directory\n")
    paths["latin1"].write_bytes(LATIN1)
    paths["corpus"] = tmp / "corpus.txt"  # the default corpus, beside the repository, may be missing
    paths["corpus"].write_text("the cat sat on the mat\n" * 100)
    paths["empty"].mkdir()
    for name in ("run", "garbled", "nockpt", "badjson", "nometrics", "noconfig", "foreign"):
        paths[name] = tmp / name
        shutil.copytree(run, paths[name])
    (paths["garbled"] / runs.CHECKPOINT).write_bytes(b"\x93\x00garbage" * 40)
    (paths["nockpt"] / runs.CHECKPOINT).unlink()
    (paths["badjson"] / runs.CONFIG).write_text('{"experiment": ')
    (paths["nometrics"] / runs.METRICS).unlink()
    (paths["noconfig"] / runs.CONFIG).unlink()
    saved = json.loads((paths["foreign"] / runs.CONFIG).read_text())
    saved["train"]["steps"] = 0
    (paths["foreign"] / runs.CONFIG).write_text(json.dumps(saved))
    return {k: str(v) for k, v in paths.items()}


def _snapshot(tmp: Path) -> dict[str, bytes]:
    return {str(p.relative_to(tmp)): p.read_bytes() for p in sorted(tmp.rglob("*"))
            if p.is_file()}


T = TRAIN  # the tiny run's flags: a case adds or changes one
BAD_INPUTS = [
    # train: numbers out of their bounds
    ([*T, "--batch-size", "0"], "--batch-size"),
    ([*T, "--batch-size", "-3"], "--batch-size"),
    ([*T, "--lr", "nan"], "--lr"),
    ([*T, "--lr", "inf"], "--lr"),
    ([*T, "--lr", "0"], "--lr"),
    ([*T, "--lr", "fast"], "--lr"),
    ([*T, "--clip", "0"], "--clip"),
    ([*T, "--clip", "-1"], "--clip"),
    ([*T, "--log-every", "0"], "--log-every"),
    ([*T, "--hidden", "0"], "--hidden"),
    ([*T, "--hidden", "-5"], "--hidden"),
    ([*T, "--hidden", "2.5"], "--hidden"),
    ([*T, "--steps", "0"], "--steps"),
    ([*T, "--steps", "-1"], "--steps"),
    ([*T, "--seed", "1.5"], "--seed"),
    # train: names, unknown and abbreviated flags, flags that do not apply
    ([*T, "--model", "gru"], "--model"),
    ([*T, "--task", "copy"], "--task"),
    ([*T, "--hid", "5"], "--hid"),
    ([*T, "--batch", "8"], "--batch"),
    ([*T, "--bogus"], "--bogus"),
    ([*T, "--form", "explicit"], "--form"),
    ([*T, "--corpus", "{latin1}"], "--corpus"),
    ([*T, "--run-dir", "{missing}", "--runs", "{tmp}"], "--runs"),
    # train: directories that cannot hold the run
    ([*T, "--run-dir", "{file}"], "--run-dir {file} is a file"),
    ([*T, "--run-dir", ""], "--run-dir"),
    ([*T, "--runs", "{file}"], "--runs {file} is a file"),
    # train: the corpus of the text task
    ([*T, "--task", "text", "--corpus", "{missing}"], "--corpus {missing}"),
    ([*T, "--task", "text", "--corpus", "{empty}"], "--corpus {empty}"),
    ([*T, "--task", "text", "--corpus", "{latin1}"], "{latin1} is not UTF-8"),
    # train: a directory holding another run, or a run that cannot be resumed
    ([*T[:6], "16", *T[7:], "--run-dir", "{run}"], "experiment.hidden"),
    ([*T[:4], "lstm", *T[5:], "--run-dir", "{run}"], "experiment.model"),
    ([*T, "--lr", "0.01", "--run-dir", "{run}"], "train.learning_rate"),
    ([*T, "--log-every", "4", "--run-dir", "{run}"], "train.log_every"),
    ([*T[:8], "10", *T[9:], "--run-dir", "{run}"], "past the 10 asked for"),
    ([*T, "--run-dir", "{garbled}"], "{garbled}/checkpoint.msgpack"),
    ([*T, "--run-dir", "{badjson}"], "{badjson}/config.json is damaged"),
    ([*T, "--run-dir", "{nometrics}"], "{nometrics}/metrics.jsonl is missing"),
    ([*T, "--run-dir", "{noconfig}"], "{noconfig}/checkpoint.msgpack has no config.json"),
    # test
    (["test"], "--run-dir"),
    (["test", "--run-dir", "{missing}"], "--run-dir {missing} does not exist"),
    (["test", "--run-dir", "{file}"], "--run-dir {file} is a file"),
    (["test", "--run-dir", "{empty}"], "config.json is missing"),
    (["test", "--run-dir", "{nockpt}"], "{nockpt} holds no checkpoint.msgpack"),
    (["test", "--run-dir", "{garbled}"], "{garbled}/checkpoint.msgpack"),
    (["test", "--run-dir", "{badjson}"], "{badjson}/config.json"),
    (["test", "--run-dir", "{foreign}"], "{foreign}/config.json"),
    (["test", "--run-dir", "{run}", "--batches", "0"], "--batches"),
    (["test", "--run-dir", "{run}", "--batches", "-2"], "--batches"),
    (["test", "--run-dir", "{run}", "--split", "dev"], "--split"),
    # plot
    (["plot"], "run_dirs"),
    (["plot", "{missing}"], "{missing} does not exist"),
    (["plot", "{empty}"], "{empty} holds no metrics"),
    (["plot", "{run}", "--out", "{missing}/curves.png"], "--out {missing}/curves.png"),
    (["plot", "{run}", "--out", "{tmp}/curves.xyz"], "--out {tmp}/curves.xyz"),
    (["plot", "{run}", "--out", "{tmp}"], "--out {tmp} is a directory"),
    # table1
    (["table1", "--seeds", "0", "0"], "--seeds"),
    (["table1", "--seeds"], "--seeds"),
    (["table1", "--seeds", "a"], "--seeds"),
    (["table1", "--models", "GRU"], "--models"),
    (["table1", "--task", "text"], "--task"),
    (["table1", "--steps", "0"], "--steps"),
    (["table1", "--runs", "{tmp}/r", "--results", "{file}"], "--results {file} is a file"),
    (["table1", "--runs", "{file}"], "--runs {file} is a file"),
    # charlm
    (["charlm", "--corpus", "{missing}"], "--corpus {missing}"),
    (["charlm", "--runs", "{tmp}/r", "--corpus", "{latin1}"], "{latin1} is not UTF-8"),
    (["charlm", "--eval-batches", "0"], "--eval-batches"),
    (["charlm", "--hidden", "0"], "--hidden"),
    (["charlm", "--runs", "{tmp}/r", "--corpus", "{corpus}", "--results", "{file}"],
     "--results {file}"),
    # the command itself
    ([], "command"),
    (["fit"], "fit"),
]


@pytest.mark.parametrize("argv, named", BAD_INPUTS, ids=[" ".join(a[len(T) if a[:len(T)] == T
                                                                      else 0:]) or "(none)"
                                                         for a, _ in BAD_INPUTS])
def test_bad_input_is_refused_in_one_line_naming_it(argv, named, straight, tmp_path, capsys):
    paths = _prepare(tmp_path, straight)
    before = _snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.run(fast_weights.main, [a.format(**paths) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == cli.EXIT_USAGE
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert named.format(**paths) in err
    assert _snapshot(tmp_path) == before  # a refusal changes nothing it was given


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any directory")
def test_an_unwritable_run_directory_is_refused(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(SystemExit):
        cli.run(fast_weights.main, [*TRAIN, "--run-dir", str(locked)])
    assert "not writable" in capsys.readouterr().err


# --- kills -------------------------------------------------------------------------------


def _nth(n: int):
    """A counter that is true at its ``n``-th call."""
    calls = [0]

    def hit() -> bool:
        calls[0] += 1
        return calls[0] == n

    return hit


def die_before_record(patch, n: int):
    """Killed just before the ``n``-th metrics record is appended."""
    append, hit = runs.MetricsLog.append, _nth(n)

    def append_or_die(self, record):
        if hit():
            raise Killed
        append(self, record)

    patch.setattr(runs.MetricsLog, "append", append_or_die)


def die_tearing_record(patch, n: int):
    """Killed with half of the ``n``-th metrics record written."""
    append, hit = runs.MetricsLog.append, _nth(n)

    def tear_or_append(self, record):
        if hit():
            line = (json.dumps(record) + "\n").encode()
            with open(self.path, "ab") as f:
                f.write(line[:len(line) // 2])
            raise Killed
        append(self, record)

    patch.setattr(runs.MetricsLog, "append", tear_or_append)


def die_writing(patch, name: str, n: int = 1):
    """Killed in the ``n``-th atomic write of the run file ``name``, half its temporary
    file written, before the rename."""
    atomic_write, hit = runs.atomic_write, _nth(n)

    def write_or_die(path, data):
        if os.path.basename(path) == name and hit():
            with open(f"{path}.tmp", "wb") as f:
                f.write(data[:len(data) // 2])
            raise Killed
        atomic_write(path, data)

    patch.setattr(runs, "atomic_write", write_or_die)


def die_after_checkpoint(patch, n: int):
    """Killed right after the ``n``-th checkpoint is written."""
    save, hit = runs.save_checkpoint, _nth(n)

    def save_and_die(*args, **kwargs):
        save(*args, **kwargs)
        if hit():
            raise Killed

    patch.setattr(runs, "save_checkpoint", save_and_die)


def die_after_loading(patch):
    """Killed right after a resume has read its checkpoint."""
    load = runs.load_checkpoint

    def load_and_die(*args, **kwargs):
        load(*args, **kwargs)
        raise Killed

    patch.setattr(runs, "load_checkpoint", load_and_die)


# Records: train at steps 2, 4, ..., valid and a checkpoint after the train record at 20
# (record 11) and 40; record 14 is step 26's.
KILLS = {
    "in the first config write": [lambda p: die_writing(p, runs.CONFIG)],
    "before the first checkpoint": [lambda p: die_before_record(p, 5)],
    "before the first evaluation": [lambda p: die_before_record(p, 11)],
    "in the first checkpoint write": [lambda p: die_writing(p, runs.CHECKPOINT)],
    "right after the first checkpoint": [lambda p: die_after_checkpoint(p, 1)],
    "tearing a metrics line": [lambda p: die_tearing_record(p, 14)],
    "tearing the last record": [lambda p: die_tearing_record(p, 22)],
    "in the last checkpoint write": [lambda p: die_writing(p, runs.CHECKPOINT, 2)],
    "after the last checkpoint, before the score": [lambda p: die_after_checkpoint(p, 2)],
    "then in the metrics rewrite of the resume": [lambda p: die_before_record(p, 14),
                                                 lambda p: die_writing(p, runs.METRICS)],
    "then in the config rewrite of the resume": [lambda p: die_after_checkpoint(p, 1),
                                                lambda p: die_writing(p, runs.CONFIG)],
    "then right after the resume loads": [lambda p: die_tearing_record(p, 14),
                                          die_after_loading],
    "then in the resume's first record": [lambda p: die_before_record(p, 13),
                                          lambda p: die_before_record(p, 1)],
}


@pytest.mark.parametrize("kills", KILLS.values(), ids=KILLS.keys())
def test_a_run_killed_at_any_phase_resumes_to_the_uninterrupted_run(kills, straight,
                                                                    tmp_path):
    run_dir = tmp_path / "run"
    argv = [*TRAIN, "--run-dir", str(run_dir)]
    for kill in kills:
        with pytest.MonkeyPatch.context() as patch:
            kill(patch)
            with pytest.raises(Killed):
                train_quietly(argv)
    lines = train_quietly(argv)

    assert json.loads(lines[-1]) == json.loads((straight.parent / "score.json").read_text())
    assert _without_timing(_metrics(run_dir)) == _without_timing(_metrics(straight))
    assert ((run_dir / runs.CHECKPOINT).read_bytes()
            == (straight / runs.CHECKPOINT).read_bytes())  # step, parameters, Adam state
    assert runs.read_config(run_dir) == runs.read_config(straight)
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(  # no .tmp left
        [*runs.RUN_FILES, runs.MARKER])


def test_a_finished_run_is_skipped_and_overwrite_trains_it_afresh(straight, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    argv = [*TRAIN, "--run-dir", str(run_dir)]
    lines = train_quietly(argv)
    assert lines[0].endswith(f"resumed from {run_dir / runs.CHECKPOINT} at step 40 of 40")
    assert len(lines) == 2  # no step trained again: the resume line, then the score

    # --overwrite replaces the run, even one of other settings, and trains it again.
    lines = train_quietly([*argv, "--lr", "0.01", "--overwrite"])
    assert not any("resumed" in line for line in lines)
    assert runs.read_config(run_dir)["train"]["learning_rate"] == 0.01
    assert [r["step"] for r in _metrics(run_dir)][-1] == 40


def test_results_go_under_runs_unless_asked_for(monkeypatch, tmp_path):
    # Table 1 reduced to one row of one size: what matters here is where it is written.
    monkeypatch.setattr(fast_weights, "TABLE1_MODELS", {"IRNN": ("control", {})})
    monkeypatch.setattr(fast_weights, "TABLE1_SIZES", (8,))
    monkeypatch.setattr(fast_weights, "PAPER_TABLE1", {"IRNN": {8: 50.0}})
    flags = ["table1", "--steps", "4", "--batch-size", "8", "--log-every", "2",
             "--runs", str(tmp_path / "runs")]
    train_quietly(flags)
    written = sorted(p.name for p in (tmp_path / "runs" / "results").iterdir())
    assert written == ["table1_assoc_retrieval.json", "table1_assoc_retrieval.md"]
    saved = json.loads((tmp_path / "runs" / "results" / "table1_assoc_retrieval.json"
                        ).read_text())
    assert [(r["model"], r["hidden"], r["steps"]) for r in saved["runs"]] == [("IRNN", 8, 4)]

    train_quietly([*flags, "--results", str(tmp_path / "published")])
    assert (tmp_path / "published" / "table1_assoc_retrieval.md").exists()
