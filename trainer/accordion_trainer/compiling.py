"""How the trainer compiles the user's model (the rule in trainer/README.md, "Loss, metrics and
optimizer"):

- a model that `build_model` returned compiled keeps its loss, metrics (their names are the keys
  of the history and of `status.training`) and optimizer class and configuration; its learning
  rate is the base that the trainer multiplies by the world size;
- an uncompiled model gets the defaults: sparse categorical cross-entropy, accuracy, the
  `optimizer` hyperparameter (adam) at the `learning_rate` hyperparameter (0.001); its labels are
  made integer classes (one-hot converted), as the built-in models need.

Either way the optimizer is wrapped in Horovod's DistributedOptimizer: the user writes no Horovod
code.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

from .errors import Reason, TrainerError

DEFAULT_LOSS = "sparse_categorical_crossentropy"
DEFAULT_METRICS = ("accuracy",)
OPTIMIZERS = ("adam", "rmsprop", "sgd")


@dataclass(frozen=True)
class CompilePlan:
    """What `model.compile` gets, less the optimizer, which is built per world size."""

    #: True when `build_model` returned a compiled model (its labels pass through as they are)
    user_compiled: bool
    #: loss, metrics, loss_weights, weighted_metrics
    compile_args: dict[str, Any]
    #: the optimizer's class name (a built-in one's) or the user's optimizer to copy
    optimizer: Any
    #: the learning rate at world size 1
    base_lr: float


def plan_compile(model: Any, optimizer: str, learning_rate: float) -> CompilePlan:
    """The compile rule above (`optimizer`, `learning_rate`: the hyperparameters, used only for an
    uncompiled model)."""
    user_opt = getattr(model, "optimizer", None)
    if user_opt is None:
        if optimizer.lower() not in OPTIMIZERS:
            raise TrainerError(Reason.ModelInvalid, f"unknown optimizer {optimizer!r}")
        return CompilePlan(
            user_compiled=False,
            compile_args={"loss": DEFAULT_LOSS, "metrics": list(DEFAULT_METRICS)},
            optimizer=optimizer.lower(),
            base_lr=learning_rate,
        )
    # Keras 2's own record of the compile call (what it uses to clone a compiled model); the
    # optimizer is replaced below, everything else is passed to compile again unchanged.
    args = dict(model._get_compile_args())
    args.pop("optimizer", None)
    lr = user_opt.get_config().get("learning_rate")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):  # numpy floats included
        raise TrainerError(
            Reason.ModelInvalid,
            f"the compiled optimizer's learning_rate is {type(lr).__name__}, not a number: the "
            "trainer multiplies it by the number of workers on every resize, so a schedule "
            "cannot be kept; compile with a float learning rate",
        )
    return CompilePlan(True, args, user_opt, float(lr))


def build_optimizer(plan: CompilePlan, learning_rate: float) -> Any:
    """A new, unwrapped optimizer of the planned class at `learning_rate` (the scaled one)."""
    from tensorflow import keras

    if isinstance(plan.optimizer, str):
        table = {
            "adam": keras.optimizers.Adam,
            "rmsprop": keras.optimizers.RMSprop,
            "sgd": keras.optimizers.SGD,
        }
        return table[plan.optimizer](learning_rate=learning_rate)
    # A copy, as Horovod's DistributedOptimizer makes one too: the user's instance was never
    # built, so it holds no state to carry over.
    config = {**plan.optimizer.get_config(), "learning_rate": learning_rate}
    return type(plan.optimizer).from_config(config)


def describe_shape_error(model: Any, y: Any, error: Exception) -> str:
    """What to fix when tracing the train step failed on the labels (pure)."""
    first = " ".join(str(error).split())
    if len(first) > 300:
        first = first[:300] + "..."
    outputs = getattr(model, "output_shape", "?")
    shapes = (
        {k: tuple(v.shape) for k, v in y.items()}
        if isinstance(y, dict)
        else (tuple(getattr(y, "shape", ())), str(getattr(y, "dtype", "?")))
    )
    return (
        f"the model's loss does not fit the labels (labels {shapes}, model outputs {outputs}): "
        f"{first}; compile the model with a loss for these labels (and the output layer to "
        "match), or return labels of the shape the loss expects from load_data; an uncompiled "
        f"model gets {DEFAULT_LOSS} on integer class labels"
    )
