"""The Kubernetes manifests (deploy/kubernetes), rendered by `kubectl kustomize` and checked
offline: every object against the Kubernetes JSON schemas (kubernetes-validate, strict) of the
versions named below, and the guarantees the README promises, on the rendered objects. No
cluster runs here: this is what a test can show without one."""

import os
import re
import shutil
import subprocess

import pytest
import yaml
from kubernetes_validate import utils as kubernetes_schemas

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The oldest version with every field used (Job podReplacementPolicy is GA in 1.34), and the newest.
KUBERNETES_VERSIONS = ("1.34.0", "1.37.0")
ORACLE_PORT = 8000
METRICS_PORT = 9464


def render(folder: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render deploy/kubernetes"
    out = subprocess.run([kubectl, "kustomize", os.path.join(ROOT, folder)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def base():
    return render("deploy/kubernetes")


@pytest.fixture(scope="module")
def gpu():
    return render("deploy/kubernetes/gpu")


def one(objects, kind, name):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def pod(job):
    return job["spec"]["template"]["spec"]


def container(workload):
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def env(c, settings):
    values = dict(settings["data"])
    values.update({e["name"]: e["value"] for e in c.get("env", [])})
    return values


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def compose_defaults() -> tuple[dict, dict]:
    """compose.yaml's x-settings and per-service environment, `${VAR:-default}` resolved to the default."""
    with open(os.path.join(ROOT, "compose.yaml")) as f:
        compose = yaml.safe_load(f)

    def resolve(value):
        return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))

    services = {name: {k: resolve(v) for k, v in svc.get("environment", {}).items()}
                for name, svc in compose["services"].items()}
    return {k: resolve(v) for k, v in compose["x-settings"].items()}, services


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("folder", ["deploy/kubernetes", "deploy/kubernetes/gpu"])
def test_every_object_validates_against_the_kubernetes_schemas(folder, version):
    objects = render(folder)
    assert len(objects) >= 10
    for obj in objects:
        try:
            kubernetes_schemas.validate(obj, version, strict=True)
        except kubernetes_schemas.ValidationError as exc:
            pytest.fail(f"{folder}: {obj['kind']}/{obj['metadata']['name']} invalid for {version}: {exc}")


def test_schema_validation_catches_a_bad_object(base):
    job = yaml.safe_load(yaml.safe_dump(one(base, "Job", "ktcluster-chief")))
    job["spec"]["paralelism"] = 1  # a typo: strict validation must reject it
    with pytest.raises(kubernetes_schemas.ValidationError):
        kubernetes_schemas.validate(job, KUBERNETES_VERSIONS[0], strict=True)


def test_exactly_one_chief_never_two_at_once(base):
    chiefs = [o for o in base if o["kind"] in ("Job", "Deployment", "StatefulSet")
              and o["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "chief"]
    assert [c["kind"] for c in chiefs] == ["Job"]
    spec = chiefs[0]["spec"]
    assert spec["parallelism"] == 1 and spec["completions"] == 1
    assert spec["podReplacementPolicy"] == "Failed"  # a replacement only once the old pod has stopped
    assert pod(chiefs[0])["restartPolicy"] == "OnFailure"  # exit 0 (search over) is Complete, not restarted
    mounts = {m["mountPath"]: m["name"] for m in container(chiefs[0])["volumeMounts"]}
    volumes = {v["name"]: v for v in pod(chiefs[0])["volumes"]}
    assert volumes[mounts["/ktc/state"]]["persistentVolumeClaim"]["claimName"] == "ktcluster-state"


def test_the_oracle_service_is_internal(base):
    service = one(base, "Service", "ktcluster-chief")
    assert service["spec"]["type"] == "ClusterIP"
    assert [p["port"] for p in service["spec"]["ports"]] == [ORACLE_PORT, METRICS_PORT]
    chief = one(base, "Job", "ktcluster-chief")
    assert labels_match(service["spec"]["selector"], chief["spec"]["template"]["metadata"]["labels"])
    for obj in base:
        if obj["kind"] == "Service":
            assert obj["spec"]["type"] == "ClusterIP", obj["metadata"]["name"]
        assert obj["kind"] not in ("Ingress", "Gateway", "HTTPRoute"), obj["metadata"]["name"]
    assert not any(p.get("hostPort") for o in base if "template" in o.get("spec", {})
                   for c in pod(o)["containers"] for p in c.get("ports", []))


def test_only_worker_pods_reach_the_oracle_port(base):
    chief_labels = one(base, "Job", "ktcluster-chief")["spec"]["template"]["metadata"]["labels"]
    worker_labels = one(base, "Job", "ktcluster-worker")["spec"]["template"]["metadata"]["labels"]
    tensorboard_labels = one(base, "Deployment", "ktcluster-tensorboard")["spec"]["template"]["metadata"]["labels"]
    policies = [p for p in base if p["kind"] == "NetworkPolicy"
                and labels_match(p["spec"]["podSelector"]["matchLabels"], chief_labels)]
    assert len(policies) == 1
    spec = policies[0]["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = [r for r in spec["ingress"] if {"protocol": "TCP", "port": ORACLE_PORT} in r["ports"]]
    assert rule["ports"] == [{"protocol": "TCP", "port": ORACLE_PORT}]
    (source,) = rule["from"]
    assert set(source) == {"podSelector"}  # no namespaceSelector, no ipBlock
    selector = source["podSelector"]["matchLabels"]
    assert labels_match(selector, worker_labels)
    assert not labels_match(selector, tensorboard_labels) and not labels_match(selector, chief_labels)


def test_the_metrics_port_is_annotated_for_prometheus_and_open_to_scrapers_only(base):
    """The chief's metrics (KTC_METRICS_PORT): the usual prometheus.io pod annotations name the
    port the container serves, the Service carries it, and the NetworkPolicy lets any namespace
    (Prometheus's) in on that port alone; nothing is published outside the cluster."""
    job = one(base, "Job", "ktcluster-chief")
    chief = container(job)
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                           "prometheus.io/path": "/metrics"}
    assert env(chief, one(base, "ConfigMap", "ktcluster-settings"))["KTC_METRICS_PORT"] == str(METRICS_PORT)
    (served,) = [p for p in chief["ports"] if p["name"] == "metrics"]
    assert served["containerPort"] == METRICS_PORT and "hostPort" not in served
    service = one(base, "Service", "ktcluster-chief")
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == "metrics"]
    assert (port["port"], port["targetPort"], service["spec"]["type"]) == (METRICS_PORT, "metrics", "ClusterIP")
    (policy,) = [p for p in base if p["kind"] == "NetworkPolicy" and p["metadata"]["name"] == "ktcluster-oracle"]
    (rule,) = [r for r in policy["spec"]["ingress"] if {"protocol": "TCP", "port": METRICS_PORT} in r["ports"]]
    assert rule["ports"] == [{"protocol": "TCP", "port": METRICS_PORT}] and rule["from"] == [{"namespaceSelector": {}}]


def test_workers_are_an_indexed_job_whose_index_is_the_tuner_id(base):
    job = one(base, "Job", "ktcluster-worker")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"  # JOB_COMPLETION_INDEX: read by shared/identity.py
    assert spec["completions"] == spec["parallelism"] >= 1
    assert spec["podReplacementPolicy"] == "Failed" and pod(job)["restartPolicy"] == "OnFailure"
    settings = one(base, "ConfigMap", "ktcluster-settings")
    worker_env = env(container(job), settings)
    assert "KERASTUNER_TUNER_ID" not in worker_env  # derived from the index, never one id for all
    assert worker_env["KERASTUNER_ORACLE_IP"] == one(base, "Service", "ktcluster-chief")["metadata"]["name"]


def test_the_gpu_overlay_gives_each_worker_pod_one_gpu(base, gpu):
    worker = container(one(gpu, "Job", "ktcluster-worker"))
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == 1
    for other in ("ktcluster-chief",):
        assert "nvidia.com/gpu" not in container(one(gpu, "Job", other))["resources"]["limits"]
    assert "nvidia.com/gpu" not in container(one(gpu, "Deployment", "ktcluster-tensorboard"))["resources"]["limits"]
    assert "nvidia.com/gpu" not in container(one(base, "Job", "ktcluster-worker"))["resources"]["limits"]


def test_shared_volumes_are_read_write_many_claims(base):
    claims = {o["metadata"]["name"]: o for o in base if o["kind"] == "PersistentVolumeClaim"}
    assert {"ktcluster-state", "ktcluster-logs"} <= set(claims)
    for claim in claims.values():
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"], claim["metadata"]["name"]
    for name in ("ktcluster-chief", "ktcluster-worker"):
        used = {v["persistentVolumeClaim"]["claimName"] for v in pod(one(base, "Job", name))["volumes"]
                if "persistentVolumeClaim" in v}
        assert {"ktcluster-state", "ktcluster-logs"} <= used <= set(claims)


def claim_at(workload, path) -> str:
    """The claim mounted at `path` in the workload's container."""
    (mount,) = [m for m in container(workload)["volumeMounts"] if m["mountPath"] == path]
    (volume,) = [v for v in pod(workload)["volumes"] if v["name"] == mount["name"]]
    return volume["persistentVolumeClaim"]["claimName"]


def test_tensorboard_serves_the_workers_logs_claim_through_an_internal_service(base):
    deployment = one(base, "Deployment", "ktcluster-tensorboard")
    service = one(base, "Service", "ktcluster-tensorboard")
    assert service["spec"]["type"] == "ClusterIP"
    assert labels_match(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    (port,) = service["spec"]["ports"]
    (served,) = [p for p in container(deployment)["ports"] if p["name"] == port["targetPort"]]
    assert port["port"] == served["containerPort"] == 6006
    log_dir = one(base, "ConfigMap", "ktcluster-settings")["data"]["KTC_LOG_DIR"]
    assert f'--logdir "{log_dir}/$KTC_PROJECT"' in " ".join(container(deployment)["command"])
    assert claim_at(deployment, log_dir) == claim_at(one(base, "Job", "ktcluster-worker"), log_dir) == "ktcluster-logs"


@pytest.mark.parametrize("name, files", [("ktcluster-chief", ["ca.pem", "chief.pem", "chief.key", "probe.pem",
                                                                       "probe.key"]),
                                         ("ktcluster-worker", ["ca.pem", "worker.pem", "worker.key"])])
def test_tls_comes_from_a_secret_mounted_at_ktc_tls_dir(base, name, files):
    job = one(base, "Job", name)
    tls_dir = env(container(job), one(base, "ConfigMap", "ktcluster-settings"))["KTC_TLS_DIR"]
    mounts = {m["mountPath"]: m for m in container(job)["volumeMounts"]}
    assert mounts[tls_dir]["readOnly"] is True
    (volume,) = [v for v in pod(job)["volumes"] if v["name"] == mounts[tls_dir]["name"]]
    assert volume["secret"]["secretName"] == "ktcluster-tls"
    assert [item["path"] for item in volume["secret"]["items"]] == files  # a worker never gets chief.key


def test_pods_run_unprivileged_with_limits_and_probes(base):
    workloads = [o for o in base if o["kind"] in ("Job", "Deployment")]
    assert len(workloads) == 3
    for obj in workloads:
        spec = pod(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert c["securityContext"].get("privileged", False) is False
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"])
    chief = container(one(base, "Job", "ktcluster-chief"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert chief[probe]["exec"]["command"] == ["python", "-m", "chief", "health"]


def test_same_image_and_settings_as_compose(base):
    settings, services = compose_defaults()
    config = one(base, "ConfigMap", "ktcluster-settings")["data"]
    for key, value in settings.items():
        assert config.get(key) == value, f"{key}: compose {value!r}, kubernetes {config.get(key)!r}"
    roles = {"chief": one(base, "Job", "ktcluster-chief"), "worker": one(base, "Job", "ktcluster-worker"),
             "tensorboard": one(base, "Deployment", "ktcluster-tensorboard")}
    for role, workload in roles.items():
        c = container(workload)
        assert c["image"] == "ktcluster:latest", role  # compose.yaml: ktcluster:${KTC_IMAGE_TAG:-latest}
        assert c["envFrom"] == [{"configMapRef": {"name": "ktcluster-settings"}}], role
        own = {e["name"]: e["value"] for e in c.get("env", [])}
        for key, value in services[role].items():
            if key == "KERASTUNER_ORACLE_IP" or key in settings:
                continue  # the address differs per engine; shared settings are checked above
            assert own.get(key) == value, f"{role} {key}: compose {value!r}, kubernetes {own.get(key)!r}"
    assert container(roles["chief"])["command"] == ["python", "-m", "chief"]
    assert container(roles["worker"])["command"] == ["python", "-m", "worker"]
