"""The apiserver client honours 429 Too Many Requests (API priority and fairness): it waits as
Retry-After says and retries, a bounded number of times (an aiohttp server stands in for the
apiserver; the real one is in tests/cluster)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestServer
from standin_kube import standin_kube

from accordion_operator.core import kube


async def _serve(throttled: int) -> tuple[TestServer, list[str]]:
    """A server answering 429 (Retry-After: 0) `throttled` times, then 201."""
    calls: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(request.path)
        if len(calls) <= throttled:
            return web.json_response(
                {"message": "too many requests"}, status=429, headers={"Retry-After": "0"}
            )
        return web.json_response({"kind": "Pod"}, status=201)

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handler)
    server = TestServer(app)
    await server.start_server()
    return server, calls


async def _create(throttled: int) -> tuple[int, dict[str, object], list[str]]:
    """A Pod created against a server that throttles `throttled` times: status, body, calls."""
    server, calls = await _serve(throttled)
    k = standin_kube(str(server.make_url("")).rstrip("/"))
    try:
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}}
        code, data = await k.create(body)
    finally:
        await k.close()
        await server.close()
    return code, data, calls


async def test_a_throttled_request_is_retried_after_retry_after() -> None:
    code, data, calls = await _create(throttled=2)
    assert code == 201
    assert data == {"kind": "Pod"}
    assert calls == ["/api/v1/namespaces/ns/pods"] * 3


async def test_throttling_that_persists_reaches_the_caller() -> None:
    code, _, calls = await _create(throttled=100)
    assert code == 429
    assert len(calls) == kube.THROTTLE_RETRIES + 1
