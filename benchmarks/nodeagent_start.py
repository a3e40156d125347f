"""How fast a process node starts real pods: pods/s and bind -> Running latency.

Starts one node agent on a private cluster, creates N pods (`sleep`) at once through the real
scheduler and watches them: the time a pod is first seen bound (spec.nodeName set) and first
seen Running are taken by the same watch, so the latency is bind -> Running as the agent makes
it (sandbox, volumes incl. the service-account token, process start, status patch). Then it
deletes them all and measures how long until every pod object is gone. Last, pods one at a
time: the latency with no queue in front of the agent.

    python -m benchmarks.nodeagent_start [--pods 100] [--single 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import ssl
import statistics
import threading
import time
from typing import Any

import httpx

from accordion_dev.cluster import Cluster
from accordion_dev.nodeagent import start_agent
from benchmarks._common import private_cluster, write_result

NODE = "bench-proc-0"
TAINT = "accordion.dev/bench"


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(p * len(s)))], 4)


def pod(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"p-{i:04d}"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": NODE},
            "tolerations": [{"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "main", "image": "ignored", "command": ["sleep", "600"]}],
        },
    }


class Watcher(threading.Thread):
    """Records, per pod, when the watch first showed it bound and first showed it Running."""

    def __init__(self, c: Cluster, ns: str, rv: str) -> None:
        super().__init__(daemon=True)
        self.c, self.ns, self.rv = c, ns, rv
        self.bound: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.c.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.c.pki / "admin.crt"), str(self.c.pki / "admin.key"))
        params = {"watch": "1", "resourceVersion": self.rv}
        timeout = httpx.Timeout(10, read=None)
        with (
            contextlib.suppress(httpx.HTTPError),  # the cluster goes down under the watch
            httpx.Client(base_url=self.c.server, verify=ctx, timeout=timeout) as http,
            http.stream("GET", f"/api/v1/namespaces/{self.ns}/pods", params=params) as r,
        ):
            for line in r.iter_lines():
                now = time.monotonic()
                obj = json.loads(line)["object"]
                name = obj["metadata"]["name"]
                if obj["spec"].get("nodeName"):
                    self.bound.setdefault(name, now)
                if obj.get("status", {}).get("phase") == "Running":
                    self.running.setdefault(name, now)
                if self.stop.is_set():
                    return


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--single", type=int, default=10, help="pods created one at a time")
    args = ap.parse_args()
    n = args.pods
    with private_cluster() as c:
        agent = start_agent(
            c.kubeconfig,
            NODE,
            0,
            c.state_dir / "nodes" / NODE,
            60,
            taints=[f"{TAINT}=true:NoSchedule"],
        )
        try:
            with c.http() as http:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    node = http.get(f"/api/v1/nodes/{NODE}")
                    ok = node.status_code == 200
                    conds = node.json()["status"].get("conditions", []) if ok else []
                    if any(x["type"] == "Ready" and x["status"] == "True" for x in conds):
                        break
                    time.sleep(0.1)
                ns = "bench"
                http.post("/api/v1/namespaces", json={"metadata": {"name": ns}}).raise_for_status()
                while (
                    http.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default").status_code != 200
                ):
                    time.sleep(0.1)
                rv = http.get(f"/api/v1/namespaces/{ns}/pods").json()["metadata"]["resourceVersion"]
                w = Watcher(c, ns, rv)
                w.start()
                t0 = time.monotonic()
                for i in range(n):
                    http.post(f"/api/v1/namespaces/{ns}/pods", json=pod(i)).raise_for_status()
                create_s = time.monotonic() - t0
                deadline = time.monotonic() + 300
                while len(w.running) < n and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert len(w.running) == n, f"only {len(w.running)}/{n} pods Running"
                lat = [w.running[k] - w.bound[k] for k in w.running]
                first_bind, last_running = min(w.bound.values()), max(w.running.values())
                t1 = time.monotonic()
                http.request("DELETE", f"/api/v1/namespaces/{ns}/pods").raise_for_status()
                while http.get(f"/api/v1/namespaces/{ns}/pods").json()["items"]:
                    assert time.monotonic() - t1 < 120, "pods not deleted in 120 s"
                    time.sleep(0.1)
                delete_s = time.monotonic() - t1
                # One pod at a time: the latency without a queue in front of the agent.
                single = []
                for i in range(n, n + args.single):
                    http.post(f"/api/v1/namespaces/{ns}/pods", json=pod(i)).raise_for_status()
                    name = pod(i)["metadata"]["name"]
                    deadline = time.monotonic() + 30
                    while name not in w.running and time.monotonic() < deadline:
                        time.sleep(0.005)
                    single.append(w.running[name] - w.bound[name])
                http.request("DELETE", f"/api/v1/namespaces/{ns}/pods").raise_for_status()
                w.stop.set()
        finally:
            os.kill(agent.pid, signal.SIGTERM)
            agent.wait(timeout=15)
    write_result(
        "nodeagent_start",
        {
            "params": {"pods": n, "nodes": 1, "command": "sleep 600"},
            "create_s": round(create_s, 3),
            "bind_to_running_p50_s": pct(lat, 0.50),
            "bind_to_running_p95_s": pct(lat, 0.95),
            "bind_to_running_max_s": round(max(lat), 4),
            "bind_to_running_mean_s": round(statistics.mean(lat), 4),
            "first_bind_to_all_running_s": round(last_running - first_bind, 3),
            "start_pods_per_s": round(n / (last_running - first_bind), 1),
            "delete_all_s": round(delete_s, 3),
            "delete_pods_per_s": round(n / delete_s, 1),
            "single_pods": args.single,
            "single_bind_to_running_p50_s": pct(single, 0.50),
            "single_bind_to_running_max_s": round(max(single), 4),
        },
    )


if __name__ == "__main__":
    main()
