"""The body of a Kubernetes Event the operator posts (pure)."""

from __future__ import annotations

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
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{involved['name']}.", "namespace": involved["namespace"]},
        "involvedObject": dict(involved),
        "type": etype,
        "reason": reason[:128],
        "message": message[:1024],
        "source": {"component": MANAGED_BY},
        "reportingComponent": MANAGED_BY,
        "firstTimestamp": t,
        "lastTimestamp": t,
        "count": 1,
    }
