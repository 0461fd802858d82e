"""Issue 21 (B): an attempt is one training, with real chief and worker processes.

The chief is killed mid-trial; a second process with the training worker's id starts while the
chief restarts and calls first. On d1fbc2d the newcomer got the id and the running trial, the
original (still training) was refused and exited 2, and the trial trained again from scratch under
the same attempt number (one start in the journal for two trainings). Now the newcomer is refused
with one line and exits 2, the original resumes its attempt, and every training has its own start.
"""

import contextlib
import os
import re
import signal
import time

from tests.integration.test_edges import _env, _events, _exit_code, _in_flight, _once_problems, _port, _worker_env
from tests.procs import processes, python, wait_until
from tests.wire import ready


def _trainings(*outputs) -> dict[str, int]:
    """trial id -> how many times a worker began training it (its "starts trial" lines)."""
    found: dict[str, int] = {}
    for output in outputs:
        for trial in re.findall(r" starts trial (\S+) \(attempt", output):
            found[trial] = found.get(trial, 0) + 1
    return found


def test_a_newcomer_with_a_training_workers_id_during_a_chief_restart_inherits_nothing(tmp_path):
    # 2 epochs of 3 s: the original is frozen about 1 s into its training (SIGSTOP with the chief's
    # kill, so however slow the newcomer's start-up, the trial is still mid-fit when it is resumed).
    env = _env(tmp_path, KTC_MAX_TRIALS=1, KTC_EPOCHS=2, KTC_HEARTBEAT_SECONDS=4, KTC_LEASE_SECONDS=40,
               KTC_CHIEF_TIMEOUT_SECONDS=120)
    slow = {**_worker_env(env, "worker-1"), "KTC_TEST_SLEEP": "1.0"}
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        original = start("original", python("worker"), slow, tmp_path)
        trial, _ = wait_until(lambda: _in_flight(tmp_path, "worker-1"), 180, 0.2, what="worker-1 to start a trial")
        time.sleep(1.0)  # mid-fit
        os.kill(chief.pid, signal.SIGKILL)
        chief.popen.wait(timeout=10)
        os.kill(original.pid, signal.SIGSTOP)  # the newcomer calls the restarted chief first
        try:
            newcomer = start("newcomer", python("worker"), slow, tmp_path)
            wait_until(lambda: "chief unreachable" in newcomer.output(), 120, 0.2,
                       what="the newcomer to wait for the chief")
            again = start("chief-2", python("chief"), env, tmp_path)
            assert ready(_port(env), 180), again.output()[-2000:]
            # until the newcomer has asked for the id: refused (it exits) or given it (it trains)
            with contextlib.suppress(AssertionError):  # judged below from exit codes and trainings
                wait_until(lambda: newcomer.popen.poll() is not None or " starts trial " in newcomer.output(),
                           30, 0.2, what="the newcomer's answer")
        finally:
            os.kill(original.pid, signal.SIGCONT)
        codes = {"chief": _exit_code(again, 240), "newcomer": _exit_code(newcomer, 60),
                 "original": _exit_code(original, 60)}
    outputs = {"original": original.output(), "newcomer": newcomer.output(), "chief": again.output()}
    starts = [e for e in _events(tmp_path) if e.get("event") == "start"]
    trainings = _trainings(outputs["original"], outputs["newcomer"])
    problems = []
    if codes != {"chief": 0, "newcomer": 2, "original": 0}:
        problems.append(f"exit codes {codes} (expected the chief 0, the newcomer 2, the original 0)")
    refusal = [line for line in outputs["newcomer"].splitlines() if line.startswith("ktcluster worker:")]
    if len(refusal) != 1 or "already used by a live worker" not in refusal[0]:
        problems.append(f"the newcomer's last word: {refusal}")
    per_trial = {t: sum(1 for e in starts if e["trial"] == t) for t in trainings}
    if per_trial != trainings:
        problems.append(f"trainings per trial {trainings} but journal starts {per_trial}")
    attempts = [e["attempt"] for e in starts if e["trial"] == trial]
    if len(attempts) != len(set(attempts)):
        problems.append(f"trial {trial}'s attempt numbers repeat: {attempts}")
    if trainings.get(trial) != 1:
        problems.append(f"trial {trial} was trained {trainings.get(trial, 0)} times")
    problems += _once_problems(tmp_path, 1)
    assert not problems, "\n".join(problems) + "".join(f"\n--- {k}:\n{v[-1500:]}" for k, v in outputs.items())
