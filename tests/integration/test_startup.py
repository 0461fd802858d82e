"""Issue #20, items 4-6, with real chief and worker processes on loopback.

4. A chief that cannot start (data, a setting, TLS files) ends every waiting worker within seconds,
   with the chief's own reason and a non-zero code (shared.layout.CHIEF_FAILED), whether the
   worker waits in the data cache or in the gRPC retry loop; a stale record from an earlier
   failed start stops no worker of a chief that starts.
5. A finished project is reported with the settings it was run with, whatever the environment
   says now (no data is loaded: a dataset that cannot be had now does not matter).
6. TLS on one side only ends a worker process with exit 2 within seconds; both sides log once
   whether TLS is on.

Every wait is bounded; KTC_CHIEF_TIMEOUT_SECONDS is set far above those bounds, so a worker
that waited for it fails the test.
"""

import contextlib
import json
import shutil
import socket
import subprocess
import time

import pytest

from shared import layout, tls
from tests.procs import cluster_env, free_port, processes, python, wait_until

FIXTURES = dict(KTC_DATASET="tests.fixtures.models:tiny_data", KTC_MODEL="tests.fixtures.models:build_model",
                KTC_LEASE_SECONDS=4, KTC_HEARTBEAT_SECONDS=1, KTC_STOP_GRACE_SECONDS=5,
                KTC_CHIEF_TIMEOUT_SECONDS=240, KTC_SEED=5, KTC_EPOCHS=1)
PROMPT = 30  # seconds a worker may take to follow a failed chief (its own start-up included)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _offline(env: dict) -> dict:
    """No route to the internet: downloads go through a proxy port where nothing listens."""
    proxy = f"http://127.0.0.1:{_closed_port()}"
    env = {k: v for k, v in env.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
    return {**env, "https_proxy": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "HTTP_PROXY": proxy}


def _env(tmp_path, **overrides):
    return cluster_env(tmp_path, free_port(), **{**FIXTURES, **overrides})


def _worker_env(env, worker_id="worker-1", **overrides):
    return {**env, "KERASTUNER_TUNER_ID": worker_id, **{k: str(v) for k, v in overrides.items()}}


def _exit_within(proc, seconds) -> int | None:
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def _last_line(output: str, prefix: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, output[-3000:]
    return lines[0]


def _project(tmp_path):
    return tmp_path / "state" / "itest"


RECORD = "ktcluster-chief-failed.json"  # shared.layout.CHIEF_FAILED, spelt out: the file is the contract


def _stale_record(project, reason):
    """An earlier failed start's record, as a chief writes it."""
    project.mkdir(parents=True, exist_ok=True)
    (project / RECORD).write_text(json.dumps({"reason": reason, "code": 1, "at": time.time() - 3600}) + "\n")


# -- 4: a chief that cannot start -----------------------------------------------------------------
def test_a_failed_download_ends_workers_waiting_for_the_data_cache_with_the_chiefs_reason(tmp_path):
    env = _offline(_env(tmp_path, KTC_DATASET="mnist", KTC_MODEL=""))
    with processes() as start:
        workers = [start(f"w{i}", python("worker"), _worker_env(env, f"worker-{i}"), tmp_path) for i in (1, 2)]
        chief = start("chief", python("chief"), env, tmp_path)
        assert _exit_within(chief, 120) == 1, chief.output()[-3000:]
        reason = _last_line(chief.output(), "ktcluster chief:").removeprefix("ktcluster chief: ")
        assert reason.startswith("KTC_DATASET=mnist: download of"), reason
        for number, worker in enumerate(workers, 1):
            code = _exit_within(worker, PROMPT)
            assert code == 1, f"worker-{number} still waits (or exited {code}):\n{worker.output()[-3000:]}"
            line = _last_line(worker.output(), "ktcluster worker:")
            assert line == f"ktcluster worker: worker-{number}: the chief could not start (it exited 1): {reason}"


def test_a_chief_refusing_a_setting_ends_workers_in_the_retry_loop_with_its_reason_and_code(tmp_path):
    env = _env(tmp_path, KTC_OBJECTIVE="val_nope:max")
    with processes() as start:
        worker = start("w1", python("worker"), _worker_env(env), tmp_path)
        wait_until(lambda: "chief unreachable" in worker.output(), 120, 0.2, what="the worker retrying")
        chief = start("chief", python("chief"), env, tmp_path)
        assert _exit_within(chief, 120) == 2, chief.output()[-3000:]
        reason = _last_line(chief.output(), "ktcluster chief:").removeprefix("ktcluster chief: ")
        assert reason.startswith("KTC_OBJECTIVE=val_nope: the model does not report it"), reason
        assert _exit_within(worker, PROMPT) == 2, worker.output()[-3000:]
        assert _last_line(worker.output(), "ktcluster worker:") == (
            f"ktcluster worker: worker-1: the chief could not start (it exited 2): {reason}")
    assert "TLS off (KTC_TLS_DIR is empty)" in chief.output()  # item 6: said once, at start
    assert chief.output().count("TLS off") == 1 and worker.output().count("TLS off") == 1


def test_a_chief_whose_settings_do_not_load_ends_workers_with_its_line(tmp_path):
    """KTC_RESULTS_DIR is the chief's alone (workers never check it): a file there stops the chief
    while it reads its settings, before anything else."""
    (tmp_path / "not-a-folder").write_text("")
    env = _env(tmp_path)
    with processes() as start:
        worker = start("w1", python("worker"), _worker_env(env), tmp_path)
        wait_until(lambda: "chief unreachable" in worker.output(), 120, 0.2, what="the worker retrying")
        chief = start("chief", python("chief"), {**env, "KTC_RESULTS_DIR": str(tmp_path / "not-a-folder")}, tmp_path)
        assert _exit_within(chief, 60) == 2, chief.output()[-3000:]
        reason = _last_line(chief.output(), "ktcluster chief:").removeprefix("ktcluster chief: ")
        assert reason.startswith("KTC_RESULTS_DIR="), reason
        assert _exit_within(worker, PROMPT) == 2, worker.output()[-3000:]
        assert _last_line(worker.output(), "ktcluster worker:").endswith(f"(it exited 2): {reason}")


def test_a_chief_with_unusable_tls_files_ends_a_tls_worker_with_its_reason(tmp_path):
    folder = tmp_path / "tls"
    tls.make(str(folder))
    chief_only = tmp_path / "chief-tls"
    shutil.copytree(folder, chief_only)
    (chief_only / "chief.key").unlink()
    env = _env(tmp_path)
    with processes() as start:
        worker = start("w1", python("worker"), _worker_env(env, KTC_TLS_DIR=folder), tmp_path)
        wait_until(lambda: f"TLS on (KTC_TLS_DIR={folder})" in worker.output(), 120, 0.2,
                   what="the worker's TLS line")
        chief = start("chief", python("chief"), {**env, "KTC_TLS_DIR": str(chief_only)}, tmp_path)
        assert _exit_within(chief, 60) == 2, chief.output()[-3000:]
        reason = _last_line(chief.output(), "ktcluster chief:").removeprefix("ktcluster chief: ")
        assert "chief.key is missing" in reason
        assert _exit_within(worker, PROMPT) == 2, worker.output()[-3000:]
        assert _last_line(worker.output(), "ktcluster worker:").endswith(f"(it exited 2): {reason}")
        assert worker.output().count("TLS on") == 1


def test_a_stale_failure_record_stops_no_worker_of_a_chief_that_starts(tmp_path):
    env = _env(tmp_path, KTC_MAX_TRIALS=2)
    project = _project(tmp_path)
    _stale_record(project, "KTC_DATASET=mnist: an earlier start failed")
    with processes() as start:
        worker = start("w1", python("worker"), _worker_env(env), tmp_path)
        time.sleep(1)  # the worker sees the stale record before the new chief removes it
        chief = start("chief", python("chief"), env, tmp_path)
        wait_until(lambda: not (project / RECORD).exists(), 60, 0.1, what="the record removed")
        assert _exit_within(chief, 240) == 0, chief.output()[-3000:]
        assert _exit_within(worker, 60) == 0, worker.output()[-3000:]
    assert "earlier start failed" not in worker.output()


# -- 5: a finished project ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-trial search of the fixture model and data: (folder, env)."""
    tmp_path = tmp_path_factory.mktemp("finished")
    env = _env(tmp_path, KTC_MAX_TRIALS=2)
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        worker = start("w1", python("worker"), _worker_env(env), tmp_path)
        assert _exit_within(chief, 300) == 0, chief.output()[-3000:]
        assert _exit_within(worker, 60) == 0, worker.output()[-3000:]
    assert layout.search_finished(str(_project(tmp_path)))
    return tmp_path, env


def test_a_finished_project_is_reported_with_its_recorded_settings_whatever_the_environment_says(
        finished, tmp_path):
    source, env = finished
    for folder in ("state", "logs"):
        shutil.copytree(source / folder, tmp_path / folder)
    _stale_record(_project(tmp_path), "an earlier start failed")  # removed at start
    now = _offline({**env, "KTC_DATASET": "mnist", "KTC_MODEL": "", "KTC_EPOCHS": "3",
                    "KTC_STATE_DIR": str(tmp_path / "state"), "KTC_LOG_DIR": str(tmp_path / "logs"),
                    "KTC_DATA_DIR": str(tmp_path / "data"), "KTC_RESULTS_DIR": str(tmp_path / "results")})
    with processes() as start:
        chief = start("chief", python("chief"), now, tmp_path)
        worker = start("w1", python("worker"), _worker_env(now), tmp_path)
        assert _exit_within(chief, 60) == 0, chief.output()[-3000:]
        assert _exit_within(worker, 60) == 0, worker.output()[-3000:]
    out = chief.output()
    assert "already finished" in out and "dataset tests.fixtures.models:tiny_data" in out, out[-3000:]
    assert "model tests.fixtures.models:build_model" in out and "1 epochs" in out
    assert "not used for it: KTC_EPOCHS=3, KTC_DATASET=mnist, KTC_MODEL=(empty)" in out
    assert "download" not in out.lower() and "ktcluster chief:" not in out
    assert "search finished: 2 completed" in out
    rows = (tmp_path / "results" / "itest" / "trials.csv").read_text().splitlines()
    assert len(rows) == 3  # header + the two trials, written again from the project's files
    assert not (_project(tmp_path) / RECORD).exists()
    assert "already finished" in worker.output() and "mnist.npz" not in worker.output()


def _decide(tmp_path, **overrides):
    from chief.finished import finished_record as _finished_record
    from shared import config

    environ = {**cluster_env(tmp_path, free_port(), **FIXTURES), **{k: str(v) for k, v in overrides.items()}}
    return _finished_record(config.load(environ, role="probe"))


def test_report_or_continue_is_decided_from_the_marker_the_record_and_the_trial_budget(tmp_path):
    project = _project(tmp_path)
    project.mkdir(parents=True)
    record = {"tuner": "random", "max_trials": 2, "epochs": 1, "objective": "val_accuracy", "direction": "max",
              "dataset": "tests.fixtures.models:tiny_data", "model": ""}
    (project / layout.SEARCH_RECORD).write_text(json.dumps(record))
    assert _decide(tmp_path, KTC_MAX_TRIALS=2) is None  # not finished: it runs (resumes)
    (project / layout.FINISHED_MARKER).write_text("{}")
    for same_or_fewer in ({"KTC_MAX_TRIALS": 2}, {"KTC_MAX_TRIALS": 1, "KTC_DATASET": "mnist"},
                          {"KTC_TUNER": "hyperband", "KTC_MAX_TRIALS": 50}):
        assert _decide(tmp_path, **same_or_fewer).dataset == record["dataset"], same_or_fewer
    assert _decide(tmp_path, KTC_MAX_TRIALS=3) is None  # raised: the search continues
    for broken in ("{", "[]", json.dumps({**record, "epochs": "1"}), json.dumps({"tuner": "random"})):
        (project / layout.SEARCH_RECORD).write_text(broken)
        assert _decide(tmp_path, KTC_MAX_TRIALS=2) is None, broken  # as before records: today's settings


# -- 6: TLS on one side only ----------------------------------------------------------------------
@contextlib.contextmanager
def _serving_chief(tmp_path, env):
    """A chief that serves (no worker ever gets a trial: it stays up): yields once it serves."""
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        tls_dir = env.get("KTC_TLS_DIR", "")  # said once at start (checked after the test's own asserts)
        wait_until(lambda: chief.popen.poll() is not None or "oracle serving" in chief.output(), 120, 0.2,
                   what="the chief serving")
        assert chief.popen.poll() is None, chief.output()[-3000:]
        yield start
        said = f"TLS on (KTC_TLS_DIR={tls_dir})" if tls_dir else "TLS off (KTC_TLS_DIR is empty)"
        assert said in chief.output() and chief.output().count("TLS o") == 1, chief.output()[-3000:]


@pytest.mark.parametrize("chief_tls", [True, False], ids=["tls-chief-plaintext-worker", "plaintext-chief-tls-worker"])
def test_tls_on_one_side_only_ends_the_worker_process_with_exit_2_within_seconds(tmp_path, chief_tls):
    folder = tmp_path / "tls"
    tls.make(str(folder))
    env = _env(tmp_path, KTC_MAX_TRIALS=50)
    chief_env, worker_env = ({**env, "KTC_TLS_DIR": str(folder)}, env) if chief_tls else (
        env, {**env, "KTC_TLS_DIR": str(folder)})
    with _serving_chief(tmp_path, chief_env) as start:
        started = time.monotonic()
        worker = start("w1", python("worker"), _worker_env(worker_env), tmp_path)
        code = _exit_within(worker, PROMPT)
        assert code == 2, worker.output()[-3000:]
        line = _last_line(worker.output(), "ktcluster worker:")
        assert line.startswith(f"ktcluster worker: KTC_TLS_DIR={folder if not chief_tls else '(unset)'}: worker-1: ")
        assert "KTC_TLS_DIR" in line.split(": worker-1: ", 1)[1]
        assert time.monotonic() - started < PROMPT
        assert worker.output().count("TLS o") == 1
