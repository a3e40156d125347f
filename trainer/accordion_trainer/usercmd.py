"""The user's own command (`spec.model.command`): what horovodrun starts instead of the built-in
`python -m accordion_trainer train`.

horovodrun starts `python -m accordion_trainer exec` on every slot (the command itself never
travels on horovodrun's or ssh's command line: it stays JSON in `ACCORDION_MODEL`). That process
finds the code directory (the unpacked archive, the folder, or the `.py` file's folder), splits
the command with `shlex.split` (no shell: user text is never interpreted by one; a command that
needs pipes or `&&` says `sh -c '...'` itself), appends the hyperparameters as `--name value`,
adds them as `HP_<NAME>` variables, and runs it there as its child. A command that exits
non-zero before it started training fails the run with `ModelInvalid` (every worker would fail
the same way; Horovod would otherwise blacklist them one by one until its start timeout).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import Reason, TrainerError
from .models import unpack_code

#: Set for the command: `accordion_trainer.elastic.fit` touches this file when training starts,
#: so that a later failure is left to Horovod's elastic handling, not reported as a bad command.
STARTED_FILE_ENV = "ACCORDION_STARTED_FILE"
#: A command that does not use the helper API counts as started after this many seconds.
START_GRACE_ENV = "ACCORDION_COMMAND_START_S"
DEFAULT_START_GRACE_S = 60.0
#: Interpreter names that mean "the trainer's own Python" (the one with TensorFlow and Horovod).
PYTHON_NAMES = frozenset({"python", "python3"})


def hparam_value(value: Any) -> str:
    """A hyperparameter as one argument/variable: strings as they are, anything else as JSON
    (`0.001`, `64`, `true`), the spelling the run's spec has."""
    return value if isinstance(value, str) else json.dumps(value)


def hparam_env(hparams: Mapping[str, Any]) -> dict[str, str]:
    """`HP_<NAME>`: the name upper-cased, every character but letters and digits as `_`."""
    return {
        f"HP_{re.sub(r'[^A-Za-z0-9]', '_', k).upper()}": hparam_value(v) for k, v in hparams.items()
    }


def hparam_args(hparams: Mapping[str, Any]) -> list[str]:
    """`--name value` per hyperparameter, the names exactly as the run's spec spells them."""
    return [part for k, v in hparams.items() for part in (f"--{k}", hparam_value(v))]


def split_command(command: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise TrainerError(Reason.ModelInvalid, f"model.command {command!r}: {e}") from e
    if not argv:
        raise TrainerError(Reason.ModelInvalid, "model.command is empty")
    if argv[0] in PYTHON_NAMES:
        argv[0] = sys.executable
    return argv


def command_argv(command: str, hparams: Mapping[str, Any]) -> list[str]:
    return [*split_command(command), *hparam_args(hparams)]


def is_builtin_entry(argv: list[str]) -> bool:
    """`python -m accordion_trainer train` (or `accordion-train train`): the `build_model`
    contract, run by the trainer itself, reading its hyperparameters from the environment."""
    return argv[1:] == ["-m", "accordion_trainer", "train"] or argv == ["accordion-train", "train"]


def model_command(model_json: str) -> str | None:
    """The user's command from `ACCORDION_MODEL`, or None for the built-in entry."""
    try:
        spec = json.loads(model_json or "{}")
    except ValueError:
        return None  # the training process reports the bad JSON with its reason
    command = spec.get("command") if isinstance(spec, dict) else None
    if not command or is_builtin_entry(split_command(str(command))):
        return None
    return str(command)


def training_entry(model_json: str) -> list[str]:
    """What horovodrun starts on every slot: the built-in trainer, or the command runner."""
    sub = "exec" if model_command(model_json) is not None else "train"
    return [sys.executable, "-m", "accordion_trainer", sub]


def code_dir(source: Path, work_dir: Path) -> Path:
    """Where the command runs: a folder as it is, a `.py` file's folder, or an archive unpacked
    into a directory of this process's own (several slots of one host share the work dir)."""
    if not source.exists():
        raise TrainerError(Reason.ModelInvalid, f"model code {source} does not exist")
    if source.is_dir():
        return source
    if source.suffix == ".py":
        return source.parent
    work_dir.mkdir(parents=True, exist_ok=True)
    root = unpack_code(source, Path(tempfile.mkdtemp(prefix="command-", dir=work_dir)))
    entries = list(root.iterdir())
    # a zip of a folder (`zip -r code.zip mycode/`) runs in that folder
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else root


def _die_with_parent() -> None:
    """In the child: SIGKILL it if this runner dies (Horovod kills the runner, not its child)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_command(command: str, hparams: Mapping[str, Any], cwd: Path, work_dir: Path) -> int:
    """Run the command as this process's child; its exit status, or `ModelInvalid` when it
    exits non-zero before it started training."""
    argv = command_argv(command, hparams)
    work_dir.mkdir(parents=True, exist_ok=True)
    started = work_dir / f"started-{os.getpid()}"
    started.unlink(missing_ok=True)
    env = {**os.environ, **hparam_env(hparams), STARTED_FILE_ENV: str(started)}
    threads = os.environ.get("ACCORDION_TF_THREADS", "")
    if threads and int(threads) > 0:
        # what the built-in trainer sets through tf.config: the script initialises TensorFlow
        # itself, and TensorFlow reads these when it does
        env.setdefault("TF_NUM_INTRAOP_THREADS", threads)
        env.setdefault("TF_NUM_INTEROP_THREADS", threads)
    grace = float(os.environ.get(START_GRACE_ENV) or DEFAULT_START_GRACE_S)
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, preexec_fn=_die_with_parent)
    except OSError as e:
        raise TrainerError(Reason.ModelInvalid, f"model.command {command!r}: {e}") from e
    # Horovod stops a slot by signalling this process: pass it on to the command
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    before = {
        sig: signal.signal(sig, lambda signum, _f: proc.send_signal(signum)) for sig in forwarded
    }
    try:
        rc = proc.wait()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    if rc > 0 and not started.exists() and time.monotonic() - t0 < grace:
        raise TrainerError(
            Reason.ModelInvalid,
            f"model.command {command!r} exited with {rc} before training started "
            f"(in {cwd}; its output is in the run's log)",
        )
    return rc if rc >= 0 else 128 - rc


def main() -> int:
    """`python -m accordion_trainer exec`: one slot's training process, the user's command."""
    from .config import from_env

    cfg = from_env()
    command = model_command(os.environ.get("ACCORDION_MODEL", ""))
    if command is None or cfg.model.path is None:
        raise TrainerError(Reason.ModelInvalid, "exec needs ACCORDION_MODEL with code and command")
    cwd = code_dir(cfg.model.path, cfg.work_dir)
    print(f"[exec] {shlex.join(command_argv(command, cfg.hparams))} (in {cwd})", flush=True)
    return run_command(command, cfg.hparams, cwd, cfg.work_dir)
