"""Issue 18's acceptance: the Helm chart installed with the images `make images` built, on a
private local cluster whose process nodes run them (`make test-images`, slow).

- the operator pod runs from the operator image: its process's root is the image's unpacked
  root filesystem, as UID 10001, under a read-only root;
- a TrainingRun (built-in `mnist-cnn`, elastic 1..2 workers) trains from the CPU trainer image
  (launcher and workers: sshd, Horovod, TensorFlow from the image) with a grow (a cordoned GPU
  node comes back) and a shrink (`kubectl scale`), to the usual accuracy;
- `helm test` passes (its pod runs from the operator image too).

The chart's install and the helpers are tests/e2e/test_helm_install.py's (which runs the same
chart from the checkout in `make test`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from accordion_dev.cluster import Cluster, ClusterConfig, free_port_block
from accordion_dev.demo import create_credentials_secret, upload_mnist
from accordion_dev.nodeagent.images import ImageStore
from accordion_dev.polling import poll
from accordion_dev.registry import cache_dir
from tests.e2e.test_helm_install import (
    API,
    BUCKET,
    CHART,
    RELEASE,
    SECRET,
    SYSTEM,
    TEAM,
    Env,
    diagnose,
    finished,
    model_size,
    run_spec,
)

REPO = Path(__file__).resolve().parents[2]
Obj = dict[str, Any]


def built() -> dict[str, Any]:
    path = REPO / ".accordion" / "images.json"
    if not path.exists():
        pytest.fail("no .accordion/images.json: run `make images` first")
    images: dict[str, Any] = json.loads(path.read_text())["images"]
    return images


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    base = free_port_block(first=28400, size=11)
    cfg = ClusterConfig(
        state_dir=tmp_path / "cluster",
        base_port=base,
        kwok_nodes=0,
        process_nodes=3,  # up to 2 workers, then `helm test`'s one; the operators on any
        process_node_gpus=1,
        registry=True,
    )
    cluster = Cluster(cfg)
    cluster.up(log=print)
    try:
        yield Env(cluster, tmp_path / "helm")
    finally:
        cluster.down()


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (ln.partition(":") for ln in lines)}


def root_mount_options(pid: int) -> list[str]:
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[5].split(",")
    raise AssertionError(f"no root mount for pid {pid}")


def training(run: Obj) -> Obj:
    out: Obj = run.get("status", {}).get("training") or {}
    return out


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_chart_runs_the_built_images_and_trains_elastically(env: Env) -> None:
    try:
        install_and_train(env)
    except BaseException:
        print(diagnose(env))
        raise


def install_and_train(env: Env) -> None:
    c = env.c
    assert c.registry
    images = built()
    timings: dict[str, float] = {}
    t = time.monotonic()

    def lap(what: str) -> None:
        nonlocal t
        timings[what] = round(time.monotonic() - t, 1)
        t = time.monotonic()

    # Pull and unpack both images once (the node agents' store, shared by every node), as a
    # pre-puller would: the first pull of the trainer image unpacks ~2 GB.
    store = ImageStore(cache_dir() / "images" / "store", [c.registry])
    for name in ("operator", "trainer"):
        img = images[name]
        store.pull(f"{c.registry}/{img['repository']}@{img['digest']}")
    lap("pull + unpack (cached after the first time)")

    upload_mnist(c, BUCKET, "mnist/")
    for ns in (SYSTEM, TEAM):
        create_credentials_secret(c, ns, SECRET)
    op_img, tr_img = images["operator"], images["trainer"]
    health, metrics = c.ports.base + 9, c.ports.base + 10
    values = {
        "operator": {
            "image": {"repository": f"{c.registry}/{op_img['repository']}",
                      "digest": op_img["digest"]},
            "nodeSelector": {"accordion.dev/process-node": "true"},
            "healthPort": health,
            "metricsPort": metrics,
        },
        "trainer": {
            "image": {"repository": f"{c.registry}/{tr_img['repository']}", "tag": tr_img["tag"]},
            "objectStore": {"endpoint": c.minio.endpoint, "bucket": BUCKET,
                            "credentialsSecret": SECRET},
        },
    }  # fmt: skip
    values_file = c.state_dir / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    lap("data")
    installed_at = time.monotonic()
    out = env.helm(
        "install", RELEASE, str(CHART), "-n", SYSTEM, "-f", str(values_file),
        "--wait", "--timeout", "5m",
    )  # fmt: skip
    assert "STATUS: deployed" in out, out
    lap("helm install --wait")

    # ---- the operator runs from its image: root, user, read-only root (every replica) --------
    selector = "labelSelector=app.kubernetes.io/component=operator"
    ops = env.get(f"/api/v1/namespaces/{SYSTEM}/pods?{selector}")["items"]
    assert ops
    for op in ops:
        (cs,) = op["status"]["containerStatuses"]
        assert op["spec"]["containers"][0]["image"].startswith(c.registry)
        pid = int(cs["containerID"].rsplit("/", 1)[1])
        root = os.readlink(f"/proc/{pid}/root")
        assert root.endswith("/containers/operator/root"), root
        assert proc_status(pid)["Uid"].split()[:2] == ["10001", "10001"]
        assert proc_status(pid)["Gid"].split()[0] == "10001"
        assert "ro" in root_mount_options(pid)
        assert Path(f"/proc/{pid}/root/opt/accordion/app/accordion_operator").is_dir()
        assert not Path(f"/proc/{pid}/root/work").exists()  # not this machine's root

    # ---- a run from the trainer image: grow and shrink while it trains ------------------------
    nodes = c.process_node_names()
    spare = nodes[-1]
    for n in nodes[1:]:  # one GPU left: the run starts with 1 worker and grows later
        c.kubectl("cordon", n)
    spec = run_spec(c.minio.endpoint, 1, "runs/")
    spec["model"] = {"builtin": "mnist-cnn"}
    spec["epochs"] = 20
    spec["workers"] |= {"min": 1, "max": 2}
    env.create("trainingruns", "TrainingRun", {"metadata": {"name": "mnist"}, "spec": spec})
    path = f"{API}/namespaces/{TEAM}/trainingruns/mnist"

    def at(cond: Any, what: str, timeout: float = 600) -> Obj:
        def check() -> Obj | None:
            run = env.get(path)
            if run.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                raise AssertionError(f"run finished before {what}: {json.dumps(run['status'])}")
            return run if cond(run) else None

        run: Obj = poll(check, timeout, what, every=1)
        return run

    run = at(lambda r: training(r).get("epoch", 0) >= 1, "the first epoch")
    assert training(run)["worldSize"] == 1, training(run)
    timings["helm install -> first epoch"] = round(time.monotonic() - installed_at, 1)
    lap("first epoch (1 worker)")
    c.kubectl("uncordon", spare)
    grown = at(lambda r: training(r).get("worldSize", 0) == 2, "grow to 2 workers")
    print(f"grew at epoch {training(grown).get('epoch')}")
    lap("grow 1 -> 2")
    c.kubectl("scale", "-n", TEAM, "trainingrun", "mnist", "--replicas", "1")
    shrunk = at(lambda r: training(r).get("worldSize", 9) == 1, "shrink to 1 worker")
    print(f"shrank at epoch {training(shrunk).get('epoch')}")
    lap("shrink 2 -> 1")
    run = poll(finished(env, "trainingruns", "mnist"), 900, "the run to finish", every=2)
    st = run["status"]
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    metrics_ = st["training"].get("metrics") or {}
    print(f"final metrics: {metrics_}")
    assert metrics_.get("val_accuracy", 0) >= 0.9, metrics_
    assert model_size(env, f"{st['resultsURI'].split('/', 3)[3]}/model.keras") > 100_000
    lap("training to the end")

    # the launcher ran from the trainer image as 10001 (its pod is kept until the run goes)
    launcher = env.get(f"/api/v1/namespaces/{TEAM}/pods/mnist-launcher")
    assert launcher["spec"]["containers"][0]["image"].startswith(c.registry)
    term = launcher["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0, term

    # ---- helm test: its pod from the operator image -------------------------------------------
    r = env.run("helm", "test", RELEASE, "-n", SYSTEM, "--logs", "--timeout", "10m", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: the run succeeded" in r.stdout, r.stdout
    lap("helm test")
    print(f"timings (s): {timings}")
    (REPO / ".accordion" / "test-images-timings.json").write_text(json.dumps(timings, indent=1))
