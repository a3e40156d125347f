"""Stage-in from MinIO: verified, resumable downloads, and a clear reason for each data error."""

from __future__ import annotations

import io
import secrets
import socket
from pathlib import Path

import pytest
from trainer_support import MinioServer, run_cli

from accordion_trainer.config import S3Location
from accordion_trainer.staging import client_for, stage_in

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_bucket(trainer_minio: MinioServer, mnist_dir: Path) -> str:
    client = trainer_minio.client()
    bucket = f"data-{secrets.token_hex(4)}"
    client.make_bucket(bucket)
    client.fput_object(bucket, "mnist/mnist.npz", str(mnist_dir / "mnist.npz"))
    for i in range(3):  # a few more objects so the parallel path has work to share
        client.put_object(bucket, f"mnist/extra/part-{i}.bin", io.BytesIO(b"z" * 4096), 4096)
    for name in ("a.npz", "b.npz"):
        client.put_object(bucket, f"empty/{name}", io.BytesIO(b""), 0)
    client.put_object(bucket, "garbage/data.npz", io.BytesIO(b"not an npz"), 10)
    return bucket


def test_stage_in_verifies_skips_and_resumes(
    trainer_minio: MinioServer, data_bucket: str, mnist_dir: Path, tmp_path: Path
) -> None:
    env = {
        "AWS_ACCESS_KEY_ID": trainer_minio.access_key,
        "AWS_SECRET_ACCESS_KEY": trainer_minio.secret_key,
    }
    loc = S3Location(trainer_minio.endpoint, data_bucket, "mnist", False)
    client = client_for(loc, env, store="DATA")
    logs: list[str] = []
    first = stage_in(client, data_bucket, "mnist/", tmp_path, workers=4, log=logs.append)
    assert (first.total_files, first.skipped_files) == (4, 0)
    assert (tmp_path / "mnist.npz").read_bytes() == (mnist_dir / "mnist.npz").read_bytes()
    assert (tmp_path / "extra" / "part-2.bin").stat().st_size == 4096
    assert "4/4 files" in logs[-1]

    again = stage_in(client, data_bucket, "mnist/", tmp_path, log=logs.append)
    assert again.skipped_files == 4  # already present and verified: nothing downloaded

    # A file cut short (a pod restarted mid-download) is fetched again, the rest is kept.
    part = tmp_path / "mnist.npz"
    part.write_bytes(part.read_bytes()[:1000])
    third = stage_in(client, data_bucket, "mnist/", tmp_path, log=logs.append)
    assert third.skipped_files == 3
    assert part.read_bytes() == (mnist_dir / "mnist.npz").read_bytes()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("case", "code", "reason", "message"),
    [
        ("ok", 0, "", ""),
        ("unreachable", 10, "DataUnreachable", "endpoint unreachable"),
        ("bad-credentials", 11, "DataAccessDenied", "access denied"),
        ("missing-bucket", 12, "DataNotFound", "does not exist"),
        ("missing-prefix", 12, "DataNotFound", "no objects under this prefix"),
        ("empty-dataset", 12, "DataNotFound", "empty dataset"),
        ("unreadable", 13, "DataUnreadable", "not a readable .npz"),
    ],
)
def test_stage_command_exit_codes_and_messages(
    trainer_minio: MinioServer,
    data_bucket: str,
    tmp_path: Path,
    case: str,
    code: int,
    reason: str,
    message: str,
) -> None:
    env = {
        "ACCORDION_DATA_ENDPOINT": trainer_minio.endpoint,
        "ACCORDION_DATA_BUCKET": data_bucket,
        "ACCORDION_DATA_PREFIX": "mnist",
        "ACCORDION_DATA_DIR": str(tmp_path / "data"),
        "AWS_ACCESS_KEY_ID": trainer_minio.access_key,
        "AWS_SECRET_ACCESS_KEY": trainer_minio.secret_key,
        "ACCORDION_TERMINATION_LOG": str(tmp_path / "termination-log"),
    }
    if case == "unreachable":
        env["ACCORDION_DATA_ENDPOINT"] = f"127.0.0.1:{_closed_port()}"
    elif case == "bad-credentials":
        env["AWS_SECRET_ACCESS_KEY"] = "wrong-" + secrets.token_hex(4)
    elif case == "missing-bucket":
        env["ACCORDION_DATA_BUCKET"] = "no-such-bucket"
    elif case == "missing-prefix":
        env["ACCORDION_DATA_PREFIX"] = "no/such/prefix"
    elif case == "empty-dataset":
        env["ACCORDION_DATA_PREFIX"] = "empty"
    elif case == "unreadable":
        env["ACCORDION_DATA_PREFIX"] = "garbage"
    log = tmp_path / "stage.log"
    rc = run_cli(["stage"], log, 60, **env)
    text = log.read_text()
    assert rc == code, text
    if code == 0:
        assert "4000 training / 500 validation samples" in text
        return
    term = (tmp_path / "termination-log").read_text()
    assert term.startswith(f"{reason}: ")
    assert message in term
    assert len(term.splitlines()) == 1
