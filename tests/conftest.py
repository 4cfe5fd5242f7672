"""The tests run under the device policy of the main job and the benchmarks."""

import os

# The suite runs in several processes at once (pytest-xdist): on a GPU none of them may
# take most of its memory up front, as JAX does by default.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from plastix import devices  # noqa: E402

devices.use_all_cpu_cores()


def run_on_cpu_devices(script: str, count: int = 4) -> str:
    """Run ``script`` in a fresh Python with ``count`` CPU devices; its stdout, after
    asserting it exited cleanly (a subprocess: the device count is fixed at JAX's start)."""
    import os
    import subprocess
    import sys
    import textwrap

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env,
                         capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout
