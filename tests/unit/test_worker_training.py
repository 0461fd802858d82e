"""One real KerasTuner search on the worker's ClusterTuner against a scripted chief (real gRPC):
each attempt writes into its own folder, a lost attempt stops training and reports nothing, and a
full state disk ends the attempt INVALID with the error (the process neither crashes nor hangs)."""

import os
import subprocess
import time

import keras
import numpy as np
import pytest
from keras_tuner.src.engine import trial as trial_module

from shared import config, layout, rpc
from tests.fixtures.fake_chief import FakeChief

STATE_MIB = 2  # size of the tmpfs the state dir lives on


def build(hp):
    units, sleep = hp.Int("units", 4, 256), hp.Float("sleep", 0.0, 1.0)
    inputs = keras.Input((8,))
    x = keras.layers.Dense(units, activation="relu")(inputs)
    if sleep:
        x = keras.layers.Lambda(lambda t: (time.sleep(sleep), t)[1], output_shape=lambda s: s)(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"], run_eagerly=bool(sleep))
    return model


@pytest.fixture
def state_dir(tmp_path):
    """A small tmpfs (a real ENOSPC); a plain folder where mounting is not permitted."""
    path = tmp_path / "state"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={STATE_MIB}m", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    yield path, mounted
    if mounted:
        subprocess.run(["umount", str(path)], check=True)


def fill(path):
    """Leave about 64 KiB free on the file system of `path`."""
    with open(os.path.join(path, "filler"), "wb") as f:
        free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
        f.write(b"\0" * max(free - 64 * 1024, 0))


def test_attempt_folders_lost_attempts_and_a_full_disk(tmp_path, state_dir):
    from worker.runner import ClusterTuner

    state, mounted = state_dir
    trials = [("0", 2, {"units": 4, "sleep": 0.0}),
              ("1", 1, {"units": 4, "sleep": 0.2}),  # lost at its first heartbeat, mid-epoch
              ("2", 1, {"units": 256, "sleep": 0.0})]  # the disk is full when it starts
    chief = FakeChief(trials, heartbeat_seconds=0.2)
    chief.drop_on_create.add("1")
    project_state = os.path.join(str(state), "wtest")

    def on_create(trial_id):
        if trial_id != "2":
            return
        if mounted:
            fill(str(state))
        else:  # no tmpfs here: the checkpoint path is a folder, so the write fails all the same
            os.makedirs(layout.checkpoint_path(project_state, "2", 1))
    chief.on_create = on_create

    env = {"KTC_STATE_DIR": str(state), "KTC_LOG_DIR": str(tmp_path / "logs"), "KTC_DATA_DIR": str(tmp_path / "d"),
           "KTC_PROJECT": "wtest", "KERASTUNER_ORACLE_PORT": str(chief.port), "KTC_EPOCHS": "2",
           "KTC_HEARTBEAT_SECONDS": "0.2", "KTC_LEASE_SECONDS": "2", "KTC_CHIEF_TIMEOUT_SECONDS": "20"}
    settings = config.load(env, role="worker")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)).astype("float32"), rng.integers(0, 2, 64)
    tuner = ClusterTuner(settings, "worker-1", "cpu", build)
    try:
        tuner.oracle.register(claim_seconds=1)
        tuner.search(x, y, validation_data=(x, y), epochs=2, batch_size=8, verbose=0,
                     callbacks=[keras.callbacks.TensorBoard(settings.project_log_dir)])
    finally:
        tuner.oracle.close()
        chief.stop()

    ends = {c[1]: (c[3], c[2]) for c in chief.calls if c[0] == "EndTrial"}
    # trial 0, attempt 2: its own folder, and the attempt number on every report
    assert ends["0"][0] == trial_module.TrialStatus.COMPLETED and ends["0"][1][rpc.ATTEMPT_KEY] == "2"
    assert os.path.getsize(layout.checkpoint_path(project_state, "0", 2)) > 0
    assert os.path.exists(layout.build_config_path(project_state, "0", 2))
    assert not os.path.exists(os.path.join(layout.trial_dir(project_state, "0"), layout.CHECKPOINT))
    assert layout.find_attempt_file(project_state, "0", None, layout.CHECKPOINT) == layout.checkpoint_path(project_state, "0", 2)
    # trial 1: taken away at a heartbeat mid-epoch: no report at all, no checkpoint, no build config
    assert chief.methods("1") == []
    assert not os.path.exists(layout.checkpoint_path(project_state, "1", 1))
    assert not os.path.exists(layout.build_config_path(project_state, "1", 1))
    # trial 2: the checkpoint could not be written: INVALID (retried elsewhere), the error in the message
    status, metadata = ends["2"]
    assert status == trial_module.TrialStatus.INVALID
    message = metadata[rpc.MESSAGE_KEY].decode()
    assert ("No space left on device" if mounted else "Is a directory") in message, message[-500:]
    # then the worker asked for more and stopped when told
    assert chief.methods()[-1] == "CreateTrial"
