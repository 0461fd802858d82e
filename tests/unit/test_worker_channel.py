"""Issue 21 (F, D, G) on the worker's side, against a scripted chief on loopback gRPC: a chief that
answers UNAVAILABLE is retried with capped back-off and jitter and logged once per cause per 30 s;
a Register refused for other settings ends the worker with the chief's line; a progress report
refused as malformed (a NaN metric) fails the trial with the chief's reason as its message."""

import logging
import threading
import time

import grpc
import pytest

from tests.fixtures.fake_chief import FakeChief
from tests.unit.test_worker_client import LocalOracle
from worker import channel
from worker.client import OracleClient, ReportRefused, SettingsMismatch


class RefusingChief(FakeChief):
    """Refuses CreateTrial with UNAVAILABLE (as a chief whose state disk fails) until `until`
    (monotonic time); `refused` counts the refusals. Register and UpdateTrial answer with the
    codes in `register_code` / `update_code` when set."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.until, self.refused = 0.0, 0
        self.register_code = self.update_code = None

    def CreateTrial(self, request, context):
        if time.monotonic() < self.until:
            with self.lock:
                self.refused += 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "the chief cannot store results now (No space left); retry")
        return super().CreateTrial(request, context)

    def Register(self, request, context):
        if self.register_code:
            context.abort(self.register_code, "worker worker-1 disagrees with the chief: KTC_MODEL is 'a' on the "
                                              "worker, 'b' on the chief")
        return super().Register(request, context)

    def UpdateTrial(self, request, context):
        if self.update_code:
            context.abort(self.update_code, "progress report of trial 1 refused: metric loss=nan is not a finite "
                                            "number")
        return super().UpdateTrial(request, context)


@pytest.fixture
def chief():
    made = RefusingChief([("1", 1, {})])
    yield made
    made.stop()


def client_of(chief, tmp_path, timeout=60.0):
    return OracleClient(LocalOracle(), chief.address, "worker-1", timeout, str(tmp_path))


def test_backoff_doubles_to_its_cap_with_jitter_between_half_and_whole():
    assert [channel.Backoff(0.5, 5.0, rand=lambda: 1.0).next() for _ in range(1)] == [0.5]
    whole = channel.Backoff(0.5, 5.0, rand=lambda: 1.0)
    assert [whole.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    half = channel.Backoff(0.5, 5.0, rand=lambda: 0.0)
    assert [half.next() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.5, 2.5]


def test_a_chief_refusing_with_unavailable_is_retried_with_pauses_and_logged_once(chief, tmp_path, caplog):
    client = client_of(chief, tmp_path)
    client.register(claim_seconds=1)
    outage = 8.0
    chief.until = time.monotonic() + outage
    caplog.set_level(logging.WARNING, logger="ktcluster.worker")
    started = time.monotonic()
    trial = client.create_trial("worker-1")  # retried until the chief stores again
    took = time.monotonic() - started
    client.close()
    lines = [r.getMessage() for r in caplog.records if "chief unreachable" in r.getMessage()]
    assert trial.trial_id == "1" and outage <= took < outage + 5.5
    # back-off 0.5, 1, 2, 4, 5 ... seconds (each 50-100 %): at most 8 tries in 8 s; d1fbc2d made thousands
    assert 3 <= chief.refused <= 8, chief.refused
    assert len(lines) == 1 and "UNAVAILABLE" in lines[0], lines


def test_the_retry_line_is_logged_once_per_cause_per_window(chief, tmp_path, caplog):
    client = client_of(chief, tmp_path)
    now = [0.0]
    client._retry_lines = channel.OncePerWindow(channel.LOG_WINDOW, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="ktcluster.worker")
    for second in range(0, 61, 5):
        now[0] = second
        client._retry_line(grpc.StatusCode.UNAVAILABLE, "refused", 1.0)
        client._retry_line(grpc.StatusCode.DEADLINE_EXCEEDED, "slow", 1.0)
    client.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 6, lines  # each cause at 0, 30 and 60 s
    assert "5 more tries since the last such line" in lines[2]


def test_a_chief_that_comes_up_during_a_pause_is_called_at_once(tmp_path):
    from concurrent import futures

    from keras_tuner.src.engine import hyperparameters as hp_module

    from shared import rpc
    from tests.procs import free_port

    address = f"127.0.0.1:{free_port()}"  # nothing listens there yet
    client = OracleClient(LocalOracle(), address, "worker-1", 60.0, str(tmp_path))
    got = {}
    thread = threading.Thread(target=lambda: got.setdefault("space", client.get_space()), daemon=True)
    thread.start()
    time.sleep(4.0)  # the client is in its longer pauses by now
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    space = rpc.ORACLE_MESSAGES.GetSpaceResponse(hyperparameters=hp_module.HyperParameters().to_proto())
    servicer = type("Servicer", (rpc.ORACLE_GRPC.OracleServicer,), {"GetSpace": lambda self, r, c: space})()
    rpc.ORACLE_GRPC.add_OracleServicer_to_server(servicer, server)
    server.add_insecure_port(address)
    server.start()
    up = time.monotonic()
    thread.join(timeout=10)
    answered = time.monotonic() - up
    client.close()
    server.stop(0)
    assert "space" in got and answered < 3.0, answered  # not a whole pause (up to 5 s) later


def test_a_register_refused_for_other_settings_raises_settings_mismatch_with_the_chiefs_line(chief, tmp_path):
    chief.register_code = grpc.StatusCode.FAILED_PRECONDITION
    client = client_of(chief, tmp_path)
    with pytest.raises(SettingsMismatch, match="KTC_MODEL is 'a' on the worker, 'b' on the chief"):
        client.register(claim_seconds=1, fingerprint={"model": "a"})
    client.close()
    sent = [c[0] for c in chief.calls]
    assert sent == []  # refused before it was recorded: nothing else was called


def test_a_report_refused_as_malformed_fails_the_attempt_with_the_chiefs_reason(chief, tmp_path):
    client = client_of(chief, tmp_path)
    client.register(claim_seconds=1)
    trial = client.create_trial("worker-1")
    chief.update_code = grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ReportRefused) as refused:
        client.update_trial(trial.trial_id, {"loss": float("nan")}, step=0)
    client.close()
    assert str(refused.value) == "metric loss=nan is not a finite number"
