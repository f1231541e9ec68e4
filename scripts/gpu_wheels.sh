#!/usr/bin/env bash
# Prepares, on a machine with the package registry, the wheels that scripts/gpu_check.sh installs
# on the GPU machine (which has no network): the runtime dependencies its image lacks
# (gymnasium and farama-notifications; omegaconf). Pure-Python wheels, any Python 3; about 1 MiB.
#   bash scripts/gpu_wheels.sh            -> .gpu_wheels/*.whl (git-ignored; carry it: carry=[".gpu_wheels"])
# The versions are this checkout's own (pip's resolution here), so the GPU run tests what CI tests.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.gpu_wheels
rm -rf "$dest" && mkdir -p "$dest"
py="${PYTHON:-python3}"
for name in gymnasium farama-notifications omegaconf; do
    version=$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null || true)
    spec="$name${version:+==$version}"
    "$py" -m pip download -q --no-deps --only-binary=:all: -d "$dest" "$spec"
done
ls -l "$dest"
