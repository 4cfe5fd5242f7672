"""Population evaluation in chunks, so a population too large for memory still runs.

``vmap`` over a whole population holds every member's working set at once (for the
plastic RNN, ``B`` copies of every plastic matrix per member). `chunked_vmap` evaluates
``chunk_size`` members at a time, chunk after chunk inside one ``lax.scan``, and returns
exactly what ``vmap`` would; `chunk_size_for_budget` picks the largest chunk whose
working set, as XLA's compiled memory analysis reports it, fits a byte budget; and
`population_map` does both from a ``memory_budget`` option::

    evaluate = population_map(member_fitness, memory_budget=2 * 2**30)
    fitness = jax.jit(evaluate)(population_params, keys)

The chunk size is also a speed knob. A GPU wants the largest chunk that fits (every
member in flight at once); a CPU core wants a chunk whose state stays in its cache (for
the plastic lifetime, two members per core: see `plastix.devices`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


def _leading_size(tree) -> int:
    sizes = {leaf.shape[0] for leaf in jax.tree.leaves(tree)}
    if len(sizes) != 1:
        raise ValueError(f"every argument needs the same leading population axis, got {sizes}")
    return sizes.pop()


def _into_chunks(x: jax.Array, chunk_size: int, num_chunks: int) -> jax.Array:
    """``(P, ...) -> (num_chunks, chunk_size, ...)``; chunk ``j`` holds members ``j + i num_chunks``.

    The population axis is padded (with copies of the last member, so padding stays
    finite) and split as ``(chunk_size, num_chunks)``, not the other way round: a
    population sharded in contiguous blocks over devices then stays sharded along the
    chunk axis, and each scan step runs ``chunk_size / devices`` members per device.
    """
    pad = chunk_size * num_chunks - x.shape[0]
    x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]) if pad else x
    x = x.reshape((chunk_size, num_chunks) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)


def _from_chunks(y: jax.Array, population: int) -> jax.Array:
    """Inverse of `_into_chunks`: ``(num_chunks, chunk_size, ...) -> (P, ...)``."""
    y = jnp.swapaxes(y, 0, 1)
    return y.reshape((-1,) + y.shape[2:])[:population]


def chunked_vmap(fn: Callable, chunk_size: int,
                 place_chunks: Callable | None = None) -> Callable:
    """``vmap(fn)`` over the leading axis of every argument, ``chunk_size`` members at a time.

    Args:
      fn: the per-member function; arguments are pytrees whose leaves all carry a
        leading population axis (close over anything shared, e.g. with ``partial``).
      chunk_size: members evaluated together; peak memory grows with it. A population
        that it does not divide gets a padded last chunk whose results are dropped.
      place_chunks: applied to the ``(num_chunks, chunk_size, ...)`` arguments before the
        loop over chunks, e.g. a sharding constraint that splits every chunk over devices.

    Returns:
      A function with ``fn``'s signature plus the population axis, equal to
      ``jax.vmap(fn)`` up to float rounding of batched ops.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    def evaluate(*args):
        population = _leading_size(args)
        size = min(chunk_size, population)
        num_chunks = math.ceil(population / size)
        chunks = jax.tree.map(lambda x: _into_chunks(x, size, num_chunks), args)
        if place_chunks is not None:
            chunks = place_chunks(chunks)
        out = jax.lax.map(lambda chunk: jax.vmap(fn)(*chunk), chunks)
        return jax.tree.map(lambda y: _from_chunks(y, population), out)

    return evaluate


class MemoryCost(NamedTuple):
    """Bytes a chunk of ``c`` members needs: ``fixed + c * per_member``."""

    fixed: int
    per_member: int


def compiled_bytes(compiled) -> int:
    """Arguments + outputs + temporaries of a compiled executable, per XLA's memory
    analysis (``jax.jit(f).lower(...).compile()``): its peak device memory, give or take
    what XLA fuses or reuses."""
    stats = compiled.memory_analysis()
    return (stats.argument_size_in_bytes + stats.output_size_in_bytes
            + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def _footprint(fn: Callable, member_args, chunk: int) -> int:
    """`compiled_bytes` of ``vmap(fn)`` on ``chunk`` members."""
    batched = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((chunk,) + tuple(a.shape), a.dtype), member_args)
    return compiled_bytes(jax.jit(jax.vmap(fn)).lower(*batched).compile())


def member_memory(fn: Callable, *member_args) -> MemoryCost:
    """The `MemoryCost` of evaluating ``fn`` on chunks of members.

    Compiles ``vmap(fn)`` for chunks of 1, 2 and 4 members (shapes only; nothing runs)
    and reads XLA's memory analysis. XLA may fuse away a temporary at one chunk size and
    not at another, so the per-member cost is the largest of the measured slopes and of
    one member's own arguments and outputs: an over- rather than an under-estimate.

    Args:
      fn: the per-member function.
      *member_args: one member's arguments (arrays or ``jax.ShapeDtypeStruct``).
    """
    one, two, four = (_footprint(fn, member_args, c) for c in (1, 2, 4))
    out_bytes = sum(math.prod(o.shape) * o.dtype.itemsize
                    for o in jax.tree.leaves(jax.eval_shape(fn, *member_args)))
    arg_bytes = sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize
                    for a in jax.tree.leaves(member_args))
    per_member = max(two - one, (four - two) // 2, arg_bytes + out_bytes, 1)
    return MemoryCost(fixed=max(one - per_member, 0), per_member=per_member)


def chunk_size_for_budget(cost: MemoryCost, budget_bytes: int, population: int,
                          multiple_of: int = 1) -> int:
    """The largest chunk ``c <= population`` with ``cost.fixed + c * cost.per_member <= budget``.

    Rounded down to a multiple of ``multiple_of`` (the device count, so that a sharded
    chunk splits evenly) but never below ``multiple_of``: a budget too small for even
    that evaluates the minimum chunk rather than failing.
    """
    fits = (budget_bytes - cost.fixed) // cost.per_member
    size = min(max(int(fits), 1), population)
    return max(size // multiple_of * multiple_of, multiple_of)


def population_map(fn: Callable, *, chunk_size: int | None = None,
                   memory_budget: int | None = None, multiple_of: int = 1,
                   place_chunks: Callable | None = None) -> Callable:
    """``vmap(fn)`` over a population, chunked by size or by a memory budget.

    Args:
      fn: the per-member function (see `chunked_vmap`).
      chunk_size: members per chunk; wins over ``memory_budget``.
      memory_budget: bytes the evaluation may use, the population's own inputs
        included; the chunk size is derived at trace time from ``fn``'s compiled memory
        analysis (`member_memory`).
      multiple_of: keep chunks a multiple of this (the number of devices sharing them).
      place_chunks: see `chunked_vmap`.

    Returns:
      The population function. With neither option it is plain ``jax.vmap(fn)``.
    """
    if chunk_size is not None:
        return chunked_vmap(fn, chunk_size, place_chunks)
    if memory_budget is None:
        return jax.vmap(fn)

    def evaluate(*args):
        population = _leading_size(args)
        member_args = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), args)
        cost = member_memory(fn, *member_args)
        # The whole population's inputs stay resident; the chunks share what is left.
        inputs = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(args))
        size = chunk_size_for_budget(cost, memory_budget - inputs, population, multiple_of)
        return chunked_vmap(fn, size, place_chunks)(*args)

    return evaluate
