"""A restarted run resumes from the newest complete checkpoint in MinIO, ignoring broken ones."""

from __future__ import annotations

import hashlib
import io
import json
import secrets
from pathlib import Path

import pytest
from trainer_support import MinioServer, events, run_cli

pytestmark = pytest.mark.slow


def _put(client: object, bucket: str, key: str, data: bytes) -> None:
    client.put_object(bucket, key, io.BytesIO(data), len(data))  # type: ignore[attr-defined]


def test_restart_resumes_from_newest_complete_checkpoint(
    trainer_minio: MinioServer, mnist_dir: Path, tmp_path: Path
) -> None:
    client = trainer_minio.client()
    bucket = f"results-{secrets.token_hex(4)}"
    client.make_bucket(bucket)
    creds = {
        "AWS_ACCESS_KEY_ID": trainer_minio.access_key,
        "AWS_SECRET_ACCESS_KEY": trainer_minio.secret_key,
    }
    base = [
        "run",
        "-np",
        "1",
        "--data",
        str(mnist_dir),
        "--results",
        f"s3://{bucket}/exp",
        "--s3-endpoint",
        trainer_minio.endpoint,
        "--run-name",
        "r",
        "--batch-size",
        "64",
    ]

    rc = run_cli(
        [*base, "--epochs", "2", "--work", str(tmp_path / "w1")], tmp_path / "1.log", 300, **creds
    )
    assert rc == 0, (tmp_path / "1.log").read_text()[-3000:]
    root = "exp/r/checkpoints"
    keys = {o.object_name for o in client.list_objects(bucket, root + "/", recursive=True)}
    assert f"{root}/ckpt-e000002-s000000000.manifest.json" in keys
    first = json.loads(client.get_object(bucket, "exp/r/history.json").read())

    # A checkpoint whose upload stopped before its weights arrived (manifest present: the
    # worst case; the writer publishes the manifest last, so this only happens by damage) ...
    half = "ckpt-e000005-s000000000"
    _put(client, bucket, f"{root}/{half}/state.json", b"{}")
    manifest = {
        "id": half,
        "epoch": 5,
        "samples": 0,
        "objects": {
            f"checkpoints/{half}/weights.npz": {"size": 10, "sha256": "0" * 64},
            f"checkpoints/{half}/state.json": {
                "size": 2,
                "sha256": hashlib.sha256(b"{}").hexdigest(),
            },
        },
    }
    _put(client, bucket, f"{root}/{half}.manifest.json", json.dumps(manifest).encode())
    # ... one with bytes that do not match their checksums, and one unreadable manifest.
    bad = "ckpt-e000006-s000000000"
    _put(client, bucket, f"{root}/{bad}/weights.npz", b"x" * 10)
    _put(client, bucket, f"{root}/{bad}/state.json", b"{}")
    manifest = {
        "id": bad,
        "epoch": 6,
        "samples": 0,
        "objects": {
            f"checkpoints/{bad}/weights.npz": {"size": 10, "sha256": "1" * 64},
            f"checkpoints/{bad}/state.json": {"size": 2, "sha256": "2" * 64},
        },
    }
    _put(client, bucket, f"{root}/{bad}.manifest.json", json.dumps(manifest).encode())
    _put(client, bucket, f"{root}/ckpt-e000007-s000000000.manifest.json", b"{trunc")

    log = tmp_path / "2.log"
    rc = run_cli([*base, "--epochs", "3", "--work", str(tmp_path / "w2")], log, 300, **creds)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    resume = [e for e in events(log) if e["event"] == "resume"]
    assert resume, text[-3000:]
    assert resume[0]["checkpoint"] == "ckpt-e000002-s000000000"
    assert resume[0]["epoch"] == 2
    assert "ignoring unreadable manifest checkpoints/ckpt-e000007" in text
    assert f"ignoring {bad}: checksum mismatch" in text
    assert f"ignoring incomplete {half}" in text
    starts = [e for e in events(log) if e["event"] == "start"]
    assert starts[0]["epoch"] == 2  # trained only the third epoch
    history = json.loads(client.get_object(bucket, "exp/r/history.json").read())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[:2] == first
    logs = client.get_object(bucket, "exp/r/logs/trainer.log").read().decode()
    assert "resumed from checkpoint ckpt-e000002" in logs
