"""User code (a zip with `build_model`/`load_data`) trained standalone, hyperparameters passed
through exactly as a TrainingRun's spec passes them."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from trainer_support import run_cli

pytestmark = pytest.mark.slow

MODEL = """
import json, os
import numpy as np
from tensorflow import keras


def build_model(hparams):
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Flatten(),
        keras.layers.Dense(int(hparams["units"]), activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])


def load_data(path, hparams):
    with np.load(os.path.join(path, "mnist.npz")) as z:
        arrays = {k: z[k] for k in z.files}
    with open(hparams["marker"], "a") as f:
        f.write(json.dumps({"path": path, "hparams": hparams}) + "\\n")
    return {"x_train": arrays["x_train"][:1024], "y_train": arrays["y_train"][:1024],
            "x_val": arrays["x_val"], "y_val": arrays["y_val"]}
"""


def test_user_code_zip_with_hparams(mnist_dir: Path, tmp_path: Path) -> None:
    code = tmp_path / "code.zip"
    with zipfile.ZipFile(code, "w") as zf:
        zf.writestr("mymodel/model.py", MODEL)
    marker = tmp_path / "calls.jsonl"
    log = tmp_path / "run.log"
    rc = run_cli(
        [
            "run",
            "-np",
            "1",
            "--model",
            str(code),
            "--data",
            str(mnist_dir),
            "--results",
            str(tmp_path / "res"),
            "--run-name",
            "u",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--hparam",
            "units=48",
            "--hparam",
            f"marker={marker}",
            "--hparam",
            "learning_rate=0.002",
        ],
        log,
        300,
    )
    assert rc == 0, log.read_text()[-3000:]
    call = json.loads(marker.read_text().splitlines()[0])
    assert call["hparams"]["units"] == 48
    assert call["hparams"]["learning_rate"] == 0.002
    assert call["path"] == str(mnist_dir.resolve())
    history = json.loads((tmp_path / "res" / "u" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["val_accuracy"] > 0.5  # a real model trained on real digits


def test_broken_user_code_fails_with_model_invalid(mnist_dir: Path, tmp_path: Path) -> None:
    code = tmp_path / "bad.py"
    code.write_text("def not_build_model(h):\n    pass\n")
    log = tmp_path / "run.log"
    term = tmp_path / "termination-log"
    rc = run_cli(
        [
            "run",
            "-np",
            "1",
            "--model",
            str(code),
            "--data",
            str(mnist_dir),
            "--results",
            str(tmp_path / "res"),
            "--epochs",
            "1",
        ],
        log,
        180,
        ACCORDION_TERMINATION_LOG=str(term),
    )
    assert rc == 14, log.read_text()[-3000:]
    assert term.read_text().startswith("ModelInvalid: ")
    assert "no build_model(hparams) function" in term.read_text()
