"""Pod volumes materialised as directories under the pod's state directory.

`<pod-dir>/volumes/<volume-name>/` holds the files of emptyDir, secret, configMap, downwardAPI
and projected volumes (serviceAccountToken through the TokenRequest API); hostPath volumes are
the host path itself. The runtime bind-mounts these at the containers' mountPaths.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from accordion_dev.nodeagent.container_env import field_value, resource_value


class VolumeError(RuntimeError):
    """The pod cannot start yet (kubelet: FailedMount, pod stays ContainerCreating)."""


class Sources(Protocol):
    def secret(self, name: str) -> Mapping[str, bytes] | None: ...
    def configmap(self, name: str) -> Mapping[str, bytes] | None: ...
    def token(self, service_account: str, audience: str | None, seconds: int) -> str: ...


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool
    is_file: bool


def etc_hosts(pod_ip: str, hostname: str) -> str:
    """The pod's /etc/hosts as kubelet writes it: localhost plus its hostname at its IP."""
    return (
        "# Kubernetes-managed hosts file (accordion process node).\n"
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        f"{pod_ip}\t{hostname}\n"
    )


def _write(root: Path, rel: str, data: bytes, mode: int) -> None:
    p = (root / rel).resolve()
    if not p.is_relative_to(root.resolve()):
        raise VolumeError(f"volume item path {rel!r} escapes the volume")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    p.chmod(mode)


def _keyed(
    root: Path, data: Mapping[str, bytes], spec: Mapping[str, Any], what: str, default_mode: int
) -> None:
    items = spec.get("items")
    if items:
        for it in items:
            if it["key"] not in data:
                if spec.get("optional"):
                    continue
                raise VolumeError(f"{what} has no key {it['key']!r}")
            _write(root, it["path"], data[it["key"]], it.get("mode", default_mode))
    else:
        for k, v in data.items():
            _write(root, k, v, default_mode)


def _downward(
    root: Path, items: list[Mapping[str, Any]], pod: Mapping[str, Any], default_mode: int
) -> None:
    containers = {c["name"]: c for c in pod["spec"].get("containers", [])}
    for it in items:
        if "fieldRef" in it:
            value = field_value(pod, it["fieldRef"]["fieldPath"])
        else:
            ref = it["resourceFieldRef"]
            value = resource_value(containers.get(ref.get("containerName", ""), {}), ref, {})
        _write(root, it["path"], value.encode(), it.get("mode", default_mode))


def _fetch(src: Sources, kind: str, ref: Mapping[str, Any]) -> Mapping[str, bytes] | None:
    name = ref.get("secretName") or ref.get("name") or ""
    data = src.secret(name) if kind == "secret" else src.configmap(name)
    if data is None and not ref.get("optional"):
        raise VolumeError(f'{kind} "{name}" not found')
    return data


def materialise(pod: Mapping[str, Any], pod_dir: Path, src: Sources) -> dict[str, Path]:
    """Volume name -> host directory, with the files written."""
    out: dict[str, Path] = {}
    sa = pod["spec"].get("serviceAccountName") or "default"
    for vol in pod["spec"].get("volumes") or []:
        name = vol["name"]
        root = pod_dir / "volumes" / name
        if "hostPath" in vol:
            hp = Path(vol["hostPath"]["path"])
            if vol["hostPath"].get("type") in ("DirectoryOrCreate",):
                hp.mkdir(parents=True, exist_ok=True)
            out[name] = hp
            continue
        root.mkdir(parents=True, exist_ok=True)
        out[name] = root
        if "emptyDir" in vol:
            continue
        if "secret" in vol or "configMap" in vol:
            kind = "secret" if "secret" in vol else "configMap"
            spec = vol[kind]
            data = _fetch(src, "secret" if kind == "secret" else "configmap", spec)
            if data is not None:
                _keyed(root, data, spec, f"{kind} {name}", spec.get("defaultMode", 0o644))
        elif "downwardAPI" in vol:
            spec = vol["downwardAPI"]
            _downward(root, spec.get("items") or [], pod, spec.get("defaultMode", 0o644))
        elif "projected" in vol:
            spec = vol["projected"]
            mode = spec.get("defaultMode", 0o644)
            for s in spec.get("sources") or []:
                if "secret" in s or "configMap" in s:
                    kind = "secret" if "secret" in s else "configmap"
                    ref = s["secret" if kind == "secret" else "configMap"]
                    data = _fetch(src, kind, ref)
                    if data is not None:
                        _keyed(root, data, ref, f"{kind} {ref.get('name')}", mode)
                elif "downwardAPI" in s:
                    _downward(root, s["downwardAPI"].get("items") or [], pod, mode)
                elif "serviceAccountToken" in s:
                    t = s["serviceAccountToken"]
                    token = src.token(sa, t.get("audience"), int(t.get("expirationSeconds", 3600)))
                    _write(root, t["path"], token.encode(), 0o600 if mode == 0o644 else mode)
                elif "clusterTrustBundle" not in s:
                    raise VolumeError(f"projected source {sorted(s)} is not supported")
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise VolumeError(f"volume {name!r} of type {kinds} is not supported on process nodes")
    return out


def mounts_for(
    container: Mapping[str, Any], volumes: Mapping[str, Path], termination_file: Path
) -> list[Mount]:
    """The container's bind mounts, parents before children, plus its termination-log file."""
    out: list[Mount] = []
    for vm in container.get("volumeMounts") or []:
        if vm["name"] not in volumes:
            raise VolumeError(f"volumeMount {vm['name']!r} names no volume of the pod")
        src = volumes[vm["name"]]
        if vm.get("subPath"):
            src = src / vm["subPath"]
            if not src.exists():
                src.mkdir(parents=True)
        out.append(Mount(src, vm["mountPath"], bool(vm.get("readOnly")), src.is_file()))
    target = container.get("terminationMessagePath") or "/dev/termination-log"
    out.append(Mount(termination_file, target, False, True))
    return sorted(out, key=lambda m: m.target.rstrip("/").count("/"))


def decode_data(obj: Mapping[str, Any]) -> dict[str, bytes]:
    """data of a Secret (base64) or a ConfigMap (text + base64 binaryData) as bytes."""
    out: dict[str, bytes] = {}
    if obj.get("kind") == "Secret":
        for k, v in (obj.get("data") or {}).items():
            out[k] = base64.b64decode(v)
        for k, v in (obj.get("stringData") or {}).items():
            out[k] = v.encode()
        return out
    for k, v in (obj.get("data") or {}).items():
        out[k] = v.encode()
    for k, v in (obj.get("binaryData") or {}).items():
        out[k] = base64.b64decode(v)
    return out


def fs_group_mode(mode: int, is_dir: bool, writable: bool) -> int:
    """kubelet's SetVolumeOwnership: group read (and write for a writable volume) for fsGroup,
    and the setgid bit on directories so that new files inherit the group."""
    mode |= 0o060 if writable else 0o040
    if is_dir:
        mode |= 0o010 | 0o2000
    return mode


def apply_fs_group(root: Path, gid: int, writable: bool) -> None:
    """Give the pod's fsGroup the volume at `root` (its files, then itself), as kubelet does for
    emptyDir, secret, configMap, downwardAPI and projected volumes. emptyDir is writable."""
    import os

    paths = [*sorted(root.rglob("*")), root]
    for p in paths:
        st = p.lstat()
        if p.is_symlink():
            continue
        os.chown(p, -1, gid)
        p.chmod(fs_group_mode(st.st_mode & 0o7777, p.is_dir(), writable))


def apply_owner(root: Path, uid: int) -> None:
    """Make `uid` the owner of the volume's files (kubelet's projected volumes without fsGroup)."""
    import os

    for p in [*sorted(root.rglob("*")), root]:
        if not p.is_symlink():
            os.chown(p, uid, -1)
