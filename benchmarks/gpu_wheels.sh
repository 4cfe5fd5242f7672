#!/usr/bin/env bash
# Fetch, where pip can download, the wheels that benchmarks/gpu_check.sh needs on the GPU
# machine and its image lacks, into .whl/ (ignored by git: this script adds /.whl/ to
# .git/info/exclude), for that machine's Python 3.12 on x86-64 Linux.
#
#   bash benchmarks/gpu_wheels.sh
#
# The image holds JAX with the CUDA plugin, Flax, Optax, chex, NumPy, Matplotlib, tqdm,
# pytest, pytest-xdist, scikit-learn and filelock; of plastix's dependencies it lacks
# evosax (the version range pyproject.toml gives) and evosax's own dotmap. TFDS is not
# needed: the check runs no test that reads it. Each wheel's dependencies are printed, to
# compare with the image's packages when a version changes. Older copies of these wheels
# are removed first: two versions of one package stop the install there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"

evosax=$(grep -o '"evosax[^"]*"' pyproject.toml | tr -d '"')
wanted=("$evosax" dotmap)
mkdir -p .whl
rm -f .whl/evosax-*.whl .whl/dotmap-*.whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "${wanted[@]}"
for wheel in .whl/*.whl; do
    echo "$wheel ($(du -k "$wheel" | cut -f1) KiB) requires:"
    unzip -p "$wheel" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' \
        | sed 's/^Requires-Dist: /  /' || true
done
du -sh .whl
