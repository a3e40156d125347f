"""The Helm chart against the real local apiserver: every rendered object passes server-side
validation (`kubectl apply --dry-run=server`), and install + uninstall leaves nothing of the
operator behind except the CRDs, which the chart keeps on purpose -- also when they were already
there and the release adopted them (the documented step).

The operator running from the chart (its Deployment on a process node, its RBAC, watches, real
training, `helm test`, uninstall) is tests/e2e/test_helm_install.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from accordion_dev.cluster import Cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "accordion"
CACHE = Path(os.environ.get("ACCORDION_CACHE", Path.home() / ".cache" / "accordion"))
CRD = "trainingruns.accordion.dev"
CRDS = (CRD, "experiments.accordion.dev")


def _run(
    cluster: Cluster, argv: list[str], stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "HELM_CACHE_HOME": "/tmp/helm-c"}
    r = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, env=env, timeout=180, check=False
    )
    if check:
        assert r.returncode == 0, f"{argv}: {r.stdout}\n{r.stderr}"
    return r


def _helm(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(cluster, [str(CACHE / "bin" / "helm"), *args], check=check)


def _kubectl(
    cluster: Cluster, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return _run(cluster, [str(CACHE / "bin" / "kubectl"), *args], stdin=stdin, check=check)


@pytest.mark.parametrize(
    "values",
    [
        [],
        # namespaced watch mode: Roles in the listed namespace; dashboards on; the
        # NetworkPolicies in that namespace
        [
            "--set",
            "monitoring.dashboards.enabled=true",
            "--set-json",
            'watch.namespaces=["NS"]',
            "--set",
            "networkPolicy.enabled=true",
        ],
    ],
    ids=["defaults", "namespaced-with-dashboards-and-network-policies"],
)
def test_rendered_chart_passes_server_side_dry_run(
    cluster: Cluster, namespace: str, values: list[str]
) -> None:
    values = [v.replace('"NS"', f'"{namespace}"') for v in values]
    manifest = _helm(
        cluster, "template", "acc", str(CHART), "-n", namespace, "--skip-tests", *values
    ).stdout
    r = _kubectl(cluster, "apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=manifest)
    applied = r.stdout.splitlines()
    assert any(f"customresourcedefinition.apiextensions.k8s.io/{CRD}" in x for x in applied)
    assert any("deployment.apps/acc-accordion-operator" in x for x in applied)
    assert any("clusterrole.rbac.authorization.k8s.io/acc-accordion-operator" in x for x in applied)
    for name in ("accordion-low", "accordion-default", "accordion-high"):
        assert any(f"priorityclass.scheduling.k8s.io/{name}" in x for x in applied), name
    if values:
        for name in ("acc-accordion-training", "acc-accordion-worker-metrics"):
            assert f"networkpolicy.networking.k8s.io/{name} created (server dry run)" in applied
        assert any(
            x.startswith("role.rbac.authorization.k8s.io/acc-accordion-operator") for x in applied
        )
        assert any("configmap/acc-accordion-accordion-runs" in x for x in applied)


def test_helm_test_hook_passes_server_side_dry_run(cluster: Cluster, namespace: str) -> None:
    """The hook's objects; its Pod checked on its own with the namespace's default service
    account (the hook's own account only exists once `helm test` creates it)."""
    out = _helm(cluster, "template", "acc", str(CHART), "-n", namespace).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    hooks = [d for d in docs if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert sorted(d["kind"] for d in hooks) == [
        "ConfigMap",
        "Pod",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]
    for d in hooks:
        if d["kind"] == "Pod":
            d["spec"]["serviceAccountName"] = "default"
    manifest = yaml.safe_dump_all(hooks)
    r = _kubectl(cluster, "apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=manifest)
    assert "pod/acc-accordion-test created (server dry run)" in r.stdout


def _adopt_existing_crd(cluster: Cluster, release: str, namespace: str) -> None:
    """A kept CRD (from an earlier release, or applied by hand) must be adopted by the new release:
    the documented step is to give it the release's ownership metadata."""
    for crd in CRDS:
        if _kubectl(cluster, "get", "crd", crd, "-o", "name", check=False).returncode != 0:
            continue
        _kubectl(cluster, "label", "--overwrite", "crd", crd, "app.kubernetes.io/managed-by=Helm")
        _kubectl(
            cluster,
            "annotate",
            "--overwrite",
            "crd",
            crd,
            f"meta.helm.sh/release-name={release}",
            f"meta.helm.sh/release-namespace={namespace}",
        )


def _leftovers(cluster: Cluster, release: str, namespace: str) -> list[str]:
    selector = f"app.kubernetes.io/instance={release}"
    names = _kubectl(
        cluster,
        "get",
        "deployments,replicasets,configmaps,serviceaccounts,services,roles,rolebindings,secrets",
        "-n",
        namespace,
        "-l",
        selector,
        "-o",
        "name",
    ).stdout.split()
    names += _kubectl(
        cluster,
        "get",
        "clusterroles,clusterrolebindings,priorityclasses",
        "-l",
        selector,
        "-o",
        "name",
    ).stdout.split()
    return names


def test_install_then_uninstall_leaves_only_the_kept_crds(cluster: Cluster, namespace: str) -> None:
    release = namespace  # unique per test: its cluster-scoped roles cannot clash with another's
    _adopt_existing_crd(cluster, release, namespace)
    # The operator itself is not started here (tests/e2e/test_helm_install.py runs it from the
    # chart): the Deployment is created and removed like every other object.
    # PriorityClasses are cluster-scoped: names of this test's own, so that no other test's (or
    # an earlier release's) classes clash with the install
    classes = [
        {"name": f"{namespace}-low", "value": -100},
        {"name": f"{namespace}-high", "value": 1000, "preemptOtherNamespaces": True},
    ]
    _helm(
        cluster,
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--timeout",
        "2m",
        "--set-json",
        f"priorityClasses.classes={json.dumps(classes)}",
    )
    installed = _leftovers(cluster, release, namespace)
    high = json.loads(
        _kubectl(cluster, "get", "priorityclass", f"{namespace}-high", "-o", "json").stdout
    )
    assert high["value"] == 1000
    assert high["metadata"]["annotations"]["accordion.dev/preempt-other-namespaces"] == "true"
    assert f"priorityclass.scheduling.k8s.io/{namespace}-low" in installed
    assert any(x.startswith("deployment.apps/") for x in installed)
    assert any(x.startswith("configmap/") and x.endswith("-operator-settings") for x in installed)
    assert any(x.startswith("clusterrole.rbac.authorization.k8s.io/") for x in installed)
    status = json.loads(_helm(cluster, "status", release, "-n", namespace, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"

    r = _helm(cluster, "uninstall", release, "-n", namespace, "--wait", "--timeout", "2m")
    assert "These resources were kept due to the resource policy" in r.stdout + r.stderr
    assert _leftovers(cluster, release, namespace) == []
    crd = json.loads(_kubectl(cluster, "get", "crd", CRD, "-o", "json").stdout)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert _helm(cluster, "status", release, "-n", namespace, check=False).returncode != 0


def test_notes_example_run_is_accepted_by_the_apiserver(cluster: Cluster, namespace: str) -> None:
    """The TrainingRun that NOTES.txt tells users to apply passes the CRD's validation."""
    _adopt_existing_crd(cluster, "acc", namespace)
    _kubectl(
        cluster,
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        stdin=_helm(
            cluster, "template", "acc", str(CHART), "--show-only", "templates/crds/crds.yaml"
        ).stdout,
    )
    out = _helm(cluster, "install", "acc", str(CHART), "-n", namespace, "--dry-run").stdout
    notes = out.split("NOTES:", 1)[1]
    body = notes.split("cat <<YAML | kubectl -n <namespace> apply -f -\n", 1)[1]
    body = body.split("\n     YAML", 1)[0]
    run = yaml.safe_load("\n".join(line.removeprefix("     ") for line in body.splitlines()))
    assert run["kind"] == "TrainingRun"
    r = _kubectl(
        cluster, "apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=json.dumps(run)
    )
    assert "trainingrun.accordion.dev/mnist created (server dry run)" in r.stdout
