"""`accordion-dev node ...`: fault injection and logs for process nodes (test infrastructure).

    accordion-dev node stop NAME        "node lost": SIGKILL the agent and every process of its
                                        pods, without telling the apiserver; the node controller
                                        marks the node NotReady/Unknown and evicts its pods
    accordion-dev node start NAME       start the agent again (same arguments); it cleans up
    accordion-dev node cordon NAME      spec.unschedulable = true
    accordion-dev node uncordon NAME    spec.unschedulable = false
    accordion-dev node drain NAME       cordon, evict every pod (Eviction API), wait until gone
    accordion-dev node logs POD [-n NS] [-c CONTAINER] [-f]
                                        a container's output, from the agent's log files

A process node's agent is recorded as `node-NAME` in the cluster's process table and keeps its
state in `<cluster-state>/nodes/NAME/`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from accordion_dev.nodeagent.agent import kill_leftovers
from accordion_dev.nodeagent.kube import Kube, KubeError, load_kubeconfig
from accordion_dev.procs import Proc, ProcTable


class ClusterLike(Protocol):
    state_dir: Path
    procs: ProcTable

    @property
    def kubeconfig(self) -> Path: ...


class NodeError(RuntimeError):
    pass


def node_state_dir(cluster: ClusterLike, name: str) -> Path:
    return cluster.state_dir / "nodes" / name


def _argv_value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def _proc(cluster: ClusterLike, name: str) -> Proc:
    """The recorded agent of node `name` (`node-NAME`, or any recorded agent run for it)."""
    for p in cluster.procs.load():
        is_agent = "accordion_dev.nodeagent" in p.argv and _argv_value(p.argv, "--node") == name
        if p.name == f"node-{name}" or is_agent:
            return p
    raise NodeError(
        f"no process node {name!r} recorded in {cluster.state_dir} "
        "(start the cluster with --process-nodes N)"
    )


def _state_dir(cluster: ClusterLike, p: Proc, name: str) -> Path:
    recorded = _argv_value(p.argv, "--state-dir")
    return Path(recorded) if recorded else node_state_dir(cluster, name)


def stop_node(cluster: ClusterLike, name: str) -> int:
    """Kill the agent and its pods' processes at once; returns how many pod processes died."""
    p = _proc(cluster, name)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while p.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    return kill_leftovers(_state_dir(cluster, p, name), name)


def start_node(cluster: ClusterLike, name: str) -> int:
    p = _proc(cluster, name)
    if p.alive():
        raise NodeError(f"node agent {name} is running (pid {p.pid}); stop it first")
    with Path(p.log).open("ab") as out:
        popen = subprocess.Popen(
            p.argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    cluster.procs.add(Proc(p.name, popen.pid, p.argv, p.log))
    return popen.pid


def _kube(cluster: ClusterLike) -> Kube:
    return Kube(load_kubeconfig(cluster.kubeconfig))


def cordon(cluster: ClusterLike, name: str, on: bool = True) -> None:
    kube = _kube(cluster)
    try:
        kube.patch(f"/api/v1/nodes/{name}", {"spec": {"unschedulable": on or None}})
    finally:
        kube.close()


def drain(cluster: ClusterLike, name: str, timeout: float = 120.0) -> list[str]:
    """Cordon, then evict every pod of the node that a DaemonSet does not own; wait until they
    are gone. PodDisruptionBudgets are honoured (the Eviction API answers 429 until allowed)."""
    cordon(cluster, name)
    kube = _kube(cluster)
    try:
        pods = kube.get("/api/v1/pods", fieldSelector=f"spec.nodeName={name}")["items"]
        todo = {
            (p["metadata"]["namespace"], p["metadata"]["name"]): p["metadata"]["uid"]
            for p in pods
            if not any(
                o.get("kind") == "DaemonSet" for o in p["metadata"].get("ownerReferences") or []
            )
        }
        evicted: list[str] = []
        deadline = time.monotonic() + timeout
        pending = dict(todo)
        while pending and time.monotonic() < deadline:
            for (ns, pod), _ in list(pending.items()):
                body = {
                    "apiVersion": "policy/v1",
                    "kind": "Eviction",
                    "metadata": {"name": pod, "namespace": ns},
                }
                try:
                    kube.post(f"/api/v1/namespaces/{ns}/pods/{pod}/eviction", body)
                except KubeError as e:
                    if e.status == 429:  # a PodDisruptionBudget says not now
                        continue
                    if e.status != 404:
                        raise
                evicted.append(f"{ns}/{pod}")
                del pending[ns, pod]
            if pending:
                time.sleep(1)
        if pending:
            raise NodeError(f"drain {name}: not evicted within {timeout:.0f} s: {sorted(pending)}")
        while time.monotonic() < deadline:
            alive = [
                k
                for k, uid in todo.items()
                if (o := kube.get_or_none(f"/api/v1/namespaces/{k[0]}/pods/{k[1]}"))
                and o["metadata"]["uid"] == uid
            ]
            if not alive:
                return evicted
            time.sleep(0.5)
        raise NodeError(f"drain {name}: pods still terminating after {timeout:.0f} s")
    finally:
        kube.close()


def find_log(state_dir: Path, pod: str, namespace: str, container: str | None) -> Path:
    dirs = sorted(
        (state_dir / "nodes").glob(f"*/pods/{namespace}_{pod}_*"),
        key=lambda d: d.stat().st_mtime,
    )
    if not dirs:
        raise NodeError(f"no logs of pod {namespace}/{pod} on any process node of {state_dir}")
    logs = sorted(dirs[-1].glob("*.log"))
    if container:
        want = dirs[-1] / f"{container}.log"
        if not want.exists():
            raise NodeError(
                f"pod {pod} has no container log {container!r}: {[p.stem for p in logs]}"
            )
        return want
    if len(logs) != 1:
        raise NodeError(
            f"pod {pod} has several containers, choose one with -c: {[p.stem for p in logs]}"
        )
    return logs[0]


def _print_log(path: Path, follow: bool) -> None:
    with path.open("rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            elif not follow:
                return
            else:
                time.sleep(0.2)


def add_parser(groups: Any) -> None:
    """Mount `node ...` on the accordion-dev parser; handlers are called (args, cluster)."""
    node = groups.add_parser(
        "node",
        help="process nodes: stop/start/cordon/drain, pod logs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = node.add_subparsers(dest="verb", required=True)
    for verb, what in (
        ("stop", "node lost: kill agent and pods, no goodbye"),
        ("start", "restart a stopped node agent"),
        ("cordon", "mark unschedulable"),
        ("uncordon", "mark schedulable"),
        ("drain", "cordon and evict every pod"),
    ):
        p = verbs.add_parser(verb, help=what)
        p.add_argument("name")
        if verb == "drain":
            p.add_argument("--timeout", type=float, default=120.0)
        p.set_defaults(func=run)
    lg = verbs.add_parser("logs", help="print a pod container's output")
    lg.add_argument("pod")
    lg.add_argument("-n", "--namespace", default="default")
    lg.add_argument("-c", "--container")
    lg.add_argument("-f", "--follow", action="store_true")
    lg.set_defaults(func=run)


def run(args: argparse.Namespace, cluster: ClusterLike) -> int:
    try:
        if args.verb == "stop":
            n = stop_node(cluster, args.name)
            print(f"[node] {args.name} lost: agent and {n} pod processes killed")
        elif args.verb == "start":
            pid = start_node(cluster, args.name)
            print(f"[node] {args.name} agent started (pid {pid})")
        elif args.verb in ("cordon", "uncordon"):
            cordon(cluster, args.name, args.verb == "cordon")
            print(f"[node] {args.name} {args.verb}ed")
        elif args.verb == "drain":
            evicted = drain(cluster, args.name, args.timeout)
            print(f"[node] {args.name} drained: {len(evicted)} pods evicted")
        elif args.verb == "logs":
            path = find_log(cluster.state_dir, args.pod, args.namespace, args.container)
            with contextlib.suppress(KeyboardInterrupt):
                _print_log(path, args.follow)
    except (NodeError, KubeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
