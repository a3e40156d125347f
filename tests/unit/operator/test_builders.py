"""Child objects match docs/contract.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

from trainingrun_factory import make_run

from accordion_operator.config import Config
from accordion_operator.trainingrun import builders

CONTRACT = Path(__file__).resolve().parents[3] / "docs" / "contract.md"
CFG = Config(trainer_image="registry.local/trainer:1")


def env_of(pod: dict) -> dict[str, dict]:
    return {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}


def test_worker_pod_shape() -> None:
    run = make_run(spec={"workers": {"gpusPerWorker": 2, "cpu": "4", "memory": "16Gi"}})
    pod = builders.build_worker_pod(run, 3, CFG)
    meta = pod["metadata"]
    assert meta["name"] == "mnist-worker-3"
    assert meta["labels"] == {
        "app.kubernetes.io/name": "accordion",
        "app.kubernetes.io/managed-by": "accordion-operator",
        "accordion.dev/run": "mnist",
        "accordion.dev/role": "worker",
        "accordion.dev/worker-index": "3",
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "accordion.dev/v1alpha1",
            "kind": "TrainingRun",
            "name": "mnist",
            "uid": "5f0c3a9e-8d21-4b7e-9a43-2c1d0e6f7b8a",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    c = pod["spec"]["containers"][0]
    assert c["image"] == "registry.local/trainer:1"
    assert c["command"] == ["python", "-m", "accordion_trainer", "worker"]
    assert c["resources"]["requests"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"}
    assert c["resources"]["limits"] == c["resources"]["requests"]
    # one Horovod slot per GPU (the launcher's discovery prints `<podIP>:2`)
    assert env_of(pod)["ACCORDION_GPUS_PER_WORKER"]["value"] == "2"
    assert c["readinessProbe"]["tcpSocket"] == {"port": 2222}
    assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert {"name": "ssh", "mountPath": "/etc/accordion/ssh", "readOnly": True} in c["volumeMounts"]
    ssh = next(v for v in pod["spec"]["volumes"] if v["name"] == "ssh")
    assert ssh["secret"] == {"secretName": "mnist-ssh", "defaultMode": 0o440}
    # the trainer image's user, and what the `restricted` Pod Security Standard asks
    assert pod["spec"]["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    image_user = builders.build_worker_pod(run, 0, Config(pod_fs_group=0, pod_run_as_user=0))
    assert image_user["spec"]["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    with_group = builders.build_worker_pod(run, 0, Config(pod_fs_group=1000))
    assert with_group["spec"]["securityContext"]["fsGroup"] == 1000
    env = env_of(pod)
    assert env["ACCORDION_RESULTS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "s3",
        "key": "accessKey",
    }
    assert env["ACCORDION_RESULTS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == (
        "secretKey"
    )
    assert "ACCORDION_DATA_ACCESS_KEY_ID" not in env  # no spec.data
    assert not any(name.startswith("AWS_") for name in env)
    assert json.loads(env["ACCORDION_MODEL"]["value"]) == {"builtin": "mnist-cnn"}


def test_launcher_never_gets_credentials_and_uses_its_service_account() -> None:
    run = make_run(spec={"image": "mine:2", "hyperparameters": {"learning_rate": 0.01}})
    pod = builders.build_launcher_pod(run, CFG)
    env = env_of(pod)
    assert not any(name.endswith("ACCESS_KEY_ID") for name in env)
    assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in env.values())
    assert pod["spec"]["serviceAccountName"] == "accordion-launcher"
    assert pod["spec"]["containers"][0]["image"] == "mine:2"
    assert "nvidia.com/gpu" not in pod["spec"]["containers"][0]["resources"]["requests"]
    assert json.loads(env["ACCORDION_HPARAMS"]["value"]) == {"learning_rate": 0.01}
    assert env["ACCORDION_MIN_WORKERS"]["value"] == "1"
    assert env["ACCORDION_MAX_WORKERS"]["value"] == "4"


def test_data_and_results_credentials_each_come_from_their_own_secret() -> None:
    """A data Secret that differs from the results one opens the data bucket only: each pair
    of the worker's environment names its store (issue 16)."""
    data = {"endpoint": "minio:9000", "bucket": "data", "credentialsSecret": {"name": "reader"}}
    run = make_run(spec={"data": data})
    env = env_of(builders.build_worker_pod(run, 0, CFG))
    refs = {
        name: e["valueFrom"]["secretKeyRef"]
        for name, e in env.items()
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {
        "ACCORDION_DATA_ACCESS_KEY_ID": {"name": "reader", "key": "accessKey"},
        "ACCORDION_DATA_SECRET_ACCESS_KEY": {"name": "reader", "key": "secretKey"},
        "ACCORDION_RESULTS_ACCESS_KEY_ID": {"name": "s3", "key": "accessKey"},
        "ACCORDION_RESULTS_SECRET_ACCESS_KEY": {"name": "s3", "key": "secretKey"},
    }


def test_every_contract_variable_is_set() -> None:
    text = CONTRACT.read_text()
    section = text.split("## Environment", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("| `"))
    names = set(re.findall(r"`((?:ACCORDION|AWS)_[A-Z_]+)`", table))
    run = make_run(
        spec={
            "data": {
                "endpoint": "minio:9000",
                "bucket": "data",
                "credentialsSecret": {"name": "s3"},
            }
        }
    )
    worker = set(env_of(builders.build_worker_pod(run, 0, CFG)))
    launcher = set(env_of(builders.build_launcher_pod(run, CFG)))
    assert names - worker == set()
    worker_only = {
        "ACCORDION_DATA_ACCESS_KEY_ID",
        "ACCORDION_DATA_SECRET_ACCESS_KEY",
        "ACCORDION_RESULTS_ACCESS_KEY_ID",
        "ACCORDION_RESULTS_SECRET_ACCESS_KEY",
        "ACCORDION_DATA_DIR",
        "ACCORDION_WORKER_INDEX",
        "ACCORDION_POD_NAME",
    }
    assert names - launcher == worker_only
    pod_name = env_of(builders.build_worker_pod(run, 0, CFG))["ACCORDION_POD_NAME"]
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    pod_ip = env_of(builders.build_launcher_pod(run, CFG))["ACCORDION_POD_IP"]
    assert pod_ip["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_both_pods_get_the_run_objects_own_results_folder() -> None:
    """ACCORDION_RESULTS_PATH: the trainer's results root, so that it resumes only checkpoints
    this run object wrote (not those of a run of the same name in another namespace, or of an
    earlier object of this name)."""
    run = make_run(spec={"results": {"prefix": "/runs/"}})
    for pod in (builders.build_launcher_pod(run, CFG), builders.build_worker_pod(run, 0, CFG)):
        env = env_of(pod)
        assert env["ACCORDION_RESULTS_PATH"]["value"] == "runs/team-a/mnist-5f0c3a9e8d21"
        assert env["ACCORDION_RESULTS_PREFIX"]["value"] == "/runs/"
        assert env["ACCORDION_RESULTS_BUCKET"]["value"] == "results"


def test_experiment_label_is_inherited() -> None:
    run = make_run(metadata={"labels": {"accordion.dev/experiment": "lr-search"}})
    pod = builders.build_worker_pod(run, 0, CFG)
    assert pod["metadata"]["labels"]["accordion.dev/experiment"] == "lr-search"


def test_auth_objects() -> None:
    run = make_run()
    private, public = builders.new_ssh_keypair()
    assert private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert public.startswith("ssh-ed25519 ")
    secret = builders.build_ssh_secret(run, CFG, (private, public))
    assert secret["metadata"]["name"] == "mnist-ssh"
    assert set(secret["stringData"]) == {"id_ed25519", "id_ed25519.pub", "authorized_keys"}
    assert secret["stringData"]["authorized_keys"].startswith(public)
    role = builders.build_role("team-a", CFG)
    assert role["metadata"]["namespace"] == "team-a"
    assert "ownerReferences" not in role["metadata"]  # the namespace's, not one run's
    assert role["rules"][0] == {
        "apiGroups": [""],
        "resources": ["pods"],
        "verbs": ["get", "list", "watch"],
    }
    assert role["rules"][1] == {
        "apiGroups": ["accordion.dev"],
        "resources": ["trainingruns/status"],
        "verbs": ["get", "patch"],
    }
    binding = builders.build_role_binding("team-a", CFG)
    assert binding["roleRef"]["name"] == "accordion-launcher"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "accordion-launcher", "namespace": "team-a"}
    ]
    sa = builders.build_service_account("team-a", CFG)
    assert sa["metadata"]["name"] == "accordion-launcher"
    assert sa["metadata"]["labels"]["accordion.dev/role"] == "launcher"


def test_launcher_policy_names_the_launcher_pod_of_the_run() -> None:
    policy, binding = builders.build_launcher_policy()
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"][0]["resources"] == ["trainingruns/status"]
    assert "accordion-launcher" in spec["matchConditions"][0]["expression"]
    rule = spec["validations"][0]["expression"]
    assert "authentication.kubernetes.io/pod-name" in rule
    assert "object.metadata.name + '-launcher'" in rule


def test_placement_is_copied() -> None:
    aff = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                ]
            }
        }
    }
    run = make_run(spec={"nodeSelector": {"gpu": "h100"}, "affinity": aff})
    pod = builders.build_worker_pod(run, 0, CFG)
    assert pod["spec"]["nodeSelector"] == {"gpu": "h100"}
    assert pod["spec"]["affinity"] == aff
