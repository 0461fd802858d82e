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
    # values that can only be mistakes, or would overflow further down
    ("KTC_EPOCHS", "99999999999999999999"), ("KTC_EPOCHS", "100001"), ("KTC_MAX_TRIALS", "1000001"),
    ("KTC_SEED", str(2**32)), ("KTC_SEED", "-1"), ("KTC_MAX_CONSECUTIVE_FAILURES", "9" * 30),
    ("KTC_MAX_TRIALS", "9" * 5000), ("KTC_GPU_MAP", "worker-1=\u00b2"), ("KTC_GPU_MAP", "worker-1=99999999999"),
    ("KTC_LEASE_SECONDS", "1e300"), ("KTC_HEARTBEAT_SECONDS", "1e300"),
]


@pytest.mark.parametrize("name,value", BAD)
def test_bad_values_name_the_setting(tmp_path, name, value):
    with pytest.raises(ConfigError) as err:
        config.load(env(tmp_path, **{name: value}), role="worker")
    assert err.value.name == name
    assert str(err.value).startswith(f"{name}={value!r} is not valid: ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name,value,allowed", [
    ("KTC_EPOCHS", "99999999999999999999", "an integer >= 1 and <= 100000"),
    ("KTC_MAX_TRIALS", "1000001", "an integer >= 1 and <= 1000000"),
    ("KTC_SEED", "4294967296", "an integer >= 0 and <= 4294967295"),
    ("KTC_CHIEF_TIMEOUT_SECONDS", "1e300", "a number of seconds > 0 and <= 604800 (7 days)"),
])
def test_upper_bounds_name_the_range(tmp_path, name, value, allowed):
    with pytest.raises(ConfigError) as err:
        config.load(env(tmp_path, **{name: value}), role="worker")
    assert str(err.value) == f"{name}={value!r} is not valid: {allowed}"


def test_largest_allowed_values_load(tmp_path):
    s = config.load(env(tmp_path, KTC_EPOCHS="100000", KTC_MAX_TRIALS="1000000", KTC_SEED="4294967295"))
    assert (s.epochs, s.max_trials, s.seed) == (100000, 1000000, 4294967295)


@pytest.mark.parametrize("name,closest", [
    ("KTC_MAX_TRAILS", "KTC_MAX_TRIALS"), ("KTC_EPOCH", "KTC_EPOCHS"), ("ktc_epochs", "KTC_EPOCHS"),
    ("KTC_HEARTBEAT_SECOND", "KTC_HEARTBEAT_SECONDS"), ("KTC_SEEDS", "KTC_SEED"),
])
def test_unknown_setting_names_the_closest(tmp_path, name, closest):
    with pytest.raises(ConfigError) as err:
        config.load(env(tmp_path, **{name: "3"}), role="chief")
    assert str(err.value) == f"{name} is not a setting; did you mean {closest}?"
    assert err.value.name == name
    assert list(tmp_path.iterdir()) == []  # refused before any directory is made


def test_unknown_setting_without_a_close_one(tmp_path):
    with pytest.raises(ConfigError) as err:
        config.load(env(tmp_path, KTC_ZZZZZZZZZZZZ="1"))
    assert str(err.value) == "KTC_ZZZZZZZZZZZZ is not a setting; the settings are listed in README.md"


def test_compose_and_test_variables_are_allowed(tmp_path):
    extra = {name: "1" for name in config.NOT_PROCESS_SETTINGS}
    config.load(env(tmp_path, **extra, OTHER_VARIABLE="x", KERASTUNER_SOMETHING="y"))
    assert not set(config.NOT_PROCESS_SETTINGS) & set(config.SETTINGS)


def test_every_ktc_name_in_the_repository_is_a_setting_or_allowed():
    """A name used in compose.yaml, .env, CI or tests that is not in the allow-list would stop
    every process that inherits it."""
    import re
    import subprocess as sp

    files = sp.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    names = set()
    for path in files:
        try:
            names |= set(re.findall(r"\bKTC_[A-Z0-9_]*[A-Z0-9]\b", open(os.path.join(ROOT, path)).read()))
        except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError):
            continue
    names -= {"KTC_MAX_TRAILS", "KTC_EPOCH", "KTC_HEARTBEAT_SECOND", "KTC_SEEDS", "KTC_ZZZZZZZZZZZZ"}  # typos above
    unknown = sorted(n for n in names if n not in config.SETTINGS and n not in config.NOT_PROCESS_SETTINGS)
    assert unknown == []


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
    assert message.strip().splitlines() == [
        f"ktcluster {role}: KTC_MAX_TRIALS='lots' is not valid: an integer >= 1 and <= 1000000"]
    assert flag == "False"


@pytest.mark.parametrize("role", ["chief", "worker"])
def test_cli_unknown_setting_exits_2_with_one_line(tmp_path, role):
    proc = subprocess.run([sys.executable, "-m", role], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env(tmp_path), "KTC_MAX_TRAILS": "3"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1:] == [
        f"ktcluster {role}: KTC_MAX_TRAILS is not a setting; did you mean KTC_MAX_TRIALS?"]


# Issue 21: absurd leases and heartbeats, and addresses that are no address, are refused at load.
@pytest.mark.parametrize("settings,name", [
    ({"KTC_LEASE_SECONDS": "1e-300", "KTC_HEARTBEAT_SECONDS": "1e-301"}, "KTC_LEASE_SECONDS"),
    ({"KTC_LEASE_SECONDS": "60", "KTC_HEARTBEAT_SECONDS": "1e-301"}, "KTC_HEARTBEAT_SECONDS"),
    ({"KTC_LEASE_SECONDS": "60", "KTC_HEARTBEAT_SECONDS": "0.05"}, "KTC_HEARTBEAT_SECONDS"),
    ({"KTC_LEASE_SECONDS": "0.5", "KTC_HEARTBEAT_SECONDS": "0.1"}, "KTC_LEASE_SECONDS"),
    ({"KTC_STOCK_LEASE_SECONDS": "1e-300"}, "KTC_STOCK_LEASE_SECONDS"),
    ({"KERASTUNER_ORACLE_IP": "256.1.1.1"}, "KERASTUNER_ORACLE_IP"),
    ({"KERASTUNER_ORACLE_IP": "1.2.3"}, "KERASTUNER_ORACLE_IP"),
    ({"KERASTUNER_ORACLE_IP": "[::g]"}, "KERASTUNER_ORACLE_IP"),
    ({"KERASTUNER_ORACLE_IP": "chief/x"}, "KERASTUNER_ORACLE_IP"),
    ({"KERASTUNER_ORACLE_IP": "-chief"}, "KERASTUNER_ORACLE_IP"),
])
def test_absurd_leases_heartbeats_and_addresses_are_refused_naming_the_setting(tmp_path, settings, name):
    with pytest.raises(ConfigError) as err:
        config.load(env(tmp_path, **settings), role="chief")
    assert err.value.name == name and "\n" not in str(err.value)
    assert str(err.value).startswith(f"{name}={settings[name]!r} is not valid: ")


@pytest.mark.parametrize("ip", ["127.0.0.1", "0.0.0.0", "::", "::1", "[::1]", "chief", "tasks.chief",
                                "ktc-chief.ktcluster.svc.cluster.local", "my_chief"])
def test_host_names_and_valid_ip_literals_are_accepted(tmp_path, ip):
    assert config.load(env(tmp_path, KERASTUNER_ORACLE_IP=ip), role="worker").oracle_ip == ip


def test_the_smallest_heartbeat_and_lease_allowed_load(tmp_path):
    s = config.load(env(tmp_path, KTC_LEASE_SECONDS="1", KTC_HEARTBEAT_SECONDS="0.1", KTC_STOCK_LEASE_SECONDS="1"))
    assert (s.lease_seconds, s.heartbeat_seconds, s.stock_lease_seconds) == (1.0, 0.1, 1.0)
