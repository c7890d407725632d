#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu_check.py needs on the GPU machine and its image lacks (pydantic and
# what pydantic needs; ragrec.config imports it) into .gpu_wheels/, for Python 3.12 / manylinux x86_64, at the
# versions installed in this checkout's venv (so the GPU run imports what the local dry run tested).
#
#   bash scripts/gpu_check_wheels.sh            # then carry .gpu_wheels (see benchmarks/gpu_check.py)
#
# .gpu_wheels/ is in .gitignore. Needs PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEST=.gpu_wheels
PACKAGES="pydantic pydantic-core annotated-types typing-inspection typing-extensions"

pins=$("$PY" -c 'import sys; from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in sys.argv[1:]))' $PACKAGES)
rm -rf "$DEST"
mkdir -p "$DEST"
# shellcheck disable=SC2086  # one argument per pin
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$DEST" $pins
ls -l "$DEST"
du -sh "$DEST"
