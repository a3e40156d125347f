"""Sharding, batch skipping and the on-disk formats (accordion_trainer.data)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from accordion_trainer.data import (
    epoch_order,
    load_dir,
    normalize_images,
    normalize_labels,
    shard_indices,
    steps_remaining,
)
from accordion_trainer.errors import Reason, TrainerError


def test_ranks_partition_each_global_step() -> None:
    order = epoch_order(100, epoch=3)
    shards = [shard_indices(order, 0, r, 3, 4) for r in range(3)]
    # 100 // 12 = 8 steps; each rank gets 8 batches of 4; together they are the first 96 samples.
    assert all(len(s) == 32 for s in shards)
    step0 = np.concatenate([s[:4] for s in shards])
    assert list(step0) == list(order[:12])
    assert sorted(np.concatenate(shards)) == sorted(order[:96])


def test_resume_skips_consumed_samples_exactly() -> None:
    order = epoch_order(64, epoch=0)
    # 2 workers ran 3 steps of 4 (24 samples), then the world grew to 3.
    after = [shard_indices(order, 24, r, 3, 4) for r in range(3)]
    seen = set(order[:24])
    rest = set(np.concatenate(after))
    assert not seen & rest
    assert len(rest) == steps_remaining(64, 24, 3, 4) * 12 == 36


@given(
    n=st.integers(1, 500),
    size=st.integers(1, 6),
    bs=st.integers(1, 32),
    offset_frac=st.floats(0, 1),
)
def test_sharding_is_disjoint_and_equal_for_any_world(
    n: int, size: int, bs: int, offset_frac: float
) -> None:
    order = epoch_order(n, epoch=1)
    offset = int(n * offset_frac)
    shards = [shard_indices(order, offset, r, size, bs) for r in range(size)]
    lengths = {len(s) for s in shards}
    assert len(lengths) == 1  # every rank runs the same number of steps (allreduce count)
    flat = np.concatenate(shards)
    assert len(set(flat)) == len(flat)
    assert not set(flat) & set(order[:offset])


def test_epoch_order_is_the_same_on_every_rank_and_differs_by_epoch() -> None:
    assert list(epoch_order(50, 2)) == list(epoch_order(50, 2))
    assert list(epoch_order(50, 2)) != list(epoch_order(50, 3))


def test_rank_outside_world_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        shard_indices(epoch_order(10, 0), 0, 2, 2, 1)


def test_normalization_of_seed_formats() -> None:
    x = normalize_images(np.full((3, 784), 255, dtype=np.uint8))
    assert x.shape == (3, 28, 28, 1)
    assert x.dtype == np.float32
    assert float(x.max()) == 1.0
    assert list(normalize_labels(np.eye(10)[[3, 1]])) == [3, 1]


def _arrays(n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n, 28, 28), np.uint8), np.arange(n) % 10


def test_npz_and_pickles_load(tmp_path: Path) -> None:
    x, y = _arrays()
    npz = tmp_path / "npz"
    npz.mkdir()
    np.savez(npz / "d.npz", x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
    ds = load_dir(npz)
    assert len(ds.x_train) == 20
    assert len(ds.x_val) == 5  # test split doubles as validation when none is given

    pk = tmp_path / "pk"
    pk.mkdir()
    for name in ("train", "validation"):
        with (pk / f"{name}.pkl").open("wb") as f:
            pickle.dump((x, y), f)
    ds = load_dir(pk)
    assert ds.x_train.shape == (20, 28, 28, 1)
    assert len(ds.x_val) == 20


def test_no_validation_split_holds_out_ten_percent(tmp_path: Path) -> None:
    x, y = _arrays(50)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    ds = load_dir(tmp_path)
    assert (len(ds.x_train), len(ds.x_val)) == (45, 5)


@pytest.mark.parametrize(
    ("setup", "reason", "message"),
    [
        ("missing", Reason.DataNotFound, "does not exist"),
        ("empty", Reason.DataNotFound, "is empty"),
        ("garbage-npz", Reason.DataUnreadable, "not a readable .npz"),
        ("garbage-pickle", Reason.DataUnreadable, "not a readable pickle"),
        ("csv", Reason.DataUnreadable, "no training arrays"),
        ("mismatch", Reason.DataUnreadable, "labels"),
        ("zero", Reason.DataNotFound, "training set is empty"),
    ],
)
def test_data_errors_have_reasons(tmp_path: Path, setup: str, reason: Reason, message: str) -> None:
    d = tmp_path / "d"
    if setup != "missing":
        d.mkdir()
    if setup == "garbage-npz":
        (d / "x.npz").write_bytes(b"not a zip")
    elif setup == "garbage-pickle":
        (d / "train.pkl").write_bytes(b"\x80\x04garbage")
    elif setup == "csv":
        (d / "train.csv").write_text("1,2,3\n")
    elif setup == "mismatch":
        np.savez(d / "d.npz", x_train=np.zeros((4, 28, 28)), y_train=np.zeros(3))
    elif setup == "zero":
        np.savez(d / "d.npz", x_train=np.zeros((0, 28, 28)), y_train=np.zeros(0))
    with pytest.raises(TrainerError) as info:
        load_dir(d)
    assert info.value.reason is reason
    assert message in info.value.message
