#!/usr/bin/env bash
# The prepared GPU check of plastix (benchmarks/gpu_check.py): prints one JSON object, and
# writes it with every step's output to $OUT (gpu_check.json, gpu_check.log) when $OUT is set.
#
#   bash benchmarks/gpu_check.sh          # on the GPU machine, with .whl/ carried
#   bash benchmarks/gpu_check.sh --dry    # on the CPU, every step at toy size (also GPU_CHECK_DRY=1)
#
# The GPU machine's image holds CUDA JAX, Flax, Optax and the test tools, but not evosax (nor
# its dependency dotmap), and nothing can be downloaded there: benchmarks/gpu_wheels.sh
# fetches those as wheels into .whl/ beforehand, and this script installs them into a
# directory of their own on PYTHONPATH, leaving the image's packages (its JAX among them)
# as they are. plastix itself runs from this checkout (PYTHONPATH), not installed.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if compgen -G ".whl/*.whl" >/dev/null; then
    site=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_site.XXXXXX")
    trap 'rm -rf "$site"' EXIT
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .whl/*.whl || { echo "gpu_check: installing .whl/*.whl failed" >&2; exit 1; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$PYTHON" benchmarks/gpu_check.py "$@"
