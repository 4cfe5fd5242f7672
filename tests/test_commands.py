"""The ``plastix`` program (plastix.experiments): its commands, the console script that
installs it, and the checkout's experiments/*.py scripts that run the same modules."""

import importlib.util
import os
import re
import sys
import tomllib

import pytest

from plastix import cli, experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_command_has_a_module_with_a_main():
    for command, spec in experiments.COMMANDS.items():
        path = importlib.util.find_spec(f"plastix.experiments.{spec.module}").origin
        with open(path, encoding="utf-8") as f:
            source = f.read()
        assert "\ndef main(argv=None)" in source, command
        assert f"``plastix {command}``" in source, command  # its docstring names it


def test_the_console_script_is_the_plastix_program():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts == {"plastix": "plastix.experiments:main"}


def test_each_experiment_script_runs_its_command():
    """experiments/<module>.py names the command whose module is <module>."""
    scripts = {name[:-3] for name in os.listdir(os.path.join(ROOT, "experiments"))
               if name.endswith(".py") and name != "check_readme.py"}
    assert scripts == {spec.module for spec in experiments.COMMANDS.values()}
    for module in scripts:
        with open(os.path.join(ROOT, "experiments", f"{module}.py"), encoding="utf-8") as f:
            command = re.search(r'script\(__name__, "([\w-]+)"\)', f.read()).group(1)
        assert experiments.COMMANDS[command].module == module


def test_a_script_imported_beside_it_is_the_module_itself():
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    try:
        import local_learning
    finally:
        sys.path.pop(0)
    assert local_learning is importlib.import_module("plastix.experiments.local_learning")


def test_a_command_runs_its_module_under_the_program_name(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["plastix"])
    with pytest.raises(SystemExit) as exit_:
        experiments.main(["local-learning", "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: plastix local-learning [-h]")
    with pytest.raises(SystemExit) as exit_:
        experiments.main(["local-learning", "--epochs", "0"])
    assert exit_.value.code == cli.EXIT_USAGE
    assert capsys.readouterr().err == ("error: argument --epochs: must be an integer >= 1, "
                                       "got 0 (see plastix local-learning --help)\n")


@pytest.mark.parametrize("argv, message", [
    (["nope"], "argument COMMAND: invalid choice: 'nope'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_a_bad_command_is_refused_in_one_line(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["plastix"])
    with pytest.raises(SystemExit) as exit_:
        experiments.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == cli.EXIT_USAGE and len(err.splitlines()) == 1
    assert err.startswith("error: ") and message in err, err


def test_the_program_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        experiments.main(["--help"])
    out = capsys.readouterr().out
    assert all(f"\n  {command} " in out for command in experiments.COMMANDS), out
