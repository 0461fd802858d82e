"""Issue 21 (D): a worker whose model or settings differ from the chief's is refused at Register.

On d1fbc2d a worker started with another KTC_MODEL than the chief was accepted: its space was
mixed into the chief's, and the chief exited 1 at the end on a load_weights shape mismatch. Now it
exits 2 at once with one line naming each difference, and trains nothing.
"""

from tests.integration.test_edges import _env, _events, _exit_code, _port, _worker_env
from tests.procs import processes, python
from tests.wire import ready


def test_a_worker_with_another_model_and_epochs_exits_2_naming_both_and_trains_nothing(tmp_path):
    env = _env(tmp_path, KTC_MAX_TRIALS=2)
    other = {**_worker_env(env, "worker-1"), "KTC_MODEL": "tests.fixtures.models:build_flaky", "KTC_EPOCHS": "3"}
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        assert ready(_port(env), 180), chief.output()[-2000:]
        worker = start("w1", python("worker"), other, tmp_path)
        code = _exit_code(worker, 90)
        chief.stop()
    lines = [line for line in worker.output().splitlines() if line.startswith("ktcluster worker:")]
    starts = [e for e in _events(tmp_path) if e.get("event") == "start"]
    assert code == 2 and len(lines) == 1, f"exit {code}: {worker.output()[-2000:]}"
    assert "KTC_MODEL" in lines[0] and "KTC_EPOCHS" in lines[0] and "build_flaky" in lines[0], lines
    assert "Traceback" not in worker.output() and not starts, starts
