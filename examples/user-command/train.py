"""A run's own training command: `python train.py --learning_rate 0.001 --units 64` (the
TrainingRun's hyperparameters, appended by the trainer as `--name value`; also in the
environment as HP_LEARNING_RATE, HP_UNITS).

Digit images (8x8, scikit-learn's offline `load_digits`) classified by a small MLP that this
script builds and compiles itself. `accordion_trainer.elastic.fit` trains it elastically: the
script has no Horovod code, yet it grows and shrinks with the run's workers, resumes
batch-exact, checkpoints to the results bucket and reports progress into the run's status.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from tensorflow import keras

from accordion_trainer import elastic


def load(data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """`digits.npz` (x, y) from the staged data, else scikit-learn's copy (a laptop run)."""
    staged = Path(data_dir) / "digits.npz"
    if staged.exists():
        with np.load(staged) as z:
            return z["x"], z["y"]
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data, digits.target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--learning_rate", type=float, default=0.001)
    parser.add_argument("--units", type=int, default=64)
    # the run may carry hyperparameters this script does not use
    args, _ = parser.parse_known_args()

    x, y = load(os.environ.get("ACCORDION_DATA_DIR", "data"))
    x = (x / 16.0).astype("float32")  # pixel values are 0..16
    order = np.random.default_rng(0).permutation(len(x))  # the same split on every worker
    x, y = x[order], y[order].astype("int64")
    split = int(0.9 * len(x))

    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(args.units, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    # Compiled here: the trainer keeps this loss, these metrics and this optimizer (wrapped for
    # Horovod, its learning rate multiplied by the number of workers).
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = elastic.fit(model, (x[:split], y[:split]), (x[split:], y[split:]))
    print(f"final val_accuracy {history[-1]['val_accuracy']:.3f}", flush=True)


if __name__ == "__main__":
    main()
