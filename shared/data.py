"""Datasets: what KTC_DATASET names, as the keyword arguments of `keras.Model.fit`.

Built-ins: `mnist` (the KerasTuner guide's data; downloaded once by the chief into KTC_DATA_DIR,
validation = the last 20% of the training set, as the guide's `validation_split=0.2`) and `digits`
(scikit-learn's 8x8 digits, shipped with the package: works offline). Anything else is
`module:function`, called with no arguments, returning either
- the tuple form `(x_train, y_train), (x_val, y_val)` of arrays (an `ArrayDataset`), or
- a dict of `keras.Model.fit` keyword arguments (a `FitDataset`): `x` (arrays, a `tf.data.Dataset`,
  a `keras.utils.PyDataset`), `y`, `validation_data`, `batch_size`, `class_weight`,
  `steps_per_epoch`, ...; not those ktcluster sets (`OWNED`). KerasTuner hands the same objects to
  every trial, so a Python generator (any iterator) is refused: the first trial would use it up.
  Wrap it as `tf.data.Dataset.from_generator(function, output_signature=...)`, which calls
  `function` anew for every pass, or as a `PyDataset`.

What a process reads of a dict's data (each first batch at most once per Dataset, then cached):
`load` calls the user's function (for a tf.data pipeline that builds it and reads nothing);
`validation_sample()` reads the first batch of `validation_data` (of `x` without it);
`input_shape` reads nothing for a tf.data.Dataset with a known element shape, else the first
batch of `x`; `num_classes` uses the labels when they are arrays and refuses a stream (it would
have to be read whole). Only workers iterate the data, through `fit_kwargs()`.

Errors: `DataError` (exit 1) the data cannot be had (a download, a missing file, a function that
raises); `DatasetRefused` (a ConfigError: exit 2) the function returned what ktcluster cannot
train on (a setting problem).
"""

from __future__ import annotations

import abc
import collections.abc
import dataclasses
import functools
import inspect
import logging
import os
import sys
import time

import numpy as np

from shared.config import ConfigError
from shared.loader import import_from_string

MNIST_FILE = "mnist.npz"
MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
VALIDATION_FRACTION = 0.2
#: first and largest pause while a worker waits for the chief's download (as gRPC's reconnection)
CACHE_POLL = (0.1, 2.0)
#: `fit` keyword arguments ktcluster sets itself, and who sets them
OWNED = {
    "epochs": "is set by KTC_EPOCHS",
    "callbacks": "is set by ktcluster (its own callbacks; add yours with KTC_CALLBACKS)",
    "verbose": "is set by ktcluster (2: one line per epoch)",
    "initial_epoch": "is set by the tuner (Hyperband resumes trials from it)",
}
#: rows of the sample the chief's dry run evaluates
SAMPLE_ROWS = 2
GUIDE_NEEDS = "the guide model (KTC_MODEL unset) needs"
SET_MODEL = "set KTC_MODEL=module:function to your own build_model(hp)"

log = logging.getLogger("ktcluster.data")


class DataError(RuntimeError):
    """The dataset cannot be had; `str()` is the one-line message for the user."""


class DatasetRefused(ConfigError):
    """KTC_DATASET's function returned something ktcluster cannot train on: a setting problem
    (exit 2, as any ConfigError); `str()` is the one-line message naming KTC_DATASET."""

    def __init__(self, source: str, problem: str):
        ValueError.__init__(self, f"KTC_DATASET={source}: {problem}")
        self.name = "KTC_DATASET"


class Dataset(abc.ABC):
    """The training data of a search, as every process sees it after `load`."""

    @abc.abstractmethod
    def fit_kwargs(self) -> dict:
        """Keyword arguments for `tuner.search(**fit_kwargs(), epochs=..., verbose=2)`: a new dict
        of the same data objects on every call (never one of OWNED)."""

    @property
    @abc.abstractmethod
    def input_shape(self) -> tuple:
        """One example's shape (no batch axis), for the guide's model; DatasetRefused if it has
        none (several inputs), DataError if the first batch cannot be read."""

    @property
    @abc.abstractmethod
    def num_classes(self) -> int:
        """The number of classes (largest label + 1), for the guide's model; DatasetRefused where
        only reading all of the data could tell."""

    @abc.abstractmethod
    def validation_sample(self) -> tuple | None:
        """`(x, y)` of at most SAMPLE_ROWS validation examples (training ones if there is no
        validation data; `y` None for unlabelled data), for a dry run that learns the metric
        names: reads at most one batch. None if there is nothing to sample."""


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset(Dataset):
    """The tuple form and the built-ins: four arrays in memory."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray

    def fit_kwargs(self) -> dict:
        return {"x": self.x_train, "y": self.y_train, "validation_data": (self.x_val, self.y_val)}

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_val.max())) + 1

    def validation_sample(self) -> tuple | None:
        return self.x_val[:SAMPLE_ROWS], self.y_val[:SAMPLE_ROWS]


def _tf_dataset(value) -> bool:
    tf = sys.modules.get("tensorflow")  # not imported: `value` cannot be one
    return tf is not None and isinstance(value, tf.data.Dataset)


def _py_dataset(value) -> bool:
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(value, keras.utils.PyDataset)


def _stream(value) -> bool:
    """Data read batch by batch (tf.data, PyDataset, anything not array-like)."""
    return _tf_dataset(value) or _py_dataset(value) or not (
        isinstance(value, (np.ndarray, list, dict, tuple)) or hasattr(value, "__array__"))


def _rows(value):
    """The first SAMPLE_ROWS rows of an array, a tensor or a dict of them, as numpy (None stays)."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {key: _rows(item) for key, item in value.items()}
    try:
        return np.asarray(value[:SAMPLE_ROWS])
    except TypeError:
        return np.asarray(value)[:SAMPLE_ROWS]


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def _first_batch(data, labels, what: str, source: str) -> tuple:
    """`(x, y)` (numpy, SAMPLE_ROWS rows) of the first batch of `data`: one element of a tf.data
    pipeline, `data[0]` of a PyDataset, a slice of arrays (`labels` are their `y`)."""
    import keras

    try:
        if _tf_dataset(data):
            element = next(iter(data.take(1)))
        elif _py_dataset(data):
            element = data[0]
        else:
            element = (data, labels)
        if isinstance(element, tuple):
            x, y, _ = keras.utils.unpack_x_y_sample_weight(element)
        else:
            x, y = element, None
        return _rows(x), _rows(y)
    except StopIteration:
        raise DataError(f"KTC_DATASET={source}: {what} has no batch") from None
    except Exception as exc:
        raise DataError(f"KTC_DATASET={source}: reading the first batch of {what} failed: {_one_line(exc)}") from None


@dataclasses.dataclass(frozen=True, eq=False)
class FitDataset(Dataset):
    """The dict form: `kwargs` are checked keyword arguments of keras.Model.fit (`_checked`);
    `source` is KTC_DATASET's value, for messages."""

    kwargs: dict
    source: str

    def fit_kwargs(self) -> dict:
        return dict(self.kwargs)

    @functools.cached_property
    def _first_training(self) -> tuple:
        return _first_batch(self.kwargs["x"], self.kwargs.get("y"), "x", self.source)

    @functools.cached_property
    def _first_validation(self) -> tuple | None:
        val = self.kwargs.get("validation_data")
        if val is None:
            return None
        if isinstance(val, (tuple, list)):
            return _first_batch(val[0], val[1] if len(val) > 1 else None, "validation_data", self.source)
        return _first_batch(val, None, "validation_data", self.source)

    def validation_sample(self) -> tuple | None:
        return self._first_validation or self._first_training

    @property
    def input_shape(self) -> tuple:
        x = self.kwargs["x"]
        if _tf_dataset(x):
            spec = x.element_spec
            spec = spec[0] if isinstance(spec, tuple) else spec
            shape = getattr(spec, "shape", None)
            if shape is not None and shape.rank and shape[1:].is_fully_defined():
                return tuple(shape[1:])
        if _stream(x):
            x = self._first_training[0]
        if isinstance(x, dict):
            raise DatasetRefused(self.source, f"{GUIDE_NEEDS} one input, and x has several; {SET_MODEL}")
        return tuple(np.shape(x)[1:])

    @property
    def num_classes(self) -> int:
        val = self.kwargs.get("validation_data")
        labels = [self.kwargs.get("y")]
        if isinstance(val, (tuple, list)) and len(val) > 1:
            labels.append(val[1])
        if _stream(self.kwargs["x"]) or labels[0] is None:
            raise DatasetRefused(self.source, f"{GUIDE_NEEDS} the number of classes, which streamed data "
                                              f"tells only when read whole; {SET_MODEL}")
        try:
            return int(max(np.max(y) for y in labels if y is not None)) + 1
        except (TypeError, ValueError) as exc:
            raise DatasetRefused(self.source, f"{GUIDE_NEEDS} integer class labels in y ({_one_line(exc)}); "
                                              f"{SET_MODEL}") from None


def fit_parameters() -> list[str]:
    """keras.Model.fit's keyword arguments, in its order."""
    import keras

    return [name for name, p in inspect.signature(keras.Model.fit).parameters.items()
            if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _checked(kwargs: dict, source: str) -> dict:
    """`kwargs` if keras.Model.fit can take them on every trial; else DatasetRefused."""
    owned = [key for key in kwargs if key in OWNED]
    if owned:
        raise DatasetRefused(source, "; ".join(f"{key!r} {OWNED[key]}" for key in owned))
    allowed = [name for name in fit_parameters() if name not in OWNED]
    unknown = [key for key in kwargs if key not in allowed]
    if unknown:
        raise DatasetRefused(source, f"unknown keys {', '.join(map(repr, unknown))} in the dict it returned; "
                                     f"allowed: {', '.join(allowed)} (keras.Model.fit's keyword arguments "
                                     f"but {', '.join(OWNED)}, which ktcluster sets)")
    if kwargs.get("x") is None:
        raise DatasetRefused(source, "the dict it returned has no 'x' (the training data)")
    for key in ("x", "validation_data"):
        if isinstance(kwargs.get(key), collections.abc.Iterator):
            raise DatasetRefused(source, f"{key!r} is a generator (an iterator), which the first trial would use "
                                         "up; wrap the function that makes it in tf.data.Dataset.from_generator "
                                         "(called anew for each pass) or a keras.utils.PyDataset")
    if _tf_dataset(kwargs["x"]) or _py_dataset(kwargs["x"]):
        given = [key for key in ("y", "sample_weight") if kwargs.get(key) is not None]
        if given:
            raise DatasetRefused(source, f"{' and '.join(map(repr, given))} cannot be given with a "
                                         f"{type(kwargs['x']).__name__} 'x': its batches carry them")
        if kwargs.get("validation_split"):
            raise DatasetRefused(source, f"'validation_split' cannot split a {type(kwargs['x']).__name__} 'x'; "
                                         "give 'validation_data'")
    return kwargs


def from_returned(value, source: str) -> Dataset:
    """The Dataset for what KTC_DATASET's function returned (the tuple or the dict form)."""
    if isinstance(value, collections.abc.Mapping):
        return FitDataset(_checked(dict(value), source), source)
    try:
        (x_train, y_train), (x_val, y_val) = value
    except (TypeError, ValueError):
        raise DatasetRefused(source, f"the function returned {type(value).__name__}; return (x_train, y_train), "
                                     "(x_val, y_val) or a dict of keras.Model.fit keyword arguments") from None
    return ArrayDataset(*(np.asarray(a) for a in (x_train, y_train, x_val, y_val)))


def _split(x, y, fraction=VALIDATION_FRACTION):
    cut = int(len(x) * (1 - fraction))
    return ArrayDataset(x[:cut], y[:cut], x[cut:], y[cut:])


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
    may raise to end the wait early (a worker: the chief recorded that it could not start).
    `module:function` is called here (ImportFromStringError if it cannot be imported, DataError if
    it raises, DatasetRefused for what it returns); its data is read only as `Dataset` says."""
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
        returned = function()
    except Exception as exc:
        raise DataError(f"KTC_DATASET={dataset}: the function raised {_one_line(exc)}") from None
    return from_returned(returned, dataset)
