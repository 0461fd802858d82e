import csv
import json
import os

import keras_tuner as kt
import numpy as np
import pytest

from chief import progress
from shared import results


def _trial(trial_id, status, score, **values):
    hp = kt.HyperParameters()
    hp.values.update(values)
    trial = kt.engine.trial.Trial(hp, trial_id=trial_id, status=status)
    trial.score = score
    return trial


def test_trials_csv_and_best(tmp_path):
    trials = [_trial("1", "COMPLETED", np.float64(0.5), model_type="cnn", dropout=True),
              _trial("0", "COMPLETED", 0.9, model_type="mlp", units_0=64),
              _trial("2", "FAILED", None, model_type="mlp")]
    runs = {"0": {"worker": "worker-1", "seconds": 1.23456, "attempts": 1},
            "1": {"worker": "worker-2", "seconds": 2.0, "attempts": 1},
            "2": {"worker": "worker-1", "seconds": None, "attempts": 2, "message": "ValueError: bad combo"}}
    snap = {"trials": trials, "runs": runs, "running": {}, "max_trials": 3,
            "objective": kt.Objective("val_accuracy", "max"), "best": trials[1],
            "space": ["model_type", "units_0", "dropout"]}
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
    snap = {"trials": trials, "runs": {"0": {"seconds": 60.0}}, "running": {"worker-1": "1", "worker-2": "2"},
            "max_trials": 6, "objective": kt.Objective("val_accuracy", "max"), "best": trials[0], "space": []}
    line = progress.line(progress.summary(snap))
    # 5 trials left over 2 running workers at 60 s each -> 3 rounds -> 3 minutes
    assert line == ("progress: 1/6 done (0 failed), running [worker-1:1, worker-2:2], "
                    "best val_accuracy 0.8000 (trial 0), ETA 3m00s")


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
            return {"completed": self.done, "failed": 0, "running": {}, "total": 10, "queued": 0,
                    "objective": "score", "best": None, "eta": None}

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
    snap = {"trials": [_trial("0", "COMPLETED", 0.9, units_0=64)], "runs": {"0": {"worker": "w", "attempts": 1}},
            "running": {}, "max_trials": 1, "objective": kt.Objective("val_accuracy", "max"), "best": None,
            "space": ["units_0"]}
    progress.write_results(snap, str(project))
    (project / "nested").mkdir()
    (project / "nested" / "model.keras").write_bytes(b"x")
    assert results.give_to_folder_owner(str(root), str(project)) == 5  # the folders and the files
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in [project, *project.rglob("*")]}
    assert owners == {(4321, 4322)}
    assert results.give_to_folder_owner(str(root), str(project)) == 0
