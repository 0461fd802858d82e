import socket
import sys

import numpy as np
import pytest

from shared import data
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
                      "    return 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ds = data.load("my_data:load", str(tmp_path))
    assert ds.input_shape == (3,) and ds.num_classes == 2
    with pytest.raises(DataError, match="KTC_DATASET=my_data:broken"):
        data.load("my_data:broken", str(tmp_path))
    with pytest.raises(ImportFromStringError, match="has no attribute 'nope'"):
        data.load("my_data:nope", str(tmp_path))
    sys.modules.pop("my_data", None)


def test_a_worker_waiting_for_the_cache_stops_when_told_to(tmp_path):
    """`between` is asked at every poll: a worker raises from it once the chief recorded that it
    could not start, instead of waiting out `wait`."""
    import time

    class ChiefGone(Exception):
        pass

    calls = []

    def between():
        calls.append(1)
        if len(calls) == 3:
            raise ChiefGone

    started = time.monotonic()
    with pytest.raises(ChiefGone):
        data.load("mnist", str(tmp_path), wait=60, between=between)
    assert time.monotonic() - started < 5 and len(calls) == 3
