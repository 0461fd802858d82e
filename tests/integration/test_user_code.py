"""The user-code shapes of examples/ (issue #22), each a real search: chief + 2 workers as
processes on loopback, scikit-learn's digits, a few short trials.

- tune_training: a HyperModel whose fit tunes batch_size and shuffle; the fit-time values are
  in trials.csv, best_hyperparameters.json, the final line, `chief status`, the HParams config
  (declared with their domains) and every trial's HParams session;
- custom_tuner + callbacks: a RandomSearch subclass whose run_trial sets batch_size, with
  EarlyStopping and ReduceLROnPlateau from KTC_CALLBACKS: every trial COMPLETED after the 2
  epochs EarlyStopping let it run;
- tune_anything: a run_trial returning a number, KTC_MODEL=none: scored as KerasTuner scores
  it, its metric in HParams, no best_model.keras and the final line says so;
- bad user code: exit 2 and one line naming the setting, from the chief and from a worker.
"""

import csv
import glob
import json
import os
import subprocess

import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import metadata, plugin_data_pb2
from tensorboard.util import tensor_util

from shared import hparams
from tests.conftest import ROOT
from tests.procs import cluster_env, free_port, hparams_session_groups, http_json, processes, python, wait_until

EXAMPLES = os.path.join(ROOT, "examples")
PROJECT = "itest"


def _search(tmp, trials: int, epochs: int, **settings) -> dict:
    """Run a whole search; return its folder, exit codes and the chief's output."""
    settings.setdefault("PYTHONPATH", f"{ROOT}{os.pathsep}{EXAMPLES}")
    env = cluster_env(tmp, free_port(), KTC_MAX_TRIALS=trials, KTC_EPOCHS=epochs, KTC_SEED=5, **settings)
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp)
        workers = [start(f"worker-{n}", python("worker"), {**env, "KERASTUNER_TUNER_ID": f"worker-{n}"}, tmp)
                   for n in (1, 2)]
        codes = [chief.wait(timeout=300)] + [worker.wait(timeout=60) for worker in workers]
        outputs = [proc.output() for proc in [chief, *workers]]
    assert codes == [0, 0, 0], "\n".join(out[-2500:] for out in outputs)
    return {"tmp": tmp, "env": env, "chief": outputs[0], "workers": "".join(outputs[1:]),
            "results": tmp / "results" / PROJECT}


def _rows(search) -> list[dict]:
    return list(csv.DictReader(open(search["results"] / "trials.csv")))


def _config(search) -> tuple[dict, list[str]]:
    """The HParams experiment config the chief wrote: hyperparameter -> domain, metric tags."""
    [path] = glob.glob(str(search["tmp"] / "logs" / PROJECT / f"events.out.tfevents.*{hparams.CONFIG_SUFFIX}"))
    for event in EventFileLoader(path).Load():
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == metadata.PLUGIN_NAME:
                data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                domains = {}
                for info in data.experiment.hparam_infos:
                    discrete = [v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
                                for v in info.domain_discrete.values]
                    domains[info.name] = discrete or (info.domain_interval.min_value, info.domain_interval.max_value)
                return domains, [m.name.tag for m in data.experiment.metric_infos]
    raise AssertionError(f"no HParams experiment in {path}")


def _completed_once(search, trials: int) -> list[dict]:
    rows = _rows(search)
    assert sorted(r["trial_id"] for r in rows) == [str(i) for i in range(trials)]
    assert [r["status"] for r in rows] == ["COMPLETED"] * trials and {r["attempts"] for r in rows} == {"1"}
    return rows


@pytest.fixture(scope="module")
def tune_training(tmp_path_factory):
    return _search(tmp_path_factory.mktemp("training"), 4, 1, KTC_MODEL="tune_training:TuneTraining")


def test_fit_time_hyperparameters_are_in_the_results_and_the_final_line(tune_training):
    rows = _completed_once(tune_training, 4)
    assert all(r["batch_size"] in ("16", "32", "64") and r["shuffle"] in ("True", "False") and r["units"]
               for r in rows), rows
    assert len({(r["batch_size"], r["shuffle"]) for r in rows}) > 1  # drawn by the oracle, not only defaults
    best = json.load(open(tune_training["results"] / "best_hyperparameters.json"))
    top = next(r for r in rows if r["trial_id"] == best["trial_id"])
    assert str(best["hyperparameters"]["batch_size"]) == top["batch_size"]
    assert str(best["hyperparameters"]["shuffle"]) == top["shuffle"]
    final = [line for line in tune_training["chief"].splitlines() if "search finished: 4 completed" in line][0]
    assert f'"batch_size": {top["batch_size"]}' in final and '"shuffle": ' in final
    assert "best model in " in final and os.path.exists(tune_training["results"] / "best_model.keras")


def test_fit_time_hyperparameters_are_declared_with_their_domains(tune_training):
    domains, metrics = _config(tune_training)
    assert domains["batch_size"] == [16.0, 32.0, 64.0] and domains["shuffle"] == [False, True]
    assert domains["units"] == [16.0, 32.0, 48.0, 64.0]
    assert metrics[0] == "trial/val_accuracy"


def test_status_shows_the_fit_time_hyperparameters(tune_training):
    done = subprocess.run(python("chief", "status"), env=tune_training["env"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    header = [line for line in done.stdout.splitlines() if line.startswith("trial_id")][0].split()
    assert {"batch_size", "shuffle", "units"} <= set(header)


def test_every_hparams_session_has_the_fit_time_values(tune_training):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tensorboard = os.path.join(os.path.dirname(python("x")[0]), "tensorboard")
    rows = {r["trial_id"]: r for r in _rows(tune_training)}
    with processes() as start:
        start("tensorboard", [tensorboard, "--logdir", str(tune_training["tmp"] / "logs" / PROJECT), "--port",
                              str(port), "--host", "127.0.0.1"], tune_training["env"], tune_training["tmp"])

        def groups():
            try:
                found = hparams_session_groups(base)
            except OSError:
                return None
            return found if len(found) >= len(rows) else None

        by_trial = {g["name"]: g for g in wait_until(groups, 90, what="TensorBoard to list every trial")}
        experiment = http_json(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
    assert {"batch_size", "shuffle"} <= {info["name"] for info in experiment["hparamInfos"]}
    for trial_id, row in rows.items():
        assert str(int(by_trial[trial_id]["hparams"]["batch_size"])) == row["batch_size"]
        assert str(by_trial[trial_id]["hparams"]["shuffle"]) == row["shuffle"]


def test_a_custom_tuner_with_user_callbacks(tmp_path):
    """The example's callbacks, and one more EarlyStopping that always stops after the second
    epoch (it asks for an improvement of 1.0 in val_accuracy)."""
    (tmp_path / "stop_early.py").write_text(
        "import keras\nfrom callbacks import callbacks as example\n\n\ndef callbacks():\n"
        "    return [*example(), keras.callbacks.EarlyStopping(monitor='val_accuracy', min_delta=1.0, patience=1)]\n")
    search = _search(tmp_path, 3, 4, KTC_TUNER="custom_tuner:BatchSizeTuner", KTC_MODEL="custom_tuner:build_model",
                     KTC_CALLBACKS="stop_early:callbacks",
                     PYTHONPATH=f"{ROOT}{os.pathsep}{EXAMPLES}{os.pathsep}{tmp_path}")
    rows = _completed_once(search, 3)
    assert all(r["batch_size"] in ("16", "32", "48", "64") and r["units"] for r in rows), rows
    best = json.load(open(search["results"] / "best_hyperparameters.json"))
    assert "batch_size" in best["hyperparameters"]
    assert _config(search)[0]["batch_size"] == [16.0, 32.0, 48.0, 64.0]
    # EarlyStopping ended each trial after 2 of its 4 epochs: COMPLETED, scored on the epochs it ran
    assert search["workers"].count("Epoch 2/4") == 3 and "Epoch 3/4" not in search["workers"]
    for row in rows:
        state = json.load(open(search["tmp"] / "state" / PROJECT / f"trial_{row['trial_id']}" / "trial.json"))
        assert [o["step"] for o in state["metrics"]["metrics"]["val_accuracy"]["observations"]][-1] <= 1
    assert os.path.exists(search["results"] / "best_model.keras")


def test_tune_anything_with_no_model(tmp_path):
    search = _search(tmp_path, 4, 1, KTC_TUNER="tune_anything:TuneAnything", KTC_MODEL="none",
                     KTC_OBJECTIVE="score:min")
    rows = _completed_once(search, 4)
    for row in rows:
        assert float(row["score"]) == pytest.approx(float(row["x"]) ** 2 + 1.0)
    best = json.load(open(search["results"] / "best_hyperparameters.json"))
    assert best["score"] == min(float(r["score"]) for r in rows) and "x" in best["hyperparameters"]
    final = [line for line in search["chief"].splitlines() if "search finished: 4 completed" in line][0]
    assert final.endswith("no best_model.keras (no model: KTC_MODEL=none)"), final
    assert not os.path.exists(search["results"] / "best_model.keras")
    domains, metrics = _config(search)
    assert domains["x"] == (-1.0, 1.0) and metrics == ["trial/score"]
    for row in rows:  # an HParams session per attempt, though no Keras fit ran, with its x and its score
        run = search["tmp"] / "logs" / PROJECT / row["trial_id"] / "execution0"
        [session] = glob.glob(str(run / f"events.out.tfevents.*{hparams.SESSION_SUFFIX}"))
        values = {v.tag: v for event in EventFileLoader(session).Load() for v in event.summary.value}
        start = plugin_data_pb2.HParamsPluginData.FromString(
            values[metadata.SESSION_START_INFO_TAG].metadata.plugin_data.content).session_start_info
        assert start.hparams["x"].number_value == pytest.approx(float(row["x"]))
        assert start.hparams["status"].string_value == "completed"
        score = tensor_util.make_ndarray(values[hparams.metric_tag("score")].tensor).item()
        assert score == pytest.approx(float(row["score"]), rel=1e-5)


def test_bad_user_code_exits_2_with_one_line(tmp_path):
    (tmp_path / "bad_code.py").write_text("import keras_tuner\nCALLBACKS = 3\n"
                                          "def not_callbacks():\n    return ['early']\n")
    env = cluster_env(tmp_path, free_port(), PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}")
    cases = {
        "chief": (python("chief"), {"KTC_TUNER": "collections:OrderedDict"},
                  "KTC_TUNER='collections:OrderedDict' is not valid: it is the class OrderedDict, not a subclass of "
                  "keras_tuner.Tuner"),
        "chief-model": (python("chief"), {"KTC_MODEL": "bad_code:CALLBACKS", "KTC_PROJECT": "other",
                                        "KERASTUNER_ORACLE_PORT": str(free_port())},
                        "KTC_MODEL='bad_code:CALLBACKS' is a int: give a build_model(hp) function"),
        "worker": (python("worker"), {"KTC_CALLBACKS": "bad_code:not_callbacks", "KERASTUNER_TUNER_ID": "w1"},
                   "KTC_CALLBACKS='bad_code:not_callbacks' is not valid: it returned a list holding str, not a list "
                   "of keras.callbacks.Callback"),
        "worker-model": (python("worker"), {"KTC_MODEL": "none", "KERASTUNER_TUNER_ID": "w2"},
                         "KTC_MODEL='none' is not valid: no model needs a KTC_TUNER class that overrides run_trial"),
    }
    with processes() as start:
        procs = {name: start(name, args, {**env, **extra}, tmp_path) for name, (args, extra, _) in cases.items()}
        codes = {name: proc.wait(timeout=120) for name, proc in procs.items()}
        outputs = {name: proc.output() for name, proc in procs.items()}
    for name, (_, _, line) in cases.items():
        role = "chief" if name.startswith("chief") else "worker"
        errors = [text for text in outputs[name].splitlines() if text.startswith(f"ktcluster {role}: ")]
        assert codes[name] == 2 and len(errors) == 1 and line in errors[0], (name, outputs[name][-1500:])
        assert "Traceback" not in outputs[name]
