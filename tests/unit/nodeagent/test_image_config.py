"""Process nodes running images: the pure parts (references, which containers run from an image,
Kubernetes' command/args and user rules, symlinks resolved inside the image, fsGroup modes, the
shape of the container's mount script)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from accordion_dev.nodeagent import images, runtime
from accordion_dev.nodeagent.container_env import EnvError
from accordion_dev.nodeagent.images import (
    ImageConfig,
    Reference,
    container_env,
    image_command,
    parse_reference,
    pull_backoff,
    pull_policy,
    resolve_identity,
    runs_from_image,
    secure_join,
)
from accordion_dev.nodeagent.volumes import Mount, fs_group_mode

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("image", "want"),
    [
        ("python", Reference("docker.io", "library/python", "latest", None)),
        ("python:3.11-slim", Reference("docker.io", "library/python", "3.11-slim", None)),
        ("ghcr.io/a/b:1", Reference("ghcr.io", "a/b", "1", None)),
        (f"127.0.0.1:5000/a/op@{DIGEST}", Reference("127.0.0.1:5000", "a/op", None, DIGEST)),
        (f"localhost/x:t@{DIGEST}", Reference("localhost", "x", "t", DIGEST)),
        ("user/repo", Reference("docker.io", "user/repo", "latest", None)),
        ("reg:5000/repo", Reference("reg:5000", "repo", "latest", None)),
    ],
)  # fmt: skip
def test_references_are_normalised_as_the_runtimes_do(image: str, want: Reference) -> None:
    assert parse_reference(image) == want


@pytest.mark.parametrize("bad", ["", " x", "UPPER/case", "a@md5:00"])
def test_invalid_references_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        parse_reference(bad)


def test_a_container_runs_from_its_image_only_in_a_local_registry_or_when_asked() -> None:
    local = ("127.0.0.1:15000",)
    assert runs_from_image(f"127.0.0.1:15000/accordion/op@{DIGEST}", {}, local)
    assert not runs_from_image("ghcr.io/accordion-dev/accordion-operator:0.1.0", {}, local)
    assert not runs_from_image("127.0.0.1:15001/x", {}, local)  # another cluster's registry
    assert runs_from_image("ghcr.io/x/y:1", {images.RUN_IMAGE_ANNOTATION: "true"}, local)
    assert not runs_from_image("not a ref", {}, local)


def test_pull_policy_and_back_off_follow_kubelet() -> None:
    assert pull_policy({"image": "x"}) == "Always"
    assert pull_policy({"image": "x:latest"}) == "Always"
    assert pull_policy({"image": "x:1"}) == "IfNotPresent"
    assert pull_policy({"image": f"x@{DIGEST}"}) == "IfNotPresent"
    assert pull_policy({"image": "x", "imagePullPolicy": "Never"}) == "Never"
    assert [pull_backoff(n) for n in (1, 2, 3, 6, 20)] == [10, 20, 40, 300, 300]


IMAGE = ImageConfig(
    entrypoint=("python", "-m", "accordion_trainer"),
    cmd=("--help",),
    env=("PATH=/opt/accordion/bin:/usr/bin", "PYTHONPATH=/opt/accordion/app", "EMPTY="),
    working_dir="/home/accordion",
    user="10001:10001",
)


@pytest.mark.parametrize(
    ("container", "want"),
    [
        ({}, ["python", "-m", "accordion_trainer", "--help"]),
        ({"args": ["launch", "$(RUN)"]}, ["python", "-m", "accordion_trainer", "launch", "r1"]),
        ({"command": ["sh", "-c"]}, ["sh", "-c"]),  # the image's CMD is dropped too
        ({"command": ["sh"], "args": ["-c", "x"]}, ["sh", "-c", "x"]),
    ],
)
def test_command_and_args_replace_entrypoint_and_cmd(
    container: dict[str, Any], want: list[str]
) -> None:
    assert image_command({"name": "c", **container}, IMAGE, {"RUN": "r1"}) == want


def test_an_image_without_a_command_and_a_container_without_one_is_a_config_error() -> None:
    with pytest.raises(EnvError, match="no command specified"):
        image_command({"name": "c"}, ImageConfig(), {})


def test_oci_config_is_read() -> None:
    cfg = ImageConfig.from_oci(
        {"config": {"Entrypoint": ["a"], "Env": ["A=1=2"], "User": "u", "WorkingDir": "/w"}}
    )
    assert cfg == ImageConfig(("a",), (), ("A=1=2",), "/w", "u")
    assert cfg.env_dict() == {"A": "1=2"}


PASSWD = """root:x:0:0:root:/root:/bin/bash
accordion:x:10001:10001::/home/accordion:/bin/sh
app:x:1000:1000::/srv/app:/bin/sh
"""
GROUP = """root:x:0:
accordion:x:10001:
app:x:1000:
video:x:44:app
"""


def test_run_as_user_and_group_win_over_the_image_user() -> None:
    pod = {"securityContext": {"runAsUser": 2000, "fsGroup": 3000, "supplementalGroups": [7]}}
    got = resolve_identity(pod, {"securityContext": {"runAsGroup": 2001}}, "10001", PASSWD, GROUP)
    assert got == images.Identity(2000, 2001, (7, 3000), "/")


def test_the_image_user_by_name_takes_its_passwd_group_and_groups() -> None:
    got = resolve_identity({}, {}, "app", PASSWD, GROUP)
    assert got == images.Identity(1000, 1000, (44,), "/srv/app")
    assert resolve_identity({}, {}, "10001:10001", PASSWD, GROUP).home == "/home/accordion"
    assert resolve_identity({}, {}, "", PASSWD, GROUP).uid == 0
    with pytest.raises(EnvError, match="unable to find user nobody"):
        resolve_identity({}, {}, "nobody", PASSWD, GROUP)


def test_run_as_non_root_is_checked_like_kubelet() -> None:
    non_root = {"securityContext": {"runAsNonRoot": True}}
    with pytest.raises(EnvError, match="image will run as root"):
        resolve_identity(non_root, {}, "", PASSWD, GROUP)
    with pytest.raises(EnvError, match="non-numeric user"):
        resolve_identity(non_root, {}, "app", PASSWD, GROUP)
    assert resolve_identity(non_root, {}, "10001:10001", PASSWD, GROUP).uid == 10001


def test_the_environment_is_the_images_then_the_runtimes() -> None:
    ident = images.Identity(10001, 10001, (), "/home/accordion")
    env = container_env(IMAGE, {"KUBERNETES_SERVICE_HOST": "127.0.0.1"}, ident)
    assert env["PATH"] == "/opt/accordion/bin:/usr/bin"
    assert env["HOME"] == "/home/accordion"
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert container_env(ImageConfig(), {}, ident)["PATH"] == images.DEFAULT_PATH


def test_symlinks_resolve_inside_the_image(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "var").mkdir()
    os.symlink("/run", tmp_path / "var" / "run")  # as in Debian: absolute, to the image's /run
    os.symlink("../../etc", tmp_path / "var" / "up")
    os.symlink("/" + "../" * 5 + "etc/passwd", tmp_path / "escape")
    assert secure_join(tmp_path, "/var/run/secrets/x") == tmp_path / "run/secrets/x"
    assert secure_join(tmp_path, "/var/up/hosts") == tmp_path / "etc/hosts"
    assert secure_join(tmp_path, "/escape") == tmp_path / "etc/passwd"
    assert secure_join(tmp_path, "/../../x") == tmp_path / "x"
    os.symlink("loop", tmp_path / "loop")
    with pytest.raises(EnvError, match="too many symbolic links"):
        secure_join(tmp_path, "/loop/x")


def test_fs_group_gives_the_group_read_or_write_and_setgid_directories() -> None:
    assert fs_group_mode(0o440, is_dir=False, writable=False) == 0o440
    assert fs_group_mode(0o400, is_dir=False, writable=False) == 0o440
    assert fs_group_mode(0o644, is_dir=False, writable=True) == 0o664
    assert fs_group_mode(0o755, is_dir=True, writable=True) == 0o2775


def test_the_mount_script_builds_the_root_then_volumes_then_makes_it_read_only(
    tmp_path: Path,
) -> None:
    lower = tmp_path / "rootfs"
    (lower / "run").mkdir(parents=True)
    (lower / "var").mkdir()
    os.symlink("/run", lower / "var" / "run")
    run = runtime.ImageRun(
        lower, tmp_path / "c", images.Identity(10001, 10001, (2000,), "/"), "/w", read_only=True
    )
    mounts = [
        Mount(tmp_path / "sa", "/var/run/secrets/kubernetes.io/serviceaccount", True, False),
        Mount(tmp_path / "term", "/dev/termination-log", False, True),
    ]
    script = runtime.image_wrapper_script(mounts, run, "pod-0", None)
    lines = script.splitlines()
    root = str(tmp_path / "c" / "root")

    def index(fragment: str) -> int:
        return next(i for i, ln in enumerate(lines) if fragment in ln)

    assert index("mount -t overlay") < index("mount -t proc") < index("mount -t tmpfs")
    sa = f"mount --bind {tmp_path / 'sa'} {root}/run/secrets/kubernetes.io/serviceaccount"
    assert sa in lines  # through the image's /var/run -> /run, not the host's
    assert index(sa) > index("mount -t tmpfs -o nosuid,mode=755")  # /dev before its files
    assert lines[-2] == f"mount -o remount,ro {root}"
    assert lines[-1] == 'exec "$@"'
    argv = run.enter_argv(["python", "-V"])
    assert argv[3:] == [
        str(runtime.ENTER), root, "10001", "10001", "2000", "/w", "0", "--", "python", "-V",
    ]  # fmt: skip


def test_a_pull_failure_says_what_skopeo_said_without_its_log_wrapping() -> None:
    err = (
        b'time="2026-12-02T14:25:59Z" level=fatal msg="Error parsing image name '
        b'\\"docker://r/x:1\\": reading manifest 1 in r/x: manifest unknown"\n'
    )
    assert images._tail(err) == (
        'Error parsing image name "docker://r/x:1": reading manifest 1 in r/x: manifest unknown'
    )
    assert images._tail(b"plain failure\n") == "plain failure"


def test_the_pods_user_owns_its_token_only_when_every_container_agrees() -> None:
    c = [{"name": "a"}, {"name": "b", "securityContext": {"runAsUser": 7}}]
    assert images.pod_user({"securityContext": {"runAsUser": 7}, "containers": c}) == 7
    assert images.pod_user({"securityContext": {"runAsUser": 8}, "containers": c}) is None
    assert images.pod_user({"containers": c}) is None
