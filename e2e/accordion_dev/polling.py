"""Waiting for the cluster to reach a state: the one polling loop the tests, the demo's checks
and the benchmarks share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(fn: Callable[[], T], timeout: float = 30.0, what: str = "", every: float = 0.25) -> T:
    """Call `fn` until it returns something truthy and return that; after `timeout` seconds
    raise TimeoutError naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout:.0f} s waiting for {what or fn}; last: {last!r}"
            )
        time.sleep(every)
