"""Stage-in planning and verification (no server: pure parts)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from accordion_trainer.errors import TrainerError
from accordion_trainer.staging import Item, md5_matches, plan, verified


def test_plan_strips_prefix_and_skips_folders(tmp_path: Path) -> None:
    items = [
        Item("data/mnist/a.npz", 3, ""),
        Item("data/mnist/sub/b.pkl", 1, ""),
        Item("data/mnist/", 0, ""),
    ]
    out = plan(items, "data/mnist/", tmp_path)
    assert [p.relative_to(tmp_path.resolve()).as_posix() for _, p in out] == ["a.npz", "sub/b.pkl"]


def test_plan_refuses_escaping_keys(tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match="escapes"):
        plan([Item("p/../../etc/passwd", 1, "")], "p", tmp_path)


def test_etag_and_size_verification(tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_bytes(b"hello")
    md5 = hashlib.md5(b"hello").hexdigest()  # noqa: S324 - S3 ETags are MD5s
    assert md5_matches(f, f'"{md5}"') is True
    assert md5_matches(f, "0" * 32) is False
    assert md5_matches(f, f"{md5}-2") is None  # multipart ETag: not an MD5 of the content
    assert verified(f, Item("x", 5, md5))
    assert not verified(f, Item("x", 6, md5))
    assert not verified(f, Item("x", 5, "0" * 32))
    assert verified(f, Item("x", 5, "abc-3"))
    assert not verified(tmp_path / "missing", Item("x", 5, md5))
