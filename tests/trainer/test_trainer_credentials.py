"""Split credentials (issue 16): the data store is opened with the data Secret's keys
(`ACCORDION_DATA_*`), the results store with the results Secret's (`ACCORDION_RESULTS_*`),
against a real MinIO with two users, each allowed one bucket only; `AWS_*` is the fallback of a
standalone run."""

from __future__ import annotations

import io
import json
import secrets
from pathlib import Path

import pytest
from minio.credentials import StaticProvider
from minio.error import S3Error
from minio.minioadmin import MinioAdmin
from trainer_support import MinioServer, run_cli

from accordion_trainer.config import S3Location
from accordion_trainer.staging import client_for

pytestmark = pytest.mark.slow


def _user(admin: MinioAdmin, bucket: str, actions: list[str]) -> tuple[str, str]:
    """A MinIO user allowed `actions` on `bucket` and its objects, nothing else."""
    name = f"u{secrets.token_hex(4)}"
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": actions,
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }
    admin.policy_add(name, policy=policy)
    key = secrets.token_hex(12)
    admin.user_add(name, key)
    admin.attach_policy([name], user=name)
    return name, key


@pytest.fixture(scope="module")
def split(trainer_minio: MinioServer, mnist_dir: Path) -> dict[str, str]:
    """A data bucket readable by one user, a results bucket writable by another: the env of a
    worker whose data and results Secrets differ (and wrong AWS_* keys, which must not be used)."""
    root = trainer_minio.client()
    data, results = f"data-{secrets.token_hex(4)}", f"results-{secrets.token_hex(4)}"
    root.make_bucket(data)
    root.make_bucket(results)
    root.fput_object(data, "mnist/mnist.npz", str(mnist_dir / "mnist.npz"))
    admin = MinioAdmin(
        endpoint=trainer_minio.endpoint,
        credentials=StaticProvider(trainer_minio.access_key, trainer_minio.secret_key),
        secure=False,
    )
    reader = _user(admin, data, ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"])
    writer = _user(admin, results, ["s3:*"])
    return {
        "data": data,
        "results": results,
        "ACCORDION_DATA_ACCESS_KEY_ID": reader[0],
        "ACCORDION_DATA_SECRET_ACCESS_KEY": reader[1],
        "ACCORDION_RESULTS_ACCESS_KEY_ID": writer[0],
        "ACCORDION_RESULTS_SECRET_ACCESS_KEY": writer[1],
        "AWS_ACCESS_KEY_ID": "nobody",
        "AWS_SECRET_ACCESS_KEY": "wrong-" + secrets.token_hex(4),
    }


def test_stage_in_uses_the_data_secret_and_results_the_results_secret(
    trainer_minio: MinioServer, split: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in split.items() if k.isupper()}
    # stage-in, as the worker runs it: the data keys (the AWS_* ones are wrong)
    log = tmp_path / "stage.log"
    rc = run_cli(
        ["stage"],
        log,
        60,
        ACCORDION_DATA_ENDPOINT=trainer_minio.endpoint,
        ACCORDION_DATA_BUCKET=split["data"],
        ACCORDION_DATA_PREFIX="mnist",
        ACCORDION_DATA_DIR=str(tmp_path / "data"),
        ACCORDION_TERMINATION_LOG=str(tmp_path / "termination-log"),
        **env,
    )
    assert rc == 0, log.read_text()
    # results and checkpoints: the results keys
    results = client_for(
        S3Location(trainer_minio.endpoint, split["results"], "", False), env, store="RESULTS"
    )
    results.put_object(split["results"], "run/history.json", io.BytesIO(b"{}"), 2)
    assert json.loads(results.get_object(split["results"], "run/history.json").read()) == {}
    # each pair opens its own bucket only: the client picked the right one above
    data_keys_on_results = client_for(
        S3Location(trainer_minio.endpoint, split["results"], "", False), env, store="DATA"
    )
    with pytest.raises(S3Error) as denied:
        data_keys_on_results.put_object(split["results"], "x", io.BytesIO(b"x"), 1)
    assert denied.value.code == "AccessDenied"
    results_keys_on_data = client_for(
        S3Location(trainer_minio.endpoint, split["data"], "", False), env, store="RESULTS"
    )
    with pytest.raises(S3Error) as denied:
        next(iter(results_keys_on_data.list_objects(split["data"], recursive=True)))
    assert denied.value.code == "AccessDenied"
