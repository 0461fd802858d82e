"""Ask -> train -> report, using KerasTuner's own Tuner for the training part."""

from __future__ import annotations

import logging
import os

import keras
import keras_tuner as kt

from shared import hparams, tuning
from worker.client import OracleClient

log = logging.getLogger("ktcluster.worker")


class ClusterTuner(kt.Tuner):
    """A stock Tuner that talks to the ktcluster chief and records ktcluster's HParams."""

    def __init__(self, settings, tuner_id: str, device: str, build_model):
        # KerasTuner's own variables decide, at construction, that this process is a worker.
        os.environ.update(KERASTUNER_ORACLE_IP=settings.oracle_ip,
                          KERASTUNER_ORACLE_PORT=str(settings.oracle_port), KERASTUNER_TUNER_ID=tuner_id)
        kt.Tuner.__init__(
            self,
            oracle=tuning.make_oracle(settings),
            hypermodel=build_model,
            directory=settings.state_dir,
            project_name=settings.project,
            tuner_id=tuner_id,
            overwrite=False,  # never: the project folder is shared with the chief
        )
        # Replace the stock client (hour-long waits, no IDLE backoff) with ours.
        self.oracle = OracleClient(self.oracle._oracle, settings.oracle_address, tuner_id,
                                   settings.chief_timeout_seconds)
        self.settings, self.device = settings, device

    def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
        """Each attempt logs to <log root>/<trial_id>/execution<N> with ktcluster's HParams record."""
        for callback in list(callbacks):
            if isinstance(callback, keras.callbacks.TensorBoard):
                log_dir = os.path.join(self.settings.project_log_dir, trial.trial_id, f"execution{execution}")
                callback.log_dir = log_dir
                callbacks.append(hparams.TrialRecorder(log_dir, trial, self.tuner_id, self.device))

    def on_trial_begin(self, trial):
        log.info("%s starts trial %s: %s", self.tuner_id, trial.trial_id, trial.hyperparameters.values)
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        log.info("%s ends trial %s: %s", self.tuner_id, trial.trial_id, trial.status)
        super().on_trial_end(trial)


class HyperbandClusterTuner(ClusterTuner, kt.Hyperband):
    """Hyperband's run_trial/_build_hypermodel (epochs per bracket, warm starts) on ClusterTuner."""


def tuner_for(settings, tuner_id: str, device: str, build_model) -> ClusterTuner:
    cls = HyperbandClusterTuner if settings.tuner == "hyperband" else ClusterTuner
    return cls(settings, tuner_id, device, build_model)


def run(settings, tuner_id: str, device: str, dataset, build_model) -> None:
    tuner = tuner_for(settings, tuner_id, device, build_model)
    try:
        tuner.search(
            dataset.x_train, dataset.y_train,
            validation_data=(dataset.x_val, dataset.y_val),
            epochs=settings.epochs,
            callbacks=[keras.callbacks.TensorBoard(settings.project_log_dir)],
            verbose=2,
        )
    finally:
        tuner.oracle.close()
