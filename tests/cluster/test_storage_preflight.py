"""The storage preflight (issue 16) with the operator running against the session cluster's real
MinIO: a missing results bucket or an empty data prefix keeps a run from being admitted (no pods,
one Warning Event) until it is fixed, which then admits the run by itself; data and results
Secrets that differ are each used for their own bucket, by the preflight and in the pods. After
each case a run of another namespace on a real bucket is admitted within its normal time."""

from __future__ import annotations

import io
import secrets
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from minio import Minio
from minio.credentials import StaticProvider
from minio.minioadmin import MinioAdmin
from operator_support import Api, Operator, running_operator

from accordion_dev.cluster import Cluster
from accordion_dev.polling import poll
from accordion_dev.simulated_runs import run_body

pytestmark = pytest.mark.cluster

KWOK = {"type": "kwok"}
#: seconds within which a run on a kwok node is normally admitted
ADMIT_WITHIN = 10.0


@pytest.fixture
def preflight_operator(
    cluster: Cluster, trainingrun_crd: str, tmp_path: Path
) -> Iterator[Operator]:
    # negative answers asked again after 2 s (then 4, 8, ...) instead of 10 s: the same code
    env = {"ACCORDION_STORAGE_PREFLIGHT": "true", "ACCORDION_STORAGE_RETRY_SECONDS": "2"}
    with running_operator(cluster, tmp_path, env) as op:
        yield op


def store(cluster: Cluster, bucket: str, creds: str = "s3", **extra: Any) -> dict[str, Any]:
    """An object-store spec on the cluster's MinIO, its keys in the Secret named `creds`."""
    return {
        "endpoint": cluster.minio.endpoint,
        "bucket": bucket,
        "credentialsSecret": {"name": creds},
        **extra,
    }


def root_secret(api: Api, cluster: Cluster, name: str = "s3") -> None:
    api.secret(name, accessKey=cluster.minio.access_key, secretKey=cluster.minio.secret_key)


def admitted(api: Api, run: str) -> dict[str, Any]:
    return api.condition(run, "Admitted")


def refused(api: Api, run: str, reason: str) -> dict[str, Any]:
    poll(
        lambda: admitted(api, run).get("reason") == reason,
        20,
        what=f"{run}: Admitted=False {reason}",
    )
    cond = admitted(api, run)
    assert cond["status"] == "False"
    assert api.pods(f"accordion.dev/run={run}") == []
    return cond


def warnings(api: Api, run: str, reason: str) -> int:
    return sum(e.get("count") or 1 for e in api.events(run) if e["reason"] == reason)


def bystander_admitted(cluster: Cluster, bucket: str) -> None:
    """A run of another namespace, with the check on and a real bucket, is admitted in time."""
    ns = f"t-bystander-{secrets.token_hex(3)}"
    with cluster.http() as http:
        assert http.post("/api/v1/namespaces", json={"metadata": {"name": ns}}).status_code == 201
        try:
            with closing(Api(cluster, ns)) as other:
                poll(
                    lambda: (
                        http.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default").status_code
                        == 200
                    ),
                    30,
                    what="default service account",
                    every=0.1,
                )
                root_secret(other, cluster)
                t0 = time.monotonic()
                body = run_body("bystander", nodeSelector=KWOK, results=store(cluster, bucket))
                assert other.create(body).status_code == 201
                poll(
                    lambda: admitted(other, "bystander").get("status") == "True",
                    ADMIT_WITHIN,
                    what="the bystander admitted",
                    every=0.2,
                )
                assert time.monotonic() - t0 < ADMIT_WITHIN
        finally:
            http.delete(f"/api/v1/namespaces/{ns}")


def test_a_missing_results_bucket_holds_the_run_until_it_is_created(
    api: Api, preflight_operator: Operator, cluster: Cluster, minio_client: Minio, bucket: str
) -> None:
    root_secret(api, cluster)
    missing = f"missing-{secrets.token_hex(4)}"
    body = run_body("nobucket", nodeSelector=KWOK, results=store(cluster, missing))
    assert api.create(body).status_code == 201
    try:
        cond = refused(api, "nobucket", "BucketNotFound")
        for word in ("spec.results.bucket", repr(missing), cluster.minio.endpoint, "create it"):
            assert word in cond["message"]
        bystander_admitted(cluster, bucket)
        minio_client.make_bucket(missing)
        # nothing else is done: the re-check (2 s, then 4 s, ... here) admits it
        poll(
            lambda: admitted(api, "nobucket").get("status") == "True",
            40,
            what="admitted once the bucket exists",
        )
        poll(lambda: len(api.workers("nobucket")) == 1, 20, what="its worker")
        assert warnings(api, "nobucket", "BucketNotFound") == 1
    finally:
        if minio_client.bucket_exists(missing):
            minio_client.remove_bucket(missing)


def test_an_empty_data_prefix_is_data_not_found_until_an_object_is_there(
    api: Api, preflight_operator: Operator, cluster: Cluster, minio_client: Minio, bucket: str
) -> None:
    root_secret(api, cluster)
    data = store(cluster, bucket, prefix="mnist/")
    body = run_body("nodata", nodeSelector=KWOK, data=data, results=store(cluster, bucket))
    assert api.create(body).status_code == 201
    cond = refused(api, "nodata", "DataNotFound")
    assert f"s3://{bucket}/mnist" in cond["message"]
    assert "spec.data.prefix" in cond["message"]
    bystander_admitted(cluster, bucket)
    minio_client.put_object(bucket, "mnist/mnist.npz", io.BytesIO(b"x"), 1)
    poll(
        lambda: admitted(api, "nodata").get("status") == "True",
        40,
        what="admitted once the data is there",
    )


def _user(admin: MinioAdmin, bucket: str) -> tuple[str, str]:
    """A MinIO user allowed everything on `bucket`, nothing elsewhere."""
    name = f"u{secrets.token_hex(4)}"
    resources = [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    statement = {"Effect": "Allow", "Action": ["s3:*"], "Resource": resources}
    admin.policy_add(name, policy={"Version": "2012-10-17", "Statement": [statement]})
    key = secrets.token_hex(12)
    admin.user_add(name, key)
    admin.attach_policy([name], user=name)
    return name, key


def test_data_and_results_secrets_are_each_used_for_their_own_bucket(
    api: Api, preflight_operator: Operator, cluster: Cluster, minio_client: Minio, bucket: str
) -> None:
    results_bucket = f"results-{secrets.token_hex(4)}"
    minio_client.make_bucket(results_bucket)
    try:
        minio_client.put_object(bucket, "mnist/mnist.npz", io.BytesIO(b"x"), 1)
        admin = MinioAdmin(
            endpoint=cluster.minio.endpoint,
            credentials=StaticProvider(cluster.minio.access_key, cluster.minio.secret_key),
            secure=False,
        )
        reader, writer = _user(admin, bucket), _user(admin, results_bucket)
        api.secret("reader", accessKey=reader[0], secretKey=reader[1])
        api.secret("writer", accessKey=writer[0], secretKey=writer[1])
        data = store(cluster, bucket, "reader", prefix="mnist")
        results = store(cluster, results_bucket, "writer")
        body = run_body("split", nodeSelector=KWOK, data=data, results=results)
        assert api.create(body).status_code == 201
        # the preflight lists each bucket with its own Secret: both pass
        poll(lambda: admitted(api, "split").get("status") == "True", 20, what="split admitted")
        poll(lambda: len(api.workers("split")) == 1, 20, what="its worker")
        env = {e["name"]: e for e in api.workers("split")[0]["spec"]["containers"][0]["env"]}
        refs = {
            name: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for name, e in env.items()
            if "secretKeyRef" in (e.get("valueFrom") or {})
        }
        assert refs == {
            "ACCORDION_DATA_ACCESS_KEY_ID": ("reader", "accessKey"),
            "ACCORDION_DATA_SECRET_ACCESS_KEY": ("reader", "secretKey"),
            "ACCORDION_RESULTS_ACCESS_KEY_ID": ("writer", "accessKey"),
            "ACCORDION_RESULTS_SECRET_ACCESS_KEY": ("writer", "secretKey"),
        }
        # a launcher of its own holds no store key; one that hosts worker 0 is that worker
        # (the pod above), and its horovodrun drops the keys (accordion_trainer.launcher_env)
        (launcher,) = api.pods("accordion.dev/run=split,accordion.dev/role=launcher")
        launcher_refs = [
            e
            for e in launcher["spec"]["containers"][0]["env"]
            if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
        ]
        hosting = "accordion.dev/worker-index" in launcher["metadata"]["labels"]
        assert bool(launcher_refs) == hosting, launcher["metadata"]
        # the results keys cannot read the data bucket: named as the data Secret's problem
        crossed = store(cluster, bucket, "writer", prefix="mnist")
        body = run_body("crossed", nodeSelector=KWOK, data=crossed, results=results)
        assert api.create(body).status_code == 201
        cond = refused(api, "crossed", "DataAccessDenied")
        assert f"Secret {api.ns}/writer" in cond["message"]
        assert "spec.data.credentialsSecret" in cond["message"]
        assert reader[1] not in cond["message"]
        assert writer[1] not in cond["message"]  # Secrets are named, their values never shown
        bystander_admitted(cluster, bucket)
    finally:
        for obj in minio_client.list_objects(results_bucket, recursive=True):
            minio_client.remove_object(results_bucket, obj.object_name)
        minio_client.remove_bucket(results_bucket)
