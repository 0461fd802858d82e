"""The stack files: Swarm's own loader accepts every variant, they keep compose.yaml's settings, and
they hold what the stack promises (no restarts after a finish, dnsrr, the oracle never published,
TensorBoard published explicitly, worker-<slot> ids, one GPU per worker, each role only its key)."""

import json
import subprocess

import pytest

from tests.conftest import ROOT
from tests.e2e.compose import REQUIRED, docker_available

VARIANTS = [["stack.yaml"], ["stack.yaml", "stack.gpu.yaml"], ["stack.yaml", "stack.tls.yaml"]]


def _docker(*args, env=None):
    if not docker_available():
        if REQUIRED:
            pytest.fail("Docker with Compose v2 is required (KTC_E2E_REQUIRED=1) but is not usable")
        pytest.skip("Docker with Compose v2 is not available")
    proc = subprocess.run(["docker", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/local/bin:/usr/bin:/bin", "KTC_TLS_DIR": "/tls", **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def services(*files):
    """The merged services, read by Compose's loader (it reads the stack format too) as JSON."""
    args = [a for f in files for a in ("-f", f)]
    return json.loads(_docker("compose", "-p", "ktcswcfg", *args, "config", "--format", "json"))["services"]


@pytest.mark.parametrize("files", VARIANTS, ids=lambda f: "+".join(f))
def test_swarm_loader_accepts_the_stack(files):
    out = _docker("stack", "config", *[a for f in files for a in ("-c", f)])
    assert "worker-{{.Task.Slot}}" in out


def test_tls_variant_names_the_missing_folder():
    proc = subprocess.run(["docker", "stack", "config", "-c", "stack.yaml", "-c", "stack.tls.yaml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/local/bin:/usr/bin:/bin"})
    assert proc.returncode != 0 and "set KTC_TLS_DIR to the folder of PEM files" in proc.stderr


def test_same_settings_as_compose():
    stack, compose = services("stack.yaml"), services("compose.yaml")
    for role in ("chief", "tensorboard"):
        assert stack[role]["environment"] == compose[role]["environment"], role
    worker = dict(stack["worker"]["environment"])
    assert worker.pop("KERASTUNER_TUNER_ID") == "worker-{{.Task.Slot}}"
    assert worker == compose["worker"]["environment"]
    for role in stack:
        assert stack[role]["image"] == compose[role]["image"] and stack[role]["command"] == compose[role]["command"]
        assert stack[role]["volumes"] == compose[role]["volumes"], role
        assert stack[role]["init"] is True


def test_finished_tasks_are_not_restarted_and_no_virtual_ips():
    stack = services("stack.yaml")
    for role in ("chief", "worker"):
        assert stack[role]["deploy"]["restart_policy"]["condition"] == "on-failure"
        assert "depends_on" not in stack[role] and "scale" not in stack[role]
    assert {s["deploy"]["endpoint_mode"] for s in stack.values()} == {"dnsrr"}
    assert stack["chief"]["deploy"]["replicas"] == 1
    assert stack["chief"]["deploy"]["placement"]["constraints"] == ["node.role == manager"]


def test_chief_placement_is_a_setting_for_several_nodes():
    out = _docker("stack", "config", "-c", "stack.yaml", env={"KTC_CHIEF_CONSTRAINT": "node.labels.ktc.chief == true"})
    assert "- node.labels.ktc.chief == true" in out


SHARE = {"KTC_SHARE_OPTIONS": "addr=10.0.0.5,rw,nfsvers=4.1", "KTC_SHARE_DEVICE": ":/export/ktcluster"}


def test_shared_variant_puts_every_volume_on_the_one_share():
    out = _docker("stack", "config", "-c", "stack.yaml", "-c", "stack.shared.yaml", env=SHARE)
    for volume in ("state", "logs", "data"):
        assert f"device: :/export/ktcluster/{volume}" in out
    assert out.count("type: nfs") == 3 and out.count("o: addr=10.0.0.5,rw,nfsvers=4.1") == 3
    stack = json.loads(_docker("compose", "-p", "ktcswcfg", "-f", "stack.yaml", "-f", "stack.shared.yaml", "config",
                               "--format", "json", env=SHARE))
    assert stack["services"] == services("stack.yaml")  # the services are untouched: only the volumes move


def test_shared_variant_names_the_missing_share():
    proc = subprocess.run(["docker", "stack", "config", "-c", "stack.yaml", "-c", "stack.shared.yaml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/local/bin:/usr/bin:/bin"})
    assert proc.returncode != 0 and "set KTC_SHARE_OPTIONS to the mount options of the share" in proc.stderr


def test_only_tensorboard_is_published_in_host_mode():
    stack = services("stack.yaml")
    assert "ports" not in stack["chief"] and "ports" not in stack["worker"]
    (port,) = stack["tensorboard"]["ports"]
    assert port["mode"] == "host" and port["target"] == 6006 and port["published"] == "6006"


def test_gpu_variant_reserves_one_gpu_per_worker_only():
    stack = services("stack.yaml", "stack.gpu.yaml")
    (resource,) = stack["worker"]["deploy"]["resources"]["reservations"]["generic_resources"]
    assert resource["discrete_resource_spec"] == {"kind": "GPU", "value": 1}
    assert stack["worker"]["environment"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert not stack["chief"]["deploy"].get("resources") and not stack["tensorboard"]["deploy"].get("resources")


def test_tls_variant_gives_each_role_only_its_own_key():
    stack = services("stack.yaml", "stack.tls.yaml")
    targets = {role: {s["target"] for s in stack[role].get("secrets", [])} for role in stack}
    assert targets["chief"] == {"ktc-tls/ca.pem", "ktc-tls/chief.pem", "ktc-tls/chief.key", "ktc-tls/probe.pem",
                                "ktc-tls/probe.key"}
    assert targets["worker"] == {"ktc-tls/ca.pem", "ktc-tls/worker.pem", "ktc-tls/worker.key"}
    assert targets["tensorboard"] == set()
    for role in ("chief", "worker"):
        assert stack[role]["environment"]["KTC_TLS_DIR"] == "/run/secrets/ktc-tls"
    assert "KTC_TLS_DIR" not in services("stack.yaml")["chief"]["environment"]  # never a host path


def test_chief_health_is_composes_light_grpc_check():
    """Swarm adds the chief to DNS only once healthy: its check is compose.yaml's `python -m chief
    health`, which imports gRPC only (tests/unit/test_health.py) and speaks TLS when configured."""
    test = services("stack.yaml")["chief"]["healthcheck"]["test"]
    assert test == ["CMD", "python", "-m", "chief", "health"]
    assert test == services("compose.yaml")["chief"]["healthcheck"]["test"]
