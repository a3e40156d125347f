"""Streamed data (accordion_trainer.shards): the plans that keep every sample of every shard
trained exactly once per epoch whatever the resets, the reader, and shards that cannot be read."""

from __future__ import annotations

import threading
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accordion_trainer.data import open_dir
from accordion_trainer.errors import Reason, TrainerError
from accordion_trainer.shards import (
    ID_SHIFT,
    Interval,
    Plan,
    RankReader,
    ShardedData,
    is_sharded,
    open_shards,
    pieces,
    row_order,
    shard_order,
)

# --- plans (pure) -----------------------------------------------------------------------------


def positions(intervals: list[Interval]) -> list[int]:
    return [p for a, b in intervals for p in range(a, b)]


def rank_batches(plan: Plan, rank: int) -> list[list[int]]:
    """The stream positions of each batch rank `rank` trains under `plan`."""
    flat = positions(plan.rank_intervals(rank))
    out, at = [], 0
    for n in plan.batch_sizes(rank):
        out.append(flat[at : at + n])
        at += n
    assert at == len(flat)
    return out


def run_epoch(n: int, batch: int, resets: list[tuple[int, int]], last_world: int) -> list[int]:
    """Simulate an epoch of `n` samples: for each (world, steps) in `resets`, `world` ranks
    train `steps` steps of the current plan (at most all of them), then the world changes;
    `last_world` ranks finish the epoch. Every position trained, in order."""
    trained: list[int] = []
    pending: tuple[Interval, ...] = ((0, n),)
    for world, steps in [*resets, (last_world, 10**9)]:
        plan = Plan(pending, world, batch)
        done = min(steps, plan.steps)
        per_rank = [rank_batches(plan, r) for r in range(world)]
        for k in range(done):
            step = [p for r in range(world) for p in per_rank[r][k]]
            assert len(step) == plan.step_samples(k)
            assert all(per_rank[r][k] for r in range(world)), "a rank without samples"
            trained += step
        pending = plan.remaining_after(done)
    assert sum(b - a for a, b in pending) == plan.dropped < last_world
    return trained


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 400),
    batch=st.integers(1, 16),
    resets=st.lists(st.tuples(st.integers(1, 6), st.integers(0, 30)), max_size=6),
    last_world=st.integers(1, 6),
)
def test_every_sample_exactly_once_per_epoch_under_any_resets(
    n: int, batch: int, resets: list[tuple[int, int]], last_world: int
) -> None:
    trained = run_epoch(n, batch, resets, last_world)
    counts = Counter(trained)
    assert max(counts.values(), default=1) == 1, "a sample trained twice"
    assert all(0 <= p < n for p in counts)
    # only a remainder smaller than the last world is left out, never with one rank
    assert n - len(counts) < last_world


def test_one_rank_trains_everything_with_a_short_last_step() -> None:
    plan = Plan(((0, 10),), world=1, batch=4)
    assert plan.batch_sizes(0) == [4, 4, 2]
    assert positions(plan.rank_intervals(0)) == list(range(10))


def test_each_rank_reads_a_contiguous_part() -> None:
    plan = Plan(((0, 100),), world=3, batch=8)  # 4 full steps of 3 x 8, then 4 left: 2, 1, 1
    assert plan.full_steps == 4
    assert plan.tail == (2, 1, 1)
    assert plan.rank_intervals(0) == [(0, 32), (96, 98)]
    assert plan.rank_intervals(1) == [(32, 64), (98, 99)]
    assert plan.rank_intervals(2) == [(64, 96), (99, 100)]


def test_a_reset_keeps_what_each_rank_trained() -> None:
    plan = Plan(((0, 100),), world=2, batch=10)  # rank 0: 0..50, rank 1: 50..100
    assert plan.remaining_after(2) == ((20, 50), (70, 100))
    regrown = Plan(plan.remaining_after(2), world=3, batch=10)
    assert positions(regrown.rank_intervals(0))[:10] == list(range(20, 30))
    assert regrown.remaining_after(regrown.steps) == ()


def test_a_remainder_smaller_than_the_world_is_dropped() -> None:
    plan = Plan(((0, 13),), world=4, batch=3)  # one full step of 12, then 1 < 4 ranks
    assert (plan.steps, plan.dropped) == (1, 1)
    assert plan.remaining_after(1) == ((12, 13),)


def test_stream_positions_cover_each_shard_row_once() -> None:
    sizes = [5, 0, 7, 3]
    order = [int(i) for i in shard_order(4, epoch=2)]
    got = pieces([(0, 15)], sizes, order)
    assert sorted((s, lo, hi) for s, lo, hi in got) == [(0, 0, 5), (2, 0, 7), (3, 0, 3)]
    assert [s for s, _, _ in got] == [s for s in order if sizes[s]]
    # a split interval maps to the same rows
    a, b = pieces([(0, 6)], sizes, order), pieces([(6, 15)], sizes, order)
    assert sum(hi - lo for _, lo, hi in a + b) == 15


def test_orders_change_per_epoch_and_agree_across_ranks() -> None:
    assert list(shard_order(50, 1)) == list(shard_order(50, 1))
    assert list(shard_order(50, 1)) != list(shard_order(50, 2))
    assert sorted(row_order(20, 3, shard=4)) == list(range(20))
    assert list(row_order(20, 3, 4)) != list(row_order(20, 3, 5))


# --- the layout and the reader ----------------------------------------------------------------


def write_shards(root: Path, sizes: list[int], val: int = 7, compressed: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    save = np.savez_compressed if compressed else np.savez
    start = 0
    for i, n in enumerate(sizes):
        ids = np.arange(start, start + n)
        x = (ids[:, None] + np.zeros((1, 3))).astype(np.float32)  # tabular: 3 features = id
        save(root / f"train-{i:05d}.npz", x=x, y=(ids % 10).astype(np.int64))
        start += n
    np.savez(root / "val.npz", x=np.zeros((val, 3), np.float32), y=np.zeros(val, np.int64))
    return root


def read_all(data: ShardedData, plan: Plan, epoch: int = 0) -> tuple[list[int], list[float]]:
    ids: list[int] = []
    xs: list[float] = []
    for rank in range(plan.world):
        reader = RankReader(data, plan, rank, epoch, trace=True)
        sizes = []
        for x, _ in reader.batches():
            sizes.append(len(x))
            xs += [float(v) for v in x[:, 0]]
        assert sizes == plan.batch_sizes(rank)
        assert reader.ids is not None
        ids += [i for batch in reader.ids for i in batch]
    return ids, xs


def test_a_sharded_directory_is_streamed(tmp_path: Path) -> None:
    root = write_shards(tmp_path / "d", [10, 4, 9])
    assert is_sharded(root)
    assert not is_sharded(tmp_path)
    data = open_dir(root)
    assert isinstance(data, ShardedData)
    assert data.n_train == 23
    assert [s.size for s in data.shards] == [10, 4, 9]
    assert data.x_val.shape == (7, 3)
    assert data.x_val.dtype == np.float32


def test_the_reader_yields_every_sample_once_across_ranks(tmp_path: Path) -> None:
    data = open_shards(write_shards(tmp_path / "d", [10, 4, 9, 6], compressed=True))
    plan = Plan(((0, data.n_train),), world=3, batch=4)
    ids, xs = read_all(data, plan, epoch=1)
    assert len(ids) == len(set(ids)) == 29 - plan.dropped
    # the features are the rows the ids name: shard i's row r is sample start_i + r
    starts = np.cumsum([0, 10, 4, 9])
    assert sorted(xs) == sorted(float(starts[i >> ID_SHIFT] + (i & 0xFFFF)) for i in ids)


def test_the_reader_holds_at_most_two_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from accordion_trainer import shards

    data = open_shards(write_shards(tmp_path / "d", [8] * 6))
    live: set[int] = set()
    peak = [0]
    lock = threading.Lock()
    real = shards.read_shard

    class Tracked(np.ndarray):
        pass

    def tracked(shard: shards.Shard, *a: Any) -> tuple[Any, Any]:
        x, y = real(shard, *a)
        key = id(shard)
        with lock:
            live.add(key)
            peak[0] = max(peak[0], len(live))
        out = x.view(Tracked)
        import weakref

        weakref.finalize(out, lambda: live.discard(key))
        return out, y

    monkeypatch.setattr(shards, "read_shard", tracked)
    plan = Plan(((0, 48),), world=1, batch=4)
    ids, _ = read_all(data, plan)
    assert len(set(ids)) == 48
    assert peak[0] <= 2


# --- shards that cannot be read ---------------------------------------------------------------


def unreadable(root: Path) -> str:
    with pytest.raises(TrainerError) as e:
        open_shards(root)
    assert e.value.reason is Reason.DataUnreadable
    return e.value.message


def test_a_corrupt_shard_is_named(tmp_path: Path) -> None:
    root = write_shards(tmp_path / "d", [4, 4])
    (root / "train-00001.npz").write_bytes(b"not a zip file at all")
    msg = unreadable(root)
    assert "train-00001.npz" in msg
    assert "not a readable .npz" in msg
    assert "upload it again" in msg


def test_x_and_y_of_different_lengths(tmp_path: Path) -> None:
    root = write_shards(tmp_path / "d", [4, 4])
    np.savez(root / "train-00001.npz", x=np.zeros((4, 3), np.float32), y=np.zeros(3, np.int64))
    assert "4 samples in x but 3 in y" in unreadable(root)


@pytest.mark.parametrize(
    ("x", "what"),
    [
        (np.zeros((4, 3), np.float64), "x is float64 (3,) per sample but train-00000.npz has "),
        (np.zeros((4, 5), np.float32), "x is float32 (5,) per sample"),
    ],
)
def test_a_shard_unlike_the_others(tmp_path: Path, x: Any, what: str) -> None:
    root = write_shards(tmp_path / "d", [4, 4, 4])
    np.savez(root / "train-00002.npz", x=x, y=np.zeros(4, np.int64))
    msg = unreadable(root)
    assert msg.startswith("shard train-00002.npz: ")
    assert what in msg


def test_a_shard_without_y_or_with_objects(tmp_path: Path) -> None:
    root = write_shards(tmp_path / "d", [4, 4])
    np.savez(root / "train-00001.npz", x=np.zeros((4, 3), np.float32), labels=np.zeros(4))
    assert "no array y (it has: labels, x)" in unreadable(root)
    np.savez(root / "train-00001.npz", x=np.array([None] * 4), y=np.zeros(4))
    assert "dtype object" in unreadable(root)


def test_corrupt_data_behind_a_good_header_fails_when_read(tmp_path: Path) -> None:
    root = write_shards(tmp_path / "d", [64, 64], compressed=True)
    shard = root / "train-00001.npz"
    # big enough that reading the header does not reach the end of x's data (and its CRC)
    x = np.random.default_rng(0).random((8192, 3)).astype(np.float32)
    np.savez_compressed(shard, x=x, y=np.zeros(8192, np.int64))
    blob = bytearray(shard.read_bytes())
    with zipfile.ZipFile(shard) as zf:
        info = zf.getinfo("x.npy")
    mid = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    blob[mid : mid + 16] = bytes(16)  # zeros in the middle of x's compressed data
    shard.write_bytes(bytes(blob))
    data = open_shards(root)  # the headers are intact
    reader = RankReader(data, Plan(((0, data.n_train),), world=1, batch=512), rank=0, epoch=0)
    with pytest.raises(TrainerError) as e:
        list(reader.batches())
    assert e.value.reason is Reason.DataUnreadable
    assert "shard train-00001.npz: cannot be read" in e.value.message
    assert reader.error is e.value


def test_a_validation_set_unlike_the_shards(tmp_path: Path) -> None:
    root = write_shards(tmp_path / "d", [4, 4])
    np.savez(root / "val.npz", x=np.zeros((2, 4), np.float32), y=np.zeros(2))
    assert "val.npz: x is float32 (4,) per sample but the training shards have" in unreadable(root)


def test_without_val_the_last_shard_validates(tmp_path: Path) -> None:
    root = write_shards(tmp_path / "d", [4, 5, 6])
    (root / "val.npz").unlink()
    data = open_shards(root)
    assert data.n_train == 9
    assert len(data.x_val) == 6
    (root / "train-00001.npz").unlink()
    (root / "train-00002.npz").unlink()
    with pytest.raises(TrainerError) as e:
        open_shards(root)
    assert e.value.reason is Reason.DataNotFound


def test_images_are_shaped_and_scaled_like_the_in_memory_path(tmp_path: Path) -> None:
    from accordion_trainer.data import normalize_images

    root = tmp_path / "img"
    root.mkdir()
    x = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    for i in range(2):
        np.savez(root / f"train-{i:05d}.npz", x=x, y=np.arange(6))
    np.savez(root / "val.npz", x=x, y=np.arange(6))
    data = open_shards(root).with_class_labels()
    bx, by = data.batch(x[:4], np.eye(6)[:4])  # one-hot labels become classes
    assert bx.shape == (4, 28, 28, 1)
    assert by.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(bx, normalize_images(x[:4]))
    np.testing.assert_allclose(data.x_val, normalize_images(x))


def test_a_user_load_data_may_stream_shards(tmp_path: Path) -> None:
    from accordion_trainer.config import from_env
    from accordion_trainer.models import UserCode
    from accordion_trainer.train import load_data

    root = write_shards(tmp_path / "elsewhere", [4, 4])
    cfg = from_env({"ACCORDION_DATA_DIR": str(tmp_path / "elsewhere")})
    code = UserCode(build_model=lambda h: None, load_data=lambda path, h: open_shards(root))
    assert isinstance(load_data(cfg, code), ShardedData)
    assert isinstance(load_data(cfg, UserCode(lambda h: None, None)), ShardedData)
