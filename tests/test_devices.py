"""The device policy: every CPU core a device, populations split over those that divide them."""

import os
import subprocess
import sys

import jax
import pytest

from plastix import devices, evolve, plastic, tasks


def test_every_core_is_a_device_under_the_policy():
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        assert jax.device_count() == (os.cpu_count() or 1)
    assert devices.default_chunk(jax.device_count()) == 2 * jax.device_count()


@pytest.mark.parametrize("population, available, used", [(64, 4, 4), (6, 4, 3), (7, 4, 1),
                                                         (8, 1, 1)])
def test_population_goes_to_the_devices_that_divide_it(population, available, used):
    fake = [jax.devices()[0]] * available
    assert len(devices.population_devices(population, fake)) == used


def test_an_evolution_shards_any_even_population():
    task = tasks.get("copy", length=2, delay=1, num_symbols=3)
    net = plastic.PlasticRNN(vocab_size=task.vocab_size, hidden_size=4)
    cfg = evolve.ESConfig(population=6, batch=2)
    evolution = evolve.make_evolution(net, task, cfg, jax.random.key(0))
    assert 6 % evolution.mesh.devices.size == 0


def test_policy_respects_an_explicit_device_count_and_a_started_backend():
    script = ("import jax; from plastix import devices; jax.devices(); "
              "print(devices.use_all_cpu_cores(), jax.device_count())")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=3", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ["None", "3"], out.stderr
    env.pop("XLA_FLAGS")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ["None", "1"], out.stderr  # too late: JAX already started
    assert "JAX started before" in out.stderr or (os.cpu_count() or 1) == 1
