"""A prepared check of plastix on one GPU: the tests that matter there and the figures of
every path a user runs, in one command that prints one JSON object.

    bash benchmarks/gpu_check.sh            # on the GPU machine (wheels carried in .whl/)
    bash benchmarks/gpu_check.sh --dry      # here, on the CPU: every step at toy size

Steps, in order, each a separate process with its own time limit (a step that fails or
runs out of time is recorded and the next one runs; none is fatal):

* ``devices``: ``jax.devices()``, the backend and the versions of JAX, Flax, Optax, evosax;
* ``tests``: the default tier of the test files whose contracts a GPU can break (plastic
  lifetimes, ES, gradient meta-learning, models, training, the device policy, sweeps'
  sharding, the float32 rules), ``-m 'not slow'``;
* ``es``: `bench_es.py` with the whole population in flight (``--chunk 0``): one
  evaluation's and one whole generation's synapse updates per second, and the matmul
  roofline;
* ``fast_weights``: ``fast_weights.py train`` (RNN-LN-FW, Ba et al.'s retrieval task,
  B = 128, H = 50): training steps per second from its log, compilation excluded;
* ``metagrad``: ``es_abcd.py --outer gradient``: lifetimes and synapse updates per second
  of gradient meta-learning through the plastic lifetime, from its log;
* ``delta`` and ``torch_gradient``: `bench_delta.py` (the chunkwise delta rule against the
  per-token scan) and `compare_torch_gradient.py` (the gradient paths against PyTorch),
  when this checkout has them (else skipped);
* ``sweep``: `bench_sweep.py` on a small grid: the sweep's wall time against the same
  cells run one process each.

``--dry`` runs every step on the CPU (``JAX_PLATFORMS=cpu``) at toy sizes, so that every
command line, flag and JSON key of the GPU run is exercised where no GPU is (the test
suite runs it). The whole run stops starting steps once ``--budget-s`` seconds have gone
(each step's own limit is cut to what is left), so it ends inside the budget.

The JSON: ``mode`` (gpu or dry), ``device``, ``platform``, ``jax``, ``versions``,
``figures`` (``<step>.<name>``: each figure, e.g. ``es.synapse_updates_per_s``),
``steps`` (per step: ``status`` -- ok, failed, timeout, or skipped when this checkout or
environment lacks what it runs --, ``seconds``, ``command``, and on failure ``error``, the
end of its output), ``all_ok`` (every step ok or skipped; the exit status is 1 otherwise)
and ``seconds``. With ``--out DIR`` (default ``$OUT`` when set) it is written to
``DIR/gpu_check.json`` and every step's output to ``DIR/gpu_check.log``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from plastix import checks, cli

ROOT = Path(__file__).resolve().parent.parent
STATUSES = ("ok", "failed", "timeout", "skipped")
# The default tier's files whose contracts a GPU can break: the lifetimes (plastic and
# network), ES, metagrad, the gradient-trained models and their training, the device policy,
# sweeps (one compiled program over cells, sharded) and the float32 rules. None needs TFDS
# or a notebook kernel, which the GPU image lacks.
GPU_TEST_FILES = ("test_plastic.py", "test_lifetime.py", "test_evolve.py", "test_metagrad.py",
                  "test_models.py", "test_train.py", "test_devices.py", "test_sweep.py",
                  "test_differentiable_plasticity.py", "test_reliability_float32.py")
DRY_TEST_FILES = ("test_devices.py",)

DEVICES_SCRIPT = """
import importlib.metadata as md, json, platform, jax
names = ("jax", "jaxlib", "flax", "optax", "chex", "evosax", "numpy")
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
print(jax.devices())
d = jax.devices()[0]
print(json.dumps({"device": d.device_kind, "platform": d.platform,
                  "device_count": jax.device_count(), "devices": [str(x) for x in jax.devices()],
                  "python": platform.python_version(),
                  "versions": {n: version(n) for n in names}}))
"""


@dataclasses.dataclass(frozen=True)
class Step:
    """One step: ``python <argv>`` run from the checkout's root, with ``{work}`` in its
    arguments standing for the step's own scratch directory. ``figures(stdout, work)``
    reads the step's figures from what it printed or wrote."""

    name: str
    gpu_args: tuple[str, ...]
    dry_args: tuple[str, ...]
    timeout_s: float               # on the GPU; a dry run takes the same limit
    figures: Callable[[str, Path], dict]
    needs: tuple[str, ...] = ()    # Python modules without which the step is skipped
    script: str | None = None      # the checkout file the step runs; skipped if absent


def last_json(text: str) -> dict:
    """The last JSON object in ``text`` that begins a line (a one-line record, or an
    indented one printed with ``json.dumps(..., indent=1)``); ValueError if none."""
    decoder = json.JSONDecoder()
    starts = [i for i in range(len(text)) if text[i] == "{" and (i == 0 or text[i - 1] == "\n")]
    for start in reversed(starts):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError("printed no JSON object")


def metrics(path: Path, key: str) -> list[dict]:
    """The records of a run's metrics.jsonl that hold ``key``."""
    with open(path) as f:
        return [r for r in map(json.loads, f) if key in r]


def picked(record: dict, keys: tuple[str, ...]) -> dict:
    """``record``'s ``keys``; ValueError naming those it lacks."""
    missing = [k for k in keys if k not in record]
    if missing:
        raise ValueError(f"its record lacks {', '.join(missing)}")
    return {k: record[k] for k in keys}


def device_figures(out: str, work: Path) -> dict:
    return last_json(out)


SUITE_OUTCOMES = {"PASSED": "passed", "FAILED": "failed", "ERROR": "errors",
                 "SKIPPED": "skipped", "XFAIL": "skipped", "XPASS": "passed"}


def suite_figures(out: str, work: Path) -> dict:
    """Counts of pytest ``-v``'s outcomes (``[gw0] PASSED tests/x.py::y``), so a run
    killed at its limit still says how far it got, and the ids of the tests that failed
    (from the ``-ra`` summary, at most 30)."""
    counts = dict.fromkeys(SUITE_OUTCOMES.values(), 0)
    failing = []
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ("FAILED", "ERROR") and "::" in words[1]:
            failing.append(words[1])  # the -ra summary, after the run
        elif "::" in line:
            outcome = next((w for w in words if w in SUITE_OUTCOMES), None)
            if outcome is not None:
                counts[SUITE_OUTCOMES[outcome]] += 1
    return {**counts, "failing": sorted(set(failing))[:30]}


ES_KEYS = ("synapse_updates_per_s", "generation_synapse_updates_per_s", "seconds",
           "generation_seconds", "compile_and_first_run_seconds", "roofline_fraction",
           "matmul_flops_per_s", "xla_memory_bytes", "mean_nll", "pop", "batch", "seq_len",
           "hidden", "vocab", "devices_used")


def es_figures(out: str, work: Path) -> dict:
    return picked(last_json(out), ES_KEYS)


def fast_weights_figures(out: str, work: Path) -> dict:
    """Steps/s of the run's last logged window (the first holds the compilation)."""
    (run,) = [p.parent for p in work.glob("**/metrics.jsonl")]
    windows = metrics(run / "metrics.jsonl", "steps_per_s")
    if len(windows) < 2:
        raise ValueError("logged fewer than two windows of steps")
    valid = last_json(out)
    return {"steps_per_s": windows[-1]["steps_per_s"], "steps": windows[-1]["step"],
            "valid_accuracy": valid.get("accuracy")}


def metagrad_figures(out: str, work: Path) -> dict:
    """The last logged block's rates (the first blocks hold the compilation)."""
    blocks = metrics(work / "run" / "metrics.jsonl", "lifetimes_per_s")
    if len(blocks) < 3:
        raise ValueError("logged fewer than three blocks of updates")
    return picked(blocks[-1], ("lifetimes_per_s", "synapse_updates_per_s", "step"))


def record_figures(out: str, work: Path) -> dict:
    """A benchmark's own JSON record, whole (the benchmarks this check runs but does not
    own: their records are their figures)."""
    return last_json(out)


def sweep_figures(out: str, work: Path) -> dict:
    return picked(last_json(out), ("cells", "compiled_groups", "sweep_s",
                                   "separate_processes_s", "ratio_separate_over_sweep",
                                   "max_accuracy_difference"))


TINY_ES = ("--pop", "4", "--batch", "2", "--seq-len", "5", "--hidden", "8", "--vocab", "6")

STEPS = (
    Step("devices", ("-c", DEVICES_SCRIPT), ("-c", DEVICES_SCRIPT), 60, device_figures),
    Step("tests",
         ("-m", "pytest", "-v", "-m", "not slow", "-n", "8", "-p", "no:cacheprovider",
          *(f"tests/{f}" for f in GPU_TEST_FILES)),
         ("-m", "pytest", "-v", "-m", "not slow", "-n", "0", "-p", "no:cacheprovider",
          *(f"tests/{f}" for f in DRY_TEST_FILES)),
         120, suite_figures, needs=("pytest", "xdist")),
    # The whole population in flight (--chunk 0): 1024 members x 16 sequences of the main
    # job's lifetime (H = 128, V = 65, T = 100), 16k lifetimes at once.
    Step("es",
         ("benchmarks/bench_es.py", "--pop", "1024", "--batch", "16", "--seq-len", "100",
          "--hidden", "128", "--vocab", "65", "--chunk", "0", "--repeats", "5",
          "--generations", "2"),
         ("benchmarks/bench_es.py", *TINY_ES, "--chunk", "0", "--repeats", "1",
          "--generations", "1"),
         75, es_figures),
    # The configuration of the CPU figures (RNN-LN-FW, B = 128, H = 50): three logged
    # windows, the last timed; no evaluation between them (every 10 windows).
    Step("fast_weights",
         ("experiments/fast_weights.py", "train", "--model", "rnn-ln-fw", "--hidden", "50",
          "--batch-size", "128", "--steps", "1500", "--log-every", "500", "--runs", "{work}"),
         ("experiments/fast_weights.py", "train", "--model", "rnn-ln-fw", "--hidden", "8",
          "--batch-size", "4", "--steps", "6", "--log-every", "2", "--runs", "{work}"),
         60, fast_weights_figures),
    # Four blocks: the first two compile, the last is timed.
    Step("metagrad",
         ("experiments/es_abcd.py", "--outer", "gradient", "--hidden", "128", "--batch", "256",
          "--eval-batch", "256", "--generations", "40", "--log-every", "10",
          "--out", "{work}/run", "--no-plots", "--report", "rule"),
         ("experiments/es_abcd.py", "--outer", "gradient", "--hidden", "8", "--batch", "4",
          "--eval-batch", "4", "--generations", "8", "--log-every", "2",
          "--out", "{work}/run", "--no-plots", "--report", "rule"),
         75, metagrad_figures),
    # Benchmarks of their own, at the sizes their defaults give (toy sizes in a dry run).
    Step("delta", ("benchmarks/bench_delta.py",),
         ("benchmarks/bench_delta.py", "--seq-lens", "16", "--batch", "1", "--heads", "1",
          "--dim", "4", "--chunk-size", "4", "--repeats", "1"),
         45, record_figures, script="benchmarks/bench_delta.py"),
    Step("torch_gradient", ("benchmarks/compare_torch_gradient.py",),
         ("benchmarks/compare_torch_gradient.py", "--hidden", "8", "--batch", "4",
          "--meta-hidden", "8", "--meta-batch", "4", "--steps", "2", "--torch-steps", "2",
          "--repeats", "1", "--no-compile"), 60, record_figures,
         needs=("torch",), script="benchmarks/compare_torch_gradient.py"),
    Step("sweep",
         ("benchmarks/bench_sweep.py", "--vary", "rule-out=ABCD_lr,hebb", "--vary", "seed=0,1",
          "--", "--generations", "20", "--pop", "64", "--batch", "16", "--eval-batch", "64",
          "--log-every", "10"),
         ("benchmarks/bench_sweep.py", "--vary", "seed=0,1", "--", "--generations", "1",
          "--pop", "4", "--batch", "2", "--hidden", "4", "--eval-batch", "4",
          "--log-every", "1"),
         120, sweep_figures),
)
STEP_NAMES = tuple(step.name for step in STEPS)


def step_list(text: str) -> tuple[str, ...]:
    """``--steps``: comma-separated step names, each one of `STEP_NAMES`."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in STEP_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown) or 'no step'}: name steps among {', '.join(STEP_NAMES)}")
    return names


def skip_reason(step: Step) -> str | None:
    """Why ``step`` cannot run in this checkout and environment, or None."""
    if step.script is not None and not (ROOT / step.script).is_file():
        return f"{step.script} is not in this checkout"
    missing = [m for m in step.needs if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed"
    return None


def step_env(dry: bool) -> dict:
    """The steps' environment: this checkout first on the path, and on a dry run the CPU."""
    # Not pytest's own variables: the suite runs this check inside a test, and the tests
    # step's pytest must not take them for its own.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT_TEST"))}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    if dry:
        env["JAX_PLATFORMS"] = "cpu"
    return env


def run_step(step: Step, dry: bool, work: Path, limit_s: float, log) -> dict:
    """Runs one step within ``limit_s`` seconds; its record (status, seconds, command,
    figures or error). A step over its limit is killed with its whole process group."""
    args = [a.replace("{work}", str(work)) for a in (step.dry_args if dry else step.gpu_args)]
    argv = [sys.executable, *args]
    shown = shlex.join(["python", *(a if a != DEVICES_SCRIPT else "<devices>" for a in args)])
    record = {"status": "skipped", "seconds": 0.0, "command": shown}
    reason = skip_reason(step)
    if reason is not None:
        return {**record, "reason": reason}
    if limit_s < 1:  # not run, but not by design: the run is incomplete
        return {**record, "status": "timeout", "reason": "no time left in --budget-s"}
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=step_env(dry), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=limit_s)
        status = "ok" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # pytest's workers, a benchmark's children
        out, _ = proc.communicate()
        status = "timeout"
    record.update(status=status, seconds=round(time.perf_counter() - start, 1),
                  returncode=proc.returncode)
    log.write(f"==== {step.name}: {shown}\n{out}\n==== {step.name}: {status} "
              f"in {record['seconds']} s\n")
    log.flush()
    try:
        record["figures"] = step.figures(out, work)
    except (ValueError, OSError, KeyError) as error:
        if status == "ok":
            record["status"] = status = "failed"
        record["figures_error"] = cli.one_line(error)
    if status != "ok":
        record["error"] = out[-1500:]
        if status == "timeout":
            record["error"] += f"\n[killed after {limit_s:.0f} s]"
    return record


def check(dry: bool, names: tuple[str, ...], budget_s: float, work: Path, log) -> dict:
    """Runs the named steps in order within ``budget_s``; the whole JSON record."""
    start = time.perf_counter()
    steps, figures = {}, {}
    for step in STEPS:
        if step.name not in names:
            continue
        left = budget_s - (time.perf_counter() - start)
        record = run_step(step, dry, work / step.name, min(step.timeout_s, left), log)
        print(f"[gpu_check] {step.name}: {record['status']} ({record['seconds']} s)",
              file=sys.stderr, flush=True)
        for key, value in record.pop("figures", {}).items():
            figures[f"{step.name}.{key}"] = value
        steps[step.name] = record
    device = {k: figures.get(f"devices.{k}") for k in ("device", "platform")}
    versions = figures.pop("devices.versions", None) or {}
    return {
        "check": "gpu_check", "mode": "dry" if dry else "gpu", **device,
        "jax": versions.get("jax"), "versions": versions,
        "figures": figures, "steps": steps,
        "all_ok": all(r["status"] in ("ok", "skipped") for r in steps.values()),
        "budget_s": budget_s, "seconds": round(time.perf_counter() - start, 1),
    }


def parser() -> cli.Parser:
    p = cli.Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry", action="store_true", default=os.environ.get("GPU_CHECK_DRY") == "1",
                   help="on the CPU at toy sizes (also GPU_CHECK_DRY=1): exercises every "
                        "step's command line")
    p.add_argument("--steps", type=step_list, default=STEP_NAMES,
                   help=f"comma-separated steps to run (default all: {','.join(STEP_NAMES)})")
    p.add_argument("--budget-s", type=checks.number(above=0), default=420.0,
                   help="wall-clock seconds for all steps; a step's limit is cut to what is "
                        "left, and none starts once it is spent")
    p.add_argument("--out", default=os.environ.get("OUT") or None,
                   help="directory for gpu_check.json and gpu_check.log (default $OUT)")
    return p


def main(argv=None) -> dict:
    args = cli.parse(parser(), argv)[0]
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        log_path = out / "gpu_check.log" if out else Path(tmp) / "gpu_check.log"
        with open(log_path, "w") as log:
            result = check(args.dry, args.steps, args.budget_s, Path(tmp), log)
    text = json.dumps(result, indent=1)
    print(text)
    if out is not None:
        (out / "gpu_check.json").write_text(text + "\n")
    return result


def exit_status(argv=None) -> None:
    """`main`, then exit status 1 if a step failed or ran out of time (0 if all ran)."""
    result = main(argv)
    if not result["all_ok"]:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(exit_status)
