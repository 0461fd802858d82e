import csv
import json
import os

import keras_tuner as kt
import numpy as np
import pytest

from chief import progress
from chief.progress import ObjectiveInfo, Snapshot
from chief.trials import TrialRun
from shared import results


def _trial(trial_id, status, score, **values):
    hp = kt.HyperParameters()
    hp.values.update(values)
    trial = kt.engine.trial.Trial(hp, trial_id=trial_id, status=status)
    trial.score = score
    return trial


def _run(trial_id, owner=None, seconds=None, attempt=1, message="", used=None):
    return TrialRun(trial_id, owner=owner, attempt=attempt, seconds=seconds, message=message, used=used)


def _snap(trials, runs, best=None, space=(), running=None, max_trials=None, fatal=None):
    return Snapshot(trials, runs, running or {}, [], max_trials, ObjectiveInfo("val_accuracy", "max"), best,
                    list(space), fatal)


def test_trials_csv_and_best(tmp_path):
    trials = [_trial("1", "COMPLETED", np.float64(0.5), model_type="cnn", dropout=True),
              _trial("0", "COMPLETED", 0.9, model_type="mlp", units_0=64),
              _trial("2", "FAILED", None, model_type="mlp")]
    runs = {"0": _run("0", "worker-1", 1.23456), "1": _run("1", "worker-2", 2.0),
            "2": _run("2", "worker-1", None, attempt=2, message="ValueError: bad combo")}
    snap = _snap(trials, runs, best=trials[1], space=["model_type", "units_0", "dropout"], max_trials=3)
    progress.write_results(snap, str(tmp_path))
    rows = list(csv.DictReader(open(tmp_path / "trials.csv")))
    assert list(rows[0]) == results.FIXED_COLUMNS + ["model_type", "units_0", "dropout"] + results.LAST_COLUMNS
    assert [(r["trial_id"], r["worker"], r["status"], r["score"], r["seconds"]) for r in rows] == [
        ("0", "worker-1", "COMPLETED", "0.9", "1.235"), ("1", "worker-2", "COMPLETED", "0.5", "2.0"),
        ("2", "worker-1", "FAILED", "", "")]
    assert (rows[0]["units_0"], rows[1]["units_0"], rows[1]["dropout"]) == ("64", "", "True")
    assert [(r["attempts"], r["message"]) for r in rows] == [("1", ""), ("1", ""), ("2", "ValueError: bad combo")]
    best = json.load(open(tmp_path / "best_hyperparameters.json"))
    assert (best["trial_id"], best["score"], best["worker"]) == ("0", 0.9, "worker-1")
    assert best["hyperparameters"] == {"model_type": "mlp", "units_0": 64}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_progress_line_counts_best_and_eta():
    trials = [_trial("0", "COMPLETED", 0.8), _trial("1", "RUNNING", None), _trial("2", "RUNNING", None)]
    snap = _snap(trials, {"0": _run("0", seconds=60.0)}, best=trials[0], running={"worker-1": "1", "worker-2": "2"},
                 max_trials=6)
    line = progress.line(progress.summary(snap))
    # 5 trials left (the 2 running as whole trials) x 60 s, shared by 2 workers -> 2m30s
    assert line == ("progress: 1/6 done (0 failed), running [worker-1:1, worker-2:2], "
                    "best val_accuracy 0.8000 (trial 0), ETA 2m30s")


def test_progress_lines_are_throttled_but_the_last_state_is_always_said(caplog):
    """At most one line per interval; a skipped event's state follows `interval` later; the end
    of the search is said at once, and once."""
    import logging
    import threading
    import time

    class Coordinator:
        def __init__(self):
            self.finished, self.done = threading.Event(), 0

        def progress(self):
            return progress.Summary(completed=self.done, failed=0, running={}, total=10, queued=0,
                                    objective="score", best=None, eta=None)

    c, log = Coordinator(), progress.ProgressLog(interval=0.3)

    def lines():
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]

    with caplog.at_level(logging.INFO, logger="ktcluster.progress"):
        for n in range(1, 6):  # a burst: the first is said, the rest wait
            c.done = n
            log(c)
        assert [line.split()[1] for line in lines()] == ["1/10"]
        deadline = time.monotonic() + 3
        while len(lines()) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [line.split()[1] for line in lines()] == ["1/10", "5/10"]  # the latest, once
        c.done = 10
        c.finished.set()
        log(c)  # within the interval, but the search is over
        assert lines()[-1].split()[1] == "10/10"
        log(c)  # late workers told STOPPED: nothing new to say
        log(c)
        assert [line.split()[1] for line in lines()] == ["1/10", "5/10", "10/10"]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_results_belong_to_the_owner_of_the_results_folder(tmp_path):
    """The chief runs as root in Compose; the user's ./results must not fill with root's files."""
    root = tmp_path / "results"
    root.mkdir()
    os.chown(root, 4321, 4322)
    project = root / "proj"
    snap = _snap([_trial("0", "COMPLETED", 0.9, units_0=64)], {"0": _run("0", "w")}, space=["units_0"],
                 max_trials=1)
    progress.write_results(snap, str(project))
    (project / "nested").mkdir()
    (project / "nested" / "model.keras").write_bytes(b"x")
    assert results.give_to_folder_owner(str(root), str(project)) == 5  # the folders and the files
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in [project, *project.rglob("*")]}
    assert owners == {(4321, 4322)}
    assert results.give_to_folder_owner(str(root), str(project)) == 0


def test_final_line_best_json_and_csv_list_the_values_the_best_model_was_built_with(tmp_path):
    """A CNN trial's draw also holds MLP values (mlp_layers, units_0) it never used: the worker's
    `ktc-used` report decides, in all three places; the JSON is strict (no NaN)."""
    drawn = dict(model_type="cnn", mlp_layers=2, units_0=64, units_1=32, cnn_layers=1, filters_0=96, dropout=False)
    trials = [_trial("0", "COMPLETED", 0.97, **drawn), _trial("1", "COMPLETED", float("nan"), model_type="mlp")]
    used = ["cnn_layers", "dropout", "filters_0", "model_type"]
    runs = {"0": _run("0", "worker-2", 3.0, used=used), "1": _run("1", "worker-1", 1.0, used=["model_type"])}
    snap = _snap(trials, runs, best=trials[0], space=list(drawn), max_trials=2)
    line = progress.final_report(snap, str(tmp_path))
    expected = {"model_type": "cnn", "cnn_layers": 1, "filters_0": 96, "dropout": False}
    assert json.loads(line.split(" (trial 0) ", 1)[1].split("; results in", 1)[0]) == expected

    def strict(constant):
        raise ValueError(f"not strict JSON: {constant}")

    best = json.loads((tmp_path / "best_hyperparameters.json").read_text(), parse_constant=strict)
    assert best["hyperparameters"] == expected
    row = next(csv.DictReader(open(tmp_path / "trials.csv")))
    assert {name: row[name] for name in drawn if row[name]} == {k: str(v) for k, v in expected.items()}

    snap.best = trials[1]  # e.g. an objective that came out NaN: null, not NaN
    progress.write_results(snap, str(tmp_path))
    best = json.loads((tmp_path / "best_hyperparameters.json").read_text(), parse_constant=strict)
    assert best["score"] is None and best["hyperparameters"] == {"model_type": "mlp"}


def test_best_model_saves_and_loads_without_warnings_and_reproduces_the_score(tmp_path):
    """The chief rebuilds the best trial's model from its accepted attempt's checkpoint (saved as
    KerasTuner saves it, at the best epoch); the user loads best_model.keras and evaluates: same
    score, no 'Skipping variable loading for optimizer' on either side."""
    import warnings

    import keras
    from keras_tuner.src.engine.tuner_utils import SaveBestEpoch  # what a Tuner's run_trial saves with

    from chief.startup import save_best_model as _save_best_model
    from shared import config, data, hypermodels, layout

    settings = config.load({"KTC_STATE_DIR": str(tmp_path / "state"), "KTC_RESULTS_DIR": str(tmp_path / "results"),
                            "KTC_LOG_DIR": str(tmp_path / "logs"), "KTC_DATA_DIR": str(tmp_path / "data"),
                            "KTC_DATASET": "digits"}, role="chief")
    dataset = data.load("digits", settings.data_dir)
    build = hypermodels.guide_build_model(dataset.input_shape, dataset.num_classes)
    best = _trial("0", "COMPLETED", None, model_type="cnn", cnn_layers=1, filters_0=32, dropout=False)
    checkpoint = layout.checkpoint_path(settings.project_state_dir, "0", 2)
    os.makedirs(os.path.dirname(checkpoint), exist_ok=True)
    model = build(best.hyperparameters.copy())
    history = model.fit(dataset.x_train, dataset.y_train, validation_data=(dataset.x_val, dataset.y_val), epochs=2,
                        verbose=0, callbacks=[SaveBestEpoch(kt.Objective("val_accuracy", "max"), checkpoint)])
    best.score = max(history.history["val_accuracy"])
    os.makedirs(settings.project_results_dir, exist_ok=True)  # the chief writes trials.csv there first
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _save_best_model(best, 2, hypermodels.as_hypermodel(build), settings)
        loaded = keras.models.load_model(os.path.join(settings.project_results_dir, "best_model.keras"))
        score = loaded.evaluate(dataset.x_val, dataset.y_val, verbose=0, return_dict=True)["accuracy"]
    assert [str(w.message) for w in caught if "Skipping variable loading" in str(w.message)] == []
    assert score == pytest.approx(best.score, abs=1e-6)


def test_a_trial_not_ended_shows_only_values_every_completed_build_used():
    """Before any build reported what it used, a running trial shows none of its values (only
    Hyperband's bookkeeping); a failed trial, whose used set is unknown, shows them all."""
    running = _trial("1", "RUNNING", None, units=32, dropout=0.5, **{"tuner/epochs": 2})
    failed = _trial("2", "FAILED", None, units=64, dropout=0.1)
    runs = {"1": _run("1", "worker-1"), "2": _run("2", "worker-2", message="ValueError: boom")}
    names = ["units", "dropout", "tuner/epochs"]
    rows = results.trials_rows([running, failed], runs, names)
    assert [[row[n] for n in names] for row in rows] == [[None, None, 2], [64, 0.1, None]]
    done = _trial("0", "COMPLETED", 0.9, units=16, dropout=0.2)
    runs["0"] = _run("0", "worker-3", 3.0, used=["units"])
    rows = results.trials_rows([done, running, failed], runs, names)
    assert [[row[n] for n in names] for row in rows] == [[16, None, None], [32, None, 2], [64, 0.1, None]]
