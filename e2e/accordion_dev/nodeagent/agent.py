"""The agent process: node registration and heartbeat, the pod watch, the main loop.

Threads: one watches this node's pods and queues the events; one renews the node Lease and
posts the node status; a small pool runs probes. Everything that starts or signals processes
happens on the main thread, which lives as long as the agent: `setpriv --pdeathsig` ties each
container to the thread that forked it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from accordion_dev.nodeagent import images, logserver, runtime
from accordion_dev.nodeagent.alloc import GpuAllocator, IpAllocator, node_ip
from accordion_dev.nodeagent.kube import Kube, Kubeconfig, KubeError, load_kubeconfig
from accordion_dev.nodeagent.node import (
    NodeConfig,
    build_lease,
    build_node,
    build_node_status,
)
from accordion_dev.nodeagent.pod import SHUTDOWN_GRACE, Context, PodRunner

Obj = dict[str, Any]
log = logging.getLogger("accordion.nodeagent")
REPO = Path(__file__).resolve().parents[3]
#: node indices 0..149: node IPs 127.100.0.1 .. 127.249.0.1
MAX_INDEX = 150


@dataclass
class AgentConfig:
    kubeconfig: Path
    node: NodeConfig
    state_dir: Path
    heartbeat_seconds: float = 10.0
    backoff_base: float = 10.0
    backoff_cap: float = 300.0
    tick: float = 0.1
    #: registries whose images run from their root filesystem (images.py)
    image_registries: tuple[str, ...] = ()


@dataclass
class State:
    """What must survive an agent restart: who holds which GPU and address, which pids ran."""

    ips: dict[str, str] = field(default_factory=dict)
    ip_cursor: int = 0
    gpus: dict[str, list[int]] = field(default_factory=dict)
    pids: dict[str, dict[str, int]] = field(default_factory=dict)
    index: int | None = None  # the node index in use (may differ from the one asked for)

    @classmethod
    def load(cls, path: Path) -> State:
        if not path.exists():
            return cls()
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)


def kill_leftovers(state_dir: Path, node: str) -> int:
    """Kill what an earlier agent of this node left running (it was SIGKILLed, or `node stop`):
    every process of the node's cgroups, and the recorded process groups. Returns how many."""
    n = 0
    memcg = runtime.memory_cgroup_root()
    key = agent_key(node, state_dir)
    for cg in (runtime.CGROUP_ROOT / key, memcg / key if memcg else None):
        if cg is not None and cg.exists():
            n += sum(len(runtime.cgroup_pids(d)) for d in cg.rglob("*") if d.is_dir())
            runtime.remove_cgroup_tree(cg)
    path = state_dir / "state.json"
    if path.exists():
        st = State.load(path)
        for containers in st.pids.values():
            for pid in containers.values():
                # The container's wrapper was its own session leader: pgid == pid. Kill the group
                # only if it still carries this node's marker, never a reused pid's group.
                if _is_ours(pid, key):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)
                        n += 1
        st.pids = {}
        st.save(path)
    return n


def agent_key(node: str, state_dir: Path) -> str:
    """Names this node's cgroups and marks its processes: the node name plus its state dir, as
    two clusters on one machine (a developer's and a test session's) both have a `proc-0`."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]
    return f"{node}-{digest}"


def _is_ours(pid: int, key: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"ACCORDION_NODE_KEY={key}".encode() in environ


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.kc: Kubeconfig = load_kubeconfig(cfg.kubeconfig)
        self.kube = Kube(self.kc)
        self.stop = threading.Event()
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.runners: dict[str, PodRunner] = {}
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = cfg.state_dir / "state.json"
        self.boot_id = str(uuid.uuid4())
        self._dirty = False
        self.live: frozenset[tuple[str, str, str]] = frozenset()

    # ---- node -------------------------------------------------------------------------
    def register(self, kube: Kube | None = None) -> None:
        kube = kube or self.kube
        node = self.cfg.node
        body = build_node(node)
        try:
            kube.post("/api/v1/nodes", body)
        except KubeError as e:
            if e.status != 409:
                raise
            # Re-registration (agent restart): refresh labels and taints, keep unschedulable.
            kube.patch(f"/api/v1/nodes/{node.name}", body)
        kube.patch(f"/api/v1/nodes/{node.name}/status", build_node_status(node, self.boot_id))
        self._renew_lease(kube)

    def _renew_lease(self, kube: Kube) -> None:
        name = self.cfg.node.name
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
        current = kube.get_or_none(path)
        if current is None:
            node = kube.get(f"/api/v1/nodes/{name}")
            kube.post(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                build_lease(name, node["metadata"]["uid"]),
            )
            return
        fresh = build_lease(name, None)
        current["spec"].update(fresh["spec"])
        kube.put(path, current)

    def _heartbeat(self) -> None:
        kube = Kube(self.kc, timeout=5)
        status_path = f"/api/v1/nodes/{self.cfg.node.name}/status"
        while not self.stop.wait(self.cfg.heartbeat_seconds):
            try:
                kube.patch(status_path, build_node_status(self.cfg.node, self.boot_id))
                self._renew_lease(kube)
            except KubeError as e:
                if e.status != 404:
                    log.warning("heartbeat: %s", e)
                    continue
                log.warning("node object deleted: registering again (as kubelet does)")
                with contextlib.suppress(Exception):
                    self.register(kube)
            except Exception as e:  # the next beat retries; the node controller decides
                log.warning("heartbeat: %s", e)
        kube.close()

    # ---- pods -------------------------------------------------------------------------
    def _watch(self) -> None:
        kube = Kube(self.kc, timeout=15)
        selector = f"spec.nodeName={self.cfg.node.name}"
        rv = ""
        while not self.stop.is_set():
            try:
                if not rv:
                    listing = kube.get("/api/v1/pods", fieldSelector=selector)
                    rv = listing["metadata"]["resourceVersion"]
                    self.events.put(("SYNC", listing["items"]))
                for ev in kube.watch("/api/v1/pods", rv, fieldSelector=selector):
                    if self.stop.is_set():
                        break
                    obj = ev["object"]
                    if ev["type"] == "ERROR":
                        rv = ""  # 410 Gone (too old): list again
                        break
                    rv = obj["metadata"].get("resourceVersion", rv)
                    if ev["type"] != "BOOKMARK":
                        self.events.put((ev["type"], obj))
            except Exception as e:
                if self.stop.is_set():
                    break
                log.warning("pod watch: %s; listing again", e)
                rv = ""
                self.stop.wait(0.5)
        kube.close()

    def _handle(self, kind: str, obj: Any) -> None:
        if kind == "SYNC":
            seen = {p["metadata"]["uid"] for p in obj}
            for uid, r in self.runners.items():
                if uid not in seen:
                    r.vanished()
            for p in obj:
                self._upsert(p)
        elif kind == "DELETED":
            gone = self.runners.get(obj["metadata"]["uid"])
            if gone:
                gone.vanished()
        else:
            self._upsert(obj)

    def _upsert(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        if uid not in self.runners:
            self.runners[uid] = PodRunner(pod, self.ctx)
        self.runners[uid].update(pod)

    def _publish(self, r: PodRunner, now: float) -> None:
        body = r.status_body(now)
        if body is None:
            return
        path = f"/api/v1/namespaces/{r.ns}/pods/{r.name}/status"
        try:
            self.kube.patch(path, {"metadata": {"uid": r.uid}, "status": body})
            r.sent(body)
        except KubeError as e:
            if e.status in (404, 409):  # gone, or replaced by a pod of the same name
                r.vanished()
            else:
                log.warning("status of %s/%s: %s", r.ns, r.name, e)

    def mark_dirty(self) -> None:
        self._dirty = True

    def _save(self) -> None:
        st = State(
            self.ctx.ips.assigned,
            self.ctx.ips.cursor,
            self.ctx.gpus.assigned,
            self.ctx.pids,
            self.cfg.node.index,
        )
        st.save(self.state_path)
        self._dirty = False

    # ---- main -------------------------------------------------------------------------
    def _claim_index(self, st: State) -> ThreadingHTTPServer:
        """Bind the log endpoint on the node IP; the bound port is the machine-wide claim on a
        node index, so process nodes of two clusters on one machine (a developer's and a test
        session's) never share pod IPs. A taken index moves to the next free one."""
        node = self.cfg.node
        preferred = st.index if st.index is not None else node.index
        for step in range(MAX_INDEX):
            index = (preferred + step) % MAX_INDEX
            try:
                server = logserver.serve(
                    node_ip(index),
                    node.kubelet_port,
                    self.cfg.state_dir / "pods",
                    self.cfg.state_dir / "pki",
                    self._is_running,
                )
            except OSError:
                continue
            if index != node.index:
                log.warning("node index %d is taken on this machine: using %d", node.index, index)
            if st.index is not None and st.index != index:
                st.ips, st.ip_cursor = {}, 0  # addresses of another range: start afresh
            self.cfg.node = replace(node, index=index)
            st.index = index
            return server
        raise RuntimeError(f"no free node index: {MAX_INDEX} process nodes on this machine")

    def _is_running(self, ns: str, pod: str, container: str) -> bool:
        return (ns, pod, container) in self.live

    def run(self) -> int:
        killed = kill_leftovers(self.cfg.state_dir, self.cfg.node.name)
        if killed:
            log.info("killed %d leftover processes of an earlier agent", killed)
        st = State.load(self.state_path)
        server = self._claim_index(st)
        isolate = runtime.can_isolate()
        key = agent_key(self.cfg.node.name, self.cfg.state_dir)
        cg = runtime.CGROUP_ROOT / key if runtime.cgroup_ok() else None
        if not isolate:
            log.warning("not root (or no unshare): volumes are not mounted at their mountPaths")
        venv_bin = REPO / ".venv" / "bin"
        base_env = {
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.kc.port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.kc.port),
        }
        for passthrough in ("ACCORDION_CACHE", "TZ"):
            if passthrough in os.environ:
                base_env[passthrough] = os.environ[passthrough]
        probes = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        # Images (images.py): a store shared by every node of this machine, two pulls at a time.
        cache = Path(os.environ.get("ACCORDION_CACHE") or Path.home() / ".cache" / "accordion")
        store = images.ImageStore(cache / "images" / "store", self.cfg.image_registries)
        pullers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pull")
        self.ctx = Context(
            node=self.cfg.node,
            kube=self.kube,
            pods_dir=self.cfg.state_dir / "pods",
            ips=IpAllocator(self.cfg.node.index, st.ips, st.ip_cursor),
            gpus=GpuAllocator(self.cfg.node.gpus, st.gpus),
            base_env=base_env,
            probes=probes,
            mark_dirty=self.mark_dirty,
            backoff_base=self.cfg.backoff_base,
            backoff_cap=self.cfg.backoff_cap,
            isolate=isolate,
            cgroup_root=cg,
            node_key=key,
            memcg_root=memcg / key if (memcg := runtime.memory_cgroup_root()) else None,
            protected=(REPO, Path(sys.base_prefix).resolve()),
            image_registries=self.cfg.image_registries,
            image_store=store if isolate else None,
            pullers=pullers,
        )
        self.register()
        log.info(
            "node %s registered (%s, %d GPUs); isolation=%s cgroups=%s",
            self.cfg.node.name,
            self.cfg.node.ip,
            self.cfg.node.gpus,
            isolate,
            cg,
        )
        threads = [
            threading.Thread(target=self._watch, name="watch", daemon=True),
            threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            self._loop()
        finally:
            server.shutdown()
            self._shutdown()
            probes.shutdown(wait=False, cancel_futures=True)
            pullers.shutdown(wait=False, cancel_futures=True)
        return 0

    def _loop(self) -> None:
        first_sync = False
        while not self.stop.is_set():
            try:
                kind, obj = self.events.get(timeout=self.cfg.tick)
                self._handle(kind, obj)
                first_sync = first_sync or kind == "SYNC"
                while True:  # drain what else arrived: one pass over the pods for all of it
                    kind, obj = self.events.get_nowait()
                    self._handle(kind, obj)
            except queue.Empty:
                pass
            if not first_sync:
                continue
            # GPUs and IPs of pods that no longer exist are free (recorded before a restart).
            now = time.time()
            for uid, r in list(self.runners.items()):
                try:
                    r.step(now)
                    self._publish(r, now)
                except Exception:
                    log.exception("pod %s/%s", r.ns, r.name)
                if r.deleted and not r.alive:
                    r.kill_all()
                    del self.runners[uid]
            self.live = frozenset(
                (r.ns, r.name, c) for r in self.runners.values() for c in r.running
            )
            self._gc_allocations()
            if self._dirty:
                self._save()

    def _gc_allocations(self) -> None:
        for table in (self.ctx.gpus.assigned, self.ctx.ips.assigned, self.ctx.pids):
            for uid in [u for u in table if u not in self.runners]:
                del table[uid]
                self._dirty = True

    def _shutdown(self) -> None:
        for r in self.runners.values():
            r.shutdown()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while time.monotonic() < deadline and any(r.alive for r in self.runners.values()):
            time.sleep(0.05)
        for r in self.runners.values():
            r.kill_all()
        self.ctx.pids.clear()
        self._save()
        for root in (self.ctx.cgroup_root, self.ctx.memcg_root):
            if root:
                runtime.remove_cgroup_tree(root)
        log.info("stopped; all pod processes killed")


def main_loop(cfg: AgentConfig) -> int:
    agent = Agent(cfg)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        agent.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return agent.run()
