"""experiments/es_abcd.py against bad input and kills.

Every bad command line exits with status 2 and one line naming the flag, value or file,
before any work is done; a run killed at any phase and resumed ends with the run
directory an uninterrupted run leaves. All in-process: one compilation serves every case.
"""

import json
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import es_abcd  # noqa: E402

from conftest import refused_line  # noqa: E402
from plastix import evolve, runs  # noqa: E402

TINY = ["--num-pairs", "2", "--hidden", "8", "--batch", "2", "--generations", "4",
        "--log-every", "2", "--eval-batch", "16", "--pop", "4", "--no-plots"]


def without(argv: list[str], *names: str) -> list[str]:
    """``argv`` less the flags ``names`` and their values."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in names:
            skip = True
        else:
            out.append(token)
    return out


def for_run(flags: list[str]) -> list[str]:
    """TINY with ``flags``, less the settings the run's task or outer loop does not take."""
    argv = list(TINY)
    if "gradient" in flags:
        argv = without(argv, "--pop")
    if "text" in flags:
        argv = without(argv, "--num-pairs")
    return argv + flags


def refused(argv, capsys) -> str:
    """The one stderr line of a command line that must be refused with status 2."""
    return refused_line(es_abcd.main, argv, capsys)

# --- bad values and flags -----------------------------------------------------------------

BAD_FLAGS = [
    # rates, stds and their floors: never silently raised to the floor
    (["--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
    (["--lr", "inf"], "argument --lr: must be a finite number > 0"),
    (["--lr", "-0.2"], "argument --lr: must be a finite number > 0"),
    (["--lr", "0"], "argument --lr: must be a finite number > 0"),
    (["--lr", "fast"], "argument --lr: must be a finite number > 0, got 'fast'"),
    (["--lr", "0.001"], "--lr-min (0.01) must not exceed --lr (0.001)"),
    (["--lr-min", "0.5"], "--lr-min (0.5) must not exceed --lr (0.2)"),
    (["--lr-min", "-1"], "argument --lr-min: must be a finite number >= 0"),
    (["--lr-decay", "0"], "argument --lr-decay: must be a finite number in (0, 1]"),
    (["--lr-decay", "1.5"], "argument --lr-decay"),
    (["--sigma", "nan"], "argument --sigma: must be a finite number > 0"),
    (["--sigma", "inf"], "argument --sigma"),
    (["--sigma", "0"], "argument --sigma"),
    (["--sigma", "0.001"], "--sigma-min (0.01) must not exceed --sigma (0.001)"),
    (["--sigma-decay", "2"], "argument --sigma-decay"),
    (["--sigma-decay", "nan"], "argument --sigma-decay"),
    (["--sigma-min", "nan"], "argument --sigma-min"),
    (["--l2", "nan"], "argument --l2/--l2-penalty: must be a finite number >= 0"),
    (["--l2", "-1"], "argument --l2/--l2-penalty"),
    (["--l2", "inf"], "argument --l2/--l2-penalty"),
    # sizes and counts
    (["--pop", "0"], "argument --pop/--population: must be an integer >= 2"),
    (["--pop", "1"], "argument --pop/--population"),
    (["--pop", "5"], "--pop must be even for antithetic sampling"),
    (["--pop", "8.5"], "argument --pop/--population: must be an integer >= 2, got '8.5'"),
    (["--batch", "0"], "argument --batch: must be an integer >= 1"),
    (["--eval-batch", "0"], "argument --eval-batch: must be an integer >= 1"),
    (["--eval-batch", "-3"], "argument --eval-batch"),
    (["--generations", "-5"], "argument --generations: must be an integer >= 0"),
    (["--log-every", "0"], "argument --log-every: must be an integer >= 1"),
    (["--log-every", "-1"], "argument --log-every"),
    (["--hidden", "0"], "argument --hidden: must be an integer >= 1"),
    (["--hidden", "-3"], "argument --hidden"),
    (["--hidden", "2.5"], "argument --hidden"),
    (["--seed", "1.5"], "argument --seed: must be an integer"),
    (["--noise-table", "-1"], "argument --noise-table: must be an integer >= 0"),
    (["--noise-table", "100", "--strategy", "CMA_ES"], "--noise-table must be None"),
    (["--chunk-size", "0"], "argument --chunk-size: must be an integer >= 1"),
    (["--memory-budget-mb", "0"], "argument --memory-budget-mb: must be a finite number > 0"),
    (["--memory-budget-mb", "nan"], "argument --memory-budget-mb"),
    # the network
    (["--init-scale", "inf"], "argument --init-scale: must be a finite number >= 0"),
    (["--init-scale", "-1"], "argument --init-scale"),
    (["--init-scale", "nan"], "argument --init-scale"),
    (["--weight-noise", "nan"], "argument --weight-noise: must be a finite number >= 0"),
    (["--weight-noise", "-0.1"], "argument --weight-noise"),
    (["--rule-out", "no_such_rule"], "unknown rule 'no_such_rule'"),
    (["--rule-out", "none"], "nothing to learn: every layer is fixed"),
    (["--granularity", "neuron"], "argument --granularity: invalid choice: 'neuron'"),
    (["--normalise-layers", "hidden"], "argument --normalise-layers: invalid choice"),
    (["--init-mean", "delta"], "--init-mean delta needs a readout rule with a teacher term"),
    (["--init-mean", "zero", "--init-hidden-eta", "0"], "argument --init-hidden-eta"),
    (["--init-mean", "zero", "--init-hidden-eta", "nan"], "argument --init-hidden-eta"),
    # flags that do not apply
    (["--init-hidden-eta", "0.1"], "--init-hidden-eta does not apply to --init-mean defaults"),
    (["--seq-len", "5"], "--seq-len does not apply to --task assoc_retrieval"),
    (["--num-keys", "4"], "--num-keys does not apply to --task assoc_retrieval"),
    (["--text-path", "corpus.txt"], "--text-path does not apply to --task assoc_retrieval"),
    (["--outer", "gradient", "--pop", "8"], "--pop does not apply to --outer gradient"),
    (["--outer", "gradient", "--sigma", "0.2", "--strategy", "CMA_ES"],
     "--strategy, --sigma do not apply to --outer gradient"),
    (["--grad-lr", "0.1"], "--grad-lr does not apply to --outer es"),
    (["--truncation", "4"], "--truncation does not apply to --outer es"),
    # the gradient loop's own values
    (["--outer", "gradient", "--grad-lr", "nan"], "argument --grad-lr"),
    (["--outer", "gradient", "--grad-clip", "-1"], "argument --grad-clip"),
    (["--outer", "gradient", "--grad-clip", "0"], "argument --grad-clip"),
    (["--outer", "gradient", "--truncation", "0"], "argument --truncation"),
    (["--outer", "gradient", "--checkpoint-every", "-2"], "argument --checkpoint-every"),
    (["--outer", "gradient", "--grad-lr-decay", "0"], "argument --grad-lr-decay"),
    (["--outer", "gradient", "--grad-lr", "0.01", "--grad-lr-min", "0.1"],
     "--grad-lr-min (0.1) must not exceed --grad-lr (0.01)"),
    (["--outer", "sgd"], "argument --outer: invalid choice: 'sgd'"),
    # tasks
    (["--task", "no_such_task"], "unknown task 'no_such_task'"),
    (["--num-pairs", "0"], "argument --num-pairs: must be an integer >= 1"),
    (["--num-pairs", "27"], "num_pairs"),
    (["--task", "text", "--text-path", "/no/such/corpus.txt"], "/no/such/corpus.txt"),
    (["--task", "recall_overwrite", "--num-keys", "0"], "argument --num-keys"),
    # ES settings by name
    (["--strategy", "NoSuchES"], "unknown ES strategy 'NoSuchES'"),
    (["--optimizer", "rmsprop"], "unknown ES optimizer 'rmsprop'"),
    (["--floor-mode", "sometimes"], "unknown ES floor_mode 'sometimes'"),
    # the command line itself
    (["--hid", "5"], "unrecognized arguments: --hid 5"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--resume", "--overwrite"], "argument --overwrite: not allowed with argument --resume"),
    (["--lr"], "argument --lr: expected one argument"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flags_are_refused_in_one_line(flags, message, tmp_path, capsys):
    line = refused(for_run(flags) + ["--out", str(tmp_path / "run")], capsys)
    assert message in line, line
    assert not os.path.exists(tmp_path / "run" / runs.CONFIG)  # refused before anything


def _write(path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


@pytest.mark.parametrize("name, message", [
    ("not_utf8", "not_utf8.txt"),
    ("too_short", "too_short.txt has"),
])
def test_bad_corpora_are_named(name, message, tmp_path, capsys):
    data = {"not_utf8": b"\xff\xfe\x80 caf\xe9 " * 200, "too_short": b"abc"}[name]
    path = _write(tmp_path / f"{name}.txt", data)
    line = refused(for_run(["--task", "text", "--text-path", path, "--out",
                            str(tmp_path / "run")]), capsys)
    assert message in line, line


# --- run directories ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def finished(tmp_path_factory) -> str:
    """A finished tiny run (4 generations, a checkpoint every 2)."""
    out = str(tmp_path_factory.mktemp("finished") / "run")
    es_abcd.main(TINY + ["--out", out])
    return out


def _copy(run: str, tmp_path) -> str:
    target = str(tmp_path / "copy")
    shutil.copytree(run, target)
    return target


def _damage(run: str, name: str, data: bytes | None) -> None:
    path = os.path.join(run, name)
    if data is None:
        os.remove(path)
    else:
        _write(path, data)


def _metrics_lines(run: str) -> list[str]:
    with open(os.path.join(run, runs.METRICS)) as f:
        return f.read().splitlines()


RUN_DIR_CASES = {
    # name: (how the directory is prepared, extra flags, message)
    "a finished run rerun without --resume": (None, [], "already holds a run"),
    "a damaged checkpoint": ((runs.CHECKPOINT, b"\x93garbage"), ["--resume"],
                             "checkpoint.msgpack cannot be resumed: it is damaged"),
    "an empty checkpoint": ((runs.CHECKPOINT, b""), ["--resume"],
                            "checkpoint.msgpack cannot be resumed"),
    "a missing history": ((runs.METRICS, None), ["--resume"],
                          "metrics.jsonl is missing but the checkpoint is at generation 4"),
    "a short history": ("short", ["--resume"],
                        "metrics.jsonl ends at generation 2 but the checkpoint is at "
                        "generation 4"),
    "a damaged history line": ("middle", ["--resume"], "metrics.jsonl:1 is not a JSON record"),
    "a damaged config": ((runs.CONFIG, b"{not json"), ["--resume"], "config.json is damaged"),
    "a config that is not a mapping": ((runs.CONFIG, b"[1, 2]"), ["--resume"],
                                       "config.json holds no run config"),
    "fewer generations than the checkpoint": (None, ["--resume", "--generations", "2"],
                                              "the checkpoint is at generation 4, past the 2 "
                                              "asked for"),
    "another hidden size": (None, ["--resume", "--hidden", "16"],
                            "differs in: net.hidden_size"),
    "another seed": (None, ["--resume", "--seed", "3"], "differs in: seed"),
    "the other outer loop": (None, ["--resume", "--outer", "gradient"], "differs in:"),
}


@pytest.mark.parametrize("case", list(RUN_DIR_CASES))
def test_a_run_directory_is_never_mixed_or_guessed(case, finished, tmp_path, capsys):
    prepare, flags, message = RUN_DIR_CASES[case]
    run = _copy(finished, tmp_path)
    if prepare == "short":
        _write(os.path.join(run, runs.METRICS), (_metrics_lines(run)[0] + "\n").encode())
    elif prepare == "middle":
        lines = _metrics_lines(run)
        _write(os.path.join(run, runs.METRICS), ("{torn\n" + "\n".join(lines[1:]) + "\n").encode())
    elif prepare is not None:
        _damage(run, *prepare)
    argv = for_run(flags) + ["--out", run]
    before = {name: open(os.path.join(run, name), "rb").read()
              for name in os.listdir(run) if os.path.isfile(os.path.join(run, name))}
    line = refused(argv, capsys)
    assert message in line, line
    after = {name: open(os.path.join(run, name), "rb").read() for name in before}
    assert after == before  # a refused run touches nothing


def test_resume_needs_a_run_and_out_must_be_a_directory(tmp_path, capsys):
    assert "nothing to resume in" in refused(TINY + ["--resume", "--out", str(tmp_path)], capsys)
    missing = str(tmp_path / "misspelt")
    assert "nothing to resume in" in refused(TINY + ["--resume", "--out", missing], capsys)
    a_file = _write(tmp_path / "file", b"x")
    assert "is a file, not a run directory" in refused(TINY + ["--out", a_file], capsys)
    assert f"{a_file} is a file, not a directory" in refused(TINY + ["--out", a_file + "/run"],
                                                             capsys)


def test_a_foreign_checkpoint_is_refused_by_shape(finished, tmp_path, capsys):
    """A checkpoint whose arrays have other shapes (another network's) under a config that
    matches is named, not loaded."""
    import flax.serialization
    import numpy as np

    run = _copy(finished, tmp_path)
    path = os.path.join(run, runs.CHECKPOINT)
    with open(path, "rb") as f:
        record = flax.serialization.msgpack_restore(f.read())

    def widened(tree):  # every array one column wider
        if isinstance(tree, dict):
            return {k: widened(v) for k, v in tree.items()}
        if isinstance(tree, np.ndarray) and tree.ndim:
            return np.concatenate([tree, tree[..., :1]], axis=-1)
        return tree

    _write(path, flax.serialization.msgpack_serialize(widened(record)))
    line = refused(TINY + ["--resume", "--out", run], capsys)
    assert "checkpoint.msgpack cannot be resumed" in line and "has shape" in line, line


def test_overwrite_replaces_the_run_and_its_outputs(finished, tmp_path):
    run = _copy(finished, tmp_path)
    _write(os.path.join(run, "checkpoint.msgpack.tmp"), b"half a checkpoint")
    es_abcd.main(TINY + ["--generations", "2", "--overwrite", "--out", run])
    generations = [json.loads(line)["generation"] for line in _metrics_lines(run)]
    assert generations == [2]
    assert not os.path.exists(os.path.join(run, "checkpoint.msgpack.tmp"))


def test_zero_generations_reports_the_starting_point(tmp_path):
    rows = es_abcd.main(TINY + ["--generations", "0", "--out", str(tmp_path / "run")])
    assert rows[0]["model"] == "evolved rule" and _metrics_lines(str(tmp_path / "run")) == []
    assert rows[0]["note"] == "no generation ran: this is the starting rule"


def test_a_generation_without_a_finite_member_says_so():
    record = {"generation": 10, "best_fitness": None, "mean_fitness": None,
              "mean_accuracy": 0.0, "nonfinite": 64, "finite_members": 0, "valid_nll": None,
              "valid_accuracy": 0.0, "lifetimes_per_s": 1.0, "synapse_updates_per_s": 1.0}
    line = es_abcd.progress_line(record, valid_sequences=512)
    assert "no finite member of 64" in line and "valid NLL none finite" in line
    assert "(512 seqs)" in line and "1.0000" not in line


# --- kills --------------------------------------------------------------------------------


class Killed(BaseException):
    """A kill: nothing in the run may catch it."""


def _kill_writes(monkeypatch, name: str, nth: int, written: float) -> None:
    """Die on the ``nth`` atomic write of the file ``name``, after writing the fraction
    ``written`` of its temporary file (0: before writing anything)."""
    real, calls = runs.atomic_write, []

    def atomic_write(path, data):
        if os.path.basename(os.fspath(path)) == name:
            calls.append(path)
            if len(calls) == nth:
                if written:
                    with open(f"{os.fspath(path)}.tmp", "wb") as f:
                        f.write(data[: int(len(data) * written)])
                raise Killed(name)
        return real(path, data)

    monkeypatch.setattr(runs, "atomic_write", atomic_write)


def _kill_appends(monkeypatch, nth: int, written: float) -> None:
    """Die on the ``nth`` metrics append, after writing the fraction ``written`` of it."""
    real, calls = runs.MetricsLog.append, []

    def append(self, record):
        calls.append(record)
        if len(calls) == nth:
            line = (json.dumps(record) + "\n").encode()
            with open(self.path, "ab") as f:
                f.write(line[: int(len(line) * written)])
            raise Killed("append")
        return real(self, record)

    monkeypatch.setattr(runs.MetricsLog, "append", append)


KILLS = {
    # phase: (what dies, and where)
    "before the first checkpoint": lambda mp: _kill_writes(mp, runs.CHECKPOINT, 1, 0.0),
    "while writing a checkpoint": lambda mp: _kill_writes(mp, runs.CHECKPOINT, 2, 0.5),
    "just after a checkpoint": lambda mp: _kill_appends(mp, 2, 0.0),
    "while appending a record": lambda mp: _kill_appends(mp, 2, 0.5),
    "while writing the report": lambda mp: _kill_writes(mp, "report.json", 1, 0.3),
    "while drawing the plots": lambda mp: _kill_writes(mp, "weights.png", 1, 0.3),
}


def _outcome(run: str) -> dict:
    """What a finished run directory holds, less what measures speed."""
    records = [{k: v for k, v in json.loads(line).items() if k not in evolve.TIMING_FIELDS}
               for line in _metrics_lines(run)]
    with open(os.path.join(run, runs.CHECKPOINT), "rb") as f:
        checkpoint = f.read()
    with open(os.path.join(run, "report.json")) as f:
        report = json.load(f)
    with open(os.path.join(run, "report.md")) as f:
        markdown = f.read()
    return {"files": sorted(os.listdir(run)), "records": records, "checkpoint": checkpoint,
            "rows": report["rows"], "coeffs": report["evolved_coeffs"], "report.md": markdown}


@pytest.fixture(scope="session")
def straight(tmp_path_factory) -> dict:
    out = str(tmp_path_factory.mktemp("straight") / "run")
    es_abcd.main([f for f in TINY if f != "--no-plots"] + ["--out", out])
    return _outcome(out)


@pytest.mark.parametrize("phase", list(KILLS))
def test_a_run_killed_at_any_phase_resumes_to_the_uninterrupted_result(
        phase, straight, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    flags = [f for f in TINY if f != "--no-plots"] + ["--out", out]
    with monkeypatch.context() as mp:
        KILLS[phase](mp)
        with pytest.raises(Killed):
            es_abcd.main(flags)
    es_abcd.main(flags + ["--resume"])
    assert _outcome(out) == straight


def test_a_kill_during_the_resume_itself_loses_nothing(straight, tmp_path, monkeypatch):
    """Killed while writing a checkpoint, then killed again while the resume rewrites the
    history: the third start still ends where an uninterrupted run does."""
    out = str(tmp_path / "run")
    flags = [f for f in TINY if f != "--no-plots"] + ["--out", out]
    with monkeypatch.context() as mp:
        _kill_writes(mp, runs.CHECKPOINT, 2, 0.5)
        with pytest.raises(Killed):
            es_abcd.main(flags)
    with monkeypatch.context() as mp:
        _kill_writes(mp, runs.METRICS, 1, 0.5)  # the resume's rewrite of metrics.jsonl
        with pytest.raises(Killed):
            es_abcd.main(flags + ["--resume"])
    es_abcd.main(flags + ["--resume"])
    assert _outcome(out) == straight
