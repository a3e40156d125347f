"""In-cluster halves of docs/contract.md: `worker`, `launcher`, and their helpers.

worker   stage data in, then serve SSH (Debian's OpenSSH sshd, run as the pod's user) on
         `$ACCORDION_POD_IP:$ACCORDION_SSH_PORT` with the per-run key, plus `/metrics`.
launcher `horovodrun` in elastic mode; a thread polls the apiserver for the run's Ready worker
         pods and rewrites the hosts file that the discovery script prints; rank 0's progress
         lines become merge-patches of `status.training` (progress.py). A launcher pod that
         hosts worker 0 (ACCORDION_WORKER_INDEX set) runs `worker` as a child as well.

Both also run outside a cluster for tests: `ACCORDION_HOSTS` (comma-separated addresses) replaces
the apiserver as the host source, and the SSH port/addresses are plain loopback addresses.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import Reason, TrainerError, fail, parse_error_line
from .gpus import POD_GPUS_ENV, pod_gpu_ids, slots_per_worker
from .horovod_run import HOSTS_FILE_ENV, SSH_EVERY_HOST_ENV
from .progress import Reporter, parse_progress
from .usercmd import model_command
from .warm import DATA_READY, WARM_DIR_ENV, start_pool, usable_dir, wait_prepared

#: The worker's credentials that its training processes get (through sshd's SetEnv): the results
#: store's keys, for results and checkpoints (AWS_* only outside the operator).
RESULTS_SECRET_ENV = (
    "ACCORDION_RESULTS_ACCESS_KEY_ID",
    "ACCORDION_RESULTS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
#: Variables never forwarded to workers: horovodrun puts the launcher's environment on the ssh
#: command line, where every process listing shows it. The data store's keys serve the worker's
#: own stage-in only.
SECRET_ENV = (
    *RESULTS_SECRET_ENV,
    "ACCORDION_DATA_ACCESS_KEY_ID",
    "ACCORDION_DATA_SECRET_ACCESS_KEY",
)


#: What a worker's sshd session sets for the training processes (`cmd_worker`), and the
#: worker's index. horovodrun writes its own environment onto each ssh command line, after the
#: session's: a launcher pod that hosts worker 0 has these as that worker, and would hand its
#: own on to every other worker's processes (its pod name into their world report, its GPU ids),
#: so they are dropped.
WORKER_SESSION_ENV = (
    "PROMETHEUS_MULTIPROC_DIR",
    "ACCORDION_WORK_DIR",
    "ACCORDION_DATA_DIR",
    "ACCORDION_POD_NAME",
    "ACCORDION_WORKER_INDEX",
    POD_GPUS_ENV,
    WARM_DIR_ENV,
)


#: the longest one watch of the worker pods lasts (then the launcher lists them and watches again)
WATCH_TIMEOUT_S = 60
#: how often the launcher lists the pods while one is Running but its sshd does not answer yet
STARTING_POLL_S = 0.1
#: the most seconds a worker that is being deleted waits for its training processes to leave
#: the world before it ends their sessions (the pod's grace period is 30 s)
LEAVE_WAIT_S = 10.0
#: the most seconds a worker waits for its warm processes before it serves sshd anyway
WARM_WAIT_S = 120.0


def pod_ip(env: Mapping[str, str]) -> str:
    ip = env.get("ACCORDION_POD_IP") or env.get("POD_IP")
    if ip:
        return ip
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


# --- worker ------------------------------------------------------------------------------------

SSHD_CONFIG = """\
# Written by accordion_trainer worker; one sshd per worker pod, as the pod's user.
Port {port}
ListenAddress {addr}
HostKey {host_key}
AuthorizedKeysFile {authorized_keys}
PidFile {pid_file}
# Secret volumes are root-owned and group-readable; the key copies are checked by us instead.
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
PrintMotd no
PermitUserEnvironment no
AllowTcpForwarding no
X11Forwarding no
LogLevel {log_level}
# The training process started by the launcher reads these from its session environment:
# credentials never travel on the launcher's ssh command line.
{set_env}
"""


def sshd_set_env(values: Mapping[str, str]) -> str:
    """`SetEnv` line for sshd_config (values double-quoted; unsafe ones refused)."""
    parts = []
    for key, value in sorted(values.items()):
        if any(c in value for c in '"\n\r\\'):
            raise TrainerError(Reason.TrainingError, f"{key} has a character sshd cannot pass")
        parts.append(f'"{key}={value}"')
    return f"SetEnv {' '.join(parts)}" if parts else ""


def prepare_sshd(
    ssh_dir: Path, state: Path, addr: str, port: int, session_env: Mapping[str, str]
) -> Path:
    """Private copies of the keys, a fresh host key, and the sshd config; returns its path."""
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    state.chmod(0o700)
    auth_src = ssh_dir / "authorized_keys"
    if not auth_src.exists():
        auth_src = ssh_dir / "id_ed25519.pub"
    if not auth_src.exists():
        raise TrainerError(Reason.TrainingError, f"no authorized_keys in {ssh_dir}")
    auth = state / "authorized_keys"
    auth.write_text(auth_src.read_text())
    auth.chmod(0o600)
    host_key = state / "ssh_host_ed25519_key"
    if not host_key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
            check=True,
            capture_output=True,
        )
    config = state / "sshd_config"
    config.write_text(
        SSHD_CONFIG.format(
            port=port,
            addr=addr,
            host_key=host_key,
            authorized_keys=auth,
            pid_file=state / "sshd.pid",
            log_level="ERROR",
            set_env=sshd_set_env(session_env),
        )
    )
    config.chmod(0o600)
    return config


def sshd_binary() -> str:
    for cand in (shutil.which("sshd"), "/usr/sbin/sshd"):
        if cand and Path(cand).exists():
            return cand
    raise TrainerError(Reason.TrainingError, "sshd not found (install openssh-server)")


def fetch_model_object(cfg: Any, spec: dict[str, Any]) -> None:
    """`{"bucketObject": "bucket/key"}`: download the code archive next to the work dir."""
    from .config import S3Location
    from .staging import Store, classify, client_for

    ref = str(spec["bucketObject"]).removeprefix("s3://")
    bucket, _, key = ref.partition("/")
    loc = cfg.data or cfg.results
    if loc is None:
        raise TrainerError(Reason.ModelInvalid, "bucketObject model but no data/results endpoint")
    store: Store = "DATA" if cfg.data is not None else "RESULTS"
    client = client_for(S3Location(loc.endpoint, bucket, "", loc.secure), store=store)
    dest = cfg.model.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        client.fget_object(bucket, key, str(dest))
    except Exception as e:
        err = classify(e, f"s3://{bucket}/{key}")
        raise TrainerError(Reason.ModelInvalid, err.message) from e


def cmd_worker(a: argparse.Namespace) -> int:
    env = dict(os.environ)
    ip = pod_ip(env)
    env.setdefault("HOROVOD_HOSTNAME", ip)  # so the scratch dir matches the training process's
    from .config import default_scratch

    work = Path(env.get("ACCORDION_WORK_DIR") or default_scratch(env))
    # Before prometheus_client is imported: the training processes write here too.
    mp_dir = work / "metrics"
    shutil.rmtree(mp_dir, ignore_errors=True)
    mp_dir.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(mp_dir)
    os.environ.setdefault("ACCORDION_WORK_DIR", str(work))

    from . import metrics
    from .config import from_env

    cfg = from_env()
    gpu_ids = pod_gpu_ids(env)
    # The training processes, started now (they import TensorFlow while the data is staged)
    # and handed horovodrun's start later (warm.py): the built-in trainer only.
    warm_dir = work / "warm"
    warm: list[subprocess.Popen[bytes]] = []
    if model_command(env.get("ACCORDION_MODEL", "")) is None and usable_dir(warm_dir):
        os.environ["ACCORDION_DATA_DIR"] = str(cfg.data_dir)
        os.environ[POD_GPUS_ENV] = ",".join(gpu_ids)
        warm = start_pool(slots_per_worker(env), warm_dir)
    metrics_port = int(env.get("ACCORDION_METRICS_PORT", "0") or 0)
    if metrics_port:
        metrics.serve(metrics_port, addr=ip)
    model_spec = json.loads(env.get("ACCORDION_MODEL") or "{}")
    if isinstance(model_spec, dict) and model_spec.get("bucketObject"):
        fetch_model_object(cfg, model_spec)
    if cfg.data is not None:
        stage(cfg)
    if not a.skip_data_check and (cfg.model.builtin is not None):
        from .data import open_dir

        # unreadable data fails here, with its reason, before Ready (shards: headers only)
        open_dir(cfg.data_dir)
    if warm:
        (warm_dir / DATA_READY).touch()
        # Ready (sshd) once they are prepared: the running workers train on meanwhile, instead
        # of waiting in the reset for this pod's processes to get there
        wait_prepared(warm_dir, warm, WARM_WAIT_S)

    session_env = {
        "PROMETHEUS_MULTIPROC_DIR": str(mp_dir),
        "ACCORDION_WORK_DIR": str(work),
        "ACCORDION_DATA_DIR": str(cfg.data_dir),
        # each training process reports its pod in the world membership (worldPods); the
        # launcher's environment, which horovodrun puts on the ssh command line, has none
        **{k: env[k] for k in (*RESULTS_SECRET_ENV, "ACCORDION_POD_NAME") if env.get(k)},
        # one GPU per training process (gpus.py): an ssh session inherits none of the pod's env
        POD_GPUS_ENV: ",".join(gpu_ids),
        **({WARM_DIR_ENV: str(warm_dir)} if warm else {}),
    }
    ssh_dir = Path(env.get("ACCORDION_SSH_DIR", "/etc/accordion/ssh"))
    port = int(env.get("ACCORDION_SSH_PORT", "2222"))
    config = prepare_sshd(ssh_dir, work / "sshd", ip, port, session_env)
    if os.geteuid() == 0:  # root sshd insists on its privilege-separation directory
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    gpus = ",".join(gpu_ids) or "none"
    print(f"[worker] sshd on {ip}:{port}; data in {cfg.data_dir}; GPUs {gpus}", flush=True)
    proc = subprocess.Popen([sshd_binary(), "-D", "-e", "-f", str(config)])
    # when the pod could first serve the launcher (benchmarks/trainer_rescale's phases)
    print(f"ACCORDION_EVENT {json.dumps({'event': 'sshd', 'time': time.time()})}", flush=True)

    def stop(signum: int, _frame: Any) -> None:
        threading.Thread(target=leave, args=(proc, LEAVE_WAIT_S), daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    rc = proc.wait()
    return 0 if rc in (0, -signal.SIGTERM, 255) else rc


def leave(sshd: subprocess.Popen[bytes], wait_s: float) -> None:
    """The pod is going (SIGTERM): stop sshd once no training session is left, or after
    `wait_s`. The launcher drops a deleted pod from the hosts at once, and Horovod takes its
    training processes out of the world at their next commit (they then exit: "has been removed
    from elastic job"). Ending their sessions first (sshd's SIGTERM ends them) would instead
    break the other workers' collective mid-step: a failure, and a reset from the last commit."""
    import psutil

    end = time.monotonic() + wait_s
    with contextlib.suppress(psutil.NoSuchProcess):
        master = psutil.Process(sshd.pid)
        # each session is a child sshd of the listening one, until its command exits
        while master.children() and time.monotonic() < end:
            time.sleep(0.05)
    sshd.terminate()


def stage(cfg: Any) -> None:
    from .staging import client_for, stage_in

    assert cfg.data is not None
    client = client_for(cfg.data, store="DATA")
    stage_in(
        client, cfg.data.bucket, cfg.data.prefix, cfg.data_dir, log=lambda m: print(m, flush=True)
    )


def cmd_stage(_: argparse.Namespace) -> int:
    from .config import from_env

    cfg = from_env()
    if cfg.data is None:
        raise TrainerError(Reason.DataNotFound, "no ACCORDION_DATA_ENDPOINT/BUCKET configured")
    stage(cfg)
    from .data import open_dir
    from .shards import ShardedData

    ds = open_dir(cfg.data_dir)
    n_train = ds.n_train if isinstance(ds, ShardedData) else len(ds.x_train)
    print(f"[stage] {n_train} training / {len(ds.x_val)} validation samples", flush=True)
    return 0


# --- launcher ----------------------------------------------------------------------------------


def network_interface(ip: str, env: Mapping[str, str]) -> str | None:
    """The NIC that carries `ip` (Gloo and the rendezvous bind to it); loopback pods: `lo`."""
    if env.get("ACCORDION_NETWORK_INTERFACE"):
        return str(env["ACCORDION_NETWORK_INTERFACE"])
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == ip for a in addrs):
            return str(name)
    return "lo" if ip.startswith("127.") else None


SSH_WRAPPER = """#!/bin/sh
# horovodrun runs `ssh -o ... HOST [-p P] [-i F] CMD`; add our config (port, key, no known_hosts).
exec {ssh} -F {config} "$@"
"""

SSH_CLIENT_CONFIG = """\
Host *
  Port {port}
  IdentityFile {key}
  IdentitiesOnly yes
  BatchMode yes
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  LogLevel ERROR
  ConnectTimeout 5
  ServerAliveInterval 5
  ServerAliveCountMax 3
"""


def prepare_ssh_client(ssh_dir: Path, state: Path, port: int) -> Path:
    """A bin dir with an `ssh` wrapper using the per-run key (copied 0600: ssh refuses others)."""
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = state / "id_ed25519"
    key.write_text((ssh_dir / "id_ed25519").read_text())
    key.chmod(0o600)
    config = state / "ssh_config"
    config.write_text(SSH_CLIENT_CONFIG.format(port=port, key=key))
    bindir = state / "bin"
    bindir.mkdir(exist_ok=True)
    real = shutil.which("ssh") or "/usr/bin/ssh"
    wrapper = bindir / "ssh"
    wrapper.write_text(SSH_WRAPPER.format(ssh=real, config=config))
    wrapper.chmod(0o755)
    return bindir


class HostPoller:
    """Keeps `hosts_file` equal to the run's serving workers (`ip:slots` lines): lists them
    every `interval_s`, at once when `changes` (a watch of the pods) yields, and every
    `STARTING_POLL_S` while `starting()` says a worker pod is Running but not serving yet."""

    def __init__(
        self,
        hosts_file: Path,
        fetch: Callable[[], list[str]],
        interval_s: float,
        slots: int = 1,
        changes: Callable[[], Iterable[object]] | None = None,
        starting: Callable[[], bool] = lambda: False,
    ) -> None:
        self.hosts_file = hosts_file
        self.fetch = fetch
        self.interval_s = interval_s
        self.slots = slots
        self.changes = changes
        self.starting = starting
        self.hosts: list[str] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="host-poller", daemon=True)

    def poll_once(self) -> list[str]:
        from .standalone import write_hosts

        try:
            hosts = self.fetch()
        except Exception as e:  # keep the last known list; horovod keeps running meanwhile
            print(f"[launcher] host discovery failed: {e!r}", file=sys.stderr, flush=True)
            return self.hosts
        if hosts != self.hosts or not self.hosts_file.exists():
            print(f"[launcher] hosts: {', '.join(hosts) or '(none)'}", flush=True)
            write_hosts(self.hosts_file, hosts, self.slots)
            # when discovery saw the change (benchmarks/trainer_rescale's phases)
            event = {"event": "hosts", "hosts": hosts, "time": time.time()}
            print(f"ACCORDION_EVENT {json.dumps(event)}", flush=True)
            self.hosts = hosts
        return hosts

    def _loop(self) -> None:
        while True:
            wait = STARTING_POLL_S if self.starting() else self.interval_s
            self._wake.wait(wait)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.poll_once()

    def _watch(self) -> None:
        assert self.changes is not None
        while not self._stop.is_set():
            try:
                for _ in self.changes():  # a pod was added, turned Ready, or is going
                    self._wake.set()
            except Exception as e:  # the periodic list goes on meanwhile
                print(f"[launcher] pod watch failed: {e!r}", file=sys.stderr, flush=True)
                self._stop.wait(self.interval_s)
            self._wake.set()  # the watch ended (its timeout): list, then watch again

    def start(self) -> None:
        self.poll_once()
        self.thread.start()
        if self.changes is not None:
            threading.Thread(target=self._watch, name="pod-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()


def host_source(env: Mapping[str, str]) -> Callable[[], list[str]]:
    static = env.get("ACCORDION_HOSTS")
    if static is not None:  # outside a cluster (tests): a fixed list, or a file re-read each time
        if static.startswith("@"):
            path = Path(static[1:])
            return lambda: [h.split(":")[0] for h in path.read_text().split() if h]
        hosts = [h for h in static.split(",") if h]
        return lambda: hosts
    return PodHosts(env)


def led_by(hosts: list[str], first: str | None) -> list[str]:
    """`hosts` once `first` is among them, none before (pure). Horovod's elastic driver ranks a
    world's hosts in the order it first discovered them, so a launcher that hosts worker 0
    offers no host until its own serves: rank 0 then trains in the launcher's pod, which a
    shrink never takes, instead of in whichever worker warmed up first."""
    return hosts if first is None or first in hosts else []


def left_world(progress: Mapping[str, Any], own: str | None) -> bool:
    """Whether a progress report's world lacks `own`, the pod of a launcher that hosts worker 0
    (pure). Horovod drops a host whose training process died for good, and the operator, which
    replaces a worker pod that left the world, never replaces the launcher's: the launcher then
    fails, to be restarted with its worker (and resume from the newest checkpoint), instead of
    training on without its GPUs (or, alone, waiting out the start timeout for a host)."""
    world = progress.get("worldPods")
    return own is not None and isinstance(world, list) and own not in world


class PodHosts:
    """The run's worker pods that can take the launcher's ssh now (a callable host source):
    Ready ones, and Running ones whose SSH port already accepts a connection; `starting()`:
    whether, at the last list, a Running pod did not yet. A launcher hosting worker 0 lists
    none until its own pod serves (`led_by`)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        from .kube import ApiClient

        self.api = ApiClient.in_cluster(dict(env))
        self.ns, self.run = env["ACCORDION_NAMESPACE"], env["ACCORDION_RUN_NAME"]
        self.owner = env.get("ACCORDION_RUN_UID") or None
        self.port = int(env.get("ACCORDION_SSH_PORT", "2222"))
        self._starting = False
        #: this pod's address while it hosts worker 0 and has not served yet
        self._first = pod_ip(env) if env.get("ACCORDION_WORKER_INDEX") is not None else None

    def __call__(self) -> list[str]:
        from .kube import ready_worker_ips, starting_worker_ips, worker_selector

        pods = self.api.list_pods(self.ns, worker_selector(self.run))
        hosts = ready_worker_ips(pods, self.owner, serving=self.serving)
        self._starting = any(ip not in hosts for ip in starting_worker_ips(pods, self.owner))
        hosts = led_by(hosts, self._first)
        if hosts:
            self._first = None  # from now on the world follows the pods, own host or not
        return hosts

    def serving(self, ip: str) -> bool:
        try:
            with socket.create_connection((ip, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def starting(self) -> bool:
        return self._starting

    def changes(self) -> Iterable[object]:
        """A watch of the run's worker pods: each change wakes the discovery at once."""
        from .kube import worker_selector

        return self.api.watch_pods(self.ns, worker_selector(self.run), WATCH_TIMEOUT_S)


def status_sender(env: Mapping[str, str]) -> Callable[[dict[str, Any]], None]:
    if env.get("ACCORDION_HOSTS") is not None and not env.get("ACCORDION_KUBE_API"):
        return lambda status: None  # outside a cluster: progress only in the log
    from .kube import ApiClient

    api = ApiClient.in_cluster(dict(env))
    ns, run = env["ACCORDION_NAMESPACE"], env["ACCORDION_RUN_NAME"]
    return lambda status: api.patch_run_status(ns, run, {"training": status})


def launcher_env(env: Mapping[str, str], bindir: Path) -> dict[str, str]:
    """horovodrun's environment: the launcher's, without what must not reach the workers'
    command lines (the stores' keys) or would override their own sessions'."""
    out = {k: v for k, v in env.items() if k not in SECRET_ENV and k not in WORKER_SESSION_ENV}
    out["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', os.defpath)}"
    out.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return out


def alone(env: Mapping[str, str]) -> bool:
    """Whether this launcher hosts worker 0 of a run of at most one worker pod (pure): its own
    pod is its only host for good (horovodrun's --max-np is fixed), and the operator gives it no
    ssh Secret (docs/contract.md)."""
    return env.get("ACCORDION_WORKER_INDEX") is not None and env.get("ACCORDION_MAX_WORKERS") == "1"


def own_key_pair(ssh_dir: Path) -> Path:
    """A fresh ssh key pair in `ssh_dir` (private, 0700), laid out as the run's Secret is
    mounted: the launcher's ssh client and its hosted worker's sshd use it, and it never leaves
    the pod."""
    ssh_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ssh_dir / "id_ed25519"
    key.unlink(missing_ok=True)
    key.with_suffix(".pub").unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
        check=True,
        capture_output=True,
    )
    (ssh_dir / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    return ssh_dir


def start_hosted_worker(env: Mapping[str, str]) -> subprocess.Popen[bytes] | None:
    """The launcher pod that also hosts worker 0 (the operator sets ACCORDION_WORKER_INDEX on
    it only then) runs the worker's half as a child: stage-in, the warm training processes and
    sshd, with the pod's whole environment, credentials included; horovodrun's environment has
    them removed (`launcher_env`). Host discovery finds this pod like any worker's."""
    if env.get("ACCORDION_WORKER_INDEX") is None:
        return None
    return subprocess.Popen([sys.executable, "-m", "accordion_trainer", "worker"], env=dict(env))


def end_hosted_worker(worker: subprocess.Popen[bytes] | None) -> int:
    """Stop the hosted worker (SIGTERM: its sshd goes once no session is left, `leave`) and
    return the exit code it had ended with on its own: non-zero when it failed first (its
    stage-in, say), which is then the launcher's exit code and reason too."""
    if worker is None:
        return 0
    rc = worker.poll()
    if rc is not None:
        return 0 if rc in (0, -signal.SIGTERM) else rc
    worker.terminate()
    try:
        worker.wait(LEAVE_WAIT_S + 5)
    except subprocess.TimeoutExpired:
        worker.kill()
    return 0


def watch_hosted_worker(
    worker: subprocess.Popen[bytes] | None, horovodrun: subprocess.Popen[str]
) -> None:
    """A hosted worker that fails (its stage-in, its model download) ends horovodrun, which
    would otherwise wait out its start timeout for a host that never comes."""
    if worker is None:
        return

    def watch() -> None:
        from .standalone import stop_horovodrun

        if worker.wait() not in (0, -signal.SIGTERM) and horovodrun.poll() is None:
            stop_horovodrun(horovodrun)

    threading.Thread(target=watch, name="hosted-worker", daemon=True).start()


def relay(proc: subprocess.Popen[str], reporter: Reporter, own: str | None) -> TrainerError | None:
    """horovodrun's output to the pod's log and its progress to the run's status, until it
    ends; the first failure it shows (a contract reason, or `own`, the pod of a launcher hosting
    worker 0, gone from the world) stops it and is returned."""
    from .standalone import stop_horovodrun

    error: TrainerError | None = None
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        progress = parse_progress(line)
        if progress is not None:
            reporter.offer(progress, force="resultsURI" in progress)
            if error is None and left_world(progress, own):
                error = TrainerError(
                    Reason.TrainingError,
                    f"worker 0's training process in this pod ({own}) left the Horovod world; "
                    "the launcher restarts with it and resumes from the newest checkpoint",
                )
                stop_horovodrun(proc)
        if error is None:
            error = parse_error_line(line)
            if error is not None:
                # The contract's reasons are not transient (bad data, bad model): every worker
                # would hit them again, so stop instead of letting horovod retry until timeout.
                stop_horovodrun(proc)
    return error


def cmd_launcher(_: argparse.Namespace) -> int:
    from .standalone import horovodrun_argv, start_horovodrun, write_executable
    from .usercmd import training_entry

    env = dict(os.environ)
    work = Path(env.get("ACCORDION_LAUNCHER_DIR") or tempfile.mkdtemp(prefix="accordion-launcher-"))
    work.mkdir(parents=True, exist_ok=True)
    if alone(env):  # no ssh Secret: a pair of its own, for its own worker's sshd
        env["ACCORDION_SSH_DIR"] = str(own_key_pair(work / "own-ssh"))
    worker = start_hosted_worker(env)
    # horovodrun counts processes: a worker pod is one host with one slot per GPU, and it
    # joins or leaves with all of them
    slots = slots_per_worker(env)
    min_workers = int(env.get("ACCORDION_MIN_WORKERS", "1"))
    min_np = min_workers * slots
    max_np = int(env.get("ACCORDION_MAX_WORKERS", str(min_workers))) * slots
    hosts_file = work / "hosts"
    source = host_source(env)
    interval = float(env.get("ACCORDION_DISCOVERY_INTERVAL_S", "0.5"))
    if isinstance(source, PodHosts):
        poller = HostPoller(hosts_file, source, interval, slots, source.changes, source.starting)
    else:
        poller = HostPoller(hosts_file, source, interval, slots)
    poller.start()
    discovery = write_executable(work / "discover.sh", f"#!/bin/sh\ncat {hosts_file}\n")
    bindir = prepare_ssh_client(
        Path(env.get("ACCORDION_SSH_DIR", "/etc/accordion/ssh")),
        work / "ssh",
        int(env.get("ACCORDION_SSH_PORT", "2222")),
    )
    iface = network_interface(pod_ip(env), env)
    # the user's command (spec.model.command) or the built-in trainer, on every slot
    entry = training_entry(env.get("ACCORDION_MODEL", ""))
    argv = horovodrun_argv(min_np, min_np, max_np, discovery, iface, entry=entry)
    argv[argv.index("--start-timeout") + 1] = env.get("ACCORDION_START_TIMEOUT_S", "600")
    reporter = Reporter(status_sender(env))
    own = env.get("ACCORDION_POD_NAME") if worker is not None else None
    print(f"[launcher] {' '.join(argv)}", flush=True)
    hvd_env = launcher_env(env, bindir)
    hvd_env[HOSTS_FILE_ENV] = str(hosts_file)  # horovodrun reads it without the script
    if worker is not None:  # this pod's own slots over ssh too (horovod_run.ssh_every_host)
        hvd_env[SSH_EVERY_HOST_ENV] = "1"
    proc = start_horovodrun(argv, hvd_env, work)
    watch_hosted_worker(worker, proc)

    def stop(signum: int, _frame: Any) -> None:
        proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    error = relay(proc, reporter, own)
    rc = proc.wait()
    poller.stop()
    reporter.flush()
    worker_rc = end_hosted_worker(worker)
    if worker_rc:  # the worker reported its reason itself (its termination message)
        return worker_rc
    if error is not None:
        return fail(error)
    if rc != 0:
        return fail(TrainerError(Reason.TrainingError, f"horovodrun exited with {rc}"))
    return 0


def cmd_discover(_: argparse.Namespace) -> int:
    env = dict(os.environ)
    slots = slots_per_worker(env)
    for host in host_source(env)():
        print(f"{host}:{slots}")
    return 0


def add_commands(sub: Any) -> None:
    w = sub.add_parser("worker", help="in-cluster worker: stage data, serve SSH")
    w.add_argument("--skip-data-check", action="store_true")
    w.set_defaults(func=cmd_worker)
    lp = sub.add_parser("launcher", help="in-cluster launcher: horovodrun over Ready workers")
    lp.set_defaults(func=cmd_launcher)
    s = sub.add_parser("stage", help="stage the data bucket/prefix into ACCORDION_DATA_DIR")
    s.set_defaults(func=cmd_stage)
    d = sub.add_parser("discover", help="print Ready worker pods as `ip:slots`")
    d.set_defaults(func=cmd_discover)
