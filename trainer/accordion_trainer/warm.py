"""A worker pod's training processes, started before horovodrun asks for them.

A grow used to wait, with every running worker idle, while the joining pod's training process
started Python, imported TensorFlow and Horovod, built and traced the model (~3-5 s on 2 cores).
Now the worker pod starts one warm process per slot as soon as it starts (`python -m
accordion_trainer warm --slot N`); it imports everything, builds the model from the pod's own
environment (the run's settings, the same the launcher has), compiles it with Horovod's
optimizer and traces the train step, all before `hvd.init`, then waits. The worker turns Ready
(starts sshd) only once its warm processes are prepared, so the running workers keep training
meanwhile. When horovodrun's ssh command starts `python -m accordion_trainer train` on the pod,
that process (the client, ~0.1 s to start) hands its argv, environment, working directory and
stdin/stdout/stderr to the warm process of its local rank over a Unix socket and waits; the
warm process takes them on, joins the Gloo rendezvous and trains. The client forwards signals
to it and exits with its exit code; a warm process whose client is gone exits too, so for
horovodrun and sshd the client is the training process.

The warm process declines (and the client trains itself, cold, as before) when the hand-off's
settings differ from those it prepared with, when it is not an elastic horovodrun start, or
when it is used already: each warm process serves one start (a later start on the same pod, e.g.
after a launcher restart, is cold).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: set (through sshd's SetEnv) to the folder of the pod's warm sockets; absent: no warm processes
WARM_DIR_ENV = "ACCORDION_WARM_DIR"
#: the worker creates it once the data is staged: the warm processes then build the model
DATA_READY = "data-ready"
#: what a prepared warm process writes (the worker waits for one per slot before sshd starts)
PREPARED = "prepared-{slot}"
#: the most bytes of one hand-off message (argv + environment)
MAX_MESSAGE = 1 << 20
#: the settings a warm process prepared with must equal the hand-off's in these variables, or
#: it declines: they are read before the hand-off (threads, device pinning, metrics files)
FIXED_ENV = (
    "ACCORDION_TF_THREADS",
    "PROMETHEUS_MULTIPROC_DIR",
    "ACCORDION_POD_GPUS",
    "ACCORDION_PRETRACE",
)


def socket_path(warm_dir: Path, slot: int) -> Path:
    return warm_dir / f"slot-{slot}.sock"


def usable_dir(warm_dir: Path) -> bool:
    """A Unix socket path is limited to 107 bytes: deeper folders get no warm processes."""
    return len(str(socket_path(warm_dir, 999)).encode()) < 100


# --- the client: `python -m accordion_trainer train` as started by horovodrun ------------------


def hand_off(env: Mapping[str, str]) -> int | None:
    """Hand this start to the pod's warm process of our local rank; its exit code, or None when
    there is none (or it declined): then this process trains itself."""
    warm_dir = env.get(WARM_DIR_ENV)
    if not warm_dir or env.get("HOROVOD_ELASTIC") != "1":
        return None
    path = socket_path(Path(warm_dir), int(env.get("HOROVOD_LOCAL_RANK", "0")))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(str(path))
        msg = {"argv": sys.argv, "env": dict(env), "cwd": os.getcwd(), "time": time.time()}
        socket.send_fds(sock, [json.dumps(msg).encode()], [0, 1, 2])
        answer = sock.recv(4096).decode()
    except OSError:
        sock.close()
        return None
    if not answer.startswith("A"):  # declined (or gone): the reason is in the pod's log
        sock.close()
        return None
    pid = int(answer[1:])
    forwarded: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        forwarded.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
    before = {sig: signal.signal(sig, forward) for sig in signals}
    done = b""
    try:
        with contextlib.suppress(OSError):
            done = sock.recv(64)
    finally:
        sock.close()
        for sig, handler in before.items():
            signal.signal(sig, handler)
    if done.startswith(b"X"):
        return int(done[1:])
    if forwarded:  # it died of the signal we passed on: so do we, as a cold process would
        signal.signal(forwarded[-1], signal.SIG_DFL)
        os.kill(os.getpid(), forwarded[-1])
    return 1  # it died without a word (killed)


# --- the warm process ---------------------------------------------------------------------------


def serve(slot: int, warm_dir: Path, t_boot: float) -> int:
    """`python -m accordion_trainer warm --slot N`, started by the worker: prepare, wait for one
    hand-off, train with it. Returns an exit code."""
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    path = socket_path(warm_dir, slot)
    path.unlink(missing_ok=True)
    listener.bind(str(path))  # clients may connect now; they wait until we accept
    listener.listen(4)
    # Pinned like the training process of local rank `slot` (gpus.py), before TensorFlow.
    os.environ["HOROVOD_LOCAL_RANK"] = str(slot)
    os.environ["HOROVOD_ELASTIC"] = "1"  # the train step is traced for a world of any size
    from .gpus import process_gpu_env

    try:
        os.environ.update(process_gpu_env(os.environ))
        prep = _prepare(warm_dir, parent, t_boot)
    except Exception as e:  # the training process, started cold, reports it with its reason
        print(f"[warm] slot {slot} could not prepare: {e!r}", flush=True)
        prep = None
    if prep is None:
        path.unlink(missing_ok=True)
        return 0
    (warm_dir / PREPARED.format(slot=slot)).write_text(f"{os.getpid()}\n")
    print(f"[warm] slot {slot} prepared in {time.time() - t_boot:.1f} s", flush=True)
    while True:
        listener.settimeout(1.0)
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            if os.getppid() != parent:  # the worker is gone: nobody will hand off
                return 0
            continue
        listener.settimeout(None)
        msg, fds = _receive(conn)
        reason = decline_reason(prep["env"], msg["env"], slot) if msg else "unreadable"
        if msg is None or reason is not None:
            print(f"[warm] slot {slot} declined a start: {reason}", flush=True)
            with contextlib.suppress(OSError):
                conn.send(f"D{reason}".encode())
            conn.close()
            for fd in fds:
                os.close(fd)
            continue
        listener.close()
        path.unlink(missing_ok=True)
        return _take_over(conn, msg, fds, prep)


def _receive(conn: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    try:
        data, fds, _flags, _addr = socket.recv_fds(conn, MAX_MESSAGE, 3)
        msg = json.loads(data.decode())
    except (OSError, ValueError):
        return None, []
    if len(fds) != 3 or not isinstance(msg, dict):
        return None, fds
    return msg, fds


def decline_reason(prepared: Mapping[str, str], given: Mapping[str, str], slot: int) -> str | None:
    """Why a warm process prepared with `prepared` cannot serve a start with `given` (None: it
    can). Pure; the training settings are compared as the trainer reads them."""
    from .config import from_env
    from .errors import TrainerError

    if given.get("HOROVOD_ELASTIC") != "1":
        return "not an elastic horovodrun start"
    if given.get("HOROVOD_LOCAL_RANK", "0") != str(slot):
        return f"local rank {given.get('HOROVOD_LOCAL_RANK')} is not slot {slot}"
    for key in FIXED_ENV:
        if prepared.get(key) != given.get(key):
            return f"{key} differs"
    try:
        same = from_env(prepared) == from_env(given)
    except TrainerError as e:
        return f"unreadable settings: {e.message}"
    return None if same else "the run's settings differ"


def _prepare(warm_dir: Path, parent: int, t_boot: float) -> dict[str, Any] | None:
    """Import, wait for the data, build the model: everything a training process does before
    `hvd.init`. None when the worker went away first."""
    import horovod.tensorflow.keras as hvd

    from .config import from_env
    from .train import prepared_model, set_tf_threads

    t_imported = time.time()
    set_tf_threads()
    while not (warm_dir / DATA_READY).exists():
        if os.getppid() != parent:
            return None
        time.sleep(0.05)
    env = dict(os.environ)
    cfg = from_env(env)
    ds, model, opt, base_lr = prepared_model(cfg, hvd, size=1)
    # the results store's client, which the training process opens after the hand-off (~0.3 s
    # of imports on 2 busy cores, while the other workers would wait)
    importlib.import_module(f"{__package__}.staging")
    return {
        "env": env,
        "cfg": cfg,
        "hvd": hvd,
        "data": ds,
        "model": model,
        "opt": opt,
        "base_lr": base_lr,
        "t_boot": t_boot,
        "t_imported": t_imported,
    }


def _take_over(
    conn: socket.socket, msg: dict[str, Any], fds: list[int], prep: dict[str, Any]
) -> int:
    """Become the training process the client stands for: its stdio, environment and working
    directory; tell it our pid; train; send it the exit code."""
    from dataclasses import replace

    from .errors import TrainerError, fail
    from .policy import scaled_lr
    from .train import run_job

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    os.environ.clear()
    os.environ.update(msg["env"])
    os.chdir(msg["cwd"])
    sys.argv = list(msg["argv"])
    conn.send(f"A{os.getpid()}".encode())
    from .gpus import pin_process

    pin_process()  # the same pinning, now logged with this start's rank and pod
    finished = threading.Event()
    threading.Thread(target=_exit_with_client, args=(conn, finished), daemon=True).start()
    hvd, cfg = prep["hvd"], prep["cfg"]
    code = 1
    try:
        hvd.init()
        t_init = time.time()
        prep["opt"].learning_rate.assign(scaled_lr(prep["base_lr"], hvd.size()))
        run_job(
            replace(cfg, learning_rate=prep["base_lr"]),
            hvd,
            prep["data"],
            prep["model"],
            prep["opt"],
            (prep["t_boot"], prep["t_imported"], t_init),
            handoff=float(msg["time"]),
        )
        code = 0
    except TrainerError as e:
        code = fail(e)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        finished.set()  # the client exits once it has the code: no reason to die with it
        with contextlib.suppress(OSError):
            conn.send(f"X{code}".encode())
    return code


def _exit_with_client(conn: socket.socket, finished: threading.Event) -> None:
    """The client is gone (sshd's session ended, horovodrun killed it) before the training
    finished: so is this process."""
    with contextlib.suppress(OSError):
        while conn.recv(64):
            pass
    if not finished.is_set():
        os._exit(143)


def start_pool(slots: int, warm_dir: Path, log: Any = None) -> list[Any]:
    """The worker: one warm process per slot (their output goes to the pod's log)."""
    import subprocess

    warm_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for stale in warm_dir.iterdir():
        stale.unlink()
    return [
        subprocess.Popen(
            [sys.executable, "-m", "accordion_trainer", "warm", "--slot", str(slot)],
            env={**os.environ, WARM_DIR_ENV: str(warm_dir)},
            stdout=log,
            stderr=log,
        )
        for slot in range(slots)
    ]


def wait_prepared(warm_dir: Path, procs: list[Any], timeout_s: float) -> bool:
    """Wait until every warm process is prepared (or has exited, or `timeout_s` passed):
    whether all are."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        ready = [(warm_dir / PREPARED.format(slot=i)).exists() for i in range(len(procs))]
        if all(ready):
            return True
        if any(p.poll() is not None for i, p in enumerate(procs) if not ready[i]):
            return False
        time.sleep(0.05)
    return False
