"""The coordinator over a real KerasTuner oracle, with a fake clock: leases, exact-once, restarts."""

import json
import logging
import os

import keras_tuner as kt
import pytest

from chief.coordinator import Coordinator, FINISHED_MARKER
from chief.leases import DuplicateWorker


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def make_oracle(tmp_path, max_trials=3, retries=1):
    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective("score", "max"), max_trials=max_trials, seed=1,
                                           max_retries_per_trial=retries, max_consecutive_failed_trials=3)
    oracle._set_project_dir(str(tmp_path), "proj")
    oracle.verbose = 0
    hp = oracle.get_space()
    hp.Int("x", 0, 100)
    oracle.update_space(hp)
    return oracle


def coordinator(tmp_path, clock, **kw):
    return Coordinator(make_oracle(tmp_path, **kw), lease_seconds=10, heartbeat_seconds=1, clock=clock)


def finish(c, trial, worker, score=1.0):
    c.update_trial(trial.trial_id, {"score": score}, worker=worker)
    trial.status = "COMPLETED"
    return c.end_trial(trial, worker)


def one_done_one_running_one_lost(c, clock):
    """Three workers: w1 finished its trial, w2 still trains, w3 went silent and lost its lease."""
    for w in ("w1", "w2", "w3"):
        c.register(w, w)
    done, _ = c.create_trial("w1", "w1")
    running, _ = c.create_trial("w2", "w2")
    lost, _ = c.create_trial("w3", "w3")
    finish(c, done, "w1")
    clock.now = 5
    c.heartbeat("w2", "w2")
    c.heartbeat("w1", "w1")
    clock.now = 11
    assert c.expire_leases() == [lost.trial_id]  # re-queued, not yet handed out
    return done, running, lost


def journal(tmp_path):
    return [json.loads(line) for line in open(tmp_path / "proj" / "ktcluster-runs.jsonl")]


def kill_9(c, tmp_path):
    """A crash: only what reached the kernel survives (not what sits in Python's buffers), and
    nothing is written on the way out."""
    path = tmp_path / "proj" / "ktcluster-runs.jsonl"
    durable = path.read_bytes()
    c.journal.close()
    path.write_bytes(durable)


def test_happy_path_finishes_and_counts_attempts(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock)
    for n in range(3):
        c.register("w1", "i1")
        trial, attempt = c.create_trial("w1", "i1")
        assert (trial.trial_id, attempt) == (str(n), 1)
        assert finish(c, trial, "w1")
    trial, _ = c.create_trial("w1", "i1")
    assert trial.status == "STOPPED" and c.finished.is_set()


def test_silent_worker_loses_its_trial_and_its_late_report_is_ignored(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock)
    c.register("w1", "i1")
    c.register("w2", "i2")
    lost, _ = c.create_trial("w1", "i1")
    clock.now = 5
    c.heartbeat("w2", "i2")
    clock.now = 10.5
    assert c.expire_leases() == [lost.trial_id]
    c.heartbeat("w2", "i2")
    again, attempt = c.create_trial("w2", "i2")
    assert (again.trial_id, attempt) == (lost.trial_id, 2)
    c.register("w1", "i1-restarted")  # w1 comes back after the lease: new work, late report ignored
    late = kt.engine.trial.Trial(again.hyperparameters, trial_id=lost.trial_id, status="COMPLETED")
    assert not c.end_trial(late, "w1", "i1-restarted")
    assert finish(c, again, "w2", score=0.5)
    ends = [e for e in journal(tmp_path) if e["event"] == "end"]
    assert [(e["trial"], e["status"]) for e in ends] == [(lost.trial_id, "RETRY"), (lost.trial_id, "COMPLETED")]


def test_a_long_oracle_call_costs_no_live_worker_its_trial(tmp_path, caplog):
    clock = Clock()
    c = coordinator(tmp_path, clock, max_trials=5)  # leases of 10 s
    for w in ("w1", "w2", "w3"):
        c.register(w, w)
    first, _ = c.create_trial("w1", "w1")
    third, _ = c.create_trial("w3", "w3")
    populate_space = c.oracle.populate_space

    def slow(trial_id):  # a Bayesian fit at thousands of trials: every heartbeat waits for it
        clock.now += 70
        return populate_space(trial_id)

    c.oracle.populate_space = slow
    c.create_trial("w2", "w2")
    c.oracle.populate_space = populate_space
    assert c.expire_leases() == []  # the chief was deaf for 70 s, not the workers silent
    assert "an oracle call held the chief for 70.0s" in caplog.text
    clock.now += 9
    c.heartbeat("w1", "w1")
    c.heartbeat("w2", "w2")
    clock.now += 1
    assert c.expire_leases() == [third.trial_id]  # silent for 10 s the chief could hear: gone
    assert finish(c, first, "w1")


def test_worker_back_within_its_lease_resumes_its_trial(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock)
    c.register("w1", "old")
    trial, _ = c.create_trial("w1", "old")
    clock.now = 4  # old process gone (silent > 3 heartbeats), lease (10 s) still live
    c.register("w1", "new")
    resumed, attempt = c.create_trial("w1", "new")
    assert (resumed.trial_id, attempt) == (trial.trial_id, 1)


class CountedScans(dict):
    """The oracle's running trials, counting the scans of them."""

    scans = 0

    def items(self):
        self.scans += 1
        return super().items()


def test_a_report_finds_its_trials_worker_without_scanning_every_running_trial(tmp_path):
    c = coordinator(tmp_path, Clock(), max_trials=40)
    c.oracle.ongoing_trials = CountedScans()
    trials = {f"w{n}": c.create_trial(f"w{n}")[0] for n in range(30)}
    c.oracle.ongoing_trials.scans = 0
    for worker, trial in trials.items():  # stock workers do not say who they are; ktcluster's do
        c.update_trial(trial.trial_id, {"score": 1.0}, worker=worker if worker < "w2" else None)
    assert c.oracle.ongoing_trials.scans == 0
    c.update_trial(trials["w1"].trial_id, {"score": 2.0}, worker="w7")  # not its trial: still refused
    assert trials["w1"].metrics.get_history("score")[0].value == [1.0]
    c._handed_to.clear()  # without the record (never the case), a scan still finds the owner
    assert finish(c, trials["w3"], None, score=0.5)
    assert c.oracle.trials[trials["w3"].trial_id].status == "COMPLETED"


def test_duplicate_live_worker_is_refused(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock)
    c.register("w1", "a")
    with pytest.raises(DuplicateWorker):
        c.register("w1", "b")
    with pytest.raises(DuplicateWorker):
        c.create_trial("w1", "b")


def test_out_of_retries_fails_for_good_with_message(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock, max_trials=1, retries=0)
    c.register("w1", "i1")
    trial, _ = c.create_trial("w1", "i1")
    trial.status = "INVALID"
    assert c.end_trial(trial, "w1", "i1", message="Traceback...\nValueError: bad combo\n")
    assert c.oracle.trials[trial.trial_id].status == "FAILED"
    assert c.journal.runs[trial.trial_id]["message"] == "ValueError: bad combo"
    assert c.finished.is_set()


def test_oracle_exception_does_not_leave_it_locked(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock)
    c.register("w1", "i1")
    trial, _ = c.create_trial("w1", "i1")
    with pytest.raises(ValueError):  # objective missing: raised inside the oracle's @synchronized method
        c.update_trial(trial.trial_id, {"not_the_score": 1.0}, worker="w1")
    assert finish(c, trial, "w1")  # would block for ever if the oracle's lock were still held


def test_restart_keeps_running_trials_for_their_workers_and_never_reruns(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock, max_trials=4)
    done, running, retried = one_done_one_running_one_lost(c, clock)
    again, attempt = c.create_trial("w1", "w1")  # ... and handed to w1 as attempt 2
    assert (again.trial_id, attempt) == (retried.trial_id, 2)
    c.close()
    # Simulate the stock trap: end_trial saves oracle.json while the finished trial is still listed.
    state = json.load(open(tmp_path / "proj" / "oracle.json"))
    state["ongoing_trials"]["w9"] = done.trial_id
    open(tmp_path / "proj" / "oracle.json", "w").write(json.dumps(state))

    restarted = Coordinator(make_oracle(tmp_path, max_trials=4), lease_seconds=10, heartbeat_seconds=1, clock=clock)
    assert {w: t.trial_id for w, t in restarted.oracle.ongoing_trials.items()} == {
        "w2": running.trial_id, "w1": retried.trial_id}
    assert restarted.oracle._retry_queue == []
    assert restarted.end_trial(_completed(restarted, running), "w2", "w2-new")  # live worker reports: kept
    assert restarted.end_trial(_completed(restarted, again), "w1", "w1")
    last, _ = restarted.create_trial("w1", "w1")
    assert last.trial_id not in {done.trial_id, running.trial_id, retried.trial_id}
    finish(restarted, last, "w1")
    assert restarted.finished.is_set()
    finals = [e["trial"] for e in journal(tmp_path) if e["event"] == "end" and e["status"] != "RETRY"]
    assert sorted(finals) == sorted({done.trial_id, running.trial_id, retried.trial_id, last.trial_id})


def test_restart_on_finished_project_is_finished_at_once(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock, max_trials=1)
    c.register("w1", "i1")
    trial, _ = c.create_trial("w1", "i1")
    finish(c, trial, "w1")
    c.mark_finished({"completed": 1})
    c.close()
    restarted = Coordinator(make_oracle(tmp_path, max_trials=1), 10, 1, clock=clock)
    assert restarted.finished.is_set() and not restarted.oracle.ongoing_trials and not restarted.oracle._retry_queue
    assert os.path.exists(tmp_path / "proj" / FINISHED_MARKER)


def test_state_files_are_written_atomically(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock)
    c.register("w1", "i1")
    c.create_trial("w1", "i1")
    c.save_state()
    leftovers = [p for p in os.listdir(tmp_path / "proj") if p.endswith(".tmp")]
    assert leftovers == [] and json.load(open(tmp_path / "proj" / "oracle.json"))["ongoing_trials"]


def _completed(c, trial):
    c.update_trial(trial.trial_id, {"score": 0.7})
    copy = kt.engine.trial.Trial(trial.hyperparameters, trial_id=trial.trial_id, status="COMPLETED")
    return copy


def test_crash_with_a_stale_state_file_loses_nothing(tmp_path):
    """trial.json files and oracle.json are written behind the hot path; a kill -9 may leave them
    far behind the journal, which alone must bring every trial back."""
    clock = Clock()
    c = coordinator(tmp_path, clock, max_trials=5)
    c.save_state()  # the snapshot a crash leaves behind: from before any trial
    c.writer.flush = lambda: None  # ... and no state file written after it
    done, running, lost = one_done_one_running_one_lost(c, clock)
    kill_9(c, tmp_path)
    assert not list((tmp_path / "proj").glob("trial_*/trial.json"))

    again = Coordinator(make_oracle(tmp_path, max_trials=5), lease_seconds=10, heartbeat_seconds=1, clock=clock)
    oracle = again.oracle
    assert {w: t.trial_id for w, t in oracle.ongoing_trials.items()} == {"w2": running.trial_id}
    assert oracle._retry_queue == [lost.trial_id]
    assert oracle.end_order == [done.trial_id] and oracle.trials[done.trial_id].status == "COMPLETED"
    assert oracle._run_times[lost.trial_id] == 1
    again.register("w4", "w4")
    retry, attempt = again.create_trial("w4", "w4")
    assert (retry.trial_id, attempt) == (lost.trial_id, 2)
    fresh, _ = again.create_trial("w1", "w1")
    assert fresh.trial_id not in {done.trial_id, running.trial_id, lost.trial_id}  # no id handed out twice
    assert again.progress()["completed"] == 1 and again.progress()["best"] == (done.trial_id, 1.0)
    again.close()  # the lagging files are rewritten from the journal
    on_disk = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "proj").glob("trial_*/trial.json")}
    assert on_disk[f"trial_{done.trial_id}"]["status"] == "COMPLETED"
    assert on_disk[f"trial_{done.trial_id}"]["score"] == 1.0
    assert {t["trial_id"]: t for t in on_disk.values()} == {t: again.oracle.trials[t].get_state()
                                                            for t in again.oracle.trials}


def test_journal_replays_every_trial_state_exactly(tmp_path):
    """The journal keeps a trial's space by reference and a progress report as what it added;
    replayed after a kill -9 (and across a restart, which appends to the same file) it must give
    every trial's state exactly as the live oracle had it: reports at a new step, a second value
    at the same step, a metric first seen mid-trial, NaN and infinity, a space that grew mid-search."""
    from keras_tuner.src.engine.hyperparameters import HyperParameters

    from chief.journal import RunJournal

    def run(c, worker, reports, status="COMPLETED"):
        trial, _ = c.create_trial(worker, worker)
        for step, metrics in reports:
            c.update_trial(trial.trial_id, metrics, step=step, worker=worker)
        if status:
            trial.status = status
            c.end_trial(trial, worker, worker)
        return trial

    clock = Clock()
    c = coordinator(tmp_path, clock, max_trials=20)
    c.save_state()  # as the chief does before it serves: the project exists from here on
    for w in ("w1", "w2"):
        c.register(w, w)
    reports = [(0, {"score": 0.5}), (1, {"score": 0.7, "loss": 2.0}), (1, {"score": 0.6}),
               (3, {"score": float("nan"), "loss": float("inf")}), (2, {"score": 0.65})]
    first = run(c, "w1", reports)
    run(c, "w1", [(0, {"score": 0.1})], status="INVALID")  # re-queued for a retry
    grown = HyperParameters()
    grown.Float("lr", 1e-4, 1e-2, sampling="log")
    c.update_space(grown)
    run(c, "w2", [(0, {"score": 0.9})])
    run(c, "w1", reports, status=None)  # still running at the crash: its journal has only the reports
    expected = {t: trial.get_state() for t, trial in c.oracle.trials.items()}
    kill_9(c, tmp_path)

    again = Coordinator(make_oracle(tmp_path, max_trials=20), lease_seconds=10, heartbeat_seconds=1, clock=clock)
    reloaded = {t: trial.get_state() for t, trial in again.oracle.trials.items()}
    assert json.dumps(reloaded, sort_keys=True) == json.dumps(expected, sort_keys=True)  # NaN != NaN
    again.register("w3", "w3")
    run(again, "w3", [(0, {"score": 0.3}), (1, {"val_loss": 0.5, "score": 0.4})])
    assert len(again.oracle.trials) == len(expected) + 1  # a new id, none handed out twice
    expected.update({t: trial.get_state() for t, trial in again.oracle.trials.items()})
    kill_9(again, tmp_path)

    _, states = RunJournal.replay(str(tmp_path / "proj" / "ktcluster-runs.jsonl"))
    assert json.dumps(states, sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert {len(s["hyperparameters"]["space"]) for s in states.values()} == {1, 2}
    events = journal(tmp_path)
    assert sum(e["event"] == "space" for e in events) == 3  # x; x and lr; x and lr after the restart
    assert [e["event"] for e in events if e.get("trial") == first.trial_id].count("trial") == 2  # start, end
    assert not any(e["event"] == "trial" and isinstance(e["state"]["hyperparameters"]["space"], list)
                   for e in events)


def test_journal_written_before_space_lines_still_replays(tmp_path):
    """A journal from before `space` and `metrics` lines holds whole states, space included: a
    chief upgraded in place must still read it, and append to it in the new form."""
    from chief.journal import RunJournal

    c = coordinator(tmp_path, Clock())
    c.register("w1", "i1")
    trial, _ = c.create_trial("w1", "i1")
    finish(c, trial, "w1")
    state = c.oracle.trials[trial.trial_id].get_state()
    c.close()
    path = tmp_path / "proj" / "ktcluster-runs.jsonl"
    path.write_text(json.dumps({"event": "trial", "trial": trial.trial_id, "state": state, "t": 1.0}) + "\n")
    assert RunJournal.replay(str(path))[1] == {trial.trial_id: state}

    again = coordinator(tmp_path, Clock())
    assert again.oracle.trials[trial.trial_id].get_state() == state
    again.register("w1", "i1")
    second, _ = again.create_trial("w1", "i1")
    finish(again, second, "w1")
    expected = {t: again.oracle.trials[t].get_state() for t in again.oracle.trials}
    kill_9(again, tmp_path)
    assert RunJournal.replay(str(path))[1] == expected


def test_journal_without_oracle_json_stops_instead_of_starting_afresh(tmp_path):
    """oracle.json deleted by hand: a fresh start would hand the journal's trial ids out again."""
    from chief.coordinator import InconsistentState

    clock = Clock()
    c = coordinator(tmp_path, clock)
    c.save_state()
    c.register("w1", "i1")
    trial, _ = c.create_trial("w1", "i1")
    finish(c, trial, "w1")
    c.close()
    (tmp_path / "proj" / "oracle.json").unlink()
    before = (tmp_path / "proj" / "ktcluster-runs.jsonl").read_bytes()
    with pytest.raises(InconsistentState, match="journal of 1 trials but no oracle.json"):
        Coordinator(make_oracle(tmp_path), lease_seconds=10, heartbeat_seconds=1, clock=clock)
    assert (tmp_path / "proj" / "ktcluster-runs.jsonl").read_bytes() == before


def test_status_reads_the_journal_when_state_files_lag(tmp_path):
    """`python -m chief status` on a running (or killed) chief whose trial files are behind."""
    import types

    from chief import status

    clock = Clock()
    c = coordinator(tmp_path, clock, max_trials=5)
    c.save_state()
    c.writer.flush = lambda: None
    done, running, lost = one_done_one_running_one_lost(c, clock)
    settings = types.SimpleNamespace(project_state_dir=str(tmp_path / "proj"), max_trials=5, tuner="random",
                                     objective=types.SimpleNamespace(name="score", direction="max"))
    snap = status.snapshot(settings)
    assert {t.trial_id: t.status for t in snap["trials"]} == {done.trial_id: "COMPLETED",
                                                              running.trial_id: "RUNNING", lost.trial_id: "INVALID"}
    assert snap["running"] == {"w2": running.trial_id} and snap["queued"] == [lost.trial_id]
    assert snap["best"].trial_id == done.trial_id
    c.journal.close()


def test_hot_oracle_calls_bypass_keras_tuners_second_lock(tmp_path):
    """The coordinator's lock serialises every call; KerasTuner's @synchronized wrapper (another
    lock and a DeprecationWarning per call) is unwrapped. If a KerasTuner upgrade changes the
    wrapper, this says so instead of silently keeping the slow path."""
    import warnings

    c = coordinator(tmp_path, Clock())
    for name in ("create_trial", "end_trial"):
        assert getattr(c.oracle, name).__func__.__qualname__ == f"Oracle.{name}"  # not `wrapped_func`
    assert c.oracle.update_trial.__qualname__ == "_update_trial.<locals>.update_trial"  # ours: no lock
    c.register("w1", "i1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # currentThread() would raise here
        trial, _ = c.create_trial("w1", "i1")
        assert finish(c, trial, "w1")
    c.close()


def _trial_file(tmp_path, trial_id):
    return tmp_path / "proj" / f"trial_{trial_id}" / "trial.json"


def test_state_files_follow_the_journal_once_the_chief_is_quiet(tmp_path):
    """Written behind, but written: KerasTuner's tools see a running search's trials."""
    from tests.procs import wait_until

    c = coordinator(tmp_path, Clock())
    c.register("w1", "i1")
    trial, _ = c.create_trial("w1", "i1")
    oracle_file = tmp_path / "proj" / "oracle.json"
    # trial files first, then the oracle.json that names them: wait for the second write
    wait_until(lambda: oracle_file.exists() and json.loads(oracle_file.read_text())["ongoing_trials"],
               5, interval=0.05, what="oracle.json naming the trial")
    assert json.loads(_trial_file(tmp_path, trial.trial_id).read_text())["status"] == "RUNNING"
    assert json.loads(oracle_file.read_text())["ongoing_trials"] == {"w1": trial.trial_id}
    c.close()


def test_state_files_are_written_within_the_longest_lag_under_continuous_load(tmp_path):
    """A chief that is never quiet still writes them, at the latest `max_lag` after a change."""
    import threading
    import time

    from chief.coordinator import StateWriter

    oracle = make_oracle(tmp_path, max_trials=1000)
    lock = threading.Lock()
    c = Coordinator(oracle, lease_seconds=10, heartbeat_seconds=1, clock=Clock())
    c.writer.close()  # replaced by one with a short lag, over the same oracle and journal
    writer = StateWriter(oracle, lock, quiet=0.2, max_lag=0.6)
    c.register("w1", "i1")
    first, _ = c.create_trial("w1", "i1")
    with lock:
        writer.trial_changed(oracle.trials[first.trial_id])
    started = time.monotonic()
    while time.monotonic() - started < 2.0 and not _trial_file(tmp_path, first.trial_id).exists():
        with lock:
            writer.save()  # a change every 50 ms: never quiet for 0.2 s
        time.sleep(0.05)
    assert _trial_file(tmp_path, first.trial_id).exists()
    assert time.monotonic() - started < 1.5
    writer.close()
    c.journal.close()


def test_a_spare_worker_waits_for_a_retry_instead_of_stopping(tmp_path):
    """Budget handed out, one trial still running elsewhere: if that worker dies, its retry needs
    someone. Stock tells the spare worker STOPPED and the retry then waits for ever."""
    clock = Clock()
    c = coordinator(tmp_path, clock, max_trials=2)
    for w in ("w1", "w2"):
        c.register(w, w)
    running, _ = c.create_trial("w1", "w1")
    other, _ = c.create_trial("w2", "w2")
    assert finish(c, other, "w2")
    spare, _ = c.create_trial("w2", "w2")
    assert spare.status == "IDLE"  # not STOPPED: trial `running` may come back
    clock.now = 5
    c.heartbeat("w2", "w2")
    clock.now = 11  # w1 went silent
    assert c.expire_leases() == [running.trial_id]
    retry, attempt = c.create_trial("w2", "w2")
    assert (retry.trial_id, attempt) == (running.trial_id, 2)
    assert not c.finished.is_set()
    assert finish(c, retry, "w2")
    assert c.create_trial("w2", "w2")[0].status == "STOPPED"
    assert c.finished.is_set()
    c.close()


def test_no_spare_is_held_for_a_trial_on_its_last_attempt(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock, max_trials=2, retries=0)
    for w in ("w1", "w2"):
        c.register(w, w)
    c.create_trial("w1", "w1")
    other, _ = c.create_trial("w2", "w2")
    assert finish(c, other, "w2")
    assert c.create_trial("w2", "w2")[0].status == "STOPPED"  # nothing could come back
    c.close()


def test_update_trial_keeps_stock_results_without_its_discarded_best_value_scans(tmp_path):
    """The coordinator's update_trial skips MetricsTracker.update's before/after best-value scans
    (O(history) each, result discarded): the trial must end up exactly as stock leaves it."""
    reports = [({"score": 0.5, "loss": 2.0}, 0), ({"score": 0.7, "loss": 1.5}, 1), ({"score": 0.6}, 1),
               ({"val_accuracy": 0.9, "score": float("nan")}, 2)]
    stock = make_oracle(tmp_path / "stock")
    c = coordinator(tmp_path / "ours", Clock())
    c.register("w1", "i1")
    ours, _ = c.create_trial("w1", "i1")
    theirs = stock.create_trial("w1")
    for metrics, step in reports:
        c.update_trial(ours.trial_id, metrics, step=step, worker="w1")
        stock.update_trial(theirs.trial_id, metrics, step=step)
    assert json.dumps(ours.metrics.get_config()) == json.dumps(theirs.metrics.get_config())
    assert {n: h.direction for n, h in ours.metrics.metrics.items()} == {"score": "max", "loss": "min",
                                                                         "val_accuracy": "max"}
    with pytest.raises(ValueError, match="Objective value missing"):
        c.update_trial(ours.trial_id, {"loss": 1.0}, worker="w1")  # as stock: the objective is required
    c.close()


def test_scores_match_keras_tuners_own():
    """best_of gives what stock's numpy scoring gives: NaN ignored, all-NaN histories, ties (the
    first step wins), several executions per step, both directions."""
    import math
    import random

    from keras_tuner.src.engine.metrics_tracking import MetricHistory

    from chief.coordinator import best_of

    rng = random.Random(0)
    pool = [0.1, 0.5, 0.5, 0.9, float("nan"), float("inf"), -1.0]
    cases = [[], [float("nan")], [float("nan"), float("nan")], [0.5, 0.5], [[0.2, 0.4], [0.3]]]
    cases += [[rng.choice(pool) if rng.random() < 0.8 else [rng.choice(pool), rng.random()]
               for _ in range(rng.randint(1, 6))] for _ in range(300)]
    for values in cases:
        for direction in ("min", "max"):
            history = MetricHistory(direction)
            for step, value in enumerate(values):
                history.update(value, step=step // 2)  # two reports per step: an execution each
            best, step = best_of(history)
            stock_best, stock_step = history.get_best_value(), history.get_best_step()
            assert step == stock_step, (values, direction)
            assert (best is None and stock_best is None) or best == stock_best or (
                math.isnan(best) and math.isnan(stock_best)), (values, direction)


def test_trials_are_scored_as_stock_scores_them(tmp_path):
    """End to end through the coordinator: same score, best step and status as the stock oracle
    (a NaN-only objective makes the attempt INVALID, as stock does)."""
    stock = make_oracle(tmp_path / "stock", retries=0)
    c = coordinator(tmp_path / "ours", Clock(), retries=0)
    c.register("w1", "i1")
    for reports in ([0.2, 0.8, 0.8, 0.1], [float("nan")]):
        ours, _ = c.create_trial("w1", "i1")
        theirs = stock.create_trial("w1")
        for step, value in enumerate(reports):
            c.update_trial(ours.trial_id, {"score": value}, step=step, worker="w1")
            stock.update_trial(theirs.trial_id, {"score": value}, step=step)
        ours.status = theirs.status = "COMPLETED"
        c.end_trial(ours, "w1", "i1")
        stock.end_trial(theirs)
        ours, theirs = c.oracle.trials[ours.trial_id], stock.trials[theirs.trial_id]
        assert (ours.status, ours.best_step) == (theirs.status, theirs.best_step)
        assert ours.score == theirs.score or (ours.score != ours.score and theirs.score != theirs.score)
    assert c.oracle.score_trial.__qualname__ == "_score_trial.<locals>.score_trial"
    c.close()


def test_random_values_match_keras_tuners_own(tmp_path):
    """Same seed, same values in the same order as stock's `_random_values`: conditional
    hyperparameters, a name used under two conditions, and a space that runs out of new values."""
    from keras_tuner.src.engine.hyperparameters import HyperParameters

    hp = HyperParameters()
    model_type = hp.Choice("model_type", ["mlp", "cnn"])
    with hp.conditional_scope("model_type", ["mlp"]):
        hp.Int("units", 32, 512, step=32)
        hp.Int("layers", 1, 3)
    with hp.conditional_scope("model_type", ["cnn"]):
        hp.Int("units", 8, 64)
        hp.Int("filters", 8, 64, sampling="log")
    hp.Float("dropout", 0.0, 0.5)
    hp.Boolean("batch_norm")
    assert model_type == "mlp"
    stock = make_oracle(tmp_path / "stock")
    c = coordinator(tmp_path / "ours", Clock())
    for oracle in (stock, c.oracle):
        oracle.update_space(hp)
    ours = [c.oracle._random_values() for _ in range(60)]
    assert ours == [stock._random_values() for _ in range(60)] and c.oracle._seed_state == stock._seed_state
    assert {v["model_type"] for v in ours} == {"mlp", "cnn"} and all(("filters" in v) == (v["model_type"] == "cnn")
                                                                       for v in ours)

    tiny = HyperParameters()
    tiny.Boolean("flag")
    stock, c = make_oracle(tmp_path / "stock2"), coordinator(tmp_path / "ours2", Clock())
    for oracle in (stock, c.oracle):
        oracle.hyperparameters = tiny.copy()
        oracle._max_collisions = 3
    drawn = []
    for _ in range(3):  # two new values, then none left
        values = [oracle._random_values() for oracle in (stock, c.oracle)]
        assert values[0] == values[1]
        drawn.append(values[0])
        for oracle in (stock, c.oracle):
            if values[0] is not None:
                oracle._tried_so_far.add(oracle._compute_values_hash(values[0]))
    assert drawn[2] is None and {v["flag"] for v in drawn[:2]} == {True, False}
    assert c.oracle._seed_state == stock._seed_state
    c.close()


def _mixed_space():
    """Every hyperparameter type, one conditional on a Choice (the guide's MLP-or-CNN shape)."""
    from keras_tuner.src.engine.hyperparameters import HyperParameters

    hp = HyperParameters()
    hp.Choice("model_type", ["mlp", "cnn"])
    hp.Int("units", 32, 512, step=32, sampling="log")
    hp.Float("dropout", 0.0, 0.5, step=0.1)
    hp.Boolean("batch_norm", default=True)
    hp.Fixed("epochs", 3)
    with hp.conditional_scope("model_type", ["cnn"]):
        hp.Int("filters", 8, 64, default=16)
    return hp


def test_space_copies_match_keras_tuners_own(tmp_path):
    """`create_trial` copies the space per trial without Keras's deserializer: same objects, every
    hyperparameter type, conditions, values; the copy is independent; a restarted chief has it too."""
    from keras_tuner.src.engine.hyperparameters import HyperParameters

    hp = _mixed_space()
    hp.Float("lr", 1e-4, 1e-2, sampling="log")
    assert hp.get("model_type") == "mlp"
    c = coordinator(tmp_path, Clock())
    c.oracle.update_space(hp)
    space = c.oracle.hyperparameters
    copy, stock = space.copy(), HyperParameters.copy(space)
    assert copy.get_config() == stock.get_config() and [type(p) for p in copy.space] == [type(p) for p in stock.space]
    copy.values["units"] = 64
    assert space.values.get("units") != 64 and not {id(p) for p in copy.space} & {id(p) for p in space.space}
    c.register("w1", "i1")
    trial, _ = c.create_trial("w1", "i1")
    c.close()

    again = Coordinator(make_oracle(tmp_path), lease_seconds=10, heartbeat_seconds=1, clock=Clock())
    assert again.oracle.hyperparameters.copy.__qualname__ == "fast_space_copies.<locals>.copy"
    assert again.oracle.hyperparameters.copy().get_config() == HyperParameters.copy(again.oracle.hyperparameters).get_config()
    assert "filters" in {p.name for p in again.oracle.hyperparameters.space}
    again.close()


def test_trial_lines_keep_to_their_budget_and_trouble_is_always_logged(tmp_path, caplog):
    """At hundreds of trials a second the start/end lines are budgeted (the progress line counts
    the rest); a failure's line is never skipped, and lines come back as the budget refills."""
    from chief import progress

    clock = Clock()
    c = coordinator(tmp_path, clock, max_trials=60, retries=0)
    c.trial_lines = progress.LineBudget(rate=10, burst=20, clock=clock)
    lines = lambda: [r.getMessage() for r in caplog.records if r.getMessage().startswith("trial ")]
    with caplog.at_level(logging.INFO, logger="ktcluster.chief"):
        for n in range(40):  # 80 start/COMPLETED lines with no time passing
            trial, _ = c.create_trial("w1")
            assert finish(c, trial, "w1")
        assert len(lines()) == 20
        summary = c.progress()
        assert summary["skipped"] == 60 and "60 trial start/end lines not shown" in progress.line(summary)
        assert c.progress()["skipped"] == 0  # each skipped line is counted once

        trial, _ = c.create_trial("w1")
        c.update_trial(trial.trial_id, {"score": 1.0}, worker="w1")
        trial.status, trial.message = "FAILED", "ValueError: bad batch"
        c.end_trial(trial, "w1", message=trial.message)
        assert lines()[-1] == f"trial {trial.trial_id} FAILED by w1: ValueError: bad batch"

        clock.now += 1.0  # 10 more lines' worth
        before = len(lines())
        for n in range(10):
            trial, _ = c.create_trial("w1")
            finish(c, trial, "w1")
        assert len(lines()) - before == 10
        assert c.progress()["skipped"] == 1 + 10
    c.close()


def test_state_files_written_in_chunks_never_name_a_trial_without_its_file(tmp_path):
    """A backlog is written a chunk at a time (the lock is free in between, and workers keep
    creating trials); oracle.json still names only trials whose trial.json holds their latest state."""
    c = coordinator(tmp_path, Clock(), max_trials=40)
    c.writer.CHUNK = 4
    trials = []
    for n in range(10):
        trial, _ = c.create_trial(f"w{n}")
        c.update_trial(trial.trial_id, {"score": n / 10}, worker=f"w{n}")  # only marks the trial
        trials.append(trial)
    write_trial, created = c.writer._write_trial, []

    def write_trial_while_workers_ask(state):
        write_trial(state)
        if len(created) < 3:  # the lock is free between chunks: new trials arrive meanwhile
            created.append(c.create_trial(f"late{len(created)}")[0])

    c.writer._write_trial = write_trial_while_workers_ask
    c.save_state()
    assert len(created) == 3
    for trial in trials + created:
        assert json.loads(_trial_file(tmp_path, trial.trial_id).read_text()) == trial.get_state()
    fresh = make_oracle(tmp_path, max_trials=40)
    fresh.reload()  # stock: a KeyError if oracle.json named a trial without its file
    assert set(fresh.trials) == {t.trial_id for t in trials + created}
    c.close()


def test_copies_are_encoded_as_keras_tuner_encodes_them(tmp_path):
    """A copy's space is encoded once per size of the oracle's space; the message is stock's."""
    import copy as copy_module

    from chief.coordinator import hyperparameters_proto
    from keras_tuner.src.engine.hyperparameters import HyperParameters

    c = coordinator(tmp_path, Clock())
    c.oracle.update_space(_mixed_space())
    space = c.oracle.hyperparameters
    for values in ({"x": 3, "model_type": "cnn", "filters": 24, "batch_norm": False, "dropout": 0.25},
                   {"x": 7, "model_type": "mlp", "units": 64, "epochs": 3}):
        copy = space.copy()
        copy.values = values
        assert hyperparameters_proto(copy) == HyperParameters.to_proto(copy)
        assert hyperparameters_proto(copy_module.deepcopy(copy)) == HyperParameters.to_proto(copy)
    grown = space.copy()
    grown.Float("lr", 1e-4, 1e-2)  # a copy whose space grew: stock's own encoding
    assert hyperparameters_proto(grown) == HyperParameters.to_proto(grown) and "lr" in {p.name for p in HyperParameters.from_proto(hyperparameters_proto(grown)).space}
    space.Int("layers", 1, 3)  # the oracle's space grew: copies encode the new space
    later = space.copy()
    assert hyperparameters_proto(later) == HyperParameters.to_proto(later) and len(hyperparameters_proto(later).space.int_space) == 4
    c.close()


def test_values_recorded_at_the_end_as_stock_records_them(tmp_path, monkeypatch):
    """A trial that ends with the hyperparameters it was given is not hashed again; one whose
    build added a hyperparameter is, and the oracle's record of tried values matches stock's."""
    from keras_tuner.src.engine import oracle as oracle_module

    calls = []
    stock_record = oracle_module.Oracle._record_values
    monkeypatch.setattr(oracle_module.Oracle, "_record_values",
                        lambda self, trial: calls.append((self, trial.trial_id)) or stock_record(self, trial))
    c = coordinator(tmp_path / "c", Clock(), max_trials=4)
    stock = make_oracle(tmp_path / "s", max_trials=4)
    for n in range(3):
        trial, stock_trial = c.create_trial("w1")[0], stock.create_trial("w1")
        assert trial.hyperparameters.values == stock_trial.hyperparameters.values
        if n == 1:  # the build added a hyperparameter: a new object, as the servicer parses it
            for t in (trial, stock_trial):
                t.hyperparameters = t.hyperparameters.copy()
                t.hyperparameters.Fixed("extra", 5)
        for oracle, t in ((c.oracle, trial), (stock, stock_trial)):
            oracle.update_trial(t.trial_id, {"score": 0.5})
            t.status = "COMPLETED"
        c.end_trial(trial, "w1")
        stock.end_trial(stock_trial)
    assert c.oracle._tried_so_far == stock._tried_so_far and c.oracle._id_to_hash == stock._id_to_hash
    ours = [trial_id for oracle, trial_id in calls if oracle is c.oracle]
    assert ours == ["0", "1", "1", "2"]  # at creation; at the end only for the trial whose space grew
    c.close()


def test_journal_lines_keep_what_orjson_cannot_write():
    """Lines go through orjson, which writes NaN and infinities as null and refuses ints past 64
    bits: such lines go through json instead, and every line reads back as it was."""
    import math

    from chief.journal import encode

    def state(score, values, observations):
        return {"trial_id": "1", "hyperparameters": {"space": "ref-1", "values": values}, "score": score,
                "metrics": {"metrics": {"loss": {"direction": "min", "observations": observations}}},
                "best_step": 0, "status": "COMPLETED", "message": None}

    plain = {"event": "trial", "trial": "1", "state": state(0.5, {"x": 3, "y": 0.25, "kind": "cnn", "bn": True},
                                                          [{"value": [0.5], "step": 0}]), "t": 1.5}
    assert b" " not in encode(plain) and json.loads(encode(plain)) == plain  # orjson: compact
    odd = [
        {"event": "metrics", "trial": "1", "step": 2, "metrics": {"loss": math.nan}, "directions": {}, "t": 1.5},
        {"event": "metrics", "trial": "1", "step": 2, "metrics": {"loss": math.inf}, "directions": {}, "t": 1.5},
        {"event": "trial", "trial": "1", "state": state(math.nan, {"x": 3}, [{"value": [math.nan], "step": 0}]), "t": 1.5},
        {"event": "trial", "trial": "1", "state": state(0.5, {"x": 3}, [{"value": [0.5, -math.inf], "step": 0}]), "t": 1.5},
        {"event": "trial", "trial": "1", "state": state(0.5, {"x": 2**70}, [{"value": [0.5], "step": 0}]), "t": 1.5},
        {"event": "space", "ref": "ref-1", "space": [{"class_name": "Float", "config": {"max_value": math.inf}}], "t": 1.5},
    ]
    for event in odd:
        line = encode(event)
        assert line.endswith(b"\n") and json.dumps(json.loads(line)) == json.dumps(event), line
