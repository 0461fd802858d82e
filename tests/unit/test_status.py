"""`python -m chief status` reports the project's own settings (recorded by the chief when it
starts), not the environment it runs in, and ranks trials by the objective's real direction."""

import types

import keras_tuner as kt

from chief import progress, status
from chief.coordinator import Coordinator
from chief.oracle import cluster_oracle
from chief.trials import Caller


def _search(tmp_path, objective, scores, max_trials):
    """The chief's real oracle and coordinator: every score a completed trial."""
    oracle = cluster_oracle(kt.oracles.RandomSearchOracle, objective=objective, max_trials=max_trials, seed=1)
    oracle.use_project(str(tmp_path), "proj")
    oracle.verbose = 0
    hp = oracle.get_space()
    hp.Int("x", 0, 100)
    oracle.update_space(hp)
    c = Coordinator(oracle, lease_seconds=10, heartbeat_seconds=1)
    c.save_state()
    c.register("w1", "i1")
    for score in scores:
        trial, attempt = c.create_trial("w1", Caller("w1", "i1"))
        caller = Caller("w1", "i1", attempt)
        c.update_trial(trial.trial_id, {oracle.objective.name: score}, 0, caller)
        trial.status = "COMPLETED"
        c.end_trial(trial, caller)
    return oracle, c


def _settings(tmp_path, **search):
    """What `status` sees: the environment of the shell it runs in (defaults where unset)."""
    defaults = dict(tuner="random", max_trials=10, epochs=2, dataset="digits", model="", seed=None,
                    lease_seconds=60.0, heartbeat_seconds=5.0, max_retries=1,
                    objective=types.SimpleNamespace(name="val_accuracy", direction=None))
    return types.SimpleNamespace(project_state_dir=str(tmp_path / "proj"), **{**defaults, **search})


def test_a_finished_project_reads_its_own_trial_budget_with_no_eta(tmp_path):
    started_with = _settings(tmp_path, max_trials=6)
    oracle, c = _search(tmp_path, kt.Objective("val_accuracy", "max"), [0.5, 0.7, 0.6, 0.9, 0.8, 0.4], 6)
    status.record_search(started_with, oracle)
    c.mark_finished(progress.summary_record(c.snapshot()))
    c.close()
    snap = status.snapshot(_settings(tmp_path))  # KTC_MAX_TRIALS unset now: the default, 10
    line = status.render(snap).splitlines()[0]
    assert line.startswith("progress: 6/6 done (0 failed)"), line
    assert "ETA" not in line and "search finished" in line and "best val_accuracy 0.9000 (trial 3)" in line


def test_a_minimised_metric_ranks_ascending(tmp_path):
    """KerasTuner minimises `val_mae`; nothing in its name says "loss"."""
    oracle, c = _search(tmp_path, kt.Objective("val_mae", "min"), [0.3, 0.1, 0.2], 5)
    record = status.record_search(_settings(tmp_path, max_trials=5), oracle)
    c.close()
    assert (record.objective, record.direction, record.max_trials) == ("val_mae", "min", 5)
    assert status.read_search(str(tmp_path / "proj")) == record
    snap = status.snapshot(_settings(tmp_path))  # KTC_OBJECTIVE unset: val_accuracy in the shell
    assert (snap.objective.name, snap.objective.direction) == ("val_mae", "min")
    assert snap.best.trial_id == "1" and snap.max_trials == 5
    assert "best val_mae 0.1000 (trial 1)" in status.render(snap).splitlines()[0]


def test_an_older_project_without_the_record_takes_the_direction_its_trials_recorded(tmp_path):
    oracle, c = _search(tmp_path, kt.Objective("val_mae", "min"), [0.3, 0.1, 0.2], 5)
    c.close()
    objective = types.SimpleNamespace(name="val_mae", direction=None)  # KTC_OBJECTIVE=val_mae
    snap = status.snapshot(_settings(tmp_path, objective=objective, max_trials=5))
    assert snap.objective.direction == "min" and snap.best.trial_id == "1"
    assert status.render(snap).startswith("progress: 3/5 done (0 failed)")


def _table(text):
    """The trial table of `status.render` (after the progress and objective lines): the header's
    cells and the rows."""
    lines = text.splitlines()
    return lines[2].split(), lines[3:]


def _mixed_search(tmp_path, as_document=False):
    """w1 completed a trial whose build used only `x`, w2 is running one, w3's failed with a long
    traceback; returns (status text, the running trial's values), or with `as_document` (status
    text, status --json's document, the running trial)."""
    oracle = cluster_oracle(kt.oracles.RandomSearchOracle, objective=kt.Objective("val_mae", "min"), max_trials=5,
                            seed=1, max_retries_per_trial=0)
    oracle.use_project(str(tmp_path), "proj")
    oracle.verbose = 0
    hp = oracle.get_space()
    hp.Int("x", 10, 49)
    hp.Int("y", 50, 99)
    oracle.update_space(hp)
    c = Coordinator(oracle, lease_seconds=10, heartbeat_seconds=1)
    c.save_state()
    status.record_search(_settings(tmp_path, max_trials=5), oracle)
    trials = {}
    for w in ("w1", "w2", "w3"):
        c.register(w, w)
        trials[w] = c.create_trial(w, Caller(w, w))
    done, attempt = trials["w1"]
    c.update_trial(done.trial_id, {"val_mae": 0.25}, 0, Caller("w1", "w1", attempt))
    done.status = "COMPLETED"
    c.end_trial(done, Caller("w1", "w1", attempt), used=["x"])
    failed, attempt = trials["w3"]
    failed.status = "FAILED"
    reason = "Traceback (most recent call last):\n  ...\nValueError: " + "a very long reason " * 10
    c.end_trial(failed, Caller("w3", "w3", attempt), message=reason)
    c.close()
    snap = status.snapshot(_settings(tmp_path))
    if as_document:
        return status.render(snap), status.document(snap, "proj"), oracle.trials[trials["w2"][0].trial_id]
    return status.render(snap), oracle.trials[trials["w2"][0].trial_id]


def test_status_names_the_objectives_direction(tmp_path):
    text, _ = _mixed_search(tmp_path)
    assert text.splitlines()[1] == "objective val_mae (min)"


def test_status_shows_each_trials_message_on_one_shortened_line(tmp_path):
    text, _ = _mixed_search(tmp_path)
    header, rows = _table(text)
    assert header == ["trial_id", "worker", "status", "score", "seconds", "x", "y", "attempts", "message"]
    failed_row = next(row for row in rows if " FAILED " in row)
    message = failed_row[text.splitlines()[2].index("message"):]
    assert message.startswith("ValueError: a very long reason") and message.endswith("...")
    assert len(message) == 60  # status.MESSAGE_WIDTH; trials.csv keeps it whole


def test_a_running_trial_shows_only_the_values_every_completed_build_used(tmp_path):
    """Its build has not said what it used yet: `x` (every completed build used it) is shown,
    `y` (the completed build ignored it) is not."""
    text, running_trial = _mixed_search(tmp_path)
    _, rows = _table(text)
    running = next(row for row in rows if " RUNNING " in row)
    x, y = running_trial.hyperparameters.values["x"], running_trial.hyperparameters.values["y"]
    assert f" {x} " in running and f" {y} " not in running, running


def test_status_json_is_the_tables_state_as_one_object(tmp_path):
    """`status --json`: the progress line's counts, every trial with the table's columns (the
    failed trial's message whole), the best trial with the values its build used, strict JSON."""
    import json

    text, document, running = _mixed_search(tmp_path, as_document=True)
    assert json.loads(json.dumps(document, allow_nan=False)) == document
    assert document["progress"] == {"done": 2, "total": 5, "completed": 1, "failed": 1, "queued": 0,
                                    "running": {"w2": running.trial_id}, "finished": False,
                                    "eta_seconds": document["progress"]["eta_seconds"], "line": text.splitlines()[0]}
    assert document["objective"] == {"name": "val_mae", "direction": "min"}
    header, rows = _table(text)
    assert [t["trial_id"] for t in document["trials"]] == [row.split()[0] for row in rows]
    by_status = {t["status"]: t for t in document["trials"]}
    assert set(by_status) == {"COMPLETED", "RUNNING", "FAILED"}
    done = by_status["COMPLETED"]
    assert (done["worker"], done["score"], done["attempts"]) == ("w1", 0.25, 1)
    assert done["hyperparameters"]["y"] is None and done["hyperparameters"]["x"] is not None  # its build used x only
    assert document["best"] == {"trial_id": done["trial_id"], "score": 0.25, "worker": "w1",
                                "hyperparameters": {"x": done["hyperparameters"]["x"]}}
    message = by_status["FAILED"]["message"]  # not cut to the table's width: as trials.csv has it
    assert message.startswith("ValueError: a very long reason") and len(message) > status.MESSAGE_WIDTH
    assert by_status["RUNNING"]["hyperparameters"] == {"x": running.hyperparameters.values["x"], "y": None}
    for trial in document["trials"]:
        row = next(r for r in rows if r.split()[0] == trial["trial_id"])
        assert row.split()[1:3] == [trial["worker"], trial["status"]]
