"""Issue 21 (C): a chief restarts from whatever is on disk. The journal is the truth; KerasTuner's
files (oracle.json, trial_*/trial.json) are rebuilt from it where they are missing or ahead of it,
with one line per file, or the chief exits with one line naming the file and what to do. Never a
traceback, never a restart loop.

Real chief processes on loopback; the trials are driven by a scripted client (tests/wire.py)."""

import json
import os
import shutil
import subprocess
import time

import pytest

from tests.procs import cluster_env, free_port, processes, python, wait_until
from tests.wire import STATUS, Client, ScriptedWorker, ready

FIXTURES = dict(KTC_DATASET="tests.fixtures.models:tiny_data", KTC_MODEL="tests.fixtures.models:build_model",
                KTC_LEASE_SECONDS=2, KTC_HEARTBEAT_SECONDS=0.5, KTC_STOP_GRACE_SECONDS=1, KTC_SEED=3, KTC_EPOCHS=1,
                KTC_MAX_TRIALS=3)


def _journal(project):
    return [json.loads(line) for line in open(project / "ktcluster-runs.jsonl")]


def _finals(project):
    return sorted(e["trial"] for e in _journal(project) if e["event"] == "end" and e["status"] != "RETRY")


def _serve(start, env, tmp, name):
    chief = start(name, python("chief"), env, tmp)
    port = int(env["KERASTUNER_ORACLE_PORT"])
    assert ready(port, 120), chief.output()[-3000:]
    return chief, Client(port)


def _take(worker):
    reply = worker.create()
    assert reply.ok and reply.response.trial.status == STATUS.RUNNING, (reply.code.name, reply.details)
    return reply.response.trial


def _written(project, trial_id, status):
    """trial.json of `trial_id` says `status` (the files are written behind the journal)."""
    path = project / f"trial_{trial_id}" / "trial.json"
    try:
        return json.loads(path.read_text())["status"] == status and (project / "oracle.json").exists()
    except (OSError, ValueError):
        return False


def _stop(chief):
    chief.stop()


def _no_traceback(*chiefs):
    for chief in chiefs:
        assert "Traceback" not in chief.output() and "KeyError" not in chief.output(), chief.output()[-3000:]


def test_a_journal_replaced_by_an_older_copy_wins_over_the_files_ahead_of_it(tmp_path):
    env = cluster_env(tmp_path, free_port(), **FIXTURES)
    project = tmp_path / "state" / "itest"
    with processes() as start:
        first, client = _serve(start, env, tmp_path, "chief-1")
        worker = ScriptedWorker(client, "w1")
        assert worker.register().ok
        trial = _take(worker)
        assert worker.finish(trial.trial_id, 0.5).ok
        wait_until(lambda: _written(project, trial.trial_id, "COMPLETED"), 10, 0.1, "trial 0's files")
        older = (project / "ktcluster-runs.jsonl").read_bytes()
        for value in (0.9, 0.7):  # the best trial is one the older journal never saw
            trial = _take(worker)
            assert worker.finish(trial.trial_id, value).ok
        wait_until(lambda: _written(project, "2", "COMPLETED"), 10, 0.1, "trial 2's files")
        _stop(first)
        client.close()
        (project / "ktcluster-runs.jsonl").write_bytes(older)

        second, client = _serve(start, env, tmp_path, "chief-2")
        worker = ScriptedWorker(client, "w1")
        assert worker.register().ok
        done = worker.run_until_stopped(timeout=60)
        assert second.wait(timeout=60) == 0, second.output()[-3000:]
        client.close()
    _no_traceback(first, second)
    assert sorted(done) == ["1", "2"] and _finals(project) == ["0", "1", "2"]
    aside = sorted(p.name for p in project.iterdir() if ".ahead-of-journal-" in p.name)
    assert [name.split(".")[0] for name in aside] == ["trial_1", "trial_2"], aside
    said = [line for line in second.output().splitlines() if "not in the journal" in line]
    assert len(said) == 2, second.output()[-3000:]
    assert json.loads((project / "oracle.json").read_text())["end_order"] == ["0", "1", "2"]
    best = json.loads((tmp_path / "results" / "itest" / "best_hyperparameters.json").read_text())
    assert best["trial_id"] == "0" and best["score"] == 0.5, best  # only what the journal holds counts


def test_the_running_trials_missing_trial_json_is_rebuilt_from_the_journal(tmp_path):
    env = cluster_env(tmp_path, free_port(), **FIXTURES)
    project = tmp_path / "state" / "itest"
    with processes() as start:
        first, client = _serve(start, env, tmp_path, "chief-1")
        worker = ScriptedWorker(client, "w1")
        assert worker.register().ok
        trial = _take(worker)
        assert worker.finish(trial.trial_id, 0.5).ok
        running = _take(worker)
        wait_until(lambda: _written(project, running.trial_id, "RUNNING"), 10, 0.1, "the running trial's file")
        _stop(first)
        client.close()
        (project / f"trial_{running.trial_id}" / "trial.json").unlink()

        second, client = _serve(start, env, tmp_path, "chief-2")
        other = ScriptedWorker(client, "w2")  # w1 never comes back: its trial is retried after the lease
        assert other.register().ok
        done = other.run_until_stopped(timeout=60)
        assert second.wait(timeout=60) == 0, second.output()[-3000:]
        client.close()
    _no_traceback(first, second)
    assert running.trial_id in done and _finals(project) == ["0", "1", "2"]
    said = [line for line in second.output().splitlines() if "is missing: rewritten from the journal" in line]
    assert len(said) == 1 and f"trial_{running.trial_id}" in said[0], second.output()[-3000:]
    assert json.loads((project / f"trial_{running.trial_id}" / "trial.json").read_text())["status"] == "COMPLETED"


def _read_only_mount_works() -> bool:
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind -o ro /tmp /tmp"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.parametrize("how", ["read-only", "a folder in its place"])
def test_a_journal_that_cannot_be_written_at_start_is_one_line_and_exit_1(tmp_path, how):
    if how == "read-only" and (shutil.which("unshare") is None or not _read_only_mount_works()):
        pytest.skip("no mount namespace here to make the journal read-only")
    env = cluster_env(tmp_path, free_port(), **FIXTURES)
    project = tmp_path / "state" / "itest"
    journal = project / "ktcluster-runs.jsonl"
    with processes() as start:
        first, client = _serve(start, env, tmp_path, "chief-1")
        worker = ScriptedWorker(client, "w1")
        assert worker.register().ok
        assert worker.finish(_take(worker).trial_id, 0.5).ok
        _stop(first)
        client.close()
        before = journal.read_bytes()
        if how == "read-only":
            command = ["unshare", "-m", "sh", "-c", f'mount --bind -o ro "{journal}" "{journal}" && exec "$@"', "sh",
                       *python("chief")]
        else:
            journal.rename(project / "journal.bak")
            journal.mkdir()
            command = python("chief")
        began = time.monotonic()
        second = start("chief-2", command, env, tmp_path)
        assert second.wait(timeout=120) == 1, second.output()[-3000:]
    lines = [line for line in second.output().splitlines() if line.startswith("ktcluster chief:")]
    assert len(lines) == 1 and "ktcluster-runs.jsonl" in lines[0] and "writable" in lines[0], second.output()[-3000:]
    assert "Traceback" not in second.output() and time.monotonic() - began < 120
    if how == "read-only":
        assert journal.read_bytes() == before
    assert os.path.exists(project / "oracle.json")
