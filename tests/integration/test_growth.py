"""Issue #22, items 6 and 7, with real chief and worker processes on loopback.

6. A finished project grows: KTC_MAX_TRIALS raised, chief and workers started at the same moment
   (as Compose starts them), the new trials run and every process exits 0. The same project with
   the same settings is only reported: chief and worker both exit 0 within seconds, nothing re-run.
   (A worker treats "finished" as final only when the chief says so: shared.layout.FinishedWatch.)
7. A search space that changes a recorded hyperparameter's domain is refused at the chief's start
   (exit 2, one line naming it with both domains, oracle.json untouched) and its worker exits with
   the chief's code; a space that only adds a hyperparameter continues.

KTC_CHIEF_TIMEOUT_SECONDS is set far above every bound here, so a worker that waited for it
fails the test.
"""

import json
import shutil
import subprocess

import pytest

from shared import layout
from tests.procs import cluster_env, free_port, processes, python

FIXTURES = dict(KTC_DATASET="tests.fixtures.models:tiny_data", KTC_MODEL="tests.fixtures.space_models:build_model",
                KTC_LEASE_SECONDS=6, KTC_HEARTBEAT_SECONDS=1, KTC_STOP_GRACE_SECONDS=5,
                KTC_CHIEF_TIMEOUT_SECONDS=240, KTC_SEED=5, KTC_EPOCHS=1, KTC_MAX_TRIALS=2)
CHANGED = ("KTC_MODEL: hyperparameter 'units' was Int(16..64), is now Int(100..200): project itest searched "
           "Int(16..64) (its trials and oracle.json); start a new KTC_PROJECT to search a different space, or "
           "change the model back")


def _env(tmp_path, **overrides):
    return cluster_env(tmp_path, free_port(), **{**FIXTURES, **{k: str(v) for k, v in overrides.items()}})


def _worker_env(env, worker_id):
    return {**env, "KERASTUNER_TUNER_ID": worker_id}


def _exit_within(proc, seconds) -> int | None:
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def _project(tmp_path):
    return tmp_path / "state" / "itest"


def _ends(tmp_path) -> list[dict]:
    lines = (_project(tmp_path) / "ktcluster-runs.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == "end" and e.get("status") == "COMPLETED"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-trial search (units drawn from Int(16..64)): its folder."""
    tmp_path = tmp_path_factory.mktemp("finished")
    env = _env(tmp_path)
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        worker = start("w1", python("worker"), _worker_env(env, "worker-1"), tmp_path)
        assert _exit_within(chief, 300) == 0, chief.output()[-3000:]
        assert _exit_within(worker, 60) == 0, worker.output()[-3000:]
    assert layout.search_finished(str(_project(tmp_path))) and len(_ends(tmp_path)) == 2
    return tmp_path


def _copy(source, tmp_path):
    for folder in ("state", "logs"):
        shutil.copytree(source / folder, tmp_path / folder)


def test_raising_max_trials_on_a_finished_project_continues_it_with_workers_started_with_the_chief(
        finished, tmp_path):
    """Also: a hyperparameter added to the space since (SPACE_TEST_EXTRA) is accepted."""
    _copy(finished, tmp_path)
    env = _env(tmp_path, KTC_MAX_TRIALS=4, SPACE_TEST_EXTRA=1)
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        workers = [start(f"w{n}", python("worker"), _worker_env(env, f"worker-{n}"), tmp_path) for n in (1, 2)]
        assert _exit_within(chief, 300) == 0, chief.output()[-3000:] + workers[0].output()[-2000:]
        assert [_exit_within(w, 60) for w in workers] == [0, 0], [w.output()[-2000:] for w in workers]
    out = chief.output()
    assert "KTC_MAX_TRIALS 2 -> 4 (applied)" in out and "search finished: 4 completed" in out, out[-3000:]
    assert "added to project itest's search space: activation" in out
    ends = _ends(tmp_path)
    assert len(ends) == 4 and len({e["trial"] for e in ends}) == 4, ends  # two new trials, none re-run
    for worker in workers:
        assert "the chief continues project itest" in worker.output(), worker.output()[-2000:]
        assert "nothing to do" not in worker.output()
    assert layout.search_finished(str(_project(tmp_path)))


def test_a_finished_project_only_reported_ends_the_worker_started_with_its_chief_within_seconds(finished, tmp_path):
    _copy(finished, tmp_path)
    before = (_project(tmp_path) / "ktcluster-runs.jsonl").read_bytes()
    env = _env(tmp_path)
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        worker = start("w1", python("worker"), _worker_env(env, "worker-1"), tmp_path)
        assert _exit_within(chief, 90) == 0, chief.output()[-3000:]
        assert _exit_within(worker, 30) == 0, worker.output()[-3000:]  # not KTC_CHIEF_TIMEOUT_SECONDS (240)
    assert "is already finished: reporting it as it was run" in chief.output()
    assert "project itest is already finished (its chief says so); nothing to do" in worker.output()
    assert (_project(tmp_path) / "ktcluster-runs.jsonl").read_bytes() == before  # nothing re-run


def test_a_changed_hyperparameter_domain_is_refused_at_the_chiefs_start(finished, tmp_path):
    _copy(finished, tmp_path)
    oracle_json = _project(tmp_path) / "oracle.json"
    before = oracle_json.read_bytes()
    env = _env(tmp_path, KTC_MAX_TRIALS=3, SPACE_TEST_UNITS="100,200")
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        worker = start("w1", python("worker"), _worker_env(env, "worker-1"), tmp_path)
        assert _exit_within(chief, 180) == 2, chief.output()[-3000:]
        assert _exit_within(worker, 60) == 2, worker.output()[-3000:]
    assert f"ktcluster chief: {CHANGED}" in chief.output().splitlines(), chief.output()[-3000:]
    assert "oracle serving" not in chief.output()
    assert "hyperparameter 'units' was Int(16..64), is now Int(100..200)" in worker.output()
    assert oracle_json.read_bytes() == before
    assert len(_ends(tmp_path)) == 2
