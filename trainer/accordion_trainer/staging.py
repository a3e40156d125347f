"""Stage-in: copy a data bucket/prefix from MinIO/S3 into a local directory before training.

Parallel downloads; each object is verified by size and, for single-part uploads, by its ETag
(the MD5 of the content); files already present and verified are skipped, and a download cut
short resumes from its `.part.minio` file (minio-py's `fget_object`), so a restarted worker only
fetches what is missing. Errors map to the contract's reasons (errors.Reason).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import metrics
from .config import S3Location
from .errors import Reason, TrainerError

DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "AllAccessDisabled",
    }
)
NOT_FOUND_CODES = frozenset({"NoSuchBucket", "NoSuchKey"})


#: which store a client opens: spec.data's bucket or spec.results' (docs/contract.md)
Store = Literal["DATA", "RESULTS"]


def credentials(env: Mapping[str, str], store: Store) -> tuple[str | None, str | None]:
    """The store's own key pair (`ACCORDION_<STORE>_ACCESS_KEY_ID`/`..._SECRET_ACCESS_KEY`, from
    its Secret: data and results may have different ones), else `AWS_*` (a standalone run)."""
    access = env.get(f"ACCORDION_{store}_ACCESS_KEY_ID")
    secret = env.get(f"ACCORDION_{store}_SECRET_ACCESS_KEY")
    if access and secret:
        return access, secret
    return env.get("AWS_ACCESS_KEY_ID") or None, env.get("AWS_SECRET_ACCESS_KEY") or None


def client_for(loc: S3Location, env: Mapping[str, str] | None = None, *, store: Store) -> Any:
    """A MinIO client for one store with its own credentials, short timeouts and few retries,
    so a dead endpoint fails in seconds."""
    import urllib3
    from minio import Minio

    access, secret = credentials(os.environ if env is None else env, store)
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=3.0, read=60.0),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
        maxsize=16,
    )
    return Minio(
        loc.endpoint,
        access_key=access,
        secret_key=secret,
        secure=loc.secure,
        http_client=http,
    )


def classify(exc: BaseException, where: str) -> TrainerError:
    """Map a client exception to the contract's reason (pure: no I/O)."""
    if isinstance(exc, TrainerError):
        return exc
    code = getattr(exc, "code", None)
    if isinstance(code, str):  # minio.error.S3Error
        if code in DENIED_CODES:
            return TrainerError(Reason.DataAccessDenied, f"{where}: access denied ({code})")
        if code in NOT_FOUND_CODES:
            what = "bucket" if code == "NoSuchBucket" else "object"
            return TrainerError(Reason.DataNotFound, f"{where}: no such {what} ({code})")
        return TrainerError(Reason.DataUnreachable, f"{where}: S3 error {code}: {exc}")
    status = getattr(exc, "status_code", None) or getattr(exc, "_status_code", None)
    if status in (401, 403):  # minio.error.ServerError without an S3 error body
        return TrainerError(Reason.DataAccessDenied, f"{where}: access denied (HTTP {status})")
    names = {c.__name__ for c in type(exc).__mro__}
    if names & {
        "MaxRetryError",
        "NewConnectionError",
        "ConnectionError",
        "TimeoutError",
        "ProtocolError",
        "ConnectTimeoutError",
        "OSError",
        "ServerError",
        "InvalidResponseError",
    }:
        return TrainerError(Reason.DataUnreachable, f"{where}: endpoint unreachable: {exc}")
    return TrainerError(Reason.TrainingError, f"{where}: {exc!r}")


@dataclass(frozen=True)
class Item:
    key: str
    size: int
    etag: str


def plan(items: list[Item], prefix: str, dest: Path) -> list[tuple[Item, Path]]:
    """Where each object lands: its key relative to the prefix, refusing `..` escapes."""
    root = dest.resolve()
    strip = prefix.strip("/")
    out: list[tuple[Item, Path]] = []
    for it in items:
        rel = it.key[len(strip) :].lstrip("/") if strip and it.key.startswith(strip) else it.key
        if not rel or rel.endswith("/"):
            continue
        path = (root / rel).resolve()
        if not path.is_relative_to(root):
            raise TrainerError(Reason.DataUnreadable, f"object key {it.key!r} escapes the target")
        out.append((it, path))
    return out


def md5_matches(path: Path, etag: str) -> bool | None:
    """True/False for a single-part ETag (an MD5), None when the ETag is not an MD5."""
    etag = etag.strip('"')
    if len(etag) != 32 or "-" in etag:
        return None
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest() == etag


def verified(path: Path, item: Item) -> bool:
    return (
        path.is_file()
        and path.stat().st_size == item.size
        and md5_matches(path, item.etag) in (True, None)
    )


@dataclass
class Progress:
    total_files: int
    total_bytes: int
    done_files: int = 0
    done_bytes: int = 0
    skipped_files: int = 0

    def line(self, elapsed: float) -> str:
        rate = self.done_bytes / max(elapsed, 1e-9) / 1e6
        return (
            f"[stage] {self.done_files}/{self.total_files} files, "
            f"{self.done_bytes / 1e6:.1f}/{self.total_bytes / 1e6:.1f} MB, {rate:.1f} MB/s"
            f" ({self.skipped_files} already present)"
        )


def stage_in(
    client: Any,
    bucket: str,
    prefix: str,
    dest: Path,
    workers: int = 8,
    log: Callable[[str], None] = print,
    log_interval_s: float = 2.0,
) -> Progress:
    """Download `s3://bucket/prefix` into `dest`; returns the final progress."""
    where = f"s3://{bucket}/{prefix.strip('/')}"
    try:
        if not client.bucket_exists(bucket):
            raise TrainerError(Reason.DataNotFound, f"{where}: bucket {bucket!r} does not exist")
        listing = [
            Item(o.object_name, int(o.size or 0), str(o.etag or ""))
            for o in client.list_objects(bucket, prefix=prefix.strip("/") or None, recursive=True)
            if not o.is_dir
        ]
    except Exception as e:  # every client failure becomes a contract reason
        raise classify(e, where) from e
    if not listing:
        raise TrainerError(Reason.DataNotFound, f"{where}: no objects under this prefix")
    targets = plan(listing, prefix, dest)
    progress = Progress(len(targets), sum(it.size for it, _ in targets))
    if progress.total_bytes == 0:
        raise TrainerError(Reason.DataNotFound, f"{where}: empty dataset (all objects are 0 bytes)")

    lock = threading.Lock()
    t0 = time.monotonic()
    last = [t0]

    def one(item: Item, path: Path) -> None:
        skipped = verified(path, item)
        if not skipped:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                client.fget_object(bucket, item.key, str(path))
            except Exception as e:
                raise classify(e, f"s3://{bucket}/{item.key}") from e
            if not verified(path, item):
                path.unlink(missing_ok=True)
                raise TrainerError(
                    Reason.DataUnreadable, f"s3://{bucket}/{item.key}: size/ETag mismatch"
                )
            metrics.STAGED_BYTES.inc(item.size)
        with lock:
            progress.done_files += 1
            progress.done_bytes += item.size
            progress.skipped_files += int(skipped)
            now = time.monotonic()
            if now - last[0] >= log_interval_s:
                last[0] = now
                log(progress.line(now - t0))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for fut in [pool.submit(one, it, path) for it, path in targets]:
            fut.result()
    elapsed = time.monotonic() - t0
    metrics.STAGING_SECONDS.set(elapsed)
    log(progress.line(elapsed) + f" in {elapsed:.2f}s -> {dest}")
    return progress
