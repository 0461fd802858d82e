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
    assert identity._compose_ptr_name(timeout=0.5) is None


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
