"""Failure reasons and exit codes shared with the operator (docs/contract.md, "Exit codes")."""

from __future__ import annotations

import enum
import os
import sys
from pathlib import Path


class Reason(enum.Enum):
    """A failure the operator turns into a condition reason; the value is the exit code."""

    DataUnreachable = 10
    DataAccessDenied = 11
    DataNotFound = 12
    DataUnreadable = 13
    ModelInvalid = 14
    TrainingDiverged = 15
    TrainingError = 1


class TrainerError(Exception):
    """An error with a contract reason: the CLI prints it, writes the termination log, exits."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def exit_code(self) -> int:
        return self.reason.value

    def line(self) -> str:
        """The one-line termination message: `<Reason>: <message>`."""
        return f"{self.reason.name}: {' '.join(self.message.split())}"


#: Where Kubernetes reads a container's termination message; overridable for tests.
TERMINATION_LOG_ENV = "ACCORDION_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


def write_termination_log(line: str) -> None:
    """Best effort: outside a pod the default path does not exist, and that is fine."""
    path = Path(os.environ.get(TERMINATION_LOG_ENV, DEFAULT_TERMINATION_LOG))
    try:
        if path.parent.is_dir():
            path.write_text(line[:4000] + "\n")
    except OSError:
        pass


ERROR_MARKER = "ACCORDION_ERROR"


def parse_error_line(line: str) -> TrainerError | None:
    """The inverse of `fail`'s stdout line, found anywhere in a (rank-prefixed) log line."""
    _, marker, rest = line.partition(ERROR_MARKER + " ")
    if not marker:
        return None
    name, _, text = rest.strip().partition(" ")
    try:
        reason = Reason[name]
    except KeyError:
        return None
    return TrainerError(reason, text.partition(": ")[2] or text)


def fail(err: TrainerError) -> int:
    """Report `err` the way the contract says and return its exit code."""
    print(f"accordion-train: error: {err.line()}", file=sys.stderr, flush=True)
    # Machine-readable copy on stdout: horovodrun relays a worker's stdout to the launcher, which
    # turns it into its own exit code and termination message.
    print(f"{ERROR_MARKER} {err.reason.name} {err.line()}", flush=True)
    write_termination_log(err.line())
    return err.exit_code
