"""The compile rule (accordion_trainer.compiling), labels passed through as the data has them
(accordion_trainer.data) and a `load_data` that returns the wrong type (train.load_data); no
TensorFlow: the models are stand-ins with Keras 2's attributes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from accordion_trainer.compiling import (
    DEFAULT_LOSS,
    CompilePlan,
    describe_shape_error,
    plan_compile,
)
from accordion_trainer.config import from_env
from accordion_trainer.data import Dataset, class_labels, n_samples, take, to_dataset
from accordion_trainer.errors import Reason, TrainerError
from accordion_trainer.models import UserCode
from accordion_trainer.train import load_data


@dataclass
class FakeOptimizer:
    config: dict[str, Any]

    def get_config(self) -> dict[str, Any]:
        return dict(self.config)


@dataclass
class FakeModel:
    """What Keras 2 exposes: `optimizer` (None until compiled) and `_get_compile_args()`."""

    optimizer: FakeOptimizer | None = None
    compile_args: dict[str, Any] = field(default_factory=dict)
    output_shape: tuple[int | None, ...] = (None, 1)

    def _get_compile_args(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, **self.compile_args}


def test_uncompiled_model_gets_the_defaults_and_the_hparams_optimizer() -> None:
    plan = plan_compile(FakeModel(), "RMSprop", 0.003)
    assert plan == CompilePlan(
        user_compiled=False,
        compile_args={"loss": DEFAULT_LOSS, "metrics": ["accuracy"]},
        optimizer="rmsprop",
        base_lr=0.003,
    )


def test_uncompiled_model_with_an_unknown_optimizer_is_model_invalid() -> None:
    with pytest.raises(TrainerError) as info:
        plan_compile(FakeModel(), "adagrad", 0.001)
    assert info.value.reason is Reason.ModelInvalid


def test_compiled_model_keeps_loss_metrics_optimizer_and_its_learning_rate() -> None:
    opt = FakeOptimizer({"name": "Adam", "learning_rate": np.float32(0.05), "beta_1": 0.8})
    args = {"loss": "mse", "metrics": ["mae"], "loss_weights": None, "weighted_metrics": None}
    # the hyperparameters' optimizer and learning rate are not read for a compiled model
    plan = plan_compile(FakeModel(opt, args), "sgd", 0.001)
    assert plan.user_compiled
    assert plan.compile_args == args  # everything but the optimizer, which is rebuilt
    assert plan.optimizer is opt
    assert plan.base_lr == pytest.approx(0.05)


def test_compiled_model_with_a_learning_rate_schedule_is_model_invalid() -> None:
    opt = FakeOptimizer({"learning_rate": {"class_name": "ExponentialDecay", "config": {}}})
    with pytest.raises(TrainerError) as info:
        plan_compile(FakeModel(opt, {"loss": "mse"}), "adam", 0.001)
    assert info.value.reason is Reason.ModelInvalid
    assert "float learning rate" in info.value.message


def test_shape_error_says_what_to_fix() -> None:
    err = ValueError("Shapes (None, 1) and (None, 3) are incompatible\n  in user code")
    text = describe_shape_error(FakeModel(output_shape=(None, 3)), np.zeros((4,)), err)
    assert "the model's loss does not fit the labels" in text
    assert "(None, 3)" in text
    assert "compile the model with a loss for these labels" in text
    assert "\n" not in text


def test_labels_pass_through_as_the_data_has_them() -> None:
    x = np.random.default_rng(0).normal(size=(20, 10)) * 50  # tabular, not pixels
    floats = np.linspace(25.0, 346.0, 20)
    ds = to_dataset({"x_train": x, "y_train": floats}, "t")
    assert ds.x_train.shape == (18, 10)
    assert np.allclose(ds.x_train, x[2:].astype(np.float32))  # not divided by 255
    assert isinstance(ds.y_train, np.ndarray)
    assert ds.y_train.dtype == np.float64
    assert np.allclose(ds.y_train, floats[2:])
    one_hot = np.eye(3)[[0, 1, 2, 1]]
    assert to_dataset({"x_train": x[:4], "y_train": one_hot}, "t").y_train.shape == (3, 3)


def test_multi_output_labels_are_sliced_per_output() -> None:
    y = {"score": np.arange(10.0), "label": np.arange(10) % 2}
    ds = to_dataset({"x_train": np.zeros((10, 3)), "y_train": y}, "t")
    assert isinstance(ds.y_train, dict)
    assert isinstance(ds.y_val, dict)
    assert n_samples(ds.y_train) == 9
    assert list(ds.y_val["score"]) == [0.0]
    picked = take(ds.y_train, np.array([0, 2]))
    assert isinstance(picked, dict)
    assert list(picked["label"]) == [1, 1]
    with pytest.raises(TrainerError, match="differ in length"):
        to_dataset({"x_train": np.zeros((3, 2)), "y_train": {"a": [1, 2, 3], "b": [1]}}, "t")


def test_default_path_makes_integer_classes() -> None:
    ds = Dataset(np.zeros((2, 3)), np.eye(4)[[3, 1]], np.zeros((1, 3)), np.array([2.0]))
    out = class_labels(ds)
    assert list(out.y_train) == [3, 1]
    assert isinstance(out.y_val, np.ndarray)
    assert out.y_val.dtype == np.int64
    with pytest.raises(TrainerError) as info:
        class_labels(Dataset(ds.x_train, {"a": np.zeros(2)}, ds.x_val, ds.y_val))
    assert info.value.reason is Reason.ModelInvalid


def _load(tmp_path: Path, returned: Any) -> Dataset:
    code = UserCode(build_model=lambda h: None, load_data=lambda path, h: returned)
    return load_data(from_env({"ACCORDION_DATA_DIR": str(tmp_path)}), code)


@pytest.mark.parametrize(
    ("returned", "said"),
    [
        ([1, 2, 3], "returned list"),
        (None, "returned NoneType"),
        ({"x": np.zeros(3), "y": np.zeros(3)}, "a dict with keys ['x', 'y']"),
        ((np.zeros(3), np.zeros(3)), "returned tuple"),
    ],
)
def test_load_data_of_the_wrong_type_is_model_invalid(
    tmp_path: Path, returned: Any, said: str
) -> None:
    with pytest.raises(TrainerError) as info:
        _load(tmp_path, returned)
    assert info.value.reason is Reason.ModelInvalid
    assert said in info.value.message
    assert "x_train" in info.value.message  # what to return instead


def test_load_data_pairs_are_accepted(tmp_path: Path) -> None:
    ds = _load(tmp_path, ((np.zeros((4, 2)), np.ones(4)), (np.zeros((2, 2)), np.ones(2))))
    assert ds.x_train.shape == (4, 2)
    assert n_samples(ds.y_val) == 2
