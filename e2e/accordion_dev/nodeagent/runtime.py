"""Containers as local processes: a private mount namespace per container, a cgroup to find
every process it started, and signals the way a container runtime sends them.

Each container starts as `unshare --mount --uts --propagation private -- sh -c WRAPPER argv...`.
The wrapper
- joins the container's cgroup, `/sys/fs/cgroup/unified/accordion/<node>-<hash of the agent's
  state dir>/<pod-uid>/<container>` (cgroup v2 without controllers: it finds every process of
  the container for `cgroup.kill`, daemons that left the process group included), and, with a
  memory limit, a cgroup-v1 memory cgroup with that limit (the kernel OOM-kills, the agent
  reports OOMKilled);
- sets the hostname to the pod name;
- bind-mounts the pod's volume directories at the mountPaths (staged first, see
  `wrapper_script`), creating a missing mount point on the host (an empty directory, or an
  empty file for file mounts such as /dev/termination-log);
- changes to workingDir and execs the command under `setpriv --pdeathsig KILL`, so a container
  dies with the agent even if the agent is SIGKILLed.
SIGTERM goes to the container's main process only (like a runtime's PID 1); SIGKILL to every
process of its cgroup.

A container that runs from an image (images.py) gets `image_wrapper_script` instead: an overlay
of the image's root filesystem with a fresh writable layer, /proc, /sys (read-only), a minimal
/dev, the volumes at their mountPaths inside it, readOnlyRootFilesystem as a read-only remount,
then `enter.py` chroots, takes the container's user and execs its command.

Without root (no unshare/mount) containers run unisolated: volumes are then not at their
mountPaths; the env var ACCORDION_VOLUME_MAP holds a JSON object mountPath -> host directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from accordion_dev.nodeagent.images import Identity, secure_join
from accordion_dev.nodeagent.volumes import Mount

ENTER = Path(__file__).with_name("enter.py")
#: device nodes a container's /dev gets (bind-mounted from the host), as runc's defaults
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

CGROUP_ROOT = Path("/sys/fs/cgroup/unified/accordion")


def can_isolate() -> bool:
    return os.geteuid() == 0 and all(shutil.which(b) for b in ("unshare", "mount", "setpriv"))


def cgroup_ok() -> bool:
    try:
        CGROUP_ROOT.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return (CGROUP_ROOT / "cgroup.procs").exists()


#: where a container's mount sources are staged (a tmpfs private to its mount namespace), in
#: order of preference: the first that no mountPath of the container covers
STAGE_CANDIDATES = ("/run/accordion-stage", "/var/lib/accordion-stage", "/opt/accordion-stage")


def _covers(target: str, path: str) -> bool:
    t = target.rstrip("/") or "/"
    return t == "/" or path == t or path.startswith(t + "/")


def stage_dir(mounts: Sequence[Mount]) -> str:
    for cand in STAGE_CANDIDATES:
        if not any(_covers(m.target, cand) for m in mounts):
            return cand
    raise ValueError("the container's mountPaths cover every staging directory")


def shadowing(mounts: Sequence[Mount], protected: Sequence[Path]) -> list[str]:
    """mountPaths that would hide something the process needs (the venv, the python)."""
    restored = {m.target for m in mounts if m.source == Path(m.target)}
    return [
        f"{m.target} hides {p}"
        for m in mounts
        for p in protected
        if _covers(m.target, str(p)) and str(p) not in restored
    ]


def restore_shadowed(mounts: Sequence[Mount], protected: Sequence[Path]) -> list[Mount]:
    """`mounts` plus, after them, a bind of every protected path (the checkout, the Python) that
    a mountPath covers: an emptyDir at /tmp must not hide a checkout that lives under /tmp.
    The wrapper stages every source before it mounts any target, so the restore still sees
    the original directory."""
    restores = [
        Mount(p, str(p), read_only=False, is_file=False)
        for p in protected
        if any(_covers(m.target, str(p)) and m.target.rstrip("/") != str(p) for m in mounts)
    ]
    return [*mounts, *restores]


def wrapper_script(
    mounts: Sequence[Mount],
    workdir: str,
    hostname: str,
    cgroup: Path | None,
    isolate: bool,
    memcg: Path | None = None,
) -> str:
    """The shell that becomes the container. Sources are first bind-mounted into a staging
    tmpfs, then from there onto the targets: a mount over an ancestor of a later source (an
    emptyDir at /tmp while the pod's volumes live under /tmp) must not hide that source."""
    q = shlex.quote
    lines = ["set -e"]
    for cg in (cgroup, memcg):
        if cg is not None:
            lines.append(f"echo $$ > {q(str(cg / 'cgroup.procs'))}")
    if isolate:
        lines.append(f"hostname {q(hostname)}")
        stage = stage_dir(mounts)
        lines += [f"mkdir -p {stage}", f"mount -t tmpfs -o size=64k,mode=700 stage {stage}"]
        for i, m in enumerate(mounts):
            staged = f"{stage}/{i}"
            lines.append(f": > {staged}" if m.is_file else f"mkdir {staged}")
            lines.append(f"mount --bind {q(str(m.source))} {staged}")
        for i, m in enumerate(mounts):
            t = q(m.target)
            if m.is_file:
                lines.append(f'[ -e {t} ] || {{ mkdir -p "$(dirname {t})"; : > {t}; }}')
            else:
                lines.append(f"mkdir -p {t}")
            lines.append(f"mount --bind {stage}/{i} {t}")
            if m.read_only:
                lines.append(f"mount -o remount,bind,ro {t}")
    if workdir:
        lines.append(f"mkdir -p {q(workdir)} && cd {q(workdir)}")
    lines.append('exec setpriv --pdeathsig KILL -- "$@"' if isolate else 'exec "$@"')
    return "\n".join(lines)


@dataclass(frozen=True)
class ImageRun:
    """How a container runs from an image: `lower` is the unpacked image (shared, never
    written), `state` the container instance's own directory (its overlay's upper and work
    directories and the mount point of its root)."""

    lower: Path
    state: Path
    identity: Identity
    workdir: str
    read_only: bool
    #: securityContext.allowPrivilegeEscalation: false (setuid binaries gain nothing)
    no_new_privs: bool = False

    @property
    def root(self) -> Path:
        return self.state / "root"

    def enter_argv(self, argv: Sequence[str]) -> list[str]:
        ident = self.identity
        groups = ",".join(str(g) for g in ident.groups)
        return [
            sys.executable, "-I", "-S", str(ENTER), str(self.root), str(ident.uid),
            str(ident.gid), groups, self.workdir, "1" if self.no_new_privs else "0", "--", *argv,
        ]  # fmt: skip


def image_wrapper_script(
    mounts: Sequence[Mount],
    image: ImageRun,
    hostname: str,
    cgroup: Path | None,
    memcg: Path | None = None,
) -> str:
    """The shell that becomes a container running from an image (in its own mount and UTS
    namespaces). Mount targets are resolved inside the image (`secure_join`: its symlinks,
    such as /var/run -> /run, never lead to the host's directories)."""
    q = shlex.quote
    root = image.root

    def inside(path: str) -> str:
        return q(str(secure_join(image.lower, path)).replace(str(image.lower), str(root), 1))

    lines = ["set -e"]
    for cg in (cgroup, memcg):
        if cg is not None:
            lines.append(f"echo $$ > {q(str(cg / 'cgroup.procs'))}")
    lines.append(f"hostname {q(hostname)}")
    upper, work = image.state / "upper", image.state / "work"
    lines.append(
        f"mount -t overlay overlay -o lowerdir={q(str(image.lower))},upperdir={q(str(upper))},"
        f"workdir={q(str(work))} {q(str(root))}"
    )
    dev = q(str(root / "dev"))
    lines += [
        f"mkdir -p {q(str(root / 'proc'))} {q(str(root / 'sys'))} {dev}",
        f"mount -t proc -o nosuid,nodev,noexec proc {q(str(root / 'proc'))}",
        f"mount --rbind /sys {q(str(root / 'sys'))}",
        f"mount -o remount,bind,ro {q(str(root / 'sys'))}",
        f"mount -t tmpfs -o nosuid,mode=755,size=65536k dev {dev}",
    ]
    for d in DEVICES:
        lines.append(f": > {dev}/{d} && mount --bind /dev/{d} {dev}/{d}")
    lines += [
        f"mkdir {dev}/pts {dev}/shm",
        f"mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts {dev}/pts",
        f"ln -s pts/ptmx {dev}/ptmx",
        f"mount -t tmpfs -o nosuid,nodev,mode=1777 shm {dev}/shm",
        f"ln -s /proc/self/fd {dev}/fd",
        f"ln -s /proc/self/fd/0 {dev}/stdin",
        f"ln -s /proc/self/fd/1 {dev}/stdout",
        f"ln -s /proc/self/fd/2 {dev}/stderr",
    ]
    for m in mounts:
        t = inside(m.target)
        if m.is_file:
            lines.append(f"if [ -L {t} ]; then rm -f {t}; fi")  # a link would lead elsewhere
            lines.append(f'[ -e {t} ] || {{ mkdir -p "$(dirname {t})"; : > {t}; }}')
        else:
            lines.append(f"mkdir -p {t}")
        lines.append(f"mount --bind {q(str(m.source))} {t}")
        if m.read_only:
            lines.append(f"mount -o remount,bind,ro {t}")
    lines.append(f"mkdir -p {inside(image.workdir or '/')}")
    if image.read_only:
        lines.append(f"mount -o remount,ro {q(str(root))}")
    lines.append('exec "$@"')
    return "\n".join(lines)


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    cgroup: Path | None
    started: float
    memcg: Path | None = None

    def oom_killed(self) -> bool:
        """Whether the kernel OOM-killed a process of this container (memory limit hit)."""
        if self.memcg is None:
            return False
        try:
            text = (self.memcg / "memory.oom_control").read_text()
        except OSError:
            return False
        counts = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        return int(counts.get("oom_kill", "0")) > 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def term(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)

    def kill_all(self) -> None:
        kill_cgroup(self.cgroup)
        kill_cgroup(self.memcg)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    workdir: str,
    mounts: Sequence[Mount],
    hostname: str,
    log: Path,
    cgroup: Path | None,
    isolate: bool,
    memory: tuple[Path, int] | None = None,
    image: ImageRun | None = None,
) -> Process:
    """Start a container. `memory` = (memory cgroup, limit in bytes) puts it under a limit that
    the kernel enforces with its OOM killer; `image`: run it from an image's root filesystem
    (needs `isolate`)."""
    if cgroup is not None:
        # A leftover of an earlier instance is killed first: a cgroup is one container instance.
        kill_cgroup(cgroup)
        cgroup.mkdir(parents=True, exist_ok=True)
    memcg = None
    if memory is not None:
        memcg, limit = memory
        remove_cgroup_tree(memcg, timeout=1.0)  # a fresh one: its OOM counter starts at 0
        memcg.mkdir(parents=True, exist_ok=True)
        (memcg / "memory.limit_in_bytes").write_text(str(limit))
    if image is not None:
        if not isolate:
            raise OSError("running an image needs root (mount namespaces, overlayfs, chroot)")
        shutil.rmtree(image.state, ignore_errors=True)  # a fresh writable layer per instance
        for d in ("upper", "work", "root"):
            (image.state / d).mkdir(parents=True)
        script = image_wrapper_script(mounts, image, hostname, cgroup, memcg)
        argv = image.enter_argv(argv)
    else:
        script = wrapper_script(mounts, workdir, hostname, cgroup, isolate, memcg)
    if isolate:
        cmd = ["unshare", "--mount", "--uts", "--propagation", "private", "--"]
    else:
        cmd = []
        env = {**env, "ACCORDION_VOLUME_MAP": json.dumps({m.target: str(m.source) for m in mounts})}
    cmd += ["/bin/sh", "-c", script, "container", *argv]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            close_fds=True,
        )
    return Process(popen, cgroup, time.time(), memcg)


def memory_cgroup_root() -> Path | None:
    """`accordion/` under the agent's own cgroup-v1 memory cgroup, if it can be written: memory
    limits and OOMKilled. (cgroup v2 memory would work the same way; this machine has v1.)"""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        rel = next(ln.split(":", 2)[2] for ln in lines if ln.split(":")[1] == "memory")
    except (OSError, StopIteration, IndexError):
        return None
    root = Path("/sys/fs/cgroup/memory") / rel.lstrip("/") / "accordion"
    try:
        root.mkdir(exist_ok=True)
    except OSError:
        return None
    return root if (root / "memory.limit_in_bytes").exists() else None


def cgroup_pids(cgroup: Path) -> list[int]:
    try:
        return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def kill_cgroup(cgroup: Path | None) -> None:
    if cgroup is None or not cgroup.exists():
        return
    try:
        (cgroup / "cgroup.kill").write_text("1")
    except OSError:
        for pid in cgroup_pids(cgroup):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def remove_cgroup_tree(root: Path, timeout: float = 3.0) -> None:
    """Kill everything under `root` and remove the (then empty) cgroup directories."""
    if not root.exists():
        return
    dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for d in [*dirs, root]:
        kill_cgroup(d)
    deadline = time.monotonic() + timeout
    for d in [*dirs, root]:
        while True:
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)


def read_termination_message(path: Path, limit: int = 4096) -> str:
    try:
        with path.open("rb") as f:
            return f.read(limit).decode(errors="replace").strip()
    except OSError:
        return ""


def log_tail(path: Path, lines: int = 80, limit: int = 2048) -> str:
    """kubelet's FallbackToLogsOnError: the last lines of the log, at most 2 KiB."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    tail = "\n".join(text.splitlines()[-lines:])
    return tail[-limit:]


def exec_in(
    pid: int,
    argv: Sequence[str],
    env: Mapping[str, str],
    timeout: float,
    isolate: bool,
    identity: Identity | None = None,
) -> int:
    """Run `argv` in the mount/UTS namespace of the container whose main process is `pid`
    (exec probes); with `identity` (a container of an image) also in its root directory,
    working directory and user. Returns the exit code, or -1 on timeout."""
    cmd = list(argv)
    if isolate:
        ns = ["nsenter", "--target", str(pid), "--mount", "--uts"]
        if identity is not None:
            ns += ["--root", "--wd", "-S", str(identity.uid), "-G", str(identity.gid)]
        cmd = [*ns, "--", *argv]
    try:
        return subprocess.run(
            cmd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        ).returncode
    except subprocess.TimeoutExpired:
        return -1
    except OSError:
        return 127
