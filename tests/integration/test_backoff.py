"""Issue 21 (F): back-off during a storage outage, with a real chief and worker.

While its state disk is full the chief refuses calls with UNAVAILABLE. On d1fbc2d each worker
retried without pausing (`channel_ready_future` returns at once on a connected channel): 12,000 to
22,000 "chief unreachable (UNAVAILABLE), retrying" lines per worker and 25,000 to 35,000 refused
calls in 20-30 s. Now a worker waits with capped exponential back-off and jitter and logs at most
one line per cause per 30 s, and the chief logs the failing disk at most once per 5 s.
"""

import os
import re
import time

from tests.integration.test_edges import (_env, _exit_code, _fill, _in_flight, _once_problems, _port, _tmpfs,
                                          _worker_env, _completed)
from tests.procs import processes, python, wait_until
from tests.wire import ready

OUTAGE = 30.0
DISK_LINE = re.compile(r"the state disk fails \(.*?\); (\d+) failures in")


def test_a_30s_storage_outage_costs_a_few_calls_and_lines_not_thousands(tmp_path):
    with _tmpfs(tmp_path / "state", "32m") as state:
        # 2 trials: one done before the outage, one in flight through it and finished after it
        env = _env(tmp_path, KTC_MAX_TRIALS=2, KTC_EPOCHS=2, KTC_TEST_SLEEP=0.3, KTC_LEASE_SECONDS=60,
                   KTC_STORAGE_GRACE_SECONDS=120, KTC_MAX_RETRIES=2, KTC_CHIEF_TIMEOUT_SECONDS=120)
        with processes() as start:
            chief = start("chief", python("chief"), env, tmp_path)
            worker = start("w1", python("worker"), _worker_env(env, "worker-1"), tmp_path)
            assert ready(_port(env), 180), chief.output()[-2000:]
            wait_until(lambda: _completed(tmp_path) >= 1 and _in_flight(tmp_path, "worker-1"), 120, 0.2,
                       what="a result, then worker-1 training")
            chief_before, worker_before = len(chief.output()), len(worker.output())
            filler = _fill(state)
            time.sleep(OUTAGE)
            chief_during, worker_during = chief.output()[chief_before:], worker.output()[worker_before:]
            os.unlink(filler)
            codes = (_exit_code(chief, 120), _exit_code(worker, 60))
    retry_lines = [line for line in worker_during.splitlines() if "chief unreachable" in line]
    disk_lines = DISK_LINE.findall(chief_during)
    refused = max(map(int, disk_lines), default=0)  # the chief's count of refused calls, logged every 5 s
    print(f"outage {OUTAGE:.0f}s: worker retry lines {len(retry_lines)}, chief disk lines {len(disk_lines)}, "
          f"refused calls >= {refused}")
    problems = []
    if not disk_lines:
        problems.append("the chief never said its disk failed: no outage happened")
    if len(disk_lines) > 1 + OUTAGE / 5:
        problems.append(f"{len(disk_lines)} chief lines about the failing disk in {OUTAGE:.0f}s (at most one per 5 s)")
    if refused > 60:
        problems.append(f"the chief refused {refused} calls in {OUTAGE:.0f}s from one worker (no back-off)")
    if len(retry_lines) > 3:
        problems.append(f"{len(retry_lines)} 'chief unreachable' lines from one worker in {OUTAGE:.0f}s; first: "
                        f"{retry_lines[:2]}")
    if codes != (0, 0):
        problems.append(f"exit codes (chief, worker) {codes} after the disk was freed")
    else:
        problems += _once_problems(tmp_path, 2)
    assert not problems, "\n".join(problems) + f"\nchief during the outage:\n{chief_during[-1500:]}"
