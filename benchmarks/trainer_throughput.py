"""Training throughput (samples/s) of the trainer vs plain Keras `fit`, and np=2 vs np=1.

Same model (mnist-cnn), data (the MNIST subset's 4,000 training images, repeated 5x), batch size
(64) and optimizer in every case; throughput is training samples over each epoch's training time
(its validation pass excluded on both sides), the first epoch (tracing, warm-up) left out.
Trainer variants: np=1 committing the elastic state every batch, and with the default automatic
interval (~0.2 s of steps); np=2 (global samples/s). Variants run interleaved for several rounds
on this shared machine; median and best epoch rates are reported.

    .venv/bin/python -m benchmarks.trainer_throughput [--epochs 5 --rounds 2 --tile 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._trainer import env, sample_data, save, stop_run, trainer

BATCH = 64


def plain_keras(data: Path, epochs: int) -> dict[str, Any]:
    """Runs in a child process (its own TensorFlow threads), prints one JSON line."""
    import tensorflow as tf

    from accordion_trainer.data import load_dir
    from accordion_trainer.models import BUILTIN_MODELS

    threads = int(os.environ.get("ACCORDION_TF_THREADS", "2"))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    ds = load_dir(data)
    model = BUILTIN_MODELS["mnist-cnn"]({})
    model.compile(
        optimizer=tf.keras.optimizers.Adam(0.001),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    times: list[float] = []

    class Timer(tf.keras.callbacks.Callback):  # type: ignore[misc]
        """Training time of an epoch: from its start to the start of its validation."""

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t0 = time.perf_counter()

        def on_test_begin(self, logs: Any = None) -> None:
            times.append(time.perf_counter() - self.t0)

    steps = len(ds.x_train) // BATCH
    n = steps * BATCH
    model.fit(
        ds.x_train[:n],
        ds.y_train[:n],
        batch_size=BATCH,
        epochs=epochs,
        shuffle=True,
        validation_data=(ds.x_val, ds.y_val),
        verbose=0,
        callbacks=[Timer()],
    )
    return {"rates": [n / t for t in times[1:]], "epoch_seconds": times}


def tile(src: Path, dest: Path, times: int) -> Path:
    """The 4,000 training images repeated `times` times: epochs long enough (~seconds) that the
    per-epoch fixed costs of either side do not decide the comparison."""
    import numpy as np

    dest.mkdir(parents=True, exist_ok=True)
    with np.load(src / "mnist.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["x_train"] = np.concatenate([arrays["x_train"]] * times)
    arrays["y_train"] = np.concatenate([arrays["y_train"]] * times)
    np.savez(dest / "mnist.npz", **arrays)
    return dest


def trainer_run(data: Path, epochs: int, np: int, commit: int, tmp: Path) -> dict[str, Any]:
    work = tmp / f"work-np{np}-c{commit}"
    results = tmp / f"res-np{np}-c{commit}"
    log = tmp / f"np{np}-c{commit}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            trainer(
                "run",
                "-np",
                str(np),
                "--data",
                str(data),
                "--results",
                str(results),
                "--work",
                str(work),
                "--epochs",
                str(epochs),
                "--batch-size",
                str(BATCH),
                "--checkpoint-epochs",
                "0",
                "--commit-batches",
                str(commit),
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env(),
            start_new_session=True,
        )
    try:
        rc = proc.wait(timeout=600)
    finally:
        stop_run(proc, work / "scratch")
    if rc != 0:
        raise RuntimeError(log.read_text()[-2000:])
    history = json.loads((results / "run" / "history.json").read_text())
    rates = [h["samples"] / h["trainSeconds"] for h in history[1:]]
    return {"rates": rates, "epoch_seconds": [h["seconds"] for h in history]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tile", type=int, default=5, help="repeat the training set N times")
    ap.add_argument("--plain-child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.plain_child:
        print("RESULT " + json.dumps(plain_keras(Path(a.plain_child), a.epochs)), flush=True)
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    data = tile(sample_data(tmp / "data"), tmp / "tiled", a.tile)

    def plain() -> dict[str, Any]:
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.trainer_throughput",
                "--epochs",
                str(a.epochs),
                "--plain-child",
                str(data),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
            env=env(ACCORDION_TF_THREADS=str(os.cpu_count() or 2)),
        )
        line = next(x for x in child.stdout.splitlines() if x.startswith("RESULT "))
        return dict(json.loads(line.removeprefix("RESULT ")))

    variants: dict[str, Any] = {
        "plain_keras_fit": plain,
        "trainer_np1_commit_every_batch": lambda: trainer_run(data, a.epochs, 1, 1, tmp),
        "trainer_np1_commit_auto": lambda: trainer_run(data, a.epochs, 1, 0, tmp),
        "trainer_np2_commit_auto": lambda: trainer_run(data, a.epochs, 2, 0, tmp),
    }
    # Interleaved rounds: the machine is shared, so load drifts; every variant sees each phase.
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.rounds):
        for name, fn in variants.items():
            rates[name] += fn()["rates"]
            print(name, [round(r) for r in rates[name]], flush=True)
    summary = {
        k: {
            "median_samples_per_s": round(statistics.median(v), 1),
            "best_samples_per_s": round(max(v), 1),
            "epochs_measured": len(v),
        }
        for k, v in rates.items()
    }

    def ratio(a_: str, b_: str, stat: str) -> float:
        return round(summary[a_][stat] / summary[b_][stat], 3)

    save(
        "trainer_throughput",
        {
            "setup": {
                "model": "mnist-cnn",
                "batch_size": BATCH,
                "epochs_per_run": a.epochs,
                "rounds": a.rounds,
                "train_samples": 4000 * a.tile,
                "timing": "training time per epoch (validation excluded) on both sides",
                "first_epoch_excluded": True,
            },
            "variants": summary,
            "np1_overhead_vs_plain_median": round(
                1
                - ratio(
                    "trainer_np1_commit_every_batch", "plain_keras_fit", "median_samples_per_s"
                ),
                4,
            ),
            "np1_default_overhead_vs_plain_median": round(
                1 - ratio("trainer_np1_commit_auto", "plain_keras_fit", "median_samples_per_s"),
                4,
            ),
            "np1_default_overhead_vs_plain_best": round(
                1 - ratio("trainer_np1_commit_auto", "plain_keras_fit", "best_samples_per_s"),
                4,
            ),
            "overhead_target": 0.10,
            "np2_over_np1_median": ratio(
                "trainer_np2_commit_auto",
                "trainer_np1_commit_auto",
                "median_samples_per_s",
            ),
            "raw_rates": {k: [round(r, 1) for r in v] for k, v in rates.items()},
        },
    )


if __name__ == "__main__":
    main()
