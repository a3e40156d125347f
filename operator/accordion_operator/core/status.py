"""The status merge patch: one place that turns a desired status into the smallest write."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON merge patch (RFC 7386) of the status' top-level fields that turns `old` into
    `new`, or None when they are equal (no write at all: at 10,000 settled runs a pass writes
    nothing). A field `old` has and `new` lacks is removed with null."""
    if old == new:
        return None
    patch: dict[str, Any] = dict(new)
    for key in old:
        if key not in new:
            patch[key] = None
    return patch
