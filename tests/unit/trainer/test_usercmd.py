"""The user's command (`spec.model.command`): how it is split, what it gets, where it runs, and
how a command that cannot start is classified (usercmd.py)."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest

from accordion_trainer.errors import Reason, TrainerError
from accordion_trainer.usercmd import (
    STARTED_FILE_ENV,
    code_dir,
    command_argv,
    hparam_env,
    run_command,
    training_entry,
)


def test_hyperparameters_become_arguments_and_variables() -> None:
    hp = {"learning_rate": 0.001, "units": 64, "optimizer": "adam", "drop-out": 0.5, "bn": True}
    argv = command_argv("python train.py --data 'my dir'", hp)
    assert argv == [
        sys.executable,  # `python` is the trainer's own interpreter
        "train.py",
        "--data",
        "my dir",
        "--learning_rate",
        "0.001",
        "--units",
        "64",
        "--optimizer",
        "adam",
        "--drop-out",
        "0.5",
        "--bn",
        "true",
    ]
    assert hparam_env(hp) == {
        "HP_LEARNING_RATE": "0.001",
        "HP_UNITS": "64",
        "HP_OPTIMIZER": "adam",
        "HP_DROP_OUT": "0.5",
        "HP_BN": "true",
    }


def test_shell_syntax_is_not_interpreted() -> None:
    # no shell: `;` and `$(...)` are plain arguments of the program, never commands
    assert command_argv("./run.sh ; rm -rf / $(id)", {}) == [
        "./run.sh",
        ";",
        "rm",
        "-rf",
        "/",
        "$(id)",
    ]


@pytest.mark.parametrize("command", ["", "   ", "python 'unbalanced"])
def test_an_unusable_command_is_model_invalid(command: str) -> None:
    with pytest.raises(TrainerError) as e:
        command_argv(command, {})
    assert e.value.reason is Reason.ModelInvalid


@pytest.mark.parametrize(
    ("model", "sub"),
    [
        ({"builtin": "mnist-cnn"}, "train"),
        ({"path": "/code/model.py"}, "train"),
        ({"path": "/code", "command": "python train.py"}, "exec"),
        # the build_model contract, named as a command
        ({"path": "/code", "command": "python -m accordion_trainer train"}, "train"),
        ({"bucketObject": "b/code.zip", "command": "accordion-train train"}, "train"),
    ],
)
def test_the_entry_horovodrun_starts(model: dict[str, str], sub: str) -> None:
    assert training_entry(json.dumps(model)) == [sys.executable, "-m", "accordion_trainer", sub]


def test_the_code_directory(tmp_path: Path) -> None:
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "train.py").write_text("")
    assert code_dir(folder, tmp_path / "w") == folder
    assert code_dir(folder / "train.py", tmp_path / "w") == folder
    archive = tmp_path / "code.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("proj/train.py", "")
    unpacked = code_dir(archive, tmp_path / "w")
    assert (unpacked / "train.py").exists()  # a zipped folder runs in that folder
    assert unpacked != code_dir(archive, tmp_path / "w")  # one copy per process
    with pytest.raises(TrainerError) as e:
        code_dir(tmp_path / "missing.zip", tmp_path / "w")
    assert e.value.reason is Reason.ModelInvalid


def _script(tmp_path: Path, body: str) -> Path:
    (tmp_path / "train.py").write_text(body)
    return tmp_path


def test_a_command_that_exits_before_training_is_model_invalid(tmp_path: Path) -> None:
    cwd = _script(tmp_path, "import sys; sys.exit(3)\n")
    with pytest.raises(TrainerError) as e:
        run_command("python train.py", {}, cwd, tmp_path / "w")
    assert e.value.reason is Reason.ModelInvalid
    assert "exited with 3 before training started" in e.value.message


def test_a_command_that_is_not_found_is_model_invalid(tmp_path: Path) -> None:
    with pytest.raises(TrainerError) as e:
        run_command("no-such-program-here", {}, tmp_path, tmp_path / "w")
    assert e.value.reason is Reason.ModelInvalid


def test_a_failure_after_training_started_is_left_to_horovod(tmp_path: Path) -> None:
    # what elastic.fit does first: from then on an exit status is passed through as it is
    body = f"import os, pathlib, sys; pathlib.Path(os.environ['{STARTED_FILE_ENV}']).touch()\n"
    cwd = _script(tmp_path, body + "sys.exit(5)\n")
    assert run_command("python train.py", {}, cwd, tmp_path / "w") == 5


def test_the_command_gets_its_arguments_environment_and_folder(tmp_path: Path) -> None:
    body = (
        "import json, os, sys\n"
        "json.dump({'argv': sys.argv[1:], 'hp': os.environ['HP_UNITS'], 'cwd': os.getcwd()},"
        " open('out.json', 'w'))\n"
    )
    cwd = _script(tmp_path, body)
    assert run_command("python train.py", {"units": 8}, cwd, tmp_path / "w") == 0
    out = json.loads((cwd / "out.json").read_text())
    assert out == {"argv": ["--units", "8"], "hp": "8", "cwd": str(cwd)}
