#!/usr/bin/env bash
# GPU smoke test of the CUDA trainer image (issue 18, item 4). NOT RUN on the development
# machines (no GPU); run it where one is:
#
#   docker run --rm --gpus all --entrypoint bash <registry>/accordion/accordion-trainer-cuda@<digest> \
#       -c "$(cat e2e/gpu-smoke.sh)"
#   # or inside any environment with the image's /opt/accordion on PATH:
#   e2e/gpu-smoke.sh
#
# Checks, in that environment: TensorFlow sees a GPU and is built with CUDA; Horovod's
# TensorFlow ops load and report NCCL (the CUDA build sets HOROVOD_GPU_OPERATIONS=NCCL); then
# trains the built-in `mnist-cnn` on the trainer's 5,000-image MNIST sample once on the GPU and
# once on the CPU (CUDA_VISIBLE_DEVICES=""), and fails unless the GPU's median step time is
# below the CPU's. Prints one JSON line of figures (for docs/helm.md).
set -euo pipefail
PY=${PYTHON:-python}
EPOCHS=${EPOCHS:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "[gpu-smoke] TensorFlow and Horovod in this environment" >&2
"$PY" - <<'PY'
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
print(f"[gpu-smoke] TensorFlow {tf.__version__}, CUDA build: {tf.test.is_built_with_cuda()}, GPUs: {gpus}")
assert tf.test.is_built_with_cuda(), "TensorFlow is not built with CUDA"
assert gpus, "TensorFlow sees no GPU"
import horovod.tensorflow as hvd
print(f"[gpu-smoke] Horovod NCCL built: {hvd.nccl_built()}, Gloo built: {hvd.gloo_built()}")
assert hvd.nccl_built(), "Horovod was built without NCCL (HOROVOD_GPU_OPERATIONS=NCCL)"
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
read -r gpu_step gpu_acc < <(step_time)
read -r cpu_step cpu_acc < <(CUDA_VISIBLE_DEVICES="" step_time)
printf '{"gpu_step_s": %s, "cpu_step_s": %s, "gpu_accuracy": %s, "cpu_accuracy": %s}\n' \
  "$gpu_step" "$cpu_step" "$gpu_acc" "$cpu_acc"
awk -v g="$gpu_step" -v c="$cpu_step" 'BEGIN { exit !(g < c) }' ||
  { echo "[gpu-smoke] FAIL: GPU step ${gpu_step}s is not faster than CPU ${cpu_step}s" >&2; exit 1; }
echo "[gpu-smoke] OK: GPU step ${gpu_step}s < CPU step ${cpu_step}s" >&2
