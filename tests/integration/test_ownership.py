"""Issue #21: one chief per project, across hosts, and the settings a project cannot change; real
chief and worker processes over real gRPC on loopback, one state folder.

- Two chiefs on one state folder (other ports, one worker each): the second exits 2 naming the
  first; the search completes exactly once, the second's worker trains nothing.
- A chief SIGSTOPped past its lease while a second takes over, then SIGCONT: the first writes
  nothing more and exits 1 with one line; the second finishes the search exactly once; the
  journal replays cleanly (`python -m chief status`).
- A project reopened with another tuner (bayesian, hyperband, grid), objective or seed: exit 2,
  one line per setting, nothing of the project touched; a raised trial budget is applied and
  logged once.
"""

import json
import os
from collections import Counter
import signal
import socket
import subprocess
import time

import pytest

from chief import recovery
from chief.journal import read_lines
from chief.ownership import Claim
from tests.conftest import ROOT
from tests.fixtures.models import held_file
from tests.procs import cluster_env, free_port, processes, python, wait_until

FIXTURES = dict(KTC_DATASET="tests.fixtures.models:tiny_data", KTC_MODEL="tests.fixtures.models:build_model",
                KTC_LEASE_SECONDS=4, KTC_HEARTBEAT_SECONDS=1, KTC_STOP_GRACE_SECONDS=5,
                KTC_CHIEF_TIMEOUT_SECONDS=60, KTC_SEED=5, KTC_EPOCHS=1)


def _env(tmp_path, **overrides):
    return cluster_env(tmp_path, free_port(), **{**FIXTURES, **overrides})


def _other_port(env):
    return {**env, "KERASTUNER_ORACLE_PORT": str(free_port())}


def _worker(env, worker_id, **overrides):
    return {**env, "KERASTUNER_TUNER_ID": worker_id, **{k: str(v) for k, v in overrides.items()}}


def _project(tmp_path):
    return tmp_path / "state" / "itest"


def _said(proc) -> list[str]:
    """The chief's own one-line messages (exit reasons)."""
    return [line for line in proc.output().splitlines() if line.startswith("ktcluster chief:")]


def _lines(tmp_path) -> list[dict]:
    return [json.loads(line) for line in open(_project(tmp_path) / "ktcluster-runs.jsonl", "rb")]


def _exactly_once(tmp_path, max_trials):
    """Replayed, the journal has each trial 0..n-1 COMPLETED; returns (runs, COMPLETED end lines
    per trial among the lines that count)."""
    events, _ = read_lines(str(_project(tmp_path) / "ktcluster-runs.jsonl"))
    runs = recovery.replay(events).book.runs
    assert {t: r.phase.value for t, r in runs.items()} == {str(i): "COMPLETED" for i in range(max_trials)}, runs
    return runs, dict(Counter(e["trial"] for e in events if e["event"] == "end" and e["status"] == "COMPLETED"))


def _status(env, tmp_path):
    done = subprocess.run(python("chief", "status"), env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    (tmp_path / "status.log").write_text(done.stdout + done.stderr)
    return done.returncode, done.stdout + done.stderr


def _no_traceback(*procs):
    for proc in procs:
        assert "Traceback" not in proc.output(), proc.output()[-3000:]


def test_a_second_chief_on_the_project_exits_2_naming_the_first_and_the_search_runs_once(tmp_path):
    # The first chief's worker is held inside its first trial until the second chief has been
    # refused (so the first is certainly still serving then), then the search runs at full speed.
    env = _env(tmp_path, KTC_MAX_TRIALS=6, KTC_MODEL="tests.fixtures.models:build_held")
    second_env = _other_port(env)
    hold = held_file(env["KTC_DATA_DIR"])
    os.makedirs(os.path.dirname(hold), exist_ok=True)
    open(hold, "w").close()
    with processes() as start:
        first = start("chief-1", python("chief"), env, tmp_path)
        worker = start("w1", python("worker"), _worker(env, "worker-1"), tmp_path)
        wait_until(lambda: " -> worker-1 (attempt 1)" in first.output(), 180, what="the first chief's first trial")
        second = start("chief-2", python("chief"), second_env, tmp_path)
        other = start("w2", python("worker"), _worker(second_env, "worker-2", KTC_CHIEF_TIMEOUT_SECONDS=15), tmp_path)
        assert second.wait(timeout=120) == 2, second.output()[-3000:]
        assert first.popen.poll() is None, "the first chief finished before the second was refused"
        os.unlink(hold)
        said = _said(second)
        assert len(said) == 1, second.output()[-3000:]
        assert f"host {socket.gethostname()} (pid {first.pid})" in said[0] and " UTC, generation 1" in said[0], said
        assert "KTC_PROJECT=itest" in said[0] and "stop that chief first" in said[0], said
        assert "KTC_LEASE_SECONDS" in said[0] and "(4s" in said[0], said
        assert first.wait(timeout=240) == 0, first.output()[-3000:]
        assert worker.wait(timeout=30) == 0, worker.output()[-3000:]
        other.wait(timeout=60)  # no chief on its port: it gives up, or sees the search finished
    _no_traceback(first, second)
    runs, completed = _exactly_once(tmp_path, 6)
    assert completed == {str(i): 1 for i in range(6)}, completed
    assert not [e for e in _lines(tmp_path) if e["event"] == "start" and e["worker"] == "worker-2"]
    assert not (_project(tmp_path) / "ktcluster-chief-failed.json").exists()  # the first chief's workers go on
    assert {r.owner for r in runs.values()} == {"worker-1"}


def test_a_chief_paused_past_its_lease_loses_the_project_writes_nothing_more_and_exits(tmp_path):
    env = _env(tmp_path, KTC_MAX_TRIALS=3, KTC_TEST_SLEEP=0.5)
    second_env = _other_port(env)
    project = _project(tmp_path)
    with processes() as start:
        first = start("chief-1", python("chief"), env, tmp_path)
        start("w1", python("worker"), _worker(env, "worker-1", KTC_CHIEF_TIMEOUT_SECONDS=20), tmp_path)
        wait_until(lambda: " COMPLETED by worker-1" in first.output()
                   and first.output().count(" -> worker-1 (attempt 1)") >= 2, 180,
                   what="a trial completed and the next one running on the first chief")
        os.kill(first.pid, signal.SIGSTOP)
        paused_at = time.monotonic()
        second = start("chief-2", python("chief"), second_env, tmp_path)
        other = start("w2", python("worker"), _worker(second_env, "worker-2"), tmp_path)
        wait_until(lambda: "oracle serving" in second.output() or second.popen.poll() is not None, 180,
                   what="the second chief serving")
        assert second.popen.poll() is None, second.output()[-3000:]
        assert time.monotonic() - paused_at >= 4  # it waited out the first chief's lease
        assert "waiting up to 4s" in second.output() and f"(pid {first.pid})" in second.output()
        claim_before = (project / "ktcluster-chief.1.json").read_bytes()
        os.kill(first.pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        code = first.wait(timeout=30)
        left_after = time.monotonic() - resumed_at
        assert (project / "ktcluster-chief.1.json").read_bytes() == claim_before  # no renewal once lost
        assert second.wait(timeout=240) == 0, second.output()[-3000:]
        assert other.wait(timeout=30) == 0, other.output()[-3000:]
    assert code == 1 and left_after < 15, (code, left_after, first.output()[-3000:])
    said = _said(first)
    assert len(said) == 1 and "another chief took the project over" in said[0], first.output()[-3000:]
    assert f"(pid {second.pid})" in said[0] and "writes nothing more" in said[0], said
    _no_traceback(first, second)
    lines = _lines(tmp_path)
    takeover = next(i for i, e in enumerate(lines) if e["event"] == "chief" and e["g"] == 2)
    assert [e for e in lines[takeover:] if e.get("g") != 2] == []  # nothing of the first chief after it
    assert Claim.parse((project / "ktcluster-chief.2.json").read_bytes()).released
    runs, completed = _exactly_once(tmp_path, 3)
    assert completed == {str(i): 1 for i in range(3)}, completed
    code, output = _status(env, tmp_path)
    assert code == 0 and "3/3 done" in output, output


@pytest.fixture(scope="module")
def stopped_project(tmp_path_factory):
    """A random project started (record and state written) and stopped before any trial: its
    folder, and the environment it was started with."""
    tmp_path = tmp_path_factory.mktemp("reopen")
    env = _env(tmp_path, KTC_MAX_TRIALS=2)
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        wait_until(lambda: "oracle serving" in chief.output(), 180, what="the chief serving")
        chief.stop()
    return tmp_path, env


def _files(folder) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith("ktcluster-chief")}


@pytest.mark.parametrize("changes, named", [
    (dict(KTC_TUNER="bayesian"), ["KTC_TUNER"]),
    (dict(KTC_TUNER="hyperband"), ["KTC_TUNER"]),
    (dict(KTC_TUNER="grid"), ["KTC_TUNER"]),
    (dict(KTC_OBJECTIVE="val_loss"), ["KTC_OBJECTIVE"]),
    (dict(KTC_SEED=6), ["KTC_SEED"]),
    (dict(KTC_TUNER="bayesian", KTC_OBJECTIVE="val_loss", KTC_SEED=6, KTC_MAX_TRIALS=3),
     ["KTC_TUNER", "KTC_OBJECTIVE", "KTC_SEED"]),
])
def test_a_setting_the_project_cannot_change_is_refused_one_line_each(stopped_project, changes, named):
    tmp_path, env = stopped_project
    project = _project(tmp_path)
    before = _files(project)
    changed = {**env, **{k: str(v) for k, v in changes.items()}}
    with processes() as start:
        chief = start("refused-" + "-".join(f"{k}={v}" for k, v in changes.items()), python("chief"), changed, tmp_path)
        assert chief.wait(timeout=120) == 2, chief.output()[-3000:]
    said = _said(chief)
    assert [line.split(": ", 1)[1].split("=", 1)[0] for line in said] == named, said
    for line in said:
        assert "project itest was started with" in line and "again, or start a new search" in line, line
    assert "Traceback" not in chief.output()
    failed = project / "ktcluster-chief-failed.json"  # the workers hear it
    assert failed.exists() and json.loads(failed.read_text())["code"] == 2
    failed.unlink()
    assert _files(project) == before  # journal, oracle state and record untouched


def test_a_raised_trial_budget_is_applied_and_logged_once(stopped_project):  # last: it finishes the project
    tmp_path, env = stopped_project
    env = {**env, "KTC_MAX_TRIALS": "3"}
    with processes() as start:
        chief = start("budget", python("chief"), env, tmp_path)
        worker = start("w-budget", python("worker"), _worker(env, "worker-1"), tmp_path)
        assert chief.wait(timeout=240) == 0, chief.output()[-3000:]
        assert worker.wait(timeout=30) == 0
    assert chief.output().count("KTC_MAX_TRIALS 2 -> 3 (applied)") == 1, chief.output()[-3000:]
    runs, completed = _exactly_once(tmp_path, 3)
    assert completed == {"0": 1, "1": 1, "2": 1}
    record = json.loads((_project(tmp_path) / "ktcluster-search.json").read_text())
    assert (record["max_trials"], record["seed"], record["lease_seconds"]) == (3, 5, 4.0)
