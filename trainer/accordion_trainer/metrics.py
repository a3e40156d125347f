"""Prometheus metrics of a worker (`accordion_trainer_*`, base units, no per-step labels).

In a pod, the long-lived `worker` process serves `/metrics` and the training processes that the
launcher starts over SSH write into the same prometheus-client multiprocess directory (sshd
passes `PROMETHEUS_MULTIPROC_DIR` to them), so one endpoint per pod survives elastic restarts of
the training process. Standalone, each training process serves its own endpoint on its host
address.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

#: Gauges in multiprocess mode report the most recent value of a live process.
LIVE: Final = "livemostrecent"


def _live(name: str, documentation: str) -> Gauge:
    """A gauge whose value, across the worker's processes, is that of the latest live one."""
    return Gauge(name, documentation, multiprocess_mode=LIVE)


SAMPLES = Counter("accordion_trainer_samples", "Training samples processed by this worker.")
STEPS = Counter("accordion_trainer_steps", "Training steps (batches) run by this worker.")
STEP_SECONDS = Histogram(
    "accordion_trainer_step_seconds",
    "Wall time of one training step on this worker.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
SAMPLES_PER_SECOND = _live(
    "accordion_trainer_samples_per_second", "Global samples/s over the last epoch."
)
EPOCH = _live("accordion_trainer_epoch", "Epochs completed (committed).")
WORLD_SIZE = _live("accordion_trainer_world_size", "Horovod world size now.")
LOSS = _live("accordion_trainer_loss", "Training loss of the last epoch.")
ACCURACY = _live("accordion_trainer_accuracy", "Training accuracy of the last epoch.")
VAL_LOSS = _live("accordion_trainer_val_loss", "Validation loss of the last epoch.")
VAL_ACCURACY = _live("accordion_trainer_val_accuracy", "Validation accuracy of the last epoch.")
EPOCH_METRIC = Gauge(
    "accordion_trainer_epoch_metric",
    "The last epoch's value of each metric the model was compiled with, by its Keras name "
    "(label metric: loss, val_loss, mae, val_mae, ...).",
    ["metric"],
    multiprocess_mode=LIVE,
)
#: Metric names come from the user's compile: bound the series one run can create.
MAX_EPOCH_METRICS: Final = 32
MAX_METRIC_NAME: Final = 64
RESETS = Counter("accordion_trainer_elastic_resets", "Elastic resets (world changes) seen.")
RESET_SECONDS = _live(
    "accordion_trainer_elastic_reset_seconds",
    "Seconds from the last elastic interruption to the first step at the new size.",
)
CHECKPOINTS = Counter("accordion_trainer_checkpoints", "Checkpoints written.")
CHECKPOINT_SECONDS = _live(
    "accordion_trainer_checkpoint_seconds", "Seconds the last checkpoint took."
)
CHECKPOINT_BYTES = _live(
    "accordion_trainer_checkpoint_bytes", "Size of the last checkpoint in bytes."
)
STAGED_BYTES = Counter("accordion_trainer_staging_bytes", "Bytes downloaded by stage-in.")
STAGING_SECONDS = _live("accordion_trainer_staging_seconds", "Seconds the last stage-in took.")


def record_epoch(logs: Mapping[str, float], samples_per_s: float, epoch: int) -> None:
    """Export an epoch's results: the fixed gauges the dashboards chart (loss/accuracy of the
    built-in classifier) and every compiled metric under its own name. NaN and infinities are
    left out (the epoch fails with TrainingDiverged anyway); at most MAX_EPOCH_METRICS names,
    in sorted order, so a model with hundreds of metrics cannot flood Prometheus."""
    EPOCH.set(epoch)
    SAMPLES_PER_SECOND.set(samples_per_s)
    finite = {k: float(v) for k, v in logs.items() if math.isfinite(float(v))}
    for key, gauge in (
        ("loss", LOSS),
        ("accuracy", ACCURACY),
        ("val_loss", VAL_LOSS),
        ("val_accuracy", VAL_ACCURACY),
    ):
        if key in finite:
            gauge.set(finite[key])
    for name in sorted(finite)[:MAX_EPOCH_METRICS]:
        EPOCH_METRIC.labels(metric=name[:MAX_METRIC_NAME]).set(finite[name])


def serve(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - pods expose it on their IP
    """Serve `/metrics`; in multiprocess mode aggregate every process writing to the directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        start_http_server(port, addr=addr, registry=registry)
    else:
        start_http_server(port, addr=addr)
