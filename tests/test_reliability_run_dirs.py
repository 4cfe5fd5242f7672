"""The rule every writer follows: a command writes only into a directory that is missing,
empty, or holds a run of its own kind (`plastix.runs.check_dir`); anything else is refused
by name with nothing changed, and --overwrite removes only what that kind writes, after the
whole new configuration has been checked.
"""

import json
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import es_abcd  # noqa: E402
import pattern_completion  # noqa: E402
import rule_recovery  # noqa: E402
import sweep  # noqa: E402
import text  # noqa: E402

from conftest import refused_line  # noqa: E402
from plastix import runs  # noqa: E402

TINY = ["--num-pairs", "2", "--hidden", "8", "--batch", "2", "--generations", "2",
        "--log-every", "2", "--eval-batch", "8", "--pop", "4", "--no-plots",
        "--report", "rule"]
TOY = runs.RunKind("toy", files=(*runs.RUN_FILES, "report.md"), state=runs.CONFIG,
                   recognise=runs.json_with_keys(runs.CONFIG, "toy"))
GRID = runs.RunKind("grid", files=("results.md",), dirs=("cells",), cells=TOY, state="cells")


def snapshot(path) -> dict[str, bytes]:
    """Every file under ``path`` by its relative path, with its bytes."""
    files = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                files[os.path.relpath(full, path)] = f.read()
    return files


def write(path, text: str = "x") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


refused = refused_line

# --- the rule, on kinds of its own ---------------------------------------------------------


def test_checking_changes_nothing_and_taking_marks_the_kind(tmp_path):
    out = tmp_path / "a" / "run"
    assert runs.check_dir(out, TOY, "new") is False
    assert not (tmp_path / "a").exists()  # a run refused later leaves nothing behind
    runs.take_dir(out, TOY, "new")
    assert os.listdir(out) == [runs.MARKER]
    assert runs.read_marker(out)["kind"] == "toy"


@pytest.mark.parametrize("mode", runs.CLAIM_MODES)
def test_a_file_no_run_of_the_kind_writes_is_refused_by_name_in_every_mode(mode, tmp_path):
    write(tmp_path / "notes.txt")
    write(tmp_path / runs.CONFIG, json.dumps({"toy": 1}))
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="holds files that a plastix toy run does not write "
                                         r"\(notes.txt\)"):
        runs.check_dir(tmp_path, TOY, mode)
    assert snapshot(tmp_path) == before


def test_a_run_of_another_kind_is_refused_naming_both(tmp_path):
    runs.take_dir(tmp_path, GRID, "new")
    with pytest.raises(ValueError, match="holds a plastix grid run, not a toy run"):
        runs.check_dir(tmp_path, TOY, "overwrite")


def test_a_file_of_the_kind_without_a_marker_is_not_taken_for_a_run(tmp_path):
    # A user's report.md is not a toy run's, though a toy run writes one.
    write(tmp_path / "report.md", "mine")
    with pytest.raises(ValueError, match=f"holds report.md but no {runs.MARKER}"):
        runs.check_dir(tmp_path, TOY, "overwrite")


def test_a_run_from_before_markers_is_recognised_and_marked(tmp_path):
    write(tmp_path / runs.CONFIG, json.dumps({"toy": 1}))
    write(tmp_path / runs.CHECKPOINT)
    assert runs.check_dir(tmp_path, TOY, "resume") is True
    runs.take_dir(tmp_path, TOY, "resume")
    assert runs.read_marker(tmp_path)["kind"] == "toy"


def test_a_damaged_or_newer_marker_is_refused(tmp_path):
    write(tmp_path / runs.MARKER, "{not json")
    with pytest.raises(ValueError, match=f"{runs.MARKER} is damaged"):
        runs.check_dir(tmp_path, TOY, "auto")
    write(tmp_path / runs.MARKER, json.dumps({"kind": "toy", "format": runs.MARKER_FORMAT + 1}))
    with pytest.raises(ValueError, match="written by a newer plastix"):
        runs.check_dir(tmp_path, TOY, "auto")


def test_what_is_left_of_a_run_without_its_config_gets_one_advice(tmp_path):
    runs.take_dir(tmp_path, TOY, "new")
    write(tmp_path / runs.CHECKPOINT)
    for mode in ("new", "resume"):
        with pytest.raises(ValueError, match="--overwrite") as error:
            runs.check_dir(tmp_path, TOY, mode)
        assert "continue it with --resume" not in str(error.value)


def test_overwrite_removes_only_the_kinds_files_and_cells(tmp_path):
    runs.take_dir(tmp_path, GRID, "new")
    write(tmp_path / "results.md")
    for cell in ("a", "b"):
        runs.take_dir(tmp_path / "cells" / cell, TOY, "new")
        write(tmp_path / "cells" / cell / runs.CONFIG, json.dumps({"toy": 1}))
    runs.claim(tmp_path, GRID, "overwrite")
    assert sorted(os.listdir(tmp_path)) == [runs.MARKER]


def test_overwrite_refuses_a_cell_holding_what_its_kind_does_not_write(tmp_path):
    runs.take_dir(tmp_path, GRID, "new")
    write(tmp_path / "results.md")
    runs.take_dir(tmp_path / "cells" / "a", TOY, "new")
    write(tmp_path / "cells" / "a" / "thesis.tex")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"thesis.tex"):
        runs.claim(tmp_path, GRID, "overwrite")
    assert snapshot(tmp_path) == before


# --- the commands ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> str:
    """A finished tiny es_abcd.py run."""
    out = str(tmp_path_factory.mktemp("finished") / "run")
    es_abcd.main(TINY + ["--out", out])
    return out


def test_sweep_overwrite_never_deletes_what_no_sweep_wrote(finished, tmp_path, capsys):
    mine = write(tmp_path / "thesis.tex", "three years")
    shutil.copytree(finished, tmp_path / "es_run")
    before = snapshot(tmp_path)
    line = refused(sweep.main, ["--vary", "seed=0,1", "--overwrite", "--out", tmp_path,
                                "--", *TINY], capsys)
    assert "es_run, thesis.tex" in line and "sweep" in line
    assert snapshot(tmp_path) == before and open(mine).read() == "three years"


def test_overwrite_keeps_the_old_run_when_the_new_configuration_is_refused(finished, tmp_path,
                                                                           capsys):
    run = str(tmp_path / "run")
    shutil.copytree(finished, run)
    before = snapshot(run)
    # Refused only once the network and its starting point are built.
    line = refused(es_abcd.main, [*TINY, "--init-mean", "delta", "--overwrite", "--out", run],
                   capsys)
    assert "--init-mean delta needs a readout rule with a teacher term" in line
    assert snapshot(run) == before


def test_sweep_overwrite_keeps_the_old_sweep_when_one_cell_is_refused(finished, tmp_path,
                                                                      capsys):
    out = tmp_path / "sweep"
    runs.take_dir(out, sweep.KIND, "new")
    write(out / "results.md", "the old table")
    shutil.copytree(finished, out / "cells" / "seed=0")
    before = snapshot(out)
    line = refused(sweep.main, ["--vary", "init-mean=zero,delta", "--overwrite", "--out", out,
                                "--", *TINY], capsys)
    assert "cell init-mean=delta: --init-mean delta needs" in line
    assert snapshot(out) == before


def test_a_rule_that_cannot_run_on_its_matrix_leaves_no_directory(tmp_path, capsys):
    out = tmp_path / "run"
    line = refused(es_abcd.main, [*TINY, "--rule-rec", "delta", "--out", out], capsys)
    assert "rule 'delta' needs mod" in line
    assert not out.exists()


def test_a_run_without_out_refused_late_leaves_no_new_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    refused(es_abcd.main, [*TINY, "--init-mean", "delta"], capsys)
    assert not (tmp_path / "runs").exists()


def test_an_es_run_never_starts_over_a_users_report(tmp_path, capsys):
    mine = write(tmp_path / "report.md", "my notes")
    line = refused(es_abcd.main, [*TINY, "--out", tmp_path], capsys)
    assert f"holds report.md but no {runs.MARKER}" in line
    assert os.listdir(tmp_path) == ["report.md"] and open(mine).read() == "my notes"


@pytest.mark.parametrize("module, argv", [
    (text, ["--parts", "ngrams", "--lengths", "100"]),
    (pattern_completion, []),
    (rule_recovery, []),
], ids=["text", "pattern_completion", "rule_recovery"])
def test_no_experiment_writes_its_report_into_an_es_run(module, argv, finished, tmp_path,
                                                        capsys):
    run = str(tmp_path / "run")
    shutil.copytree(finished, run)
    before = snapshot(run)
    line = refused(module.main, [*argv, "--out", run], capsys)
    assert "holds a plastix evolve run, not a" in line
    assert snapshot(run) == before
