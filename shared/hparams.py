"""TensorBoard HParams records, written with TensorBoard's own hparams summary API.

Each trial attempt is one TensorBoard session: its hyperparameter values (read
when training starts, i.e. after the model was built, so values first
registered during this trial's build are included), plus the `worker` that ran
it and the `device` it trained on, and an end record with its status.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from tensorboard.plugins.hparams import summary, summary_v2

WORKER = "worker"
DEVICE = "device"


def trial_values(hyperparameters, worker: str, device: str) -> dict:
    """The values to record for one trial: the model's active ones, then who ran it where."""
    values = {name: value for name, value in hyperparameters.values.items() if hyperparameters.is_active(name)}
    values[WORKER] = worker
    values[DEVICE] = device
    return values


class TrialRecorder(keras.callbacks.Callback):
    """Writes the HParams session start when training starts and its end when it ends.

    One writer (one event file) per session: TensorBoard reads a run's event
    files in order and never returns to an older one.
    """

    def __init__(self, log_dir: str, trial, worker: str, device: str):
        super().__init__()
        self.log_dir, self.trial, self.worker, self.device = log_dir, trial, worker, device
        self._writer = None

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            summary_v2.hparams(
                trial_values(self.trial.hyperparameters, self.worker, self.device),
                trial_id=self.trial.trial_id,
            )
        self._writer.flush()

    def end(self, status: int) -> None:
        """Write the session's end record (the tuner calls it once the trial's status is known)."""
        if self._writer is None:
            return
        with self._writer.as_default():
            raw = summary.session_end_pb(status).SerializeToString()
            tf.summary.experimental.write_raw_pb(raw, step=0)
        self._writer.close()
        self._writer = None
