"""Streamed data: a training set in `.npz` shards, read shard by shard, exactly once per epoch
across elastic resets (docs/contract.md, "Data").

Layout of a data directory (the staged prefix, or a local folder standalone):
- `train-*.npz` (e.g. `train-00000.npz`, ...): the training set, each shard with arrays `x`
  (samples on the first axis) and `y` (one label row per sample). Every shard has the same
  dtype and per-sample shape of `x`, and of `y`, as the first one in name order;
- `val.npz` (or `validation.npz`) with `x`/`y`: the validation set, held in memory. Without it
  the last shard in name order is the validation set (so at least two shards are needed);
- `test.npz` with `x`/`y`: optional, in memory.

The epoch's stream: the shards in a seeded permutation (per epoch), each shard's rows in a
seeded permutation (per epoch and shard), concatenated. Positions in that stream are what the
elastic state commits: `pending`, the intervals not yet trained when the current plan was made,
and `plan_steps`, the global steps trained under it. A plan gives rank r of W a contiguous part
of the pending stream (full steps of `batch` samples, then a last short step that splits the
rest evenly), so a rank reads only the few shards its part covers, one at a time plus the next
one prefetched. After a reset the trained part of each rank is removed from `pending` and the
rest is planned again for the new world: every sample of every shard is trained exactly once per
epoch, at any sequence of world sizes (an epoch drops only a remainder smaller than the world,
never with one rank). The headers of every shard are checked before training; a shard that
cannot be read, or differs from the others, fails the run with `DataUnreadable`, naming it.
"""

from __future__ import annotations

import threading
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import Reason, TrainerError

Array = npt.NDArray[Any]
#: [start, end) positions in an epoch's stream of training samples
Interval = tuple[int, int]

TRAIN_GLOB = "train-*.npz"
VAL_NAMES = ("val.npz", "validation.npz")
TEST_NAME = "test.npz"
#: a sample's id in traces: shard index (in name order) << 32 | row in the shard
ID_SHIFT = 32

READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)
FIX = "rewrite it (np.savez(path, x=..., y=...)) and upload it again, or remove it from the prefix"


def is_sharded(path: Path) -> bool:
    """Whether a data directory has the sharded layout (`train-*.npz` at its top)."""
    return path.is_dir() and any(path.glob(TRAIN_GLOB))


# --- shard headers --------------------------------------------------------------------------


@dataclass(frozen=True)
class ArraySpec:
    """An array's dtype and the shape of one sample (its shape without the first axis)."""

    dtype: np.dtype[Any]
    sample: tuple[int, ...]

    def text(self) -> str:
        return f"{self.dtype} {self.sample}"


@dataclass(frozen=True)
class Shard:
    path: Path
    size: int


def _npy_header(f: Any) -> tuple[tuple[int, ...], np.dtype[Any]]:
    npy: Any = np.lib.format  # numpy's public .npy header readers are untyped
    version = npy.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = npy.read_array_header_1_0(f)
    else:
        shape, _, dtype = npy.read_array_header_2_0(f)
    return tuple(int(d) for d in shape), np.dtype(dtype)


def read_header(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """The shapes and dtypes of a shard's `x` and `y`, read from the `.npy` headers only (a few
    hundred bytes each, whatever the shard's size)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            missing = [k for k in ("x", "y") if f"{k}.npy" not in names]
            if missing:
                have = ", ".join(sorted(n.removesuffix(".npy") for n in names)) or "none"
                raise TrainerError(
                    Reason.DataUnreadable,
                    f"shard {path.name}: no array {' or '.join(missing)} (it has: {have}); "
                    f"every shard holds x and y: {FIX}",
                )
            out = {}
            for key in ("x", "y"):
                with zf.open(f"{key}.npy") as f:
                    out[key] = _npy_header(f)
            return out
    except TrainerError:
        raise
    except READ_ERRORS as e:
        raise TrainerError(
            Reason.DataUnreadable, f"shard {path.name}: not a readable .npz ({e}); {FIX}"
        ) from e


def _spec(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> ArraySpec:
    if not shape:
        raise TrainerError(
            Reason.DataUnreadable, f"shard {path.name}: {key} is a scalar, not one row per sample"
        )
    if dtype.kind not in "biuf":
        raise TrainerError(
            Reason.DataUnreadable,
            f"shard {path.name}: {key} has dtype {dtype}; shards hold numbers (bool, int, uint, "
            f"float): {FIX}",
        )
    return ArraySpec(dtype, shape[1:])


def check_shards(paths: Sequence[Path]) -> tuple[list[Shard], ArraySpec, ArraySpec]:
    """Every shard's size from its header, and the `x`/`y` specs they all share (the first
    shard's): a shard that differs, or whose x and y differ in length, is `DataUnreadable`."""
    shards: list[Shard] = []
    specs: dict[str, ArraySpec] = {}
    for path in paths:
        header = read_header(path)
        (nx, *_), (ny, *_) = (header["x"][0] or (0,)), (header["y"][0] or (0,))
        got = {k: _spec(path, k, *header[k]) for k in ("x", "y")}
        if nx != ny:
            raise TrainerError(
                Reason.DataUnreadable,
                f"shard {path.name}: {nx} samples in x but {ny} in y; {FIX}",
            )
        for key in ("x", "y"):
            if key not in specs:
                specs[key] = got[key]
            elif got[key] != specs[key]:
                raise TrainerError(
                    Reason.DataUnreadable,
                    f"shard {path.name}: {key} is {got[key].text()} per sample but "
                    f"{paths[0].name} has {specs[key].text()}; every shard must have the same "
                    f"dtype and sample shape: {FIX}",
                )
        shards.append(Shard(path, nx))
    if not shards or sum(s.size for s in shards) == 0:
        raise TrainerError(Reason.DataNotFound, "the training shards hold no samples")
    return shards, specs["x"], specs["y"]


def read_shard(shard: Shard, x_spec: ArraySpec, y_spec: ArraySpec) -> tuple[Array, Array]:
    """A whole shard's arrays, checked against the specs its header promised."""
    try:
        with np.load(shard.path, allow_pickle=False) as z:
            x, y = z["x"], z["y"]
    except READ_ERRORS as e:
        raise TrainerError(
            Reason.DataUnreadable, f"shard {shard.path.name}: cannot be read ({e}); {FIX}"
        ) from e
    for key, arr, spec in (("x", x, x_spec), ("y", y, y_spec)):
        if arr.shape != (shard.size, *spec.sample) or arr.dtype != spec.dtype:
            raise TrainerError(
                Reason.DataUnreadable,
                f"shard {shard.path.name}: {key} read as {arr.dtype} {arr.shape}, expected "
                f"{spec.dtype} {(shard.size, *spec.sample)}; {FIX}",
            )
    return x, y


# --- features and labels --------------------------------------------------------------------


def is_image(sample: tuple[int, ...]) -> bool:
    """The in-memory path's rule (data.normalize_images): a 1-D sample other than a flat 784 is
    a row of tabular features (passed as it is); anything else may be pixels to rescale."""
    return not (len(sample) == 1 and sample != (784,))


def feature_shape(sample: tuple[int, ...]) -> tuple[int, ...]:
    if sample == (784,):
        return (28, 28, 1)
    if len(sample) == 2:
        return (*sample, 1)
    return sample


def features(x: Array, sample: tuple[int, ...], scale: bool) -> npt.NDArray[np.float32]:
    """A batch of raw `x` as the model gets it: float32, images with a channel axis and, when
    `scale`, divided by 255."""
    out = np.asarray(x, dtype=np.float32).reshape((len(x), *feature_shape(sample)))
    if scale:
        out /= 255.0
    return out


def class_labels(y: Array) -> npt.NDArray[np.int64]:
    """The default classification path's labels: integer classes (one-hot rows converted)."""
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    return y.reshape(-1).astype(np.int64)


# --- the data set -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardedData:
    """A training set in shards on disk (never all in memory) and the in-memory validation and
    test sets, normalised as the model gets them. `x_val`/`y_val`/`x_test`/`y_test` are named
    as in `data.Dataset`, so validation and results read either kind alike."""

    shards: tuple[Shard, ...]
    x_spec: ArraySpec
    y_spec: ArraySpec
    x_val: Array
    y_val: Array
    x_test: Array | None = None
    y_test: Array | None = None
    #: images whose values go above 1.5 (the validation set decides) are divided by 255
    scale: bool = False
    #: labels made integer classes (a model the user did not compile: data.class_labels)
    class_labels: bool = False

    @property
    def n_train(self) -> int:
        return sum(s.size for s in self.shards)

    def with_class_labels(self) -> ShardedData:
        y_test = None if self.y_test is None else class_labels(self.y_test)
        return replace(self, class_labels=True, y_val=class_labels(self.y_val), y_test=y_test)

    def batch(self, x: Array, y: Array) -> tuple[Array, Array]:
        """A batch of raw shard rows as the model gets it."""
        labels = class_labels(y) if self.class_labels else y
        return features(x, self.x_spec.sample, self.scale), labels

    def signature(self) -> tuple[tuple[int | None, ...], tuple[int | None, ...], np.dtype[Any]]:
        """Batch shapes of features and labels, and the labels' dtype (tf.data's signature)."""
        if self.class_labels:
            return (None, *feature_shape(self.x_spec.sample)), (None,), np.dtype(np.int64)
        return (
            (None, *feature_shape(self.x_spec.sample)),
            (None, *self.y_spec.sample),
            self.y_spec.dtype,
        )


def _small_set(path: Path, x_spec: ArraySpec, y_spec: ArraySpec) -> tuple[Array, Array]:
    """The validation or test set: in memory, its samples shaped as the training shards'."""
    header = read_header(path)
    got = {k: _spec(path, k, *header[k]) for k in ("x", "y")}
    for key, spec in (("x", x_spec), ("y", y_spec)):
        if got[key].sample != spec.sample:
            raise TrainerError(
                Reason.DataUnreadable,
                f"{path.name}: {key} is {got[key].text()} per sample but the training shards "
                f"have {spec.text()}; {FIX}",
            )
    size = header["x"][0][0]
    if header["y"][0][0] != size:
        raise TrainerError(Reason.DataUnreadable, f"{path.name}: x and y differ in length; {FIX}")
    return read_shard(Shard(path, size), got["x"], got["y"])


def open_shards(path: Path) -> ShardedData:
    """Check the sharded layout under `path` (headers only) and load its validation and test
    sets; the training shards stay on disk."""
    if not path.is_dir():
        raise TrainerError(Reason.DataNotFound, f"data directory {path} does not exist")
    paths = sorted(path.glob(TRAIN_GLOB))
    if not paths:
        raise TrainerError(Reason.DataNotFound, f"{path}: no {TRAIN_GLOB} shards")
    val_path = next((path / n for n in VAL_NAMES if (path / n).is_file()), None)
    if val_path is None:
        if len(paths) < 2:
            raise TrainerError(
                Reason.DataNotFound,
                f"{path}: one training shard and no val.npz; add a val.npz (x, y) or a second "
                "shard (the last one in name order is then the validation set)",
            )
        val_path, paths = paths[-1], paths[:-1]
    shards, x_spec, y_spec = check_shards(paths)
    x_val, y_val = _small_set(val_path, x_spec, y_spec)
    test = path / TEST_NAME
    x_test, y_test = _small_set(test, x_spec, y_spec) if test.is_file() else (None, None)
    image = is_image(x_spec.sample)
    scale = bool(image and x_val.size and float(x_val.max()) > 1.5)
    return ShardedData(
        tuple(shards),
        x_spec,
        y_spec,
        features(x_val, x_spec.sample, scale),
        # as the shards' labels, so that a batch of either traces the same training step
        y_val.astype(y_spec.dtype),
        None if x_test is None else features(x_test, x_spec.sample, scale),
        None if y_test is None else y_test.astype(y_spec.dtype),
        scale=scale,
    )


# --- the epoch's stream and the plans over it (pure) -----------------------------------------


def shard_order(n_shards: int, epoch: int, seed: int = 0) -> npt.NDArray[np.int64]:
    """The order of the shards in an epoch's stream: the same on every rank."""
    return np.random.default_rng([seed, epoch, 1]).permutation(n_shards).astype(np.int64)


def row_order(size: int, epoch: int, shard: int, seed: int = 0) -> npt.NDArray[np.int64]:
    """The order of a shard's rows in an epoch's stream: the same on every rank."""
    return np.random.default_rng([seed, epoch, 2, shard]).permutation(size).astype(np.int64)


def merge(intervals: Sequence[Interval]) -> tuple[Interval, ...]:
    """Non-empty intervals, sorted, adjacent and overlapping ones joined."""
    out: list[Interval] = []
    for a, b in sorted(iv for iv in intervals if iv[1] > iv[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return tuple(out)


def select(pending: Sequence[Interval], lo: int, hi: int) -> list[Interval]:
    """The stream intervals at positions [lo, hi) of `pending` laid end to end."""
    out: list[Interval] = []
    at = 0
    for a, b in pending:
        n = b - a
        s, e = max(lo, at), min(hi, at + n)
        if s < e:
            out.append((a + s - at, a + e - at))
        at += n
        if at >= hi:
            break
    return out


@dataclass(frozen=True)
class Plan:
    """How `world` ranks train the `pending` stream intervals in steps of `batch` per rank.

    Laid end to end, the pending samples are cut into `world` contiguous parts of
    `full_steps * batch` (rank r takes the r-th), then a last short step whose samples are split
    as evenly as possible (`tail`, one count per rank). A remainder smaller than the world
    (`dropped`) cannot give every rank a sample and is not trained in this plan."""

    pending: tuple[Interval, ...]
    world: int
    batch: int

    def __post_init__(self) -> None:
        if self.world < 1 or self.batch < 1:
            raise ValueError(f"world {self.world} and batch {self.batch} must be >= 1")

    @cached_property
    def total(self) -> int:
        return sum(b - a for a, b in self.pending)

    @cached_property
    def full_steps(self) -> int:
        return self.total // (self.world * self.batch)

    @cached_property
    def tail(self) -> tuple[int, ...]:
        rest = self.total - self.full_steps * self.world * self.batch
        if rest < self.world:
            return ()
        base, extra = divmod(rest, self.world)
        return tuple(base + (1 if r < extra else 0) for r in range(self.world))

    @property
    def dropped(self) -> int:
        return self.total - self.full_steps * self.world * self.batch - sum(self.tail)

    @property
    def steps(self) -> int:
        return self.full_steps + (1 if self.tail else 0)

    def step_samples(self, step: int) -> int:
        """Samples trained by all ranks together in global step `step` of this plan."""
        if step < self.full_steps:
            return self.world * self.batch
        return sum(self.tail) if step == self.full_steps else 0

    def batch_sizes(self, rank: int) -> list[int]:
        return [self.batch] * self.full_steps + ([self.tail[rank]] if self.tail else [])

    def _parts(self, rank: int) -> list[tuple[int, int]]:
        """Rank `rank`'s ranges of the pending samples laid end to end: its full-step part, then
        its share of the short step."""
        span = self.full_steps * self.batch
        parts = [(rank * span, (rank + 1) * span)]
        if self.tail:
            start = self.world * span + sum(self.tail[:rank])
            parts.append((start, start + self.tail[rank]))
        return parts

    def rank_intervals(self, rank: int) -> list[Interval]:
        """The stream intervals rank `rank` trains, in its order."""
        if not 0 <= rank < self.world:
            raise ValueError(f"rank {rank} outside world size {self.world}")
        return [iv for lo, hi in self._parts(rank) for iv in select(self.pending, lo, hi)]

    def remaining_after(self, steps_done: int) -> tuple[Interval, ...]:
        """The pending intervals not trained once `steps_done` steps of this plan are."""
        full = min(steps_done, self.full_steps)
        trained: list[Interval] = []
        for rank in range(self.world):
            (lo, _), *tail = self._parts(rank)
            trained += select(self.pending, lo, lo + full * self.batch)
            if tail and steps_done > self.full_steps:
                trained += select(self.pending, *tail[0])
        return subtract(self.pending, trained)


def subtract(pending: Sequence[Interval], trained: Sequence[Interval]) -> tuple[Interval, ...]:
    out: list[Interval] = []
    cut = merge(trained)
    for a, b in merge(pending):
        at = a
        for c, d in cut:
            if d <= at or c >= b:
                continue
            if c > at:
                out.append((at, c))
            at = max(at, d)
        if at < b:
            out.append((at, b))
    return merge(out)


def pieces(
    intervals: Sequence[Interval], sizes: Sequence[int], order: Sequence[int]
) -> list[tuple[int, int, int]]:
    """Stream intervals as (shard index, start, end) ranges of positions in that shard's row
    order, given the shards' sizes and the epoch's shard `order`."""
    ordered = np.asarray([sizes[s] for s in order], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(ordered)])
    out: list[tuple[int, int, int]] = []
    for a, b in intervals:
        j = int(np.searchsorted(starts, a, side="right")) - 1
        while a < b:
            end = min(b, int(starts[j + 1]))
            if end > a:
                out.append((int(order[j]), a - int(starts[j]), end - int(starts[j])))
            a = end
            j += 1
    return out


# --- reading a rank's part --------------------------------------------------------------------


class RankReader:
    """One rank's batches for one plan: its pieces read in order, one shard in memory plus the
    next one loaded by a background thread (so at most two shards, whatever the data set).

    `ids`, when `trace` is set, collects each yielded batch's sample ids (`ID_SHIFT`)."""

    def __init__(
        self,
        data: ShardedData,
        plan: Plan,
        rank: int,
        epoch: int,
        seed: int = 0,
        trace: bool = False,
    ) -> None:
        self.data = data
        order = shard_order(len(data.shards), epoch, seed)
        sizes = [s.size for s in data.shards]
        self.pieces = pieces(plan.rank_intervals(rank), sizes, [int(i) for i in order])
        self.sizes = plan.batch_sizes(rank)
        self.epoch, self.seed = epoch, seed
        self.ids: list[list[int]] | None = [] if trace else None
        #: the first error met while reading (tf.data wraps the generator's exception)
        self.error: TrainerError | None = None
        self._lock = threading.Lock()

    def _load(self, shard: int) -> tuple[Array, Array, Array]:
        x, y = read_shard(self.data.shards[shard], self.data.x_spec, self.data.y_spec)
        return x, y, row_order(len(x), self.epoch, shard, self.seed)

    def batches(self) -> Iterator[tuple[Array, Array]]:
        try:
            yield from self._batches()
        except TrainerError as e:
            self.error = e
            raise

    def _batches(self) -> Iterator[tuple[Array, Array]]:
        sizes = iter(self.sizes)
        need = next(sizes, 0)
        if not need:
            return
        buf: list[tuple[Array, Array, Array]] = []
        shards = [p[0] for p in self.pieces]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-prefetch") as pool:
            current: tuple[int, tuple[Array, Array, Array]] | None = None
            ahead: tuple[int, Future[tuple[Array, Array, Array]]] | None = None
            for i, (shard, lo, hi) in enumerate(self.pieces):
                if current is None or current[0] != shard:
                    # drop the finished shard before the one after next is loaded: at most two
                    current = None
                    x = y = rows = np.empty(0)
                    if ahead is not None and ahead[0] == shard:
                        current, ahead = (shard, ahead[1].result()), None
                    else:
                        current = (shard, self._load(shard))
                    nxt = next((s for s in shards[i + 1 :] if s != shard), None)
                    if nxt is not None and (ahead is None or ahead[0] != nxt):
                        ahead = (nxt, pool.submit(self._load, nxt))
                x, y, rows = current[1]
                pos = lo
                while pos < hi:
                    take = min(need, hi - pos)
                    idx = np.sort(rows[pos : pos + take])  # sorted: a faster gather, same set
                    buf.append((x[idx], y[idx], (shard << ID_SHIFT) | idx))
                    pos += take
                    need -= take
                    if need == 0:
                        yield self._emit(buf)
                        buf = []
                        need = next(sizes, 0)
                        if not need:
                            return

    def _emit(self, buf: list[tuple[Array, Array, Array]]) -> tuple[Array, Array]:
        if len(buf) == 1:
            x, y, ids = buf[0]
        else:
            x, y, ids = (np.concatenate([b[k] for b in buf]) for k in range(3))
        if self.ids is not None:
            with self._lock:
                self.ids.append([int(i) for i in ids])
        return self.data.batch(x, y)
