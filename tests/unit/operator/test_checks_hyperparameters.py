"""Hyperparameters the schema cannot check (a free-form map): checks.check_run refuses a bad one
before the run starts (Admitted=False, InvalidHyperparameters) with a message that says what to
use, including the values of the ones the trainer reads itself."""

from __future__ import annotations

import pytest
from trainingrun_factory import make_run

from accordion_operator.config import Config
from accordion_operator.trainingrun.checks import check_run, hyperparameter_problem
from accordion_operator.trainingrun.observe import SecretInfo

CFG = Config()
OK_SECRET = {"s3": SecretInfo(frozenset({"accessKey", "secretKey"}))}


def check(hyperparameters: dict[str, object]) -> tuple[str, str] | None:
    return check_run(make_run(spec={"hyperparameters": hyperparameters}), OK_SECRET, CFG)


@pytest.mark.parametrize(
    "hyperparameters",
    [
        {},
        {"learning_rate": 0.001, "optimizer": "adam", "dropout": 0.25, "units": 128},
        {"learning_rate": 1, "optimizer": "SGD"},  # the trainer lower-cases the optimizer
        {"learning_rate": "1e-3"},  # the trainer reads it with float()
        {"lr": 0.5, "optimizer": "rmsprop"},
        {"note": "ünï/data", "schedule": "cosine warmup=5"},  # non-ASCII and spaces are text
        {"learning_rate": 10.0},  # large, but a search may well try it
    ],
)
def test_usable_hyperparameters_pass(hyperparameters: dict[str, object]) -> None:
    assert check(hyperparameters) is None


@pytest.mark.parametrize("name", ["learning_rate", "lr"])
@pytest.mark.parametrize(
    "value", [0, 0.0, -0.001, -1, "0", "-1e-3", "abc", "", "nan", "inf", "-inf", 10**400]
)
def test_a_learning_rate_that_is_not_a_positive_number_is_refused(name: str, value: object) -> None:
    got = check({name: value})
    assert got is not None
    reason, message = got
    assert reason == "InvalidHyperparameters"
    assert message == (
        f"hyperparameter {name!r} (the trainer's learning rate) must be a number > 0, "
        f"e.g. 0.001; got {value!r}"
    )


@pytest.mark.parametrize("value", ["adamw", "", 3, "adam "])
def test_an_optimizer_the_trainer_does_not_build_is_refused(value: object) -> None:
    assert check({"optimizer": value}) == (
        "InvalidHyperparameters",
        f"hyperparameter 'optimizer' must name an optimizer the trainer builds: "
        f"adam, rmsprop, sgd; not {value!r}",
    )


@pytest.mark.parametrize("value", ["\x00", "a\tb", "line\n", "\r", "esc\x1b[31m", "del\x7f"])
def test_a_string_with_a_control_character_is_refused(value: str) -> None:
    got = check({"note": value})
    assert got is not None
    reason, message = got
    assert reason == "InvalidHyperparameters"
    assert message.startswith("hyperparameter 'note' holds a control character")
    assert repr(value) in message
    # the message quotes the value escaped: a condition message never carries the raw character
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in message)


def test_the_learning_rate_check_does_not_hide_a_control_character() -> None:
    assert "control character" in (hyperparameter_problem("learning_rate", "0.1\n") or "")


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("lr\n", 0.1, "hyperparameter name 'lr\\n' must match"),  # `$` before a final newline
        ("1st", 1, "hyperparameter name '1st' must match"),
        ("x", float("nan"), "hyperparameter 'x' must be finite"),
        ("x", True, "hyperparameter 'x' must be a string or a number, not bool"),
        ("x", [1], "hyperparameter 'x' must be a string or a number, not list"),
    ],
)
def test_names_and_value_types(name: str, value: object, expected: str) -> None:
    assert (hyperparameter_problem(name, value) or "").startswith(expected)


def test_the_first_bad_hyperparameter_is_reported() -> None:
    got = check({"units": 3, "learning_rate": -1, "optimizer": "nope"})
    assert got is not None
    assert "'learning_rate'" in got[1]
