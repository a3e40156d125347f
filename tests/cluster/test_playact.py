"""The launcher played by the speedup model (accordion_dev.playact) on kwok with the real
operator: it starts at the grant, shrinks when a newcomer's minimum takes GPUs, grows back when
they free up, pauses per rescale, reports progress, and its exit 0 makes the run Succeeded."""

from __future__ import annotations

import time

from operator_support import Api, Operator

from accordion_dev.cluster import Cluster
from accordion_dev.playact import PlayedRun, Player
from accordion_dev.polling import poll
from accordion_dev.simulated_runs import run_body

KWOK = {"type": "kwok"}


def linear(n: int) -> float:
    return float(n)


def test_played_launcher_shrinks_grows_and_finishes(
    api: Api, operator: Operator, cluster: Cluster
) -> None:
    r = api.http.get("/api/v1/nodes", params={"labelSelector": "type=kwok"})
    c = sum(int(n["status"]["allocatable"].get("nvidia.com/gpu", 0)) for n in r.json()["items"])
    assert c >= 4, c
    api.secret()
    with cluster.http() as http, cluster.http(timeout=None) as watch:
        player = Player(http, watch, api.ns)
        try:
            # a: elastic 1..c, 6 s of work at c workers; b: a gang of half the GPUs, 1 s
            a = PlayedRun(
                "a", 6.0, c, 1, linear, grow_pause=0.3, shrink_pause=0.1, epochs=4, settle=0.2
            )
            b = PlayedRun("b", 1.0, c // 2, c // 2, linear, epochs=1, settle=0.2)
            assert api.create(run_body("a", lo=1, hi=c, nodeSelector=KWOK)).status_code == 201
            player.add(a)
            deadline = time.monotonic() + 40  # under load; it takes ~10 s
            while a.world < c:  # a takes the whole cluster
                player.step()
                assert time.monotonic() < deadline, f"a never reached {c} workers: {a.worlds}"
                time.sleep(0.05)
            t_b = time.time()  # the player's clock
            assert (
                api.create(run_body("b", lo=c // 2, hi=c // 2, nodeSelector=KWOK)).status_code
                == 201
            )
            player.add(b)
            while a.finished is None or b.finished is None:
                player.step()
                assert time.monotonic() < deadline, f"not finished: a {a.worlds}, b {b.worlds}"
                time.sleep(0.05)
        finally:
            player.close()
    # a grew to the whole cluster (its pods turn Ready over a moment, so its world may have
    # formed smaller: the real launcher starts at --min-np too), made room for b's minimum,
    # then grew back once b was done
    assert [n for t, n in a.worlds if t < t_b][-1] == c
    after = [n for t, n in a.worlds if t >= t_b]
    assert min(after) <= c - c // 2
    assert after[-1] == c
    assert a.shrinks >= 1
    assert a.grows >= 1
    assert b.worlds == [(b.started, c // 2)]
    assert b.rescales == 0
    assert b.finished is not None
    assert b.finished < a.finished
    # the work took longer than at c workers throughout: the shrink and the pauses cost time
    assert a.started is not None
    assert a.finished - a.started > 6.0 + 0.3 + 0.1
    for name in ("a", "b"):
        poll(lambda n=name: api.status(n).get("phase") == "Succeeded", 15, what=f"{name} done")
    training = api.status("a")["training"]
    assert training["epoch"] == 4
    assert training["worldSize"] == c
    assert len(training["worldPods"]) == c
    assert training["resultsURI"].startswith("s3://results/")
