"""A model the user compiled (examples/diabetes_regression.py: mse + mae on float targets)
trained end to end on 2 elastic workers, and user code that cannot train failing with its
reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainer_support import REPO, events, run_cli

from accordion_dev.demo import example_module
from accordion_trainer.progress import build_training_status

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "examples" / "diabetes_regression.py"
#: Measured: final val_mae 45.0-45.7 in 4 runs of 15 epochs at np=2 (the training mean: 59.7).
MAE_BOUND = 52.0


@pytest.fixture(scope="module")
def diabetes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("diabetes")
    example_module("diabetes_regression.py").write_data(str(out))
    return out


def _run(model: Path, data: Path, tmp: Path, np_: int, epochs: int, *extra: str) -> int:
    args = ["run", "-np", str(np_), "--model", str(model), "--data", str(data)]
    args += ["--results", str(tmp / "res"), "--run-name", "r", "--epochs", str(epochs)]
    args += ["--batch-size", "32", *extra]
    return run_cli(
        args, tmp / "run.log", 300, ACCORDION_TERMINATION_LOG=str(tmp / "termination-log")
    )


def test_user_compiled_regression_reaches_mae(diabetes_dir: Path, tmp_path: Path) -> None:
    rc = _run(EXAMPLE, diabetes_dir, tmp_path, 2, 15, "--hparam", "learning_rate=0.05")
    log = tmp_path / "run.log"
    assert rc == 0, log.read_text()[-3000:]
    history = json.loads((tmp_path / "res" / "r" / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 16))
    assert {h["worldSize"] for h in history} == {2}
    last = history[-1]
    # the user's compile was kept: its metric names, no default accuracy
    assert {"loss", "mae", "val_loss", "val_mae"} <= set(last)
    assert not any("accuracy" in k for k in last)
    assert last["val_mae"] < MAE_BOUND, [round(h["val_mae"], 1) for h in history]
    # Horovod-wrapped Adam at the user's learning rate times the world size
    start = next(e for e in events(log) if e["event"] == "start")
    assert start["learning_rate"] == pytest.approx(0.1)
    # what the launcher would patch into status.training (the Experiment objective's source)
    status = build_training_status(events(log, "PROGRESS")[-1], 0.0)
    assert status["metrics"]["val_loss"] == pytest.approx(last["val_loss"])
    assert {"val_loss", "val_mae"} <= set(status["history"][-1]["metrics"])


BAD_LOSS = """
from tensorflow import keras
from diabetes_regression import load_data  # noqa: F401  (the example's data)


def build_model(hparams):
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(loss="categorical_crossentropy", optimizer="adam")
    return model
"""

BAD_DATA = """
from tensorflow import keras


def build_model(hparams):
    return keras.Sequential([keras.Input((10,)), keras.layers.Dense(1)])


def load_data(path, hparams):
    return [1, 2, 3]
"""


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (BAD_LOSS, "the model's loss does not fit the labels"),
        (BAD_DATA, "load_data() returned list"),
    ],
    ids=["loss-does-not-fit-labels", "load-data-wrong-type"],
)
def test_user_code_that_cannot_train_is_model_invalid(
    diabetes_dir: Path, tmp_path: Path, code: str, message: str
) -> None:
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "model.py").write_text(code)
    (folder / "diabetes_regression.py").write_text(EXAMPLE.read_text())
    rc = _run(folder, diabetes_dir, tmp_path, 1, 1)
    assert rc == 14, (tmp_path / "run.log").read_text()[-3000:]
    term = (tmp_path / "termination-log").read_text()
    assert term.startswith("ModelInvalid: "), term
    assert message in term, term
