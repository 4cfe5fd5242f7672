"""Resume integrity: a run continues only from a whole history (every logged block once, in
order) and from the data files it began on (recorded in config.json by size and sha256).

Each refusal is one line naming the file and the step or the data file, and leaves the run
directory as it was; a legitimate resume (other block sizes, an extended run, a config
from before files were recorded) still goes on.
"""

import itertools
import json
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import es_abcd  # noqa: E402
import sweep  # noqa: E402

from conftest import refused_line, small_train_run  # noqa: E402
from plastix import runs, tasks, train  # noqa: E402

TINY = ["--num-pairs", "2", "--hidden", "8", "--batch", "2", "--generations", "6",
        "--log-every", "2", "--eval-batch", "16", "--pop", "4", "--no-plots", "--report", "rule"]


refused = refused_line

def files_of(run: str) -> dict[str, bytes]:
    return {name: open(os.path.join(run, name), "rb").read() for name in sorted(os.listdir(run))
            if os.path.isfile(os.path.join(run, name))}


def lines_of(path: str) -> list[str]:
    with open(path) as f:
        return f.read().splitlines()


def write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))


# Each case: how the records (one line each, oldest first) are damaged, and what the refusal
# says of the history of generations 2, 4 and 6 (blocks of 2).
DAMAGE = {
    "a middle record removed": (lambda ls: [ls[0], ls[2]], "has no record of generations 3 to 4"),
    "a record duplicated": (lambda ls: [ls[0], ls[1], ls[1], ls[2]],
                            "logs the record of generation 4 twice"),
    "two records swapped": (lambda ls: [ls[1], ls[0], ls[2]],
                            ("logs the record of generation 2 after that of generation 4 "
                             "(records out of order)")),
    "the first record removed": (lambda ls: ls[1:], "has no record of generations 1 to 2"),
}


# --- the history, record by record (no run) ---------------------------------------------------


def _blocks(tmp_path, bounds, with_start=True) -> runs.MetricsLog:
    """A log of one record per block ``bounds[i] .. bounds[i + 1]``."""
    log = runs.MetricsLog(tmp_path / runs.METRICS, step_key="generation")
    for first, step in itertools.pairwise(bounds):
        record = {"generation": step, "loss": 1.0 / step}
        log.append(runs.block_record(record, first, "generation") if with_start else record)
    return log


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_history_is_refused_naming_the_step(case, tmp_path):
    damage, message = DAMAGE[case]
    log = _blocks(tmp_path, [0, 2, 4, 6])
    write_lines(log.path, damage(lines_of(log.path)))
    with pytest.raises(ValueError) as refusal:
        runs.check_history(log, 6, total=6)
    line = str(refusal.value)
    assert line == (f"{log.path} {message}: the run's history is damaged; start afresh with "
                    f"--overwrite")


@pytest.mark.parametrize("case", ["a record duplicated", "two records swapped"])
def test_a_history_from_before_blocks_carried_their_start_is_checked_for_order(case, tmp_path):
    damage, message = DAMAGE[case]
    log = _blocks(tmp_path, [0, 2, 4, 6], with_start=False)
    runs.check_history(log, 6)  # whole: it resumes
    write_lines(log.path, damage(lines_of(log.path)))
    with pytest.raises(ValueError, match=re.escape(f"{message}: the run's history is damaged")):
        runs.check_history(log, 6)


def test_blocks_of_any_size_and_an_extended_run_follow_on(tmp_path):
    """A run of 5 generations in blocks of 2 (its last block short), extended to 11 in blocks
    of 3 after an older part logged without block starts: every block is there."""
    old = _blocks(tmp_path, [0, 2], with_start=False)
    for first, step in [(2, 4), (4, 5), (5, 8), (8, 11)]:
        old.append(runs.block_record({"generation": step}, first, "generation"))
    runs.check_history(old, 11, total=11)
    # Records past the checkpoint (a kill between the record and the checkpoint) are not
    # the history it resumes from.
    runs.check_history(old, 8, total=11)
    with pytest.raises(ValueError, match=r"ends at generation 8 but the checkpoint is at "
                                         r"generation 9"):
        runs.check_history(old, 9)


# --- es_abcd.py ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> str:
    """A finished tiny run: records at generations 2, 4 and 6."""
    out = str(tmp_path_factory.mktemp("finished") / "run")
    es_abcd.main(TINY + ["--out", out])
    return out


def _copy(run: str, target) -> str:
    import shutil

    shutil.copytree(run, target)
    return str(target)


@pytest.mark.parametrize("case", [c for c in DAMAGE if c != "the first record removed"])
def test_es_abcd_refuses_to_resume_a_damaged_history(case, finished, tmp_path, capsys):
    damage, message = DAMAGE[case]
    run = _copy(finished, tmp_path / "run")
    metrics = os.path.join(run, runs.METRICS)
    assert [json.loads(line)["block_start"] for line in lines_of(metrics)] == [0, 2, 4]
    write_lines(metrics, damage(lines_of(metrics)))
    before = files_of(run)
    line = refused(es_abcd.main, TINY + ["--generations", "8", "--resume", "--out", run], capsys)
    assert line == (f"error: {metrics} {message}: the run's history is damaged; start afresh "
                    f"with --overwrite")
    assert files_of(run) == before  # a refused resume touches nothing


def test_a_whole_history_resumes_and_extends(finished, tmp_path):
    run = _copy(finished, tmp_path / "run")
    es_abcd.main(TINY + ["--generations", "7", "--resume", "--out", run])
    records = [json.loads(line) for line in lines_of(os.path.join(run, runs.METRICS))]
    assert [(r["block_start"], r["generation"]) for r in records] == [(0, 2), (2, 4), (4, 6),
                                                                       (6, 7)]


def _corpus(path, seed: int) -> str:
    """A small UTF-8 text, different for each ``seed``."""
    words = ["the", "plastic", "rule", "learns", "while", "it", "lives", "and", "forgets"]
    text = " ".join(words[(i * (seed + 3)) % len(words)] for i in range(600)) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return str(path)


TEXT = ["--task", "text", "--seq-len", "8", "--hidden", "8", "--batch", "2", "--generations", "2",
        "--log-every", "2", "--eval-batch", "4", "--pop", "4", "--no-plots", "--report", "rule"]


def test_es_abcd_refuses_a_corpus_rewritten_under_its_path(tmp_path, capsys):
    corpus = _corpus(tmp_path / "corpus.txt", 0)
    run = str(tmp_path / "run")
    es_abcd.main(TEXT + ["--text-path", corpus, "--out", run])
    saved = runs.read_config(run)[runs.DATA_FILES]
    assert saved == {corpus: {"size": os.path.getsize(corpus),
                              "sha256": tasks.corpus_sha256(corpus)}}

    _corpus(corpus, 1)  # the same path, other text
    before = files_of(run)
    line = refused(es_abcd.main, TEXT + ["--text-path", corpus, "--generations", "4",
                                         "--resume", "--out", run], capsys)
    assert line.startswith(f"error: {corpus} has changed since the run began (sha256 differs): "
                           f"it was {saved[corpus]['size']} bytes"), line
    assert line.endswith("put the original back or start afresh with --overwrite"), line
    assert files_of(run) == before

    # A config from before data files were recorded still resumes, and records the file.
    config = runs.read_config(run)
    del config[runs.DATA_FILES]
    runs.write_config(run, config)
    es_abcd.main(TEXT + ["--text-path", corpus, "--generations", "4", "--resume", "--out", run])
    assert runs.read_config(run)[runs.DATA_FILES][corpus]["sha256"] == tasks.corpus_sha256(corpus)
    assert [json.loads(line)["generation"]
            for line in lines_of(os.path.join(run, runs.METRICS))] == [2, 4]


def test_a_file_is_hashed_once_per_version(tmp_path):
    path = _corpus(tmp_path / "c.txt", 0)
    first = runs.file_fingerprint(path)
    assert runs.file_fingerprint(path) is not first and runs.file_fingerprint(path) == first
    _corpus(path, 1)
    os.utime(path, ns=(1, 1))  # another version even where the clock is coarse
    assert runs.file_fingerprint(path)["sha256"] != first["sha256"]
    assert runs.file_fingerprint(tasks.TINY_SHAKESPEARE)["sha256"] == tasks.TINY_SHAKESPEARE_SHA256


# --- sweep.py -------------------------------------------------------------------------------


def test_sweep_refuses_to_resume_a_cell_with_a_damaged_history(tmp_path, capsys):
    out = str(tmp_path / "s")
    flags = [f for f in TINY if f not in ("--no-plots", "--report", "rule")]
    sweep.main(["--vary", "seed=0,1", "--out", out, "--", *flags])
    cell = os.path.join(out, "cells", "seed=1")
    metrics = os.path.join(cell, runs.METRICS)
    write_lines(metrics, DAMAGE["a middle record removed"][0](lines_of(metrics)))
    before = files_of(cell)
    longer = [*flags[:flags.index("--generations")], "--generations", "8",
              *flags[flags.index("--generations") + 2:]]
    line = refused(sweep.main, ["--vary", "seed=0,1", "--out", out, "--resume", "--", *longer],
                   capsys)
    assert line == (f"error: {metrics} has no record of generations 3 to 4: the run's history "
                    f"is damaged; start afresh with --overwrite")
    assert files_of(cell) == before


# --- train.fit ------------------------------------------------------------------------------




@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    """A finished train.fit run: training records at 5, 10, 15, 20, valid at 10, 20."""
    model, task, config = small_train_run()
    run = tmp_path_factory.mktemp("trained") / "run"
    train.fit(model, task, config, run, print_fn=lambda _: None)
    return str(run)


TRAIN_DAMAGE = {
    # name: ({(step, split): copies kept} for the records not kept once, the refusal)
    "a training record removed": ({(10, "train"): 0}, "has no train record of steps 6 to 10"),
    "an evaluation removed": ({(10, "valid"): 0}, "has no valid record of steps 1 to 10"),
    "the last evaluation removed": ({(20, "valid"): 0}, "has no valid record of step 20"),
    "a training record duplicated": ({(15, "train"): 2},
                                     "logs the train record of step 15 twice"),
}


@pytest.mark.parametrize("case", list(TRAIN_DAMAGE))
def test_train_fit_refuses_to_resume_a_damaged_history(case, trained, tmp_path):
    copies, message = TRAIN_DAMAGE[case]
    run = _copy(trained, tmp_path / "run")
    metrics = os.path.join(run, runs.METRICS)
    kept = []
    for line in lines_of(metrics):
        record = json.loads(line)
        kept += [line] * copies.get((record["step"], record["split"]), 1)
    write_lines(metrics, kept)
    before = files_of(run)
    model, task, config = small_train_run()
    with pytest.raises(ValueError) as refusal:
        train.fit(model, task, config, run, print_fn=lambda _: None)
    assert str(refusal.value) == (f"{metrics} {message}: the run's history is damaged; start "
                                  f"afresh with --overwrite")
    assert files_of(run) == before


def test_train_fit_refuses_a_data_file_rewritten_under_its_path(tmp_path):
    model, task, config = small_train_run()
    config = train.TrainConfig(**{**vars(config), "steps": 10})
    corpus = _corpus(tmp_path / "corpus.txt", 0)
    run = tmp_path / "run"
    train.fit(model, task, config, run, data_files=[corpus], print_fn=lambda _: None)
    assert corpus in runs.read_config(run)[runs.DATA_FILES]
    with open(corpus, "a") as f:
        f.write("more\n")
    before = files_of(str(run))
    with pytest.raises(ValueError, match=rf"^{corpus} has changed since the run began \(size and "
                                         rf"sha256 differ\): "):
        train.fit(model, task, config, run, data_files=[corpus], print_fn=lambda _: None)
    assert files_of(str(run)) == before


# --- text.py --------------------------------------------------------------------------------


def test_text_refuses_a_result_computed_on_a_corpus_since_rewritten(tmp_path, capsys):
    import text

    corpus = _corpus(tmp_path / "corpus.txt", 0)
    out = str(tmp_path / "text")
    argv = ["--corpus", corpus, "--out", out, "--lengths", "20", "--test-chars", "120",
            "--min-windows", "3", "--no-plots", "--parts", "ngrams"]
    text.main(argv)
    result = os.path.join(out, "ngrams", "result.json")
    with open(result) as f:
        recorded = json.load(f)
    assert recorded["corpus"] == runs.file_fingerprint(corpus)

    _corpus(corpus, 1)
    before = files_of(os.path.dirname(result))
    line = refused(text.main, argv, capsys)
    assert line.startswith(f"error: {corpus} has changed since the run began (sha256 differs): "
                           f"it was {recorded['corpus']['size']} bytes"), line
    assert line.endswith(f"{os.path.dirname(result)} holds a result computed on the original: "
                         f"put it back or choose another --out"), line
    assert files_of(os.path.dirname(result)) == before

    # A result from before the corpus was recorded is read back as it is.
    del recorded["corpus"]
    runs.write_json(result, recorded)
    assert text.main([*argv, "--report-only"])["ngrams"] == recorded
