"""Issue 21 (G): a NaN objective's FAILED row says why, with a real chief and worker.

On d1fbc2d a trial whose objective was NaN ended FAILED with an empty message (stock KerasTuner
turns a NaN score into INVALID without one). Now the chief refuses the non-finite report and the
worker fails the attempt with the chief's one-line reason: trials.csv, the end lines of the
journal and `chief status` all say it.
"""

import re

from tests.integration.test_edges import _env, _events, _exit_code, _rows, _status, _worker_env
from tests.procs import processes, python

WHY = re.compile(r"nan|not a finite", re.IGNORECASE)


def test_a_nan_objective_fails_the_trial_with_a_message_saying_why(tmp_path):
    env = _env(tmp_path, KTC_MAX_TRIALS=1, KTC_MAX_RETRIES=0, KTC_MODEL="tests.fixtures.nan_model:build_nan",
               KTC_OBJECTIVE="val_loss:min", KTC_MAX_CONSECUTIVE_FAILURES=5)
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        worker = start("w1", python("worker"), _worker_env(env, "worker-1"), tmp_path)
        codes = (_exit_code(chief, 240), _exit_code(worker, 60))
    rows = _rows(tmp_path)
    ends = [e for e in _events(tmp_path) if e.get("event") == "end"]
    _, status = _status(env, tmp_path)
    problems = []
    if codes != (0, 0):
        problems.append(f"exit codes (chief, worker) {codes}")
    if [r["status"] for r in rows] != ["FAILED"] or not WHY.search(rows[0]["message"] or ""):
        problems.append(f"trials.csv: {rows}")
    if not ends or not WHY.search(ends[-1].get("message") or ""):
        problems.append(f"journal end lines: {ends}")
    if not WHY.search(status):
        problems.append(f"chief status does not say why: {status[-800:]}")
    assert not problems, "\n".join(problems) + f"\nchief:\n{chief.output()[-1500:]}\nworker:\n{worker.output()[-1500:]}"
