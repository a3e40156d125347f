"""Process nodes on the local cluster: pods really run as processes under the real control plane.

Most tests use two agents of their own (tainted so no other test's pod lands there, a 2 s
heartbeat and a 1 s crash-loop back-off base so the tests are quick); the first uses the
session's default process nodes.
"""

from __future__ import annotations

import functools
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from accordion_dev.cluster import Cluster
from accordion_dev.nodeagent import start_agent
from accordion_dev.polling import poll
from accordion_dev.procs import Proc

TAINT_KEY = "accordion.dev/nodeagent-test"
Obj = dict[str, Any]
_poll = functools.partial(poll, every=0.1)


class Agents:
    """Two process nodes started by this module, recorded in the cluster's process table (so
    `accordion-dev node stop/start` and `cluster down` know them)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        run = secrets.token_hex(2)
        self.names = [f"na-{run}-{i}" for i in range(2)]
        self.http = cluster.http()
        for i, name in enumerate(self.names):
            # the second node has a core of its own (host CPU 0), as benchmarks pin nodes
            self.start(name, 40 + i, host_cpus="0" if i == 1 else None)
        nodes = self.http.get(
            "/api/v1/nodes", params={"labelSelector": "accordion.dev/process-node=true"}
        )
        assert nodes.status_code == 200
        _poll(lambda: all(self.ready(n) for n in self.names), 30, "test nodes Ready")

    def start(self, name: str, index: int, host_cpus: str | None = None) -> None:
        state = self.cluster.state_dir / "nodes" / name
        log = self.cluster.procs.log_dir / f"nodeagent-test-{name}.log"
        popen = start_agent(
            self.cluster.kubeconfig,
            name,
            2,
            state,
            index,
            taints=[f"{TAINT_KEY}=true:NoSchedule"],
            heartbeat_seconds=2,
            backoff_base=1,
            log_file=log,
            host_cpus=host_cpus,
        )
        self.cluster.procs.add(
            Proc(
                f"nodeagent-test-{name}",
                popen.pid,
                [str(a) for a in cast(list[Any], popen.args)],
                str(log),
            )
        )

    def ready(self, name: str) -> bool:
        r = self.http.get(f"/api/v1/nodes/{name}")
        conds = r.json().get("status", {}).get("conditions", []) if r.status_code == 200 else []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    def proc(self, name: str) -> Proc:
        return next(p for p in self.cluster.procs.load() if p.name == f"nodeagent-test-{name}")

    def close(self) -> None:
        procs = [self.proc(n) for n in self.names]
        for p in procs:
            if p.alive():
                os.kill(p.pid, signal.SIGTERM)
        _poll(lambda: not any(p.alive() for p in procs), 15, "test agents to exit")
        for p in procs:
            self.cluster.procs.remove(p.name)
        for n in self.names:
            self.http.delete(f"/api/v1/nodes/{n}")
            self.http.delete(f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{n}")
        self.http.close()


@pytest.fixture(scope="module")
def agents(cluster: Cluster) -> Iterator[Agents]:
    a = Agents(cluster)
    try:
        yield a
    finally:
        a.close()


def pod(name: str, command: list[str], node: str | None = None, **spec: Any) -> Obj:
    body: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "main", "image": "ignored", "command": command}],
            "tolerations": [{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
            **spec,
        },
    }
    if node:
        body["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    return body


def create(http: httpx.Client, ns: str, obj: Obj) -> Obj:
    kind = {"Pod": "pods", "Secret": "secrets", "ConfigMap": "configmaps"}[obj["kind"]]
    r = http.post(f"/api/v1/namespaces/{ns}/{kind}", json=obj)
    assert r.status_code == 201, r.text
    out: Obj = r.json()
    return out


def get_pod(http: httpx.Client, ns: str, name: str) -> Obj | None:
    r = http.get(f"/api/v1/namespaces/{ns}/pods/{name}")
    return r.json() if r.status_code == 200 else None


def wait_phase(
    http: httpx.Client, ns: str, name: str, phases: set[str], timeout: float = 30
) -> Obj:
    def check() -> Obj | None:
        p = get_pod(http, ns, name)
        return p if p and p.get("status", {}).get("phase") in phases else None

    out: Obj = _poll(check, timeout, f"pod {name} in {phases}")
    return out


def wait_ready(http: httpx.Client, ns: str, name: str, timeout: float = 30) -> Obj:
    def check() -> Obj | None:
        p = get_pod(http, ns, name)
        return p if is_ready(p) else None

    out: Obj = _poll(check, timeout, f"pod {name} Ready")
    return out


def condition(p: Obj, ctype: str) -> Obj | None:
    return next((c for c in p["status"].get("conditions", []) if c["type"] == ctype), None)


def is_ready(p: Obj | None) -> bool:
    c = condition(p, "Ready") if p else None
    return bool(c and c["status"] == "True")


def main_pid(p: Obj) -> int:
    cid = p["status"]["containerStatuses"][0]["containerID"]  # process://<node>/<pid>
    return int(cid.rsplit("/", 1)[1])


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def accordion_dev(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "accordion_dev", "--state-dir", str(cluster.state_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# ---- on the session's default process nodes --------------------------------------------------
def test_init_container_secret_env_and_configmap_volume_run_to_success(
    cluster: Cluster, process_nodes: list[str], namespace: str
) -> None:
    ns = namespace
    script = (
        "echo user=$DB_USER pod=$POD_NAME ip=$POD_IP\n"
        "cat /etc/app/greeting; echo\n"
        "cat /data/work/from-init\n"
        "python - <<'EOF'\n"
        "import os, httpx, ssl\n"
        "d = '/var/run/secrets/kubernetes.io/serviceaccount'\n"
        "url = 'https://%s:%s/api/v1/nodes' % (os.environ['KUBERNETES_SERVICE_HOST'],"
        " os.environ['KUBERNETES_SERVICE_PORT'])\n"
        "r = httpx.get(url, headers={'Authorization': 'Bearer ' + open(d + '/token').read()},"
        " verify=ssl.create_default_context(cafile=d + '/ca.crt'))\n"
        "print('apiserver', r.status_code, r.json()['message'].split(' cannot')[0])\n"
        "EOF\n"
        "echo all-done > /dev/termination-log\n"
    )
    with cluster.http() as http:
        create(
            http,
            ns,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "db"},
                "stringData": {"user": "alice"},
            },
        )
        create(
            http,
            ns,
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "app"},
                "data": {"greeting": "hello from a configmap"},
            },
        )
        body = pod("job", ["sh", "-c", script], restartPolicy="Never")
        spec = body["spec"]
        spec["nodeSelector"] = {"accordion.dev/process-node": "true"}
        spec["containers"][0]["env"] = [
            {"name": "DB_USER", "valueFrom": {"secretKeyRef": {"name": "db", "key": "user"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ]
        spec["containers"][0]["volumeMounts"] = [
            {"name": "app", "mountPath": "/etc/app"},
            {"name": "work", "mountPath": "/data/work"},
        ]
        spec["initContainers"] = [
            {
                "name": "prepare",
                "image": "ignored",
                "command": ["sh", "-c", "echo prepared-by-init > /data/work/from-init"],
                "volumeMounts": [{"name": "work", "mountPath": "/data/work"}],
            }
        ]
        spec["volumes"] = [
            {"name": "app", "configMap": {"name": "app"}},
            {"name": "work", "emptyDir": {}},
        ]
        create(http, ns, body)
        done = wait_phase(http, ns, "job", {"Succeeded", "Failed"}, timeout=60)
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    assert done["spec"]["nodeName"] in process_nodes
    assert status["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    term = status["containerStatuses"][0]["state"]["terminated"]
    assert term["reason"] == "Completed"
    assert term["message"] == "all-done"
    assert condition(done, "Initialized")["status"] == "True"  # type: ignore[index]
    out = accordion_dev(cluster, "node", "logs", "job", "-n", ns, "-c", "main")
    assert out.returncode == 0, out.stderr
    # ... and the same through the apiserver from the agent's kubelet-compatible log endpoint
    assert cluster.kubectl("logs", "job", "-n", ns, "-c", "main") == out.stdout
    assert cluster.kubectl("logs", "job", "-n", ns, "-c", "prepare") == ""
    assert out.stdout.splitlines() == [
        f"user=alice pod=job ip={status['podIP']}",
        "hello from a configmap",
        "prepared-by-init",
        # Authenticated as the pod's service account (token + CA from the projected volume).
        f'apiserver 403 nodes is forbidden: User "system:serviceaccount:{ns}:default"',
    ]


# ---- on this module's own nodes ----------------------------------------------------------------
def test_two_pods_listen_on_one_port_on_their_own_ips(agents: Agents, namespace: str) -> None:
    server = (
        "import http.server, os\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers()\n"
        "        self.wfile.write(os.environ['NAME'].encode())\n"
        "http.server.HTTPServer((os.environ['POD_IP'], 8080), H).serve_forever()\n"
    )
    with agents.cluster.http() as http:
        for name in ("web-a", "web-b"):
            body = pod(name, ["python", "-c", server], agents.names[0])
            c = body["spec"]["containers"][0]
            c["env"] = [{"name": "NAME", "value": name}]
            c["ports"] = [{"name": "http", "containerPort": 8080}]
            c["readinessProbe"] = {"httpGet": {"port": "http", "path": "/"}, "periodSeconds": 1}
            create(http, namespace, body)
        pods = [wait_ready(http, namespace, n) for n in ("web-a", "web-b")]
    ips = [p["status"]["podIP"] for p in pods]
    assert ips[0] != ips[1]
    assert all(ip.startswith("127.140.") for ip in ips)
    for p, ip in zip(pods, ips, strict=True):
        assert httpx.get(f"http://{ip}:8080/", timeout=5).text == p["metadata"]["name"]


def test_crash_looping_pod_backs_off(agents: Agents, namespace: str) -> None:
    with agents.cluster.http() as http:
        create(http, namespace, pod("crash", ["sh", "-c", "echo boom; exit 3"], agents.names[0]))
        messages: list[str] = []
        start = time.monotonic()
        seen_restarts = 0
        while time.monotonic() - start < 12:
            p = get_pod(http, namespace, "crash")
            for cs in (p or {}).get("status", {}).get("containerStatuses", []):
                seen_restarts = cs["restartCount"]
                w = cs["state"].get("waiting") or {}
                if w.get("reason") == "CrashLoopBackOff" and w["message"] not in messages:
                    messages.append(w["message"])
                    assert cs["lastState"]["terminated"]["exitCode"] == 3
            time.sleep(0.05)
    assert p is not None
    assert p["status"]["phase"] == "Running"  # restartPolicy Always: never terminal
    delays = [m.split()[1] for m in messages]
    # base 1 s: restart immediately, then back off 1 s, 2 s, 4 s (cap 30 s)
    assert delays[:3] == ["1s", "2s", "4s"], messages
    # Without back-off a 10 ms crash would restart hundreds of times in 12 s.
    assert 4 <= seen_restarts <= 6


def test_deletion_sends_sigterm_then_sigkill_after_the_grace_period(
    agents: Agents, namespace: str
) -> None:
    stubborn = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: print('SIGTERM seen', flush=True))\n"
        "print('started', flush=True)\n"
        "while True: time.sleep(0.05)\n"
    )
    with agents.cluster.http() as http:
        create(
            http,
            namespace,
            pod(
                "stubborn",
                ["python", "-c", stubborn],
                agents.names[1],
                terminationGracePeriodSeconds=3,
            ),
        )
        create(
            http,
            namespace,
            pod("polite", ["sleep", "300"], agents.names[1], terminationGracePeriodSeconds=30),
        )
        running = [wait_ready(http, namespace, n) for n in ("stubborn", "polite")]
        pids = [main_pid(p) for p in running]
        time.sleep(0.5)  # let python install its handler
        t0 = time.monotonic()
        http.delete(f"/api/v1/namespaces/{namespace}/pods/stubborn")
        _poll(lambda: get_pod(http, namespace, "stubborn") is None, 15, "stubborn deleted")
        stubborn_s = time.monotonic() - t0
        t0 = time.monotonic()
        http.delete(f"/api/v1/namespaces/{namespace}/pods/polite")
        _poll(lambda: get_pod(http, namespace, "polite") is None, 15, "polite deleted")
        polite_s = time.monotonic() - t0
    assert 3.0 <= stubborn_s < 6, stubborn_s  # SIGKILL came when the 3 s grace ran out
    assert polite_s < 2, polite_s  # sleep dies of SIGTERM at once: no waiting for 30 s
    assert not any(pid_alive(pid) for pid in pids)
    log = next(
        (agents.cluster.state_dir / "nodes" / agents.names[1] / "pods").glob(
            f"{namespace}_stubborn_*/main.log"
        )
    ).read_text()
    assert log.splitlines() == ["started", "SIGTERM seen"]


def test_gpu_ids_are_never_shared(agents: Agents, namespace: str) -> None:
    node = agents.names[1]  # 2 simulated GPUs
    cmd = ["sh", "-c", "echo $CUDA_VISIBLE_DEVICES/$NVIDIA_VISIBLE_DEVICES; sleep 300"]

    def gpu_pod(name: str) -> Obj:
        body = pod(name, cmd, node, terminationGracePeriodSeconds=1)
        body["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
        return body

    def devices(name: str) -> str:
        out = accordion_dev(agents.cluster, "node", "logs", name, "-n", namespace)
        assert out.returncode == 0, out.stderr
        cuda, nvidia = out.stdout.strip().split("/")
        assert cuda == nvidia
        return cuda

    with agents.cluster.http() as http:
        for n in ("g0", "g1", "g2"):
            create(http, namespace, gpu_pod(n))
        for n in ("g0", "g1"):
            wait_phase(http, namespace, n, {"Running"})
        _poll(
            lambda: all(
                Path(p).stat().st_size
                for p in (agents.cluster.state_dir / "nodes" / node / "pods").glob(
                    f"{namespace}_g[01]_*/main.log"
                )
            ),
            10,
            "device lines",
        )
        first = {devices("g0"), devices("g1")}
        assert first == {"0", "1"}
        # The third does not fit: the scheduler keeps it Pending (the node has 2).
        p2 = _poll(
            lambda: (p := get_pod(http, namespace, "g2")) and condition(p, "PodScheduled") and p,
            10,
            "g2 unschedulable",
        )
        assert p2["status"]["phase"] == "Pending"
        assert "Insufficient nvidia.com/gpu" in condition(p2, "PodScheduled")["message"]  # type: ignore[index]
        freed = devices("g0")
        http.delete(f"/api/v1/namespaces/{namespace}/pods/g0")
        wait_phase(http, namespace, "g2", {"Running"})
        _poll(
            lambda: accordion_dev(agents.cluster, "node", "logs", "g2", "-n", namespace).stdout,
            10,
            "g2 output",
        )
        assert devices("g2") == freed
        assert devices("g2") != devices("g1")


def test_a_pinned_node_runs_its_pods_and_their_children_on_its_own_cpus(
    agents: Agents, namespace: str
) -> None:
    mine = "import os; print(*sorted(os.sched_getaffinity(0)), sep=',', flush=True)"
    # the pod's process, then a process it starts (as a worker's sshd starts training)
    script = f"import subprocess, sys\n{mine}\nsubprocess.run([sys.executable, '-c', {mine!r}])"
    cmd = ["python", "-c", script]
    with agents.cluster.http() as http:
        for name, node in (("free", agents.names[0]), ("pinned", agents.names[1])):
            create(http, namespace, pod(name, cmd, node, restartPolicy="Never"))
        for name in ("free", "pinned"):
            wait_phase(http, namespace, name, {"Succeeded"})

    def cpus(name: str) -> list[str]:
        out = accordion_dev(agents.cluster, "node", "logs", name, "-n", namespace)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    everywhere = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    assert cpus("free") == [everywhere, everywhere]
    assert cpus("pinned") == ["0", "0"]


def test_agent_stop_kills_its_pods_and_a_restart_runs_them_again(
    agents: Agents, namespace: str
) -> None:
    node = agents.names[0]
    with agents.cluster.http() as http:
        create(
            http,
            namespace,
            pod(
                "svc",
                ["sh", "-c", "sleep 300 & setsid sleep 301 & wait"],
                node,
                terminationGracePeriodSeconds=1,
            ),
        )
        before = wait_ready(http, namespace, "svc")
        proc = agents.proc(node)
        os.kill(proc.pid, signal.SIGTERM)  # what `cluster down` does
        _poll(lambda: not proc.alive(), 10, "agent exit")
        # Nothing of the pod survives, not even the setsid'd grandchild.
        leftovers = subprocess.run(
            ["pgrep", "-f", "^sleep 30[01]$"], capture_output=True, text=True, check=False
        ).stdout.split()
        ours = [
            p
            for p in leftovers
            if f"ACCORDION_POD_UID={before['metadata']['uid']}".encode()
            in Path(f"/proc/{p}/environ").read_bytes()
        ]
        assert ours == []
        assert not pid_alive(main_pid(before))
        out = accordion_dev(agents.cluster, "node", "start", node)
        assert out.returncode == 0, out.stderr

        def restarted() -> Obj | None:
            p = get_pod(http, namespace, "svc")
            cs = (p or {}).get("status", {}).get("containerStatuses", [{}])[0]
            return p if cs.get("restartCount") == 1 and is_ready(p) else None

        after = _poll(restarted, 30, "svc running again after the agent restart")
    assert after["status"]["podIP"] == before["status"]["podIP"]
    last = after["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["reason"] == "ContainerStatusUnknown"


def test_lost_node_pods_are_marked_and_evicted_by_the_node_controller(
    agents: Agents, namespace: str
) -> None:
    node = agents.names[1]
    grace = agents.cluster.config.node_monitor_grace_seconds
    body = pod("victim", ["sleep", "300"], node)
    body["spec"]["tolerations"] += [
        {
            "key": f"node.kubernetes.io/{t}",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": 0,
        }
        for t in ("unreachable", "not-ready")
    ]
    with agents.cluster.http() as http:
        create(http, namespace, body)
        running = wait_ready(http, namespace, "victim")
        out = accordion_dev(agents.cluster, "node", "stop", node)
        assert out.returncode == 0, out.stderr
        assert not pid_alive(main_pid(running))  # the processes went with the node
        lost_at = time.monotonic()

        def node_ready() -> str:
            n = http.get(f"/api/v1/nodes/{node}").json()
            return str(next(c["status"] for c in n["status"]["conditions"] if c["type"] == "Ready"))

        _poll(lambda: node_ready() == "Unknown", grace + 15, "node Ready=Unknown", every=0.5)
        noticed_s = time.monotonic() - lost_at

        def evicted() -> Obj | None:
            p = get_pod(http, namespace, "victim")
            return p if p and p["metadata"].get("deletionTimestamp") else None

        gone = _poll(evicted, 30, "the taint manager to evict the pod", every=0.5)
        assert condition(gone, "Ready")["status"] == "False"  # type: ignore[index]
        assert condition(gone, "DisruptionTarget")["reason"] == "DeletionByTaintManager"  # type: ignore[index]
        # The pod stays Terminating while no agent confirms; the restarted agent finalises it.
        assert get_pod(http, namespace, "victim") is not None
        out = accordion_dev(agents.cluster, "node", "start", node)
        assert out.returncode == 0, out.stderr
        _poll(lambda: get_pod(http, namespace, "victim") is None, 30, "victim removed")
        _poll(lambda: agents.ready(node), 30, "node Ready again")
    assert noticed_s <= grace + 15


def test_a_pod_over_its_memory_limit_is_oom_killed(agents: Agents, namespace: str) -> None:
    hog = ["python", "-c", "x = bytearray(300 * 2**20); print('survived')"]
    body = pod("hog", hog, agents.names[0], restartPolicy="Never")
    body["spec"]["containers"][0]["resources"] = {"limits": {"memory": "64Mi"}}
    with agents.cluster.http() as http:
        create(http, namespace, body)
        done = wait_phase(http, namespace, "hog", {"Succeeded", "Failed"})
    term = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert done["status"]["phase"] == "Failed"
    assert (term["reason"], term["exitCode"]) == ("OOMKilled", 137)


def test_cordon_and_drain(agents: Agents, namespace: str) -> None:
    node = agents.names[0]
    with agents.cluster.http() as http:
        create(http, namespace, pod("d", ["sleep", "300"], node, terminationGracePeriodSeconds=1))
        wait_phase(http, namespace, "d", {"Running"})
        out = accordion_dev(agents.cluster, "node", "drain", node, "--timeout", "30")
        assert out.returncode == 0, out.stderr
        assert get_pod(http, namespace, "d") is None
        assert http.get(f"/api/v1/nodes/{node}").json()["spec"]["unschedulable"] is True
        create(http, namespace, pod("e", ["sleep", "300"], node))
        time.sleep(1)
        assert get_pod(http, namespace, "e")["status"]["phase"] == "Pending"  # type: ignore[index]
        out = accordion_dev(agents.cluster, "node", "uncordon", node)
        assert out.returncode == 0, out.stderr
        wait_phase(http, namespace, "e", {"Running"})


def test_node_logs_command_explains_a_missing_pod(agents: Agents) -> None:
    out = accordion_dev(agents.cluster, "node", "logs", "no-such-pod", "-n", "nowhere")
    assert out.returncode == 1
    assert "no logs of pod nowhere/no-such-pod" in out.stderr
