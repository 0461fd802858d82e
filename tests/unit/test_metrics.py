"""The chief's Prometheus metrics (chief.metrics): the collector read against a real coordinator
over a real KerasTuner oracle with a fake clock, the RPC counters over real gRPC, the HTTP
endpoint over a real socket, and KTC_METRICS_PORT. Every exposition is read back with
prometheus_client's own parser."""


import grpc
import pytest
from keras_tuner.src import protos

from chief.coordinator import Coordinator
from chief.metrics import ChiefMetrics, Endpoint, LOST_REASONS, RPC_METHODS
from shared import config, rpc
from shared.config import ConfigError
from tests.procs import free_port, prometheus_samples as samples, scrape
from tests.unit.test_config import env as config_env
from tests.unit.test_coordinator import Clock, finish, make_oracle, me, result
from tests.wire import serving


def value(parsed: dict, name: str, **labels) -> float:
    return parsed[(name, frozenset(labels.items()))]


@pytest.fixture
def watched(tmp_path):
    """(coordinator, metrics, clock): a chief's coordinator of 4 trials, watched by its metrics."""
    clock = Clock()
    coordinator = Coordinator(make_oracle(tmp_path, max_trials=4, retries=1), lease_seconds=10,
                              heartbeat_seconds=1, clock=clock)
    metrics = ChiefMetrics()
    metrics.watch(coordinator)
    yield coordinator, metrics, clock
    coordinator.close()


def test_a_fresh_search_exports_every_series_at_zero(watched):
    _, metrics, _ = watched
    m = samples(metrics.text())
    for state in ("RUNNING", "COMPLETED", "FAILED", "INVALID"):
        assert value(m, "ktc_trials", state=state) == 0
    assert (value(m, "ktc_search_trials_done"), value(m, "ktc_search_trials_total")) == (0, 4)
    assert value(m, "ktc_search_finished") == 0 and value(m, "ktc_trials_queued") == 0
    assert value(m, "ktc_workers_registered") == value(m, "ktc_workers_alive") == 0
    assert value(m, "ktc_leases_expired_total") == 0
    assert {r: value(m, "ktc_attempts_lost_total", reason=r) for r in LOST_REASONS} == dict.fromkeys(LOST_REASONS, 0)
    assert value(m, "ktc_storage_faults_total", what="journal") == value(m, "ktc_storage_failing") == 0
    for method in RPC_METHODS:
        assert value(m, "ktc_rpc_duration_seconds_count", method=method) == 0
    assert not any(name == "ktc_best_score" for name, _ in m)  # no completed trial yet


def test_trials_workers_leases_and_lost_attempts_follow_the_search(watched):
    """w1 completes a trial, w2 fails one, w3 falls silent and loses its lease, w4's id is taken
    by a new process: every number read on scrape agrees with the coordinator's own snapshot."""
    c, metrics, clock = watched
    for w in ("w1", "w2", "w3", "w4"):
        c.register(w, w)
    done, _ = c.create_trial("w1", me("w1"))
    failed, _ = c.create_trial("w2", me("w2"))
    silent, _ = c.create_trial("w3", me("w3"))
    taken, _ = c.create_trial("w4", me("w4"))
    finish(c, done, me("w1"), score=0.75)
    c.end_trial(result(failed, status="FAILED"), me("w2"), message="ValueError: boom")
    m = samples(metrics.text())
    assert value(m, "ktc_workers_registered") == value(m, "ktc_workers_alive") == 4
    assert value(m, "ktc_trials", state="RUNNING") == 2  # w3's and w4's
    clock.now = 5
    for w in ("w1", "w2"):
        c.heartbeat(w, w)
    clock.now = 5.5
    c.register("w4", "w4-restarted")  # w4's old process is gone (not heard for 5.5 s): its attempt is lost
    m = samples(metrics.text())
    assert value(m, "ktc_attempts_lost_total", reason="taken_over") == 1
    assert value(m, "ktc_workers_alive") == 3  # w3 is unheard for 5.5 s, over two heartbeats
    clock.now = 10.5
    for w, instance in (("w1", "w1"), ("w2", "w2"), ("w4", "w4-restarted")):
        c.heartbeat(w, instance)
    assert c.expire_leases() == [silent.trial_id]
    m = samples(metrics.text())
    snap = c.snapshot()
    statuses = [t.status for t in snap.trials]
    assert {s: value(m, "ktc_trials", state=s) for s in set(statuses)} == {s: statuses.count(s) for s in statuses}
    assert value(m, "ktc_trials", state="COMPLETED") == 1
    assert value(m, "ktc_trials_queued") == len(snap.queued) == 2  # the lost and the taken-over trial
    assert value(m, "ktc_attempts_lost_total", reason="lease") == 1
    assert value(m, "ktc_attempts_lost_total", reason="failure") == 1
    assert value(m, "ktc_leases_expired_total") == 1
    assert value(m, "ktc_workers_registered") == value(m, "ktc_workers_alive") == 3
    assert value(m, "ktc_search_trials_done") == 1 + statuses.count("FAILED")
    assert value(m, "ktc_best_score", objective="score") == 0.75


def test_a_finished_search_reads_done_of_total_and_finished(tmp_path):
    c = Coordinator(make_oracle(tmp_path, max_trials=2), lease_seconds=10, heartbeat_seconds=1, clock=Clock())
    metrics = ChiefMetrics()
    metrics.watch(c)
    c.register("w1", "w1")
    for score in (0.5, 0.9):
        trial, _ = c.create_trial("w1", me("w1"))
        finish(c, trial, me("w1"), score)
    c.create_trial("w1", me("w1"))  # told STOPPED: the search is over
    m = samples(metrics.text())
    assert (value(m, "ktc_search_trials_done"), value(m, "ktc_search_trials_total")) == (2, 2)
    assert value(m, "ktc_search_finished") == 1 and value(m, "ktc_trials", state="COMPLETED") == 2
    assert value(m, "ktc_best_score", objective="score") == 0.9
    c.close()


def test_storage_faults_are_counted_by_what_failed(watched):
    c, metrics, _ = watched
    for _ in range(3):
        c.faults.failed("journal", OSError(28, "No space left on device"))
    m = samples(metrics.text())
    assert value(m, "ktc_storage_faults_total", what="journal") == 3
    assert value(m, "ktc_storage_faults_total", what="state files") == 0
    assert value(m, "ktc_storage_failing") == 1
    c.faults.succeeded("journal")
    m = samples(metrics.text())
    assert value(m, "ktc_storage_failing") == 0 and value(m, "ktc_storage_faults_total", what="journal") == 3


def test_rpcs_are_counted_per_method_and_status_code_over_real_grpc(tmp_path):
    coordinator = Coordinator(make_oracle(tmp_path, max_trials=3), lease_seconds=10, heartbeat_seconds=1)
    metrics = ChiefMetrics()
    metrics.watch(coordinator)
    with serving(coordinator, on_call=metrics.rpc) as (stub, cluster, _):
        worker = [(rpc.WORKER_KEY, "w1"), (rpc.INSTANCE_KEY, "w1-pid")]
        cluster.Register({"worker": "w1", "instance": "w1-pid"})
        for _ in range(2):
            cluster.Heartbeat({"worker": "w1", "instance": "w1-pid"})
        stub.CreateTrial(protos.get_service().CreateTrialRequest(tuner_id="w1"), metadata=worker)
        with pytest.raises(grpc.RpcError) as refused:  # no such trial
            stub.UpdateTrial(protos.get_service().UpdateTrialRequest(trial_id="99", metrics={"score": 1.0}),
                             metadata=worker)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError):  # a stock client, refused
            stub.CreateTrial(protos.get_service().CreateTrialRequest(tuner_id="stock"))
    m = samples(metrics.text())
    assert value(m, "ktc_rpc_requests_total", method="Register", code="OK") == 1
    assert value(m, "ktc_rpc_requests_total", method="Heartbeat", code="OK") == 2
    assert value(m, "ktc_rpc_requests_total", method="CreateTrial", code="OK") == 1
    assert value(m, "ktc_rpc_requests_total", method="CreateTrial", code="FAILED_PRECONDITION") == 1
    assert value(m, "ktc_rpc_requests_total", method="UpdateTrial", code="NOT_FOUND") == 1
    for method, calls in (("Register", 1), ("Heartbeat", 2), ("CreateTrial", 2), ("UpdateTrial", 1), ("EndTrial", 0)):
        assert value(m, "ktc_rpc_duration_seconds_count", method=method) == calls, method
    assert 0 < value(m, "ktc_rpc_duration_seconds_sum", method="CreateTrial") < 30
    assert value(m, "ktc_trials", state="RUNNING") == 1 and value(m, "ktc_workers_registered") == 1


def test_two_chiefs_in_one_process_serve_their_own_registries_over_http(tmp_path):
    first, second = (Coordinator(make_oracle(tmp_path / name, max_trials=n), lease_seconds=10, heartbeat_seconds=1)
                     for name, n in (("a", 3), ("b", 7)))
    endpoints = []
    try:
        for coordinator in (first, second):
            metrics = ChiefMetrics()
            metrics.watch(coordinator)
            endpoints.append(Endpoint(metrics, "127.0.0.1", free_port()))
        first.register("w1", "w1")
        totals = [value(samples(scrape(e.port)), "ktc_search_trials_total") for e in endpoints]
        registered = [value(samples(scrape(e.port)), "ktc_workers_registered") for e in endpoints]
        assert totals == [3, 7] and registered == [1, 0]
        with pytest.raises(OSError):  # a port in use is refused, never shared
            Endpoint(ChiefMetrics(), "127.0.0.1", endpoints[0].port)
    finally:
        for endpoint in endpoints:
            endpoint.stop()
        first.close()
        second.close()


@pytest.mark.parametrize("raw", ["abc", "-1", "65536", "9.5", "8000"])
def test_bad_metrics_ports_name_the_setting(tmp_path, raw):
    with pytest.raises(ConfigError) as err:
        config.load(config_env(tmp_path, KTC_METRICS_PORT=raw, KERASTUNER_ORACLE_PORT="8000"), role="chief")
    assert err.value.name == "KTC_METRICS_PORT"
    assert str(err.value).startswith(f"KTC_METRICS_PORT={raw!r} is not valid: ") and "\n" not in str(err.value)


def test_metrics_are_on_by_default_and_0_turns_them_off(tmp_path):
    assert config.load(config_env(tmp_path), role="chief").metrics_port == int(config.SETTINGS["KTC_METRICS_PORT"][0])
    assert config.load(config_env(tmp_path, KTC_METRICS_PORT="0"), role="chief").metrics_port == 0
