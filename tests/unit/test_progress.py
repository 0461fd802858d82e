"""The chief's progress line: a silent worker is marked with how long it has been silent, the ETA
counts down steadily instead of jumping, and KerasTuner's own lines come out in the log format.
A real oracle and coordinator with a fake clock; no sleeping."""

import heapq
import io
import logging
import re
import types

import keras_tuner as kt
import pytest

from chief import coordinator as coordinator_module
from chief import progress
from chief.coordinator import Coordinator
from chief.oracle import cluster_oracle
from chief.trials import Caller
from shared.logs import configure_logging


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    """One fake clock for leases, the ETA and the trials' wall-clock durations."""
    clock = Clock()
    monkeypatch.setattr(coordinator_module, "time", types.SimpleNamespace(time=clock, monotonic=clock))
    return clock


def make(tmp_path, clock, max_trials=12, retries=1, heartbeat_seconds=1.0, on_event=lambda c: None):
    oracle = cluster_oracle(kt.oracles.RandomSearchOracle, objective=kt.Objective("score", "max"),
                            max_trials=max_trials, seed=1, max_retries_per_trial=retries)
    oracle.use_project(str(tmp_path), "proj")
    oracle.verbose = 0
    hp = oracle.get_space()
    hp.Int("x", 0, 100)
    oracle.update_space(hp)
    return Coordinator(oracle, lease_seconds=1000, heartbeat_seconds=heartbeat_seconds, clock=clock,
                       on_event=on_event)


def me(worker, attempt=None):
    return Caller(worker, worker, attempt)


def end(c, trial, attempt, worker, status="COMPLETED", message=""):
    caller = me(worker, attempt)
    c.update_trial(trial.trial_id, {"score": 0.5}, 0, caller)
    c.end_trial(kt.engine.trial.Trial(trial.hyperparameters.copy(), trial_id=trial.trial_id, status=status),
                caller, message=message)


# -- the ETA -------------------------------------------------------------------------------
def test_eta_counts_down_between_estimates_and_rises_by_one_trial_at_most():
    clock = Clock()
    eta = progress.Eta(clock)
    assert eta(10, 2, None) is None  # nothing ended yet: nothing to go by
    assert eta(10, 2, 10.0) == 50.0  # 10 trials x 10 s over 2 workers
    clock.now = 7
    assert eta(10, 2, 10.0) == 43.0  # same inputs: it counts down
    clock.now = 60
    assert eta(10, 2, 10.0) == 0.0  # never below 0
    assert eta(9, 2, 10.0) == 10.0  # an end: 45 s fresh, but at most one trial over 0
    clock.now = 61
    assert eta(9, 1, 10.0) == 19.0  # a worker left: 90 s fresh, capped at 9 + 10
    assert eta(2, 1, 10.0) == 20.0  # fresh: 2 x 10 s on one worker
    assert eta(2, 3, 10.0) == 10.0  # more workers: falls at once (2 trials keep 2 workers busy at most)
    assert eta(0, 3, 10.0) is None


def test_eta_of_a_search_never_jumps_back_up(tmp_path, clock):
    """Three workers, twelve trials of 8 to 12 s; a worker asks for its next trial 1 s after
    reporting, so two ends close together leave one trial running for a moment (the old ETA,
    remaining / trials running now, jumped from 1m to 1m42s there). Between trial ends the ETA
    never rises; at a trial end by at most one trial's duration."""
    durations = iter([10, 10.5, 11, 9, 12, 8, 10, 11, 9, 12, 10, 10])
    longest = 12
    c = make(tmp_path, clock)
    events = []  # (time, order, kind, worker, trial, attempt)
    for n, worker in enumerate(("w1", "w2", "w3")):
        c.register(worker, worker)
        heapq.heappush(events, (100.0, n, "ask", worker, None, None))  # (a start at 0 reads as none)
    for n in range(200):  # progress lines between events (other workers' calls, lease checks)
        heapq.heappush(events, (100 + n * 0.25, 3 + n, "tick", None, None, None))
    seen, order, ended = [], 203, 0  # seen: (time, ETA, trials ended so far)
    while events:
        clock.now, _, kind, worker, trial, attempt = heapq.heappop(events)
        if kind == "ask":
            trial, attempt = c.create_trial(worker, me(worker))
            if trial.status == "RUNNING":
                heapq.heappush(events, (clock.now + next(durations), order, "end", worker, trial, attempt))
        elif kind == "end":
            end(c, trial, attempt, worker)
            ended += 1
            heapq.heappush(events, (clock.now + 1.0, order, "ask", worker, None, None))
        order += 1
        seen.append((clock.now, c.progress().eta, ended))
    etas = [(t, e, n) for t, e, n in seen if e is not None]
    for (t1, e1, n1), (t2, e2, n2) in zip(etas, etas[1:]):
        if n2 == n1:
            assert e2 <= e1, f"the ETA rose between trial ends: {e1:.1f}s at {t1}, {e2:.1f}s at {t2}"
        else:
            assert e2 <= e1 + longest, f"the ETA jumped: {e1:.1f}s at {t1}, {e2:.1f}s at {t2}"
    assert etas[0][0] == 110.0 and 30 <= etas[0][1] <= 45  # 11 trials x 10 s over 3 workers
    assert ended == 12 and c.finished.is_set() and c.progress().eta is None


# -- silent workers -------------------------------------------------------------------------
def test_a_running_worker_unheard_for_over_two_heartbeats_is_marked_with_how_long(tmp_path, clock):
    c = make(tmp_path, clock, heartbeat_seconds=2.0)
    c.register("w1", "w1")
    c.register("w2", "w2")
    t1, _ = c.create_trial("w1", me("w1"))
    t2, _ = c.create_trial("w2", me("w2"))
    clock.now = 4.0  # two heartbeats missed: not yet
    c.heartbeat("w2", "w2")
    assert f"running [w1:{t1.trial_id}, w2:{t2.trial_id}]" in progress.line(c.progress())
    clock.now = 4.5
    assert f"running [w1:{t1.trial_id} silent 4s, w2:{t2.trial_id}]" in progress.line(c.progress())
    clock.now = 65.2
    c.heartbeat("w2", "w2")
    summary = c.progress()
    assert summary.silent == {"w1": pytest.approx(65.2)}
    assert f"running [w1:{t1.trial_id} silent 1m05s, w2:{t2.trial_id}]" in progress.line(summary)
    c.heartbeat("w1", "w1")  # heard again
    assert f"running [w1:{t1.trial_id}, w2:{t2.trial_id}]" in progress.line(c.progress())


def test_a_worker_falling_silent_is_said_at_the_next_lease_check_and_not_repeated(tmp_path, clock, caplog):
    """No other event comes when the only worker dies: the lease checks say it, once; the line
    is said again when the worker is heard again, not each time its silence grows."""
    c = make(tmp_path, clock, on_event=progress.ProgressLog(interval=0))
    c.register("w1", "w1")
    trial, _ = c.create_trial("w1", me("w1"))

    def lines():
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]

    with caplog.at_level(logging.INFO, logger="ktcluster.progress"):
        clock.now = 1
        c.expire_leases()
        said = len(lines())
        for now in (2, 3, 4, 5, 6, 7, 8):  # the reaper, every heartbeat interval
            clock.now = now
            c.expire_leases()
        silent = [line for line in lines()[said:] if "silent" in line]
        assert [re.search(r"running \[(.*?)\]", line).group(1) for line in lines()[said:]] == [
            f"w1:{trial.trial_id} silent 3s"], lines()
        assert len(silent) == 1
        c.heartbeat("w1", "w1")
        c.expire_leases()
        assert lines()[-1].count("silent") == 0 and f"running [w1:{trial.trial_id}]" in lines()[-1]


# -- KerasTuner's own lines --------------------------------------------------------------------
@pytest.fixture
def chief_log():
    """The chief's log set-up (shared.logs) writing to a buffer; the root logger is put back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("chief", stream)
    yield stream
    root.handlers[:], root.level = handlers, level


def test_keras_tuners_retry_line_is_a_chief_log_line_not_a_bare_print(tmp_path, clock, chief_log, capsys):
    c = make(tmp_path, clock, retries=1)
    c.register("w1", "w1")
    trial, attempt = c.create_trial("w1", me("w1"))
    end(c, trial, attempt, "w1", status="INVALID", message="ValueError: out of memory")
    assert "retries left" not in capsys.readouterr().out
    lines = chief_log.getvalue().splitlines()
    stock = [line for line in lines if "retries left" in line]
    assert len(stock) == 1 and re.fullmatch(
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} INFO chief KerasTuner: Trial {trial.trial_id} failed 1 times\. "
        r"1 retries left\.", stock[0]), lines
