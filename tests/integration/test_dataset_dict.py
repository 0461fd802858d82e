"""Issue #22 item 5 with real processes: KTC_DATASET returning keras.Model.fit keyword arguments.

- examples/tfdata_files.py (TFRecord shards streamed by tf.data) runs as a real search: chief + 2
  workers, every trial COMPLETED once, results written, the metric names learnt from one batch;
- a dict with unknown keys ends a chief and a worker each with exit 2 and one line naming
  KTC_DATASET, the unknown keys and what is allowed.
"""

import csv
import json
import os

from tests.conftest import ROOT
from tests.procs import cluster_env, free_port, processes, python

EXAMPLES = os.path.join(ROOT, "examples")
TRIALS = 4


def test_tf_data_pipeline_from_files_runs_a_search(tmp_path):
    env = cluster_env(tmp_path, free_port(), KTC_MAX_TRIALS=TRIALS, KTC_EPOCHS=2, KTC_PROJECT="tfdata", KTC_SEED=7,
                      KTC_DATASET="tfdata_files:load_data", KTC_MODEL="tfdata_files:build_model",
                      PYTHONPATH=f"{ROOT}{os.pathsep}{EXAMPLES}")
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        workers = [start(f"worker-{n}", python("worker"), {**env, "KERASTUNER_TUNER_ID": f"worker-{n}"}, tmp_path)
                   for n in (1, 2)]
        assert chief.wait(timeout=300) == 0, chief.output()[-3000:]
        for worker in workers:
            assert worker.wait(timeout=60) == 0, worker.output()[-3000:]
    results = tmp_path / "results" / "tfdata"
    rows = list(csv.DictReader(open(results / "trials.csv")))
    assert sorted(r["trial_id"] for r in rows) == [str(i) for i in range(TRIALS)]
    assert {r["status"] for r in rows} == {"COMPLETED"} and all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    assert {"units", "dropout", "learning_rate"} <= set(rows[0])
    best = json.load(open(results / "best_hyperparameters.json"))
    assert best["objective"] == "val_accuracy" and best["trial_id"] in {r["trial_id"] for r in rows}
    assert (results / "best_model.keras").exists()
    config_line = next(line for line in chief.output().splitlines() if "HParams config:" in line)
    assert "'accuracy'" in config_line and "'loss'" in config_line, config_line  # declared for HParams
    assert sorted(os.listdir(tmp_path / "data")) == ["digits-tfrecord"]  # written once, no copy left behind
    for worker in workers:  # each epoch is steps_per_epoch batches of the repeating pipeline
        assert "45/45 - " in worker.output(), worker.output()[-2000:]


def test_a_dict_with_unknown_keys_ends_chief_and_worker_with_exit_2(tmp_path):
    outputs = {}
    with processes() as start:
        procs = {}
        for role in ("chief", "worker"):
            folder = tmp_path / role
            folder.mkdir()
            env = cluster_env(folder, free_port(), KTC_DATASET="tests.fixtures.datasets:unknown_keys",
                              KTC_MODEL="tests.fixtures.models:build_model")
            procs[role] = start(role, python(role), {**env, "KERASTUNER_TUNER_ID": f"{role}-1"}, folder)
        for role, proc in procs.items():
            assert proc.wait(timeout=120) == 2, proc.output()[-2000:]
            outputs[role] = proc.output()
    for role, output in outputs.items():
        lines = [line for line in output.splitlines() if "KTC_DATASET=" in line]
        assert lines == [f"ktcluster {role}: KTC_DATASET=tests.fixtures.datasets:unknown_keys: unknown keys "
                         "'validation_date', 'nb_epoch' in the dict it returned; allowed: x, y, batch_size, "
                         "validation_split, validation_data, shuffle, class_weight, sample_weight, steps_per_epoch, "
                         "validation_steps, validation_batch_size, validation_freq (keras.Model.fit's keyword "
                         "arguments but epochs, callbacks, verbose, initial_epoch, which ktcluster sets)"], output
        assert "Traceback" not in output
