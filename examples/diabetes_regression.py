"""A regression model the user compiles: scikit-learn's diabetes data set (442 patients, 10
standardised features, a disease-progression score of 25-346 a year later), mean squared error
loss and a mean absolute error metric.

The trainer keeps this compile (trainer/README.md, "Loss, metrics and optimizer"): it wraps the
Adam optimizer in Horovod's DistributedOptimizer and multiplies its learning rate by the number
of workers; the float targets reach the loss as they are; the history and `status.training`
report `loss`, `mae`, `val_loss` and `val_mae`.

Make the data file (scikit-learn ships the data set, no download), then train standalone:

    .venv/bin/python examples/diabetes_regression.py /tmp/diabetes   # writes diabetes.npz
    .venv/bin/accordion-train run -np 2 --model examples/diabetes_regression.py \\
        --data /tmp/diabetes --results /tmp/results --run-name diabetes --epochs 15 \\
        --batch-size 32 --hparam learning_rate=0.05

In a cluster, upload `diabetes.npz` under the data prefix and this file as the `bucketObject`
(examples/diabetes-experiment.yaml). Held out: 89 patients (20%); predicting the training mean
scores a validation MAE of 59.7, this model 45-46 after 15 epochs on 2 workers (measured).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

DATA_FILE = "diabetes.npz"


def build_model(hparams: dict[str, Any]) -> Any:
    from tensorflow import keras

    model = keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(int(hparams.get("units", 32)), activation="relu"),
            keras.layers.Dense(1),
        ],
        name="diabetes_regression",
    )
    # learning_rate: the base at one worker; the trainer scales it by the world size.
    lr = float(hparams.get("learning_rate", 0.05))
    model.compile(loss="mse", optimizer=keras.optimizers.Adam(lr), metrics=["mae"])
    return model


def load_data(path: str, hparams: dict[str, Any]) -> dict[str, Any]:
    with np.load(os.path.join(path, DATA_FILE)) as z:
        return {k: z[k] for k in ("x_train", "y_train", "x_val", "y_val")}


def write_data(out: str) -> str:
    """`diabetes.npz` from scikit-learn's copy: standardised features, float targets, a fixed
    80/20 split."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(len(x) * 0.8)
    train, val = order[:cut], order[cut:]
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, DATA_FILE)
    np.savez(
        path,
        x_train=x[train],
        y_train=y[train].astype(np.float32),
        x_val=x[val],
        y_val=y[val].astype(np.float32),
    )
    return path


if __name__ == "__main__":
    print(write_data(sys.argv[1] if len(sys.argv) > 1 else "diabetes-data"))
