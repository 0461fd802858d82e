"""A worker trains hundreds of models in one process: what a trial leaves behind must not pile up."""

import gc

import keras
import numpy as np
import tensorflow as tf

from worker.runner import _gradient_registry, release_traced_gradients


def _fit_one() -> None:
    keras.backend.clear_session()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).random((32, 4), dtype="float32")
    model.fit(x, x[:, :1], epochs=1, verbose=0)


def _graph_objects() -> int:
    from tensorflow.python.framework.func_graph import FuncGraph

    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, FuncGraph))


@tf.custom_gradient
def _users_own_op(x):
    return tf.identity(x), lambda dy: dy


def test_released_trials_leave_nothing_and_earlier_registrations_stay():
    tf.function(_users_own_op)(tf.constant(1.0))  # a registration from before the trials (the user's)
    users = {n for n in _gradient_registry() if n.startswith("CustomGradient-")}
    assert users
    before = set(_gradient_registry())
    _fit_one()
    release_traced_gradients(before)
    assert set(_gradient_registry()) == before  # whatever the fit registered went
    graphs, entries = _graph_objects(), len(_gradient_registry())
    for _ in range(3):
        before = set(_gradient_registry())
        _fit_one()
        release_traced_gradients(before)
    assert _graph_objects() <= graphs and len(_gradient_registry()) == entries
    assert users <= set(_gradient_registry())
