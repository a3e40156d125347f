"""Object stores for results and checkpoints: a local directory or a MinIO/S3 prefix.

Both expose the same four calls so checkpointing and results code is written once; keys are
`/`-separated and relative to the run's root (`TrainConfig.results_prefix` in a bucket or a local
folder).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol


class Store(Protocol):
    uri: str

    def put_bytes(self, key: str, data: bytes) -> None: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def sizes(self, prefix: str) -> dict[str, int]: ...


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = root.resolve().as_uri()

    def _path(self, key: str) -> Path:
        return self.root / key

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write via a temp file + rename so a reader never sees a half file under `key`."""
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)

    def put_file(self, key: str, path: Path) -> None:
        self.put_bytes(key, path.read_bytes())

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def sizes(self, prefix: str) -> dict[str, int]:
        base = self._path(prefix)
        if not base.exists():
            return {}
        return {
            str(p.relative_to(self.root)): p.stat().st_size
            for p in _walk(base)
            if not p.name.startswith(".")
        }


def _walk(base: Path) -> Iterator[Path]:
    yield from (p for p in base.rglob("*") if p.is_file())


class S3Store:
    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes) -> None:
        import io

        self.client.put_object(self.bucket, self._key(key), io.BytesIO(data), len(data))

    def put_file(self, key: str, path: Path) -> None:
        self.client.fput_object(self.bucket, self._key(key), str(path))

    def get_bytes(self, key: str) -> bytes:
        resp = self.client.get_object(self.bucket, self._key(key))
        try:
            return bytes(resp.read())
        finally:
            resp.close()
            resp.release_conn()

    def sizes(self, prefix: str) -> dict[str, int]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        return {
            o.object_name[strip:]: int(o.size)
            for o in self.client.list_objects(self.bucket, self._key(prefix), recursive=True)
        }
