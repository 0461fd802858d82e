"""TensorBoard HParams, written with TensorBoard's own hparams summary API.

- Experiment config (chief, once per project, at the log root): every
  hyperparameter of the declared search space with its true domain (discrete
  ints stay discrete), plus `worker` and `device`, and the metrics the model
  reports, with readable names and the objective's direction. TensorBoard then
  stops guessing domains from the values it happened to see.
- Per trial attempt (worker): one session with the values the model was
  actually built with (read after the build, so first-time hyperparameters are
  in and sampled-but-unused ones are out), who ran it where, and an end record
  with its status (success or failure).
"""

from __future__ import annotations

import glob
import os

import keras
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp_api
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2, summary, summary_v2

WORKER = "worker"
DEVICE = "device"
CONFIG_SUFFIX = ".ktcluster-hparams"
MAX_DISCRETE = 32
HYPERBAND_PREFIX = "tuner/"  # Hyperband's own bookkeeping values (epochs per bracket): shown too


def trial_values(hyperparameters, worker: str, device: str, used=None) -> dict:
    """The values to record for one trial: those the build used (all active ones if unknown)."""
    values = {
        name: value for name, value in hyperparameters.values.items()
        if hyperparameters.is_active(name) and (not used or name in used or name.startswith(HYPERBAND_PREFIX))
    }
    values[WORKER] = worker
    values[DEVICE] = device
    return values


def domain(hp):
    """KerasTuner hyperparameter -> TensorBoard domain, exactly as declared."""
    from shared.tuning import discrete_values

    kinds = __import__("keras_tuner").engine.hyperparameters
    values = discrete_values(hp)
    if values is not None and len(values) <= MAX_DISCRETE:
        return hp_api.Discrete(values)
    if isinstance(hp, kinds.Int):
        return hp_api.IntInterval(hp.min_value, hp.max_value)
    if isinstance(hp, kinds.Float):
        return hp_api.RealInterval(float(hp.min_value), float(hp.max_value))
    return None


def _readable(name: str) -> str:
    return name.replace("_", " ")


def metric_infos(metric_names, objective) -> list:
    """(training|validation, epoch_<name>) for each metric Keras logs; the objective says its direction."""
    metrics = []
    for name in metric_names:
        for group, split, prefix in (("validation", "validation", "val_"), ("train", "training", "")):
            is_objective = prefix + name == objective.name
            description = (f"objective: {'maximize' if objective.direction == 'max' else 'minimize'} "
                           f"{objective.name}") if is_objective else ""
            metrics.append(hp_api.Metric(f"epoch_{name}", group=group,
                                         display_name=f"{split} {_readable(name)}", description=description))
    return metrics


def write_experiment_config(log_root: str, space, metric_names, objective) -> str:
    """(Re)write the one experiment config of this log root; returns its path.

    TensorBoard uses the first config it finds, so an older one of ours is
    removed first: a re-run chief never leaves two conflicting configs.
    """
    os.makedirs(log_root, exist_ok=True)
    for old in glob.glob(os.path.join(log_root, f"events.out.tfevents.*{CONFIG_SUFFIX}")):
        os.unlink(old)
    hparams = [hp_api.HParam(hp.name, domain(hp), display_name=_readable(hp.name)) for hp in space.space]
    hparams += [hp_api.HParam(WORKER, display_name="worker", description="tuner id of the worker that ran the trial"),
                hp_api.HParam(DEVICE, display_name="device", description="GPU name or CPU")]
    pb = summary_v2.hparams_config_pb(hparams=hparams, metrics=metric_infos(metric_names, objective))
    experiment = pb.value[0].metadata.plugin_data
    data = plugin_data_pb2.HParamsPluginData.FromString(experiment.content)
    for info in data.experiment.hparam_infos:  # free-form strings: no domain, but a type, so the
        if info.name in (WORKER, DEVICE):     # dashboard offers a text filter instead of hiding rows
            info.type = api_pb2.DATA_TYPE_STRING
    experiment.content = data.SerializeToString()
    writer = tf.summary.create_file_writer(log_root, filename_suffix=CONFIG_SUFFIX)
    with writer.as_default():
        tf.summary.experimental.write_raw_pb(pb.SerializeToString(), step=0)
    writer.close()
    return glob.glob(os.path.join(log_root, f"events.out.tfevents.*{CONFIG_SUFFIX}"))[0]


def reported_metrics(model, x, y) -> list[str]:
    """Names Keras will log for this compiled model (loss and compiled metrics), from a 2-sample
    evaluate, run eagerly: tracing a graph for a throw-away model would cost the chief's start-up
    0.1-0.4 s more."""
    model.run_eagerly = True
    results = model.evaluate(x[:2], y[:2], verbose=0, return_dict=True)
    return sorted(results, key=lambda name: (name != "loss", name))


class TrialRecorder(keras.callbacks.Callback):
    """Writes the HParams session start when training starts; `end()` writes its status.

    One writer (one event file) per session: TensorBoard reads a run's event
    files in order and never returns to an older one.
    """

    def __init__(self, log_dir: str, trial, worker: str, device: str, used=None):
        super().__init__()
        self.log_dir, self.trial, self.worker, self.device, self.used = log_dir, trial, worker, device, used
        self._writer = None
        self._ended = False

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            summary_v2.hparams(
                trial_values(self.trial.hyperparameters, self.worker, self.device, self.used),
                trial_id=self.trial.trial_id,
            )
        self._writer.flush()

    def end(self, status: int, message: str = "") -> None:
        """Write the session's end record once the trial's status is known.

        A trial that failed before training (e.g. in its build) still gets a
        session, so it shows as failed; the message goes to the Text tab.
        """
        if self._ended:
            return
        if self._writer is None:
            self.on_train_begin()
        with self._writer.as_default():
            if message:
                tf.summary.text("failure", message, step=0)
            raw = summary.session_end_pb(status).SerializeToString()
            tf.summary.experimental.write_raw_pb(raw, step=0)
        self._writer.close()
        self._writer, self._ended = None, True
