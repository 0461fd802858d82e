"""Chief + 2 workers + TensorBoard as real processes on loopback, digits data."""

import csv
import json
import os

import pytest

from tests.procs import (free_port, cluster_env, hparams_session_groups, http_json, processes, python,
                         wait_until)

MAX_TRIALS = 6


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    port, tb_port = free_port(), free_port()
    env = cluster_env(tmp, port, KTC_MAX_TRIALS=MAX_TRIALS, KTC_EPOCHS=1, KTC_SEED=3)
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp)
        workers = [start(f"worker-{n}", python("worker"), {**env, "KERASTUNER_TUNER_ID": f"worker-{n}"}, tmp)
                   for n in (1, 2)]
        codes = {"chief": chief.wait(timeout=420)}
        for n, worker in enumerate(workers, 1):
            codes[f"worker-{n}"] = worker.wait(timeout=60)
        tb = start("tensorboard", [os.path.join(os.path.dirname(python("x")[0]), "tensorboard"),
                                   "--logdir", str(tmp / "logs" / "itest"), "--port", str(tb_port),
                                   "--host", "127.0.0.1"], env, tmp)
        base = f"http://127.0.0.1:{tb_port}"
        yield {"tmp": tmp, "codes": codes, "chief": chief, "workers": workers, "tb": base, "tb_proc": tb}


def test_every_process_exits_0(cluster):
    assert cluster["codes"] == {"chief": 0, "worker-1": 0, "worker-2": 0}, cluster["chief"].output()[-3000:]


def test_every_trial_completed_once_by_both_workers(cluster):
    rows = list(csv.DictReader(open(cluster["tmp"] / "results" / "itest" / "trials.csv")))
    assert len(rows) == MAX_TRIALS
    assert sorted(r["trial_id"] for r in rows) == [str(i) for i in range(MAX_TRIALS)]
    assert {r["status"] for r in rows} == {"COMPLETED"}
    assert {r["worker"] for r in rows} == {"worker-1", "worker-2"}
    assert all(0.0 <= float(r["score"]) <= 1.0 and float(r["seconds"]) > 0 for r in rows)
    assert {"model_type", "dropout"} <= set(rows[0])


def test_best_hyperparameters_match_the_best_row(cluster):
    rows = list(csv.DictReader(open(cluster["tmp"] / "results" / "itest" / "trials.csv")))
    best = json.load(open(cluster["tmp"] / "results" / "itest" / "best_hyperparameters.json"))
    top = max(rows, key=lambda r: float(r["score"]))
    assert best["trial_id"] == top["trial_id"] and best["score"] == pytest.approx(float(top["score"]))
    assert best["objective"] == "val_accuracy" and best["hyperparameters"]["model_type"] == top["model_type"]


def test_chief_logs_progress_and_results(cluster):
    out = cluster["chief"].output()
    assert f"progress: {MAX_TRIALS}/{MAX_TRIALS} done (0 failed)" in out
    assert "search finished: 6 completed, 0 failed of 6; best val_accuracy=" in out


def test_tensorboard_hparams_shows_every_trial(cluster):
    base = cluster["tb"]
    groups = wait_until(lambda: _groups_if_all(base), timeout=90, what="TensorBoard to load every trial")
    by_trial = {g["name"]: g for g in groups}
    rows = {r["trial_id"]: r for r in csv.DictReader(open(cluster["tmp"] / "results" / "itest" / "trials.csv"))}
    assert set(by_trial) == set(rows)
    for trial_id, group in by_trial.items():
        assert group["hparams"]["model_type"] == rows[trial_id]["model_type"]
        assert group["hparams"]["worker"] == rows[trial_id]["worker"]
        assert group["hparams"]["device"] == "CPU"
        val = [m["value"] for m in group["metricValues"] if m["name"]["tag"] == "trial/val_accuracy"]
        assert val and val[0] == pytest.approx(float(rows[trial_id]["score"]), abs=1e-6)  # the chief's score


def test_tensorboard_serves_curves_and_graphs(cluster):
    runs = {f"{t}/execution0" for t in map(str, range(MAX_TRIALS))}
    tags = http_json(cluster["tb"] + "/data/plugin/scalars/tags")
    assert all({"epoch/loss", "epoch/val_accuracy"} <= set(tags[run]) for run in runs), tags
    plugins = http_json(cluster["tb"] + "/data/plugins_listing")
    assert plugins["scalars"]["enabled"] and plugins["graphs"]["enabled"] and plugins["hparams"]["enabled"]
    graphs = http_json(cluster["tb"] + "/data/plugin/graphs/info")
    assert all(graphs[run]["run_graph"] and graphs[run]["tags"]["keras"]["conceptual_graph"] for run in runs), graphs


def _groups_if_all(base):
    try:
        groups = hparams_session_groups(base)
    except OSError:
        return None
    complete = [g for g in groups if any(m["name"]["tag"] == "trial/val_accuracy" for m in g.get("metricValues", []))]
    return groups if len(complete) >= MAX_TRIALS else None


def test_bring_your_own_model_and_data(tmp_path):
    """The wine example runs with settings only (no kit edits): chief + 1 worker."""
    from tests.conftest import ROOT

    port = free_port()
    env = cluster_env(tmp_path, port, KTC_MAX_TRIALS=3, KTC_EPOCHS=2, KTC_PROJECT="wine",
                      KTC_DATASET="wine:load_data", KTC_MODEL="wine:build_model",
                      PYTHONPATH=f"{ROOT}{os.pathsep}{os.path.join(ROOT, 'examples', 'wine')}")
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        worker = start("worker", python("worker"), {**env, "KERASTUNER_TUNER_ID": "box-a"}, tmp_path)
        assert chief.wait(timeout=300) == 0, chief.output()[-2000:]
        assert worker.wait(timeout=60) == 0, worker.output()[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "results" / "wine" / "trials.csv")))
    assert [r["status"] for r in rows] == ["COMPLETED"] * 3 and {r["worker"] for r in rows} == {"box-a"}
    assert {"layers", "units_0", "dropout", "learning_rate"} <= set(rows[0])


def test_status_command_reports_the_finished_cluster(cluster):
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.procs import cluster_env as env_for

    env = env_for(cluster["tmp"], free_port())  # KTC_MAX_TRIALS unset: the project's own budget counts
    code = "import sys; from chief.__main__ import main; rc = main(['status']); print('TF', 'tensorflow' in sys.modules); sys.exit(rc)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"progress: {MAX_TRIALS}/{MAX_TRIALS} done (0 failed), running [none], best val_accuracy ")
    assert lines[0].endswith(", search finished"), lines[0]  # no ETA
    assert lines[2].split()[:5] == ["trial_id", "worker", "status", "score", "seconds"]
    assert len([line for line in lines if " COMPLETED " in line]) == MAX_TRIALS
    assert lines[-1] == "TF False"  # status needs no TensorFlow


def test_best_model_is_saved_as_a_keras_file(cluster):
    import keras

    best = json.load(open(cluster["tmp"] / "results" / "itest" / "best_hyperparameters.json"))
    model = keras.models.load_model(cluster["tmp"] / "results" / "itest" / "best_model.keras")
    from shared import data

    ds = data.load("digits", str(cluster["tmp"]))
    accuracy = model.evaluate(ds.x_val, ds.y_val, verbose=0, return_dict=True)["accuracy"]
    assert accuracy == pytest.approx(best["score"], abs=1e-4)


def test_hparams_config_declares_the_whole_space(cluster):
    experiment = http_json(cluster["tb"] + "/data/plugin/hparams/experiment", {"experimentName": ""})
    infos = {h["name"]: h for h in experiment["hparamInfos"]}
    assert set(infos) == {"model_type", "mlp_layers", "units_0", "units_1", "units_2", "dropout",
                          "cnn_layers", "filters_0", "filters_1", "filters_2", "worker", "device", "status", "error"}
    assert infos["units_2"]["domainDiscrete"] == [32, 64, 96, 128]  # discrete ints, not a float range
    assert infos["mlp_layers"]["domainDiscrete"] == [1, 2, 3]
    assert infos["dropout"]["domainDiscrete"] == [False, True]
    assert sorted(infos["model_type"]["domainDiscrete"]) == ["cnn", "mlp"]
    metrics = {m["name"]["tag"]: m for m in experiment["metricInfos"]}
    assert experiment["metricInfos"][0]["name"]["tag"] == "trial/val_accuracy"
    assert metrics["trial/val_accuracy"]["description"].startswith("objective: maximize val_accuracy")
    assert metrics["trial/val_accuracy"]["displayName"] == "val accuracy (objective, max)"
    assert "trial/loss" in metrics


def test_each_trial_shows_only_the_values_its_model_used(cluster):
    groups = wait_until(lambda: _groups_if_all(cluster["tb"]), timeout=90, what="every trial")
    for group in groups:
        names = set(group["hparams"])
        if group["hparams"]["model_type"] == "mlp":
            assert not names & {"cnn_layers", "filters_0", "filters_1", "filters_2"}, group
            assert len([n for n in names if n.startswith("units_")]) == int(group["hparams"]["mlp_layers"])
        else:
            assert not names & {"mlp_layers", "units_0", "units_1", "units_2"}, group
            assert len([n for n in names if n.startswith("filters_")]) == int(group["hparams"]["cnn_layers"])
        assert [s["status"] for s in group["sessions"]] == ["STATUS_SUCCESS"]
