"""One pod on a process node: its sandbox (IP, GPUs, volumes), its containers' lifecycle, its
termination, and the status to publish. `PodRunner.step()` never blocks for long: the agent's
main loop calls it for every pod on every wake-up (level-based, like kubelet's pod workers).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accordion_dev.nodeagent import images, runtime
from accordion_dev.nodeagent.alloc import (
    AllocationError,
    GpuAllocator,
    IpAllocator,
    pod_gpu_plan,
    split_devices,
    visible_devices,
)
from accordion_dev.nodeagent.container_env import (
    EnvError,
    command_line,
    parse_quantity,
    resolve_env,
)
from accordion_dev.nodeagent.kube import Kube, KubeError
from accordion_dev.nodeagent.node import NodeConfig
from accordion_dev.nodeagent.probes import ProbeState, run_probe
from accordion_dev.nodeagent.status import (
    Container,
    PodStatusInput,
    Terminated,
    backoff_delay,
    build_status,
    compute_conditions,
    compute_phase,
    decide_restart,
    exit_reason,
)
from accordion_dev.nodeagent.volumes import (
    Mount,
    VolumeError,
    apply_fs_group,
    apply_owner,
    decode_data,
    etc_hosts,
    materialise,
    mounts_for,
)

Obj = dict[str, Any]
log = logging.getLogger("accordion.nodeagent")
#: the agent's variables that describe this machine, not a container of an image
_HOST_ONLY = frozenset({"PATH", "HOME", "LANG", "ACCORDION_CACHE", "TZ"})


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


#: how long an agent shutting down waits for SIGTERMed containers before SIGKILL
SHUTDOWN_GRACE = 3.0
SETUP_RETRY = 1.0


@dataclass
class Context:
    """What every pod runner shares (owned by the agent)."""

    node: NodeConfig
    kube: Kube
    pods_dir: Path
    ips: IpAllocator
    gpus: GpuAllocator
    base_env: Mapping[str, str]
    probes: ThreadPoolExecutor
    mark_dirty: Callable[[], None]
    backoff_base: float = 10.0
    backoff_cap: float = 300.0
    isolate: bool = True
    cgroup_root: Path | None = None
    #: unique per agent on this machine (node name + state dir): cgroup names, process marker
    node_key: str = ""
    #: memory cgroups (limits.memory, OOMKilled), per node
    memcg_root: Path | None = None
    pids: dict[str, dict[str, int]] = field(default_factory=dict)  # uid -> container -> pid
    #: host paths no mountPath may hide (the repo with its venv, the python installation)
    protected: tuple[Path, ...] = ()
    #: containers whose image is in one of these registries run from it (images.py)
    image_registries: tuple[str, ...] = ()
    image_store: images.ImageStore | None = None
    pullers: ThreadPoolExecutor | None = None


@dataclass
class Pull:
    """One container's image pull: in flight, done, or failed and backing off."""

    future: Future[images.Image] | None = None
    image: images.Image | None = None
    failures: int = 0
    retry_at: float = 0.0
    error: str = ""


class ApiSources:
    """Secrets, configmaps and tokens of one pod's namespace, fetched once per setup."""

    def __init__(self, kube: Kube, pod: Mapping[str, Any]) -> None:
        self.kube, self.pod = kube, pod
        self.ns = pod["metadata"]["namespace"]
        self._cache: dict[tuple[str, str], Mapping[str, bytes] | None] = {}

    def _get(self, kind: str, name: str) -> Mapping[str, bytes] | None:
        if (kind, name) not in self._cache:
            obj = self.kube.get_or_none(f"/api/v1/namespaces/{self.ns}/{kind}/{name}")
            self._cache[kind, name] = decode_data(obj) if obj else None
        return self._cache[kind, name]

    def secret(self, name: str) -> Mapping[str, bytes] | None:
        return self._get("secrets", name)

    def configmap(self, name: str) -> Mapping[str, bytes] | None:
        return self._get("configmaps", name)

    def text(self, kind: str) -> Callable[[str], Mapping[str, str] | None]:
        def lookup(name: str) -> Mapping[str, str] | None:
            data = self._get(kind, name)
            return (
                None if data is None else {k: v.decode(errors="replace") for k, v in data.items()}
            )

        return lookup

    def token(self, service_account: str, audience: str | None, seconds: int) -> str:
        meta = self.pod["metadata"]
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else [],
                "expirationSeconds": max(seconds, 600),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        path = f"/api/v1/namespaces/{self.ns}/serviceaccounts/{service_account}/token"
        out = self.kube.post(path, body)
        return str(out["status"]["token"])


@dataclass
class Running:
    proc: runtime.Process
    env: dict[str, str]
    spec: Mapping[str, Any]
    readiness: ProbeState | None = None
    liveness: ProbeState | None = None
    inflight: dict[str, Future[bool]] = field(default_factory=dict)
    killed_by_liveness: bool = False
    identity: images.Identity | None = None  # set when it runs from an image


class PodRunner:
    def __init__(self, pod: Obj, ctx: Context) -> None:
        self.ctx = ctx
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.ns: str = meta["namespace"]
        self.name: str = meta["name"]
        self.dir = ctx.pods_dir / f"{self.ns}_{self.name}_{self.uid}"
        spec = pod["spec"]
        self.policy: str = spec.get("restartPolicy", "Always")
        self.specs: dict[str, Mapping[str, Any]] = {
            c["name"]: c for c in [*(spec.get("initContainers") or []), *spec["containers"]]
        }
        self.inits = [Container(c["name"], init=True) for c in spec.get("initContainers") or []]
        self.apps = [Container(c["name"]) for c in spec["containers"]]
        for c in self.apps:
            c.waiting_reason = "PodInitializing" if self.inits else "ContainerCreating"
        self.images = {n: str(c.get("image", "")) for n, c in self.specs.items()}
        self.pulls: dict[str, Pull] = {}
        self.fs_group_applied = False
        self.backoff_n: dict[str, int] = {}
        self.running: dict[str, Running] = {}
        self.sandbox = False
        self.pod_ip = ""
        self.devices: dict[str, list[int]] = {}
        self.volumes: dict[str, Path] = {}
        self.retry_at = 0.0
        self.start_time = time.time()
        self.phase = "Pending"
        self.reason = ""
        self.message = ""
        self.terminal = False
        self.kill_at: float | None = None
        self.deleted = False  # removed from the apiserver: the runner can go
        self.restored_terminal = False
        self.conditions: list[Obj] = list((pod.get("status") or {}).get("conditions") or [])
        self.last_sent: Obj | None = None
        self._restore(pod.get("status") or {})
        if self.restored_terminal:
            self._release()

    # ---- lifecycle inputs -----------------------------------------------------------------
    def _restore(self, status: Mapping[str, Any]) -> None:
        """A pod this node ran before an agent restart: its processes are gone (the agent kills
        them when it stops), so running containers count as terminated, as kubelet reports
        containers it cannot find."""
        if status.get("startTime"):
            with contextlib.suppress(ValueError):
                import datetime as dt

                self.start_time = dt.datetime.fromisoformat(status["startTime"]).timestamp()
        if status.get("phase") in ("Succeeded", "Failed"):
            self.phase, self.terminal, self.restored_terminal = status["phase"], True, True
            return
        known = {
            s["name"]: s
            for s in [
                *(status.get("initContainerStatuses") or []),
                *(status.get("containerStatuses") or []),
            ]
        }
        for c in [*self.inits, *self.apps]:
            s = known.get(c.name)
            if not s:
                continue
            c.restart_count = int(s.get("restartCount", 0))
            state = s.get("state") or {}
            term = state.get("terminated")
            if term:
                code = int(term.get("exitCode", 1))
                c.state = "terminated"
                c.terminated = Terminated(
                    code,
                    term.get("reason") or "Error",
                    None,
                    time.time(),
                    term.get("message") or "",
                )
            elif state.get("running"):
                gone = Terminated(
                    137,
                    "ContainerStatusUnknown",
                    None,
                    time.time(),
                    "the node agent restarted; the container was lost",
                )
                c.state, c.terminated = "terminated", gone

    def update(self, pod: Obj) -> None:
        self.pod = pod
        meta = pod["metadata"]
        if meta.get("deletionTimestamp") and self.kill_at is None:
            grace = float(meta.get("deletionGracePeriodSeconds") or 0)
            self.begin_termination(grace)

    def begin_termination(self, grace: float) -> None:
        self.kill_at = time.time() + grace
        for r in self.running.values():
            r.proc.term()

    def vanished(self) -> None:
        """Deleted in the apiserver without us (force delete): kill now."""
        self.deleted = True
        if self.kill_at is None:
            self.begin_termination(0)

    def shutdown(self) -> None:
        """The agent is stopping: SIGTERM now, SIGKILL by `kill_all()` after a short wait."""
        for r in self.running.values():
            r.proc.term()

    def kill_all(self) -> None:
        for r in self.running.values():
            r.proc.kill_all()
        for root in (self.ctx.cgroup_root, self.ctx.memcg_root):
            if root:
                runtime.remove_cgroup_tree(root / self.uid, timeout=1.0)

    @property
    def hostname(self) -> str:
        """spec.hostname if set, else the pod name (kubelet's rule)."""
        return str(self.pod["spec"].get("hostname") or self.name)

    @property
    def alive(self) -> bool:
        return any(r.proc.poll() is None for r in self.running.values())

    # ---- the pod worker -----------------------------------------------------------------
    def step(self, now: float) -> None:
        self._reap(now)
        if self.kill_at is not None:
            self._terminate(now)
            return
        if self.terminal:
            return
        if not self.sandbox:
            if now < self.retry_at:
                return
            self._setup(now)
            if not self.sandbox:
                return
        self._probes(now)
        if self._run_inits(now):
            self._run_apps(now)
        self._update_phase(now)

    def _setup(self, now: float) -> None:
        try:
            total, per = pod_gpu_plan(self.pod["spec"])
            try:
                devices = self.ctx.gpus.allocate(self.uid, total)
            except AllocationError as e:
                self._fail("UnexpectedAdmissionError", f"Allocate failed: {e}")
                return
            self.devices = split_devices(devices, self.pod["spec"], per)
            self.pod_ip = self.ctx.ips.allocate(self.uid)
            self.ctx.mark_dirty()
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "termination").mkdir(exist_ok=True)
            self.volumes = materialise(
                self._pod_with_ips(), self.dir, ApiSources(self.ctx.kube, self.pod)
            )
        except (VolumeError, KubeError, OSError) as e:
            self._waiting_all("ContainerCreating", f"MountVolume.SetUp failed: {e}")
            self.retry_at = now + SETUP_RETRY
            return
        self.sandbox = True
        for c in self.apps:
            if c.state == "waiting" and c.waiting_message.startswith("MountVolume"):
                c.waiting_message = ""

    def _fail(self, reason: str, message: str) -> None:
        self.phase, self.reason, self.message, self.terminal = "Failed", reason, message, True
        self._release()

    def _waiting_all(self, reason: str, message: str) -> None:
        for c in [*self.inits, *self.apps]:
            if c.state == "waiting":
                c.waiting_reason, c.waiting_message = reason, message

    def _pod_with_ips(self) -> Obj:
        status = {
            **(self.pod.get("status") or {}),
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "hostIP": self.ctx.node.ip,
            "hostIPs": [{"ip": self.ctx.node.ip}],
        }
        return {**self.pod, "status": status}

    def _from_image(self, name: str) -> bool:
        annotations = self.pod["metadata"].get("annotations") or {}
        return self.ctx.image_store is not None and images.runs_from_image(
            self.images[name], annotations, self.ctx.image_registries
        )

    def _pulled(self, c: Container, now: float) -> images.Image | None:
        """The container's image once pulled; meanwhile its waiting state says why not (as
        kubelet: ContainerCreating while pulling, ErrImagePull when a pull fails, then
        ImagePullBackOff until the next attempt)."""
        assert self.ctx.image_store is not None
        assert self.ctx.pullers is not None
        pull = self.pulls.setdefault(c.name, Pull())
        if pull.image is not None:
            return pull.image
        ref = self.images[c.name]
        if pull.future is None:
            if now < pull.retry_at:
                c.waiting_reason, c.waiting_message = (
                    "ImagePullBackOff",
                    f'Back-off pulling image "{ref}": {pull.error}',
                )
                c.backoff_until = pull.retry_at
                return None
            policy = images.pull_policy(self.specs[c.name]) if ref else "IfNotPresent"
            pull.future = self.ctx.pullers.submit(self.ctx.image_store.pull, ref, policy)
            pull.future.add_done_callback(lambda _: self.ctx.mark_dirty())
        if not pull.future.done():
            c.waiting_reason, c.waiting_message = "ContainerCreating", f'Pulling image "{ref}"'
            c.backoff_until = now + 0.2
            return None
        try:
            pull.image = pull.future.result()
        except Exception as e:  # every failure of a pull is ErrImagePull
            pull.failures += 1
            pull.error = str(e)
            pull.retry_at = now + images.pull_backoff(pull.failures)
            c.waiting_reason, c.waiting_message = "ErrImagePull", str(e)
            c.backoff_until = now + 1.0  # reported once, then ImagePullBackOff
            log.warning("pod %s/%s: pull of %s failed: %s", self.ns, self.name, ref, e)
            return None
        finally:
            pull.future = None if pull.image is None else pull.future
        log.info("pod %s/%s: image %s at %s", self.ns, self.name, ref, pull.image.rootfs)
        return pull.image

    def _image_run(
        self, name: str, image: images.Image, base: dict[str, str]
    ) -> tuple[runtime.ImageRun, dict[str, str]]:
        """How container `name` runs from `image`, and its environment before the pod's own
        variables (the image's, then the runtime's: never this machine's PATH or HOME)."""
        spec = self.specs[name]
        etc = image.rootfs / "etc"
        identity = images.resolve_identity(
            self.pod["spec"],
            spec,
            image.config.user,
            _read(etc / "passwd"),
            _read(etc / "group"),
        )
        fs_group = (self.pod["spec"].get("securityContext") or {}).get("fsGroup")
        if not self.fs_group_applied:
            for vol in self.pod["spec"].get("volumes") or []:
                if "hostPath" in vol or vol["name"] not in self.volumes:
                    continue
                if "emptyDir" in vol:
                    self.volumes[vol["name"]].chmod(0o777)  # kubelet's emptyDir: anyone writes
                if fs_group is not None:
                    apply_fs_group(self.volumes[vol["name"]], int(fs_group), "emptyDir" in vol)
                elif "projected" in vol and (uid := images.pod_user(self.pod["spec"])) is not None:
                    # kubelet: without fsGroup, a projected token (mode 0600) belongs to the
                    # user every container runs as, so that a non-root process can read it
                    apply_owner(self.volumes[vol["name"]], uid)
            self.fs_group_applied = True
        runtime_env = {k: v for k, v in base.items() if k not in _HOST_ONLY}
        run = runtime.ImageRun(
            lower=image.rootfs,
            state=self.dir / "containers" / name,
            identity=identity,
            workdir=str(spec.get("workingDir") or image.config.working_dir or "/"),
            read_only=images.read_only_root(spec),
            no_new_privs=(spec.get("securityContext") or {}).get("allowPrivilegeEscalation")
            is False,
        )
        return run, images.container_env(image.config, runtime_env, identity)

    def _pod_files(self) -> list[Mount]:
        """The files kubelet manages in every container of an image: /etc/hosts (the pod's
        hostname at its IP), /etc/hostname, /etc/resolv.conf (the node's)."""
        hosts = self.dir / "etc-hosts"
        hosts.write_text(etc_hosts(self.pod_ip, self.hostname))
        hostname = self.dir / "etc-hostname"
        hostname.write_text(self.hostname + "\n")
        resolv = self.dir / "etc-resolv.conf"
        resolv.write_text(_read(Path("/etc/resolv.conf")))
        for f in (hosts, hostname, resolv):
            f.chmod(0o644)
        return [
            Mount(hosts, "/etc/hosts", read_only=False, is_file=True),
            Mount(hostname, "/etc/hostname", read_only=False, is_file=True),
            Mount(resolv, "/etc/resolv.conf", read_only=False, is_file=True),
        ]

    def _start(self, c: Container, now: float) -> None:
        spec = self.specs[c.name]
        image: images.Image | None = None
        if self._from_image(c.name):
            image = self._pulled(c, now)
            if image is None:
                return
        sources = ApiSources(self.ctx.kube, self.pod)
        devs = visible_devices(self.devices.get(c.name, []))
        base = {
            **self.ctx.base_env,
            "HOSTNAME": self.hostname,
            "POD_IP": self.pod_ip,
            "CUDA_VISIBLE_DEVICES": devs,
            "NVIDIA_VISIBLE_DEVICES": devs or "void",
            "ACCORDION_PROCESS_NODE": self.ctx.node.name,
            "ACCORDION_NODE_KEY": self.ctx.node_key,
            "ACCORDION_POD_UID": self.uid,
        }
        term_file = self.dir / "termination" / c.name
        run_image: runtime.ImageRun | None = None
        try:
            if image is not None:
                run_image, base = self._image_run(c.name, image, base)
            env = resolve_env(
                spec,
                self._pod_with_ips(),
                sources.text("secrets"),
                sources.text("configmaps"),
                base,
                self.ctx.node.resources(),
            )
            if image is not None:
                argv = images.image_command(spec, image.config, env)
            else:
                argv = command_line(spec, env)
            mounts = mounts_for(spec, self.volumes, term_file)
            if run_image is not None:
                mounts = [*mounts, *self._pod_files()]
            elif self.ctx.isolate:
                # kubelet manages /etc/hosts so the pod's hostname resolves to its own IP
                # (Gloo, MPI and friends look their hostname up to pick an address).
                hosts = self.dir / "etc-hosts"
                hosts.write_text(etc_hosts(self.pod_ip, self.hostname))
                mounts = [*mounts, Mount(hosts, "/etc/hosts", read_only=False, is_file=True)]
            if self.ctx.isolate and run_image is None:
                mounts = runtime.restore_shadowed(mounts, self.ctx.protected)
            if run_image is None and (hidden := runtime.shadowing(mounts, self.ctx.protected)):
                raise VolumeError(
                    f"on a process node (no own root filesystem) these mountPaths would hide "
                    f"what the process needs: {hidden}; mount elsewhere"
                )
        except (EnvError, VolumeError, KubeError) as e:
            c.state, c.waiting_reason, c.waiting_message = (
                "waiting",
                "CreateContainerConfigError",
                str(e),
            )
            c.backoff_until = now + SETUP_RETRY
            return
        term_file.write_bytes(b"")
        if run_image is not None:
            term_file.chmod(0o666)  # written by the container's user
        cgroup = self.ctx.cgroup_root / self.uid / c.name if self.ctx.cgroup_root else None
        limit = ((spec.get("resources") or {}).get("limits") or {}).get("memory")
        memory = None
        if limit and self.ctx.memcg_root:
            memory = (self.ctx.memcg_root / self.uid / c.name, int(parse_quantity(limit)))
        try:
            proc = runtime.spawn(
                argv,
                env,
                spec.get("workingDir", ""),
                mounts,
                self.hostname,
                self.dir / f"{c.name}.log",
                cgroup,
                self.ctx.isolate,
                memory,
                run_image,
            )
        except (OSError, ValueError) as e:
            # ValueError: an argument or environment value the OS cannot take (a NUL byte);
            # kubelet reports that as CreateContainerError too, and backs off
            c.state, c.waiting_reason, c.waiting_message = "waiting", "CreateContainerError", str(e)
            c.backoff_until = now + SETUP_RETRY
            return
        if c.terminated is not None or c.last is not None:
            if c.terminated is not None:
                c.last = c.terminated
            c.restart_count += 1
        c.state, c.terminated, c.started_at = "running", None, proc.started
        c.waiting_reason = c.waiting_message = ""
        c.container_id = f"process://{self.ctx.node.name}/{proc.pid}"
        run = Running(proc, env, spec, identity=run_image.identity if run_image else None)
        if spec.get("readinessProbe"):
            p = spec["readinessProbe"]
            run.readiness = ProbeState(p, now + float(p.get("initialDelaySeconds", 0)))
        if spec.get("livenessProbe"):
            p = spec["livenessProbe"]
            run.liveness = ProbeState(p, now + float(p.get("initialDelaySeconds", 0)))
        c.ready = not c.init and run.readiness is None
        self.running[c.name] = run
        self.ctx.pids.setdefault(self.uid, {})[c.name] = proc.pid
        self.ctx.mark_dirty()

    def _reap(self, now: float) -> None:
        for name, r in list(self.running.items()):
            rc = r.proc.poll()
            if rc is None:
                continue
            r.proc.kill_all()  # the container's other processes die with its main process
            c = self._container(name)
            code, reason, sig = exit_reason(rc, oom=rc != 0 and r.proc.oom_killed())
            term_file = self.dir / "termination" / name
            msg = runtime.read_termination_message(term_file)
            if (
                not msg
                and code != 0
                and r.spec.get("terminationMessagePolicy") == ("FallbackToLogsOnError")
            ):
                msg = runtime.log_tail(self.dir / f"{name}.log")
            if r.killed_by_liveness and not msg:
                msg = "liveness probe failed"
            c.state, c.ready = "terminated", False
            c.terminated = Terminated(code, reason, c.started_at, now, msg, sig)
            del self.running[name]
            self.ctx.pids.get(self.uid, {}).pop(name, None)
            self.ctx.mark_dirty()

    def _container(self, name: str) -> Container:
        return next(c for c in [*self.inits, *self.apps] if c.name == name)

    def _maybe_restart(self, c: Container, now: float) -> bool:
        """Handle a terminated container; True when it stays terminated for good."""
        assert c.terminated is not None
        if not decide_restart(self.policy, c.terminated.exit_code, c.init):
            return True
        ran = now - (c.terminated.started_at or now)
        if ran > 2 * self.ctx.backoff_cap:
            self.backoff_n[c.name] = 0
        n = self.backoff_n.get(c.name, 0)
        delay = backoff_delay(n, self.ctx.backoff_base, self.ctx.backoff_cap)
        self.backoff_n[c.name] = n + 1
        c.last, c.terminated, c.state = c.terminated, None, "waiting"
        c.backoff_until = now + delay
        if delay > 0:
            c.waiting_reason = "CrashLoopBackOff"
            c.waiting_message = (
                f"back-off {delay:g}s restarting failed container={c.name} pod={self.name}"
                f"_{self.ns}({self.uid})"
            )
        return False

    def _due(self, c: Container, now: float) -> bool:
        return c.state == "waiting" and (c.backoff_until is None or now >= c.backoff_until)

    def _run_inits(self, now: float) -> bool:
        """Advance the init containers in order; True once all have succeeded."""
        for c in self.inits:
            if c.state == "running":
                return False
            if c.state == "terminated" and c.terminated:
                if c.terminated.exit_code == 0:
                    continue
                if self._maybe_restart(c, now):
                    return False  # Never: the pod fails (compute_phase)
            if self._due(c, now):
                self._start(c, now)
            return False
        return True

    def _run_apps(self, now: float) -> None:
        for c in self.apps:
            if c.state == "terminated" and c.terminated is not None:
                self._maybe_restart(c, now)
            if self._due(c, now):
                if c.waiting_reason == "PodInitializing":
                    c.waiting_reason = "ContainerCreating"
                self._start(c, now)

    def _probes(self, now: float) -> None:
        for name, r in self.running.items():
            c = self._container(name)
            for kind, st in (("readiness", r.readiness), ("liveness", r.liveness)):
                if st is None:
                    continue
                fut = r.inflight.get(kind)
                if fut is not None and fut.done():
                    st.record(bool(fut.result()))
                    del r.inflight[kind]
                    st.next_at = now + st.period
                    if kind == "readiness" and st.result is not None:
                        c.ready = st.result
                    if kind == "liveness" and st.result is False and not r.killed_by_liveness:
                        r.killed_by_liveness = True
                        r.proc.kill_all()
                elif fut is None and now >= st.next_at:
                    r.inflight[kind] = self.ctx.probes.submit(
                        run_probe,
                        st.spec,
                        r.spec,
                        self.pod_ip,
                        r.proc.pid,
                        r.env,
                        self.ctx.isolate,
                        r.identity,
                    )

    def _update_phase(self, now: float) -> None:
        phase = compute_phase(self.policy, self.inits, self.apps)
        if phase in ("Succeeded", "Failed"):
            if self.alive:  # e.g. an init container failed under Never while nothing else runs
                return
            self.terminal = True
            self._release()
        self.phase = phase

    def _release(self) -> None:
        """A finished pod holds no GPU and no address (its podIP stays in its status)."""
        self.ctx.gpus.release(self.uid)
        self.ctx.ips.release(self.uid)
        self.ctx.pids.pop(self.uid, None)
        self.ctx.mark_dirty()
        for root in (self.ctx.cgroup_root, self.ctx.memcg_root):
            if root:
                runtime.remove_cgroup_tree(root / self.uid, timeout=0.5)
        shutil.rmtree(self.dir / "volumes", ignore_errors=True)

    def _terminate(self, now: float) -> None:
        assert self.kill_at is not None
        if self.alive and now >= self.kill_at:
            for r in self.running.values():
                r.proc.kill_all()
        if self.alive:
            return
        self._release()
        if not self.deleted:
            body = {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}}
            try:
                self.ctx.kube.delete(f"/api/v1/namespaces/{self.ns}/pods/{self.name}", body)
            except KubeError as e:
                log.warning("deleting pod %s/%s: %s", self.ns, self.name, e)
                self.kill_at = now + 1  # try again in a second
                return
            self.deleted = True

    # ---- status ---------------------------------------------------------------------------
    def status_body(self, now: float) -> Obj | None:
        """The status to publish, or None when it has not changed since the last patch."""
        if self.kill_at is not None or self.restored_terminal:
            return None
        self.conditions = compute_conditions(
            self.phase, self.sandbox, self.inits, self.apps, self.conditions, now
        )
        body = build_status(
            PodStatusInput(
                phase=self.phase,
                pod_ip=self.pod_ip,
                host_ip=self.ctx.node.ip,
                start_time=self.start_time,
                conditions=self.conditions,
                inits=self.inits,
                apps=self.apps,
                images=self.images,
                message=self.message,
                reason=self.reason,
            )
        )
        if body == self.last_sent:
            return None
        return body

    def sent(self, body: Obj) -> None:
        self.last_sent = body
