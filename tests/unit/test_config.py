import os
import subprocess
import sys

import pytest

from shared import config
from shared.config import ConfigError
from tests.conftest import ROOT


def env(tmp_path, **overrides):
    base = {name: str(tmp_path / name.lower()) for name in
            ("KTC_STATE_DIR", "KTC_LOG_DIR", "KTC_DATA_DIR", "KTC_RESULTS_DIR")}
    base.update(overrides)
    return base


def test_defaults_load_and_create_directories(tmp_path):
    s = config.load(env(tmp_path), role="chief")
    assert (s.tuner, s.max_trials, s.epochs, s.dataset, s.model) == ("random", 10, 2, "mnist", "")
    assert s.objective == config.Objective("val_accuracy", None)
    assert s.oracle_address == "127.0.0.1:8000"
    assert os.path.isdir(s.results_dir) and s.project_results_dir.endswith("results_dir/ktcluster")


def test_parsed_values(tmp_path):
    s = config.load(env(tmp_path, KTC_OBJECTIVE="val_loss:min", KTC_GPU_MAP="worker-1=0, worker-2=1",
                        KTC_SEED="7", KTC_DATASET="mypkg.data:load", KTC_MODEL="mypkg.m:build_model",
                        KTC_TUNER="hyperband", KERASTUNER_ORACLE_PORT="9001"))
    assert s.objective == config.Objective("val_loss", "min")
    assert dict(s.gpu_map) == {"worker-1": 0, "worker-2": 1}
    assert (s.seed, s.dataset, s.model, s.tuner, s.oracle_port) == (7, "mypkg.data:load", "mypkg.m:build_model",
                                                                     "hyperband", 9001)


BAD = [
    ("KERASTUNER_ORACLE_PORT", "abc"), ("KERASTUNER_ORACLE_PORT", "0"), ("KERASTUNER_ORACLE_PORT", "70000"),
    ("KERASTUNER_ORACLE_IP", ""), ("KERASTUNER_ORACLE_IP", "a b"),
    ("KERASTUNER_TUNER_ID", "my-chief-2"), ("KERASTUNER_TUNER_ID", "bad id"),
    ("KTC_PROJECT", "../escape"), ("KTC_TUNER", "sgd"), ("KTC_MAX_TRIALS", "-1"), ("KTC_MAX_TRIALS", "ten"),
    ("KTC_EPOCHS", "0"), ("KTC_EPOCHS", "1.5"), ("KTC_OBJECTIVE", "val accuracy"), ("KTC_OBJECTIVE", "loss:up"),
    ("KTC_DATASET", "imagenet"), ("KTC_DATASET", "module_without_function"), ("KTC_MODEL", "not a path"),
    ("KTC_SEED", "x"), ("KTC_GPU_MAP", "worker-1:0"), ("KTC_TF_THREADS", "-2"),
    ("KTC_STOP_GRACE_SECONDS", "0"), ("KTC_CHIEF_TIMEOUT_SECONDS", "nan"),
]


@pytest.mark.parametrize("name,value", BAD)
def test_bad_values_name_the_setting(tmp_path, name, value):
    with pytest.raises(ConfigError) as err:
        config.load(env(tmp_path, **{name: value}), role="worker")
    assert err.value.name == name
    assert str(err.value).startswith(f"{name}={value!r} is not valid: ")
    assert "\n" not in str(err.value)


def test_bad_value_creates_no_directories(tmp_path):
    with pytest.raises(ConfigError):
        config.load(env(tmp_path, KTC_EPOCHS="zero"), role="chief")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError) as err:
        config.load(env(tmp_path, KTC_STATE_DIR=str(tmp_path / "file" / "sub")), role="chief")
    assert err.value.name == "KTC_STATE_DIR"


def test_chief_id_is_allowed_only_for_non_workers(tmp_path):
    config.load(env(tmp_path, KERASTUNER_TUNER_ID="chief"), role="chief")
    with pytest.raises(ConfigError):
        config.load(env(tmp_path, KERASTUNER_TUNER_ID="CHIEF-1"), role="worker")


def test_readme_lists_every_setting():
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert config.settings_table() in readme, "README settings table is stale: paste config.settings_table()"


@pytest.mark.parametrize("role", ["chief", "worker"])
def test_cli_bad_setting_exits_2_with_one_line_before_tensorflow(tmp_path, role):
    code = (f"import sys; from {role}.__main__ import main; rc = main(); "
            "sys.stderr.write('TF=%s' % ('tensorflow' in sys.modules)); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env(tmp_path), "KTC_MAX_TRIALS": "lots"})
    assert proc.returncode == 2
    message, flag = proc.stderr.rsplit("TF=", 1)
    assert message.strip().splitlines() == [f"ktcluster {role}: KTC_MAX_TRIALS='lots' is not valid: an integer >= 1"]
    assert flag == "False"
