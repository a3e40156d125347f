"""Process nodes running images from the local registry (`make test-images`; needs `make images`
first: the base image, `accordion/accordion-base`, is the image run here).

Not collected by `make test` (testpaths is `tests/`): these need buildah's images, the registry
binary and root (overlayfs, chroot).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from accordion_dev.cluster import Cluster, ClusterConfig, free_port_block
from accordion_dev.polling import poll

REPO = Path(__file__).resolve().parents[2]
Obj = dict[str, Any]


def built(name: str) -> str:
    """`<repository>@<digest>` of an image `make images` pushed (from .accordion/images.json)."""
    path = REPO / ".accordion" / "images.json"
    if not path.exists():
        pytest.fail("no .accordion/images.json: run `make images` first")
    image = json.loads(path.read_text())["images"][name]
    return f"{image['repository']}@{image['digest']}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cfg = ClusterConfig(
        state_dir=tmp_path_factory.mktemp("cluster"),
        base_port=free_port_block(first=27400),
        kwok_nodes=0,
        process_nodes=1,
        monitoring=False,
        registry=True,
    )
    c = Cluster(cfg)
    c.up(log=print)
    try:
        yield c
    finally:
        c.down()


def pod(name: str, image: str, command: list[str], security: Obj, pod_security: Obj) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "tolerations": [{"operator": "Exists"}],
            "securityContext": pod_security,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "command": command,
                    "workingDir": "/work/dir",
                    "securityContext": security,
                    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                }
            ],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        },
    }


def create(cluster: Cluster, body: Obj) -> str:
    ns = f"img-{secrets.token_hex(3)}"
    with cluster.http() as http:
        r = http.post("/api/v1/namespaces", json={"metadata": {"name": ns}})
        assert r.status_code == 201, r.text
        poll(
            lambda: http.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default").status_code == 200,
            30,
            "default service account",
        )
        r = http.post(f"/api/v1/namespaces/{ns}/pods", json=body)
        assert r.status_code == 201, r.text
    return ns


def get(cluster: Cluster, ns: str, name: str) -> Obj:
    with cluster.http() as http:
        out: Obj = http.get(f"/api/v1/namespaces/{ns}/pods/{name}").json()
        return out


def test_a_pod_runs_in_its_image_as_its_user_under_a_read_only_root(cluster: Cluster) -> None:
    assert cluster.registry
    image = f"{cluster.registry}/{built('base')}"
    script = (
        "echo uid=$(id -u) gid=$(id -g) groups=$(id -G);"
        " . /etc/os-release; echo os=$ID-$VERSION_ID;"
        " touch /probe 2>/dev/null && echo root=rw || echo root=ro;"
        " echo hi > /scratch/f && echo scratch=rw; echo cwd=$(pwd);"
        " test -e /work/main && echo checkout=visible || echo checkout=hidden;"
        " echo path=$PATH; echo host=$(hostname)"
    )
    body = pod(
        "base",
        image,
        ["sh", "-c", script],
        {"runAsUser": 4242, "runAsGroup": 4343, "readOnlyRootFilesystem": True},
        {"fsGroup": 5000},
    )
    t = time.monotonic()
    ns = create(cluster, body)
    done = poll(
        lambda: (
            (p := get(cluster, ns, "base"))["status"].get("phase") in ("Succeeded", "Failed") and p
        ),
        300,
        "the pod to finish (a cold node pulls and unpacks the image first)",
    )
    took = time.monotonic() - t
    logs = cluster.kubectl("logs", "-n", ns, "base")
    print(f"pod from {image} finished in {took:.1f} s:\n{logs}")
    assert done["status"]["phase"] == "Succeeded", json.dumps(done["status"], indent=1)
    lines = dict(line.split("=", 1) for line in logs.split() if "=" in line)
    assert lines["uid"] == "4242"
    assert lines["gid"] == "4343"
    assert "5000" in logs.split("groups=")[1].split()[:3]
    assert lines["os"] == "debian-12"
    assert lines["root"] == "ro"
    assert lines["scratch"] == "rw"  # emptyDir writable by the non-root user
    assert lines["cwd"] == "/work/dir"
    assert lines["checkout"] == "hidden"  # its own root, not this machine's
    assert lines["path"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert lines["host"] == "base"


def test_a_missing_image_is_err_image_pull_then_back_off(cluster: Cluster) -> None:
    assert cluster.registry
    image = f"{cluster.registry}/accordion/no-such-image:1"
    ns = create(cluster, pod("missing", image, ["true"], {}, {}))
    seen: list[str] = []

    def reason() -> bool:
        statuses = get(cluster, ns, "missing")["status"].get("containerStatuses") or []
        waiting = (statuses[0]["state"].get("waiting") or {}) if statuses else {}
        if waiting.get("reason") and waiting["reason"] not in seen:
            seen.append(waiting["reason"])
            print(waiting)
        return "ImagePullBackOff" in seen

    poll(reason, 60, "ErrImagePull then ImagePullBackOff")
    assert "ErrImagePull" in seen
    assert seen.index("ErrImagePull") < seen.index("ImagePullBackOff")
    assert get(cluster, ns, "missing")["status"]["phase"] == "Pending"
