"""RFC 3339 timestamps as the apiserver writes and accepts them (pure).

Parsing is lenient and never raises: status timestamps are writable by others than the operator
(a run's launcher token may patch its run's status), and the apiserver's `date-time` format
accepts forms Python's `fromisoformat` refuses (`0000-01-01T00:00:00Z`, a lower-case `z` or
`t`, nanoseconds, a leap second). One such value must not stop the handling of every other
object, so an unusable timestamp reads as absent (None) and the decision re-derives it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)


def to_rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_rfc3339(s: object) -> float | None:
    """Seconds since the epoch, or None for a missing or unusable value."""
    if not isinstance(s, str):
        return None
    m = _RFC3339.match(s.strip())
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction = float(f"0.{m.group(7)}") if m.group(7) else 0.0
    offset = m.group(8)
    try:
        if offset in ("Z", "z"):
            tz = UTC
        else:  # an offset of 24 h or more (+99:99) raises: unusable too
            sign = 1 if offset[0] == "+" else -1
            tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
        # a leap second (:60) is the next second's first instant
        leap = 1 if second == 60 else 0
        dt = datetime(year, month, day, hour, minute, second - leap, tzinfo=tz)
        return dt.timestamp() + leap + fraction
    except (ValueError, OverflowError):  # year 0, month 13, ...
        return None
