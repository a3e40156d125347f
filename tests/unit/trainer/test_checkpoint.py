"""Checkpoint manifests: newest complete wins, half and corrupt ones are ignored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from accordion_trainer import checkpoint
from accordion_trainer.checkpoint import Manifest, parse_manifest, select_newest
from accordion_trainer.store import LocalStore


def _m(epoch: int, samples: int = 0, size: int = 3) -> Manifest:
    cid = checkpoint.checkpoint_id(epoch, samples)
    return Manifest(cid, epoch, samples, {f"checkpoints/{cid}/w": {"size": size, "sha256": "x"}})


def test_newest_complete_manifest_wins() -> None:
    a, b, c = _m(1), _m(2), _m(2, samples=64)
    sizes = {k: 3 for m in (a, b, c) for k in m.objects}
    assert select_newest([a, c, b], sizes) == c


def test_half_written_checkpoint_is_skipped() -> None:
    old, half = _m(1), _m(5)
    sizes = {k: 3 for k in old.objects}  # the newer one's object never arrived
    assert select_newest([old, half], sizes) == old
    truncated = {**sizes, **{k: 1 for k in half.objects}}  # or arrived short
    assert select_newest([old, half], truncated) == old


def test_no_complete_checkpoint() -> None:
    assert select_newest([_m(1)], {}) is None
    assert select_newest([], {}) is None


def test_manifest_parsing_rejects_garbage() -> None:
    assert parse_manifest(b"{not json") is None
    assert parse_manifest(b'{"id": "x"}') is None
    assert parse_manifest(b'{"id":"x","epoch":1,"samples":0,"objects":{"k":{"size":1}}}') is None
    good = {"id": "x", "epoch": 1, "samples": 0, "objects": {"k": {"size": 1, "sha256": "s"}}}
    assert parse_manifest(json.dumps(good).encode()) == Manifest("x", 1, 0, good["objects"])


def test_write_then_load_round_trip_and_corruption(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    w1 = checkpoint.serialize_weights([np.ones(3)], [np.zeros(2)])
    checkpoint.write(store, 1, 0, w1, {"epoch": 1, "samples": 0})
    w2 = checkpoint.serialize_weights([np.full(3, 2.0)], [np.ones(2)])
    checkpoint.write(store, 2, 0, w2, {"epoch": 2, "samples": 0})
    # A newer checkpoint whose manifest was published over damaged bytes (same size, bad hash).
    checkpoint.write(store, 3, 0, w2, {"epoch": 3, "samples": 0})
    damaged = tmp_path / "checkpoints" / checkpoint.checkpoint_id(3, 0) / "weights.npz"
    raw = bytearray(damaged.read_bytes())
    raw[-1] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    # And a manifest that is not JSON at all.
    (tmp_path / "checkpoints" / "ckpt-e000009-s000000000.manifest.json").write_text("{")
    logs: list[str] = []
    loaded = checkpoint.load_newest(store, log=logs.append)
    assert loaded is not None
    assert loaded.state["epoch"] == 2
    model_w, opt_w = checkpoint.deserialize_weights(loaded.weights)
    assert float(model_w[0][0]) == 2.0
    assert float(opt_w[0][0]) == 1.0
    assert any("checksum mismatch" in line for line in logs)
    assert any("unreadable manifest" in line for line in logs)
    assert not any("incomplete" in line for line in logs)


def test_a_manifest_in_a_folder_nested_below_checkpoints_is_not_this_runs(tmp_path: Path) -> None:
    """Another run whose results prefix lies inside this run's `checkpoints/` writes there; a
    manifest of its own that names its objects by this run's keys still does not count."""
    store = LocalStore(tmp_path)
    checkpoint.write(store, 1, 0, checkpoint.serialize_weights([np.ones(3)], []), {"epoch": 1})
    nested = "checkpoints/team-b/mnist-0123456789ab"
    other = LocalStore(tmp_path / nested)
    checkpoint.write(other, 5, 0, checkpoint.serialize_weights([np.zeros(3)], []), {"epoch": 5})
    manifest = tmp_path / nested / "checkpoints" / f"{checkpoint.checkpoint_id(5, 0)}.manifest.json"
    doc = json.loads(manifest.read_text())
    doc["objects"] = {f"{nested}/{k}": v for k, v in doc["objects"].items()}
    manifest.write_text(json.dumps(doc))
    loaded = checkpoint.load_newest(store, log=lambda _: None)
    assert loaded is not None
    assert loaded.state["epoch"] == 1
