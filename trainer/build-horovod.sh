#!/usr/bin/env bash
# Build Horovod once, cache the wheel, install it into the venv.
#
# Usage: trainer/build-horovod.sh UV PY
#   UV  path to the pinned uv binary
#   PY  the venv's python (TensorFlow must already be installed there: Horovod compiles against it)
#
# Why a script and not a lock entry: horovod==0.28.1 (its last release) ships only an sdist whose
# build imports TensorFlow, so it must be built with --no-build-isolation inside the venv. That
# takes ~2-3 minutes, so the wheel is cached under $ACCORDION_CACHE/wheels keyed by the Horovod and
# TensorFlow versions (the ABI it links against). `uv sync` removes packages that are not in the
# lock, so the Makefile calls this after every sync; with the wheel cached that is ~3 s (install
# plus an import check), and ~0.1 s when Horovod is still installed.
set -euo pipefail

UV=${1:?usage: build-horovod.sh UV PY}
PY=${2:?usage: build-horovod.sh UV PY}
HOROVOD_VERSION=${HOROVOD_VERSION:-0.28.1}
CACHE=${ACCORDION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/accordion}

log() { echo "[build-horovod] $*" >&2; }

# Fast path (no TensorFlow import, ~0.1 s): the pinned version is installed with its TF extension.
if "$PY" - "$HOROVOD_VERSION" >/dev/null 2>&1 <<'EOF'
import importlib.metadata as m, pathlib, sys
assert m.version("horovod") == sys.argv[1]
files = m.files("horovod") or []
assert any(str(f).startswith("horovod/tensorflow/mpi_lib") for f in files)
assert all(pathlib.Path(f.locate()).exists() for f in files if str(f).endswith(".so"))
EOF
then
  exit 0
fi

TF_VERSION=$("$PY" -c 'import importlib.metadata as m; print(m.version("tensorflow-cpu"))' 2>/dev/null ||
  "$PY" -c 'import importlib.metadata as m; print(m.version("tensorflow"))')
PY_TAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
WHEEL_DIR="$CACHE/wheels/horovod-$HOROVOD_VERSION-tf$TF_VERSION-$PY_TAG"
mkdir -p "$WHEEL_DIR"

shopt -s nullglob
wheels=("$WHEEL_DIR"/horovod-*.whl)
if ((${#wheels[@]} == 0)); then
  log "building horovod==$HOROVOD_VERSION against TensorFlow $TF_VERSION (~3 min, once)"
  BUILD_DIR=$(mktemp -d)
  trap 'rm -rf "$BUILD_DIR"' EXIT
  # Gloo only (no MPI): horovodrun's elastic mode drives Gloo; the CUDA image adds
  # HOROVOD_GPU_OPERATIONS=NCCL (see Dockerfile.trainer).
  export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
    HOROVOD_CPU_OPERATIONS=${HOROVOD_CPU_OPERATIONS:-gloo} \
    MAKEFLAGS=${MAKEFLAGS:--j$(nproc)}
  # uv has no `pip download`/`pip wheel`: fetch the sdist with the pip that sits next to uv (the
  # Makefile installs uv with it), then let `uv build --no-build-isolation` compile it inside the
  # venv so it sees the venv's TensorFlow (an isolated build env would pull a different TF).
  PIP="$(dirname "$UV")/pip"
  [[ -x "$PIP" ]] || PIP="$UV tool run pip"
  $PIP download --quiet --no-deps --no-binary :all: -d "$BUILD_DIR" \
    "horovod==$HOROVOD_VERSION" >&2
  "$UV" build --wheel --no-build-isolation --python "$PY" --out-dir "$BUILD_DIR/dist" \
    "$BUILD_DIR"/horovod-"$HOROVOD_VERSION".tar.gz >&2
  # Publish atomically: a half-copied wheel must never look cached.
  for whl in "$BUILD_DIR"/dist/horovod-*.whl; do
    cp "$whl" "$WHEEL_DIR/.${whl##*/}.tmp"
    mv "$WHEEL_DIR/.${whl##*/}.tmp" "$WHEEL_DIR/${whl##*/}"
  done
  wheels=("$WHEEL_DIR"/horovod-*.whl)
fi

log "installing ${wheels[0]##*/}"
"$UV" pip install --python "$PY" --no-deps --quiet "${wheels[0]}"
"$PY" -c 'import horovod.tensorflow' >/dev/null 2>&1 || {
  log "horovod.tensorflow does not import after install"
  exit 1
}
