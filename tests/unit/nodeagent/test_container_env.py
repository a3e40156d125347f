"""Container environment resolution as kubelet does it."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from accordion_dev.nodeagent.container_env import (
    EnvError,
    command_line,
    expand,
    field_value,
    parse_quantity,
    resolve_env,
)

POD = {
    "metadata": {"name": "w-0", "namespace": "ns", "uid": "u1", "labels": {"a": "1", "b": "x"}},
    "spec": {"nodeName": "proc-0", "serviceAccountName": "sa"},
    "status": {"podIP": "127.100.0.7", "hostIP": "127.100.0.1"},
}
SECRETS = {"creds": {"accessKey": "AK", "secretKey": "SK"}}
CONFIGMAPS = {"cfg": {"MODE": "fast", "LEVEL": "3"}}


def _secrets(name: str) -> Mapping[str, str] | None:
    return SECRETS.get(name)


def _cms(name: str) -> Mapping[str, str] | None:
    return CONFIGMAPS.get(name)


def test_value_from_secret_configmap_and_field_refs() -> None:
    c = {
        "name": "m",
        "env": [
            {"name": "AK", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "accessKey"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "MODE"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "URL", "value": "http://$(IP):80/$(POD)/$(NOPE)/$$(IP)"},
        ],
    }
    env = resolve_env(c, POD, _secrets, _cms, {"PATH": "/bin"})
    assert env["AK"] == "AK"
    assert env["MODE"] == "fast"
    assert (env["POD"], env["NS"], env["IP"], env["NODE"]) == ("w-0", "ns", "127.100.0.7", "proc-0")
    assert env["URL"] == "http://127.100.0.7:80/w-0/$(NOPE)/$(IP)"
    assert env["PATH"] == "/bin"


def test_env_from_with_prefix_is_overridden_by_env() -> None:
    c = {
        "name": "m",
        "envFrom": [
            {"configMapRef": {"name": "cfg"}, "prefix": "C_"},
            {"secretRef": {"name": "creds"}},
        ],
        "env": [{"name": "C_MODE", "value": "slow"}],
    }
    env = resolve_env(c, POD, _secrets, _cms, {})
    assert env == {"C_MODE": "slow", "C_LEVEL": "3", "accessKey": "AK", "secretKey": "SK"}


def test_missing_references_fail_unless_optional() -> None:
    missing_key = {"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope"}}}
    with pytest.raises(EnvError, match="no key 'nope'"):
        resolve_env({"name": "m", "env": [missing_key]}, POD, _secrets, _cms, {})
    with pytest.raises(EnvError, match="not found"):
        resolve_env(
            {"name": "m", "envFrom": [{"secretRef": {"name": "gone"}}]}, POD, _secrets, _cms, {}
        )
    optional = {
        "name": "X",
        "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": True}},
    }
    assert "X" not in resolve_env({"name": "m", "env": [optional]}, POD, _secrets, _cms, {})


def test_resource_field_ref_uses_limits_or_node_allocatable() -> None:
    c = {
        "name": "m",
        "resources": {"limits": {"memory": "1Gi"}, "requests": {"cpu": "500m"}},
        "env": [
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
            {
                "name": "CPU_REQ",
                "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}},
            },
            {"name": "CPU_LIM", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        ],
    }
    env = resolve_env(c, POD, _secrets, _cms, {}, {"cpu": "16"})
    assert (env["MEM"], env["CPU_REQ"], env["CPU_LIM"]) == ("1024", "500", "16")


def test_quantities_and_label_field_paths() -> None:
    assert parse_quantity("64Gi") == 64 * 2**30
    assert parse_quantity("250m") * 1000 == 250
    assert parse_quantity("2k") == 2000
    assert field_value(POD, "metadata.labels['b']") == "x"
    assert field_value(POD, "metadata.labels") == 'a="1"\nb="x"'
    with pytest.raises(EnvError):
        field_value(POD, "spec.bogus")


def test_command_line_expands_and_requires_a_command() -> None:
    argv = command_line({"name": "m", "command": ["echo"], "args": ["$(A)", "$(B)"]}, {"A": "1"})
    assert argv == ["echo", "1", "$(B)"]
    with pytest.raises(EnvError, match="ignore the image"):
        command_line({"name": "m", "image": "busybox"}, {})
    assert expand("$$$$", {}) == "$$"
