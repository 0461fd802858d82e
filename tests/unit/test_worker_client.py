"""The worker's client against a scripted chief on real loopback gRPC: lost attempts send nothing
more, refused reports drop the attempt, and the worker leaves promptly once the search is over."""

import os
import time

import pytest
from keras_tuner.src.engine import hyperparameters as hp_module
from keras_tuner.src.engine import trial as trial_module

from shared import layout, rpc
from tests.fixtures.fake_chief import FakeChief
from worker.client import AttemptLost, OracleClient, SearchFinished

RUNNING, IDLE, STOPPED = (trial_module.TrialStatus.RUNNING, trial_module.TrialStatus.IDLE,
                          trial_module.TrialStatus.STOPPED)


class Objective:
    name = "val_accuracy"


class LocalOracle:  # what the client asks the local oracle for: objective, max_trials
    objective, max_trials = Objective(), 3


@pytest.fixture
def make(tmp_path):
    made = []

    def make(trials=(), after=STOPPED, timeout=30.0):
        chief = FakeChief(trials, after)
        client = OracleClient(LocalOracle(), chief.address, "worker-1", timeout, str(tmp_path))
        client.register(claim_seconds=1)
        made.append((chief, client))
        return chief, client

    yield make
    for chief, client in made:
        client.close()
        chief.stop()


def wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def ended(trial_id, status=trial_module.TrialStatus.COMPLETED):
    return trial_module.Trial(hp_module.HyperParameters(), trial_id=trial_id, status=status)


def test_reports_carry_the_attempt_number(make):
    chief, client = make([("7", 3, {})])
    trial = client.create_trial("worker-1")
    assert (trial.trial_id, client.attempt_of("7")) == ("7", 3)
    client.update_trial("7", {"val_accuracy": 0.5})
    client.end_trial(ended("7"))
    sent = {c[0]: c[2] for c in chief.calls if c[1] == "7"}
    assert sent["UpdateTrial"][rpc.ATTEMPT_KEY] == "3" and sent["EndTrial"][rpc.ATTEMPT_KEY] == "3"
    assert client.attempt_of("7") is None  # forgotten once ended


def test_heartbeat_without_our_attempt_stops_it_and_nothing_more_is_sent(make):
    chief, client = make([("1", 1, {}), ("2", 1, {})])
    client.create_trial("worker-1")
    assert not client.is_lost("1")
    time.sleep(3 * chief.heartbeat_seconds)  # heartbeats that list our attempt change nothing
    assert not client.is_lost("1")
    with chief.lock:
        chief.owned["1"] = 2  # lease expired: attempt 2 went to another worker
    assert wait_for(lambda: client.is_lost("1"), 5 * chief.heartbeat_seconds)
    with pytest.raises(AttemptLost):
        client.update_trial("1", {"val_accuracy": 0.9})
    client.end_trial(ended("1", trial_module.TrialStatus.INVALID))
    assert chief.methods("1") == []  # no UpdateTrial, no EndTrial for the lost attempt
    assert client.create_trial("worker-1").trial_id == "2"  # and the worker goes on


def test_failed_precondition_on_update_drops_the_attempt(make):
    chief, client = make([("1", 1, {}), ("2", 1, {})])
    client.create_trial("worker-1")
    chief.refuse["UpdateTrial"].add("1")
    with pytest.raises(AttemptLost):
        client.update_trial("1", {"val_accuracy": 0.9})
    assert client.is_lost("1")
    client.end_trial(ended("1", trial_module.TrialStatus.INVALID))  # KerasTuner's end of the failed run
    assert chief.methods("1") == ["UpdateTrial"]  # no EndTrial after the refusal
    assert client.create_trial("worker-1").trial_id == "2"


def test_failed_precondition_on_end_is_no_error(make):
    chief, client = make([("1", 1, {})])
    client.create_trial("worker-1")
    chief.refuse["EndTrial"].add("1")
    client.end_trial(ended("1"))  # must not raise: the attempt was taken away meanwhile
    assert chief.methods("1") == ["EndTrial"]


def test_finished_heartbeat_ends_the_idle_wait(make):
    chief, client = make(after=IDLE)
    started = time.monotonic()
    for _ in range(6):  # IDLE backoff grows to seconds (3.2 s now); `finished` must cut it short
        assert client.create_trial("worker-1").status == IDLE
    chief.finished = True
    statuses, started = [], time.monotonic()
    while time.monotonic() - started < 30:
        statuses.append(client.create_trial("worker-1").status)
        if statuses[-1] == STOPPED:
            break
    assert statuses[-1] == STOPPED and client.finished.is_set()
    assert time.monotonic() - started < 3 * chief.heartbeat_seconds + 1  # within a few heartbeats


def test_finished_heartbeat_stops_a_running_attempt(make):
    chief, client = make([("1", 1, {})])
    client.create_trial("worker-1")
    chief.finished = True
    assert wait_for(lambda: client.is_lost("1"), 5 * chief.heartbeat_seconds)


def test_unreachable_chief_with_finished_marker_stops_at_once(make, tmp_path):
    chief, client = make(after=IDLE, timeout=60)
    chief.stop()
    (tmp_path / layout.FINISHED_MARKER).write_text("{}\n")
    started = time.monotonic()
    with pytest.raises(SearchFinished):
        client.create_trial("worker-1")
    assert time.monotonic() - started < 5  # not KTC_CHIEF_TIMEOUT_SECONDS (60)


def test_a_marker_older_than_the_worker_does_not_end_its_wait_for_the_chief(make, tmp_path):
    """A chief started with a finished project may be about to continue it (KTC_MAX_TRIALS raised):
    only a marker written after the worker started counts (shared.layout.FinishedWatch)."""
    from worker.client import ChiefUnreachable

    (tmp_path / layout.FINISHED_MARKER).write_text("{}\n")
    chief, client = make(after=IDLE, timeout=2)
    chief.stop()
    with pytest.raises(ChiefUnreachable):
        client.create_trial("worker-1")
    assert not client.finished.is_set()


def test_unreachable_chief_without_marker_still_gives_up_after_the_timeout(make):
    from worker.client import ChiefUnreachable

    chief, client = make(timeout=2)
    chief.stop()
    with pytest.raises(ChiefUnreachable):
        client.create_trial("worker-1")


def test_a_heartbeat_sent_before_the_trial_was_handed_out_decides_nothing(make):
    chief, client = make([("1", 1, {})])
    before = time.monotonic()
    client.create_trial("worker-1")
    client._heard({"ok": True, "attempts": {}, "finished": False}, sent=before)
    assert not client.is_lost("1")
    client._heard({"ok": False, "attempts": {}}, sent=time.monotonic())  # re-register first
    assert not client.is_lost("1")
    client._heard({"ok": True, "attempts": {}}, sent=time.monotonic())
    assert client.is_lost("1")



@pytest.fixture
def hosts_name():
    """A host name that does not resolve until `appear()` adds it to /etc/hosts (for 127.0.0.1);
    /etc/hosts is put back as it was. Skips where /etc/hosts is not writable (not root)."""
    import uuid

    path = "/etc/hosts"
    if not os.access(path, os.W_OK):
        pytest.skip("needs a writable /etc/hosts (root, as CI runs)")
    name = f"ktc-test-{uuid.uuid4().hex[:12]}"
    original = open(path).read()

    def appear():
        with open(path, "a") as f:
            f.write(f"127.0.0.1 {name}\n")

    yield name, appear
    with open(path, "w") as f:
        f.write(original)


def test_a_chief_whose_name_comes_back_after_a_long_absence_is_found_within_seconds(hosts_name, tmp_path):
    """A chief that Swarm or Kubernetes reschedules: its name resolves to nothing for a while,
    then to the new task. gRPC's own lookups back off (a channel whose name failed for 30 s found
    it 13 s later); the client dials anew, so it is found within a few seconds."""
    import threading

    name, appear = hosts_name
    chief = FakeChief()
    port = chief.address.rsplit(":", 1)[1]
    client = OracleClient(LocalOracle(), f"{name}:{port}", "worker-1", 120, str(tmp_path))
    done = threading.Event()
    worker = threading.Thread(target=lambda: (client.register(claim_seconds=1), done.set()), daemon=True)
    try:
        worker.start()
        assert not done.wait(30)  # 30 s without a chief by that name (a slow reschedule)
        appear()
        back = time.monotonic()
        assert done.wait(8), "the client did not find the chief within 8 s of its name resolving"
        assert time.monotonic() - back < 5
    finally:
        client.close()
        chief.stop()
        worker.join(timeout=10)
