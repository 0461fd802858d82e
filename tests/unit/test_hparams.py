"""What TensorBoard's HParams dashboard gets from ktcluster's records, read back by a real TensorBoard.

Trials of the guide's space are recorded with the worker's own recorder (and, for a dead
attempt, the chief's `mark_attempt_lost`), their metrics written where Keras writes them; the
dashboard's rules are applied to what TensorBoard serves: it ticks the first five
hyperparameters of the experiment (sorted by `differs`, then name) and the first five metrics,
lists sessions of status unknown, success, failure and running, and draws a trial only if it has
a value on every ticked column.
"""

import os
import sys

import keras
import keras_tuner as kt
import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import api_pb2

from shared import hparams, hypermodels, tuning
from tests.procs import free_port, hparams_session_groups, http_json, processes, wait_until

OBJECTIVE = kt.Objective("val_accuracy", "max")
METRICS = ["loss", "accuracy"]
DASHBOARD_STATUSES = {"STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"}


def _space():
    build = hypermodels.guide_build_model((8, 8, 1), 10)
    return build, tuning.explore_space(build)


def _trial(space, trial_id, **values):
    hp = space.copy()
    hp.values = {**{h.name: h.default for h in space.space}, **values}
    return kt.engine.trial.Trial(hp, trial_id=trial_id)


def _used(build, trial):
    with tuning.recording_used(trial.hyperparameters) as used:
        build(trial.hyperparameters)
    return used


def _epochs(log_dir, accuracies):
    """Keras' curves: epoch_accuracy/epoch_loss per epoch in <run>/validation and <run>/train."""
    for split in ("validation", "train"):
        writer = tf.summary.create_file_writer(os.path.join(log_dir, split))
        with writer.as_default():
            for step, accuracy in enumerate(accuracies):
                tf.summary.scalar("epoch_accuracy", accuracy, step=step)
                tf.summary.scalar("epoch_loss", 1 - accuracy, step=step)
        writer.close()


def _run(build, root, trial, worker, attempt, accuracies, outcome, message=""):
    """One attempt as the worker records it; outcome None: the worker died mid-training;
    "running": still training; "taken": the chief took it away (lease expired) from a live worker."""
    recorder = hparams.TrialRecorder(hparams.attempt_log_dir(str(root), trial.trial_id, attempt, 0), trial,
                                     worker, "CPU", _used(build, trial) if outcome != "build" else set(), attempt)
    if outcome != "build":
        recorder.on_train_begin()
        _epochs(recorder.log_dir, accuracies)
    if outcome == "ok":
        recorder.end(api_pb2.STATUS_SUCCESS)
    elif outcome in ("fail", "build"):
        recorder.end(api_pb2.STATUS_FAILURE, message)
    elif outcome == "taken":
        recorder.end(api_pb2.STATUS_FAILURE, message, lost=True)


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """Trials 0-1 MLP, 2-3 CNN, 4 retried (attempt 1 on worker-1 died after one epoch, the chief
    closed it, attempt 2 completed on worker-2), 5 failed in its build, 6 failed in fit, 7 retried
    without the chief's word (attempt 2's worker closes attempt 1); served by TensorBoard."""
    root = tmp_path_factory.mktemp("logs")
    build, space = _space()
    always = hparams.always_used(build, space)
    hparams.write_experiment_config(str(root), space, METRICS, OBJECTIVE, always)
    trials = {
        "0": _trial(space, "0", model_type="mlp", mlp_layers=2, units_0=64, units_1=32),
        "1": _trial(space, "1", model_type="mlp", dropout=True),
        "2": _trial(space, "2", model_type="cnn", cnn_layers=2, filters_0=32, filters_1=64),
        "3": _trial(space, "3", model_type="cnn", dropout=True),
        "4": _trial(space, "4", model_type="cnn", cnn_layers=1, filters_0=96),
        "5": _trial(space, "5", model_type="mlp", mlp_layers=3),
        "6": _trial(space, "6", model_type="mlp"),
        "7": _trial(space, "7", model_type="mlp", units_0=128),
        "8": _trial(space, "8", model_type="cnn"),
        "9": _trial(space, "9", model_type="mlp", dropout=True),
    }
    _run(build, root, trials["0"], "worker-1", 1, [0.5, 0.8], "ok")
    _run(build, root, trials["1"], "worker-2", 1, [0.4, 0.7], "ok")
    _run(build, root, trials["2"], "worker-1", 1, [0.6, 0.9], "ok")
    _run(build, root, trials["3"], "worker-2", 1, [0.3, 0.6], "ok")
    _run(build, root, trials["4"], "worker-1", 1, [0.1], None)  # killed after one epoch
    closed = hparams.mark_attempt_lost(str(root), "4", 1, "LeaseExpired: worker-1 silent for over 6s; re-queued")
    assert closed == 1 and hparams.mark_attempt_lost(str(root), "4", 1, "again") == 0  # idempotent
    _run(build, root, trials["4"], "worker-2", 2, [0.7, 0.95], "ok")
    _run(build, root, trials["5"], "worker-1", 1, [], "build",
         "Traceback (most recent call last):\n  ...\nValueError: bad combo: mlp_layers=3")
    _run(build, root, trials["6"], "worker-2", 1, [0.2], "fail", "FloatingPointError: loss became NaN")
    _run(build, root, trials["7"], "worker-2", 1, [0.3], None)
    assert hparams.close_earlier_attempts(str(root), "7", 2, "worker-1") == 1
    _run(build, root, trials["7"], "worker-1", 2, [0.5, 0.6], "ok")
    _run(build, root, trials["8"], "worker-1", 1, [0.4], "running")
    _run(build, root, trials["9"], "worker-2", 1, [0.2], "taken", "attempt taken away")
    _run(build, root, trials["9"], "worker-1", 2, [0.3, 0.5], "ok")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with processes() as start:
        start("tensorboard", [os.path.join(os.path.dirname(sys.executable), "tensorboard"), "--logdir", str(root),
                              "--port", str(port), "--host", "127.0.0.1"], dict(os.environ), str(root.parent))

        def groups():
            try:
                found = hparams_session_groups(base)
            except OSError:
                return None
            return found if len(found) >= 13 else None

        wait_until(groups, 90, what="TensorBoard to list the sessions")
        yield {"base": base, "always": always}


def _experiment(base):
    return http_json(f"{base}/data/plugin/hparams/experiment", {"experimentName": "", "hparamsLimit": 1000})


def _rows(base):
    """The rows the dashboard lists (its own status filter), by name."""
    body = {"experimentName": "", "allowedStatuses": sorted(DASHBOARD_STATUSES), "colParams": [],
            "aggregationType": "AGGREGATION_AVG", "startIndex": 0, "sliceSize": 1000, "includeMetrics": True}
    groups = http_json(f"{base}/data/plugin/hparams/session_groups", body)["sessionGroups"]
    return {g["name"]: g for g in groups}


def _metric(group, split, tag="epoch_accuracy"):
    values = [m["value"] for m in group.get("metricValues", []) if m["name"] == {"group": split, "tag": tag}]
    return values[0] if values else None


def test_first_opening_shows_model_type_worker_status_and_the_objective_for_every_trial(board):
    """Item 1: the dashboard's five default columns are ones every trial has a value for."""
    assert board["always"] == ["model_type", "dropout"]
    experiment = _experiment(board["base"])
    infos = experiment["hparamInfos"]
    ticked = [h["name"] for h in sorted(infos, key=lambda h: not h.get("differs", False))][:5]  # stable, as the UI
    assert set(ticked) == {"model_type", "worker", "status", "error", "dropout"}, ticked
    assert {"cnn_layers", "filters_0", "mlp_layers", "units_0", "device"} <= {h["name"] for h in infos}  # declared
    metrics = [m["name"] for m in experiment["metricInfos"]][:5]
    assert metrics[0] == {"group": "validation", "tag": "epoch_accuracy"}
    rows = _rows(board["base"])
    drawn = [name for name, g in rows.items()
             if all(name in g["hparams"] for name in ticked) and _metric(g, "validation") is not None]
    completed = [name for name, g in rows.items() if g["hparams"]["status"] == "completed"]
    assert sorted(completed) == ["0", "1", "2", "3", "4", "7", "9"]
    assert set(completed) <= set(drawn)  # every MLP and CNN trial: a line, a point
    assert {rows[n]["hparams"]["model_type"] for n in completed} == {"mlp", "cnn"}
    # and each records what its model used, no more
    assert "cnn_layers" not in rows["0"]["hparams"] and rows["0"]["hparams"]["units_1"] == 32
    assert "units_0" not in rows["2"]["hparams"] and rows["2"]["hparams"]["filters_1"] == 64


def test_a_retried_trial_is_one_row_with_the_attempt_that_produced_the_result(board):
    """Item 2: the result's row has attempt 2's worker and metrics only; attempt 1 is its own failed row."""
    rows = _rows(board["base"])
    result = rows["4"]
    assert result["hparams"]["worker"] == "worker-2" and result["hparams"]["status"] == "completed"
    assert [s["status"] for s in result["sessions"]] == ["STATUS_SUCCESS"]
    assert _metric(result, "validation") == pytest.approx(0.95)  # not averaged with the dead attempt's 0.1
    dead = rows["4 attempt 1"]
    assert dead["hparams"]["worker"] == "worker-1" and dead["hparams"]["status"] == "lost"
    assert dead["hparams"]["error"].startswith("LeaseExpired: worker-1 silent")
    assert dead["hparams"]["filters_0"] == 96 and [s["status"] for s in dead["sessions"]] == ["STATUS_FAILURE"]
    assert _metric(dead, "validation") == pytest.approx(0.1)
    # without the chief's word, the next attempt's worker closes the dead one
    assert (rows["7"]["hparams"]["worker"], _metric(rows["7"], "validation")) == ("worker-1", pytest.approx(0.6))
    assert rows["7 attempt 1"]["hparams"]["status"] == "lost" and rows["7 attempt 1"]["hparams"]["worker"] == "worker-2"
    taken = rows["9 attempt 1"]["hparams"]  # taken away from a live worker, which says so itself
    assert (taken["status"], taken["error"], taken["worker"]) == ("lost", "attempt taken away", "worker-2")
    assert len(rows) == 13  # 10 trials, 3 dead attempts
    # the placeholder sessions of ended attempts are gone from the dashboard's list
    live = [s["name"] for g in rows.values() for s in g["sessions"] if s["name"].endswith("/live")]
    assert live == ["8/execution0/live"]


def test_failed_trials_show_failed_and_why_in_the_default_columns(board):
    """Item 3: status and a short error are default columns; the full text is in the Text tab."""
    rows = _rows(board["base"])
    built = rows["5 attempt 1"]
    assert (built["hparams"]["status"], built["hparams"]["error"]) == ("failed", "ValueError: bad combo: mlp_layers=3")
    assert built["hparams"]["model_type"] == "mlp" and built["hparams"]["worker"] == "worker-1"
    assert [s["status"] for s in built["sessions"]] == ["STATUS_FAILURE"]
    running = rows["8 attempt 1"]  # listed while it trains, then replaced by its final session
    assert (running["hparams"]["status"], running["hparams"]["worker"]) == ("running", "worker-1")
    assert [s["status"] for s in running["sessions"]] == ["STATUS_UNKNOWN"]
    fit = rows["6 attempt 1"]
    assert (fit["hparams"]["status"], fit["hparams"]["error"]) == ("failed", "FloatingPointError: loss became NaN")
    assert all(g["hparams"]["error"] == "" for name, g in rows.items() if g["hparams"]["status"] == "completed")
    text = http_json(f"{board['base']}/data/plugin/text/text?run=5/execution0&tag=failure")
    assert "bad combo" in str(text)


def test_short_error_is_the_last_line_and_bounded():
    assert hparams.short_error("Traceback ...\n  File x\nValueError: no\n\n") == "ValueError: no"
    long = hparams.short_error("E: " + "x" * 200)
    assert len(long) == hparams.ERROR_CHARS and long.endswith("...")
    assert hparams.short_error("") == ""


def _tags(run_dir) -> set[str]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    tags = set()
    for name in os.listdir(run_dir):
        for event in EventFileLoader(os.path.join(run_dir, name)).Load():
            tags |= {v.tag for v in event.summary.value}
    return tags


@pytest.mark.parametrize("callback, batch_calls", [(keras.callbacks.TensorBoard, True),
                                                   (hparams.EpochTensorBoard, False)])
def test_the_workers_tensorboard_callback_writes_keras_curves_without_per_batch_summary_calls(
        tmp_path, monkeypatch, callback, batch_calls):
    names, board = [], callback(str(tmp_path))
    real = board.summary.scalar  # the summary module the callback writes with
    monkeypatch.setattr(board.summary, "scalar", lambda name, *a, **kw: names.append(name) or real(name, *a, **kw))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = tf.random.normal((64, 4)), tf.random.uniform((64,), maxval=3, dtype=tf.int32)
    model.fit(x, y, validation_data=(x, y), epochs=2, batch_size=8, verbose=0, callbacks=[board])
    assert any(n.startswith("batch_") for n in names) is batch_calls  # Keras's calls, each writing nothing
    assert _tags(tmp_path / "train") >= {"epoch_loss", "epoch_accuracy", "epoch_learning_rate", "keras"}
    assert _tags(tmp_path / "validation") >= {"epoch_loss", "epoch_accuracy"}
    assert not {t for t in _tags(tmp_path / "train") if t.startswith("batch_")}
