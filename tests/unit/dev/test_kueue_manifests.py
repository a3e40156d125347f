"""accordion_dev.kueue's manifests for a Kueue manager on 127.0.0.1: which webhooks are
registered and where they point, the CRDs' conversion, the manager's Configuration, and the
webhook certificate of accordion_dev.pki."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from accordion_dev import kueue, pki

CA = b"-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
BASE = "https://127.0.0.1:26420"


def _hook(name: str, path: str) -> dict[str, Any]:
    return {
        "name": name,
        "admissionReviewVersions": ["v1"],
        "clientConfig": {
            "service": {"name": "webhook-service", "namespace": "system", "path": path}
        },
        "failurePolicy": "Fail",
        "sideEffects": "None",
    }


MANIFESTS = [
    {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "mutating-webhook-configuration"},
        "webhooks": [
            _hook("mjob.kb.io", "/mutate-batch-v1-job"),
            _hook("mpod.kb.io", "/mutate--v1-pod"),
            _hook("mworkload.kb.io", "/mutate-kueue-x-k8s-io-v1beta2-workload"),
            _hook("mrayjob.kb.io", "/mutate-ray-io-v1-rayjob"),
        ],
    },
    {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "validating-webhook-configuration"},
        "webhooks": [
            _hook("vjob.kb.io", "/validate-batch-v1-job"),
            _hook("vclusterqueue.kb.io", "/validate-kueue-x-k8s-io-v1beta2-clusterqueue"),
            _hook("vdeployment.kb.io", "/validate-apps-v1-deployment"),
        ],
    },
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "webhook-service"}},
]


def test_only_kueues_own_and_enabled_integrations_webhooks_point_at_the_local_manager() -> None:
    configs = {c["kind"]: c for c in kueue.webhook_configurations(MANIFESTS, BASE, CA)}
    assert set(configs) == set(kueue.WEBHOOK_CONFIGS)  # the Service is not a webhook config
    mutating = configs["MutatingWebhookConfiguration"]
    # named as Kueue's cert rotator derives them from the Service's name
    assert mutating["metadata"]["name"] == "kueue-mutating-webhook-configuration"
    # pods and ray jobs are not managed here: their webhooks would refuse every such object
    assert [h["name"] for h in mutating["webhooks"]] == ["mjob.kb.io", "mworkload.kb.io"]
    assert mutating["webhooks"][0]["clientConfig"] == {
        "url": f"{BASE}/mutate-batch-v1-job",
        "caBundle": base64.b64encode(CA).decode(),
    }
    assert mutating["webhooks"][0]["failurePolicy"] == "Fail"
    validating = configs["ValidatingWebhookConfiguration"]["webhooks"]
    assert [h["name"] for h in validating] == ["vjob.kb.io", "vclusterqueue.kb.io"]
    # the manifests are not edited in place
    assert "service" in MANIFESTS[0]["webhooks"][0]["clientConfig"]


def test_versions_of_multi_version_crds_are_converted_by_the_local_manager() -> None:
    crd = {"metadata": {"name": "workloads.kueue.x-k8s.io"}, "spec": {"versions": []}}
    converted = kueue.with_conversion(crd, BASE, CA)
    assert converted["spec"]["conversion"]["strategy"] == "Webhook"
    assert converted["spec"]["conversion"]["webhook"]["clientConfig"]["url"] == f"{BASE}/convert"
    assert "conversion" not in crd["spec"]
    # a single-version CRD needs no conversion, and the cert rotator does not look for one
    flavor = {"metadata": {"name": "resourceflavors.kueue.x-k8s.io"}, "spec": {}}
    assert kueue.with_conversion(flavor, BASE, CA) == flavor


def test_configuration_binds_loopback_and_manages_only_labelled_jobs() -> None:
    cfg = kueue.configuration(
        webhook_port=1,
        health_port=2,
        metrics_port=3,
        cert_dir=Path("/state/kueue/certs"),
        qps=500.0,
        burst=1000,
        feature_gates={"ElasticJobsViaWorkloadSlices": True},
    )
    assert cfg["webhook"] == {"port": 1, "host": "127.0.0.1", "certDir": "/state/kueue/certs"}
    assert cfg["health"]["healthProbeBindAddress"] == "127.0.0.1:2"
    assert cfg["metrics"]["bindAddress"] == "127.0.0.1:3"
    assert cfg["clientConnection"] == {"qps": 500.0, "burst": 1000}
    assert cfg["manageJobsWithoutQueueName"] is False
    assert cfg["integrations"]["frameworks"] == ["batch/job"]
    # the visibility server exits the manager outside a pod: off unless asked for
    assert cfg["featureGates"] == {
        "ElasticJobsViaWorkloadSlices": True,
        "VisibilityOnDemand": False,
    }
    assert cfg["leaderElection"] == {"leaderElect": False}
    no_gates = kueue.configuration(
        webhook_port=1,
        health_port=2,
        metrics_port=3,
        cert_dir=Path("/c"),
        qps=kueue.DEFAULT_QPS,
        burst=kueue.DEFAULT_BURST,
        feature_gates={},
    )
    assert no_gates["featureGates"] == {"VisibilityOnDemand": False}


def test_webhook_certificate_is_valid_for_loopback_and_the_service_name(tmp_path: Path) -> None:
    pki.generate_webhook(tmp_path, "webhook", "kueue-ca", ["svc.ns.svc"])
    ca = x509.load_pem_x509_certificate((tmp_path / "webhook-ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((tmp_path / "webhook.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["svc.ns.svc"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages
    # cert-controller verifies the CA certificate against the CA's name
    ca_sans = ca.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ca_sans.get_values_for_type(x509.DNSName) == ["kueue-ca"]
    # cert-controller parses the CA key as PKCS#1 RSA only
    assert (tmp_path / "webhook-ca.key").read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY")
    # its own CA, not the cluster's: the controller holds this key
    assert not (tmp_path / "ca.key").exists()
    assert (tmp_path / "webhook-ca.key").stat().st_mode & 0o077 == 0
