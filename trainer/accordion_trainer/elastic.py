"""The helper API for a run's own command (`spec.model.command`): the built-in trainer's elastic
loop for a model and arrays that the user's script made itself.

```python
from accordion_trainer import elastic

model = build_my_model()                      # compiled or not, as for `build_model`
history = elastic.fit(model, (x_train, y_train), (x_val, y_val))
```

`fit` does what `python -m accordion_trainer train` does after `build_model`/`load_data`: it
initialises Horovod, wraps the optimizer (`hvd.DistributedOptimizer`, learning rate times the
world size), resumes the newest checkpoint of the run, trains in `hvd.elastic.run` with
batch-exact resume across grows and shrinks, checkpoints to the results bucket, prints rank 0's
progress lines (which become `status.training`), and saves the results. The script writes no
Horovod code. Epochs, batch size and checkpoint interval default to the run's (`spec.epochs`,
`spec.batchSize`, `spec.checkpointEpochs`, through `ACCORDION_*`); arguments given win.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .config import from_env
from .data import Dataset
from .errors import Reason, TrainerError, fail
from .train import compile_model, run_job, start_horovod
from .usercmd import STARTED_FILE_ENV

__all__ = ["fit"]


def _pair(obj: Any, name: str) -> tuple[Any, Any]:
    if not (isinstance(obj, tuple | list) and len(obj) == 2):
        raise TrainerError(Reason.ModelInvalid, f"elastic.fit: {name} must be an (x, y) pair")
    x, y = obj
    labels = {k: np.asarray(v) for k, v in y.items()} if isinstance(y, dict) else np.asarray(y)
    return np.asarray(x), labels


def fit(
    model: Any,
    train: tuple[Any, Any],
    val: tuple[Any, Any],
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    checkpoint_epochs: int | None = None,
) -> list[dict[str, Any]]:
    """Train `model` elastically on `train` = (x, y), validating on `val` = (x, y); returns the
    per-epoch history (the same on every rank). Rank 0 has written the results when it returns.

    An error with a contract reason (docs/contract.md: bad labels for the loss, a diverged
    loss, ...) is reported the way the built-in trainer reports it and ends the process with
    its exit code, which stops the whole run."""
    started = os.environ.get(STARTED_FILE_ENV)
    if started:  # from here on a failure is the training's, not a command that cannot start
        Path(started).touch()
    try:
        return _fit(model, train, val, epochs, batch_size, checkpoint_epochs)
    except TrainerError as e:
        raise SystemExit(fail(e)) from e


def _fit(
    model: Any,
    train: tuple[Any, Any],
    val: tuple[Any, Any],
    epochs: int | None,
    batch_size: int | None,
    checkpoint_epochs: int | None,
) -> list[dict[str, Any]]:
    cfg = from_env()
    cfg = replace(
        cfg,
        epochs=cfg.epochs if epochs is None else int(epochs),
        batch_size=cfg.batch_size if batch_size is None else int(batch_size),
        checkpoint_epochs=cfg.checkpoint_epochs
        if checkpoint_epochs is None
        else int(checkpoint_epochs),
    )
    (x_train, y_train), (x_val, y_val) = _pair(train, "train"), _pair(val, "val")
    # The script has initialised TensorFlow already: the command runner set its thread counts
    # through TF_NUM_*_THREADS instead.
    boot = start_horovod(configure_threads=False)
    hvd = boot[0]
    ds, model, opt, base_lr = compile_model(
        cfg, hvd, Dataset(x_train, y_train, x_val, y_val), model
    )
    return run_job(replace(cfg, learning_rate=base_lr), hvd, ds, model, opt, (None, *boot[1:]))
