"""experiments/sweep.py's grammar under bad input: every axis, value and config file that
would run a grid other than the one written (an axis twice, a value twice, an empty axis)
or fail later (a flag es_abcd.py lacks, a value its flag refuses, a huge grid) is refused
in one ``error:`` line naming it, before any cell is built or any file written.

Every case runs in this process through `plastix.cli.run`, as ``python sweep.py`` would.
"""

import json
import os
import sys

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import sweep  # noqa: E402
from conftest import refused_line  # noqa: E402

# Every cell's flags: none of them an axis below (nothing here runs a cell).
TINY = ["--num-pairs", "2", "--batch", "2", "--generations", "1", "--eval-batch", "4"]


def refused(argv: list[str], tmp_path, capsys) -> str:
    """The one error line of a sweep refused with exit status 2; its --out never made."""
    out = tmp_path / "s"
    line = refused_line(sweep.main, ["--out", str(out), *argv], capsys)
    assert not out.exists()
    return line

@pytest.mark.parametrize("argv, message", [
    # the grid the user wrote is not the one that would run
    (["--vary", "seed=0,1", "--vary", "seed=2,3"], "--vary seed is given twice"),
    (["--vary", "pop=2,4", "--vary", "population=6,8"],
     "--vary population sets what --vary pop sets"),
    (["--vary", "seed=0,0"], "values '0' and '0' are the same value"),
    (["--vary", "seed=1,+1"], "values '1' and '+1' are the same value"),
    (["--vary", "lr=0.1,0.10"], "values '0.1' and '0.10' are the same value"),
    (["--vary", "lr=1e-1,0.1"], "values '1e-1' and '0.1' are the same value"),
    (["--vary", "seed=0,1", "--", "--seed", "3"], "--vary seed and --seed after -- both set it"),
    (["--vary", "rule-out=hebb,hebb(),oja"], "cell rule-out=hebb__: rule name 'hebb()'"),
    # empty axes and values
    (["--vary", "seed="], "--vary seed has no values"),
    (["--vary", "seed=,"], "--vary seed has an empty value in ','"),
    (["--vary", "seed=0,,1"], "--vary seed has an empty value"),
    (["--vary", "rule-out=modulated(hebb,0.5"], "--vary rule-out has unbalanced brackets"),
    # axes that are not settings of a cell's run
    (["--vary", "bogus=1,2"], "--vary bogus is not an es_abcd.py flag"),
    (["--vary", "hiden=1,2"], "(did you mean hidden?)"),
    (["--vary", "help=1,2"], "--vary help is a switch"),
    (["--vary", "antithetic=true,false"], "--vary antithetic is a switch"),
    (["--vary", "report=rule,full"], "--vary report is not an axis"),
    (["--vary", "log-every=1,2"], "--vary log-every is not an axis"),
    (["--vary", "outer=es,gradient"], "--vary outer is not an axis: a sweep runs ES"),
    (["--vary", "resume=1,2"], "--resume is the sweep's to set"),
    # values their flags refuse, named by the axis, not by a cell
    (["--vary", "seed=a,b"], "--vary seed value 'a': must be an integer"),
    (["--vary", "hidden=0,4"], "--vary hidden value '0': must be an integer >= 1"),
    (["--vary", "lr=nan,0.1"], "--vary lr value 'nan': must be a finite number"),
    (["--vary", "seed=99999999999"], "--vary seed value '99999999999'"),
    (["--vary", "granularity=shared,nope"], "value 'nope' is not one of ['shared'"),
    # the flags every cell shares, named once
    (["--vary", "seed=0,1", "--", "--bogus"],
     "the flags after -- (every cell's): unrecognized arguments: --bogus"),
    (["--vary", "seed=0,1", "--", "--hidden", "0"],
     "the flags after -- (every cell's): argument --hidden"),
    (["--vary", "seed=0,1", "--", "--help"], "--help after --"),
    # a grid too large to be meant
    (["--vary", "seed=" + ",".join(map(str, range(200))),
      "--vary", "lr=" + ",".join(str(0.01 * (i + 1)) for i in range(100))],
     "the grid has 20000 cells (200 seed x 100 lr), more than 10000"),
    # a rule the factory's signature refuses, nested too deep
    (["--vary", "rule-out=modulated(hebb, 0.5, 0.7),hebb"],
     "expected modulated(<rule>, trace_decay"),
    (["--vary", "rule-out=" + "modulated(" * 3000 + "hebb" + ")" * 3000 + ",hebb"],
     "nested 3000 deep, more than 16"),
])
def test_bad_grids_are_refused_by_name(argv, message, tmp_path, capsys):
    line = refused([*argv, *([] if "--" in argv else ["--"]), *TINY], tmp_path, capsys)
    assert message in line, line


@pytest.mark.parametrize("content, message", [
    ("null", "expected a JSON object"),
    ("[1, 2]", "got [1, 2]"),
    ("3", "got 3"),
    ('{"vary": [1]}', '"vary" must be an object'),
    ('{"vary": {"seed": "0,1"}}', "\"vary\" 'seed' must be a non-empty list of values"),
    ('{"vary": {"seed": []}}', "must be a non-empty list"),
    ('{"vary": {"seed": [0, ""]}}', "'seed' has an empty value"),
    ('{"vary": {"seed": [0, 1]}, "flags": {"--hidden": 4}}', '"flags" must be a list'),
    ('{"vary": {"seed": [0, 1.5]}}', "vary seed value '1.5': must be an integer"),
    ('{"vary": {"lr": [0.1, 1e-1]}}', "values '0.1' and '0.1' are the same value"),
    ('{"vary": {"seed": [0, 1], "--seed": [2]}}', "vary seed is given twice"),
    ('{"oops": 1}', "expected keys 'vary' and 'flags', got ['oops']"),
    ("{not json", "not JSON"),
])
def test_bad_config_files_are_refused_naming_the_file(content, message, tmp_path, capsys):
    config = tmp_path / "grid.json"
    config.write_text(content)
    line = refused(["--config", str(config), "--", *TINY], tmp_path, capsys)
    assert f"--config {config}" in line and message in line, line


def test_an_axis_in_the_config_file_and_on_the_command_line_is_refused(tmp_path, capsys):
    config = tmp_path / "grid.json"
    config.write_text(json.dumps({"vary": {"seed": [0, 1]}}))
    line = refused(["--config", str(config), "--vary", "seed=2,3", "--", *TINY], tmp_path,
                   capsys)
    assert f"is given twice (in --config {config} and in --vary)" in line, line


def test_cells_that_would_share_a_directory_are_refused(tmp_path, capsys):
    corpus = tmp_path / "a b.txt", tmp_path / "a_b.txt"
    for path in corpus:
        path.write_text("to be or not to be " * 200)
    line = refused(["--vary", f"text-path={corpus[0]},{corpus[1]}", "--", "--task", "text",
                    "--hidden", "4", "--pop", "2", "--batch", "2", "--generations", "1",
                    "--eval-batch", "4"], tmp_path, capsys)
    assert "would share the directory cells/text-path=" in line, line


def test_a_value_may_hold_commas_inside_brackets():
    assert sweep.parse_axis("rule-out=modulated(hebb, 0.9),oja") == (
        "rule-out", ["modulated(hebb, 0.9)", "oja"])
    assert sweep.parse_axis("--seed= 0 , 1") == ("seed", ["0", "1"])


def test_a_table_without_other_axes_has_no_empty_column():
    summary = [{"values": {}, "seeds": 2, "test_accuracy": (0.5, 0.1), "test_bits": (2.0, 0.0),
                "test_nll": (1.0, 0.0)}]
    table = sweep.markdown_table(summary, {"seed": ["0", "1"]}).splitlines()
    assert table[0] == "| seeds | test accuracy | test bits/token |"
    assert table[1] == "|---|---|---|"
    assert table[2] == "| 2 | 0.500 ± 0.100 | 2.000 ± 0.000 |"
