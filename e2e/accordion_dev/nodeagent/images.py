"""Images on process nodes: which containers run from an image, what the image says (entrypoint,
cmd, env, user, working directory) merged with the container's spec the way kubelet and the
container runtime merge them, and the machine-wide store that pulls and unpacks each image once.

Pure functions first (tested without a registry); `ImageStore` does the I/O with skopeo and
umoci. The store is shared by every node agent of the machine: one directory per manifest
digest, `$ACCORDION_CACHE/images/rootfs/<digest>/rootfs`, created under a file lock and renamed
into place, so nodes pulling the same image at once unpack it once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from accordion_dev.nodeagent.container_env import EnvError, expand

#: a pod annotated so runs its containers from their images even outside the local registry
RUN_IMAGE_ANNOTATION = "accordion.dev/run-image"
#: the runtime's PATH when the image sets none (containerd's default)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: kubelet's image pull back-off: 10 s, doubling, at most 300 s
PULL_BACKOFF_BASE = 10.0
PULL_BACKOFF_CAP = 300.0


class ImagePullError(RuntimeError):
    """The image cannot be pulled (kubelet: ErrImagePull, then ImagePullBackOff)."""


# ---- references -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    def at(self, digest: str) -> str:
        return f"{self.registry}/{self.repository}@{digest}"


def parse_reference(image: str) -> Reference:
    """A Docker image reference, normalised as the runtimes do: no registry means docker.io
    (and `library/` for one-part names), no tag and no digest means `latest`."""
    if not image or image != image.strip():
        raise ValueError(f"invalid image reference {image!r}")
    rest, _, digest = image.partition("@")
    if digest and not digest.startswith("sha256:"):
        raise ValueError(f"invalid digest in image reference {image!r}")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
    else:
        registry, path = "docker.io", rest
        if "/" not in path:
            path = f"library/{path}"
    name, colon, tag = path.rpartition(":")
    if not colon or "/" in tag:
        name, tag = path, ""
    if not name or name != name.lower():
        raise ValueError(f"invalid repository in image reference {image!r}")
    return Reference(registry, name, tag or (None if digest else "latest"), digest or None)


def runs_from_image(image: str, annotations: Mapping[str, str], registries: Sequence[str]) -> bool:
    """Whether a container runs from its image (else from the checkout): its image is in one
    of the node's registries, or its pod asks for it."""
    if str(annotations.get(RUN_IMAGE_ANNOTATION, "")).lower() == "true":
        return True
    try:
        ref = parse_reference(image)
    except ValueError:
        return False
    return ref.registry in registries


def pull_policy(container: Mapping[str, Any]) -> str:
    """imagePullPolicy, defaulted as the apiserver does."""
    if container.get("imagePullPolicy"):
        return str(container["imagePullPolicy"])
    ref = parse_reference(str(container.get("image", "")))
    return "Always" if ref.digest is None and ref.tag == "latest" else "IfNotPresent"


def pull_backoff(failures: int) -> float:
    return float(min(PULL_BACKOFF_BASE * 2 ** max(failures - 1, 0), PULL_BACKOFF_CAP))


# ---- what the image says ---------------------------------------------------------------------
@dataclass(frozen=True)
class ImageConfig:
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""

    @classmethod
    def from_oci(cls, config: Mapping[str, Any]) -> ImageConfig:
        """From an OCI image configuration (the `config` object of the config blob)."""
        c = config.get("config") or {}
        return cls(
            tuple(c.get("Entrypoint") or ()),
            tuple(c.get("Cmd") or ()),
            tuple(c.get("Env") or ()),
            str(c.get("WorkingDir") or ""),
            str(c.get("User") or ""),
        )

    def env_dict(self) -> dict[str, str]:
        return dict(e.partition("=")[::2] for e in self.env)


def image_command(
    container: Mapping[str, Any], image: ImageConfig, env: Mapping[str, str]
) -> list[str]:
    """Kubernetes' rules: `command` replaces the ENTRYPOINT (and then the image's CMD is not
    used), `args` replaces the CMD; `$(VAR)` is expanded in command and args only."""
    command = [expand(a, env) for a in container.get("command") or []]
    args = [expand(a, env) for a in container.get("args") or []]
    argv = command + args if command else [*image.entrypoint, *(args or image.cmd)]
    if not argv:
        raise EnvError(f"container {container['name']!r}: no command specified")
    return argv


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str


def parse_passwd(text: str) -> list[Account]:
    out = []
    for line in text.splitlines():
        f = line.split(":")
        if len(f) >= 7 and f[2].isdigit() and f[3].isdigit():
            out.append(Account(f[0], int(f[2]), int(f[3]), f[5]))
    return out


def parse_group(text: str) -> list[tuple[str, int, tuple[str, ...]]]:
    out = []
    for line in text.splitlines():
        f = line.split(":")
        if len(f) >= 4 and f[2].isdigit():
            out.append((f[0], int(f[2]), tuple(m for m in f[3].split(",") if m)))
    return out


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def _security(pod_spec: Mapping[str, Any], container: Mapping[str, Any], key: str) -> Any:
    sc = container.get("securityContext") or {}
    if key in sc:
        return sc[key]
    return (pod_spec.get("securityContext") or {}).get(key)


def resolve_identity(
    pod_spec: Mapping[str, Any],
    container: Mapping[str, Any],
    image_user: str,
    passwd: str,
    group: str,
) -> Identity:
    """The process's uid, gid and supplementary groups as containerd sets them: runAsUser /
    runAsGroup win over the image's USER; a user without a group takes its /etc/passwd group
    (else 0); supplementary groups are the user's groups in the image's /etc/group plus the
    pod's fsGroup and supplementalGroups. runAsNonRoot is checked as kubelet checks it."""
    accounts = parse_passwd(passwd)
    by_name = {a.name: a for a in accounts}
    by_uid = {a.uid: a for a in accounts}
    groups_by_name = {g[0]: g[1] for g in parse_group(group)}
    run_as_user = _security(pod_spec, container, "runAsUser")
    run_as_group = _security(pod_spec, container, "runAsGroup")
    u, _, g = image_user.partition(":")
    account: Account | None
    if run_as_user is not None:
        uid = int(run_as_user)
        account = by_uid.get(uid)
        image_gid = None
    else:
        if not u:
            uid, account = 0, by_uid.get(0)
        elif u.isdigit():
            uid, account = int(u), by_uid.get(int(u))
        else:
            account = by_name.get(u)
            if account is None:
                raise EnvError(f"unable to find user {u}: no matching entries in passwd file")
            uid = account.uid
        image_gid = None
        if g:
            if g.isdigit():
                image_gid = int(g)
            elif g in groups_by_name:
                image_gid = groups_by_name[g]
            else:
                raise EnvError(f"unable to find group {g}: no matching entries in group file")
    if run_as_group is not None:
        gid = int(run_as_group)
    elif image_gid is not None:
        gid = image_gid
    else:
        gid = account.gid if account else 0
    if _security(pod_spec, container, "runAsNonRoot"):
        if run_as_user is None and u and not u.isdigit():
            raise EnvError(
                f"container has runAsNonRoot and image has non-numeric user ({u}), "
                "cannot verify user is non-root"
            )
        if uid == 0:
            raise EnvError("container has runAsNonRoot and image will run as root")
    extra: set[int] = set()
    if account is not None:
        extra |= {gid_ for name, gid_, members in parse_group(group) if account.name in members}
    psc = pod_spec.get("securityContext") or {}
    if psc.get("fsGroup") is not None:
        extra.add(int(psc["fsGroup"]))
    extra |= {int(x) for x in psc.get("supplementalGroups") or []}
    return Identity(uid, gid, tuple(sorted(extra)), account.home if account else "/")


def pod_user(pod_spec: Mapping[str, Any]) -> int | None:
    """The runAsUser every container of the pod runs as, if they all set one and agree (kubelet
    then makes it the owner of projected service-account tokens); else None."""
    containers = [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]
    users = {_security(pod_spec, c, "runAsUser") for c in containers}
    if len(users) != 1 or None in users:
        return None
    return int(users.pop())


def read_only_root(container: Mapping[str, Any]) -> bool:
    return bool((container.get("securityContext") or {}).get("readOnlyRootFilesystem"))


def container_env(
    image: ImageConfig, runtime: Mapping[str, str], identity: Identity
) -> dict[str, str]:
    """The environment under the pod's own variables: the image's, then the runtime's
    (HOSTNAME, KUBERNETES_SERVICE_*, ...), PATH and HOME defaulted as containerd does."""
    env = {"PATH": DEFAULT_PATH, **image.env_dict(), **runtime}
    env.setdefault("HOME", identity.home or "/")
    return env


def secure_join(root: Path, path: str, max_links: int = 40) -> Path:
    """`path` inside the directory tree `root`, symlinks resolved as if `root` were `/` (so a
    link such as /var/run -> /run never leads out of the image), like runc's securejoin. The
    result need not exist."""
    parts = list(PurePosixPath("/", path).parts[1:])
    current = PurePosixPath("/")
    links = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            current = current.parent
            continue
        candidate = current / part
        host = root / candidate.relative_to("/")
        if host.is_symlink():
            links += 1
            if links > max_links:
                raise EnvError(f"too many symbolic links resolving {path!r} in the image")
            target = PurePosixPath(os.readlink(host))
            parts = [*target.parts[1:], *parts] if target.is_absolute() else [*target.parts, *parts]
            if target.is_absolute():
                current = PurePosixPath("/")
            continue
        current = candidate
    return root / current.relative_to("/")


# ---- the store -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Image:
    reference: str  # registry/repository@digest
    digest: str
    rootfs: Path
    config: ImageConfig


_LOGFMT_MSG = re.compile(r'level=\w+ msg="((?:[^"\\]|\\.)*)"')


def _tail(err: bytes | str | None) -> str:
    """The last line a tool wrote, without skopeo's logfmt wrapping (`time=... level=fatal
    msg="..."`)."""
    text = err.decode(errors="replace") if isinstance(err, bytes) else (err or "")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else "failed"
    if m := _LOGFMT_MSG.search(last):
        last = m.group(1).replace('\\"', '"')
    return last


class ImageStore:
    """Pulls and unpacks images into `root` (machine-wide), once per manifest digest."""

    def __init__(self, root: Path, insecure: Sequence[str] = ()) -> None:
        self.root = root
        self.insecure = tuple(insecure)  # registries spoken to over plain HTTP
        self._memo: dict[str, Image] = {}

    def _tls(self, ref: Reference) -> str:
        return "false" if ref.registry in self.insecure else "true"

    def _run(self, argv: list[str], what: str, timeout: float = 1800) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, check=True, timeout=timeout)
        except FileNotFoundError as e:
            raise ImagePullError(f"{what}: {argv[0]} is not installed ({e})") from None
        except subprocess.CalledProcessError as e:
            raise ImagePullError(f"{what}: {_tail(e.stderr)}") from None
        except subprocess.TimeoutExpired:
            raise ImagePullError(f"{what}: timed out after {timeout:.0f} s") from None
        return out.stdout.decode()

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with (locks / name).open("w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def _tag_file(self, ref: Reference) -> Path:
        return self.root / "tags" / hashlib.sha256(str(ref).encode()).hexdigest()[:32]

    def resolve(self, ref: Reference, policy: str) -> str:
        """The manifest digest a reference names (a registry round trip for a tag, unless
        IfNotPresent finds it pulled before)."""
        if ref.digest:
            return ref.digest
        tag_file = self._tag_file(ref)
        if policy != "Always" and tag_file.exists():
            return tag_file.read_text().strip()
        if policy == "Never":
            raise ImagePullError(f'image "{ref}" is not present with pull policy of Never')
        out = self._run(
            [
                "skopeo",
                "inspect",
                f"--tls-verify={self._tls(ref)}",
                "--format",
                "{{.Digest}}",
                f"docker://{ref}",
            ],
            f'failed to resolve reference "{ref}"',
            timeout=120,
        )
        digest = out.strip()
        tag_file.parent.mkdir(parents=True, exist_ok=True)
        tag_file.write_text(digest)
        return digest

    def pull(self, image: str, policy: str = "IfNotPresent") -> Image:
        try:
            ref = parse_reference(image)
        except ValueError as e:
            raise ImagePullError(str(e)) from None
        digest = self.resolve(ref, policy)
        if digest in self._memo:
            return self._memo[digest]
        hexd = digest.removeprefix("sha256:")
        final = self.root / "rootfs" / hexd
        if not (final / "image-config.json").exists():
            if policy == "Never":
                raise ImagePullError(f'image "{image}" is not present with pull policy of Never')
            with self._locked(hexd):
                if not (final / "image-config.json").exists():
                    self._unpack(ref, digest, final)
        config = ImageConfig.from_oci(json.loads((final / "image-config.json").read_text()))
        pulled = Image(ref.at(digest), digest, final / "rootfs", config)
        self._memo[digest] = pulled
        return pulled

    def _unpack(self, ref: Reference, digest: str, final: Path) -> None:
        tmp = self.root / "tmp" / f"{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        what = f'failed to pull and unpack image "{ref}"'
        try:
            layout = tmp / "layout"
            self._run(
                [
                    "skopeo",
                    "copy",
                    "--quiet",
                    f"--src-tls-verify={self._tls(ref)}",
                    f"docker://{ref.at(digest)}",
                    f"oci:{layout}:image",
                ],
                what,
            )
            rootless = [] if os.geteuid() == 0 else ["--rootless"]
            self._run(
                ["umoci", "unpack", *rootless, "--image", f"{layout}:image", str(tmp / "bundle")],
                what,
            )
            blobs = layout / "blobs" / "sha256"
            index = json.loads((layout / "index.json").read_text())
            manifest_digest = index["manifests"][0]["digest"].removeprefix("sha256:")
            manifest = json.loads((blobs / manifest_digest).read_text())
            config_blob = blobs / manifest["config"]["digest"].removeprefix("sha256:")
            (tmp / "bundle" / "image-config.json").write_bytes(config_blob.read_bytes())
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(final, ignore_errors=True)
            (tmp / "bundle").rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
