"""Every metric the user's model was compiled with reaches Prometheus under its Keras name
(issue 17: a regression run's val_mae is charted like the classifier's val_accuracy), without
NaN and with a bound on the series one model can create."""

from __future__ import annotations

import math

from prometheus_client import REGISTRY

from accordion_trainer import metrics


def _value(name: str) -> float | None:
    return REGISTRY.get_sample_value("accordion_trainer_epoch_metric", {"metric": name})


def test_compiled_metric_names_are_exported() -> None:
    metrics.record_epoch({"loss": 2900.0, "mae": 44.5, "val_loss": 3100.0, "val_mae": 46.25}, 80, 3)
    assert _value("val_mae") == 46.25
    assert _value("mae") == 44.5
    assert REGISTRY.get_sample_value("accordion_trainer_val_loss") == 3100.0
    assert REGISTRY.get_sample_value("accordion_trainer_epoch") == 3


def test_non_finite_values_are_left_out() -> None:
    metrics.record_epoch({"nan_metric": math.nan, "inf_metric": math.inf}, 1, 1)
    assert _value("nan_metric") is None
    assert _value("inf_metric") is None


def test_a_model_with_many_metrics_creates_a_bounded_number_of_series() -> None:
    many = {f"m{i:03d}": float(i) for i in range(100)}
    metrics.record_epoch(many, 1, 1)
    exported = [n for n in many if _value(n) is not None]
    assert exported == sorted(many)[: metrics.MAX_EPOCH_METRICS]
    long = "x" * 200
    metrics.record_epoch({long: 1.0}, 1, 1)
    assert _value(long[: metrics.MAX_METRIC_NAME]) == 1.0
