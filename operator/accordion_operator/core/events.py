"""The body of a Kubernetes Event the operator posts, and its name (pure).

An Event's name is derived from what it says (the involved object's uid, type, reason and
message), not generated: the controllers post a decision's Events *before* its status write, so
that a process killed between the two leaves the news to be said again by the next pass or the
next leader, and the same name makes that second POST a 409 instead of a second Event. A true
repeat (the same news again within the Events' TTL) raises the existing Event's count, as
client-go's event correlator does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from accordion_operator.core.objects import MANAGED_BY
from accordion_operator.core.timefmt import to_rfc3339


def event_body(
    involved: Mapping[str, str], etype: str, reason: str, message: str, now: float
) -> dict[str, Any]:
    """An Event on `involved` (an object reference); reason and message cut to what the
    apiserver accepts."""
    t = to_rfc3339(now)
    reason, message = reason[:128], message[:1024]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": event_name(involved, etype, reason, message),
            "namespace": involved["namespace"],
        },
        "involvedObject": dict(involved),
        "type": etype,
        "reason": reason,
        "message": message,
        "source": {"component": MANAGED_BY},
        "reportingComponent": MANAGED_BY,
        "firstTimestamp": t,
        "lastTimestamp": t,
        "count": 1,
    }


def event_name(involved: Mapping[str, str], etype: str, reason: str, message: str) -> str:
    """`<object>.<16 hex digits>`: the same news about the same object (uid included: a new
    object of the same name is another) always has the same name, within the 253 characters a
    name may have."""
    key = "\0".join((involved.get("uid", ""), etype, reason, message))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{involved['name'][:236]}.{digest}"


def repeat_patch(existing: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The merge patch that records one more occurrence on an Event already posted."""
    count = existing.get("count")
    return {
        "count": (count if isinstance(count, int) and count > 0 else 1) + 1,
        "lastTimestamp": to_rfc3339(now),
    }
