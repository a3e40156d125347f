"""Streamed data (`train-*.npz` shards) vs the in-memory path, under a worker's memory limit.

A standalone run (`accordion-train run -np 1`, model `mlp`, batch 64) runs inside a cgroup-v1
memory cgroup with `memory.limit_in_bytes` set, created and filled by the node agent's own code
(`accordion_dev.nodeagent.runtime.spawn`, what a process node does for a pod's
`resources.limits.memory`): the kernel OOM-kills a process of the group that goes over it. The
whole run is in the group (the CLI, horovodrun and the training process), so the limit also
pays for horovodrun, which in a cluster lives in the launcher pod: the worker's case is easier.

Four runs, each stopped after `--steps` steps (throughput: samples over the wall time between
the progress lines at `--warmup` steps and at `--steps` steps):
- in-memory, small set (`--small` samples, one `.npz`: what fits);
- streamed, the same small set in shards (the cost of streaming);
- streamed, the big set (MNIST images tiled to at least 2x the limit, shards of ~78 MB);
- in-memory, the big set (a `load_data` that concatenates the shards, as a user would do
  today): expected to be OOM-killed.
Peak memory: the training process's VmHWM and the group's peak resident memory (`total_rss`
of memory.stat, sampled every 0.2 s; page cache, which the kernel reclaims before it kills, is
reported apart). The data sets are written once to `--cache` (default
.accordion/bench-streamed/, ignored by git) and reused.

    .venv/bin/python -m benchmarks.trainer_streamed [--limit-mib 1536 --steps 600]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from accordion_dev.nodeagent.runtime import (
    Process,
    kill_cgroup,
    memory_cgroup_root,
    remove_cgroup_tree,
    spawn,
)
from benchmarks._trainer import REPO, env, events, save, trainer

BATCH = 64
SHARD = 100_000  # samples per shard: 78.4 MB of 28x28 uint8
CONCAT_MODEL = """
import glob, os
import numpy as np
from accordion_trainer.models import BUILTIN_MODELS


def build_model(hparams):
    return BUILTIN_MODELS["mlp"](hparams)


def load_data(path, hparams):  # the whole training set in memory, as before streaming
    files = sorted(glob.glob(os.path.join(path, "train-*.npz")))
    xs, ys = [], []
    for f in files:
        with np.load(f) as z:
            xs.append(z["x"])
            ys.append(z["y"])
    with np.load(os.path.join(path, "val.npz")) as z:
        val = (z["x"], z["y"])
    return {"x_train": np.concatenate(xs), "y_train": np.concatenate(ys),
            "x_val": val[0], "y_val": val[1]}
"""


def mnist_tiles(a: dict[str, Any], n: int, offset: int = 0) -> tuple[Any, Any]:
    """`n` of the sample's training images, repeated from `offset` on."""
    idx = (np.arange(n) + offset) % len(a["x_train"])
    return a["x_train"][idx], a["y_train"][idx]


def write_sets(cache: Path, big_bytes: int, small: int) -> dict[str, Any]:
    """The big sharded set, the small set as shards and as one in-memory `.npz` (cached)."""
    from accordion_trainer.data import mnist_sample

    n_shards = -(-big_bytes // (SHARD * 784))
    manifest = cache / "manifest.json"
    want = {"shards": n_shards, "shard": SHARD, "small": small}
    if manifest.exists() and json.loads(manifest.read_text()) == want:
        return want
    shutil.rmtree(cache, ignore_errors=True)
    a = mnist_sample()
    for name in ("big", "small-sharded", "small-npz"):
        (cache / name).mkdir(parents=True)
    t0 = time.monotonic()
    for i in range(n_shards):
        x, y = mnist_tiles(a, SHARD, i * 7)
        np.savez(cache / "big" / f"train-{i:05d}.npz", x=x, y=y)
    x, y = mnist_tiles(a, small)
    for i in range(-(-small // 8000)):
        sl = slice(i * 8000, (i + 1) * 8000)
        np.savez(cache / "small-sharded" / f"train-{i:05d}.npz", x=x[sl], y=y[sl])
    for d in ("big", "small-sharded"):
        np.savez(cache / d / "val.npz", x=a["x_val"], y=a["y_val"])
    np.savez(
        cache / "small-npz" / "data.npz", x_train=x, y_train=y, x_val=a["x_val"], y_val=a["y_val"]
    )
    (cache / "concat-model").mkdir()
    (cache / "concat-model" / "model.py").write_text(CONCAT_MODEL)
    print(f"[bench] data sets written in {time.monotonic() - t0:.0f} s -> {cache}", flush=True)
    manifest.write_text(json.dumps(want))
    return want


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*.npz"))


def _stat(memcg: Path) -> dict[str, int]:
    try:
        lines = (memcg / "memory.stat").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v) for k, v in (ln.split() for ln in lines)}


def _hwm(pid: int) -> int:
    """A process's peak resident memory (VmHWM), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _training_pids(memcg: Path) -> list[int]:
    out = []
    try:
        pids = [int(p) for p in (memcg / "cgroup.procs").read_text().split()]
    except OSError:
        return []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"accordion_trainer" in cmd and b"train" in cmd:
            out.append(pid)
    return out


def run_one(
    name: str, model: str, data: Path, limit: int, steps: int, warmup: int, tmp: Path
) -> dict[str, Any]:
    root = memory_cgroup_root()
    assert root is not None, "no writable cgroup-v1 memory hierarchy (needs root)"
    memcg = root / f"bench-streamed-{os.getpid()}-{name}"
    work, log = tmp / name, tmp / f"{name}.log"
    argv = trainer(
        "run", "-np", "1", "--model", model, "--data", str(data), "--results", str(work / "res"),
        "--work", str(work), "--run-name", name, "--epochs", "1", "--batch-size", str(BATCH),
    )  # fmt: skip
    proc: Process = spawn(
        argv,
        env(ACCORDION_TF_THREADS="2"),
        str(tmp),
        [],
        name,
        log,
        cgroup=None,
        isolate=False,
        memory=(memcg, limit),
    )
    seen: list[tuple[float, int]] = []  # (when seen, global batch) of progress lines
    peak = {"rss": 0, "cache": 0, "hwm": 0}
    t0, outcome = time.monotonic(), "timeout"
    n_lines = 0
    try:
        while time.monotonic() - t0 < 900:
            st = _stat(memcg)
            peak["rss"] = max(peak["rss"], st.get("total_rss", 0))
            peak["cache"] = max(peak["cache"], st.get("total_cache", 0))
            for pid in _training_pids(memcg):
                peak["hwm"] = max(peak["hwm"], _hwm(pid))
            progress = events(log, "PROGRESS") if log.exists() else []
            now = time.monotonic()
            for p in progress[n_lines:]:
                seen.append((now, int(p["batch"])))
            n_lines = len(progress)
            if proc.oom_killed():
                outcome = "oom-killed"
                break
            if seen and seen[-1][1] >= steps:
                outcome = "trained"
                break
            if proc.poll() is not None:
                outcome = f"exited {proc.poll()}"
                break
            time.sleep(0.2)
    finally:
        max_usage = int((memcg / "memory.max_usage_in_bytes").read_text() or 0)
        kill_cgroup(memcg)
        proc.kill_all()
        proc.popen.wait()
        remove_cgroup_tree(memcg)
    out: dict[str, Any] = {
        "outcome": outcome,
        "wall_s": round(time.monotonic() - t0, 1),
        "limit_bytes": limit,
        "peak_training_process_rss_bytes": peak["hwm"],
        "peak_group_rss_bytes": peak["rss"],
        "peak_group_rss_vs_limit": round(peak["rss"] / limit, 3),
        "peak_group_page_cache_bytes": peak["cache"],
        "group_max_usage_bytes_incl_cache": max_usage,
    }
    if outcome == "trained":
        start = next((t, b) for t, b in seen if b >= warmup)
        end = seen[-1]
        out["steps_measured"] = end[1] - start[1]
        out["samples_per_s"] = round((end[1] - start[1]) * BATCH / max(end[0] - start[0], 1e-9), 1)
    elif outcome != "oom-killed":
        out["log_tail"] = log.read_text(errors="replace")[-1500:]
    print(f"[bench] {name}: {json.dumps(out)}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit-mib", type=int, default=1536)
    ap.add_argument("--factor", type=float, default=2.1, help="big set size / limit")
    ap.add_argument("--small", type=int, default=64_000, help="samples of the small set")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--cache", default=str(REPO / ".accordion" / "bench-streamed"))
    ap.add_argument("--out", default="trainer_streamed")
    a = ap.parse_args()
    limit = a.limit_mib << 20
    cache = Path(a.cache)
    sets = write_sets(cache, int(limit * a.factor), a.small)
    sizes = {d: du(cache / d) for d in ("big", "small-sharded", "small-npz")}
    runs: dict[str, list[dict[str, Any]]] = {}
    plan = [
        ("in_memory_small", "mlp", cache / "small-npz"),
        ("streamed_small", "mlp", cache / "small-sharded"),
        ("streamed_big", "mlp", cache / "big"),
    ]
    with tempfile.TemporaryDirectory(prefix="accordion-bench-streamed-") as tmp:
        for r in range(a.rounds):  # interleaved rounds: the machine's load drifts
            for name, model, data in plan:
                runs.setdefault(name, []).append(
                    run_one(f"{name}-{r}", model, data, limit, a.steps, a.warmup, Path(tmp))
                )
        big_model = str(cache / "concat-model")
        runs["in_memory_big"] = [
            run_one("in_memory_big", big_model, cache / "big", limit, a.steps, a.warmup, Path(tmp))
        ]

    def rate(name: str) -> float | None:
        rates = [r["samples_per_s"] for r in runs[name] if "samples_per_s" in r]
        return float(np.median(rates)) if rates else None

    summary = {
        "samples_per_s_median": {k: rate(k) for k in runs},
        "streamed_vs_in_memory_small": (
            round(rate("streamed_small") / rate("in_memory_small"), 3)  # type: ignore[operator]
            if rate("streamed_small") and rate("in_memory_small")
            else None
        ),
        "big_set_vs_limit": round(sizes["big"] / limit, 2),
        "in_memory_big_outcome": runs["in_memory_big"][0]["outcome"],
        "streamed_big_peak_rss_vs_limit": max(
            r["peak_group_rss_vs_limit"] for r in runs["streamed_big"]
        ),
    }
    save(
        a.out,
        {
            "command": "python -m benchmarks.trainer_streamed "
            f"--limit-mib {a.limit_mib} --steps {a.steps} --rounds {a.rounds}",
            "memory_enforcement": "cgroup v1 memory.limit_in_bytes via "
            "accordion_dev.nodeagent.runtime.spawn (the process nodes' code); the kernel "
            "OOM-kills; the whole standalone run (CLI + horovodrun + training process) is in "
            "the group",
            "model": "mlp (784-256-128-10), batch 64, np=1, ACCORDION_TF_THREADS=2",
            "data": {**sets, "bytes_on_disk": sizes},
            "summary": summary,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
