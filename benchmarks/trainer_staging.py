"""Stage-in throughput from a local MinIO: MB/s by download parallelism, and the cost of a
re-run over already staged (verified, skipped) files.

    .venv/bin/python -m benchmarks.trainer_staging [--objects 16 --mib 4]
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from accordion_trainer.config import S3Location
from accordion_trainer.staging import client_for, stage_in
from benchmarks._trainer import save

CACHE = Path(os.environ.get("ACCORDION_CACHE", Path.home() / ".cache" / "accordion"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=16)
    ap.add_argument("--mib", type=int, default=4)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-staging-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    user, password = "bench", secrets.token_hex(12)
    proc = subprocess.Popen(
        [
            str(CACHE / "bin" / "minio"),
            "server",
            str(tmp / "minio"),
            "--address",
            f"127.0.0.1:{port}",
            "--quiet",
        ],
        env={**os.environ, "MINIO_ROOT_USER": user, "MINIO_ROOT_PASSWORD": password},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runs: list[dict[str, Any]] = []
    try:
        for _ in range(150):
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/minio/health/live", timeout=1
                ):
                    break
            except OSError:
                time.sleep(0.2)
        creds = {"AWS_ACCESS_KEY_ID": user, "AWS_SECRET_ACCESS_KEY": password}
        client = client_for(S3Location(f"127.0.0.1:{port}", "data", "", False), creds, store="DATA")
        client.make_bucket("data")
        blob = os.urandom(a.mib << 20)
        for i in range(a.objects):
            client.put_object("data", f"set/part-{i:03d}.bin", io.BytesIO(blob), len(blob))
        total = a.objects * len(blob)
        for workers in (1, 4, 8):
            dest = tmp / f"dest-{workers}"
            t0 = time.perf_counter()
            stage_in(client, "data", "set/", dest, workers=workers, log=lambda _m: None)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            again = stage_in(client, "data", "set/", dest, workers=workers, log=lambda _m: None)
            warm = time.perf_counter() - t0
            assert again.skipped_files == a.objects
            runs.append(
                {
                    "workers": workers,
                    "seconds": round(cold, 3),
                    "mb_per_s": round(total / cold / 1e6, 1),
                    "rerun_all_skipped_seconds": round(warm, 3),
                }
            )
            shutil.rmtree(dest)
            print(runs[-1], flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    save(
        "trainer_staging",
        {
            "setup": {
                "objects": a.objects,
                "object_mib": a.mib,
                "total_mb": round(total / 1e6, 1),
                "server": "local MinIO on 127.0.0.1, single drive on the same disk",
                "verification": "size + MD5 (single-part ETag) of every object",
            },
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
