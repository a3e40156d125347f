"""The user-code contract: loading `build_model`/`load_data` from files and archives."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import pytest

from accordion_trainer.errors import Reason, TrainerError
from accordion_trainer.models import BUILTIN_MODELS, ModelSource, find_entry_module, resolve

CODE = """\
def build_model(hparams):
    return hparams["n"]


def load_data(path, hparams):
    return path
"""


def test_builtin_names() -> None:
    assert set(BUILTIN_MODELS) == {"mnist-cnn", "mnist-cnn3", "mlp"}
    with pytest.raises(TrainerError) as info:
        resolve(ModelSource(builtin="resnet"), Path("."))
    assert info.value.reason is Reason.ModelInvalid
    assert "mnist-cnn" in info.value.message


@pytest.mark.parametrize("kind", ["py", "zip", "tar", "dir"])
def test_user_code_from_each_delivery(tmp_path: Path, kind: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.py").write_text(CODE)
    (src / "helper.py").write_text("X = 1\n")
    path = {"py": src / "model.py", "dir": src}.get(kind)
    if kind == "zip":
        path = tmp_path / "code.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.write(src / "model.py", "pkg/model.py")
            zf.write(src / "helper.py", "pkg/helper.py")
    elif kind == "tar":
        path = tmp_path / "code.tar.gz"
        with tarfile.open(path, "w:gz") as tf:
            tf.add(src / "model.py", "model.py")
    assert path is not None
    code = resolve(ModelSource(path=path), tmp_path / "work")
    assert code.build_model({"n": 7}) == 7
    assert code.load_data is not None
    assert code.load_data("/data", {}) == "/data"


def test_zip_slip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("../escape.py", CODE)
    with pytest.raises(TrainerError, match="unsafe path"):
        resolve(ModelSource(path=path), tmp_path / "work")


@pytest.mark.parametrize(
    ("text", "message"),
    [("raise RuntimeError('x')\n", "import failed"), ("X = 1\n", "no build_model")],
)
def test_broken_user_code_is_model_invalid(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "model.py").write_text(text)
    with pytest.raises(TrainerError) as info:
        resolve(ModelSource(path=tmp_path / "model.py"), tmp_path)
    assert info.value.reason is Reason.ModelInvalid
    assert message in info.value.message


def test_ambiguous_entry_module(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("")
    (tmp_path / "b.py").write_text("")
    with pytest.raises(TrainerError, match="cannot pick"):
        find_entry_module(tmp_path)
