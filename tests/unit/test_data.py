import os
import re
import socket
import sys

import numpy as np
import pytest

from shared import data
from shared.config import ConfigError
from shared.data import DataError
from shared.loader import ImportFromStringError


def test_digits_is_offline_and_split_80_20(tmp_path):
    ds = data.load("digits", str(tmp_path))
    assert ds.input_shape == (8, 8, 1) and ds.num_classes == 10
    assert len(ds.x_train) == int(1797 * 0.8) and len(ds.x_val) == 1797 - int(1797 * 0.8)
    assert ds.x_train.dtype == np.float32 and 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert list(tmp_path.iterdir()) == []  # nothing cached, nothing downloaded


def _fake_mnist(path, n=50):
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), y_train=np.arange(n) % 10,
             x_test=np.zeros((1, 28, 28), np.uint8), y_test=np.zeros(1, np.int64))


def test_mnist_reads_the_cache_like_the_guide(tmp_path):
    _fake_mnist(tmp_path / data.MNIST_FILE)
    ds = data.load("mnist", str(tmp_path))
    assert ds.input_shape == (28, 28, 1) and (len(ds.x_train), len(ds.x_val)) == (40, 10)
    data.prepare("mnist", str(tmp_path))  # cached: no download attempted (would fail offline)


def test_workers_never_download(tmp_path):
    with pytest.raises(DataError, match="the chief downloads it"):
        data.load("mnist", str(tmp_path))


def test_a_worker_started_with_the_chief_waits_for_its_download(tmp_path):
    """Workers start with the chief (not after its health check): the file they wait for appears
    only once the download is complete."""
    import threading

    source = tmp_path / "elsewhere.npz"
    _fake_mnist(source)
    timer = threading.Timer(0.5, lambda: source.replace(tmp_path / data.MNIST_FILE))
    timer.start()
    try:
        assert data.load("mnist", str(tmp_path), wait=30).input_shape == (28, 28, 1)
    finally:
        timer.cancel()
    with pytest.raises(DataError, match="the chief downloads it"):
        data.load("mnist", str(tmp_path / "never"), wait=0.3)


def test_failed_download_names_the_offline_choice(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on: the download fails at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(data, "MNIST_URL", f"http://127.0.0.1:{port}/mnist.npz")
    with pytest.raises(DataError) as err:
        data.prepare("mnist", str(tmp_path))
    message = str(err.value)
    assert "KTC_DATASET=digits" in message and "\n" not in message
    assert not (tmp_path / data.MNIST_FILE).exists()


def test_chief_downloads_mnist_once_into_the_cache(tmp_path, monkeypatch):
    """A real HTTP download (a local server with a small MNIST-shaped file), hash-checked."""
    import hashlib
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    _fake_mnist(served / data.MNIST_FILE)
    digest = hashlib.sha256((served / data.MNIST_FILE).read_bytes()).hexdigest()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(data, "MNIST_URL", f"http://127.0.0.1:{server.server_port}/{data.MNIST_FILE}")
        monkeypatch.setattr(data, "MNIST_SHA256", digest)
        cache = tmp_path / "cache"
        cache.mkdir()
        data.prepare("mnist", str(cache))
        data.prepare("mnist", str(cache))  # second time: from the cache
        assert sorted(p.name for p in cache.iterdir()) == [data.MNIST_FILE]
        assert data.load("mnist", str(cache)).input_shape == (28, 28, 1)
        assert len(requests) == 1
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_custom_dataset_function(tmp_path, monkeypatch):
    module = tmp_path / "my_data.py"
    module.write_text("import numpy as np\n"
                      "def load():\n"
                      "    x = np.ones((10, 3)); y = np.arange(10) % 2\n"
                      "    return (x[:8], y[:8]), (x[8:], y[8:])\n"
                      "def broken():\n"
                      "    return 42\n"
                      "def raises():\n"
                      "    raise FileNotFoundError('/data/train.npy')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ds = data.load("my_data:load", str(tmp_path))
    assert ds.input_shape == (3,) and ds.num_classes == 2
    with pytest.raises(ConfigError, match="KTC_DATASET=my_data:broken: the function returned int; return "):
        data.load("my_data:broken", str(tmp_path))  # a setting problem: exit 2
    with pytest.raises(DataError, match="KTC_DATASET=my_data:raises: the function raised FileNotFoundError: /data"):
        data.load("my_data:raises", str(tmp_path))  # the data cannot be had: exit 1
    with pytest.raises(ImportFromStringError, match="has no attribute 'nope'"):
        data.load("my_data:nope", str(tmp_path))
    sys.modules.pop("my_data", None)


FIXTURES = "tests.fixtures.datasets"


def _fit_twice(dataset):
    """Two trials' worth of fit on the same keyword arguments (KerasTuner passes the same objects
    to every trial): each must train on the data and validate."""
    import keras_tuner as kt

    from tests.fixtures.models import build_model

    for _ in range(2):
        history = build_model(kt.HyperParameters()).fit(**dataset.fit_kwargs(), epochs=2, verbose=0)
        assert len(history.history["loss"]) == 2 and len(history.history["val_accuracy"]) == 2


def test_tuple_form_is_unchanged(tmp_path):
    ds = data.load(f"{FIXTURES}:tuple_form", str(tmp_path))
    kwargs = ds.fit_kwargs()
    assert set(kwargs) == {"x", "y", "validation_data"} and kwargs["x"].shape == (48, 8)
    assert kwargs["validation_data"][0].shape == (16, 8) and kwargs["validation_data"][1].shape == (16,)
    assert (ds.x_train is kwargs["x"]) and ds.input_shape == (8,) and ds.num_classes == 2
    x, y = ds.validation_sample()
    assert (x == ds.x_val[:2]).all() and (y == ds.y_val[:2]).all()


@pytest.mark.parametrize("kind", ["arrays", "pydataset", "tfdata"])
def test_dict_form_passes_fit_keyword_arguments_through(tmp_path, kind):
    from tests.fixtures import datasets

    datasets.reset()
    ds = data.load(f"{FIXTURES}:{kind}", str(tmp_path))
    assert datasets.READS == {"x": [], "validation_data": []}  # building the pipeline reads nothing
    kwargs = ds.fit_kwargs()
    if kind == "arrays":
        assert set(kwargs) == {"x", "y", "validation_split", "batch_size", "class_weight", "shuffle"}
        assert (kwargs["validation_split"], kwargs["batch_size"]) == (0.25, 16)
    else:
        assert set(kwargs) == {"x", "validation_data"}
    assert ds.input_shape == (8,)
    x, y = ds.validation_sample()
    assert x.shape == (2, 8) and y.shape == (2,)
    _fit_twice(ds)


def test_dict_form_of_arrays_gives_the_guide_model_its_classes(tmp_path):
    ds = data.load(f"{FIXTURES}:arrays", str(tmp_path))
    assert ds.num_classes == 2 and ds.fit_kwargs()["class_weight"] == {0: 1.0, 1: 2.0}


@pytest.mark.parametrize("kind", ["pydataset", "tfdata"])
def test_streams_ask_for_a_model_instead_of_reading_everything(tmp_path, kind):
    ds = data.load(f"{FIXTURES}:{kind}", str(tmp_path))
    with pytest.raises(ConfigError, match=rf"^KTC_DATASET={FIXTURES}:{kind}: the guide model \(KTC_MODEL unset\) "
                                          "needs the number of classes.*; set KTC_MODEL=module:function"):
        ds.num_classes


def test_tf_data_shape_comes_from_its_spec_without_reading(tmp_path):
    from tests.fixtures import datasets

    datasets.reset()
    assert data.load(f"{FIXTURES}:tfdata", str(tmp_path)).input_shape == (8,)
    assert datasets.READS == {"x": [], "validation_data": []}


def test_unknown_keys_are_refused_with_what_is_allowed(tmp_path):
    with pytest.raises(ConfigError) as err:
        data.load(f"{FIXTURES}:unknown_keys", str(tmp_path))
    message = str(err.value)
    assert message.startswith(f"KTC_DATASET={FIXTURES}:unknown_keys: unknown keys 'validation_date', 'nb_epoch' ")
    assert "allowed: x, y, batch_size, validation_split, validation_data, shuffle, class_weight" in message
    assert "\n" not in message


@pytest.mark.parametrize("key, why", [("epochs", "is set by KTC_EPOCHS"), ("verbose", "is set by ktcluster"),
                                      ("callbacks", "is set by ktcluster"), ("initial_epoch", "is set by the tuner")])
def test_keys_ktcluster_sets_are_refused(key, why):
    x, y = np.ones((4, 2)), np.zeros(4)
    with pytest.raises(ConfigError, match=f"^KTC_DATASET=m:f: '{key}' {why}"):
        data.from_returned({"x": x, "y": y, key: 1}, "m:f")


def test_what_fit_could_not_take_on_every_trial_is_refused():
    import tensorflow as tf

    x, y = np.ones((4, 2)), np.zeros(4)
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
    cases = {
        "'x' is a generator (an iterator), which the first trial would use up; wrap":
            {"x": iter([(x, y)])},
        "'validation_data' is a generator": {"x": x, "y": y, "validation_data": (b for b in [(x, y)])},
        "the dict it returned has no 'x'": {"y": y},
        "'y' cannot be given with a": {"x": batches, "y": y},
        "'validation_split' cannot split a": {"x": batches, "validation_split": 0.2},
    }
    for problem, returned in cases.items():
        with pytest.raises(ConfigError, match="^" + re.escape(f"KTC_DATASET=m:f: {problem}")):
            data.from_returned(returned, "m:f")


def test_a_stream_that_cannot_be_read_is_a_data_error(tmp_path):
    import tensorflow as tf

    records = tf.data.TFRecordDataset([str(tmp_path / "nowhere.tfrecord")]).batch(2)
    ds = data.from_returned({"x": records, "validation_data": records}, "m:f")
    with pytest.raises(DataError, match="^KTC_DATASET=m:f: reading the first batch of validation_data failed: "
                                        "NotFound"):
        ds.validation_sample()


def _chief_settings(tmp_path, **overrides):
    from shared import config

    env = {name: str(tmp_path / name.lower()) for name in ("KTC_STATE_DIR", "KTC_LOG_DIR", "KTC_DATA_DIR",
                                                            "KTC_RESULTS_DIR")}
    return config.load({**env, "KTC_MODEL": "tests.fixtures.models:build_model", **overrides}, role="chief")


@pytest.mark.parametrize("kind, first_batch", [("pydataset", [0]), ("tfdata", list(range(8)))])
def test_the_chief_reads_one_validation_batch_and_no_training_data(tmp_path, kind, first_batch):
    """The chief's whole start-up check (data, model, dry run for the metric names) on streams that
    record every read: the validation data's first batch, nothing of the training data."""
    from chief.startup import prepare
    from tests.fixtures import datasets

    datasets.reset()
    dataset, _, _, _, metrics = prepare(_chief_settings(tmp_path, KTC_DATASET=f"{FIXTURES}:{kind}"))
    assert metrics == ["loss", "accuracy"]
    assert datasets.READS == {"x": [], "validation_data": first_batch}


def test_the_guide_model_on_a_stream_is_refused_at_the_chief(tmp_path):
    from chief.startup import StartFailed, prepare
    from tests.fixtures import datasets

    datasets.reset()
    with pytest.raises(StartFailed) as err:
        prepare(_chief_settings(tmp_path, KTC_DATASET=f"{FIXTURES}:pydataset", KTC_MODEL=""))
    assert err.value.code == 2 and "set KTC_MODEL=module:function" in str(err.value)
    assert datasets.READS == {"x": [0], "validation_data": []}  # its input shape: one batch


def test_tfdata_example_waits_for_shards_it_may_not_write(tmp_path, monkeypatch):
    """examples/tfdata_files.py in a Compose worker (the data volume read-only): it waits for the
    chief's shards instead of failing; with nobody writing them it gives up after its wait."""
    import threading

    from tests.conftest import ROOT

    monkeypatch.syspath_prepend(os.path.join(ROOT, "examples"))
    import tfdata_files

    write = tfdata_files.write_shards

    def read_only(folder):
        raise PermissionError(30, "Read-only file system", folder)

    monkeypatch.setattr(tfdata_files, "write_shards", read_only)
    folder = str(tmp_path / tfdata_files.FOLDER)
    with pytest.raises(PermissionError):
        tfdata_files.shards(folder, wait=0.5)
    chief = threading.Timer(0.5, write, [folder])
    chief.start()
    try:
        assert tfdata_files.shards(folder, wait=60) == folder
    finally:
        chief.join(timeout=60)
    assert sorted(os.listdir(folder)) == ["counts.json", "train-0.tfrecord", "train-1.tfrecord", "train-2.tfrecord",
                                          "train-3.tfrecord", "val-0.tfrecord"]
    sys.modules.pop("tfdata_files", None)
