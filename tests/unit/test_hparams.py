"""What TensorBoard's HParams dashboard gets from ktcluster's records, read back by a real TensorBoard.

Trials of the guide's space are recorded with the worker's own board (and, for a dead
attempt, the chief's `mark_attempt_lost`), fed the epochs Keras would log and, for a completed
attempt, the metrics the oracle recorded (each at the trial's best epoch); the
dashboard's rules are applied to what TensorBoard serves: it ticks the first five
hyperparameters of the experiment (sorted by `differs`, then name) and the first five metrics,
lists sessions of status unknown, success, failure and running, and draws a trial only if it has
a value on every ticked column.
"""

import functools
import os
import sys

import keras_tuner as kt
import pytest
from tensorboard.plugins.hparams import api_pb2

from shared import hparams, hypermodels, tuning
from shared.logs import last_line
from shared.board import AttemptBoard
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


def _recorded(accuracies):
    """What the oracle records for a completed trial: every value at the best epoch (by val_accuracy)."""
    best = max(range(len(accuracies)), key=lambda i: accuracies[i])
    return {"val_accuracy": accuracies[best], "val_loss": 1 - accuracies[best], "accuracy": accuracies[best] - 0.01,
            "loss": 1.01 - accuracies[best]}


def _run(build, root, trial, worker, attempt, accuracies, outcome, message=""):
    """One attempt as the worker records it; outcome None: the worker died mid-training;
    "running": still training; "taken": the chief took it away (lease expired) from a live worker."""
    recorder = AttemptBoard(hparams.attempt_log_dir(str(root), trial.trial_id, attempt, 0), trial,
                                  worker, "CPU", _used(build, trial) if outcome != "build" else set(), attempt)
    if outcome != "build":
        recorder.on_train_begin()
        for epoch, accuracy in enumerate(accuracies):  # as Keras logs them
            recorder.on_epoch_end(epoch, {"loss": 1.01 - accuracy, "accuracy": accuracy - 0.01,
                                          "val_loss": 1 - accuracy, "val_accuracy": accuracy})
    if outcome == "ok":
        recorder.end(api_pb2.STATUS_SUCCESS, metrics=_recorded(accuracies))
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
    _run(build, root, trials["0"], "worker-1", 1, [0.97, 0.8], "ok")  # the best epoch is not the last
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


def _metric(group, name="val_accuracy"):
    """The row's value of an HParams metric (the oracle's record), None if it has none."""
    values = [m["value"] for m in group.get("metricValues", []) if m["name"]["tag"] == hparams.metric_tag(name)]
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
    assert metrics[0]["tag"] == "trial/val_accuracy" and not metrics[0].get("group")
    rows = _rows(board["base"])
    drawn = [name for name, g in rows.items()
             if all(name in g["hparams"] for name in ticked) and _metric(g) is not None]
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
    assert _metric(result) == pytest.approx(0.95)  # not averaged with the dead attempt
    dead = rows["4 attempt 1"]
    assert dead["hparams"]["worker"] == "worker-1" and dead["hparams"]["status"] == "lost"
    assert dead["hparams"]["error"].startswith("LeaseExpired: worker-1 silent")
    assert dead["hparams"]["filters_0"] == 96 and [s["status"] for s in dead["sessions"]] == ["STATUS_FAILURE"]
    assert _metric(dead) is None  # no result: its curve only (below)
    # without the chief's word, the next attempt's worker closes the dead one
    assert (rows["7"]["hparams"]["worker"], _metric(rows["7"])) == ("worker-1", pytest.approx(0.6))
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
    short_error = functools.partial(last_line, limit=hparams.ERROR_CHARS)
    assert short_error("Traceback ...\n  File x\nValueError: no\n\n") == "ValueError: no"
    long = short_error("E: " + "x" * 200)
    assert len(long) == hparams.ERROR_CHARS and long.endswith("...")
    assert short_error("") == ""


def test_the_objective_is_the_trials_score_with_its_direction_and_sorting_by_it_puts_the_chiefs_best_first(board):
    """Trial 0 peaked at its first epoch (0.97) and ended at 0.8: KerasTuner scores it 0.97,
    the best of the search, and so must the dashboard (its last epoch would rank trial 4 first)."""
    experiment = _experiment(board["base"])
    objective = experiment["metricInfos"][0]
    assert objective["name"]["tag"] == "trial/val_accuracy"
    assert objective["displayName"] == "val accuracy (objective, max)"
    assert "maximize val_accuracy" in objective["description"]
    others = {m["name"]["tag"]: m["displayName"] for m in experiment["metricInfos"][1:]}
    assert others["trial/val_loss"] == "val loss (best epoch)" and "trial/loss" in others
    rows = _rows(board["base"])
    assert _metric(rows["0"]) == pytest.approx(0.97) and _metric(rows["0"], "val_loss") == pytest.approx(0.03)
    body = {"experimentName": "", "allowedStatuses": sorted(DASHBOARD_STATUSES),
            "colParams": [{"metric": objective["name"], "order": "ORDER_DESC", "missingValuesFirst": False}],
            "aggregationType": "AGGREGATION_AVG", "startIndex": 0, "sliceSize": 1000, "includeMetrics": True}
    ranked = http_json(f"{board['base']}/data/plugin/hparams/session_groups", body)["sessionGroups"]
    assert [g["name"] for g in ranked[:3]] == ["0", "4", "2"]  # as the chief ranks them: 0.97, 0.95, 0.9


def test_the_per_epoch_curves_are_every_epoch_keras_logged_one_run_per_attempt(board):
    """Scalars: each trained attempt is one run with every epoch's training and validation values;
    a trial costs two runs (its run and its `live` placeholder), so the 10-trial search with 3 dead
    attempts is 26 runs, under the 40 past which TensorBoard ticks none on first opening."""
    runs = http_json(f"{board['base']}/data/runs")
    assert len(runs) == 26 and len(runs) <= 40, runs
    tags = http_json(f"{board['base']}/data/plugin/scalars/tags")
    trained = [r for r in runs if not r.endswith("/live") and r not in (".", "5/execution0")]
    assert sorted(tags) == sorted(trained)
    assert all({"epoch/loss", "epoch/accuracy", "epoch/val_loss", "epoch/val_accuracy"} <= set(tags[r]) for r in trained)
    curve = http_json(f"{board['base']}/data/plugin/scalars/scalars?run=0/execution0&tag=epoch/val_accuracy")
    assert [round(point[2], 4) for point in curve] == [0.97, 0.8]  # the curve itself, last epoch included
    dead = http_json(f"{board['base']}/data/plugin/scalars/scalars?run=4/execution0&tag=epoch/val_accuracy")
    assert [round(point[2], 4) for point in dead] == [0.1]  # the dead attempt's epoch, in its own run
