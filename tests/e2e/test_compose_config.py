"""Both stack variants are valid Compose files, and the GPU one reserves GPUs the right way."""

import json
import subprocess

import pytest

from tests.conftest import ROOT
from tests.e2e.compose import REQUIRED, docker_available


def config(*files):
    if not docker_available():
        if REQUIRED:
            pytest.fail("Docker with Compose v2 is required (KTC_E2E_REQUIRED=1) but is not usable")
        pytest.skip("Docker with Compose v2 is not available")
    args = [a for f in files for a in ("-f", f)]
    proc = subprocess.run(["docker", "compose", *args, "config", "--format", "json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_default_stack_runs_anywhere():
    services = config("compose.yaml")["services"]
    assert set(services) == {"chief", "worker", "tensorboard"}
    assert all(s.get("init") for s in services.values())
    assert "deploy" not in services["worker"] or not services["worker"]["deploy"].get("resources")
    assert "ports" not in services["chief"]  # the oracle port is internal only
    (published,) = services["tensorboard"]["ports"]
    assert published["host_ip"] == "127.0.0.1" and published["target"] == 6006
    # Workers start with the chief (they ride out its start-up), so a finished project's chief,
    # which exits 0 at once, is no failed dependency
    assert services["worker"]["depends_on"]["chief"]["condition"] == "service_started"
    assert "KERASTUNER_TUNER_ID" not in services["worker"]["environment"]  # each replica derives its own
    assert services["chief"]["healthcheck"]["test"][-2:] == ["chief", "health"]


def test_gpu_override_shows_every_gpu_to_every_worker_and_none_to_the_chief():
    services = config("compose.yaml", "compose.gpu.yaml")["services"]
    (device,) = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] == -1  # "all": each worker then picks one GPU by its replica number
    assert "deploy" not in services["chief"] and "deploy" not in services["tensorboard"]


@pytest.mark.parametrize("files", [["compose.yaml"], ["compose.yaml", "compose.gpu.yaml"]], ids="+".join)
def test_one_service_builds_the_image_and_none_pulls_it(files):
    """`build` on every role built the image once per service on each `up --build`: two dangling
    ~2 GB images per build and a tag that moved under the running services (issue #20 item 7).
    One service builds it; every role runs that one tag; none pulls it (no registry has it, and a
    missing image is built, never fetched from Docker Hub under the same name)."""
    services = config(*files)["services"]
    assert [name for name, s in services.items() if s.get("build")] == ["chief"]
    assert len({s["image"] for s in services.values()}) == 1, {n: s["image"] for n, s in services.items()}
    assert {n: s.get("pull_policy") for n, s in services.items()} == dict.fromkeys(services, "never")


def test_the_chiefs_metrics_port_is_on_the_compose_network_only():
    """Prometheus on the project's network scrapes http://chief:9464/metrics; the host gets nothing
    unless the user publishes it (README: Metrics)."""
    chief = config("compose.yaml")["services"]["chief"]
    assert chief["environment"]["KTC_METRICS_PORT"] == "9464" and chief["expose"] == ["9464"]
    assert "ports" not in chief
