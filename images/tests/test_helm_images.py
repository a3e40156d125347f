"""Issue 18's acceptance: the Helm chart installed with the images `make images` built, on a
private local cluster whose process nodes run them (`make test-images`, slow).

- the operator's two replicas (the chart's default) run from the operator image: each process's
  root is the image's unpacked root filesystem, as UID 10001, under a read-only root; each
  listens on its own pod IP (operator.bindAddress: pod-ip), and one of them leads;
- a TrainingRun (built-in `mnist-cnn`, elastic 1..2 workers) trains from the CPU trainer image
  (launcher and workers: sshd, Horovod, TensorFlow from the image) with a grow (a cordoned GPU
  node comes back) and a shrink (`kubectl scale`), to the usual accuracy;
- `helm test` passes (its pod runs from the operator image too).

The cluster, the data and the install are tests/e2e/helm_e2e.py's steps, which
tests/e2e/test_helm_install.py runs with the checkout's processes in `make test`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from accordion_dev.nodeagent.images import ImageStore
from accordion_dev.polling import poll
from accordion_dev.registry import cache_dir
from tests.e2e.helm_e2e import (
    API,
    RELEASE,
    SYSTEM,
    TEAM,
    Env,
    Laps,
    diagnose,
    finished,
    helm_cluster,
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
    # up to 2 workers, then `helm test`'s one; the operators on any
    with helm_cluster(tmp_path, first_port=28400, process_nodes=3, registry=True) as e:
        yield e


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
    laps = Laps()

    # Pull and unpack both images once (the node agents' store, shared by every node), as a
    # pre-puller would: the first pull of the trainer image unpacks ~2 GB.
    store = ImageStore(cache_dir() / "images" / "store", [c.registry])
    for name in ("operator", "trainer"):
        img = images[name]
        store.pull(f"{c.registry}/{img['repository']}@{img['digest']}")
    laps.lap("pull + unpack (cached after the first time)")

    env.prepare_data()
    laps.lap("data")
    op_img, tr_img = images["operator"], images["trainer"]
    installed_at = time.monotonic()
    env.install(
        {
            "operator": {
                "image": {"repository": f"{c.registry}/{op_img['repository']}",
                          "digest": op_img["digest"]},
            },
            "trainer": {
                "image": {"repository": f"{c.registry}/{tr_img['repository']}",
                          "tag": tr_img["tag"]},
            },
        },
        "5m",
    )  # fmt: skip
    laps.lap("helm install --wait")

    # ---- the operator runs from its image: root, user, read-only root (every replica) --------
    ops = env.operator_pods()
    assert len(ops) == 2, [p["metadata"]["name"] for p in ops]  # the chart's default
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

    # both serve /metrics on the same port, each on its own pod IP; one leads (at once: the
    # chart's Lease is empty, and the first replica to look takes it)
    def leading() -> list[float]:
        return sorted(
            float(line.split()[-1])
            for op in ops
            for line in httpx.get(
                f"http://{op['status']['podIP']}:{env.operator_metrics_port()}/metrics", timeout=10
            ).text.splitlines()
            if line.startswith("accordion_operator_leader ")
        )

    poll(lambda: leading() == [0.0, 1.0], 30, "one leader and one standby", every=1)

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
    # the first step began at most the first epoch's own seconds before its report
    since_install = time.monotonic() - installed_at
    laps.timings["helm install -> first epoch reported"] = round(since_install, 1)
    first_epoch_s = float(training(run)["history"][0]["metrics"]["seconds"])
    laps.timings["helm install -> first training step"] = round(since_install - first_epoch_s, 1)
    laps.lap("first epoch (1 worker)")
    c.kubectl("uncordon", spare)
    grown = at(lambda r: training(r).get("worldSize", 0) == 2, "grow to 2 workers")
    print(f"grew at epoch {training(grown).get('epoch')}")
    laps.lap("grow 1 -> 2")
    c.kubectl("scale", "-n", TEAM, "trainingrun", "mnist", "--replicas", "1")
    shrunk = at(lambda r: training(r).get("worldSize", 9) == 1, "shrink to 1 worker")
    print(f"shrank at epoch {training(shrunk).get('epoch')}")
    laps.lap("shrink 2 -> 1")
    run = poll(finished(env, "trainingruns", "mnist"), 900, "the run to finish", every=2)
    st = run["status"]
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    metrics_ = st["training"].get("metrics") or {}
    print(f"final metrics: {metrics_}")
    assert metrics_.get("val_accuracy", 0) >= 0.9, metrics_
    assert model_size(env, f"{st['resultsURI'].split('/', 3)[3]}/model.keras") > 100_000
    laps.lap("training to the end")

    # the launcher ran from the trainer image as 10001 (its pod is kept until the run goes)
    launcher = env.get(f"/api/v1/namespaces/{TEAM}/pods/mnist-launcher")
    assert launcher["spec"]["containers"][0]["image"].startswith(c.registry)
    term = launcher["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0, term

    # ---- helm test: its pod from the operator image -------------------------------------------
    r = env.run("helm", "test", RELEASE, "-n", SYSTEM, "--logs", "--timeout", "10m", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: the run succeeded" in r.stdout, r.stdout
    laps.lap("helm test")
    print(f"timings (s): {laps.timings}")
    (REPO / ".accordion" / "test-images-timings.json").write_text(
        json.dumps(laps.timings, indent=1)
    )
