"""A `Kube` client pointed at a local aiohttp server that stands in for the apiserver (unit tests
of the operator's HTTP edge; the real apiserver is in tests/cluster)."""

from __future__ import annotations

from accordion_operator.config import Config
from accordion_operator.core.kube import ApiClient, Kube


class _Auth:
    token = ""
    server = ""

    async def ssl_context(self) -> bool:
        return False

    async def reauthenticate(self) -> None:
        return None


class _Api:
    """What `ApiClient` reads of a kr8s Api: its auth (server URL, no token, plain HTTP)."""

    def __init__(self, server: str) -> None:
        self.auth = _Auth()
        self.auth.server = server


def standin_kube(url: str, config: Config | None = None) -> Kube:
    return Kube(ApiClient(_Api(url), 4), config or Config())  # type: ignore[arg-type]
