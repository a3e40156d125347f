"""JSON merge patch (RFC 7386), for building test objects from a base and a patch: null deletes,
objects merge, everything else (lists included) replaces."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def merge(base: Any, patch: Any) -> Any:
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base) if isinstance(base, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out
