"""Pod volumes materialised as directories, and the mounts of a container."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from accordion_dev.nodeagent.volumes import VolumeError, decode_data, materialise, mounts_for


class FakeSources:
    """Stands in for the apiserver lookups (pure data, no cluster)."""

    def __init__(self) -> None:
        self.tokens: list[tuple[str, str | None, int]] = []

    def secret(self, name: str) -> Mapping[str, bytes] | None:
        return {"id_ed25519": b"PRIVATE", "id_ed25519.pub": b"PUBLIC"} if name == "ssh" else None

    def configmap(self, name: str) -> Mapping[str, bytes] | None:
        return {"ca.crt": b"CA"} if name == "kube-root-ca.crt" else None

    def token(self, service_account: str, audience: str | None, seconds: int) -> str:
        self.tokens.append((service_account, audience, seconds))
        return "TOKEN"


POD: dict[str, Any] = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "x"}},
    "spec": {
        "serviceAccountName": "launcher",
        "containers": [{"name": "c"}],
        "volumes": [
            {"name": "scratch", "emptyDir": {}},
            {
                "name": "ssh",
                "secret": {
                    "secretName": "ssh",
                    "defaultMode": 0o600,
                    "items": [{"key": "id_ed25519", "path": "key"}],
                },
            },
            {
                "name": "info",
                "downwardAPI": {
                    "items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]
                },
            },
            {
                "name": "kube-api-access",
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": "namespace",
                                        "fieldRef": {"fieldPath": "metadata.namespace"},
                                    }
                                ]
                            }
                        },
                    ]
                },
            },
        ],
    },
}


def test_materialise_writes_every_volume_kind(tmp_path: Path) -> None:
    src = FakeSources()
    vols = materialise(POD, tmp_path, src)
    assert (vols["ssh"] / "key").read_bytes() == b"PRIVATE"
    assert (vols["ssh"] / "key").stat().st_mode & 0o777 == 0o600
    assert not (vols["ssh"] / "id_ed25519.pub").exists()  # items select keys
    assert (vols["info"] / "labels").read_text() == 'app="x"'
    api = vols["kube-api-access"]
    assert (api / "token").read_text() == "TOKEN"
    assert (api / "ca.crt").read_text() == "CA"
    assert (api / "namespace").read_text() == "ns"
    assert src.tokens == [("launcher", None, 3607)]
    assert vols["scratch"].is_dir()
    assert vols["scratch"] == tmp_path / "volumes" / "scratch"


def test_a_missing_secret_blocks_the_pod_unless_optional(tmp_path: Path) -> None:
    pod = {
        **POD,
        "spec": {**POD["spec"], "volumes": [{"name": "s", "secret": {"secretName": "no"}}]},
    }
    with pytest.raises(VolumeError, match='secret "no" not found'):
        materialise(pod, tmp_path, FakeSources())
    pod["spec"]["volumes"][0]["secret"]["optional"] = True
    assert materialise(pod, tmp_path, FakeSources())["s"].is_dir()


def test_unsupported_volumes_and_escaping_paths_are_refused(tmp_path: Path) -> None:
    pvc = {**POD, "spec": {**POD["spec"], "volumes": [{"name": "d", "persistentVolumeClaim": {}}]}}
    with pytest.raises(VolumeError, match="not supported"):
        materialise(pvc, tmp_path, FakeSources())
    bad = {
        "name": "s",
        "secret": {"secretName": "ssh", "items": [{"key": "id_ed25519", "path": "../x"}]},
    }
    with pytest.raises(VolumeError, match="escapes"):
        materialise({**POD, "spec": {**POD["spec"], "volumes": [bad]}}, tmp_path, FakeSources())


def test_mounts_are_ordered_parents_first_with_the_termination_log(tmp_path: Path) -> None:
    (tmp_path / "a" / "sub").mkdir(parents=True)
    vols = {"a": tmp_path / "a", "b": tmp_path / "b"}
    c = {
        "name": "c",
        "terminationMessagePath": "/tmp/term",
        "volumeMounts": [
            {"name": "b", "mountPath": "/data/inner/deeper"},
            {"name": "a", "mountPath": "/data", "readOnly": True},
            {"name": "a", "mountPath": "/x/sub", "subPath": "sub"},
        ],
    }
    ms = mounts_for(c, vols, tmp_path / "term")
    assert [m.target for m in ms][:1] == ["/data"]
    assert [m.target for m in ms].index("/data") < [m.target for m in ms].index(
        "/data/inner/deeper"
    )
    assert next(m for m in ms if m.target == "/data").read_only
    assert next(m for m in ms if m.target == "/x/sub").source == tmp_path / "a" / "sub"
    term = next(m for m in ms if m.target == "/tmp/term")
    assert term.is_file
    assert term.source == tmp_path / "term"
    with pytest.raises(VolumeError, match="names no volume"):
        mounts_for(
            {"name": "c", "volumeMounts": [{"name": "zz", "mountPath": "/z"}]}, vols, tmp_path
        )


def test_decode_data_of_secrets_and_configmaps() -> None:
    secret = {"kind": "Secret", "data": {"k": base64.b64encode(b"\x00bin").decode()}}
    assert decode_data(secret) == {"k": b"\x00bin"}
    cm = {
        "kind": "ConfigMap",
        "data": {"t": "text"},
        "binaryData": {"b": base64.b64encode(b"B").decode()},
    }
    assert decode_data(cm) == {"t": b"text", "b": b"B"}


def test_etc_hosts_resolves_the_pod_hostname_to_its_ip() -> None:
    from accordion_dev.nodeagent.volumes import etc_hosts

    lines = etc_hosts("127.104.0.3", "mnist-worker-0").splitlines()
    assert "127.104.0.3\tmnist-worker-0" in lines
    assert "127.0.0.1\tlocalhost" in lines
