"""One TensorBoard run per trial attempt: its curves, its graphs, its HParams session.

Layout of an attempt's run (`hparams.attempt_log_dir`: `<trial>/execution<N>`, retries in
`<trial>/attempt<k>/execution<N>`), written by `AttemptBoard`, a Keras callback:
- per-epoch curves, every value Keras logs, as scalars `epoch/<name>` (`epoch/loss`,
  `epoch/accuracy`, `epoch/val_loss`, `epoch/val_accuracy`: one section of the Scalars
  dashboard, opened first, a line per trial in each chart): one run holds training and
  validation, so a trial costs the Scalars dashboard one run, not three (`train/`,
  `validation/` and the session), and TensorBoard, which ticks no run once there are more than
  40, draws every trial of a guide-sized search on first opening;
- the model's graphs, once, after the first epoch: Keras's model config as a conceptual graph
  whose layers stand at the top level (Keras 3 nests them all in one `functional` node), and,
  on the TensorFlow backend, the op graph of the model's forward pass (Keras 3's callback writes
  none: tensorflow/tensorboard#7006);
- the HParams sessions (`shared.hparams`): the `live` placeholder while it trains, then the
  final session with, for a completed attempt, the trial's metrics as the oracle recorded them
  (`trial/<name>`, a section after the curves: KerasTuner scores a trial by its best epoch, not
  its last).

The curves and graphs go through one event file, written by this process only and closed
before the final session's file is created, so TensorBoard (which reads a run's files in name
order and does not go back) never misses a value.
"""

from __future__ import annotations

import json
import logging
import time

import keras
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.graph import metadata as graph_metadata
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util

from shared import hparams
from shared.logs import last_line

log = logging.getLogger("ktcluster.board")
CONCEPTUAL_TAG = "keras"  # the tag Keras's own callback gives the model config


def epoch_tag(name: str) -> str:
    """The curve of a value Keras logs per epoch (`val_accuracy` -> `epoch/val_accuracy`)."""
    return f"epoch/{name}"


def conceptual_graph_event(model) -> event_pb2.Event:
    """The model's Keras config for the Graphs dashboard's conceptual view, its layers at the top
    level: the top model's name is the scope TensorBoard nests every layer in, so it is cleared."""
    config = json.loads(model.to_json())
    config.setdefault("config", {})["name"] = ""
    meta = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=graph_metadata.PLUGIN_NAME_KERAS_MODEL,
                                                           content=b"1"))
    value = summary_pb2.Summary.Value(tag=CONCEPTUAL_TAG, metadata=meta,
                                      tensor=tensor_util.make_tensor_proto(json.dumps(config).encode()))
    return event_pb2.Event(wall_time=time.time(), step=0, summary=summary_pb2.Summary(value=[value]))


def op_graph_event(model) -> event_pb2.Event | None:
    """The op graph of the model's forward pass (inference mode) on the TensorFlow backend, as
    the run's graph, each layer a box of its own on the first view; None on another backend or for a model without symbolic inputs (a
    subclassed model), which get the conceptual graph only."""
    if keras.backend.backend() != "tensorflow" or not getattr(model, "inputs", None):
        return None
    import tensorflow as tf

    inputs = model.inputs
    specs = [tf.TensorSpec(shape=t.shape, dtype=t.dtype) for t in inputs]

    @tf.function(autograph=False)
    def forward(*xs):  # `call`, not `__call__`: the layers' scopes at the top, not in one model box
        return model.call(list(xs) if len(xs) > 1 else xs[0], training=False)

    graph_def = forward.get_concrete_function(*specs).graph.as_graph_def()
    return event_pb2.Event(wall_time=time.time(), graph_def=graph_def.SerializeToString())


class AttemptBoard(keras.callbacks.Callback):
    """The TensorBoard run of one execution of one trial attempt, in `log_dir` (module docstring).

    `used`: the set of hyperparameter names the attempt asked for (in its build, its fit, its
    run_trial), filled in by the caller (read when sessions are written). `begin()` writes the
    running session (Keras calls it through on_train_begin; an attempt with no Keras fit calls it
    itself); `end()` writes the final session once the outcome is known; an attempt that failed
    before training (in its build) gets only that session. Not thread-safe:
    Keras calls it from the training thread, and `end()` comes after training.
    """

    def __init__(self, log_dir: str, trial, worker: str, device: str, used=None, attempt: int = 1):
        super().__init__()
        self.log_dir, self.trial, self.worker, self.device, self.used = log_dir, trial, worker, device, used
        self.attempt = attempt
        self._started: float | None = None
        self._writer: EventFileWriter | None = None
        self._graphs_written = False
        self._ended = False

    def _values(self) -> dict:
        return hparams.trial_values(self.trial.hyperparameters, self.worker, self.device, self.used)

    def begin(self, started: float) -> None:
        """The attempt's running session, started at `started` (time.time()), written once."""
        if self._started is not None:
            return
        self._started = started
        hparams.write_live_session(self.log_dir, self._values(),
                                   hparams.group_name(self.trial.trial_id, self.attempt, False), self._started)

    def on_train_begin(self, logs=None):
        self.begin(time.time())
        if self._writer is None:  # a fit of the user's that calls model.fit twice keeps one file
            self._writer = EventFileWriter(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        if self._writer is None:
            return
        if not self._graphs_written:
            self._graphs_written = True
            self._write_graphs()
        for name, value in (logs or {}).items():
            self._writer.add_event(hparams.summary_event(scalar_summary.scalar_pb(epoch_tag(name), float(value)), epoch))
        self._writer.flush()

    def _write_graphs(self) -> None:
        """Both graphs of the trained model; a model Keras cannot describe only loses its graph."""
        if self.model is None:
            return
        for make in (conceptual_graph_event, op_graph_event):
            try:
                event = make(self.model)
            except Exception as exc:  # e.g. a layer without get_config: the curves still matter
                log.info("trial %s: no %s for the Graphs tab (%s: %s)", self.trial.trial_id,
                         make.__name__.removesuffix("_event").replace("_", " "), type(exc).__name__, exc)
                continue
            if event is not None:
                self._writer.add_event(event)

    def end(self, status: int, message: str = "", lost: bool = False, metrics: dict | None = None) -> None:
        """Close the curves, then write the final session once (`status`: api_pb2.STATUS_SUCCESS
        or STATUS_FAILURE; `lost`: the attempt was taken away from this worker, status `lost`;
        `metrics`: the oracle's record of a completed trial, name -> value). If the chief
        already closed the attempt (`hparams.mark_attempt_lost`), its word stands."""
        if self._ended:
            return
        self._ended = True
        if self._writer is not None:
            self._writer.close()
        completed = status == api_pb2.STATUS_SUCCESS and not lost
        word = "completed" if completed else "lost" if lost else "failed"
        hparams.write_final_session(self.log_dir, self._values(),
                                    hparams.group_name(self.trial.trial_id, self.attempt, completed), word,
                                    "" if completed else last_line(message, hparams.ERROR_CHARS), message=message,
                                    start_time_secs=self._started, metrics=metrics if completed else None)
        if self._started is not None:
            hparams.end_live_session(self.log_dir)
