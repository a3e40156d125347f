"""Certificates and keys for the local control plane.

One CA signs the apiserver's serving certificate and one client certificate per identity, so the
scheduler and controller-manager run as `system:kube-scheduler` / `system:kube-controller-manager`
under the RBAC rules the apiserver bootstraps for them, as on a real cluster. The service-account
signing key is a separate RSA pair.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class Identity:
    """A client certificate's subject: CN is the user, O the groups."""

    file_stem: str
    user: str
    groups: tuple[str, ...] = ()


IDENTITIES = (
    Identity("admin", "accordion-admin", ("system:masters",)),
    Identity("scheduler", "system:kube-scheduler"),
    Identity("controller-manager", "system:kube-controller-manager"),
)


def _write_key(
    path: Path,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _sign(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    ca_cert: x509.Certificate | None,
    ca_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    *,
    is_ca: bool = False,
    server_sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject if ca_cert else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        if server_sans:  # a CA named by SAN (cert-controller checks its CA against a name)
            builder = builder.add_extension(x509.SubjectAlternativeName(server_sans), False)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server_sans:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            builder = builder.add_extension(x509.SubjectAlternativeName(server_sans), False)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def generate(pki_dir: Path) -> None:
    """Write ca.{crt,key}, apiserver.{crt,key}, <identity>.{crt,key}, sa.{key,pub}."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "accordion-local-ca")])
    ca_cert = _sign(ca_name, ca_key.public_key(), None, ca_key, is_ca=True)
    _write_key(pki_dir / "ca.key", ca_key)
    (pki_dir / "ca.crt").write_bytes(_pem(ca_cert))

    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"),
        x509.DNSName("kubernetes.default.svc.cluster.local"),
    ]
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    server = _sign(server_name, server_key.public_key(), ca_cert, ca_key, server_sans=sans)
    _write_key(pki_dir / "apiserver.key", server_key)
    (pki_dir / "apiserver.crt").write_bytes(_pem(server))

    for ident in IDENTITIES:
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in ident.groups]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, ident.user))
        cert = _sign(x509.Name(attrs), key.public_key(), ca_cert, ca_key)
        _write_key(pki_dir / f"{ident.file_stem}.key", key)
        (pki_dir / f"{ident.file_stem}.crt").write_bytes(_pem(cert))

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki_dir / "sa.key", sa_key)
    (pki_dir / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def generate_webhook(pki_dir: Path, stem: str, ca_name: str, dns_names: list[str]) -> None:
    """A webhook server's own CA and serving certificate, for a controller on 127.0.0.1 (Kueue):
    `<stem>-ca.{crt,key}` and `<stem>.{crt,key}`, the serving certificate valid for 127.0.0.1 and
    `dns_names`. A CA apart from the cluster's: the controller is handed this CA's key (Kueue's
    cert rotator insists on it), which must sign nothing else. cert-controller's demands: the CA
    carries `ca_name` as a SAN (it verifies the CA certificate against that name) and its key is
    RSA in PKCS#1 form (it parses nothing else)."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_cert = _sign(
        ca_subject,
        ca_key.public_key(),
        None,
        ca_key,
        is_ca=True,
        server_sans=[x509.DNSName(ca_name)],
    )
    _write_key(pki_dir / f"{stem}-ca.key", ca_key, serialization.PrivateFormat.TraditionalOpenSSL)
    (pki_dir / f"{stem}-ca.crt").write_bytes(_pem(ca_cert))
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    sans += [x509.DNSName(d) for d in dns_names]
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])])
    cert = _sign(subject, key.public_key(), ca_cert, ca_key, server_sans=sans)
    _write_key(pki_dir / f"{stem}.key", key)
    (pki_dir / f"{stem}.crt").write_bytes(_pem(cert))
