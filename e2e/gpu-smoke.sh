#!/usr/bin/env bash
# GPU smoke test of the CUDA trainer image (`make images-cuda`; issue 18). Run it inside that
# image on a machine with an NVIDIA GPU and the NVIDIA container toolkit:
#
#   docker run --rm --gpus all --entrypoint bash -v "$PWD/e2e:/e2e:ro" \
#       <registry>/accordion/accordion-trainer-cuda@<digest> /e2e/gpu-smoke.sh
#
# or in any environment whose `python` has the image's packages (/opt/accordion). Checks, in
# order: TensorFlow is the CUDA build; Horovod's TensorFlow ops load against it (Gloo: the image
# builds Horovod without NCCL, docs/helm.md "The CUDA variant"); TensorFlow sees a GPU. Then it
# trains the built-in `mnist-cnn` on the trainer's 5,000-image MNIST sample once on the GPU and
# once on the CPU (CUDA_VISIBLE_DEVICES=""), fails unless the GPU's median step time is below
# the CPU's, and prints one JSON line of figures (for docs/helm.md).
#
# Exit status: 0 passed; 1 a check failed; 3 no GPU is visible here (every check before that
# passed: what a machine without a GPU can show).
set -euo pipefail
PY=${PYTHON:-python}
EPOCHS=${EPOCHS:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say() { echo "[gpu-smoke] $*" >&2; }

say "TensorFlow and Horovod in this environment"
"$PY" - <<'PY'
import sys

import tensorflow as tf


def fail(message: str, code: int = 1) -> None:
    print(f"[gpu-smoke] FAIL: {message}", file=sys.stderr)
    sys.exit(code)


info = tf.sysconfig.get_build_info()
print(
    f"[gpu-smoke] TensorFlow {tf.__version__}, CUDA build: {tf.test.is_built_with_cuda()} "
    f"(CUDA {info.get('cuda_version')}, cuDNN {info.get('cudnn_version')})",
    file=sys.stderr,
)
if not tf.test.is_built_with_cuda():
    fail("TensorFlow is not built with CUDA (the CPU image? build `make images-cuda`)")
import horovod.tensorflow as hvd

print(
    f"[gpu-smoke] Horovod: Gloo {bool(hvd.gloo_built())}, NCCL {bool(hvd.nccl_built())} "
    "(collectives of GPU tensors go through host memory without NCCL)",
    file=sys.stderr,
)
if not hvd.gloo_built():
    fail("Horovod was built without Gloo")
gpus = tf.config.list_physical_devices("GPU")
if not gpus:
    fail(
        "TensorFlow sees no GPU: no NVIDIA driver here (libcuda.so.1), or the container was "
        "started without one (docker run --gpus all; a pod's nvidia.com/gpu limit)",
        code=3,
    )
print(f"[gpu-smoke] GPUs: {gpus}", file=sys.stderr)
PY

"$PY" -m accordion_trainer dataset --out "$work/data" --format npz >&2

step_time() { # median seconds per training step of mnist-cnn, on whatever devices are visible
  "$PY" - "$work/data" "$EPOCHS" <<'PY'
import statistics, sys, time
from pathlib import Path
import numpy as np
import tensorflow as tf
from accordion_trainer.models import BUILTIN_MODELS
data = np.load(Path(sys.argv[1]) / "mnist.npz")
x = (data["x_train"].astype("float32") / 255.0).reshape((-1, 28, 28, 1))
y = data["y_train"]
model = BUILTIN_MODELS["mnist-cnn"]({"learning_rate": 0.001})
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
times = []
class Timer(tf.keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None): self.t = time.perf_counter()
    def on_train_batch_end(self, batch, logs=None): times.append(time.perf_counter() - self.t)
hist = model.fit(x, y, batch_size=64, epochs=int(sys.argv[2]), verbose=0, callbacks=[Timer()])
print(statistics.median(times[len(times) // 3:]), hist.history["accuracy"][-1])
PY
}
gpu=$(step_time)  # (not `read < <(...)`: a failed run must stop the script)
cpu=$(CUDA_VISIBLE_DEVICES="" step_time)
read -r gpu_step gpu_acc <<<"$gpu"
read -r cpu_step cpu_acc <<<"$cpu"
printf '{"gpu_step_s": %s, "cpu_step_s": %s, "gpu_accuracy": %s, "cpu_accuracy": %s}\n' \
  "$gpu_step" "$cpu_step" "$gpu_acc" "$cpu_acc"
awk -v g="$gpu_step" -v c="$cpu_step" 'BEGIN { exit !(g < c) }' ||
  { say "FAIL: GPU step ${gpu_step}s is not faster than CPU ${cpu_step}s"; exit 1; }
say "OK: GPU step ${gpu_step}s < CPU step ${cpu_step}s"
