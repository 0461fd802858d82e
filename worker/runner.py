"""Ask -> train -> report, using KerasTuner's own Tuner for the training part.

Each attempt writes its checkpoint and build config into its own folder
(`shared.layout.attempt_dir`), so an attempt that was taken away can never overwrite the files
of the attempt the chief accepts; a lost attempt stops at its next batch (worker.guard) and
sends nothing more (worker.client).

Every hyperparameter an attempt draws is recorded (`ClusterTuner.run_trial`, the outermost
run_trial also when a user's Tuner class is combined with it: worker.tuners), wherever it is
drawn: in the build, in a HyperModel.fit, in a Tuner's run_trial. Those first drawn outside the
build reach the chief with the trial's end (stock Oracle.end_trial merges them into the space).

Private KerasTuner names used here, each overridden through a subclass:
- `Tuner._configure_tensorboard_dir`: one TensorBoard run per attempt (shared.board), with ktcluster's HParams;
- `Tuner._get_checkpoint_fname`, `Tuner._get_build_config_fname`: the per-attempt folders;
"""

from __future__ import annotations

import gc
import logging
import os
import time

import grpc
import keras
import keras_tuner as kt
import tensorflow as tf
from tensorboard.plugins.hparams import api_pb2

from shared import board, fingerprint, hparams, layout, tuning
from shared.logs import last_line
from worker.client import AttemptLost, OracleClient
from worker.guard import AttemptGuard

log = logging.getLogger("ktcluster.worker")


def _gradient_registry() -> dict:
    """TensorFlow's global table of gradient functions (private; {} if it ever moves)."""
    from tensorflow.python.framework import ops

    return getattr(getattr(ops, "_gradient_registry", None), "_registry", {})


def gradient_names() -> set[str]:
    """The gradient functions registered now: what `release_traced_gradients` keeps."""
    return set(_gradient_registry())


def release_traced_gradients(before: set[str]) -> int:
    """Drop the `CustomGradient-*` entries registered since `before`; return how many.

    Each `fit` traces the train step, and Keras' optimizer all-reduce inside it registers a
    `tf.custom_gradient` closure in TensorFlow's global gradient registry, never removed
    (tensorflow/tensorflow#97697; tf-keras#898 purges them in clear_session). Each closure pins
    its whole traced graph, which `clear_session()` cannot free and every later garbage collection
    scans again (memory and time outside `fit` grow trial by trial: benchmarks/RESULTS.md,
    section 4). Once a trial has ended nothing differentiates through its
    graphs again, so its registrations can go; entries from before it (the user's own) stay.
    """
    registry = _gradient_registry()
    stale = [name for name in registry if name.startswith("CustomGradient-") and name not in before]
    for name in stale:
        del registry[name]
    return len(stale)


class ClusterTuner(kt.Tuner):
    """A stock Tuner that talks to the ktcluster chief and records ktcluster's HParams.

    `hypermodel`: a keras_tuner.HyperModel, a build_model(hp) function or None (a user's
    run_trial that needs none); `callbacks()`: a fresh list of the user's Keras callbacks for each
    attempt (shared.tuning.user_callbacks). A user's Tuner class is built on it by
    worker.tuners (its own __init__ is not called: the oracle is the chief's)."""

    def __init__(self, settings, tuner_id: str, device: str, hypermodel, callbacks=list):
        # KerasTuner's own variables decide, at construction, that this process is a worker.
        os.environ.update(KERASTUNER_ORACLE_IP=settings.oracle_ip,
                          KERASTUNER_ORACLE_PORT=str(settings.oracle_port), KERASTUNER_TUNER_ID=tuner_id)
        local_oracle = tuning.make_oracle(settings)  # the stock client wraps this very object
        kt.Tuner.__init__(
            self,
            oracle=local_oracle,
            hypermodel=hypermodel,
            directory=settings.state_dir,
            project_name=settings.project,
            tuner_id=tuner_id,
            overwrite=False,  # never: the project folder is shared with the chief
        )
        # Replace the stock client (hour-long waits, no identity, no IDLE backoff) with ours.
        self.oracle = OracleClient(local_oracle, settings.oracle_address, tuner_id,
                                   settings.chief_timeout_seconds, settings.project_state_dir,
                                   tls_dir=settings.tls_dir)
        self.settings, self.device = settings, device
        self._boards: dict[str, list[board.AttemptBoard]] = {}
        self._used: set[str] = set()  # hyperparameters the current attempt asked for (build, fit, run_trial)
        self._callbacks = callbacks
        self._gradients_before: set[str] = set()

    def _attempt_file(self, trial_id: str, name: str) -> str:
        """`name` in our running attempt's folder (created here); for any other trial (Hyperband
        warm starts from a finished one): in its accepted attempt's folder, or where projects
        written before per-attempt folders have it."""
        state = self.settings.project_state_dir
        attempt = self.oracle.attempt_of(trial_id)
        if attempt is None:
            attempt = layout.accepted_attempt(state, trial_id)
            if attempt is None:
                return os.path.join(layout.trial_dir(state, trial_id), name)
            return os.path.join(layout.attempt_dir(state, trial_id, attempt), name)
        folder = layout.attempt_dir(state, trial_id, attempt)
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, name)

    def _get_checkpoint_fname(self, trial_id):
        return self._attempt_file(trial_id, layout.CHECKPOINT)

    def _get_build_config_fname(self, trial_id):
        return self._attempt_file(trial_id, layout.BUILD_CONFIG)

    def run_trial(self, trial, *fit_args, **fit_kwargs):
        """The attempt, recording every hyperparameter it asks for (build, fit, run_trial), with
        the user's callbacks (fresh for this attempt) and AttemptGuard ahead of KerasTuner's
        checkpoint callback. A run_trial that trains no Keras model still gets its HParams
        session (`_board_without_fit`)."""
        guard = AttemptGuard(trial.trial_id, self.oracle.is_lost, AttemptLost,
                             self._get_checkpoint_fname(trial.trial_id))
        started = time.time()
        with tuning.recording_used(trial.hyperparameters) as used:
            self._used = used  # the attempt's boards and on_trial_end read this very set
            try:
                fit_kwargs["callbacks"] = [*fit_kwargs.get("callbacks", []), *self._callbacks(), guard]
                return super().run_trial(trial, *fit_args, **fit_kwargs)
            finally:
                if trial.trial_id not in self._boards:
                    self._board_without_fit(trial, started)

    def _board_without_fit(self, trial, started: float) -> None:
        """The attempt's TensorBoard run when no Keras fit ran in it (KerasTuner guide "Tune
        anything"): its HParams session starts at `started` and ends in on_trial_end."""
        self._new_board(trial, 0).begin(started)

    def _new_board(self, trial, execution: int) -> board.AttemptBoard:
        """The TensorBoard run of this execution of our attempt at `trial`, kept for on_trial_end."""
        attempt = self.oracle.attempt_of(trial.trial_id) or 1
        log_dir = hparams.attempt_log_dir(self.settings.project_log_dir, trial.trial_id, attempt, execution)
        attempt_board = board.AttemptBoard(log_dir, trial, self.tuner_id, self.device, self._used, attempt)
        self._boards.setdefault(trial.trial_id, []).append(attempt_board)
        return attempt_board

    def save(self):
        """The worker's own tuner file (`<project>/<tuner id>.json`, KerasTuner's): a failed
        write (a full disk) is logged, not fatal: nothing reads it back but a restarted worker."""
        try:
            super().save()
        except (OSError, tf.errors.OpError) as exc:
            log.warning("%s: could not save the tuner's state file: %s", self.tuner_id, exc)

    def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
        """Give this execution of the attempt its own TensorBoard run (shared.board), and point a
        TensorBoard callback of the caller's, if any, at that run too."""
        attempt_board = self._new_board(trial, execution)
        for callback in callbacks:
            if isinstance(callback, keras.callbacks.TensorBoard):
                callback.log_dir = attempt_board.log_dir
        callbacks.append(attempt_board)

    def on_trial_begin(self, trial):
        self._used = set()
        self._gradients_before = gradient_names()
        attempt = self.oracle.attempt_of(trial.trial_id) or 1
        log.info("%s starts trial %s (attempt %d): %s", self.tuner_id, trial.trial_id, attempt,
                 trial.hyperparameters.values)
        if attempt > 1:  # a dead attempt's HParams session must not stay "running"
            try:
                hparams.close_earlier_attempts(self.settings.project_log_dir, trial.trial_id, attempt, self.tuner_id)
            except OSError as exc:
                log.warning("could not close the HParams sessions of trial %s's earlier attempts: %s",
                            trial.trial_id, exc)
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        """Close the attempt's TensorBoard runs and report the end; a lost attempt reports
        nothing (the client sends no EndTrial for it) and its runs end as a failure."""
        lost = self.oracle.is_lost(trial.trial_id)
        failed = lost or trial.status != kt.engine.trial.TrialStatus.COMPLETED
        metrics = None if failed else self._recorded_metrics(trial.trial_id)
        for attempt_board in self._boards.pop(trial.trial_id, []):
            attempt_board.end(api_pb2.STATUS_FAILURE if failed else api_pb2.STATUS_SUCCESS,
                              "attempt taken away" if lost else trial.message if failed else "", lost=lost,
                              metrics=metrics)
        self.oracle.attempts.record_used(trial.trial_id, self._used)
        if lost:
            pass  # the client logged it once, when it learnt it
        elif failed:
            log.warning("%s: trial %s failed: %s", self.tuner_id, trial.trial_id,
                        last_line(trial.message) or "no message")
        else:
            log.info("%s ends trial %s: %s", self.tuner_id, trial.trial_id, trial.status)
        super().on_trial_end(trial)
        release_traced_gradients(self._gradients_before)

    def _recorded_metrics(self, trial_id: str) -> dict | None:
        """The trial's metrics as the oracle recorded them (for each, its best value: the
        objective's is the trial's score), for TensorBoard's HParams; None if the chief cannot
        say (the dashboard then shows no metrics for the trial; its result still counts)."""
        try:
            tracker = self.oracle.get_trial(trial_id).metrics
            return {name: tracker.get_best_value(name) for name in tracker.metrics}
        except (grpc.RpcError, kt.errors.FatalError) as exc:
            log.warning("%s: trial %s: the chief did not return its metrics for TensorBoard (%s)",
                        self.tuner_id, trial_id, exc)
            return None


def run(settings, tuner_id: str, device: str, dataset, hypermodel) -> None:
    """Serve trials until the chief says stop. ConfigError (exit 2, one line) for a KTC_TUNER,
    KTC_MODEL or KTC_CALLBACKS the worker cannot run with, before the chief is called."""
    from worker.tuners import tuner_class

    choice = tuning.resolve_tuner(settings.tuner)
    tuning.check_model_for(choice, settings.model)
    tuner = tuner_class(choice)(settings, tuner_id, device, hypermodel, tuning.user_callbacks(settings))
    try:
        tuner.oracle.register(claim_seconds=3 * settings.heartbeat_seconds + 2,
                              fingerprint=fingerprint.of(settings, hypermodel).to_wire())
        # KerasTuner runs two full garbage collections before every build (~0.2 s each with
        # TensorFlow's heap). Everything alive now (TensorFlow, the data) lives for the whole
        # process: freeze it out of the collector's sight, so those collections scan only what
        # trials create.
        gc.freeze()
        tuner.search(**dataset.fit_kwargs(), epochs=settings.epochs, verbose=2)
    finally:
        tuner.oracle.close()
