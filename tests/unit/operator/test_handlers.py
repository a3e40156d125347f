"""kopf settings of the operator (no cluster: the settings object only)."""

from __future__ import annotations

import logging
from pathlib import Path

import kopf
import pytest

from accordion_operator import handlers
from accordion_operator.handlers import configure


def test_kopf_settings() -> None:
    settings = kopf.OperatorSettings()
    configure(settings)
    assert not settings.posting.enabled  # our Events are explicit


def test_in_cluster_login_uses_the_service_env_not_cluster_dns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("tok\n")
    (tmp_path / "namespace").write_text("ops")
    monkeypatch.setattr(handlers, "_SA_DIR", tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "16402")
    info = handlers.login(logger=logging.getLogger("test"))
    assert info is not None
    assert info.server == "https://127.0.0.1:16402"
    assert info.token == "tok"
    assert info.default_namespace == "ops"
