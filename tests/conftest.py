"""The tests run under the device policy of the main job and the benchmarks.

Two tiers: the default one (``python -m pytest -q``, ``-m 'not slow'`` in pyproject.toml)
holds every contract, equivalence, bad-input and resume test; ``-m slow`` runs the long
end-to-end checks (experiment scripts writing their reports, learning to a criterion,
several processes, the notebook). Both are compile-bound: their programs are tiny, and
XLA's compilation is most of the time. Hence, for both tiers:

* **one persistent compilation cache** per checkout (``.pytest_cache/jax-compilation``), shared
  by the xdist workers and every script a test starts, so a program compiled by one test
  (a tiny ES generation, say) is read back by the next instead of compiled again;
* in the default tier only, **XLA's backend optimisation off**
  (``--xla_backend_optimization_level=0``): LLVM then compiles these programs about 2.5x
  faster, and they compute the same function. The second tier keeps the optimisation a
  user's run has, so the code generated for users is tested end to end as well.
"""

import functools
import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0"

# The suite runs in several processes at once (pytest-xdist): on a GPU none of them may
# take most of its memory up front, as JAX does by default.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# Read when JAX is imported, so set first; the workers and the scripts the tests start
# inherit them.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".pytest_cache" / "jax-compilation"))
# Reading an entry back costs tens of milliseconds: cache what takes longer to compile.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.25")
# A bound on the cache's disk use; the least recently used entries go first.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2**30))

from plastix import devices  # noqa: E402

devices.use_all_cpu_cores()


def xla_flags(*flags: str) -> str:
    """``XLA_FLAGS`` for a process a test starts: ``flags`` plus the tier's own."""
    own = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if f == FAST_COMPILE_FLAGS]
    return " ".join([*own, *flags])


def pytest_configure(config):
    # XLA reads its flags when the first computation starts its backend: after this.
    if "not slow" in (config.option.markexpr or ""):
        flags = os.environ.get("XLA_FLAGS", "").split()
        if FAST_COMPILE_FLAGS not in flags:
            os.environ["XLA_FLAGS"] = " ".join([*flags, FAST_COMPILE_FLAGS])


def run_on_cpu_devices(script: str, count: int = 4) -> str:
    """Run ``script`` in a fresh Python with ``count`` CPU devices; its stdout, after
    asserting it exited cleanly (a subprocess: the device count is fixed at JAX's start)."""
    import subprocess
    import sys
    import textwrap

    env = dict(os.environ, XLA_FLAGS=xla_flags(f"--xla_force_host_platform_device_count={count}"),
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env,
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def refused_line(main, argv, capsys) -> str:
    """The one stderr line of a command line (``main`` run as the command line runs it)
    that must be refused: exit status 2 and exactly one line, ``error: ...``."""
    import pytest

    from plastix import cli

    with pytest.raises(SystemExit) as exit_:
        cli.run(main, [str(a) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == cli.EXIT_USAGE, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@functools.cache  # one model and task for every test of a process: compiled once
def small_train_run():
    """``(model, task, config)`` of a small `plastix.train.fit` run: an LN-RNN on
    associative retrieval, 20 steps with a log every 5, an evaluation and a checkpoint
    every 10."""
    from plastix import models, tasks, train

    task = tasks.get("assoc_retrieval", num_pairs=2)
    model = models.make_model("rnn-ln", task.vocab_size, task.seq_len, 8, embed_dim=8,
                              readout_features=0)
    config = train.TrainConfig(steps=20, batch_size=8, learning_rate=1e-2, log_every=5,
                               eval_every=10, eval_batches=2, checkpoint_every=10)
    return model, task, config
