"""Issue 21 (C), unit level: ClusterOracleMixin.restore rebuilds KerasTuner's files from the
journal where they are damaged, or stops with one line naming the file (a real KerasTuner oracle,
no processes)."""

import json
import logging

import pytest

from chief.coordinator import Coordinator
from chief.recovery import InconsistentState
from chief.trials import Caller
from tests.unit.test_coordinator import make_oracle


def _project(tmp_path, trials=2):
    """A project with `trials` COMPLETED trials, closed cleanly (every file written)."""
    chief = Coordinator(make_oracle(tmp_path, max_trials=5), lease_seconds=10, heartbeat_seconds=1)
    chief.register("w1", "w1-pid")
    for value in range(trials):
        trial, attempt = chief.create_trial("w1", Caller("w1", "w1-pid"))
        chief.update_trial(trial.trial_id, {"score": value / 10}, 0, Caller("w1", "w1-pid", attempt))
        trial.status = "COMPLETED"
        chief.end_trial(trial, Caller("w1", "w1-pid", attempt))
    chief.close()
    return tmp_path / "proj"


def _reopen(tmp_path):
    chief = Coordinator(make_oracle(tmp_path, max_trials=5), lease_seconds=10, heartbeat_seconds=1)
    chief.close()
    return chief


def test_a_damaged_trial_json_is_rewritten_from_the_journal_and_said(tmp_path, caplog):
    project = _project(tmp_path)
    (project / "trial_0" / "trial.json").write_text('{"trial_id": "0", "stat')
    with caplog.at_level(logging.INFO, logger="ktcluster.chief"):
        chief = _reopen(tmp_path)
    assert chief.oracle.trials["0"].score == 0.0 and chief.oracle.trials["1"].score == 0.1
    assert json.loads((project / "trial_0" / "trial.json").read_text())["score"] == 0.0
    said = [r.getMessage() for r in caplog.records if "trial.json" in r.getMessage()]
    assert len(said) == 1 and "trial_0" in said[0] and "damaged" in said[0], said


def test_a_damaged_oracle_json_stops_with_one_line_naming_it(tmp_path):
    project = _project(tmp_path)
    (project / "oracle.json").write_text("{not json")
    with pytest.raises(InconsistentState) as caught:
        _reopen(tmp_path)
    text = str(caught.value)
    assert "\n" not in text and str(project / "oracle.json") in text and "restore it from a backup" in text


def test_an_oracle_json_naming_trials_over_an_empty_journal_stops_with_one_line(tmp_path):
    project = _project(tmp_path)
    (project / "ktcluster-runs.jsonl").write_text("")
    with pytest.raises(InconsistentState) as caught:
        _reopen(tmp_path)
    assert "\n" not in str(caught.value) and "restore the journal" in str(caught.value)
    assert (project / "trial_0" / "trial.json").exists()  # nothing set aside: the journal may come back
