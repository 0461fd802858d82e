"""Issue #20 item 8, with a real chief process: what its log says while workers fail and fall
silent. Scripted clients (tests/wire.py) stand in for workers; every wait is bounded."""

import re

from tests.procs import cluster_env, free_port, processes, python, wait_until
from tests.wire import STATUS, Client, ScriptedWorker, ready

FIXTURES = dict(KTC_DATASET="tests.fixtures.models:tiny_data", KTC_MODEL="tests.fixtures.models:build_model",
                KTC_LEASE_SECONDS=8, KTC_HEARTBEAT_SECONDS=1, KTC_STOP_GRACE_SECONDS=5,
                KTC_CHIEF_TIMEOUT_SECONDS=60, KTC_SEED=5, KTC_EPOCHS=1, KTC_MAX_TRIALS=3, KTC_MAX_RETRIES=1)
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) chief .*")


def test_a_silent_worker_is_marked_and_keras_tuners_retry_line_is_in_the_log_format(tmp_path):
    env = cluster_env(tmp_path, free_port(), **FIXTURES)
    port = int(env["KERASTUNER_ORACLE_PORT"])
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        assert ready(port, 180), chief.output()[-2000:]
        client = Client(port)
        failing, silent = ScriptedWorker(client, "worker-1"), ScriptedWorker(client, "worker-2")
        for worker in (failing, silent):
            assert worker.register().ok
        trial = failing.create().response.trial
        assert failing.update(trial.trial_id, 0.5).ok
        assert failing.end(trial, status=STATUS.INVALID).ok  # a retry: KerasTuner prints a line
        held = silent.create().response.trial.trial_id  # then worker-2 sends nothing more

        def marked():
            return re.search(rf"running \[[^\]]*worker-2:{held} silent (\d+)s", chief.output())

        seconds = int(wait_until(marked, 30, what="a progress line marking worker-2 silent").group(1))
        assert 2 <= seconds < 8  # past two heartbeats (shown in whole seconds), before the lease (8 s) ran out
        failing.run_until_stopped(60)
        client.close()
        assert chief.wait(60) == 0, chief.output()[-2000:]
    lines = chief.output().splitlines()
    stock = [line for line in lines if "retries left" in line]
    assert len(stock) == 1 and stock[0].endswith(f"INFO chief KerasTuner: Trial {trial.trial_id} failed 1 times. "
                                                 "1 retries left."), stock
    assert [line for line in lines if line.startswith("Trial ")] == []
    assert all(LOG_LINE.fullmatch(line) for line in lines if "progress:" in line)
