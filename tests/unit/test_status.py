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
    defaults = dict(tuner="random", max_trials=10, epochs=2, dataset="digits", model="",
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
