import time

import pytest

from shared import identity
from shared.config import ConfigError


@pytest.mark.parametrize("name,number", [
    ("ktcluster-worker-3.ktcluster_default.", 3),
    ("my-proj-worker-12.my-proj_default", 12),
    ("ktcluster-worker-1", 1),
    ("4f1c2d3e4b5a", None),
    ("", None),
])
def test_replica_number_from_compose_dns_name(name, number):
    assert identity.replica_number(name) == number


def test_explicit_id_wins():
    assert identity.worker_id("gpu-box-a", lookup=lambda: "p-worker-9.p_default.") == "gpu-box-a"


def test_compose_replica_gives_worker_n():
    assert identity.worker_id("", lookup=lambda: "ktc-worker-7.ktc_default.") == "worker-7"


def test_outside_compose_falls_back_to_host_and_pid():
    tuner_id = identity.worker_id("", lookup=lambda: None, pid=4242)
    assert tuner_id.startswith("worker-") and tuner_id.endswith("-4242")


@pytest.mark.parametrize("bad", ["chief", "my-chief", "Chief0"])
def test_ids_containing_chief_are_refused(bad):
    with pytest.raises(ConfigError) as err:
        identity.worker_id(bad)
    assert "chief" in str(err.value)


def test_replica_of():
    assert identity.replica_of("worker-3") == 3
    assert identity.replica_of("worker-host-3") is None
    assert identity.replica_of("custom") is None


def test_real_lookup_outside_docker_returns_none_quickly():
    # This machine is not a Compose container: 127.0.0.11 answers nothing.
    began = time.monotonic()
    assert identity._compose_ptr_name(timeout=0.5) is None
    assert time.monotonic() - began < 2.0  # the timeout holds: a worker's start is not held up


@pytest.mark.parametrize("index, number", [("0", 1), ("7", 8), ("", None)])
def test_kubernetes_indexed_job_replica(index, number):
    assert identity.kubernetes_replica({"JOB_COMPLETION_INDEX": index}) == number
    assert identity.kubernetes_replica({}) is None


def test_an_indexed_job_pod_is_worker_index_plus_one(monkeypatch):
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    assert identity.worker_id("", lookup=lambda: None) == "worker-3"
    assert identity.worker_id("gpu-box-a", lookup=lambda: None) == "gpu-box-a"  # explicit still wins


@pytest.mark.parametrize("bad", ["-1", "two", "1.5"])
def test_a_bad_completion_index_is_a_one_line_error(bad):
    with pytest.raises(ConfigError) as err:
        identity.kubernetes_replica({"JOB_COMPLETION_INDEX": bad})
    assert str(err.value).startswith("JOB_COMPLETION_INDEX=")


SWARM_PTR = "ktc_worker.3.x5k2m9q0w1e2r3t4y5u6i7o8p.ktc_default."


@pytest.mark.parametrize("name,slot", [
    (SWARM_PTR, 3),
    ("my-stack_worker.12.abcdefghijklmnopqrstuvwxy.my-stack_default", 12),
    ("ktcluster-worker-3.ktcluster_default.", None),  # a Compose name
    ("ktc_worker.l2m3n4o5p6q7r8s9t0u1v2w3x.x5k2m9q0w1e2r3t4y5u6i7o8p.ktc_default.", None),  # global mode: node id
    ("ktc_worker.0.x5k2m9q0w1e2r3t4y5u6i7o8p.ktc_default.", None),
    ("ktc_worker.3.short.ktc_default.", None),
    ("4f1c2d3e4b5a", None),
    ("", None),
])
def test_swarm_slot_from_task_dns_name(name, slot):
    assert identity.swarm_slot(name) == slot


def test_swarm_task_gives_worker_slot_not_host_and_pid():
    assert identity.worker_id("", lookup=lambda: SWARM_PTR, pid=4242) == "worker-3"


def test_swarm_slot_template_value_is_taken_as_is():
    # The stack passes KERASTUNER_TUNER_ID: "worker-{{.Task.Slot}}"; Swarm expands it per task.
    assert identity.worker_id("worker-2", lookup=lambda: SWARM_PTR) == "worker-2"
    assert identity.replica_of("worker-2") == 2
