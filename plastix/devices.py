"""Where a population runs: one device policy for the main job, the benchmarks and tests.

* **CPU**: every core is its own XLA device (`use_all_cpu_cores`), and a population is
  evaluated two members per device at a time (`default_chunk`). A member's lifetime state
  (B copies of its plastic matrices, 1.6 MB at N = 128, V = 65, B = 8) then stays near its
  core's cache; one device would instead split every small per-step op over the cores.
  Two rather than one: a chunk of one member per device was as fast on that workload but
  up to 15 times slower on small networks (hidden 32, the polynomial readout), and whole
  populations at once were 2-5 times slower on both.
* **GPU / TPU**: the whole population is in flight at once (plain ``vmap``), sharded over
  the local devices; ``--chunk-size`` / ``--memory-budget-mb`` bound the memory when it
  does not fit.

In both cases the population's evaluation is split over the largest number of local
devices that divides it (`population_devices`), so any population size runs. On CPU the
population itself stays whole on every device (`shard_population`): the CPU devices share
one memory, and moving a population between them (a copy per device, then an all-gather
for evosax's best-member bookkeeping in ``tell``) costs more than ask and tell themselves.
"""

from __future__ import annotations

import argparse
import os
import warnings

import jax
import numpy as np

_FORCE_FLAG = "xla_force_host_platform_device_count"


def use_all_cpu_cores(count: int | None = None) -> int | None:
    """Expose ``count`` (default: every core) CPU devices; returns the count set, or None.

    Must run before JAX initialises its backends: before the first ``jax.devices()`` or
    computation, and before importing ``plastix.evolve`` (importing evosax's algorithms
    runs JAX code). Afterwards it warns and leaves the devices as they are; when
    ``XLA_FLAGS`` already sets ``--xla_force_host_platform_device_count`` (as the
    multi-device tests do) it leaves them silently. It changes nothing on GPU/TPU, whose
    CPU backend is unused.
    """
    if _FORCE_FLAG in os.environ.get("XLA_FLAGS", ""):
        return None
    count = count or os.cpu_count() or 1
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # backends already initialised: keep what is there
        if jax.device_count() < count:
            warnings.warn(f"JAX started before plastix.devices.use_all_cpu_cores(): running on "
                          f"{jax.device_count()} device(s), not {count}; call it first",
                          stacklevel=2)
        return None
    return count


def start_distributed(argv: list[str]) -> None:
    """``jax.distributed.initialize`` from a command line's --coordinator, --num-processes
    and --process-id flags (nothing without --coordinator). Must run, like
    `use_all_cpu_cores`, before anything starts JAX's backends (importing evosax does)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--coordinator")
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    args, _ = p.parse_known_args(argv)
    if args.coordinator is None:
        return
    # Collectives between CPU processes (the tests' two local processes); GPUs and TPUs
    # bring their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, num_processes=args.num_processes,
                               process_id=args.process_id)


def population_devices(population: int, devices=None) -> list:
    """The largest leading slice of ``devices`` (default: all local ones) whose size
    divides ``population``, so every device evaluates the same number of members."""
    devices = list(jax.local_devices() if devices is None else devices)
    count = max(d for d in range(1, len(devices) + 1) if population % d == 0)
    return devices[:count]


MEMBERS_PER_CPU_DEVICE = 2  # see the module docstring


def default_chunk(n_devices: int) -> int | None:
    """Members evaluated at once: two per device on CPU, all of them (None) elsewhere."""
    return MEMBERS_PER_CPU_DEVICE * n_devices if jax.default_backend() == "cpu" else None


def shard_population() -> bool:
    """Whether ask and tell hold the population split over the devices (GPU/TPU), or
    whole on every device while only its evaluation is split (CPU)."""
    return jax.default_backend() != "cpu"


def replicate(tree, sharding):
    """``tree`` whole on every device of ``sharding``, which may span processes: then every
    process must pass the same values, which go through the host, each process filling
    its own devices (``jax.make_array_from_callback``)."""
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def put(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)))
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)
