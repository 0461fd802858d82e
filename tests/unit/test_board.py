"""What an attempt's TensorBoard run holds after a real Keras fit, read with TensorBoard's own code:
the curves of every epoch, a conceptual graph whose layers the Graphs tab draws, and an op graph."""

import glob
import json

import keras
import keras_tuner as kt
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.proto import graph_pb2
from tensorboard.plugins.graph import keras_util
from tensorboard.plugins.hparams import api_pb2
from tensorboard.util import tensor_util

from shared import hparams, hypermodels, tuning
from shared.board import AttemptBoard


def _events(run_dir):
    return [event for path in sorted(glob.glob(f"{run_dir}/events.out.tfevents.*"))
            for event in EventFileLoader(path).Load()]


def _fit(tmp_path, model, hp, epochs=2):
    trial = kt.engine.trial.Trial(hp, trial_id="3")
    log_dir = hparams.attempt_log_dir(str(tmp_path), "3", 1, 0)
    attempt_board = AttemptBoard(log_dir, trial, "worker-1", "CPU", set(hp.values), 1)
    x, y = np.random.rand(32, 8, 8, 1).astype("float32"), np.random.randint(0, 10, 32)
    model.fit(x, y, validation_data=(x, y), epochs=epochs, batch_size=16, verbose=0, callbacks=[attempt_board])
    attempt_board.end(api_pb2.STATUS_SUCCESS, metrics={"val_accuracy": 0.5})
    return log_dir


@pytest.fixture(scope="module")
def guide_cnn():
    build = hypermodels.guide_build_model((8, 8, 1), 10)
    hp = tuning.explore_space(build).copy()
    hp.values.update(model_type="cnn", cnn_layers=2, dropout=True)
    return build, hp


def test_a_trained_attempt_has_every_epochs_curves_and_a_conceptual_graph_of_its_layers(tmp_path, guide_cnn):
    build, hp = guide_cnn
    keras.backend.clear_session()  # as KerasTuner does before each build: layer names from 1
    log_dir = _fit(tmp_path, build(hp), hp, epochs=3)
    events = _events(log_dir)
    steps = {}
    for event in events:
        for value in event.summary.value:
            if value.tag.startswith("epoch/"):
                steps.setdefault(value.tag, []).append(event.step)
    assert steps == {tag: [0, 1, 2] for tag in ("epoch/loss", "epoch/accuracy", "epoch/val_loss",
                                                "epoch/val_accuracy")}
    # the conceptual graph, through the converter the Graphs plugin runs on it
    [config] = [tensor_util.make_ndarray(v.tensor).item() for e in events for v in e.summary.value
                if v.metadata.plugin_data.plugin_name == "graph_keras_model"]
    graph = keras_util.keras_model_to_graph_def(json.loads(config))
    classes = [node.attr["keras_class"].s.decode() for node in graph.node]
    assert classes == ["InputLayer", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dropout", "Dense"]
    assert all("/" not in node.name for node in graph.node)  # drawn as layers, not one `functional` box
    assert all(list(node.input) == [graph.node[i].name] for i, node in enumerate(graph.node[1:]))  # a chain


def test_a_trained_attempt_has_the_op_graph_of_its_forward_pass(tmp_path, guide_cnn):
    build, hp = guide_cnn
    log_dir = _fit(tmp_path, build(hp), hp, epochs=1)
    [raw] = [event.graph_def for event in _events(log_dir) if event.graph_def]
    ops = {node.op for node in graph_pb2.GraphDef.FromString(raw).node}
    assert {"Conv2D", "MaxPool", "MatMul", "Softmax"} <= ops


def test_a_model_keras_cannot_describe_still_gets_its_curves(tmp_path):
    class Opaque(keras.Model):  # subclassed: no symbolic inputs, and a config Keras cannot rebuild
        def __init__(self):
            super().__init__()
            self.flat, self.out = keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")

        def call(self, x):
            return self.out(self.flat(x))

        def get_config(self):
            raise NotImplementedError("no config")

    model = Opaque()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    hp = kt.HyperParameters()
    log_dir = _fit(tmp_path, model, hp)
    tags = {value.tag for event in _events(log_dir) for value in event.summary.value}
    assert {"epoch/loss", "epoch/val_accuracy", "trial/val_accuracy"} <= tags
    assert not any(event.graph_def for event in _events(log_dir))
