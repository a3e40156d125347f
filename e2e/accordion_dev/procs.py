"""Supervision of the local cluster's processes: start detached, record, check, stop.

Each component runs in its own session (process group) with its output in `logs/<name>.log`;
`procs.json` in the state directory records pid, argv and log so `status` and `down` work from
any shell, and a crashed component is visible rather than silently gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Proc:
    name: str
    pid: int
    argv: list[str]
    log: str

    def alive(self) -> bool:
        try:
            # A zombie still answers kill(0); read its state to tell a crash from a live process.
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


class ProcTable:
    """The processes of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "procs.json"
        self.log_dir = state_dir / "logs"

    def load(self) -> list[Proc]:
        if not self.path.exists():
            return []
        return [Proc(**p) for p in json.loads(self.path.read_text())]

    def _save(self, procs: list[Proc]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(p) for p in procs], indent=1))
        tmp.replace(self.path)

    def add(self, proc: Proc) -> None:
        procs = [p for p in self.load() if p.name != proc.name]
        self._save([*procs, proc])

    def remove(self, name: str) -> None:
        self._save([p for p in self.load() if p.name != name])

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        proc = Proc(name, popen.pid, argv, str(log))
        self.add(proc)
        return proc

    def stop(self, name: str, timeout: float = 15.0) -> None:
        """Stop one process (SIGTERM, SIGKILL after `timeout`) and forget it."""
        _stop([p for p in self.load() if p.name == name], timeout)
        self.remove(name)

    def stop_all(self, timeout: float = 15.0) -> list[str]:
        """SIGTERM every process group (newest first), SIGKILL what is left; return names.

        The apiserver and etcd go last: the apiserver's graceful shutdown waits for its open
        watches, so its clients stop first, and as it holds no state of its own it gets only a
        short grace (it used to make every `down` take the full timeout)."""
        procs = list(reversed(self.load()))
        _stop([p for p in procs if p.name not in _SERVERS], timeout)
        _stop([p for p in procs if p.name == "kube-apiserver"], min(timeout, 3.0))
        _stop([p for p in procs if p.name == "etcd"], timeout)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return [p.name for p in procs]


#: stopped after everything else, in this order
_SERVERS = ("kube-apiserver", "etcd")


def _stop(procs: list[Proc], timeout: float) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.alive() for p in procs):
        time.sleep(0.1)
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
