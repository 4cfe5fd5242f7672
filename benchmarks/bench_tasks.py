"""Throughput of on-device sampling: windows of tiny shakespeare per second.

Times ``task.sample(key, 1024)`` for 100-character windows (compilation timed apart,
``block_until_ready``, best and median of several runs) and, for comparison, the
generated recall tasks the ES experiments use. Prints one JSON object.

Run from the project root::

    python benchmarks/bench_tasks.py [--path FILE] [--batch 1024] [--seq-len 100] [--repeats 20]

If the default corpus is missing (a fresh checkout has no ``../shared/data``), a random
corpus of the same length and alphabet size is generated and the JSON says so; a missing
``--path`` is refused.
"""

import json
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

from plastix import checks, cli, tasks

DEFAULT_CORPUS = pathlib.Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_CHARS = 1_115_394


def generated_corpus(directory: str, num_chars: int = TINY_SHAKESPEARE_CHARS, seed: int = 0) -> str:
    """Writes a random text as long as tiny shakespeare, over 65 characters; returns its path."""
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ,.;:!?'-&$3\n"))
    text = "".join(np.random.default_rng(seed).choice(alphabet, size=num_chars))
    path = pathlib.Path(directory) / "generated_corpus.txt"
    path.write_text(text, encoding="utf-8")
    return str(path)


def time_sampler(task: tasks.Task, batch: int, repeats: int) -> dict:
    """Compile time, then best / median seconds of ``repeats`` calls of ``task.sample``."""
    start = time.perf_counter()
    jax.block_until_ready(task.sample(jax.random.key(0), batch))
    compile_s = time.perf_counter() - start
    seconds = []
    for i in range(1, repeats + 1):
        start = time.perf_counter()
        jax.block_until_ready(task.sample(jax.random.key(i), batch))
        seconds.append(time.perf_counter() - start)
    best = min(seconds)
    return {
        "task": task.name, "batch": batch, "seq_len": task.seq_len,
        "compile_s": round(compile_s, 4),
        "best_s": round(best, 6), "median_s": round(statistics.median(seconds), 6),
        "windows_per_s": round(batch / best), "tokens_per_s": round(batch * task.seq_len / best),
    }


def parser() -> cli.Parser:
    p = cli.Parser(description=__doc__.splitlines()[0])
    p.add_argument("--path", default=None,
                   help=f"UTF-8 text corpus (default {DEFAULT_CORPUS}, or a generated one "
                        f"if that is missing)")
    p.add_argument("--batch", type=checks.SIZE, default=1024)
    p.add_argument("--seq-len", type=checks.SIZE, default=100)
    p.add_argument("--repeats", type=checks.SIZE, default=20)
    return p


def parse_args(argv=None):
    """The checked command line: a corpus asked for by --path must be there (only the
    default one is replaced by a generated text)."""
    args = parser().parse_args(argv)
    if args.path is not None and not pathlib.Path(args.path).is_file():
        raise checks.FieldError("--path", f"{args.path}: no such file; give a UTF-8 text "
                                          f"file, or leave --path out to time a generated one")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        path, corpus = args.path or str(DEFAULT_CORPUS), "file"
        if not pathlib.Path(path).is_file():
            print(f"corpus {path} not found: timing a generated random corpus of "
                  f"{TINY_SHAKESPEARE_CHARS:,} characters instead", file=sys.stderr)
            path, corpus = generated_corpus(scratch), "generated (file missing)"
        text_task = tasks.get("text", path=path, seq_len=args.seq_len)
        results = [time_sampler(text_task, args.batch, args.repeats)]
    results[0].update(corpus=corpus, path=path, vocab_size=text_task.vocab_size)
    for name, config in [("assoc_retrieval", {}), ("recall_overwrite", dict(num_keys=8, num_pairs=12))]:
        results.append(time_sampler(tasks.get(name, **config), args.batch, args.repeats))

    record = {"device": str(jax.devices()[0]), "jax": jax.__version__,
              "repeats": args.repeats, "results": results}
    print(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    cli.run(main)
