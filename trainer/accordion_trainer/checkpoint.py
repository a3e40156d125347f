"""Atomic checkpoints: write the objects, then publish a manifest that names them.

Layout under the run's root::

    checkpoints/<id>/weights.npz
    checkpoints/<id>/state.json
    checkpoints/<id>.manifest.json     <- written last; lists every object with size + sha256

A checkpoint exists only once its manifest does, and a manifest counts only if every object it
lists is present with the listed size (and, when loaded, the listed sha256). The newest complete
one (by epoch, then samples) wins; half-written or corrupt ones are skipped with a log line.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .store import Store

PREFIX = "checkpoints"
MANIFEST_SUFFIX = ".manifest.json"


@dataclass(frozen=True)
class Manifest:
    id: str
    epoch: int
    samples: int
    objects: dict[str, dict[str, Any]]  # key -> {"size": int, "sha256": str}


def checkpoint_id(epoch: int, samples: int) -> str:
    return f"ckpt-e{epoch:06d}-s{samples:09d}"


def parse_manifest(raw: bytes) -> Manifest | None:
    try:
        doc = json.loads(raw)
        objects = {str(k): dict(v) for k, v in doc["objects"].items()}
        for v in objects.values():
            int(v["size"])
            str(v["sha256"])
        return Manifest(str(doc["id"]), int(doc["epoch"]), int(doc["samples"]), objects)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def select_newest(manifests: list[Manifest], sizes: dict[str, int]) -> Manifest | None:
    """The newest manifest whose every object is present with the recorded size."""
    complete = [
        m
        for m in manifests
        if m.objects and all(sizes.get(k) == int(v["size"]) for k, v in m.objects.items())
    ]
    return max(complete, key=lambda m: (m.epoch, m.samples), default=None)


def serialize_weights(model_weights: list[Any], optimizer_weights: list[Any]) -> bytes:
    buf = io.BytesIO()
    arrays = {f"m{i:05d}": np.asarray(w) for i, w in enumerate(model_weights)}
    arrays.update({f"o{i:05d}": np.asarray(w) for i, w in enumerate(optimizer_weights)})
    np.savez(buf, **arrays)
    return buf.getvalue()


def deserialize_weights(raw: bytes) -> tuple[list[Any], list[Any]]:
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        names = sorted(z.files)
        return [z[n] for n in names if n[0] == "m"], [z[n] for n in names if n[0] == "o"]


def write(store: Store, epoch: int, samples: int, weights: bytes, state: dict[str, Any]) -> int:
    """Write one checkpoint; returns its size in bytes. The manifest goes last."""
    cid = checkpoint_id(epoch, samples)
    blobs = {
        f"{PREFIX}/{cid}/weights.npz": weights,
        f"{PREFIX}/{cid}/state.json": json.dumps(state).encode(),
    }
    for key, data in blobs.items():
        store.put_bytes(key, data)
    manifest = {
        "id": cid,
        "epoch": epoch,
        "samples": samples,
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "objects": {
            k: {"size": len(v), "sha256": hashlib.sha256(v).hexdigest()} for k, v in blobs.items()
        },
    }
    store.put_bytes(f"{PREFIX}/{cid}{MANIFEST_SUFFIX}", json.dumps(manifest).encode())
    return sum(len(v) for v in blobs.values())


@dataclass(frozen=True)
class Loaded:
    manifest: Manifest
    weights: bytes
    state: dict[str, Any]


def _own_manifest(key: str) -> bool:
    """`checkpoints/<id>.manifest.json`, as `write` names one. Not one further down (`sizes`
    lists recursively): that is in the folder of another run, whose results prefix was set
    inside this run's folder, and it could name objects there as this run's checkpoint."""
    name = key.removeprefix(f"{PREFIX}/")
    return name != key and "/" not in name and name.endswith(MANIFEST_SUFFIX)


def load_newest(store: Store, log: Any = print) -> Loaded | None:
    """Load the newest complete, intact checkpoint, skipping broken ones."""
    sizes = store.sizes(PREFIX)
    manifests: list[Manifest] = []
    for key in sorted(k for k in sizes if _own_manifest(k)):
        m = parse_manifest(store.get_bytes(key))
        if m is None:
            log(f"checkpoint: ignoring unreadable manifest {key}")
            continue
        manifests.append(m)
    for m in manifests:
        if select_newest([m], sizes) is None:
            log(f"checkpoint: ignoring incomplete {m.id} (objects missing or short)")
    while manifests:
        m = select_newest(manifests, sizes)
        if m is None:
            break
        manifests.remove(m)
        blobs = {k: store.get_bytes(k) for k in m.objects}
        bad = [
            k for k, b in blobs.items() if hashlib.sha256(b).hexdigest() != m.objects[k]["sha256"]
        ]
        if bad:
            log(f"checkpoint: ignoring {m.id}: checksum mismatch in {', '.join(bad)}")
            continue
        wkey = next(k for k in blobs if k.endswith("weights.npz"))
        skey = next(k for k in blobs if k.endswith("state.json"))
        return Loaded(m, blobs[wkey], json.loads(blobs[skey]))
    return None
