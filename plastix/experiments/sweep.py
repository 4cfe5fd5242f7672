"""A grid of ES runs of ``es_abcd.py``, run as few compiled programs as its shapes allow.

    python experiments/sweep.py --out runs/sweep \\
        --vary rule-out=ABCD_lr,hebb,oja,ABCD --vary task=assoc_retrieval,copy,recall_overwrite \\
        --vary seed=0,1,2 -- --generations 100 --pop 32 --batch 16
    python experiments/sweep.py --config sweep.json --out runs/sweep   # the same from a file
    python experiments/sweep.py ... --out runs/sweep --resume   # finished cells are skipped

Without --out a sweep writes to a new directory runs/sweep/YYYYmmdd-HHMMSS of its own, so
the same command runs again and again; --resume and --overwrite need --out.

Each ``--vary FLAG=V1,V2,...`` is an axis of the grid over one ``es_abcd.py`` flag (rules
per layer, task, granularity, seed, ES settings, ...); the flags after ``--`` (or the config
file's ``"flags"``) are every cell's. A config file is ``{"vary": {"rule-out": ["hebb",
"oja"], "seed": [0, 1]}, "flags": ["--generations", "100"]}``. Every cell is the
``es_abcd.py`` run of its flags, checked as that command line is, and gets its own run
directory ``--out/cells/<name>/`` (config.json, metrics.jsonl, checkpoint.msgpack,
report.json), which ``es_abcd.py --out <it> --resume`` can continue.

Cells that differ only in ``--seed``, ``--lr`` and ``--sigma`` have the same shapes and
run as one program: ``jit(vmap(cell))`` over their ES states, keys and rates, each cell's
population sharded over the devices as ``es_abcd.py`` shards one. Under
``jax.distributed`` (``--coordinator``) every process runs the same programs over one mesh
of all processes' devices and process 0 writes the files. Writes ``--out``/results.jsonl
(one line per cell), results.md (mean and spread over seeds) and heatmap.png.

``plastix sweep`` (installed with plastix) and
``python experiments/sweep.py`` (in a checkout) run this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import itertools
import json
import math
import os
import re
import time

from plastix import devices

# The device policy, before anything starts JAX's backends (importing es_abcd does; the
# `plastix sweep` command starts jax.distributed before this module is imported).
devices.use_all_cpu_cores()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from plastix import checks, cli, evolve, progress, runs  # noqa: E402
from plastix.experiments import es_abcd  # noqa: E402

# What a sweep writes: its table and heatmap, and its cells, each an es_abcd.py run.
KIND = runs.RunKind("sweep", files=("results.jsonl", "results.md", "heatmap.png"),
                    dirs=("cells",), cells=es_abcd.KIND, state="cells",
                    recognise=runs.has_entry("cells", "results.jsonl"))
# Where a sweep that names no --out gets a new directory of its own (`runs.new_run_dir`).
RUNS_ROOT = os.path.join("runs", "sweep")
# What cells of one compiled program may differ in: values the program takes as inputs.
VMAPPED = ("seed", "es.lr", "es.sigma")
METRICS = ("test_accuracy", "test_nll", "test_bits")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the grid: its name, the axis values that name it, its run config."""

    name: str
    values: tuple[tuple[str, str], ...]
    cfg: es_abcd.RunConfig


# --- the grid ---------------------------------------------------------------------------


def parse_axis(text: str) -> tuple[str, list[str]]:
    """``"rule-out=hebb,oja"`` -> ``("rule-out", ["hebb", "oja"])``. The values are split at
    the commas outside brackets, so a value may be a rule with arguments
    (``rule-out=modulated(hebb, 0.9),oja``) or a JSON list."""
    flag, sep, values = text.partition("=")
    flag = flag.strip().removeprefix("--")
    if not sep or not flag:
        raise ValueError(f"--vary {text!r}: write FLAG=V1,V2,... (e.g. --vary seed=0,1,2)")
    if not values.strip():
        raise checks.FieldError(f"--vary {flag}", f"has no values: write --vary {flag}=V1,V2,...")
    return flag, split_values(flag, values)


def split_values(flag: str, text: str) -> list[str]:
    """The values of an axis, split at the commas outside (), [] and {}; an empty value
    (``seed=0,,1``, ``seed=,``) or an unclosed bracket is refused by name."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += 1 if char in "([{" else -1 if char in ")]}" else 0
        if depth < 0:
            break
        if char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    if depth != 0:
        raise checks.FieldError(f"--vary {flag}", f"has unbalanced brackets in {text!r}")
    parts.append(text[start:].strip())
    if "" in parts:
        raise checks.FieldError(f"--vary {flag}", f"has an empty value in {text!r}: write "
                                                  f"--vary {flag}=V1,V2,...")
    return parts


# The es_abcd.py settings that are the sweep's own: every cell's directory is the sweep's.
SWEEP_OWNED = ("out", "resume", "overwrite")
# Settings that change no cell's result: cells that differ only in them would be one run
# reported twice. Why each, for the error.
NOT_AXES = {
    "report": "it changes what a cell's report holds, not its run (a sweep reports each "
              "cell's own row)",
    "log_every": "it changes how often a cell logs, not its result (generation g draws "
                 "the same keys whatever the blocks)",
    "outer": "a sweep runs ES; run --outer gradient cells with es_abcd.py",
}
# More cells than this is a mistake (a pasted range, a product of long axes), not a sweep:
# checking each cell alone takes minutes, and running them days.
MAX_CELLS = 10_000


def cells_parser() -> argparse.ArgumentParser:
    """es_abcd.py's parser, whose errors raise ValueError instead of exiting: the sweep
    checks its axes and its cells' flags with it before any cell is built."""
    p = es_abcd.parser()

    def error(message: str):
        raise ValueError(cli.one_line(message))

    p.error = error
    return p


def axis_values(name: str, action: argparse.Action, values: list[str]) -> list[str]:
    """``values`` checked as the flag's type and choices would check them, and none the
    same value as another once parsed to that type (``1`` and ``+1``, ``0.1`` and
    ``1e-1``; reals compared as the float32 a cell computes with)."""
    seen: list[tuple[object, str]] = []
    for text in values:
        try:
            value = action.type(text) if callable(action.type) else text
        except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
            raise checks.FieldError(name, f"value {text!r}: {cli.one_line(e)}") from None
        if action.choices is not None and value not in action.choices:
            raise checks.FieldError(name, f"value {text!r} is not one of "
                                          f"{list(action.choices)}")
        same = np.float32(value) if isinstance(value, float) else value
        for other, other_text in seen:
            if other == same:
                raise checks.FieldError(name, f"values {other_text!r} and {text!r} are the "
                                              f"same value: each value once")
        seen.append((same, text))
    return values


def check_axes(entries: list[tuple[str, list[str], str]], base: list[str]
               ) -> dict[str, list[str]]:
    """The grid's axes, ``flag -> values``, from ``(flag, values, where given)`` entries.

    Refused by name: a flag es_abcd.py does not have, one that is not a setting of a cell's
    run (the sweep's own, a switch, `NOT_AXES`), an axis given twice (under either of its
    spellings, ``--pop``/``--population``), an axis that the flags every cell shares set
    too, and a value that its flag refuses or that repeats another (`axis_values`).
    """
    p = cells_parser()
    shared = cli.given_flags(p, base)
    axes, by_dest = {}, {}
    for flag, values, where in entries:
        action = p._option_string_actions.get(f"--{flag}")
        name = f"--vary {flag}" if where == "--vary" else f"{where}: vary {flag}"
        if action is None:
            known = [o.removeprefix("--") for o in p._option_string_actions if o.startswith("--")]
            close = difflib.get_close_matches(flag, known, n=1)
            raise checks.FieldError(name, "is not an es_abcd.py flag"
                                    + (f" (did you mean {close[0]}?)" if close else ""))
        if action.dest in SWEEP_OWNED:
            raise ValueError(f"--{flag} is the sweep's to set, not a cell's")
        if action.nargs == 0:
            raise checks.FieldError(name, "is a switch, not a setting with values: give it "
                                          "after -- to set it for every cell")
        if action.dest in NOT_AXES:
            raise checks.FieldError(name, f"is not an axis: {NOT_AXES[action.dest]}")
        if action.dest in by_dest:
            first, first_where = by_dest[action.dest]
            again = "is given twice" if first == flag else f"sets what --vary {first} sets"
            if where != first_where:
                again += f" (in {first_where} and in {where})"
            raise checks.FieldError(name, f"{again}: give each axis once, with all its values")
        if action.dest in shared:
            raise checks.FieldError(name, f"and {shared[action.dest]} after -- both set it: a "
                                          f"setting is an axis or every cell's, not both")
        by_dest[action.dest] = (flag, where)
        axes[flag] = axis_values(name, action, values)
    return axes


def check_shared_flags(base: list[str]) -> None:
    """The flags every cell shares, checked once as es_abcd.py reads them (a flag it does
    not have, a value its flag refuses), so that the error names them once, not a cell."""
    p = cells_parser()
    if "help" in cli.given_flags(p, base):
        raise ValueError("--help after --: see es_abcd.py --help for the cells' flags")
    try:
        p.parse_args(base)
    except ValueError as e:
        raise ValueError(f"the flags after -- (every cell's): {e}") from None


def grid_size(axes: dict[str, list[str]]) -> int:
    """How many cells the axes make, refused past `MAX_CELLS`."""
    size = math.prod(len(values) for values in axes.values())
    if size > MAX_CELLS:
        shape = " x ".join(f"{len(v)} {flag}" for flag, v in axes.items())
        raise ValueError(f"the grid has {size} cells ({shape}), more than {MAX_CELLS}: "
                         f"split it into several sweeps")
    return size


def cell_flags(values) -> list[str]:
    """The es_abcd.py flags of the axis values (``--rule-out hebb --seed 0``)."""
    return [x for flag, value in values for x in (f"--{flag}", value)]


def cell_name(values) -> str:
    """A directory name for the cell of these axis values (``rule-out=hebb__seed=0``)."""
    return "__".join(f"{flag}={re.sub(r'[^A-Za-z0-9._-]', '_', v)}" for flag, v in values)


def grid(axes: dict[str, list[str]], base: list[str]) -> list[Cell]:
    """Every combination of the axes' values, each checked as its ``es_abcd.py`` run
    (``base`` plus the cell's flags) would be, every setting; no cell has its run directory
    yet (`placed`), so a refused grid leaves nothing behind."""
    cells = []
    for combo in itertools.product(*axes.values()):
        values = tuple(zip(axes, combo))
        name = cell_name(values)
        argv = [*base, *cell_flags(values)]
        try:
            cfg, _ = es_abcd.parse_config([*argv, "--no-plots"])
        except SystemExit:  # argparse has printed the one-line error
            raise ValueError(f"cell {name}: its es_abcd.py flags are refused (above)") from None
        except ValueError as e:
            raise ValueError(f"cell {name}: {cli.one_line(e)}") from None
        if cfg.outer != "es":
            raise ValueError("a sweep runs ES; run --outer gradient cells with es_abcd.py")
        cells.append(Cell(name, values, cfg))
    check_distinct(cells)
    for cell in cells:  # then what only building a cell checks (it computes a little)
        try:
            es_abcd.check_run(cell.cfg)
        except ValueError as e:
            raise ValueError(f"cell {cell.name}: {cli.one_line(e)}") from None
    return cells


def check_distinct(cells: list[Cell]) -> None:
    """Refuse two cells that are one run (axis values that mean the same, such as a rule
    and its default arguments written out) or that would share one directory (values
    that differ only in the characters a directory name replaces)."""
    by_run: dict[str, Cell] = {}
    by_name: dict[str, Cell] = {}
    for cell in cells:
        run = json.dumps(runs.config_dict(dataclasses.replace(cell.cfg, out="")),
                         sort_keys=True)
        if run in by_run:
            raise ValueError(f"cells {by_run[run].name} and {cell.name} are the same run: "
                             f"give each value of an axis once")
        if cell.name.lower() in by_name:  # one directory on a case-insensitive disk too
            raise ValueError(f"cells {dict(by_name[cell.name.lower()].values)} and "
                             f"{dict(cell.values)} would share the directory cells/{cell.name}: "
                             f"write the values so that they differ in letters or digits")
        by_run[run], by_name[cell.name.lower()] = cell, cell


def placed(cells: list[Cell], out: str) -> list[Cell]:
    """The cells with their run directories, ``out/cells/<name>/``."""
    return [dataclasses.replace(cell, cfg=dataclasses.replace(
        cell.cfg, out=os.path.join(out, "cells", cell.name))) for cell in cells]


def group_key(cfg: es_abcd.RunConfig) -> str:
    """Cells of one key run as one program: equal but for the `VMAPPED` settings (the
    rates only where they decay by "clamp"; "stop" counts decays on the host)."""
    flat = runs._flatten(runs.config_dict(dataclasses.replace(cfg, out="")))
    vmapped = VMAPPED if cfg.es.floor_mode == "clamp" else ("seed",)
    return json.dumps({k: v for k, v in flat.items() if k not in vmapped}, sort_keys=True)


def groups(cells: list[Cell]) -> list[list[Cell]]:
    by_key: dict[str, list[Cell]] = {}
    for cell in cells:
        by_key.setdefault(group_key(cell.cfg), []).append(cell)
    return list(by_key.values())


# --- one group: one compiled program ---------------------------------------------------


def global_evolution(cfg: es_abcd.RunConfig) -> evolve.Evolution:
    """The group's `evolve.Evolution`, its population over every process's devices."""
    outer = es_abcd.make_outer(cfg)
    devices_used = devices.population_devices(cfg.es.population, jax.devices())
    evolution = dataclasses.replace(outer, mesh=evolve.population_mesh(cfg.es.population,
                                                                       devices_used))
    # Its cached properties are computed here, not first inside a trace (which would
    # cache tracers in a static argument).
    evolution.unravel, evolution.es_params  # noqa: B018
    return evolution


@functools.partial(jax.jit, static_argnames=("evolution",))
def init_cells(evolution, keys, starts, lrs, sigmas, es_params):
    """Every cell's initial ES state, at its own start (its seed's initial mean)."""
    return _whole(evolution, jax.vmap(
        lambda k, s, lr, sigma: evolution.at_rates(lr, sigma, es_params).init(k, s))(
        keys, starts, lrs, sigmas))


@functools.partial(jax.jit, static_argnames=("evolution", "count"))
def run_cells(evolution, states, run_keys, firsts, lrs, sigmas, es_params, count: int):
    """``count`` generations of every cell, from its own first generation (`Evolution.run`)."""
    def cell(state, run_key, first, lr, sigma):
        return evolution.at_rates(lr, sigma, es_params).run(state, run_key, first, count)
    return _whole(evolution, jax.vmap(cell)(states, run_keys, firsts, lrs, sigmas))


@functools.partial(jax.jit, static_argnames=("evolution", "split", "batch"))
def score_cells(evolution, states, key, split: str, batch: int):
    """Held-out ``(nll, accuracy)`` of every cell's ES mean on the same sequences."""
    return _whole(evolution, jax.vmap(lambda s: evolve.score(
        evolution.net, evolution.task, evolution.mean(s), key, split, batch))(states))


def _whole(evolution, tree):
    # Every output whole on every device, so that every process can read all of it.
    return jax.lax.with_sharding_constraint(tree, NamedSharding(evolution.mesh, PartitionSpec()))


def from_process_0(tree):
    """``tree`` as process 0 has it, on every process (what it read from the run files)."""
    return multihost_utils.broadcast_one_to_all(tree) if jax.process_count() > 1 else tree


def writes() -> bool:
    return jax.process_index() == 0


def run_group(cells: list[Cell], on_block) -> list[dict]:
    """Run one group to its last generation, logging and checkpointing every cell's run
    directory after every block (then ``on_block(cell-generations done, first cell's
    name, the group's step, its last step)``); returns the cells' report rows."""
    cfg = cells[0].cfg
    evolution = global_evolution(cfg)
    whole = NamedSharding(evolution.mesh, PartitionSpec())
    put = functools.partial(devices.replicate, sharding=whole)
    seeds = [jax.random.split(jax.random.key(c.cfg.seed)) for c in cells]  # as evolve.evolve
    init_keys, run_keys = (jnp.stack([k[i] for k in seeds]) for i in (0, 1))
    lrs = jnp.array([c.cfg.es.lr for c in cells], jnp.float32)
    sigmas = jnp.array([c.cfg.es.sigma for c in cells], jnp.float32)
    starts = jax.tree.map(lambda *xs: jnp.stack(xs),
                          *[es_abcd.initial_mean(c.cfg.net, c.cfg) for c in cells])
    es_params = put(evolution.es_params)
    states = init_cells(evolution, *put((init_keys, starts, lrs, sigmas)), es_params)
    states, steps = resume_cells(cells, jax.device_get(states))
    # Each cell's state at its last generation: a cell that a kill left a block ahead of
    # the others runs on with them, but its run ends where it reached the end.
    finals = [jax.tree.map(lambda x: x[i], states) if steps[i] >= cfg.generations else None
              for i in range(len(cells))]
    states, run_keys, lrs, sigmas = put((states, run_keys, lrs, sigmas))
    eval_key = jax.random.key(12345)  # evolve.evolve's validation draw
    total = cfg.generations
    lifetimes_per_generation = len(cells) * cfg.es.population * cfg.es.batch
    while min(steps) < total:
        count = min(cfg.log_every, total - min(steps))
        t0 = time.perf_counter()
        states, metrics = run_cells(evolution, states, run_keys, put(jnp.array(steps)),
                                    lrs, sigmas, es_params, count)
        jax.block_until_ready(states)
        seconds = time.perf_counter() - t0
        valid = jax.device_get(score_cells(evolution, states, put(eval_key), "valid",
                                           cfg.es.eval_batch))
        host_states, metrics = jax.device_get((states, metrics))
        for i, cell in enumerate(cells):
            if steps[i] >= total:  # ahead of the group after a kill: already at its end
                continue
            record = runs.block_record(evolve.block_record(
                evolution, steps[i] + count, {k: v[i] for k, v in metrics.items()},
                (valid[0][i], valid[1][i]), seconds, lifetimes=count * lifetimes_per_generation),
                steps[i], "generation")
            if writes():
                runs.MetricsLog(os.path.join(cell.cfg.out, runs.METRICS),
                                step_key="generation").append(record)
                runs.save_checkpoint(os.path.join(cell.cfg.out, runs.CHECKPOINT),
                                     jax.tree.map(lambda x: x[i], host_states), steps[i] + count)
            steps[i] += count
            if steps[i] >= total:
                finals[i] = jax.tree.map(lambda x: x[i], host_states)
        on_block(count * len(cells), cells[0].name, min(steps), total)
    return report_cells(cells, evolution, put(jax.tree.map(lambda *xs: np.stack(xs), *finals)))


def resume_cells(cells: list[Cell], states) -> tuple[object, list[int]]:
    """Claim every cell's run directory; a cell that holds a checkpoint continues from it.

    Returns the stacked states and each cell's generation. Process 0 reads the files and
    every process continues from what it read.
    """
    steps = []
    loaded = []
    for i, cell in enumerate(cells):
        state, step = jax.tree.map(lambda x: x[i], states), 0
        if writes():
            resume = runs.claim(cell.cfg.out, es_abcd.KIND, "auto")
            cfg_dict = es_abcd.saved_config(cell.cfg)
            runs.check_config(cell.cfg.out, cfg_dict, resume, es_abcd.MAY_CHANGE_ON_RESUME,
                              upgrade=es_abcd.upgrade_config)
            ckpt = os.path.join(cell.cfg.out, runs.CHECKPOINT)
            log = runs.MetricsLog(os.path.join(cell.cfg.out, runs.METRICS), step_key="generation")
            if resume and os.path.exists(ckpt):
                state, step = runs.load_checkpoint(ckpt, state)
                runs.check_history(log, step, cell.cfg.generations)
            log.truncate_to(step)  # records past the checkpoint are logged again
            runs.write_config(cell.cfg.out, cfg_dict)
        loaded.append(state)
        steps.append(step)
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *loaded)
    stacked, steps = from_process_0((stacked, np.array(steps)))
    return stacked, [int(s) for s in steps]


def report_cells(cells: list[Cell], evolution, states) -> list[dict]:
    """Each cell's test-split row, as ``es_abcd.py --report rule`` writes it."""
    cfg = cells[0].cfg
    whole = NamedSharding(evolution.mesh, PartitionSpec())
    nll, acc = jax.device_get(score_cells(evolution, states,
                                          devices.replicate(jax.random.key(es_abcd.TEST_KEY),
                                                            whole),
                                          "test", cfg.es.eval_batch))
    means = jax.device_get(jax.jit(jax.vmap(evolution.mean))(jax.device_get(states)))
    rows = []
    for i, cell in enumerate(cells):
        row = es_abcd.result_row(es_abcd.LEARNED_LABELS["es"], float(nll[i]), float(acc[i]))
        if writes():
            learned = jax.tree.map(lambda x, i=i: x[i], means)
            row = learned_row(cell, evolution.net, row, learned)
            es_abcd.write_report(cell.cfg, evolution.task, evolution.net, [row], learned,
                                 seconds=0.0)
        rows.append(row)
    return rows


def learned_row(cell: Cell, net, row: dict, learned) -> dict:
    """A cell's row with the note ``es_abcd.py`` gives it (`es_abcd.learned_outcome`) and
    its ``problem``: why the cell failed (its rule diverged, or nothing was learned), or
    None."""
    history = runs.MetricsLog(os.path.join(cell.cfg.out, runs.METRICS),
                              step_key="generation").read()
    start = es_abcd.initial_mean(cell.cfg.net, cell.cfg)
    note, problem = es_abcd.learned_outcome(cell.cfg, history, start, learned, net)
    [row] = es_abcd.noted_nonfinite([{**row, "note": note}])
    if problem is None and not es_abcd.finite_row(row):
        problem = "its test lifetimes diverge (its test NLL is not finite)"
    return {**row, "problem": problem}


def failed(result: dict) -> bool:
    """Whether a cell's result is no learned rule (a cell read back from a run before
    cells recorded their problem: its figures are not finite)."""
    return result.get("problem") is not None or not es_abcd.finite_row(result)


def finished_row(cell: Cell) -> dict | None:
    """The report row of a cell whose run directory holds its whole run, else None."""
    report = os.path.join(cell.cfg.out, "report.json")
    if not (os.path.exists(report) and os.path.exists(os.path.join(cell.cfg.out, runs.CONFIG))):
        return None
    saved, current = runs.read_config(cell.cfg.out), es_abcd.saved_config(cell.cfg)
    if runs.config_diff(saved, current, ("out", "plots", "report")) or \
            runs.changed_data_files(saved, current):
        return None  # run (resumed) again: a changed data file is refused there, by name
    if runs.checkpoint_step(os.path.join(cell.cfg.out, runs.CHECKPOINT)) != cell.cfg.generations:
        return None
    try:
        return runs.read_result(report, {"rows": list}, check=_learned_row_problem)["rows"][0]
    except ValueError:  # a damaged report: the finished run is scored and reported again
        return None


def _learned_row_problem(report: dict) -> str | None:
    rows = report["rows"]
    if not rows or not isinstance(rows[0], dict):
        return "no learned row"
    return runs.fields_problem(rows[0], {"note": str, **{m: (*runs.NUMBER, type(None))
                                                            for m in METRICS}})


# --- results ----------------------------------------------------------------------------


def summarise(results: list[dict], axes: dict[str, list[str]]) -> list[dict]:
    """Mean and std over seeds of every metric, per combination of the other axes."""
    shown = [a for a in axes if a != "seed"]
    rows = []
    for combo in itertools.product(*(axes[a] for a in shown)):
        same = [r for r in results if all(r["values"][a] == v for a, v in zip(shown, combo))]
        row = {"values": dict(zip(shown, combo)), "seeds": len(same)}
        for m in METRICS:
            x = np.array([r[m] for r in same], float)
            row[m] = (float(np.mean(x)), float(np.std(x)))  # NaN if a seed diverged
        rows.append(row)
    return rows


def markdown_table(summary: list[dict], axes: dict[str, list[str]]) -> str:
    shown = [a for a in axes if a != "seed"]
    row = lambda cells: "| " + " | ".join(cells) + " |"
    lines = [row([*shown, "seeds", "test accuracy", "test bits/token"]),
             "|" + "---|" * (len(shown) + 3)]
    for r in summary:
        lines.append(row([*(r["values"][a] for a in shown), str(r["seeds"]),
                          _mean_std(r["test_accuracy"]), _mean_std(r["test_bits"])]))
    return "\n".join(lines)


def _mean_std(pair: tuple[float, float]) -> str:
    mean, std = pair
    return f"{mean:.3f} ± {std:.3f}" if math.isfinite(mean) else "not finite"


def save_heatmap(path: str, summary: list[dict], axes: dict[str, list[str]],
                 metric: str = "test_accuracy") -> bool:
    """The first two non-seed axes as rows and columns, ``metric`` (mean over seeds and
    every other axis) in each square. False when the grid has fewer than two such axes."""
    shown = [a for a in axes if a != "seed"]
    if len(shown) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = shown[0], shown[1]
    grid_values = np.array([[np.mean([r[metric][0] for r in summary
                                      if r["values"][rows] == a and r["values"][cols] == b])
                             for b in axes[cols]] for a in axes[rows]])
    fig, ax = plt.subplots(figsize=(1.6 * len(axes[cols]) + 2, 0.6 * len(axes[rows]) + 1.5))
    im = ax.imshow(grid_values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(axes[cols])), axes[cols], rotation=20)
    ax.set_yticks(range(len(axes[rows])), axes[rows])
    ax.set_xlabel(cols), ax.set_ylabel(rows)
    for (i, j), v in np.ndenumerate(grid_values):
        ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label=f"{metric.replace('_', ' ')} (mean over seeds)")
    fig.tight_layout()
    runs.save_figure(fig, path, dpi=120)
    plt.close(fig)
    return True


# --- main -------------------------------------------------------------------------------


def add_grid_arguments(p: argparse.ArgumentParser) -> None:
    """The flags `read_spec` reads: --vary, --config and the cells' flags after --."""
    p.add_argument("--vary", action="append", default=[], metavar="FLAG=V1,V2,...",
                   help="an axis of the grid: an es_abcd.py flag and its values")
    p.add_argument("--config", help="a JSON file {\"vary\": {flag: [values]}, \"flags\": [...]}")
    p.add_argument("flags", nargs=argparse.REMAINDER,
                   help="after --: the es_abcd.py flags every cell shares")


def parser() -> cli.Parser:
    p = cli.Parser(description=__doc__)
    add_grid_arguments(p)
    p.add_argument("--out", default=None,
                   help=f"the sweep's directory (default: a new one, "
                        f"{RUNS_ROOT}/YYYYmmdd-HHMMSS)")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--resume", action="store_true",
                        help="continue the sweep in --out: finished cells are skipped, "
                             "unfinished ones resume from their checkpoints (needs --out)")
    choice.add_argument("--overwrite", action="store_true",
                        help="replace the sweep in --out (needs --out)")
    p.add_argument("--coordinator", help="host:port of process 0 (jax.distributed)")
    p.add_argument("--num-processes", type=checks.SIZE, default=1)
    p.add_argument("--process-id", type=checks.COUNT, default=0)
    return p


def read_spec(args) -> tuple[dict[str, list[str]], list[str]]:
    """The grid's axes and every cell's flags, from --vary/-- and the config file; each
    checked (`check_axes`, `check_shared_flags`, `grid_size`) before any cell is built."""
    entries, base = [], []
    if args.config:
        entries, base = read_config_file(args.config)
    for text in args.vary:
        flag, values = parse_axis(text)
        entries.append((flag, values, "--vary"))
    base += [f for f in args.flags if f != "--"]
    if not entries:
        raise ValueError("nothing to sweep: give at least one --vary FLAG=V1,V2,... "
                         "(or a --config file)")
    for flag in SWEEP_OWNED:
        if f"--{flag}" in base:
            raise ValueError(f"--{flag} is the sweep's to set, not a cell's")
    axes = check_axes(entries, base)
    check_shared_flags(base)
    grid_size(axes)
    return axes, base


def read_config_file(path: str) -> tuple[list[tuple[str, list[str], str]], list[str]]:
    """``(axis entries, flags)`` of a --config file, ``{"vary": {flag: [values]}, "flags":
    [...]}``; anything else is refused in one line naming the file and what is wrong."""
    where = f"--config {path}"
    with open(path, "rb") as f:
        raw = f.read()
    try:
        spec = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: not JSON ({cli.one_line(e)})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a JSON object {{\"vary\": {{flag: [values]}}, "
                         f"\"flags\": [...]}}, got {json.dumps(spec)[:80]}")
    unknown = sorted(set(spec) - {"vary", "flags"})
    if unknown:
        raise ValueError(f"{where}: expected keys 'vary' and 'flags', got {unknown}")
    vary, flags = spec.get("vary", {}), spec.get("flags", [])
    if not isinstance(vary, dict):
        raise ValueError(f"{where}: \"vary\" must be an object {{flag: [values]}}, got "
                         f"{json.dumps(vary)[:80]}")
    if not isinstance(flags, list) or not all(isinstance(x, (str, int, float)) for x in flags):
        raise ValueError(f"{where}: \"flags\" must be a list of es_abcd.py flags and values, "
                         f"got {json.dumps(flags)[:80]}")
    entries = []
    for flag, values in vary.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: \"vary\" {flag!r} must be a non-empty list of values, "
                             f"got {json.dumps(values)[:80]}")
        # A list or object value is a JSON setting's (written back as JSON); null, true and
        # false are refused by the flag's own check as the text they are in JSON.
        texts = [v.strip() if isinstance(v, str) else json.dumps(v) for v in values]
        if "" in texts:
            raise ValueError(f"{where}: \"vary\" {flag!r} has an empty value")
        entries.append((flag.strip().removeprefix("--"), texts, where))
    return entries, [x if isinstance(x, str) else json.dumps(x) for x in flags]


def check_sweep_dir(out: str, mode: str) -> None:
    """Refuse a directory that holds anything but a sweep, or a sweep where ``mode`` says
    none may be; process 0 looks and every process abides by what it saw."""
    refusal = ""
    if writes():
        try:
            runs.check_dir(out, KIND, mode)
        except ValueError as e:
            refusal = cli.one_line(e)
    refused = bool(from_process_0(np.array(bool(refusal))))
    if refusal:
        raise ValueError(refusal)
    if refused:
        raise ValueError(f"--out {out} is refused (process 0's error says why)")


def take_sweep_dir(out: str, mode: str) -> None:
    """Make ``out`` the sweep's (replacing the sweep it holds with "overwrite"), once every
    cell has been checked."""
    if writes():
        runs.take_dir(out, KIND, mode)
        os.makedirs(os.path.join(out, "cells"), exist_ok=True)


def main(argv=None) -> list[dict]:
    args = cli.parse(parser(), argv)[0]
    if args.coordinator and jax.process_count() != args.num_processes:
        raise ValueError("--coordinator: start each process from the command line "
                         "(python experiments/sweep.py ... --coordinator HOST:PORT)")
    mode = es_abcd.run_mode(args)
    runs.check_named(args.out, mode, RUNS_ROOT)
    if args.coordinator and args.out is None:
        raise checks.FieldError("--coordinator", "needs --out DIR, one directory that every "
                                                 "process names alike")
    if args.out is not None:
        check_sweep_dir(args.out, mode)
    axes, base = read_spec(args)
    cells = grid(axes, base)  # every cell checked: nothing is written before
    if args.out is None:  # a directory of its own, so that the same command runs again
        args.out = runs.new_run_dir(RUNS_ROOT)
    cells = placed(cells, args.out)
    take_sweep_dir(args.out, mode)
    done = {c.name: finished_row(c) if writes() else None for c in cells}
    finished = from_process_0(np.array([done[c.name] is not None for c in cells]))
    todo = [c for c, f in zip(cells, finished) if not f]
    work = sum(c.cfg.generations for c in todo)
    print(f"plastix sweep | {len(cells)} cells ({len(cells) - len(todo)} finished) in "
          f"{len(groups(todo))} compiled groups | {jax.device_count()} {jax.default_backend()} "
          f"device(s) in {jax.process_count()} process(es) | {args.out}", flush=True)
    t0, advanced = time.perf_counter(), [0]
    with progress.bar(work, unit="cell-generation", desc=os.path.basename(args.out)) as bar:

        def report(generations: int, group: str, step: int, total: int) -> None:
            advanced[0] += generations
            elapsed = time.perf_counter() - t0
            eta = elapsed / advanced[0] * (work - advanced[0])
            bar.update(generations)
            with bar.above():
                print(f"[{100 * advanced[0] / work:5.1f}%] {advanced[0]}/{work} "
                      f"cell-generations | group of {group} at {step}/{total} | "
                      f"{elapsed:.0f}s elapsed, ~{eta:.0f}s left", flush=True)

        for group in groups(todo):
            for cell, row in zip(group, run_group(group, report)):
                done[cell.name] = row
    if not writes():
        return []
    # A figure that is not finite is null (JSON has no NaN); its cell's note says why.
    results = [{"cell": c.name, "values": dict(c.values), **done[c.name],
                **{m: evolve.finite_or_none(done[c.name][m]) for m in METRICS}} for c in cells]
    summary = summarise(results, axes)
    failures = [r for r in results if failed(r)]
    table = markdown_table(summary, axes) + "".join(
        f"\n\nCell {r['cell']} learned no rule: {r['note']}." for r in failures)
    print("\n" + table)
    runs.write_text(os.path.join(args.out, "results.jsonl"),
                    "".join(json.dumps(r) + "\n" for r in results))
    runs.write_text(os.path.join(args.out, "results.md"), table + "\n")
    heatmap = save_heatmap(os.path.join(args.out, "heatmap.png"), summary, axes)
    print(f"\nwrote {args.out}/: results.jsonl results.md" + (" heatmap.png" if heatmap
                                                                else "") + " cells/")
    if failures:
        raise checks.Diverged(f"{len(failures)} of {len(results)} cells learned no rule "
                              f"({', '.join(r['cell'] for r in failures)}): "
                              f"{args.out}/results.md says why")
    return results

