"""Every row of the field notes' "What broke" table, with real processes over real gRPC.

Each test asserts the exact trial accounting: every trial recorded once, none lost.
"""

import csv
import json
import os
import signal
import time

import pytest

from tests.procs import (cluster_env, free_port, hparams_session_groups, http_json, processes, python,
                         wait_until)

FIXTURES = dict(KTC_DATASET="tests.fixtures.models:tiny_data", KTC_MODEL="tests.fixtures.models:build_model",
                KTC_LEASE_SECONDS=6, KTC_HEARTBEAT_SECONDS=1, KTC_STOP_GRACE_SECONDS=5,
                KTC_CHIEF_TIMEOUT_SECONDS=60, KTC_SEED=5, KTC_EPOCHS=1)


FIGURES = []  # one row per fault: written to $KTC_FAULT_REPORT (JSON) for docs/faults.md


@pytest.fixture(scope="module", autouse=True)
def fault_report():
    yield
    path = os.environ.get("KTC_FAULT_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(FIGURES, f, indent=1)


def figure(fault, tmp_path=None, max_trials=None, recovery=None, **extra):
    """Record trials lost and re-run for a fault, from the journal (the chief's own record)."""
    row = {"fault": fault, **extra}
    if tmp_path is not None:
        events = journal(tmp_path)
        finals = {e["trial"] for e in events if e["event"] == "end" and e["status"] != "RETRY"}
        starts = [e["trial"] for e in events if e["event"] == "start"]
        row.update(trials=max_trials, lost=max_trials - len(finals),
                   reruns_of_finished=sum(1 for t in set(starts) if starts.count(t) > 1 and
                                          sum(1 for e in events if e["event"] == "end" and e["trial"] == t
                                              and e["status"] == "COMPLETED") > 1))
    if recovery is not None:
        row["recovery_seconds"] = round(recovery, 1)
    FIGURES.append(row)


def _env(tmp_path, **overrides):
    return cluster_env(tmp_path, free_port(), **{**FIXTURES, **overrides})


def _worker_env(env, worker_id):
    return {**env, "KERASTUNER_TUNER_ID": worker_id}


def journal(tmp_path, project="itest"):
    path = tmp_path / "state" / project / "ktcluster-runs.jsonl"
    return [json.loads(line) for line in open(path)]


def rows(tmp_path, project="itest"):
    return list(csv.DictReader(open(tmp_path / "results" / project / "trials.csv")))


def assert_exactly_once(tmp_path, max_trials):
    """Every trial id 0..n-1 has exactly one final result, COMPLETED."""
    events = journal(tmp_path)
    finals = [e for e in events if e["event"] == "end" and e["status"] != "RETRY"]
    assert sorted(e["trial"] for e in finals) == sorted(str(i) for i in range(max_trials)), events
    table = rows(tmp_path)
    assert sorted(r["trial_id"] for r in table) == [str(i) for i in range(max_trials)]
    assert {r["status"] for r in table} == {"COMPLETED"}, table
    return events, table


def started_trial(chief, worker):
    """The trial id most recently handed to `worker`, from the chief's log."""
    for line in reversed(chief.output().splitlines()):
        if f" -> {worker} (attempt" in line:
            return line.split("trial ", 1)[1].split(" ", 1)[0]
    return None


def test_worker_killed_mid_trial_is_rerun_elsewhere_and_nothing_hangs(tmp_path):
    env = _env(tmp_path, KTC_MAX_TRIALS=4, KTC_TEST_SLEEP=0.4, KTC_EPOCHS=2)
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        victim = start("w1", python("worker"), _worker_env(env, "worker-1"), tmp_path)
        survivor = start("w2", python("worker"), _worker_env(env, "worker-2"), tmp_path)
        trial = wait_until(lambda: started_trial(chief, "worker-1"), 120, what="worker-1 to start a trial")
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        assert chief.wait(timeout=180) == 0, chief.output()[-3000:]
        recovered = time.monotonic() - killed_at
        assert survivor.wait(timeout=30) == 0
    events, table = assert_exactly_once(tmp_path, 4)
    by_id = {r["trial_id"]: r for r in table}
    assert by_id[trial]["worker"] == "worker-2" and by_id[trial]["attempts"] == "2"
    assert f"trial {trial}: LeaseExpired: worker-1 silent for over 6s; re-queued" in chief.output()
    assert recovered < 120
    figure("kill -9 a worker mid-trial (lease 6 s)", tmp_path, 4, recovered, detail=f"trial {trial}: attempt 2 on worker-2")


def test_chief_killed_and_restarted_keeps_and_never_reruns(tmp_path):
    env = _env(tmp_path, KTC_MAX_TRIALS=6, KTC_TEST_SLEEP=0.3, KTC_EPOCHS=2)
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        workers = [start(f"w{n}", python("worker"), _worker_env(env, f"worker-{n}"), tmp_path) for n in (1, 2)]
        wait_until(lambda: chief.output().count(" COMPLETED by ") >= 2, 180, what="two completed trials")
        os.kill(chief.pid, signal.SIGKILL)
        chief.wait(timeout=10)
        crashed_at = time.monotonic()
        done_before = {e["trial"] for e in journal(tmp_path) if e["event"] == "end"}
        time.sleep(2)  # an outage the workers must ride out
        again = start("chief-again", python("chief"), env, tmp_path)
        wait_until(lambda: " COMPLETED by " in again.output(), 120, what="a result after the restart")
        recovered = time.monotonic() - crashed_at
        assert again.wait(timeout=240) == 0, again.output()[-3000:]
        assert [w.wait(timeout=30) for w in workers] == [0, 0]
    events, table = assert_exactly_once(tmp_path, 6)
    starts = [e["trial"] for e in events if e["event"] == "start"]
    assert len(starts) == len(set(starts)), f"a trial ran twice: {starts}"  # nothing re-run
    assert done_before and all(t in {r["trial_id"] for r in table} for t in done_before)
    assert "resumed project itest" in again.output()
    figure("kill -9 the chief mid-search, restart it 2 s later", tmp_path, 6, recovered,
           detail="recovery = crash to first result recorded by the new chief")


def test_restarted_chief_on_finished_project_reruns_nothing(tmp_path):
    env = _env(tmp_path, KTC_MAX_TRIALS=2)
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        worker = start("w1", python("worker"), _worker_env(env, "worker-1"), tmp_path)
        assert chief.wait(timeout=120) == 0 and worker.wait(timeout=30) == 0
        before = journal(tmp_path)
        again = start("chief-again", python("chief"), env, tmp_path)
        assert again.wait(timeout=60) == 0
        # No chief comes for it: a marker older than the worker is final once none came within a
        # lease and FINISHED_WAIT_SECONDS, at most KTC_CHIEF_TIMEOUT_SECONDS (a chief started with
        # it might have continued the project).
        late = start("late-worker", python("worker"), {**_worker_env(env, "worker-9"),
                                                       "KTC_CHIEF_TIMEOUT_SECONDS": "5"}, tmp_path)
        assert late.wait(timeout=60) == 0
    assert journal(tmp_path) == before
    assert "is already finished: reporting it as it was run" in again.output()
    assert "search finished: 2 completed, 0 failed of 2" in again.output()
    assert "is finished and no chief continued it within 5s; nothing to do" in late.output()
    assert "waiting up to" not in late.output() and "starts trial" not in late.output()  # no data, no trial
    assert_exactly_once(tmp_path, 2)
    configs = list((tmp_path / "logs" / "itest").glob("events.out.tfevents.*.ktcluster-hparams"))
    assert len(configs) == 1, configs  # the re-run chief replaced its HParams config, never added one
    figure("restart the chief on a finished project; start a worker after the end", tmp_path, 2)


def test_duplicate_live_worker_id_is_refused(tmp_path):
    env = _env(tmp_path, KTC_MAX_TRIALS=2, KTC_TEST_SLEEP=0.5, KTC_EPOCHS=3)
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        first = start("first", python("worker"), _worker_env(env, "twin"), tmp_path)
        wait_until(lambda: started_trial(chief, "twin"), 120, what="the first twin to start a trial")
        second = start("second", python("worker"), _worker_env(env, "twin"), tmp_path)
        assert second.wait(timeout=90) == 2
        assert chief.wait(timeout=120) == 0 and first.wait(timeout=30) == 0
    assert "KERASTUNER_TUNER_ID=twin: worker id 'twin' is already used by a live worker" in second.output()
    _, table = assert_exactly_once(tmp_path, 2)
    assert {r["worker"] for r in table} == {"twin"} and {r["attempts"] for r in table} == {"1"}
    figure("a second live worker with the same id (refused, exit 2)", tmp_path, 2)


def test_chief_worker_id_is_refused_at_once(tmp_path):
    env = _env(tmp_path)
    with processes() as start:
        worker = start("w", python("worker"), _worker_env(env, "my-chief"), tmp_path)
        assert worker.wait(timeout=30) == 2
    assert "KERASTUNER_TUNER_ID='my-chief' is not valid: a worker id must not contain 'chief'" in worker.output()
    figure("a worker id containing 'chief' (refused, exit 2)")


def test_second_chief_on_the_same_port_fails_at_once(tmp_path):
    env = _env(tmp_path, KTC_MAX_TRIALS=1)
    with processes() as start:
        first = start("chief", python("chief"), env, tmp_path)
        wait_until(lambda: "oracle serving" in first.output(), 60, what="the first chief")
        second = start("chief2", python("chief"), env, tmp_path)
        assert second.wait(timeout=30) == 2
        worker = start("w", python("worker"), _worker_env(env, "worker-1"), tmp_path)
        assert first.wait(timeout=120) == 0 and worker.wait(timeout=30) == 0
    assert "is already in use (another chief?)" in second.output()
    assert_exactly_once(tmp_path, 1)
    figure("a second chief on the same port (refused, exit 2)", tmp_path, 1)


def test_worker_started_long_before_the_chief_waits_for_it(tmp_path):
    env = _env(tmp_path, KTC_MAX_TRIALS=2)
    with processes() as start:
        worker = start("w1", python("worker"), _worker_env(env, "early"), tmp_path)
        time.sleep(8)
        assert worker.popen.poll() is None
        chief = start("chief", python("chief"), env, tmp_path)
        assert chief.wait(timeout=120) == 0 and worker.wait(timeout=30) == 0
    _, table = assert_exactly_once(tmp_path, 2)
    assert {r["worker"] for r in table} == {"early"}
    figure("a worker started 8 s before the chief", tmp_path, 2)


def test_worker_without_a_chief_gives_up_with_a_clear_message(tmp_path):
    env = _env(tmp_path, KTC_CHIEF_TIMEOUT_SECONDS=3)
    with processes() as start:
        worker = start("w1", python("worker"), _worker_env(env, "lonely"), tmp_path)
        assert worker.wait(timeout=60) == 1
    assert "unreachable for 3s (KTC_CHIEF_TIMEOUT_SECONDS); it is gone or never started" in worker.output()
    figure("a worker with no chief at all (gives up after KTC_CHIEF_TIMEOUT_SECONDS=3, exit 1)")


def test_failing_trials_are_retried_then_failed_with_their_message(tmp_path):
    env = _env(tmp_path, KTC_MAX_TRIALS=6, KTC_MODEL="tests.fixtures.models:build_flaky", KTC_MAX_RETRIES=1,
               KTC_MAX_CONSECUTIVE_FAILURES=10, KTC_SEED=1)
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        workers = [start(f"w{n}", python("worker"), _worker_env(env, f"worker-{n}"), tmp_path) for n in (1, 2)]
        assert chief.wait(timeout=180) == 0, chief.output()[-3000:]
        assert [w.wait(timeout=30) for w in workers] == [0, 0]
    table = rows(tmp_path)
    assert len(table) == 6
    failed = [r for r in table if r["status"] == "FAILED"]
    assert failed and all(r["variant"] == "raise" for r in failed)
    assert all(r["status"] == "COMPLETED" for r in table if r["variant"] == "ok")
    assert all(r["attempts"] == "2" and r["message"] == "ValueError: bad combo: variant=raise" for r in failed)
    assert "ValueError: bad combo: variant=raise" in chief.output()
    _assert_failed_sessions_in_tensorboard(tmp_path, env, {r["trial_id"] for r in failed})
    figure("trials that raise (retried once, then FAILED with their message)", tmp_path, 6,
           detail=f"{len(failed)} FAILED, {6 - len(failed)} COMPLETED")


def _assert_failed_sessions_in_tensorboard(tmp_path, env, failed_ids):
    """Failed attempts show as failed HParams sessions, each its own row (`<trial> attempt <k>`);
    the message is in the Text tab."""
    import sys

    port = free_port()
    tensorboard = [os.path.join(os.path.dirname(sys.executable), "tensorboard"), "--logdir",
                   str(tmp_path / "logs" / "itest"), "--port", str(port), "--host", "127.0.0.1"]
    base = f"http://127.0.0.1:{port}"
    with processes() as start:
        start("tensorboard", tensorboard, env, tmp_path)

        def failed_groups():
            try:
                groups = hparams_session_groups(base)
            except OSError:
                return None
            bad = {g["name"] for g in groups if any(s["status"] == "STATUS_FAILURE" for s in g["sessions"])}
            return bad if bad == {f"{t} attempt {k}" for t in failed_ids for k in (1, 2)} else None

        wait_until(failed_groups, 90, what="failed sessions in TensorBoard")
        tags = wait_until(lambda: http_json(f"{base}/data/plugin/text/tags"), 30, what="text tags")
        for trial_id in failed_ids:  # both attempts: one clean run each, each with its failure text
            for run in (f"{trial_id}/execution0", f"{trial_id}/attempt2/execution0"):
                assert "failure" in tags.get(run, []), tags
                text = http_json(f"{base}/data/plugin/text/text?run={run}&tag=failure")
                assert "ValueError: bad combo: variant=raise" in json.dumps(text)


def test_too_many_failures_in_a_row_stop_the_search_clearly(tmp_path):
    env = _env(tmp_path, KTC_MAX_TRIALS=10, KTC_MODEL="tests.fixtures.models:build_fails_in_fit",
               KTC_MAX_RETRIES=0, KTC_MAX_CONSECUTIVE_FAILURES=2)
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        worker = start("w1", python("worker"), _worker_env(env, "worker-1"), tmp_path)
        assert chief.wait(timeout=120) == 1
        assert worker.wait(timeout=30) == 0
    assert "search stopped: 2 trials failed in a row (KTC_MAX_CONSECUTIVE_FAILURES); last error: " in chief.output()
    assert "loss became NaN" in chief.output()
    assert [r["status"] for r in rows(tmp_path)] == ["FAILED", "FAILED"]
    figure("every trial raises (search stops after 2 in a row, chief exit 1)", tmp_path, 2)


@pytest.mark.parametrize("setting,value,expected", [
    ("KTC_MODEL", "no_such_module:build", "KTC_MODEL='no_such_module:build': could not import module"),
    ("KTC_MODEL", "tests.fixtures.models:build_raises", "building the model failed: RuntimeError: this model cannot be built"),
    ("KTC_DATASET", "tests.fixtures.models:nothing", "module 'tests.fixtures.models' has no attribute 'nothing'"),
    ("KTC_OBJECTIVE", "val_f1", "KTC_OBJECTIVE='val_f1' is not valid"),
])
def test_bad_model_data_or_objective_exit_2_with_state_intact(tmp_path, setting, value, expected):
    env = _env(tmp_path, **{setting: value})
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        assert chief.wait(timeout=60) == 2
    lines = [line for line in chief.output().splitlines() if line.startswith("ktcluster chief:")]
    assert len(lines) == 1 and expected in lines[0], chief.output()[-2000:]
    assert not (tmp_path / "state" / "itest" / "oracle.json").exists()


def test_journal_without_oracle_json_exits_1_and_touches_nothing(tmp_path):
    project = tmp_path / "state" / "itest"
    project.mkdir(parents=True)
    line = json.dumps({"event": "start", "trial": "0", "worker": "worker-1", "t": 1.0}) + "\n"
    (project / "ktcluster-runs.jsonl").write_text(line)
    with processes() as start:
        chief = start("chief", python("chief"), _env(tmp_path), tmp_path)
        assert chief.wait(timeout=60) == 1
    lines = [line for line in chief.output().splitlines() if line.startswith("ktcluster chief:")]
    assert len(lines) == 1 and "KTC_PROJECT=itest" in lines[0] and "no oracle.json" in lines[0], chief.output()[-2000:]
    assert (project / "ktcluster-runs.jsonl").read_text() == line and not (project / "oracle.json").exists()


def test_running_trial_is_visible_in_hparams_while_it_runs(tmp_path):
    """The HParams session starts with training, so a running trial is listed before it ends."""
    import sys

    # Training outlasts any wait below (90 epochs of 1.5 s); the test ends once the running
    # session is seen, stopping every process (how the search ends is other tests' business).
    env = _env(tmp_path, KTC_MAX_TRIALS=1, KTC_TEST_SLEEP=0.5, KTC_EPOCHS=90)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        worker = start("w1", python("worker"), _worker_env(env, "worker-1"), tmp_path)
        wait_until(lambda: (tmp_path / "logs" / "itest").exists(), 60, what="the log root")
        start("tensorboard", [os.path.join(os.path.dirname(sys.executable), "tensorboard"), "--logdir",
                              str(tmp_path / "logs" / "itest"), "--port", str(port), "--host", "127.0.0.1",
                              "--reload_interval", "1"], env, tmp_path)

        def running_session():
            try:
                groups = hparams_session_groups(base)
            except OSError:
                return None
            return [g for g in groups if g["hparams"].get("worker") == "worker-1"]

        groups = wait_until(running_session, 90, what="the running trial in TensorBoard")
        assert chief.popen.poll() is None and worker.popen.poll() is None  # still training
        assert [s["status"] for s in groups[0]["sessions"]] in (["STATUS_UNKNOWN"], ["STATUS_RUNNING"])


def test_a_hypermodel_fit_trial_killed_mid_fit_is_rerun_once_with_the_reruns_fit_time_values(tmp_path):
    env = _env(tmp_path, KTC_MAX_TRIALS=3, KTC_TEST_SLEEP=0.4, KTC_EPOCHS=2,
               KTC_MODEL="tests.fixtures.models:SlowTraining")
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        victim = start("w1", python("worker"), _worker_env(env, "worker-1"), tmp_path)
        trial = wait_until(lambda: started_trial(chief, "worker-1"), 120, what="worker-1 to start a trial")
        wait_until(lambda: "Epoch 1/2" in victim.output(), 60, what="worker-1 to be inside fit")
        os.kill(victim.pid, signal.SIGKILL)
        # Only the victim needs slow batches (to be killed inside fit): the survivor trains at full speed.
        survivor = start("w2", python("worker"), {**_worker_env(env, "worker-2"), "KTC_TEST_SLEEP": "0"}, tmp_path)
        assert chief.wait(timeout=180) == 0, chief.output()[-3000:]
        assert survivor.wait(timeout=30) == 0
    events, table = assert_exactly_once(tmp_path, 3)
    by_id = {r["trial_id"]: r for r in table}
    assert by_id[trial]["worker"] == "worker-2" and by_id[trial]["attempts"] == "2"
    assert all(r["batch_size"] in ("8", "16") and r["shuffle"] in ("True", "False") for r in table), table
    ends = [e for e in events if e["event"] == "end" and e["trial"] == trial]
    assert [(e["attempt"], e["status"]) for e in ends] == [(1, "RETRY"), (2, "COMPLETED")], ends
    assert ends[0].get("used") is None, ends  # the dead attempt reported nothing: the lease ended it
    assert {"batch_size", "shuffle", "units"} <= set(ends[1]["used"])  # the values are the re-run's own draw
