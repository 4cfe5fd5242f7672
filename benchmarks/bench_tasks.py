"""Throughput of on-device sampling: windows of tiny shakespeare per second.

Times ``task.sample(key, 1024)`` for 100-character windows (compilation timed apart,
``block_until_ready``, best and median of several runs) and, for comparison, the
generated recall tasks the ES experiments use. Prints one JSON object.

Run from the project root::

    python benchmarks/bench_tasks.py [--path FILE] [--batch 1024] [--seq-len 100] [--repeats 20]

The corpus is tiny shakespeare as bundled with plastix unless ``--path`` names a file.
"""

import json
import os
import statistics
import time

import jax

from plastix import checks, cli, tasks


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
    p.add_argument("--path", default=tasks.TINY_SHAKESPEARE,
                   help="UTF-8 text corpus, or the name of a corpus bundled with plastix")
    p.add_argument("--batch", type=checks.SIZE, default=1024)
    p.add_argument("--seq-len", type=checks.SIZE, default=100)
    p.add_argument("--repeats", type=checks.SIZE, default=20)
    return p


def parse_args(argv=None):
    """The checked command line: the corpus must be there."""
    args = parser().parse_args(argv)
    if not os.path.isfile(tasks.corpus_path(args.path)):
        raise checks.FieldError("--path", f"{args.path}: no such file; give a UTF-8 text "
                                          f"file, or leave --path out to time tiny shakespeare")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    text_task = tasks.get("text", path=args.path, seq_len=args.seq_len)
    results = [time_sampler(text_task, args.batch, args.repeats)]
    results[0].update(path=args.path, vocab_size=text_task.vocab_size)
    for name, config in [("assoc_retrieval", {}), ("recall_overwrite", dict(num_keys=8, num_pairs=12))]:
        results.append(time_sampler(tasks.get(name, **config), args.batch, args.repeats))

    record = {"device": str(jax.devices()[0]), "jax": jax.__version__,
              "repeats": args.repeats, "results": results}
    print(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    cli.run(main)
