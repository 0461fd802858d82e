"""Settings a project cannot change are refused at the chief's start, one line each; settings that
can change are applied and logged once (chief.project, chief.status.SearchRecord)."""

import json
import logging

import pytest

from chief import project, status
from chief.ownership import Claim
from shared import config


def _settings(tmp_path, **env):
    base = dict(KTC_STATE_DIR=str(tmp_path / "state"), KTC_LOG_DIR=str(tmp_path / "logs"),
                KTC_DATA_DIR=str(tmp_path / "data"), KTC_RESULTS_DIR=str(tmp_path / "results"), KTC_PROJECT="p",
                KTC_MAX_TRIALS="10", KTC_EPOCHS="2", KTC_SEED="5", KTC_LEASE_SECONDS="60", KTC_HEARTBEAT_SECONDS="5")
    return config.load({**base, **env}, role="chief")


RANDOM = dict(tuner="random", max_trials=10, epochs=2, objective="val_accuracy", direction="max", dataset="mnist",
              model="", seed=5, lease_seconds=60.0, heartbeat_seconds=5.0, max_retries=1)
D1FBC2D = {k: RANDOM[k] for k in status.FIRST_FIELDS}  # a record written before the fields that came later


def _check(tmp_path, recorded, direction=None, **env):
    settings = _settings(tmp_path, **env)
    return project.check_settings(settings, recorded, lambda: direction or settings.objective.direction or "max")


def test_the_same_settings_pass_in_silence(tmp_path):
    assert _check(tmp_path, RANDOM) == ([], [])
    assert _check(tmp_path, D1FBC2D) == ([], [])
    assert _check(tmp_path, {}) == ([], [])  # no record: nothing to compare


@pytest.mark.parametrize("tuner", ["bayesian", "hyperband", "grid"])
def test_another_tuner_on_a_random_project_is_one_line_naming_both_and_the_way_out(tmp_path, tuner):
    refused, _ = _check(tmp_path, RANDOM, KTC_TUNER=tuner)
    assert len(refused) == 1, refused
    line = refused[0]
    assert line.startswith(f"KTC_TUNER={tuner}: project p was started with KTC_TUNER=random"), line
    assert "set KTC_TUNER=random again" in line and "another KTC_PROJECT" in line and "\n" not in line


def test_another_objective_is_refused(tmp_path):
    refused, _ = _check(tmp_path, RANDOM, KTC_OBJECTIVE="val_loss")
    assert refused == ["KTC_OBJECTIVE=val_loss: project p was started with KTC_OBJECTIVE=val_accuracy and cannot "
                       "change it: its trials are scored and ranked by val_accuracy; set KTC_OBJECTIVE=val_accuracy "
                       "again, or start a new search under another KTC_PROJECT"]


def test_another_direction_is_refused_whether_given_or_inferred(tmp_path):
    refused, _ = _check(tmp_path, RANDOM, KTC_OBJECTIVE="val_accuracy:min")
    assert len(refused) == 1 and "KTC_OBJECTIVE=val_accuracy:min" in refused[0]
    assert "set KTC_OBJECTIVE=val_accuracy:max again" in refused[0]
    minimised = {**RANDOM, "direction": "min"}  # started as val_accuracy:min, now val_accuracy (inferred max)
    refused, _ = _check(tmp_path, minimised, direction="max")
    assert len(refused) == 1 and "set KTC_OBJECTIVE=val_accuracy:min again" in refused[0]
    asked = []
    project.check_settings(_settings(tmp_path), {**RANDOM, "objective": "val_loss"}, lambda: asked.append(1))
    assert asked == []  # another name is refused as such: no inference needed


def test_a_changed_seed_is_refused_where_the_tuner_uses_one(tmp_path):
    refused, _ = _check(tmp_path, RANDOM, KTC_SEED="6")
    assert refused == ["KTC_SEED=6: project p was started with KTC_SEED=5 and cannot change it: the random search "
                       "goes on with the seed kept in oracle.json; set KTC_SEED=5 again, or start a new search under "
                       "another KTC_PROJECT"]
    refused, _ = _check(tmp_path, {**RANDOM, "seed": None}, KTC_SEED="6")
    assert len(refused) == 1 and "started with KTC_SEED=(empty)" in refused[0]
    refused, _ = _check(tmp_path, RANDOM, KTC_SEED="")
    assert len(refused) == 1 and refused[0].startswith("KTC_SEED=(empty): ")
    assert _check(tmp_path, {**RANDOM, "tuner": "grid"}, KTC_TUNER="grid", KTC_SEED="6") == ([], [])  # grid: no seed
    assert _check(tmp_path, D1FBC2D, KTC_SEED="6") == ([], [])  # not recorded yet: recorded at this start


def test_hyperbands_epochs_cannot_change_and_its_trial_budget_is_not_compared(tmp_path):
    band = {**RANDOM, "tuner": "hyperband", "max_trials": None}
    refused, applied = _check(tmp_path, band, KTC_TUNER="hyperband", KTC_EPOCHS="3", KTC_MAX_TRIALS="99")
    assert len(refused) == 1 and refused[0].startswith("KTC_EPOCHS=3: project p was started with KTC_EPOCHS=2")
    assert applied == []


def test_a_hyperband_subclass_keeps_hyperbands_rules(tmp_path):
    """KTC_TUNER=module:Class runs its base class's algorithm: a Hyperband subclass's epochs are
    fixed and its trial budget is not compared, as for `hyperband` itself."""
    band = {**RANDOM, "tuner": "tests.fixtures.tuner_classes:MyHyperband", "max_trials": None}
    refused, applied = _check(tmp_path, band, KTC_TUNER=band["tuner"], KTC_EPOCHS="3", KTC_MAX_TRIALS="99")
    assert len(refused) == 1 and refused[0].startswith("KTC_EPOCHS=3: project p was started with KTC_EPOCHS=2")
    assert applied == []


def test_settings_that_can_change_are_applied_and_each_said_once(tmp_path):
    refused, applied = _check(tmp_path, RANDOM, KTC_MAX_TRIALS="12", KTC_EPOCHS="3", KTC_LEASE_SECONDS="30",
                              KTC_HEARTBEAT_SECONDS="2.5", KTC_MAX_RETRIES="2")
    assert refused == []
    assert applied == ["KTC_MAX_TRIALS 10 -> 12 (applied)", "KTC_EPOCHS 2 -> 3 (applied)",
                       "KTC_LEASE_SECONDS 60 -> 30 (applied)", "KTC_HEARTBEAT_SECONDS 5 -> 2.5 (applied)",
                       "KTC_MAX_RETRIES 1 -> 2 (applied)"]
    _, applied = _check(tmp_path, D1FBC2D, KTC_LEASE_SECONDS="30", KTC_MAX_TRIALS="12")
    assert applied == ["KTC_MAX_TRIALS 10 -> 12 (applied)"]  # leases were not recorded by d1fbc2d


def test_every_changed_fixed_setting_is_its_own_line(tmp_path):
    refused, applied = _check(tmp_path, RANDOM, KTC_TUNER="bayesian", KTC_OBJECTIVE="val_loss", KTC_SEED="9",
                              KTC_MAX_TRIALS="11")
    assert [line.split("=", 1)[0] for line in refused] == ["KTC_TUNER", "KTC_OBJECTIVE", "KTC_SEED"]
    assert applied == ["KTC_MAX_TRIALS 10 -> 11 (applied)"]


# -- the record ---------------------------------------------------------------------------------

class _Oracle:
    objective = type("Objective", (), {"name": "val_accuracy", "direction": "max"})()


def test_a_record_from_d1fbc2d_still_opens_and_the_next_start_records_the_rest(tmp_path):
    settings = _settings(tmp_path)
    folder = tmp_path / "state" / "p"
    folder.mkdir(parents=True)
    (folder / "ktcluster-search.json").write_text(json.dumps(D1FBC2D))
    record = status.read_search(str(folder))
    assert record.tuner == "random" and (record.seed, record.lease_seconds, record.max_retries) == (None, None, None)
    assert "seed" not in status.read_search_fields(str(folder))  # not recorded, which is not "empty"
    status.record_search(settings, _Oracle())
    fields = status.read_search_fields(str(folder))
    assert {k: fields[k] for k in ("seed", "lease_seconds", "heartbeat_seconds", "max_retries")} == \
        {"seed": 5, "lease_seconds": 60.0, "heartbeat_seconds": 5.0, "max_retries": 1}
    assert status.read_search(str(folder)).seed == 5


def test_take_refuses_a_changed_tuner_after_holding_and_releases(tmp_path, caplog):
    settings = _settings(tmp_path, KTC_TUNER="bayesian", KTC_MAX_TRIALS="12")
    folder = tmp_path / "state" / "p"
    folder.mkdir(parents=True)
    (folder / "ktcluster-search.json").write_text(json.dumps(RANDOM))
    with pytest.raises(project.Refused) as refused:
        project.take(settings)
    assert refused.value.code == 2 and refused.value.record and len(refused.value.lines) == 1
    assert refused.value.lines[0].startswith("KTC_TUNER=bayesian: ")
    assert Claim.parse((folder / "ktcluster-chief.1.json").read_bytes()).released  # the next chief need not wait
    with caplog.at_level(logging.INFO, logger="ktcluster.chief"):
        held = project.take(_settings(tmp_path, KTC_MAX_TRIALS="12"))
    try:
        assert held.generation == 2
        assert [r.getMessage() for r in caplog.records].count("KTC_MAX_TRIALS 10 -> 12 (applied)") == 1
    finally:
        held.release()


def test_take_refuses_a_second_chief_naming_the_first_without_a_failure_record(tmp_path):
    settings = _settings(tmp_path, KTC_LEASE_SECONDS="2", KTC_HEARTBEAT_SECONDS="0.2")
    held = project.take(settings)
    try:
        with pytest.raises(project.Refused) as refused:
            project.take(settings)
        assert refused.value.code == 2 and not refused.value.record
        assert refused.value.lines[0].startswith("KTC_PROJECT=p: held by the chief on host ")
    finally:
        held.release()


def test_an_unreadable_record_is_said_once_and_checks_nothing(tmp_path, caplog):
    folder = tmp_path / "state" / "p"
    folder.mkdir(parents=True)
    (folder / "ktcluster-search.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="ktcluster.chief"):
        held = project.take(_settings(tmp_path, KTC_TUNER="grid"))
    held.release()
    said = [r.getMessage() for r in caplog.records if "ktcluster-search.json" in r.getMessage()]
    assert len(said) == 1 and "cannot be read (JSONDecodeError)" in said[0], said
