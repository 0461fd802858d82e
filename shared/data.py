"""Datasets: fetched once by the chief, read from the cache by every worker.

A dataset is `(x_train, y_train), (x_val, y_val)` of numpy arrays. Built-ins:
`mnist` (the KerasTuner guide's data; downloaded into KTC_DATA_DIR, validation
= the last 20% of the training set, as the guide's `validation_split=0.2`) and
`digits` (scikit-learn's 8x8 digits, shipped with the package: works offline).
Anything else is `module:function` returning the same tuple.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import numpy as np

from shared.loader import import_from_string

MNIST_FILE = "mnist.npz"
MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
VALIDATION_FRACTION = 0.2
#: first and largest pause while a worker waits for the chief's download (as gRPC's reconnection)
CACHE_POLL = (0.1, 2.0)

log = logging.getLogger("ktcluster.data")


class DataError(RuntimeError):
    """The dataset cannot be had; `str()` is the one-line message for the user."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_val.max())) + 1


def _split(x, y, fraction=VALIDATION_FRACTION):
    cut = int(len(x) * (1 - fraction))
    return Dataset(x[:cut], y[:cut], x[cut:], y[cut:])


def _images(x):
    """uint8-like images -> float32 in [0, 1] with a channel axis, as the guide does."""
    x = x.astype("float32") / float(x.max() or 1)
    return x[..., np.newaxis] if x.ndim == 3 else x


def _mnist_path(data_dir):
    return os.path.join(data_dir, MNIST_FILE)


def prepare(dataset: str, data_dir: str) -> None:
    """Chief only: make sure the dataset is in the cache (download at most once). The file appears
    under its name only once it is complete and hash-checked (downloaded under another name, then
    renamed): workers that start with the chief wait for that name (`load(..., wait=...)`)."""
    if dataset != "mnist" or os.path.exists(_mnist_path(data_dir)):
        return
    import keras

    partial = MNIST_FILE + ".download"
    try:
        keras.utils.get_file(fname=partial, origin=MNIST_URL, file_hash=MNIST_SHA256,
                             cache_dir=os.path.abspath(data_dir), cache_subdir="")
        os.replace(os.path.join(data_dir, partial), _mnist_path(data_dir))
    except Exception as exc:  # any network or hash failure ends the same way
        reason = " ".join(str(exc).split())[:160]
        raise DataError(
            f"KTC_DATASET=mnist: download of {MNIST_URL} failed ({reason}); "
            "set KTC_DATASET=digits for an offline dataset"
        ) from None


def _wait_for(path: str, seconds: float, between=None) -> bool:
    """True once `path` exists, checking with a backoff (CACHE_POLL) for at most `seconds`;
    `between()` (if given) is called before each pause and may raise to end the wait."""
    deadline, pause = time.monotonic() + seconds, CACHE_POLL[0]
    while not os.path.exists(path):
        if between is not None:
            between()
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, CACHE_POLL[1])
    return True


def load(dataset: str, data_dir: str, wait: float = 0.0, between=None) -> Dataset:
    """Load the dataset from the cache (workers never download). A cached dataset that is not
    there yet (the chief, started at the same time, is still downloading it) is waited for up to
    `wait` seconds; then DataError. While waiting, `between()` (if given) is called every poll and
    may raise to end the wait early (a worker: the chief recorded that it could not start)."""
    if dataset == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = _images(bunch.images)
        return _split(x, bunch.target.astype("int64"))
    if dataset == "mnist":
        path = _mnist_path(data_dir)
        if not os.path.exists(path) and wait > 0:
            log.info("waiting up to %.0fs for the chief to download %s", wait, MNIST_FILE)
        if not _wait_for(path, wait, between):
            raise DataError(f"KTC_DATASET=mnist: {path} is missing; the chief downloads it before serving trials")
        with np.load(path, allow_pickle=False) as f:
            x, y = _images(f["x_train"]), f["y_train"].astype("int64")
        return _split(x, y)
    function = import_from_string(dataset, "KTC_DATASET")
    try:
        (x_train, y_train), (x_val, y_val) = function()
    except Exception as exc:
        raise DataError(f"KTC_DATASET={dataset}: the function failed or did not return "
                        f"(x_train, y_train), (x_val, y_val): {type(exc).__name__}: {exc}") from None
    return Dataset(*(np.asarray(a) for a in (x_train, y_train, x_val, y_val)))
