"""The coordinator over a real KerasTuner oracle (extended as the chief extends it), with a fake
clock: leases, exact-once, restarts, and the state files behind the journal."""

import json
import logging
import os

import keras_tuner as kt
import pytest

from chief.coordinator import Coordinator
from chief.leases import DuplicateWorker
from chief import oracle as oracle_module
from chief.oracle import cluster_oracle
from chief.recovery import InconsistentState, read_project
from chief.trials import Caller, InvalidRequest, NotFinal, NotOwner, NotRegistered, Refused
from shared.layout import FINISHED_MARKER


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def make_oracle(tmp_path, max_trials=3, retries=1):
    oracle = cluster_oracle(kt.oracles.RandomSearchOracle, objective=kt.Objective("score", "max"),
                            max_trials=max_trials, seed=1, max_retries_per_trial=retries,
                            max_consecutive_failed_trials=3)
    oracle.use_project(str(tmp_path), "proj")
    oracle.verbose = 0
    hp = oracle.get_space()
    hp.Int("x", 0, 100)
    oracle.update_space(hp)
    return oracle


def coordinator(tmp_path, clock, stock_lease_seconds=0.0, **kw):
    return Coordinator(make_oracle(tmp_path, **kw), lease_seconds=10, heartbeat_seconds=1, clock=clock,
                       stock_lease_seconds=stock_lease_seconds)


def me(worker, instance=None, attempt=None) -> Caller:
    """A ktcluster worker's identity (its process instance defaults to its id)."""
    return Caller(worker, instance or worker, attempt)


def result(trial, status="COMPLETED", hyperparameters=None):
    """What a worker sends with EndTrial: a copy of the trial (the servicer parses a new one)."""
    return kt.engine.trial.Trial(hyperparameters or trial.hyperparameters.copy(), trial_id=trial.trial_id,
                                 status=status)


def finish(c, trial, caller, score=1.0):
    """Report `score` for `trial` and complete it, as `caller`."""
    c.update_trial(trial.trial_id, {"score": score}, 0, caller)
    c.end_trial(result(trial), caller)
    assert c.oracle.trials[trial.trial_id].status == "COMPLETED"


def one_done_one_running_one_lost(c, clock):
    """Three workers: w1 finished its trial, w2 still trains, w3 went silent and lost its lease."""
    for w in ("w1", "w2", "w3"):
        c.register(w, w)
    done, _ = c.create_trial("w1", me("w1"))
    running, _ = c.create_trial("w2", me("w2"))
    lost, _ = c.create_trial("w3", me("w3"))
    finish(c, done, me("w1"))
    clock.now = 5
    c.heartbeat("w2", "w2")
    c.heartbeat("w1", "w1")
    clock.now = 11
    assert c.expire_leases() == [lost.trial_id]  # re-queued, not yet handed out
    return done, running, lost


def journal(tmp_path):
    return [json.loads(line) for line in open(tmp_path / "proj" / "ktcluster-runs.jsonl")]


def kill_9(c):
    """A crash: every acknowledged call is in the journal already; nothing more is written (the
    state files stay as they were)."""
    c.writer.flush = lambda: None
    c.writer.close()
    c.journal.close()


def restart(tmp_path, clock, **kw):
    return Coordinator(make_oracle(tmp_path, **kw), lease_seconds=10, heartbeat_seconds=1, clock=clock)


def test_happy_path_finishes_and_counts_attempts(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock)
    for n in range(3):
        c.register("w1", "i1")
        trial, attempt = c.create_trial("w1", me("w1", "i1"))
        assert (trial.trial_id, attempt) == (str(n), 1)
        finish(c, trial, me("w1", "i1", attempt))
    trial, attempt = c.create_trial("w1", me("w1", "i1"))
    assert (trial.status, attempt) == ("STOPPED", 0) and c.finished.is_set()
    c.close()


def test_silent_worker_loses_its_trial_and_its_late_report_is_refused(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock)
    c.register("w1", "i1")
    c.register("w2", "i2")
    lost, _ = c.create_trial("w1", me("w1", "i1"))
    clock.now = 5
    c.heartbeat("w2", "i2")
    clock.now = 10.5
    assert c.expire_leases() == [lost.trial_id]
    assert c.heartbeat("w1", "i1") == {"ok": False, "attempts": {}, "finished": False}  # told: not yours any more
    c.heartbeat("w2", "i2")
    again, attempt = c.create_trial("w2", me("w2", "i2"))
    assert (again.trial_id, attempt) == (lost.trial_id, 2)
    c.register("w1", "i1-restarted")  # w1 comes back after the lease: new work, late report refused
    with pytest.raises(NotOwner):
        c.end_trial(result(lost), me("w1", "i1-restarted", 1))
    with pytest.raises(NotOwner):
        c.update_trial(lost.trial_id, {"score": 9.0}, 0, me("w1", "i1-restarted", 1))
    assert c.oracle.trials[lost.trial_id].status == "RUNNING" and not c.oracle.trials[lost.trial_id].metrics.exists("score")
    finish(c, again, me("w2", "i2", 2), score=0.5)
    ends = [e for e in journal(tmp_path) if e["event"] == "end"]
    assert [(e["trial"], e["status"]) for e in ends] == [(lost.trial_id, "RETRY"), (lost.trial_id, "COMPLETED")]
    c.close()


def test_a_long_oracle_call_costs_no_live_worker_its_trial(tmp_path, caplog):
    clock = Clock()
    c = coordinator(tmp_path, clock, max_trials=5)  # leases of 10 s
    for w in ("w1", "w2", "w3"):
        c.register(w, w)
    first, _ = c.create_trial("w1", me("w1"))
    third, _ = c.create_trial("w3", me("w3"))
    populate_space = c.oracle.populate_space

    def slow(trial_id):  # a Bayesian fit at thousands of trials: every heartbeat waits for it
        clock.now += 70
        return populate_space(trial_id)

    c.oracle.populate_space = slow
    c.create_trial("w2", me("w2"))
    c.oracle.populate_space = populate_space
    assert c.expire_leases() == []  # the chief was deaf for 70 s, not the workers silent
    assert "an oracle call held the chief for 70.0s" in caplog.text
    clock.now += 9
    c.heartbeat("w1", "w1")
    c.heartbeat("w2", "w2")
    clock.now += 1
    assert c.expire_leases() == [third.trial_id]  # silent for 10 s the chief could hear: gone
    finish(c, first, me("w1"))
    c.close()


def test_a_new_process_with_a_gone_workers_id_runs_its_trial_as_a_new_attempt(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock)
    c.register("w1", "old")
    trial, _ = c.create_trial("w1", me("w1", "old"))
    clock.now = 4  # old process gone (silent > 3 heartbeats), lease (10 s) still live
    c.register("w1", "new")  # the id is free again, the old process's attempt is not inherited
    again, attempt = c.create_trial("w1", me("w1", "new"))
    assert (again.trial_id, attempt) == (trial.trial_id, 2)
    with pytest.raises(DuplicateWorker):  # the old process, heard again, may send nothing more for attempt 1
        c.update_trial(trial.trial_id, {"score": 0.5}, 0, me("w1", "old", 1))
    finish(c, again, me("w1", "new", 2))
    starts = [e for e in journal(tmp_path) if e["event"] == "start"]
    assert [e["attempt"] for e in starts] == [1, 2]  # one start per training
    assert starts[0]["token"] != starts[1]["token"] and "old" not in json.dumps(starts)
    c.close()


def test_duplicate_live_worker_is_refused(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock)
    c.register("w1", "a")
    with pytest.raises(DuplicateWorker):
        c.register("w1", "b")
    with pytest.raises(DuplicateWorker):
        c.create_trial("w1", me("w1", "b"))
    assert not c.oracle.trials
    c.close()


def test_out_of_retries_fails_for_good_with_message(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock, max_trials=1, retries=0)
    c.register("w1", "i1")
    trial, _ = c.create_trial("w1", me("w1", "i1"))
    c.end_trial(result(trial, "INVALID"), me("w1", "i1", 1), message="Traceback...\nValueError: bad combo\n")
    assert c.oracle.trials[trial.trial_id].status == "FAILED"
    assert c.book.runs[trial.trial_id].message == "ValueError: bad combo"
    assert c.finished.is_set()
    c.close()


def test_oracle_exception_does_not_leave_it_locked(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock)
    c.register("w1", "i1")

    def broken(trial_id):  # raised inside the oracle's @synchronized create_trial
        raise RuntimeError("the tuner's populate_space failed")

    c.oracle.populate_space = broken
    with pytest.raises(RuntimeError, match="populate_space failed"):
        c.create_trial("w1", me("w1", "i1"))
    del c.oracle.populate_space
    trial, attempt = c.create_trial("w1", me("w1", "i1"))  # would block for ever if KerasTuner's lock were held
    assert (trial.trial_id, attempt) == ("0", 1)
    with pytest.raises(InvalidRequest, match="Objective value missing"):  # as stock: the objective is required
        c.update_trial(trial.trial_id, {"not_the_score": 1.0}, 0, me("w1", "i1"))
    finish(c, trial, me("w1", "i1"))
    c.close()


def test_restart_keeps_running_trials_for_their_workers_and_never_reruns(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock, max_trials=4)
    done, running, retried = one_done_one_running_one_lost(c, clock)
    again, attempt = c.create_trial("w1", me("w1"))  # ... and handed to w1 as attempt 2
    assert (again.trial_id, attempt) == (retried.trial_id, 2)
    c.close()
    # Simulate the stock trap: end_trial saves oracle.json while the finished trial is still listed.
    state = json.load(open(tmp_path / "proj" / "oracle.json"))
    state["ongoing_trials"]["w9"] = done.trial_id
    open(tmp_path / "proj" / "oracle.json", "w").write(json.dumps(state))

    restarted = restart(tmp_path, clock, max_trials=4)
    assert {w: t.trial_id for w, t in restarted.oracle.ongoing_trials.items()} == {
        "w2": running.trial_id, "w1": retried.trial_id}
    assert restarted.oracle.bookkeeping().queued == []
    assert restarted.heartbeat("w1", "w1")["attempts"] == {retried.trial_id: 2}
    restarted.update_trial(running.trial_id, {"score": 0.7}, 0, me("w2"))  # live worker reports: kept
    restarted.end_trial(result(running), me("w2", "w2", 1))
    finish(restarted, again, me("w1", "w1", 2))
    last, _ = restarted.create_trial("w1", me("w1"))
    assert last.trial_id not in {done.trial_id, running.trial_id, retried.trial_id}
    finish(restarted, last, me("w1"))
    assert restarted.finished.is_set()
    finals = [e["trial"] for e in journal(tmp_path) if e["event"] == "end" and e["status"] != "RETRY"]
    assert sorted(finals) == sorted({done.trial_id, running.trial_id, retried.trial_id, last.trial_id})
    restarted.close()


def test_restart_keeps_a_trial_for_one_lease_from_when_it_serves_not_from_start_up(tmp_path, caplog):
    clock = Clock()
    c = coordinator(tmp_path, clock)
    c.register("w1", "w1")
    running, _ = c.create_trial("w1", me("w1"))
    c.close()  # the chief stops (or is killed) while w1 trains
    restarted = restart(tmp_path, clock)
    clock.now += 30  # start-up work before serving (the dataset, a model dry run) took longer than a lease
    caplog.set_level(logging.INFO, logger="ktcluster.chief")
    restarted.serving()
    assert f"trial {running.trial_id} was running on w1 before the restart: kept for it for 10s" in caplog.text
    clock.now += 9
    assert restarted.expire_leases() == []
    assert restarted.heartbeat("w1", "w1")["ok"] is True  # claimed by the worker's next call
    clock.now += 9
    assert restarted.expire_leases() == []
    clock.now += 2
    assert restarted.expire_leases() == [running.trial_id]  # silent for a whole lease since it spoke
    restarted.close()


def test_restart_on_finished_project_is_finished_at_once(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock, max_trials=1)
    c.register("w1", "i1")
    trial, _ = c.create_trial("w1", me("w1", "i1"))
    finish(c, trial, me("w1", "i1"))
    c.mark_finished({"completed": 1})
    c.close()
    restarted = restart(tmp_path, clock, max_trials=1)
    assert restarted.finished.is_set() and not restarted.oracle.ongoing_trials and not restarted.oracle.bookkeeping().queued
    assert os.path.exists(tmp_path / "proj" / FINISHED_MARKER)
    restarted.close()


def test_state_files_are_written_atomically(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock)
    c.register("w1", "i1")
    c.create_trial("w1", me("w1", "i1"))
    c.save_state()
    leftovers = [p for p in os.listdir(tmp_path / "proj") if p.endswith(".tmp")]
    assert leftovers == [] and json.load(open(tmp_path / "proj" / "oracle.json"))["ongoing_trials"]
    c.close()


def test_crash_with_a_stale_state_file_loses_nothing(tmp_path):
    """trial.json files and oracle.json are written behind the hot path; a kill -9 may leave them
    far behind the journal, which alone must bring every trial back."""
    clock = Clock()
    c = coordinator(tmp_path, clock, max_trials=5)
    c.save_state()  # the snapshot a crash leaves behind: from before any trial
    c.writer.flush = lambda: None  # ... and no state file written after it
    done, running, lost = one_done_one_running_one_lost(c, clock)
    kill_9(c)
    assert not list((tmp_path / "proj").glob("trial_*/trial.json"))

    again = restart(tmp_path, clock, max_trials=5)
    oracle = again.oracle
    assert {w: t.trial_id for w, t in oracle.ongoing_trials.items()} == {"w2": running.trial_id}
    assert oracle.bookkeeping().queued == [lost.trial_id]
    assert oracle.end_order == [done.trial_id] and oracle.trials[done.trial_id].status == "COMPLETED"
    again.register("w4", "w4")
    retry, attempt = again.create_trial("w4", me("w4"))
    assert (retry.trial_id, attempt) == (lost.trial_id, 2)
    fresh, _ = again.create_trial("w1", me("w1"))
    assert fresh.trial_id not in {done.trial_id, running.trial_id, lost.trial_id}  # no id handed out twice
    assert again.progress().completed == 1 and again.progress().best == (done.trial_id, 1.0)
    again.end_trial(result(retry, "INVALID"), me("w4", "w4", 2), message="OOM")
    assert oracle.trials[lost.trial_id].status == "FAILED"  # its first attempt counted: out of retries
    again.close()  # the lagging files are rewritten from the journal
    on_disk = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "proj").glob("trial_*/trial.json")}
    assert on_disk[f"trial_{done.trial_id}"]["status"] == "COMPLETED"
    assert on_disk[f"trial_{done.trial_id}"]["score"] == 1.0
    assert {t["trial_id"]: t for t in on_disk.values()} == {t: again.oracle.trials[t].get_state()
                                                            for t in again.oracle.trials}


def test_journal_replays_every_trial_state_exactly(tmp_path):
    """The journal keeps a trial's space by reference; replayed after a kill -9 (and across a
    restart, which appends to the same file) it must give every trial's state exactly as the live
    oracle had it: reports at a new step, a second value at the same step, a metric first seen
    mid-trial, a space that grew mid-search."""
    from keras_tuner.src.engine.hyperparameters import HyperParameters

    def run(c, worker, reports, status="COMPLETED"):
        trial, attempt = c.create_trial(worker, me(worker))
        for step, metrics in reports:
            c.update_trial(trial.trial_id, metrics, step, me(worker, attempt=attempt))
        if status:
            c.end_trial(result(trial, status), me(worker, attempt=attempt))
        return trial

    clock = Clock()
    c = coordinator(tmp_path, clock, max_trials=20)
    c.save_state()  # as the chief does before it serves: the project exists from here on
    for w in ("w1", "w2"):
        c.register(w, w)
    reports = [(0, {"score": 0.5}), (1, {"score": 0.7, "loss": 2.0}), (1, {"score": 0.6}),
               (3, {"score": 0.2, "loss": 3.0}), (2, {"score": 0.65})]  # NaN and infinity are refused now
    run(c, "w1", reports)
    run(c, "w1", [(0, {"score": 0.1})], status="INVALID")  # re-queued for a retry
    grown = HyperParameters()
    grown.Float("lr", 1e-4, 1e-2, sampling="log")
    c.update_space(grown, me("w1"))
    run(c, "w2", [(0, {"score": 0.9})])
    run(c, "w1", reports, status=None)  # still running at the crash: its journal has only the reports
    expected = {t: trial.get_state() for t, trial in c.oracle.trials.items()}
    kill_9(c)

    again = restart(tmp_path, clock, max_trials=20)
    reloaded = {t: trial.get_state() for t, trial in again.oracle.trials.items()}
    assert json.dumps(reloaded, sort_keys=True) == json.dumps(expected, sort_keys=True)  # NaN != NaN
    again.register("w3", "w3")
    run(again, "w3", [(0, {"score": 0.3}), (1, {"val_loss": 0.5, "score": 0.4})])
    assert len(again.oracle.trials) == len(expected) + 1  # a new id, none handed out twice
    expected.update({t: trial.get_state() for t, trial in again.oracle.trials.items()})
    kill_9(again)

    states = read_project(str(tmp_path / "proj")).states
    assert json.dumps(states, sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert {len(s["hyperparameters"]["space"]) for s in states.values()} == {1, 2}
    events = journal(tmp_path)
    assert sum(e["event"] == "space" for e in events) == 3  # x; x and lr; x and lr after the restart
    assert not any(e["event"] == "trial" and isinstance(e["state"]["hyperparameters"]["space"], list)
                   for e in events)


def test_journal_written_before_space_lines_still_replays(tmp_path):
    """A journal from before `space` lines holds whole states, space included: a chief upgraded in
    place must still read it, and append to it in the new form."""
    c = coordinator(tmp_path, Clock())
    c.register("w1", "i1")
    trial, _ = c.create_trial("w1", me("w1", "i1"))
    finish(c, trial, me("w1", "i1"))
    state = c.oracle.trials[trial.trial_id].get_state()
    c.close()
    path = tmp_path / "proj" / "ktcluster-runs.jsonl"
    path.write_text(json.dumps({"event": "trial", "trial": trial.trial_id, "state": state, "t": 1.0}) + "\n")
    assert read_project(str(tmp_path / "proj")).states == {trial.trial_id: state}

    again = coordinator(tmp_path, Clock())
    assert again.oracle.trials[trial.trial_id].get_state() == state
    assert again.oracle.bookkeeping().queued == []  # no start line, but COMPLETED: never handed out again
    again.register("w1", "i1")
    second, _ = again.create_trial("w1", me("w1", "i1"))
    assert second.trial_id != trial.trial_id
    finish(again, second, me("w1", "i1"))
    expected = {t: again.oracle.trials[t].get_state() for t in again.oracle.trials}
    kill_9(again)
    assert read_project(str(tmp_path / "proj")).states == expected


def test_journal_without_oracle_json_stops_instead_of_starting_afresh(tmp_path):
    """oracle.json deleted by hand: a fresh start would hand the journal's trial ids out again."""
    clock = Clock()
    c = coordinator(tmp_path, clock)
    c.save_state()
    c.register("w1", "i1")
    trial, _ = c.create_trial("w1", me("w1", "i1"))
    finish(c, trial, me("w1", "i1"))
    c.close()
    (tmp_path / "proj" / "oracle.json").unlink()
    before = (tmp_path / "proj" / "ktcluster-runs.jsonl").read_bytes()
    with pytest.raises(InconsistentState, match="journal of 1 trials but no oracle.json"):
        restart(tmp_path, clock)
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
    assert {t.trial_id: t.status for t in snap.trials} == {done.trial_id: "COMPLETED",
                                                           running.trial_id: "RUNNING", lost.trial_id: "INVALID"}
    assert snap.running == {"w2": running.trial_id} and snap.queued == [lost.trial_id]
    assert snap.best.trial_id == done.trial_id
    assert snap.runs[lost.trial_id].message.startswith("LeaseExpired: w3 silent")
    kill_9(c)


def _trial_file(tmp_path, trial_id):
    return tmp_path / "proj" / f"trial_{trial_id}" / "trial.json"


def test_state_files_follow_the_journal_once_the_chief_is_quiet(tmp_path):
    """Written behind, but written: KerasTuner's tools see a running search's trials."""
    from tests.procs import wait_until

    c = coordinator(tmp_path, Clock())
    c.register("w1", "i1")
    trial, _ = c.create_trial("w1", me("w1", "i1"))
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

    from chief.statefiles import StateWriter, StorageFaults

    oracle = make_oracle(tmp_path, max_trials=1000)
    lock = threading.Lock()
    c = Coordinator(oracle, lease_seconds=10, heartbeat_seconds=1, clock=Clock())
    c.writer.close()  # replaced by one with a short lag, over the same oracle and journal
    writer = StateWriter(oracle, lock, StorageFaults(60), quiet=0.2, max_lag=0.6)
    c.register("w1", "i1")
    first, _ = c.create_trial("w1", me("w1", "i1"))
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


def test_state_files_written_in_chunks_never_name_a_trial_without_its_file(tmp_path):
    """A backlog is written a chunk at a time (the lock is free in between, and workers keep
    creating trials); oracle.json still names only trials whose trial.json holds their latest state."""
    c = coordinator(tmp_path, Clock(), max_trials=40)
    c.writer.CHUNK = 4
    trials = []
    for n in range(10):
        trial, _ = c.create_trial(f"w{n}", me(f"w{n}"))
        c.update_trial(trial.trial_id, {"score": n / 10}, 0, me(f"w{n}"))  # only marks the trial
        trials.append(trial)
    write_trial, created = c.writer._write_trial, []

    def write_trial_while_workers_ask(state):
        write_trial(state)
        if len(created) < 3:  # the lock is free between chunks: new trials arrive meanwhile
            created.append(c.create_trial(f"late{len(created)}", me(f"late{len(created)}"))[0])

    c.writer._write_trial = write_trial_while_workers_ask
    c.save_state()
    assert len(created) == 3
    for trial in trials + created:
        assert json.loads(_trial_file(tmp_path, trial.trial_id).read_text()) == trial.get_state()
    fresh = make_oracle(tmp_path, max_trials=40)
    fresh.reload()  # stock: a KeyError if oracle.json named a trial without its file
    assert set(fresh.trials) == {t.trial_id for t in trials + created}
    c.close()


def test_a_spare_worker_waits_for_a_retry_instead_of_stopping(tmp_path):
    """Budget handed out, one trial still running elsewhere: if that worker dies, its retry needs
    someone. Stock tells the spare worker STOPPED and the retry then waits for ever."""
    clock = Clock()
    c = coordinator(tmp_path, clock, max_trials=2)
    for w in ("w1", "w2"):
        c.register(w, w)
    running, _ = c.create_trial("w1", me("w1"))
    other, _ = c.create_trial("w2", me("w2"))
    finish(c, other, me("w2"))
    spare, attempt = c.create_trial("w2", me("w2"))
    assert (spare.status, attempt) == ("IDLE", 0)  # not STOPPED: trial `running` may come back
    clock.now = 5
    c.heartbeat("w2", "w2")
    clock.now = 11  # w1 went silent
    assert c.expire_leases() == [running.trial_id]
    retry, attempt = c.create_trial("w2", me("w2"))
    assert (retry.trial_id, attempt) == (running.trial_id, 2)
    assert not c.finished.is_set()
    finish(c, retry, me("w2", attempt=2))
    assert c.create_trial("w2", me("w2"))[0].status == "STOPPED"
    assert c.finished.is_set()
    c.close()


def test_no_spare_is_held_for_a_trial_on_its_last_attempt(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock, max_trials=2, retries=0)
    for w in ("w1", "w2"):
        c.register(w, w)
    c.create_trial("w1", me("w1"))
    other, _ = c.create_trial("w2", me("w2"))
    finish(c, other, me("w2"))
    assert c.create_trial("w2", me("w2"))[0].status == "STOPPED"  # nothing could come back
    c.close()


def test_trial_lines_keep_to_their_budget_and_trouble_is_always_logged(tmp_path, caplog):
    """At hundreds of trials a second the start/end lines are budgeted (the progress line counts
    the rest); a failure's line is never skipped, and lines come back as the budget refills."""
    from chief import progress

    clock = Clock()
    c = coordinator(tmp_path, clock, max_trials=60, retries=0)
    c.trial_lines = progress.LineBudget(rate=10, burst=20, clock=clock)
    w1 = me("w1")
    lines = lambda: [r.getMessage() for r in caplog.records if r.getMessage().startswith("trial ")]  # noqa: E731
    with caplog.at_level(logging.INFO, logger="ktcluster.chief"):
        for n in range(40):  # 80 start/COMPLETED lines with no time passing
            trial, _ = c.create_trial("w1", w1)
            finish(c, trial, w1)
        assert len(lines()) == 20
        summary = c.progress()
        assert summary.skipped == 60 and "60 trial start/end lines not shown" in progress.line(summary)
        assert c.progress().skipped == 0  # each skipped line is counted once

        trial, _ = c.create_trial("w1", w1)
        c.update_trial(trial.trial_id, {"score": 1.0}, 0, w1)
        c.end_trial(result(trial, "FAILED"), w1, message="ValueError: bad batch")
        assert lines()[-1] == f"trial {trial.trial_id} FAILED by w1: ValueError: bad batch"

        clock.now += 1.0  # 10 more lines' worth
        before = len(lines())
        for n in range(10):
            trial, _ = c.create_trial("w1", w1)
            finish(c, trial, w1)
        assert len(lines()) - before == 10
        assert c.progress().skipped == 1 + 10
    c.close()


# -- the trial state machine as the coordinator applies it ---------------------------------

def _ends(tmp_path):
    return [(e["trial"], e["status"]) for e in journal(tmp_path) if e["event"] == "end"]


def test_a_result_from_anyone_but_the_owner_is_refused_and_the_owners_still_counts(tmp_path):
    c = coordinator(tmp_path, Clock())
    for w in ("w1", "w2"):
        c.register(w, w)
    trial, attempt = c.create_trial("w1", me("w1"))
    c.update_trial(trial.trial_id, {"score": 0.9}, 0, me("w1", attempt=attempt))
    for caller in (me("w2"), me("w2", attempt=1), Caller()):  # another worker; a client without identity
        with pytest.raises(NotOwner, match=f"of trial {trial.trial_id} .*refused"):
            c.end_trial(result(trial, "FAILED"), caller)
        with pytest.raises(NotOwner):
            c.update_trial(trial.trial_id, {"score": 0.1}, 1, caller)
    kept = c.oracle.trials[trial.trial_id]
    assert kept.status == "RUNNING" and kept.metrics.get_history("score")[0].value == [0.9]
    assert c.book.runs[trial.trial_id].owner == "w1" and _ends(tmp_path) == []
    c.end_trial(result(trial), me("w1", attempt=attempt))
    assert (kept.status, kept.score) == ("COMPLETED", 0.9)
    assert _ends(tmp_path) == [(trial.trial_id, "COMPLETED")]
    c.close()


def test_a_result_from_an_attempt_that_was_taken_away_is_refused_and_logged_once(tmp_path, caplog):
    """Paused past its lease, w1 got its trial back as attempt 2; its old attempt's reports arrive."""
    clock = Clock()
    c = coordinator(tmp_path, clock)
    c.register("w1", "i1")
    trial, _ = c.create_trial("w1", me("w1", "i1"))
    clock.now = 11
    assert c.expire_leases() == [trial.trial_id]
    c.register("w1", "i1")
    again, attempt = c.create_trial("w1", me("w1", "i1"))
    assert (again.trial_id, attempt) == (trial.trial_id, 2)
    stale = me("w1", "i1", attempt=1)
    with caplog.at_level(logging.INFO, logger="ktcluster.chief"):
        for _ in range(3):
            with pytest.raises(NotOwner, match="attempt 1 from w1 refused: attempt 2 belongs to w1"):
                c.update_trial(trial.trial_id, {"score": 0.1}, 0, stale)
            with pytest.raises(NotOwner):
                c.end_trial(result(trial), stale)
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.WARNING
    assert not c.oracle.trials[trial.trial_id].metrics.exists("score")
    finish(c, again, me("w1", "i1", attempt=2), score=0.4)
    assert _ends(tmp_path) == [(trial.trial_id, "RETRY"), (trial.trial_id, "COMPLETED")]
    c.close()


@pytest.mark.parametrize("status", ["RUNNING", "IDLE", "STOPPED", "UNKNOWN"])
def test_an_end_with_a_status_that_is_not_final_is_refused(tmp_path, status):
    c = coordinator(tmp_path, Clock())
    trial, attempt = c.create_trial("w1", me("w1"))
    with pytest.raises(NotFinal, match=f"not {status}"):
        c.end_trial(result(trial, status), me("w1", attempt=attempt))
    assert c.oracle.trials[trial.trial_id].status == "RUNNING" and _ends(tmp_path) == []
    finish(c, trial, me("w1", attempt=attempt))
    c.close()


def test_stock_clients_are_refused_unless_allowed(tmp_path):
    c = coordinator(tmp_path, Clock())
    with pytest.raises(Refused, match="KTC_STOCK_LEASE_SECONDS") as refused:
        c.create_trial("tuner0", Caller())
    assert refused.value.code == "FAILED_PRECONDITION" and not c.oracle.trials and not c.oracle.tuner_ids
    c.close()


def test_a_stock_client_is_served_and_leased_by_its_calls(tmp_path, caplog):
    """With KTC_STOCK_LEASE_SECONDS: a stock client's calls renew its lease (it sends no
    heartbeat); silent past it, its trial goes to another worker, and it may not end it any more."""
    clock = Clock()
    c = coordinator(tmp_path, clock, stock_lease_seconds=30)
    trial, attempt = c.create_trial("tuner0", Caller())
    assert attempt == 1 and c.book.runs[trial.trial_id].stock
    clock.now = 20
    c.update_trial(trial.trial_id, {"score": 0.2}, 0, Caller())  # renews: an epoch's report
    clock.now = 45  # past the ktcluster lease (10 s), within the stock one since the last call
    assert c.expire_leases() == []
    with pytest.raises(NotOwner):  # a ktcluster worker cannot report for it
        c.update_trial(trial.trial_id, {"score": 0.3}, 0, me("w1"))
    clock.now = 50.5
    assert c.expire_leases() == [trial.trial_id]
    assert "LeaseExpired: tuner0 silent for over 30s" in caplog.text
    with pytest.raises(NotOwner):
        c.end_trial(result(trial), Caller())
    retry, attempt = c.create_trial("w1", me("w1"))
    assert (retry.trial_id, attempt) == (trial.trial_id, 2) and not c.book.runs[trial.trial_id].stock
    with pytest.raises(NotOwner):  # anonymous reports are for stock-held trials only
        c.update_trial(trial.trial_id, {"score": 0.3}, 0, Caller())
    finish(c, retry, me("w1", attempt=2))
    c.close()


def test_a_call_the_journal_cannot_store_is_refused_and_its_retry_acknowledged_once(tmp_path, monkeypatch):
    """A full disk: nothing is acknowledged that is not in the journal (StorageUnavailable, the
    worker retries); meanwhile every call is refused before it reaches the oracle; the retried
    EndTrial is acknowledged once the disk works, and again (a lost reply) without any change."""
    from chief.journal import StorageUnavailable
    from tests.unit.test_journal import FailingWrites

    c = coordinator(tmp_path, Clock())
    for w in ("w1", "w2"):
        c.register(w, w)
    trial, attempt = c.create_trial("w1", me("w1"))
    c.update_trial(trial.trial_id, {"score": 0.8}, 0, me("w1", attempt=attempt))
    FailingWrites(monkeypatch, c.journal, writes=3, partial=5)
    with pytest.raises(StorageUnavailable):
        c.end_trial(result(trial), me("w1", attempt=attempt))
    with pytest.raises(StorageUnavailable):  # still failing: refused, the oracle untouched
        c.end_trial(result(trial), me("w1", attempt=attempt))
    with pytest.raises(StorageUnavailable):
        c.create_trial("w2", me("w2"))
    assert list(c.oracle.trials) == [trial.trial_id] and _ends(tmp_path) == []
    assert journal(tmp_path)  # whole lines only: the partial writes were cut
    assert c.heartbeat("w1", "w1")["ok"]  # heartbeats need no disk
    c.end_trial(result(trial), me("w1", attempt=attempt))  # the disk works again
    c.end_trial(result(trial), me("w1", attempt=attempt))  # its reply was lost: sent again
    assert _ends(tmp_path) == [(trial.trial_id, "COMPLETED")] and c.oracle.end_order == [trial.trial_id]
    assert c.progress().completed == 1
    with pytest.raises(NotOwner):  # a repeat is recognised only for the attempt that ended it
        c.end_trial(result(trial), me("w2", attempt=attempt))
    c.close()
    again = restart(tmp_path, Clock())
    assert again.oracle.trials[trial.trial_id].status == "COMPLETED" and again.book.runs[trial.trial_id].ended == 1
    again.close()


def test_a_trial_handed_out_when_the_journal_failed_is_handed_out_again_once(tmp_path, monkeypatch):
    from chief.journal import StorageUnavailable
    from tests.unit.test_journal import FailingWrites

    c = coordinator(tmp_path, Clock())
    FailingWrites(monkeypatch, c.journal, writes=1)
    with pytest.raises(StorageUnavailable):
        c.create_trial("w1", me("w1"))
    trial, attempt = c.create_trial("w1", me("w1"))  # the worker retries
    assert (trial.trial_id, attempt) == ("0", 1) and list(c.oracle.trials) == ["0"]
    assert [e["trial"] for e in journal(tmp_path) if e["event"] == "start"] == ["0"]
    finish(c, trial, me("w1", attempt=1))
    c.close()


def _space(build):
    from keras_tuner.src.engine.hyperparameters import HyperParameters

    hp = HyperParameters()
    build(hp)
    return hp


def _ghost_child(hp):
    from keras_tuner.src.engine import conditions
    from keras_tuner.src.engine import hyperparameters as hp_module

    hp.merge([hp_module.Int("units", 1, 3, conditions=[conditions.Parent("ghost", ["a"])])])


def test_update_space_only_from_a_registered_worker_and_only_a_sane_space(tmp_path):
    c = coordinator(tmp_path, Clock())
    c.register("w1", "w1")
    before = c.oracle.hyperparameters.get_config()
    fine = _space(lambda hp: hp.Int("y", 0, 3))
    for caller in (Caller(), me("w9"), me("w1", "another-process")):
        with pytest.raises(NotRegistered, match="only from a registered ktcluster worker"):
            c.update_space(fine, caller)
    bad = {
        "not a finite number": lambda hp: hp.Float("lr", float("nan"), 1.0),
        "max_value inf is not a finite number": lambda hp: hp.Float("lr", 0.0, float("inf")),
        "its condition names 'ghost', which is not in the space": _ghost_child,
        "1 to 128 printable characters": lambda hp: hp.Int("y" * 200, 0, 3),
        "1001 hyperparameters: at most 1000": lambda hp: [hp.Int(f"h{n}", 0, 3) for n in range(1000)],
    }
    for why, build in bad.items():
        with pytest.raises(InvalidRequest, match=f"UpdateSpace refused: .*{why}"):
            c.update_space(_space(build), me("w1"))
    assert c.oracle.hyperparameters.get_config() == before
    trial, attempt = c.create_trial("w1", me("w1"))  # a result whose build added a NaN bound: refused too
    grown = trial.hyperparameters.copy()
    grown.Float("lr", float("nan"), 1.0)
    with pytest.raises(InvalidRequest, match=f"result of trial {trial.trial_id} refused"):
        c.end_trial(result(trial, hyperparameters=grown), me("w1", attempt=attempt))
    assert c.oracle.hyperparameters.get_config() == before and c.oracle.trials[trial.trial_id].status == "RUNNING"
    c.update_space(fine, me("w1"))
    assert [hp.name for hp in c.oracle.hyperparameters.space] == ["x", "y"]
    c.close()


def test_a_heartbeat_reply_lists_the_workers_attempts_and_the_end_of_the_search(tmp_path):
    clock = Clock()
    c = coordinator(tmp_path, clock, max_trials=1)
    for w in ("w1", "w2"):
        c.register(w, w)
    assert c.heartbeat("w1", "w1") == {"ok": True, "attempts": {}, "finished": False}
    trial, _ = c.create_trial("w1", me("w1"))
    assert c.heartbeat("w1", "w1") == {"ok": True, "attempts": {trial.trial_id: 1}, "finished": False}
    assert c.heartbeat("w2", "w2")["attempts"] == {}
    assert c.heartbeat("w1", "not-w1")["ok"] is False
    clock.now = 11  # w1 silent past its lease: it loses its trial
    c.heartbeat("w2", "w2")
    assert c.expire_leases() == [trial.trial_id]
    assert c.create_trial("w2", me("w2"))[1] == 2
    c.register("w1", "w1")
    assert c.heartbeat("w1", "w1")["attempts"] == {}  # taken away: w1 must stop training it
    assert c.heartbeat("w2", "w2")["attempts"] == {trial.trial_id: 2}
    finish(c, trial, me("w2", attempt=2))
    assert c.heartbeat("w1", "w1") == {"ok": True, "attempts": {}, "finished": True}
    c.close()


def test_closing_writes_what_a_failed_commit_left_or_says_it_cannot(tmp_path, monkeypatch):
    """The last result could not be stored (the search is over in memory): closing the chief
    stores it once the disk works, and fails loudly (OSError) while it does not, never dropping it."""
    from chief.journal import StorageUnavailable
    from tests.unit.test_journal import FailingWrites

    c = coordinator(tmp_path, Clock(), max_trials=1)
    trial, attempt = c.create_trial("w1", me("w1"))
    c.update_trial(trial.trial_id, {"score": 0.8}, 0, me("w1", attempt=attempt))
    FailingWrites(monkeypatch, c.journal, writes=2)
    with pytest.raises(StorageUnavailable):
        c.end_trial(result(trial), me("w1", attempt=attempt))
    with pytest.raises(OSError):
        c.close()  # still failing: the chief exits non-zero, the result was never acknowledged
    c.close()  # the disk works again
    again = restart(tmp_path, Clock(), max_trials=1)
    assert again.oracle.trials[trial.trial_id].status == "COMPLETED" and again.finished.is_set()
    assert _ends(tmp_path) == [(trial.trial_id, "COMPLETED")]
    again.close()


@pytest.mark.parametrize("installed, outside", [("1.4.7", False), ("1.4.8", False), ("1.4.6", True),
                                                ("1.5.0", True), ("2.0.0rc1", True)])
def test_the_chief_says_when_the_installed_keras_tuner_is_outside_the_tested_range(monkeypatch, installed, outside):
    monkeypatch.setattr(oracle_module.importlib.metadata, "version",
                        lambda name: installed if name == "keras-tuner" else pytest.fail(name))
    warning = oracle_module.version_warning()
    assert (warning is not None) is outside
    if outside:
        low, high = oracle_module.TESTED_KERAS_TUNER
        assert f"keras-tuner {installed} is installed" in warning and f"{low} to {high}" in warning
        assert "\n" not in warning


def test_validate_names_each_way_the_oracle_disagrees_with_the_book(tmp_path):
    """Issue 23: the book, the journal replayed and the oracle agree after every call (the unit
    tests' conftest checks it after each); when they do not, validate names the difference."""
    c = coordinator(tmp_path, Clock())
    c.register("w1", "w1")
    trial, _ = c.create_trial("w1", me("w1"))
    c.validate()
    c.oracle._retry_queue.append(trial.trial_id)  # the oracle's own bookkeeping, changed behind the book
    with pytest.raises(InconsistentState, match=rf"queued: the book says \[\], the oracle \['{trial.trial_id}'\]"):
        c.validate()
    c.oracle._retry_queue.clear()
    c.book.runs[trial.trial_id].attempt = 5  # the book, changed behind the journal
    with pytest.raises(InconsistentState, match=f"trial {trial.trial_id}: the book has .* the journal replays to"):
        c.validate()


def test_a_restart_checks_that_the_oracle_follows_the_replayed_book(tmp_path, monkeypatch):
    clock = Clock()
    c = coordinator(tmp_path, clock)
    c.save_state()
    one_done_one_running_one_lost(c, clock)
    kill_9(c)
    rebuild = oracle_module.ClusterOracleMixin._rebuild

    def forgets_the_queue(self, book):
        kept = rebuild(self, book)
        self._retry_queue = []
        return kept

    monkeypatch.setattr(oracle_module.ClusterOracleMixin, "_rebuild", forgets_the_queue)
    with pytest.raises(InconsistentState, match="does not follow the journal .*queued: the book says"):
        restart(tmp_path, clock)


def test_a_nan_objective_on_record_is_retried_as_stock_scores_it(tmp_path):
    """Reports are refused unless finite, but a journal of an older chief may hold a NaN: the
    state machine then decides a retry (stock's rule: a NaN score is INVALID), and the oracle
    follows (validated after every call by the conftest)."""
    c = coordinator(tmp_path, Clock())
    c.register("w1", "w1")
    trial, attempt = c.create_trial("w1", me("w1"))
    c.oracle.update_trial(trial.trial_id, {"score": float("nan")}, step=0)  # as an older chief recorded it
    c.end_trial(result(trial), me("w1", attempt=attempt))
    assert [(e["trial"], e["status"]) for e in journal(tmp_path) if e["event"] == "end"] == [(trial.trial_id, "RETRY")]
    assert list(c.book.queued) == [trial.trial_id] and c.oracle.bookkeeping().queued == [trial.trial_id]
