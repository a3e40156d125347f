"""Built-in models and the user-code contract.

User code is a Python module (a `.py` file, or a package/folder, or a zip/tar of either) that
exposes::

    def build_model(hparams: dict) -> keras.Model          # required, uncompiled or compiled
    def load_data(path: str, hparams: dict) -> Dataset     # optional; default: data.open_dir

`hparams` is the run's `spec.hyperparameters` (strings/numbers), the same standalone and in an
Experiment. The trainer compiles the model (if the user did not), wraps the optimizer for Horovod,
scales the learning rate with the world size, and does the elastic loop; the user writes no
Horovod code.
"""

from __future__ import annotations

import importlib.util
import sys
import tarfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import Reason, TrainerError

HParams = Mapping[str, Any]


def _hp_float(hparams: HParams, key: str, default: float) -> float:
    try:
        return float(hparams.get(key, default))
    except (TypeError, ValueError) as e:
        raise TrainerError(Reason.ModelInvalid, f"hyperparameter {key}={hparams[key]!r}") from e


def _mnist_cnn(hparams: HParams) -> Any:
    """The seeds' sample: Conv2D(32,3x3,relu) → MaxPool(2) → Flatten → Dense(128) → Dropout."""
    from tensorflow import keras

    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(_hp_float(hparams, "dropout", 0.25)),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="mnist_cnn",
    )


def _mnist_cnn3(hparams: HParams) -> Any:
    """The seeds' other sample: three conv + ReLU + pool blocks."""
    from tensorflow import keras

    layers: list[Any] = [keras.Input((28, 28, 1))]
    for filters in (32, 64, 64):
        layers += [
            keras.layers.Conv2D(filters, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
        ]
    layers += [
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(_hp_float(hparams, "dropout", 0.25)),
        keras.layers.Dense(10, activation="softmax"),
    ]
    return keras.Sequential(layers, name="mnist_cnn3")


def _mlp(hparams: HParams) -> Any:
    from tensorflow import keras

    units = int(_hp_float(hparams, "units", 256))
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dropout(_hp_float(hparams, "dropout", 0.2)),
            keras.layers.Dense(units // 2, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="mlp",
    )


BUILTIN_MODELS: dict[str, Callable[[HParams], Any]] = {
    "mnist-cnn": _mnist_cnn,
    "mnist-cnn3": _mnist_cnn3,
    "mlp": _mlp,
}


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: exactly one of `builtin` or `path` (file, folder or archive)."""

    builtin: str | None = None
    path: Path | None = None

    @property
    def label(self) -> str:
        return self.builtin or str(self.path)


@dataclass(frozen=True)
class UserCode:
    build_model: Callable[[HParams], Any]
    load_data: Callable[[str, HParams], Any] | None


def _extract(archive: Path, into: Path) -> Path:
    """Unpack a zip/tar into `into`, refusing members that escape it (zip-slip)."""
    into.mkdir(parents=True, exist_ok=True)
    root = into.resolve()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    if not (root / name).resolve().is_relative_to(root):
                        raise TrainerError(Reason.ModelInvalid, f"{archive}: unsafe path {name}")
                zf.extractall(root)  # noqa: S202 - members checked above
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                tf.extractall(root, filter="data")
        else:
            raise TrainerError(Reason.ModelInvalid, f"{archive}: not a zip or tar archive")
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as e:
        raise TrainerError(Reason.ModelInvalid, f"{archive}: cannot unpack: {e}") from e
    return root


#: For the user's command (usercmd.py), which unpacks the code but imports nothing from it.
unpack_code = _extract


def find_entry_module(root: Path) -> Path:
    """The module to import from an unpacked tree: `model.py`, `train.py`, or the only `.py`."""
    for name in ("model.py", "train.py", "__init__.py"):
        hits = sorted(root.rglob(name), key=lambda p: len(p.parts))
        if hits:
            return hits[0]
    pys = sorted(root.rglob("*.py"))
    if len(pys) == 1:
        return pys[0]
    raise TrainerError(
        Reason.ModelInvalid,
        f"{root}: no model.py/train.py and {len(pys)} other .py files; cannot pick the entry",
    )


def load_user_code(path: Path, workdir: Path) -> UserCode:
    """Import user code from a `.py` file, a folder or a zip/tar archive."""
    if not path.exists():
        raise TrainerError(Reason.ModelInvalid, f"model code {path} does not exist")
    if path.is_file() and path.suffix != ".py":
        path = _extract(path, workdir / "usercode")
    entry = find_entry_module(path) if path.is_dir() else path
    sys.path.insert(0, str(entry.parent))
    spec = importlib.util.spec_from_file_location("accordion_user_model", entry)
    if spec is None or spec.loader is None:
        raise TrainerError(Reason.ModelInvalid, f"{entry}: not importable")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # user code may raise anything; the reason is what matters
        raise TrainerError(Reason.ModelInvalid, f"{entry}: import failed: {e!r}") from e
    build = getattr(module, "build_model", None)
    if not callable(build):
        raise TrainerError(Reason.ModelInvalid, f"{entry}: no build_model(hparams) function")
    load = getattr(module, "load_data", None)
    return UserCode(build_model=build, load_data=load if callable(load) else None)


def resolve(source: ModelSource, workdir: Path) -> UserCode:
    if source.builtin is not None:
        try:
            return UserCode(build_model=BUILTIN_MODELS[source.builtin], load_data=None)
        except KeyError:
            known = ", ".join(sorted(BUILTIN_MODELS))
            raise TrainerError(
                Reason.ModelInvalid, f"unknown built-in model {source.builtin!r} (known: {known})"
            ) from None
    if source.path is None:
        raise TrainerError(Reason.ModelInvalid, "no model given")
    return load_user_code(source.path, workdir)


def build(code: UserCode, hparams: HParams) -> Any:
    try:
        model = code.build_model(hparams)
    except TrainerError:
        raise
    except Exception as e:
        raise TrainerError(Reason.ModelInvalid, f"build_model failed: {e!r}") from e
    if not hasattr(model, "fit"):
        raise TrainerError(Reason.ModelInvalid, f"build_model returned {type(model).__name__}")
    return model
