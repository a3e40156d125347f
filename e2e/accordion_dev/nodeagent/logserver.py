"""A kubelet-compatible log endpoint, so `kubectl logs` works for pods on process nodes.

The apiserver proxies `kubectl logs` to `https://<node InternalIP>:<kubeletEndpoint.Port>/
containerLogs/<ns>/<pod>/<container>?follow=&tailLines=&limitBytes=`. Each agent serves that on
its own loopback address (127.<100+i>.0.1, so every node can use port 10250) with a self-signed
certificate: the local apiserver has no --kubelet-certificate-authority, so it does not verify
it, and it presents no client certificate, so this endpoint does not authenticate (it only
listens on loopback of a test machine).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: (namespace, pod, container) -> is it running now (follow stops when it is not)
IsRunning = Callable[[str, str, str], bool]


def self_signed(ip: str, out: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"process-node {ip}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), False
        )
        .sign(key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    crt, pem = out / "kubelet.crt", out / "kubelet.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pem.chmod(0o600)
    return crt, pem


def find_log(pods_dir: Path, ns: str, pod: str, container: str) -> Path | None:
    dirs = sorted(pods_dir.glob(f"{ns}_{pod}_*"), key=lambda d: d.stat().st_mtime)
    if not dirs:
        return None
    log = dirs[-1] / f"{container}.log"
    return log if log.exists() else None


def tail_bytes(data: bytes, lines: int) -> bytes:
    if lines < 0:
        return data
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:]) if lines else b""


def serve(
    ip: str, port: int, pods_dir: Path, cert_dir: Path, is_running: IsRunning
) -> ThreadingHTTPServer:
    """Start the endpoint on a daemon thread; `shutdown()` the returned server to stop it."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass  # the agent's log is for the agent

        def do_GET(self) -> None:
            url = urlparse(self.path)
            parts = url.path.strip("/").split("/")
            if len(parts) != 4 or parts[0] != "containerLogs":
                self.send_error(404, "only /containerLogs/<ns>/<pod>/<container> is served")
                return
            _, ns, pod, container = parts
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            if q.get("previous") == "true":
                self.send_error(400, "previous logs are not kept on process nodes")
                return
            log = find_log(pods_dir, ns, pod, container)
            if log is None:
                self.send_error(404, f"no log of {ns}/{pod}/{container} on this node")
                return
            data = log.read_bytes()
            data = tail_bytes(data, int(q.get("tailLines", -1)))
            if "limitBytes" in q:
                data = data[: int(q["limitBytes"])]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(data)
            if q.get("follow") != "true":
                return
            with log.open("rb") as f, contextlib.suppress(BrokenPipeError, ConnectionError):
                f.seek(0, 2)
                while True:
                    chunk = f.read(65536)
                    if chunk:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                    elif not is_running(ns, pod, container):
                        return
                    else:
                        time.sleep(0.2)

    crt, key = self_signed(ip, cert_dir)
    server = ThreadingHTTPServer((ip, port), Handler)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(crt), str(key))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="logserver", daemon=True).start()
    return server
