"""The tests run under the device policy of the main job and the benchmarks."""

from plastix import devices

devices.use_all_cpu_cores()
