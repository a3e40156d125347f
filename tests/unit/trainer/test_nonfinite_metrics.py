"""NaN and infinite metrics (docs/contract.md): never in a status patch (JSON cannot carry them,
the apiserver would refuse that patch and, through the history, every later one), and an epoch
that ends with one fails the training with TrainingDiverged (exit code 15), which the operator
treats as permanent. Without TensorFlow: the pure halves of the trainer and the launcher."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from accordion_operator.api.trainingrun import PERMANENT_TRAINER_REASONS
from accordion_operator.trainingrun.observe import EXIT_REASONS
from accordion_trainer.errors import Reason, fail, parse_error_line
from accordion_trainer.policy import divergence
from accordion_trainer.progress import Reporter, build_training_status, parse_progress

NAN, INF = math.nan, math.inf


def test_finite_epoch_metrics_go_on() -> None:
    logs = {"loss": 0.3, "accuracy": 0.9, "val_loss": 0.35, "val_accuracy": 0.88}
    assert divergence(logs, 3, 0.001) is None
    assert divergence({}, 1, 0.001) is None  # an epoch with nothing left to train


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_a_non_finite_epoch_metric_fails_the_training(bad: float) -> None:
    err = divergence({"loss": bad, "accuracy": 0.1, "val_loss": bad}, 4, 0.5)
    assert err is not None
    assert err.reason is Reason.TrainingDiverged
    assert err.exit_code == 15
    assert err.message == (
        f"epoch 4: loss={bad}, val_loss={bad}; lower learning_rate (0.5, multiplied by the "
        "number of workers) or check the data for NaN or infinite values"
    )


def test_the_launcher_exits_with_the_reason_and_the_operator_fails_the_run_at_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The training process's error line reaches the launcher (horovodrun relays stdout), whose
    exit code the operator reads as a permanent reason: a restart would diverge again."""
    err = divergence({"loss": NAN}, 2, 0.1)
    assert err is not None
    assert fail(err) == 15
    line = next(x for x in capsys.readouterr().out.splitlines() if "ACCORDION_ERROR" in x)
    relayed = parse_error_line(f"[1]<stdout>:{line}")
    assert relayed is not None
    assert relayed.reason is Reason.TrainingDiverged
    assert relayed.message.startswith("epoch 2: loss=nan")
    assert EXIT_REASONS[15] == "TrainingDiverged"
    assert "TrainingDiverged" in PERMANENT_TRAINER_REASONS


def _progress(metrics: dict[str, float], history: list[dict[str, Any]]) -> dict[str, Any]:
    """A progress line as rank 0 prints it (json.dumps writes NaN/Infinity) and the launcher
    reads it back (json.loads accepts them)."""
    line = "ACCORDION_PROGRESS " + json.dumps(
        {"epoch": 2, "batch": 7, "worldSize": 2, "metrics": metrics, "history": history}
    )
    parsed = parse_progress(f"[0]<stdout>:{line}")
    assert parsed is not None
    return parsed


def test_non_finite_values_are_left_out_of_the_patch() -> None:
    progress = _progress(
        {"loss": NAN, "accuracy": 0.5, "val_loss": INF},
        [
            {"epoch": 1, "loss": 0.7, "accuracy": 0.6, "seconds": 3.2},
            {"epoch": 2, "loss": NAN, "val_loss": -INF, "accuracy": 0.1},
            {"epoch": 3, "metrics": {"loss": NAN, "accuracy": 0.2}},
        ],
    )
    status = build_training_status(progress, 1_800_000_000.0)
    assert status["metrics"] == {"accuracy": 0.5}
    assert status["history"] == [
        {"epoch": 1, "metrics": {"loss": 0.7, "accuracy": 0.6, "seconds": 3.2}},
        {"epoch": 2, "metrics": {"accuracy": 0.1}},
        {"epoch": 3, "metrics": {"accuracy": 0.2}},
    ]
    json.dumps(status, allow_nan=False)  # what the apiserver accepts: strict JSON


def test_progress_keeps_flowing_after_a_nan_batch() -> None:
    """Mid-epoch reports carry Keras's batch logs; a NaN there must not stop the reports."""
    sent: list[dict[str, Any]] = []

    def send(status: dict[str, Any]) -> None:
        json.dumps(status, allow_nan=False)  # a real patch would be refused with a 400
        sent.append(status)

    clock = iter([100.0, 103.0, 106.0])
    reporter = Reporter(send, clock=lambda: next(clock))
    reporter.offer(_progress({"loss": 0.9}, []))
    reporter.offer(_progress({"loss": NAN}, [{"epoch": 1, "loss": NAN}]))
    reporter.offer(_progress({"loss": 0.8}, [{"epoch": 1, "loss": NAN}]))
    assert reporter.errors == 0
    assert [s["metrics"] for s in sent] == [{"loss": 0.9}, {}, {"loss": 0.8}]
