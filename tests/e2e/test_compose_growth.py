"""The user's own KerasTuner code in a folder of theirs (KTC_CODE_DIR), and a finished project
that grows under Compose (issue #22 items 9 and 6).

The search runs KerasTuner's "Tune model training" HyperModel (examples/tune_training.py, copied
into a folder of the test's own, as a user's code would be): its `fit` draws batch_size and
shuffle, and every trial's row carries them. Then `docker compose up` again with KTC_MAX_TRIALS
raised starts the chief and the workers together, as Compose does; the workers wait for the
chief's word on the finished marker (shared.layout.FinishedWatch) instead of exiting on it, the
new trials run, and every container exits 0."""

import csv
import json
import pathlib
import shutil

from tests.e2e.compose import new_stack

PROJECT = "grow"
EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def test_raising_max_trials_on_a_finished_project_continues_it_in_compose(tmp_path):
    (tmp_path / "results").mkdir()
    code = tmp_path / "my-code"
    code.mkdir()
    shutil.copy(EXAMPLES / "tune_training.py", code)
    stack = new_stack("ktcgrow", tmp_path, KTC_DATASET="digits", KTC_MAX_TRIALS=2, KTC_EPOCHS=1, KTC_SEED=1,
                      KTC_TF_THREADS=1, KTC_STOP_GRACE_SECONDS=10, KTC_PROJECT=PROJECT, KTC_WORKERS=2,
                      KTC_CODE_DIR=code, KTC_MODEL="tune_training:TuneTraining")
    try:
        stack.ensure_image()
        stack.compose("up", "-d", timeout=300)
        first = stack.wait_exited({"chief", "worker"}, timeout=600)
        assert set(first.values()) == {0} and len(first) == 3, stack.logs()[-4000:]
        stack.env["KTC_MAX_TRIALS"] = "4"
        stack.compose("up", "-d", timeout=300)  # the changed setting re-creates chief and workers, started together
        codes = stack.wait_exited({"chief", "worker"}, timeout=600)
        chief, workers = stack.logs("chief"), stack.logs("worker")
        assert set(codes.values()) == {0} and len(codes) == 3, (codes, chief[-3000:], workers[-3000:])
        assert "KTC_MAX_TRIALS 2 -> 4 (applied)" in chief and "search finished: 4 completed" in chief, chief[-3000:]
        assert workers.count(f"the chief continues project {PROJECT}") == 2, workers[-3000:]
        assert "nothing to do" not in workers
        rows = list(csv.DictReader(open(tmp_path / "results" / PROJECT / "trials.csv")))
        assert sorted(r["trial_id"] for r in rows) == ["0", "1", "2", "3"]
        assert {r["status"] for r in rows} == {"COMPLETED"}
        assert all(r["batch_size"] and r["shuffle"] and r["units"] for r in rows), rows  # fit-time values too
        best = json.loads((tmp_path / "results" / PROJECT / "best_hyperparameters.json").read_text())
        assert {"batch_size", "shuffle", "units"} <= set(best["hyperparameters"]), best
    finally:
        print(stack.logs()[-8000:])
        stack.close()
