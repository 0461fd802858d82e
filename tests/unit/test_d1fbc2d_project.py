"""A project written by ktcluster at d1fbc2d (issue 23 item 3) opens with this chief, finishes
and is reported correctly.

tests/fixtures/d1fbc2d_project is the state folder of a real search run by d1fbc2d's chief and
two workers (KTC_MODEL=tests.fixtures.models:build_flaky, KTC_MAX_TRIALS=8, KTC_MAX_RETRIES=1,
KTC_SEED=1), the chief and the workers killed with SIGKILL mid-search: its journal lines have no
version (`v`), no token and no generation. On record: trials 0 and 1 COMPLETED, trial 2 retried
once then FAILED, trial 3 running on worker-1 (attempt 1); oracle.json lags the journal.
"""

import shutil
import types

from chief import status
from chief.coordinator import Coordinator
from chief.oracle import cluster_class
from chief.recovery import read_project
from chief.trials import Caller, Phase
from shared import config, tuning

FIXTURE = "tests/fixtures/d1fbc2d_project"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _open(tmp_path, clock):
    shutil.copytree(FIXTURE, tmp_path / "itest")
    settings = config.load({"KTC_MAX_TRIALS": "8", "KTC_MAX_RETRIES": "1", "KTC_SEED": "1",
                            "KTC_MAX_CONSECUTIVE_FAILURES": "10", "KTC_STATE_DIR": str(tmp_path),
                            "KTC_PROJECT": "itest"}, role="chief")
    oracle = tuning.make_oracle(settings, extend=cluster_class)
    oracle.use_project(str(tmp_path), "itest")
    oracle.verbose = 0
    return Coordinator(oracle, lease_seconds=10, heartbeat_seconds=1, clock=clock)


def _phases(book):
    return {t: (r.phase.value, r.owner, r.attempt, r.ended) for t, r in sorted(book.runs.items())}


def test_a_d1fbc2d_project_opens_as_it_was_left(tmp_path):
    c = _open(tmp_path, Clock())
    c.validate()  # book, journal replay and oracle agree
    assert _phases(c.book) == {"0": ("COMPLETED", "worker-1", 1, 1), "1": ("COMPLETED", "worker-2", 1, 1),
                               "2": ("FAILED", "worker-1", 2, 2), "3": ("RUNNING", "worker-1", 1, 0)}
    assert c.book.runs["2"].message == "ValueError: bad combo: variant=raise"
    assert c.oracle.bookkeeping().running == {"worker-1": "3"} and not c.book.queued
    assert not c.finished.is_set()


def test_a_d1fbc2d_project_finishes_and_is_reported(tmp_path):
    clock = Clock()
    c = _open(tmp_path, clock)
    clock.now = 11  # worker-1 never comes back: its trial is re-queued after a lease
    assert c.expire_leases() == ["3"]
    c.register("worker-9", "i9")
    scores = {}
    while True:
        trial, attempt = c.create_trial("worker-9", Caller("worker-9", "i9"))
        if trial.status != "RUNNING":
            break
        caller = Caller("worker-9", "i9", attempt)
        scores[trial.trial_id] = 0.5 + len(scores) / 100
        c.update_trial(trial.trial_id, {"val_accuracy": scores[trial.trial_id]}, 0, caller)
        trial.status = "COMPLETED"
        c.end_trial(trial, caller)
    assert trial.status == "STOPPED" and c.finished.is_set()
    assert list(scores) == ["3", "4", "5", "6", "7"] and c.book.runs["3"].attempt == 2
    c.close()
    replayed = read_project(str(tmp_path / "itest"))
    assert {t: r.phase for t, r in replayed.book.runs.items()} == {
        **{t: Phase.COMPLETED for t in ("0", "1", "3", "4", "5", "6", "7")}, "2": Phase.FAILED}
    settings = types.SimpleNamespace(project_state_dir=str(tmp_path / "itest"), tuner="random", max_trials=8,
                                     objective=types.SimpleNamespace(name="val_accuracy", direction="max"))
    report = status.render(status.snapshot(settings))
    assert report.splitlines()[0].startswith("progress: 8/8 done (1 failed)"), report
    assert "bad combo: variant=raise" in report
