"""Chief + 2 workers + TensorBoard as real processes on loopback, digits data; the chief's
metrics endpoint is scraped throughout the search."""

import collections
import csv
import json
import os
import signal
import time

import pytest

from tests.procs import (free_port, cluster_env, hparams_session_groups, http_json, processes, prometheus_samples,
                         python, scrape, wait_until)

MAX_TRIALS = 6


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    port, tb_port, metrics_port = free_port(), free_port(), free_port()
    env = cluster_env(tmp, port, KTC_MAX_TRIALS=MAX_TRIALS, KTC_EPOCHS=1, KTC_SEED=3, KTC_METRICS_PORT=metrics_port)
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp)
        workers = [start(f"worker-{n}", python("worker"), {**env, "KERASTUNER_TUNER_ID": f"worker-{n}"}, tmp)
                   for n in (1, 2)]
        scrapes = _scrape_until_exit(chief, workers, metrics_port, str(tmp / "state" / "itest" / "ktcluster-runs.jsonl"),
                                     timeout=420)
        codes = {"chief": chief.wait(timeout=10)}
        for n, worker in enumerate(workers, 1):
            codes[f"worker-{n}"] = worker.wait(timeout=60)
        tb = start("tensorboard", [os.path.join(os.path.dirname(python("x")[0]), "tensorboard"),
                                   "--logdir", str(tmp / "logs" / "itest"), "--port", str(tb_port),
                                   "--host", "127.0.0.1"], env, tmp)
        base = f"http://127.0.0.1:{tb_port}"
        yield {"tmp": tmp, "codes": codes, "chief": chief, "workers": workers, "tb": base, "tb_proc": tb,
               "scrapes": scrapes}


def _scrape_until_exit(chief, workers, port: int, journal: str, timeout: float) -> list[dict]:
    """Every exposition of the chief's metrics endpoint, scraped every 0.1 s until the chief exits,
    parsed with prometheus_client's parser. So that the end is scraped on any machine, the worker
    left idle by the last trial is paused (SIGSTOP) until a scrape shows the search finished: the
    chief waits for it to hear STOPPED (KTC_STOP_GRACE_SECONDS) before it exits."""
    scrapes, paused, resumed, deadline = [], None, False, time.monotonic() + timeout
    try:
        while chief.popen.poll() is None and time.monotonic() < deadline:
            try:
                scrapes.append(prometheus_samples(scrape(port, timeout=5)))
            except OSError:  # not serving yet, or gone
                pass
            last = scrapes[-1] if scrapes else {}
            if paused is None and last.get(("ktc_search_trials_done", frozenset())) == MAX_TRIALS - 1:
                lines = [json.loads(line) for line in open(journal).read().split("\n")[:-1]]  # whole lines
                busy = {e["trial"]: e.get("worker") for e in lines if e["event"] in ("start", "end")}
                running = [worker for worker in busy.values() if worker]  # start lines name their worker
                if len(running) == 1:
                    paused = next(w for n, w in enumerate(workers, 1) if f"worker-{n}" not in running)
                    os.kill(paused.pid, signal.SIGSTOP)
            if paused is not None and not resumed and last.get(("ktc_search_finished", frozenset())) == 1:
                os.kill(paused.pid, signal.SIGCONT)
                resumed = True
            time.sleep(0.1)
    finally:
        if paused is not None and not resumed:
            os.kill(paused.pid, signal.SIGCONT)
    return scrapes


def _metric(samples: dict, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


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


def test_metrics_scraped_during_the_search_agree_with_trials_csv_at_the_end(cluster):
    # before the chief loaded its data and model it serves the RPC series only (at 0)
    scrapes = [m for m in cluster["scrapes"] if ("ktc_search_trials_total", frozenset()) in m]
    rows = list(csv.DictReader(open(cluster["tmp"] / "results" / "itest" / "trials.csv")))
    best = json.load(open(cluster["tmp"] / "results" / "itest" / "best_hyperparameters.json"))
    assert any(_metric(m, "ktc_trials", state="RUNNING") > 0 for m in scrapes), len(scrapes)  # during the search
    assert max(_metric(m, "ktc_workers_registered") for m in scrapes) == 2
    assert max(_metric(m, "ktc_workers_alive") for m in scrapes) == 2
    done = [_metric(m, "ktc_search_trials_done") for m in scrapes]
    assert done == sorted(done) and done[0] < MAX_TRIALS  # it only grows, from before the end
    calls = [_metric(m, "ktc_rpc_duration_seconds_count", method="CreateTrial") for m in scrapes]
    assert calls == sorted(calls) and calls[-1] >= MAX_TRIALS  # one CreateTrial per trial at least
    final = scrapes[-1]  # the endpoint serves until the results are written: its last state is the end
    assert _metric(final, "ktc_search_finished") == 1
    assert _metric(final, "ktc_search_trials_done") == _metric(final, "ktc_search_trials_total") == len(rows)
    statuses = collections.Counter(r["status"] for r in rows)
    for state in set(statuses) | {"RUNNING", "COMPLETED", "FAILED", "INVALID"}:
        assert _metric(final, "ktc_trials", state=state) == statuses[state], state
    lost = sum(_metric(final, "ktc_attempts_lost_total", reason=r) for r in ("lease", "taken_over", "failure"))
    assert lost == sum(int(r["attempts"]) - 1 for r in rows) == 0  # no attempt was lost here
    assert _metric(final, "ktc_leases_expired_total") == 0 and _metric(final, "ktc_trials_queued") == 0
    assert _metric(final, "ktc_best_score", objective="val_accuracy") == pytest.approx(best["score"])
    assert _metric(final, "ktc_rpc_requests_total", method="EndTrial", code="OK") == len(rows)
    assert _metric(final, "ktc_rpc_requests_total", method="Register", code="OK") >= 2
    assert _metric(final, "ktc_rpc_duration_seconds_count", method="CreateTrial") >= len(rows) + 2  # + STOPPED
    assert _metric(final, "ktc_storage_faults_total", what="journal") == 0


def test_status_json_gives_the_tables_state_and_trials_csv(cluster):
    import subprocess
    import sys

    from shared.results import cell
    from tests.conftest import ROOT

    env = cluster_env(cluster["tmp"], free_port())
    code = ("import sys; from chief.__main__ import main; main(['status']); print('--'); rc = main(['status', '--json']); "
            "print('TF', 'tensorflow' in sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    table, rest = proc.stdout.split("\n--\n")
    document_line, tf = rest.splitlines()
    assert tf == "TF False"  # as `status`: no TensorFlow
    document = json.loads(document_line)  # one line, strict JSON
    rows = list(csv.DictReader(open(cluster["tmp"] / "results" / "itest" / "trials.csv")))
    best = json.load(open(cluster["tmp"] / "results" / "itest" / "best_hyperparameters.json"))
    assert document["progress"]["line"] == table.splitlines()[0]
    assert {k: document["progress"][k] for k in ("done", "total", "completed", "failed", "queued", "finished")} == {
        "done": MAX_TRIALS, "total": MAX_TRIALS, "completed": MAX_TRIALS, "failed": 0, "queued": 0, "finished": True}
    assert document["objective"] == {"name": "val_accuracy", "direction": "max"}
    assert document["best"]["trial_id"] == best["trial_id"] and document["best"]["score"] == best["score"]
    assert document["best"]["hyperparameters"] == best["hyperparameters"]
    assert [t["trial_id"] for t in document["trials"]] == [r["trial_id"] for r in rows]
    table_rows = {line.split()[0]: line.split() for line in table.splitlines()[3:]}
    for trial, row in zip(document["trials"], rows):
        assert (trial["status"], trial["worker"], str(trial["attempts"])) == (row["status"], row["worker"],
                                                                               row["attempts"])
        assert trial["score"] == pytest.approx(float(row["score"]))
        assert {k: cell(v) for k, v in trial["hyperparameters"].items()} == {k: row[k] for k in trial["hyperparameters"]}
        assert table_rows[trial["trial_id"]][1:3] == [trial["worker"], trial["status"]]


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
