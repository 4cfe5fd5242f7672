"""Run directories, shared by the outer loops (ES in ``plastix.evolve``, meta-learning by
gradient in ``plastix.metagrad``, model training in ``plastix.train``).

A run directory holds

    config.json          what defines the run (a nested dict, written atomically)
    checkpoint.msgpack   {"step": int, "state": state dict} (flax msgpack, written atomically)
    metrics.jsonl        one JSON record per line, appended and fsynced as the run goes

and nothing in it is ever rewritten in place: a new config or checkpoint goes to a
temporary file that is fsynced and renamed over the old one, and dropping metrics records
rewrites the kept ones the same way. A kill at any instant therefore leaves each file
either as it was or as it was meant to become; the one exception, the metrics record being
appended at that instant, leaves a torn last line that `MetricsLog.read` drops.

Which run a directory holds is never left to chance (`claim`): a new run does not
start in a directory that holds another unless told to replace it, and a resume refuses a
directory with nothing to resume, or a checkpoint it cannot read, or a history that lacks
a block's record before its checkpoint or holds one twice or out of order (each record
names the step its block began at: `block_record`, `check_history`), or a data file (a
corpus) that has changed since the run began (``config.json`` records each by size and
sha256: `with_data_files`). A command line that names no directory gets a new one of its own
(`new_run_dir`, as hydra and wandb do), so the same command can be run again and
again; resuming or replacing a run needs its directory named (`check_named`).

Resuming means: refuse if the saved config differs from the current one in any key the
caller has not declared changeable (`check_config`), load the checkpoint, drop the
metrics records logged after it (`MetricsLog.truncate_to`) and go on
(`run_blocks` does the last three for a loop that advances in logged blocks).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from plastix import progress, tasks
from plastix.checks import FieldError
from plastix.cli import one_line
from plastix.rules import Rule

CONFIG = "config.json"
CHECKPOINT = "checkpoint.msgpack"
METRICS = "metrics.jsonl"
# A block's record carries the step its block began at (`block_record`).
BLOCK_START = "block_start"
# The config's entry for the data files a run reads: path -> size and sha256.
DATA_FILES = "data_files"


# --- atomic files ------------------------------------------------------------------------


def _fsync_dir(directory: str | os.PathLike) -> None:
    # Makes a rename durable; not every platform can open a directory, hence best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` by ``data``: a temporary file, fsynced, then renamed over it (its
    directory made if missing)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace the text file ``path`` atomically (`atomic_write`)."""
    atomic_write(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Replace ``path`` by ``obj`` as indented JSON, atomically."""
    write_text(path, json.dumps(obj, indent=1) + "\n")


# What `read_result` takes a field to be: a number (an int or a float, never a bool).
NUMBER = (int, float)


def read_result(path: str | os.PathLike, fields: Mapping[str, type | tuple[type, ...]],
                check: Callable[[dict], str | None] | None = None) -> dict | None:
    """The result a finished cell wrote (its ``result.json``, `write_json`); None where
    there is none yet.

    ``fields`` are the keys the caller reads and their types (`NUMBER` for a figure);
    ``check(result)`` may name a deeper problem (or return None). A file that is not JSON,
    not an object, lacks a key or holds a value of another type is a ValueError naming
    the file and the problem: the caller would otherwise fail on it later, far from the
    file (a KeyError), or report what it holds.
    """
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            result = json.loads(f.read())
    except (json.JSONDecodeError, UnicodeDecodeError):
        problem = "not JSON"
    else:
        problem = fields_problem(result, fields) or (check(result) if check else None)
    if problem:
        raise ValueError(f"{os.fspath(path)} is damaged ({problem}): delete it to run that "
                         f"cell again")
    return result


def fields_problem(result: Any, fields: Mapping[str, type | tuple[type, ...]]) -> str | None:
    """What is wrong with ``result`` as a JSON object holding ``fields`` (key: type), or
    None."""
    if not isinstance(result, dict):
        return f"{json.dumps(result)[:40]}, not a JSON object"
    for key, kind in fields.items():
        if key not in result:
            return f"no {key!r}"
        value = result[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)) \
                or not isinstance(value, kind):
            return f"{key!r} is {json.dumps(value)[:40]}"
    return None


def save_figure(fig, path: str | os.PathLike, **kwargs) -> None:
    """Save a matplotlib figure atomically (rendered to memory, then `atomic_write`), so a
    kill never leaves half an image; the format is the file's extension."""
    import io

    buffer = io.BytesIO()
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
    fig.savefig(buffer, format=fmt, **kwargs)
    atomic_write(path, buffer.getvalue())


# --- which run a directory holds ---------------------------------------------------------

RUN_FILES = (CONFIG, CHECKPOINT, METRICS)
CLAIM_MODES = ("new", "resume", "overwrite", "auto")
MARKER = "plastix-run.json"
MARKER_FORMAT = 1


def _never(path: str) -> bool:
    return False


@dataclasses.dataclass(frozen=True)
class RunKind:
    """What one kind of run (a command's) writes into a directory of its own.

    Every writer follows one rule (`check_dir`, then `take_dir`): a run goes only into a
    directory that is missing, empty, or holds a run of its own kind -- named by the marker
    file `MARKER`, or, for a run written before markers, recognised by ``recognise`` with
    nothing in the directory but what the kind writes. Anything else is refused by name.
    Replacing a run removes only ``files`` and the runs of kind ``cells`` in ``dirs``.

    Attributes:
      name: the kind, as the marker names it ("evolve", "sweep", "text", ...).
      files: the files such a run writes into its directory.
      dirs: its subdirectories (where the runs it is made of live), as names or
        ``fnmatch`` patterns (``"*_es_s*"``).
      cells: the kind of the runs in each of ``dirs``, where replacing the run removes
        them (None: the kind is never replaced whole).
      state: the entry whose presence means there is a run to resume (None: any of the
        kind's entries).
      recognise: whether a directory without a marker holds a run of this kind written
        before markers (its signature file, read).
    """

    name: str
    files: tuple[str, ...]
    dirs: tuple[str, ...] = ()
    cells: RunKind | None = None
    state: str | None = None
    recognise: Callable[[str], bool] = _never

    def owns(self, entry: str) -> bool:
        """Whether the directory entry ``entry`` is this kind's (a temporary file of a
        killed write among them)."""
        name = entry.removesuffix(".tmp")
        return (name == MARKER or name in self.files
                or any(fnmatch.fnmatchcase(entry, d) for d in self.dirs))

    def subdirs(self, run_dir: str) -> list[str]:
        """The paths of the kind's subdirectories that ``run_dir`` holds."""
        if not os.path.isdir(run_dir):
            return []
        return [os.path.join(run_dir, e) for e in sorted(os.listdir(run_dir))
                if any(fnmatch.fnmatchcase(e, d) for d in self.dirs)
                and os.path.isdir(os.path.join(run_dir, e))]


def json_with_keys(name: str, *keys: str, any_of: bool = False) -> Callable[[str], bool]:
    """A `RunKind.recognise`: the directory's JSON file ``name`` is an object holding every
    one of ``keys`` (with ``any_of``, at least one)."""

    def recognise(path: str) -> bool:
        try:
            with open(os.path.join(path, name), encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, ValueError):
            return False
        found = [k in saved for k in keys] if isinstance(saved, dict) else [False]
        return any(found) if any_of else all(found)

    return recognise


def has_entry(*names: str) -> Callable[[str], bool]:
    """A `RunKind.recognise`: the directory holds one of ``names``."""
    return lambda path: any(os.path.exists(os.path.join(path, n)) for n in names)


def read_marker(run_dir: str | os.PathLike) -> dict | None:
    """The marker of ``run_dir`` (``{"kind", "format", "plastix"}``), None if it has none."""
    path = os.path.join(run_dir, MARKER)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        marker = None
    if not (isinstance(marker, dict) and isinstance(marker.get("kind"), str)
            and isinstance(marker.get("format"), int)):
        raise ValueError(f"{path} is damaged: it does not name the kind of run the directory "
                         f"holds; move the directory away or repair the file")
    return marker


def _listing(names: list[str], most: int = 4) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def held_files(run_dir: str | os.PathLike, kind: RunKind) -> list[str]:
    """What of a run of ``kind`` ``run_dir`` holds (its files and non-empty subdirectories,
    not the marker): it holds a run if any."""
    path = os.fspath(run_dir)
    if not os.path.isdir(path):
        return []
    held = [n for n in kind.files if os.path.exists(os.path.join(path, n))]
    return held + [os.path.basename(d) for d in kind.subdirs(path) if os.listdir(d)]


def _check_writable(path: str, flag: str) -> None:
    # The nearest existing ancestor must let the directory be made and written.
    existing = path
    while not os.path.exists(existing):
        parent = os.path.dirname(os.path.abspath(existing))
        if parent == os.path.abspath(existing):
            break
        existing = parent
    if not os.path.isdir(existing):
        raise ValueError(f"{flag} {path} is a file, not a directory" if existing == path else
                         f"{flag} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: " + ("the directory is not writable"
                                                if existing == path else
                                                f"cannot create it ({existing} is not "
                                                f"writable)"))


def check_dir(run_dir: str | os.PathLike, kind: RunKind, mode: str = "new",
              flag: str = "--out") -> bool:
    """Check that a run of ``kind`` may go into ``run_dir``; nothing on disk changes, so a
    run refused later (any setting of the configuration) leaves the directory as it was.
    `take_dir` then makes it the run's.

    Args:
      run_dir: the run directory (it may not exist yet).
      kind: what the run writes.
      mode: "new" refuses a directory that holds a run; "resume" refuses one that holds
        none; "overwrite" will replace the run it holds; "auto" continues a run if there
        is one, else starts one (for experiments made of many cells).
      flag: how the user named the directory, for the messages.

    Returns:
      Whether the run continues from what the directory holds.

    Raises:
      ValueError: one line naming the directory and what is in the way.
    """
    if mode not in CLAIM_MODES:
        raise ValueError(f"unknown run-directory mode {mode!r}; choose one of {CLAIM_MODES}")
    path = os.fspath(run_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a file, not a run directory")
    _check_writable(path, flag)
    entries = sorted(os.listdir(path)) if os.path.isdir(path) else []
    foreign = [e for e in entries if not kind.owns(e)]
    marker = read_marker(path) if entries else None
    if marker is not None and marker["kind"] != kind.name:
        raise ValueError(f"{flag} {path} holds a plastix {marker['kind']} run, not a "
                         f"{kind.name} run: choose another directory")
    if marker is not None and marker["format"] > MARKER_FORMAT:
        raise ValueError(f"{flag} {path} holds a run written by a newer plastix (marker "
                         f"format {marker['format']}); use that version or another directory")
    if foreign:
        raise ValueError(f"{flag} {path} holds files that a plastix {kind.name} run does not "
                         f"write ({_listing(foreign)}): choose an empty or new directory")
    if entries and marker is None and not kind.recognise(path):
        raise ValueError(f"{flag} {path} holds {_listing(entries)} but no {MARKER}: it is "
                         f"not a plastix {kind.name} run; choose an empty or new directory")
    if mode == "overwrite" and kind.cells is not None:
        for cell in _cells(path, kind):
            check_dir(cell, kind.cells, "auto", flag=f"{flag} run")
    held = held_files(path, kind)
    if mode == "auto":
        return bool(held)
    if mode == "resume":
        state = kind.state or (held[0] if held else None)
        if state is None or state not in held:
            raise ValueError(f"nothing to resume in {path}: it holds no {kind.name} run (no "
                             f"{kind.state or 'files of one'}); start it without --resume"
                             + (" and with --overwrite" if held else ""))
        return True
    if held and mode == "new":
        if kind.state is not None and kind.state not in held:
            raise ValueError(f"{path} holds what is left of a {kind.name} run without its "
                             f"{kind.state} ({_listing(held)}), which cannot be resumed: "
                             f"replace it with --overwrite")
        raise ValueError(f"{path} already holds a run ({kind.name}: {_listing(held)}): "
                         f"continue it with --resume or replace it with --overwrite")
    return False


def _cells(path: str, kind: RunKind) -> list[str]:
    return [os.path.join(d, cell) for d in kind.subdirs(path) for cell in sorted(os.listdir(d))]


def take_dir(run_dir: str | os.PathLike, kind: RunKind, mode: str = "new") -> None:
    """Make ``run_dir`` the run's, after `check_dir` accepted it and every other setting
    has been checked: create it, mark it with ``kind``, and for "overwrite" remove the run
    it held -- ``kind``'s files and cells, nothing else."""
    path = os.fspath(run_dir)
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):  # a temporary file is only ever a killed write
        if name.endswith(".tmp") and kind.owns(name):
            os.remove(os.path.join(path, name))
    if mode == "overwrite":
        remove_run(path, kind, keep_marker=True)
    if read_marker(path) is None:
        from plastix import __version__  # the package, imported by now
        write_json(os.path.join(path, MARKER), {"kind": kind.name, "format": MARKER_FORMAT,
                                                "plastix": __version__})


def remove_run(run_dir: str | os.PathLike, kind: RunKind, keep_marker: bool = False) -> None:
    """Remove the run of ``kind`` in ``run_dir``: its files, its cells (runs of
    ``kind.cells``) and, unless ``keep_marker``, its marker and the directory if that
    leaves it empty. Nothing the kind does not write is touched."""
    path = os.fspath(run_dir)
    # The config goes last: a kill in between leaves a run that "new" still refuses,
    # never an old checkpoint under a new config.
    for name in sorted(kind.files, key=lambda n: n == CONFIG):
        target = os.path.join(path, name)
        if os.path.isfile(target):
            os.remove(target)
    if kind.cells is not None:
        for cell in _cells(path, kind):
            remove_run(cell, kind.cells)
        for d in kind.subdirs(path):
            if not os.listdir(d):
                os.rmdir(d)
    if not keep_marker:
        if os.path.exists(os.path.join(path, MARKER)):
            os.remove(os.path.join(path, MARKER))
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)


def claim(run_dir: str | os.PathLike, kind: RunKind, mode: str = "new",
          flag: str = "--out") -> bool:
    """`check_dir` then `take_dir`, for a run whose every other setting is already
    checked. Returns whether the run continues from what the directory holds."""
    resume = check_dir(run_dir, kind, mode, flag)
    take_dir(run_dir, kind, mode)
    return resume


def new_run_dir(root: str | os.PathLike) -> str:
    """A new, empty directory ``root/YYYYmmdd-HHMMSS`` (the local time; ``-2``, ``-3``, ...
    after it when that is taken) for a run whose command line named none. It is made here,
    at once, so that runs started in the same second never share one; make it only once
    the run's configuration has been checked."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    os.makedirs(root, exist_ok=True)
    for n in itertools.count(1):
        path = os.path.join(root, stamp if n == 1 else f"{stamp}-{n}")
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path


def check_named(out: str | None, mode: str, root: str, flag: str = "--out") -> None:
    """Refuse to resume or replace (``mode`` "resume" or "overwrite") a run the command
    line did not name: without ``flag`` every run gets a new directory under ``root``."""
    if out is None and mode in ("resume", "overwrite"):
        raise FieldError(f"--{mode}", f"needs {flag} DIR, the run to "
                                      f"{'continue' if mode == 'resume' else 'replace'} "
                                      f"(without {flag} every run gets a new directory "
                                      f"under {root})")


def check_output_file(path: str, flag: str, example: str) -> None:
    """An output file that can be written, checked before any work: not empty, not a
    directory (the message suggests ``<it>/<example>``), in a directory that exists or
    can be made. The file is the user's to name: writing it replaces what it held."""
    if not path:
        raise FieldError(flag, "must be a file path, got ''")
    if os.path.isdir(path):
        raise FieldError(flag, f"{path} is a directory; give a file path such as "
                               f"{os.path.join(path, example)}")
    _check_writable(os.path.dirname(path) or ".", flag)


# --- config ------------------------------------------------------------------------------


def _jsonable(x: Any) -> Any:
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if isinstance(x, Rule):  # a rule in a network: by name, which builds it back
        return x.name
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        # Fields hidden from repr are bookkeeping (e.g. a flax module's parent), not config.
        return {f.name: _jsonable(getattr(x, f.name)) for f in dataclasses.fields(x) if f.repr}
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if callable(x):  # a function or class in a config (an activation, an initialiser)
        name = getattr(x, "__qualname__", None) or getattr(x, "__name__", None)
        return name or type(x).__name__
    raise TypeError(f"cannot write a {type(x).__name__} into a run config: {x!r}")


def config_dict(cfg: Any) -> dict:
    """A run config (nested frozen dataclasses, mappings, tuples) as the nested dict that
    ``config.json`` holds: tuples become lists and functions their names, so the dict
    equals what reading the file back gives."""
    out = _jsonable(cfg)
    if not isinstance(out, dict):
        raise TypeError(f"a run config must be a dataclass or a mapping, got {type(cfg).__name__}")
    return out


def write_config(run_dir: str | os.PathLike, cfg_dict: Mapping) -> None:
    """Write ``cfg_dict`` to ``run_dir/config.json`` atomically (sorted keys, indented)."""
    os.makedirs(run_dir, exist_ok=True)
    text = json.dumps(cfg_dict, indent=1, sort_keys=True) + "\n"
    atomic_write(os.path.join(run_dir, CONFIG), text.encode())


def read_config(run_dir: str | os.PathLike) -> dict | None:
    """``run_dir/config.json``, or None if there is none."""
    path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is damaged ({one_line(e)}); start afresh with --overwrite "
                         f"or move it away") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path} holds no run config (a JSON object); start afresh with "
                         f"--overwrite or move it away")
    return saved


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """Leaves by dotted path; a list of mappings (a network's layers) by index too, so a
    difference is named down to its field (``net.layers.0.size``)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            value = {str(i): v for i, v in enumerate(value)} | {"length": len(value)}
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _declared(key: str, may_change: Iterable[str]) -> bool:
    # A declared key covers everything below it ("es" would cover "es.chunk_size").
    return any(key == m or key.startswith(f"{m}.") for m in may_change)


def config_diff(saved: Mapping, current: Mapping, may_change: Iterable[str] = ()) -> list[str]:
    """Dotted paths of the keys (leaves) where ``saved`` and ``current`` differ, less those
    under a ``may_change`` path; a key present in only one of them differs."""
    a, b = _flatten(saved), _flatten(current)
    # The data files are compared by `changed_data_files`, which says what changed.
    may_change = (*may_change, DATA_FILES)
    return sorted(k for k in set(a) | set(b)
                  if (k not in a or k not in b or a[k] != b[k]) and not _declared(k, may_change))


def check_config(
    run_dir: str | os.PathLike,
    cfg_dict: Mapping,
    resume: bool,
    may_change: Iterable[str] = (),
    upgrade: Callable[[dict], dict] | None = None,
) -> None:
    """Refuse to resume ``run_dir`` if its saved config differs from ``cfg_dict``.

    Args:
      run_dir: the run directory.
      cfg_dict: the current run's config (``config_dict(cfg)``).
      resume: whether the run continues from ``run_dir``'s checkpoint; a fresh run
        replaces whatever the directory held, so nothing is checked then.
      may_change: dotted keys (``"generations"``, ``"es.chunk_size"``) that a resumed
        run may set afresh: its budget, or settings that change speed or memory but not
        results.
      upgrade: maps a saved config of an older layout to the current one.

    Raises:
      ValueError: one line naming a data file that has changed since the run began
        (`changed_data_files`), or the directory and the differing keys.
    """
    saved = read_config(run_dir) if resume else None
    if saved is None:
        return
    changed_files = changed_data_files(saved, cfg_dict)
    if changed_files:
        raise ValueError(f"{changed_files[0]}; put the original back or start afresh with "
                         f"--overwrite")
    if upgrade is not None:
        saved = upgrade(saved)
    changed = config_diff(saved, cfg_dict, may_change)
    if changed:
        raise ValueError(
            f"{os.fspath(run_dir)} holds a run with a different configuration (differs in: "
            f"{', '.join(changed)}); resume it with the same settings or use another directory"
        )


# --- data files ----------------------------------------------------------------------------


def file_fingerprint(path: str | os.PathLike) -> dict:
    """``{"size", "sha256"}`` of a data file a run reads (a path, or a bundled corpus's
    name: `plastix.tasks.corpus_path`), as a run's config records it
    (`with_data_files`). Hashed once per version of the file in a process."""
    return tasks.corpus_fingerprint(os.fspath(path))


def with_data_files(cfg_dict: Mapping, paths: Iterable[str | os.PathLike | None]) -> dict:
    """``cfg_dict`` with the data files at ``paths`` (None: no file) recorded by content
    under `DATA_FILES`, so that a resume can tell a file rewritten under the same path
    (`check_config`)."""
    files = {os.fspath(p): file_fingerprint(p) for p in paths if p is not None}
    return {**cfg_dict, DATA_FILES: files} if files else dict(cfg_dict)


def changed_data_files(saved: Mapping, current: Mapping) -> list[str]:
    """One line for each data file that both configs record whose size or sha256 differ
    (a config from before files were recorded records none: nothing to compare)."""
    before, now = saved.get(DATA_FILES) or {}, current.get(DATA_FILES) or {}
    lines = []
    for path in sorted(set(before) & set(now)):
        old, new = before[path], now[path]
        differ = [k for k in ("size", "sha256") if old.get(k) != new.get(k)]
        if differ:
            lines.append(f"{path} has changed since the run began ({' and '.join(differ)} "
                         f"differ{'s' if len(differ) == 1 else ''}): it was {old.get('size')} "
                         f"bytes with sha256 {str(old.get('sha256'))[:12]}..., it is "
                         f"{new['size']} bytes with sha256 {new['sha256'][:12]}...")
    return lines


# --- checkpoints -------------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike, payload: Any, step: int) -> None:
    """Write ``{"step": step, "state": payload}`` (any pytree) atomically as flax msgpack."""
    record = {"step": int(step),
              "state": flax.serialization.to_state_dict(jax.device_get(payload))}
    atomic_write(path, flax.serialization.msgpack_serialize(record))


def load_checkpoint(path: str | os.PathLike, template: Any) -> tuple[Any, int]:
    """Read a checkpoint written by `save_checkpoint` into ``template``'s structure.

    Returns ``(state, step)``, the state's leaves as jax arrays. Checkpoints of the
    formats used before this one are read too: ``{"generation", "state"}`` (ES) and a
    bare state dict with a ``"step"`` entry (the gradient path's ``TrainState``).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            record = flax.serialization.msgpack_restore(f.read())
        if "state" in record:
            state_dict, step = record["state"], record.get("step", record.get("generation"))
        else:
            state_dict, step = record, record["step"]
        state = flax.serialization.from_state_dict(template, state_dict)
        state = jax.tree.map(jnp.asarray, state)
        _check_shapes(template, state)
        step = int(step)
    except OSError:
        raise
    except Exception as e:  # msgpack, flax and numpy each fail their own way
        raise ValueError(
            f"{path} cannot be resumed: it is damaged or holds another run's state "
            f"({type(e).__name__}: {one_line(e)[:160]}); start afresh with --overwrite or move it "
            f"away") from None
    return state, step


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step a checkpoint was written at; None if there is none or it is unreadable."""
    try:
        with open(path, "rb") as f:
            record = flax.serialization.msgpack_restore(f.read())
        return int(record.get("step", record.get("generation")))
    except Exception:  # missing, damaged or of another format: not a finished run
        return None


def _check_shapes(template: Any, state: Any) -> None:
    # from_state_dict fills a template's structure without comparing shapes.
    for (where, want), got in zip(jax.tree_util.tree_leaves_with_path(template),
                                  jax.tree.leaves(state)):
        if np.shape(want) != np.shape(got):
            raise ValueError(f"{jax.tree_util.keystr(where)} has shape {np.shape(got)}, "
                             f"this run needs {np.shape(want)}")


# --- metrics -----------------------------------------------------------------------------


class MetricsLog:
    """``metrics.jsonl``: one JSON record per line, each carrying its step under ``step_key``.

    Records are only ever appended (flushed and fsynced each), or the file is replaced
    whole (`truncate_to`), so a kill leaves at most a torn last line.
    """

    def __init__(self, path: str | os.PathLike, step_key: str = "step"):
        self.path = os.fspath(path)
        self.step_key = step_key

    def append(self, record: Mapping) -> None:
        """Add one record as one line."""
        line = (json.dumps(record) + "\n").encode()
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read(self, upto_step: int | None = None) -> list[dict]:
        """The records, oldest first; with ``upto_step`` only those at or before it.

        A last line that is not valid JSON is a record torn by a kill and is dropped;
        an invalid line before it is damage this log cannot explain, and raises.
        """
        if not os.path.exists(self.path):
            return []
        with open(self.path, "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # torn by a kill mid-append
                    break
                raise ValueError(f"{self.path}:{number} is not a JSON record") from None
            if not isinstance(record, dict) or not isinstance(record.get(self.step_key), int):
                raise ValueError(f"{self.path}:{number} is not a record of this run (no "
                                 f"{self.step_key!r})")
            records.append(record)
        if upto_step is not None:
            records = [r for r in records if r[self.step_key] <= upto_step]
        return records

    def truncate_to(self, step: int) -> list[dict]:
        """Keep only the records at or before ``step`` (those a resumed run will not log
        again); returns them. The file is replaced atomically, never edited in place."""
        kept = self.read(upto_step=step)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        return kept


def block_record(record: Mapping, first: int, step_key: str = "step") -> dict:
    """``record``, the record of a block that began at step ``first``, with that step
    under `BLOCK_START` (after the step the block reached): what lets a resume check that
    no block of the history is missing (`check_history`), whatever block sizes the run
    was logged in."""
    return {step_key: record[step_key], BLOCK_START: int(first), **record}


def history_break(records: Iterable[Mapping], step_key: str = "step",
                  kind: str = "") -> str | None:
    """Where a series of block records (oldest first, the first block beginning at step
    0) stops following on from itself, said as the end of a sentence about the file
    (``kind``, e.g. "valid ", names the series); None if every block is there, once, in
    order.

    A record at or before the one above it is out of order or logged twice; a record
    whose block (`BLOCK_START`) does not begin where the one above it ended leaves a
    gap. Records logged before blocks carried their start are checked for order alone.
    """
    records = list(records)
    for above, record in itertools.pairwise(records):
        step, last = record[step_key], above[step_key]
        if step == last:
            return f"logs the {kind}record of {step_key} {step} twice"
        if step < last:
            return (f"logs the {kind}record of {step_key} {step} after that of {step_key} "
                    f"{last} (records out of order)")
    last = 0
    for record in records:
        first = record.get(BLOCK_START)
        if first is not None and first > last:
            return f"has no {kind}record of {step_key}s {last + 1} to {first}"
        if first is not None and first < last:
            return (f"logs a {kind}record of {step_key}s {first + 1} to {record[step_key]} "
                    f"that overlaps the one before it (to {last})")
        last = record[step_key]
    return None


def check_history(log: MetricsLog, step: int, total: int | None = None,
                  split: str | None = None) -> None:
    """Refuse to resume from a checkpoint at ``step`` unless ``log`` holds the whole
    history up to it: every block's record once, in order, without a gap
    (`history_break`), the last at ``step``; and unless the run is to last at least that
    long (``total``). Either would give a run with records missing, or an old result
    passed off as the one asked for. With ``split`` the blocks are the records whose
    "split" is that (the training records of a log that holds evaluations too)."""
    if total is not None and step > total:
        raise ValueError(f"{os.path.dirname(log.path) or '.'}: the checkpoint is at "
                         f"{log.step_key} {step}, past the {total} asked for; ask for at "
                         f"least {step}")
    if step == 0:
        return
    records = log.read(upto_step=step)
    if split is not None:
        records = [r for r in records if r.get("split") == split]
    broken = history_break(records, log.step_key, f"{split} " if split else "")
    if broken is not None:
        raise ValueError(f"{log.path} {broken}: the run's history is damaged; start afresh "
                         f"with --overwrite")
    last = records[-1][log.step_key] if records else None
    if last != step:
        where = "is missing" if not os.path.exists(log.path) else (
            "holds no record" if last is None else f"ends at {log.step_key} {last}")
        raise ValueError(f"{log.path} {where} but the checkpoint is at {log.step_key} "
                         f"{step}: the run's history is incomplete; start afresh with "
                         f"--overwrite")


# --- a loop of logged, checkpointed blocks ---------------------------------------------------


def run_blocks(
    state: Any,
    total: int,
    advance: Callable[[Any, int, int], tuple[Any, dict]],
    out_dir: str | os.PathLike | None = None,
    log_every: int = 10,
    resume: bool = False,
    on_log: Callable[[dict], None] | None = None,
    step_key: str = "step",
    place: Callable[[Any], Any] = lambda state: state,
    time_budget_s: float | None = None,
    on_start: Callable[[int], None] | None = None,
) -> tuple[Any, list[dict]]:
    """Advance ``state`` to step ``total`` in blocks of ``log_every`` steps, one record and
    one checkpoint per block.

    ``advance(state, first, count) -> (state, record)`` runs steps ``first .. first+count-1``
    and describes them in ``record`` (which carries the step reached under ``step_key``;
    the loop adds ``first`` under `BLOCK_START`).
    With ``out_dir`` records go to its ``metrics.jsonl`` and the state to its checkpoint;
    with ``resume`` the loop restarts from that checkpoint (read into ``state``'s
    structure, then ``place``d) and drops the records logged after it, so it ends exactly
    as an uninterrupted run would when ``advance`` depends on the step index only. Without
    ``resume`` the directory's old checkpoint and records are discarded. With
    ``time_budget_s`` the loop also stops after the first block that ends that many
    seconds after this call began (for runs compared at equal wall-clock time; where it
    stops then depends on the machine's speed). ``on_start(step)`` is called once the
    run's first step is settled (0, or a resumed checkpoint's) and before anything in
    ``out_dir`` changes, so a refused resume leaves the directory as it was. On a
    terminal a progress bar with the ETA stays under what ``on_log`` prints
    (`plastix.progress`); elsewhere the output is ``on_log``'s alone.

    Raises:
      ValueError: on resume, a checkpoint that cannot be read into ``state``'s structure,
        a history that does not reach it (`check_history`), or a checkpoint past ``total``.

    Returns:
      ``(final_state, history)``: history is every record of the run, oldest first.
    """
    start, history, log, ckpt_path = 0, [], None, None
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        ckpt_path = os.path.join(out_dir, CHECKPOINT)
        log = MetricsLog(os.path.join(out_dir, METRICS), step_key=step_key)
        if resume and os.path.exists(ckpt_path):
            state, start = load_checkpoint(ckpt_path, state)
            check_history(log, start, total)
        if on_start is not None:
            on_start(start)
        if not resume and os.path.exists(ckpt_path):
            # A fresh run: a later resume must not pick up the previous run's state.
            os.remove(ckpt_path)
        history = log.truncate_to(start)  # the resumed run logs later blocks again
    elif on_start is not None:
        on_start(start)
    state = place(state)
    step, began = start, time.perf_counter()
    # A run stopped by its time budget has no known end, so no ETA.
    with progress.bar(None if time_budget_s is not None else total, initial=start,
                      unit=step_key, desc=out_dir and os.path.basename(out_dir)) as bar:
        while step < total:
            if time_budget_s is not None and time.perf_counter() - began >= time_budget_s:
                break
            count = min(log_every, total - step)
            state, record = advance(state, step, count)
            record = block_record(record, step, step_key)
            step += count
            history.append(record)
            if log is not None:
                # Record first: a kill between the two leaves a record past the
                # checkpoint, which the resumed run drops and logs again.
                log.append(record)
                save_checkpoint(ckpt_path, state, step)
            bar.update(count)
            if on_log is not None:
                with bar.above():
                    on_log(record)
    return state, history
