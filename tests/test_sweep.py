"""experiments/sweep.py: a cell is its es_abcd.py run, killed sweeps redo no finished cell,
and two jax.distributed processes agree with one."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import es_abcd  # noqa: E402
import sweep  # noqa: E402

from plastix import cli  # noqa: E402

TINY = ["--num-pairs", "2", "--hidden", "8", "--pop", "4", "--batch", "2",
        "--generations", "4", "--log-every", "2", "--eval-batch", "16"]
# Two compiled groups (rules), each of two cells differing in seed and lr.
AXES = ["--vary", "rule-out=ABCD_lr,hebb", "--vary", "seed=0,1", "--vary", "lr=0.2,0.1"]
TIMING = ("seconds", "lifetimes_per_s", "synapse_updates_per_s")


def records(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def results(out: str) -> list[dict]:
    with open(os.path.join(out, "results.jsonl")) as f:
        return [json.loads(line) for line in f]


def close(a: dict, b: dict, rtol=1e-4) -> bool:
    return a.keys() == b.keys() and all(
        np.allclose(a[k], b[k], rtol=rtol, atol=1e-6) if isinstance(a[k], float) else a[k] == b[k]
        for k in a)


@pytest.fixture(scope="session")
def swept(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("sweep") / "s")
    sweep.main([*AXES, "--out", out, "--", *TINY])
    return out


def test_a_cell_is_its_es_abcd_run(swept, tmp_path):
    """Each cell's records and held-out row equal ``es_abcd.py`` run alone on its flags."""
    flags = ["--rule-out", "hebb", "--seed", "1", "--lr", "0.1"]
    alone = str(tmp_path / "alone")
    row = es_abcd.main([*TINY, *flags, "--out", alone, "--no-plots",
                        "--report", "rule"])[0]
    cell = os.path.join(swept, "cells", "rule-out=hebb__seed=1__lr=0.1")
    assert len(records(cell)) == 2
    for a, b in zip(records(cell), records(alone)):
        assert close(a, b), (a, b)
    mine = next(r for r in results(swept) if r["cell"] == os.path.basename(cell))
    assert close({k: mine[k] for k in row}, row)
    # The cell directory is an es_abcd.py run: it continues there (in a copy: the sweep
    # is shared by the tests).
    cell = shutil.copytree(cell, tmp_path / "cell")
    es_abcd.main([*TINY, *flags, "--generations", "6", "--out", str(cell),
                  "--resume", "--no-plots", "--report", "rule"])
    assert [r["generation"] for r in records(cell)] == [2, 4, 6]


def test_table_and_heatmap(swept):
    with open(os.path.join(swept, "results.md")) as f:
        table = f.read()
    assert "| rule-out | lr | seeds |" in table and table.count("| 2 |") == 4
    assert os.path.getsize(os.path.join(swept, "heatmap.png")) > 0
    assert len(results(swept)) == 8


def test_a_killed_sweep_redoes_no_finished_cell(swept, tmp_path, monkeypatch):
    """Killed in its second group, then resumed: the first group's cells are not run again,
    the second resumes from its checkpoints, and the results equal the uninterrupted run."""
    out = str(tmp_path / "s")
    argv = [*AXES, "--out", out, "--", *TINY]
    run_cells, ran = sweep.run_cells, []

    def killed_in_group_2(evolution, states, *args, **kwargs):
        ran.append((evolution.net.rule_names(), int(np.min(args[1]))))
        if len(ran) == 3:
            raise KeyboardInterrupt  # the second group's first block
        return run_cells(evolution, states, *args, **kwargs)

    monkeypatch.setattr(sweep, "run_cells", killed_in_group_2)
    with pytest.raises(KeyboardInterrupt):
        sweep.main(argv)
    ran.clear()
    monkeypatch.setattr(sweep, "run_cells", lambda *a, **k: ran.append(a[0].net.rule_names())
                        or run_cells(*a, **k))
    sweep.main([*argv[:-len(TINY) - 1], "--resume", "--", *TINY])
    assert len(ran) == 2 and len(set(map(str, ran))) == 1  # one group, both its blocks
    for a, b in zip(results(out), results(swept)):
        assert close(a, b)


def test_a_finished_cell_with_a_damaged_report_is_reported_again(swept, tmp_path):
    out = str(tmp_path / "s")
    shutil.copytree(swept, out)
    cell = os.path.join(out, "cells", "rule-out=ABCD_lr__seed=0__lr=0.2")
    with open(os.path.join(cell, "report.json"), "w") as f:
        f.write('{"rows": []}')
    sweep.main([*AXES, "--out", out, "--resume", "--", *TINY])
    for a, b in zip(results(out), results(swept)):
        assert close(a, b)


def test_bad_grids_are_refused_in_one_line(tmp_path, capsys):
    for argv, message in (
        ([], "nothing to sweep"),
        (["--vary", "seed"], "write FLAG=V1,V2"),
        (["--vary", "hidden=8,0"], "--vary hidden value '0': must be an integer >= 1"),
        (["--vary", "seed=0,1", "--", "--outer", "gradient"], "a sweep runs ES"),
        (["--vary", "seed=0,1", "--", "--out", "x"], "--out is the sweep's"),
    ):
        # In this process, through the script's own entry point.
        with pytest.raises(SystemExit) as exit_:
            cli.run(sweep.main, ["--out", str(tmp_path / "s"), *argv])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("argv, message", [
    (["--resume"], "--resume needs --out DIR"),
    (["--overwrite"], "--overwrite needs --out DIR"),
    (["--coordinator", "localhost:1"], "--coordinator needs --out DIR"),
    (["--", "--hidden", "0"], "the flags after -- (every cell's): argument --hidden"),
])
def test_a_sweep_refused_without_out_makes_no_directory(argv, message, tmp_path, monkeypatch,
                                                        capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.run(sweep.main, ["--vary", "seed=0,1", *argv])
    assert exit_.value.code == cli.EXIT_USAGE and message in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # end to end: three processes, each compiling the sweep
def test_two_processes_agree_with_one(tmp_path):
    """The same sweep in 2 jax.distributed processes of 2 CPU devices each and in 1 process
    of 4 devices: one mesh of 4 devices both times, the same results."""
    argv = [os.path.join(ROOT, "experiments", "sweep.py"), "--vary", "seed=0,1",
            "--", *TINY]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    one = subprocess.run([sys.executable, *argv[:1], "--out", str(tmp_path / "one"), *argv[1:]],
                         env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, argv[0], "--out", str(tmp_path / "two"), "--coordinator",
         f"localhost:{port}", "--num-processes", "2", "--process-id", str(i), *argv[1:]],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-2000:]
    assert "4 cpu device(s) in 2 process(es)" in outputs[0][0]
    for a, b in zip(results(str(tmp_path / "one")), results(str(tmp_path / "two"))):
        assert close(a, b, rtol=1e-5)
    cell = "seed=1"
    assert all(close(a, b, rtol=1e-5) for a, b in zip(
        records(str(tmp_path / "one" / "cells" / cell)),
        records(str(tmp_path / "two" / "cells" / cell))))
