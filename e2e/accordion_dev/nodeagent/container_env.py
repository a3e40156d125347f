"""A container's environment as kubelet computes it (pure; lookups are passed in).

Order: `envFrom` sources, then `env` entries (later wins); `$(VAR)` references to variables
defined earlier are expanded, `$$` escapes a dollar, unknown references stay verbatim.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

#: name -> data (decoded to text), or None when the object does not exist
Lookup = Callable[[str], Mapping[str, str] | None]

_SUFFIX: dict[str, int | Decimal] = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}


class EnvError(ValueError):
    """A reference kubelet would refuse: reported as CreateContainerConfigError."""


def parse_quantity(q: str | int | float) -> Decimal:
    s = str(q).strip()
    for suffix in sorted(_SUFFIX, key=len, reverse=True):
        if s.endswith(suffix):
            return Decimal(s[: -len(suffix)]) * Decimal(str(_SUFFIX[suffix]))
    return Decimal(s)


def expand(s: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion."""
    out: list[str] = []
    i = 0
    while i < len(s):
        if s.startswith("$$", i):
            out.append("$")
            i += 2
        elif s.startswith("$(", i) and (end := s.find(")", i + 2)) != -1:
            name = s[i + 2 : end]
            out.append(env[name] if name in env else s[i : end + 1])
            i = end + 1
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


_LABEL_REF = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """Value of a downward-API fieldRef (the fields kubelet supports)."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": status.get("hostIP", ""),
        "status.podIP": status.get("podIP", ""),
        "status.hostIPs": ",".join(a["ip"] for a in status.get("hostIPs") or []),
        "status.podIPs": ",".join(a["ip"] for a in status.get("podIPs") or []),
    }
    if path in simple:
        return str(simple[path])
    if m := _LABEL_REF.match(path):
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = sorted((meta.get(path.split(".")[1]) or {}).items())
        return "\n".join(f'{k}="{v}"' for k, v in items)
    raise EnvError(f"unsupported fieldRef {path!r}")


def resource_value(
    container: Mapping[str, Any], ref: Mapping[str, Any], node_allocatable: Mapping[str, str]
) -> str:
    """resourceFieldRef: limits fall back to the node's allocatable, as in kubelet."""
    kind, _, res = ref["resource"].partition(".")
    values = (container.get("resources") or {}).get(kind) or {}
    raw = values.get(res)
    if raw is None:
        raw = "0" if kind == "requests" else node_allocatable.get(res, "0")
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(math.ceil(parse_quantity(raw) / divisor))


def resolve_env(
    container: Mapping[str, Any],
    pod: Mapping[str, Any],
    secrets: Lookup,
    configmaps: Lookup,
    base: Mapping[str, str],
    node_allocatable: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """`base` (the runtime's own variables) overlaid with the container's env and envFrom."""
    env = dict(base)
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        for kind, lookup in (("configMapRef", configmaps), ("secretRef", secrets)):
            if kind in src:
                ref = src[kind]
                data = lookup(ref["name"])
                if data is None:
                    if ref.get("optional"):
                        continue
                    raise EnvError(f"{kind} {ref['name']!r} not found")
                for k, v in data.items():
                    env[prefix + k] = v
    for e in container.get("env") or []:
        name = e["name"]
        if "valueFrom" not in e:
            env[name] = expand(e.get("value", ""), env)
            continue
        vf = e["valueFrom"]
        if "fieldRef" in vf:
            env[name] = field_value(pod, vf["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in vf:
            env[name] = resource_value(container, vf["resourceFieldRef"], node_allocatable or {})
        else:
            kind, lookup = (
                ("secretKeyRef", secrets)
                if "secretKeyRef" in vf
                else ("configMapKeyRef", configmaps)
            )
            ref = vf[kind]
            data = lookup(ref["name"])
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                what = "not found" if data is None else f"has no key {ref['key']!r}"
                raise EnvError(f"{kind} {ref['name']!r} {what} (env {name})")
            env[name] = data[ref["key"]]
    return env


def command_line(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """command + args with `$(VAR)` expanded; an image's entrypoint does not exist here."""
    argv = [expand(a, env) for a in (container.get("command") or [])]
    argv += [expand(a, env) for a in (container.get("args") or [])]
    if not argv:
        raise EnvError(
            f"container {container['name']!r} has no command: process nodes ignore the image, "
            "so the pod must say what to run"
        )
    return argv
