"""Start-up of a chief that serves a search: the data, the model, the oracle and the project's
state, each checked before anything is served. Every failure is a `StartFailed` with the exit
code and the one-line message (`python -m chief` records it for the workers and exits)."""

from __future__ import annotations

import logging
import os

from shared.config import ConfigError

log = logging.getLogger("ktcluster.chief")


class StartFailed(Exception):
    """Stop start-up with an exit code and a one-line message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def prepare(settings):
    """Dataset, hypermodel (a keras_tuner.HyperModel, or None for KTC_MODEL=none), oracle, space
    and the model's metrics, each checked before any state is written. The model is dry-run for
    its metrics only when the workers train it with KerasTuner's own run_trial (no KTC_TUNER
    class); its objective is refused only when nothing but Keras's fit can report it (a
    HyperModel.fit of the user's may return metrics of its own)."""
    from shared import data, hypermodels, tuning
    from shared.data import DataError

    try:
        data.prepare(settings.dataset, settings.data_dir)
        dataset = data.load(settings.dataset, settings.data_dir)
        choice = tuning.resolve_tuner(settings.tuner)
        hypermodel = hypermodels.resolve(settings.model, dataset)
        tuning.check_model_for(choice, settings.model)
        tuning.user_callbacks(settings)  # checked once here; each worker attempt makes its own
        from chief.oracle import cluster_class

        oracle = tuning.make_oracle(settings, extend=cluster_class)
    except ConfigError as exc:  # ImportFromStringError too: a bad module:name
        raise StartFailed(2, str(exc)) from None
    except DataError as exc:
        raise StartFailed(1, str(exc)) from None
    if hypermodel is None:
        import keras_tuner as kt

        return dataset, None, oracle, kt.HyperParameters(), None
    try:
        space = tuning.explore_space(hypermodel.build)
    except Exception as exc:
        raise StartFailed(2, f"KTC_MODEL={settings.model or '(guide model)'}: building the model failed: "
                       f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None
    if choice.user_class is not None:  # the user's run_trial decides what is trained and reported
        return dataset, hypermodel, oracle, space, None
    metrics = model_metrics(space, hypermodel.build, dataset)
    reported = metrics + [f"val_{m}" for m in metrics] if metrics else None
    if reported and oracle.objective.name not in reported and not hypermodels.overrides_fit(hypermodel):
        raise StartFailed(2, f"KTC_OBJECTIVE={oracle.objective.name}: the model does not report it; "
                       f"it reports {', '.join(reported)}")
    return dataset, hypermodel, oracle, space, metrics


def start(settings):
    """Data, model, oracle and the project's state, ready to serve: (coordinator, hypermodel), the
    hypermodel None for KTC_MODEL=none. Raises StartFailed with the code and line for any failure;
    chief.project.Refused for a search space that changes a recorded hyperparameter's domain."""
    from chief import progress
    from chief.coordinator import Coordinator
    from chief.journal import JournalCorrupt
    from chief.oracle import version_warning
    from chief.recovery import InconsistentState
    from shared import fingerprint

    dataset, hypermodel, oracle, space, metrics = prepare(settings)
    warning = version_warning()
    if warning:
        log.warning("%s", warning)
    oracle.use_project(settings.state_dir, settings.project)
    oracle.verbose = 0  # the coordinator's progress lines replace KerasTuner's per-trial tables
    try:
        coordinator = Coordinator(oracle, settings.lease_seconds, settings.heartbeat_seconds,
                                  on_event=progress.ProgressLog(), fsync=settings.fsync,
                                  stock_lease_seconds=settings.stock_lease_seconds,
                                  storage_grace_seconds=settings.storage_grace_seconds,
                                  on_attempt_lost=attempt_lost_shower(settings),
                                  fingerprint=fingerprint.of(settings, hypermodel))
    except (InconsistentState, JournalCorrupt, OSError) as exc:  # OSError: the journal cannot be opened
        fix = "; make it writable by the chief, then start it again" if isinstance(exc, OSError) else ""
        raise StartFailed(1, f"KTC_PROJECT={settings.project}: {exc}{fix}") from None
    if oracle.trials:
        log.info("resumed project %s: %d trials on record", settings.project, len(oracle.trials))
    from chief import project

    project.check_space(settings, oracle.get_space(), space)  # a changed domain refuses the start (exit 2)
    oracle.update_space(space)  # the whole space, before any trial: no branch is discovered late
    try:
        coordinator.save_state()
        hparams_config = HParamsConfig(settings, metrics, hypermodel, oracle)
        hparams_config.start(oracle, defer=may_grow(settings, hypermodel) and not oracle.trials)
        oracle.on_end = hparams_config  # a trial that brings a hyperparameter or metric declares it
        if not coordinator.finished.is_set():  # the search as it runs, for `python -m chief status`
            from chief.status import record_search

            record_search(settings, oracle, fsync=settings.fsync)
    except OSError as exc:
        raise StartFailed(1, f"cannot write the project's files ({exc}); free space or fix "
                       "KTC_STATE_DIR/KTC_LOG_DIR") from None
    return coordinator, hypermodel


def model_metrics(space, build_model, dataset) -> list[str] | None:
    """The metric names Keras will report for this model (None if a dry run is not possible),
    from a dry run on `dataset.validation_sample()`: at most one batch read."""
    from shared import hparams

    try:
        sample = dataset.validation_sample()
        if sample is None:
            return None
        return hparams.reported_metrics(build_model(space.copy()), *sample)
    except Exception as exc:  # an exotic model: trials will tell
        log.warning("could not dry-run the model to list its metrics (%s)", exc)
        return None


class HParamsConfig:
    """TensorBoard's HParams experiment config, kept in step with what the chief learns.

    Written at start from the declared space and the model's metrics (`start`), or, for a new
    project whose trials may draw hyperparameters outside the build (`may_grow`), when its first
    trial ends: a running TensorBoard reads an experiment config once, the first it finds, so
    until then it shows every value the sessions carry, with domains it infers, rather than a
    config that lacks the fit-time columns. Called as the oracle's `on_end` after every trial's
    end, it writes the config again only when that end grew
    the space (a hyperparameter first drawn in HyperModel.fit or a Tuner's run_trial: stock's
    end_trial merges the trial's hyperparameters) or brought a metric not declared yet (a
    run_trial's own dict); otherwise it costs two comparisons. The hyperparameters every build
    asks for (the default columns) are found once, at start: later ones are drawn outside the
    build, where a dry build cannot see them."""

    def __init__(self, settings, metrics, hypermodel, oracle):
        from shared import hparams

        self.settings = settings
        objective = oracle.objective.name
        if metrics is None:  # no dry run: the objective, and Keras's loss when there is a model
            metrics = ["loss", objective.removeprefix("val_")] if hypermodel is not None else []
        self.metrics, self.extra = metrics, []  # extra: metrics learnt from trials, declared as named
        self.always = hparams.always_used(hypermodel.build, oracle.get_space()) if hypermodel is not None else []
        self.size, self.declared = -1, set()

    def start(self, oracle, defer: bool) -> None:
        if defer:
            log.info("HParams config: written when the first trial ends (trials may draw hyperparameters "
                     "outside the model's build)")
        else:
            self.write(oracle)

    def write(self, oracle) -> None:
        from shared import hparams

        space = oracle.get_space()
        path = hparams.write_experiment_config(self.settings.project_log_dir, space, self.metrics, oracle.objective,
                                               self.always, extra_metrics=self.extra)
        self.size = len(space.space)
        self.declared = set(hparams.declared_metrics(self.metrics, oracle.objective, self.extra))
        log.info("HParams config: %d hyperparameters (always used: %s), metrics %s (%s)", self.size,
                 ", ".join(self.always) or "none", sorted(self.declared), path)

    def __call__(self, oracle, trial) -> None:
        new = [name for name in trial.metrics.metrics if name not in self.declared]
        if len(oracle.hyperparameters.space) == self.size and not new:
            return
        self.extra += new
        try:
            self.write(oracle)
        except Exception as exc:  # inside end_trial: the result is recorded; only the new columns wait
            log.warning("could not rewrite the HParams config (%s: %s); it is written again when a trial brings "
                        "something new", type(exc).__name__, exc)


def may_grow(settings, hypermodel) -> bool:
    """Whether trials may draw hyperparameters a dry build cannot see: a HyperModel with its own
    fit, a KTC_TUNER class (its run_trial), or no model."""
    from shared import hypermodels, tuning

    return (hypermodel is None or hypermodels.overrides_fit(hypermodel)
            or tuning.resolve_tuner(settings.tuner).user_class is not None)


def save_best_model(best, attempt, hypermodel, settings) -> str:
    """The checkpoint of the best trial's accepted `attempt` as a standard `.keras` file (load
    with keras.models.load_model); returns what the final line says of it: where it went, or
    why there is none (no model; a run_trial that trained none, so no checkpoint)."""
    import json

    from shared import layout

    if hypermodel is None:
        return "no best_model.keras (no model: KTC_MODEL=none)"
    checkpoint = layout.find_attempt_file(settings.project_state_dir, best.trial_id, attempt, layout.CHECKPOINT)
    if checkpoint is None:
        log.warning("best trial %s (attempt %s) has no checkpoint: best_model.keras not written", best.trial_id, attempt)
        return f"no best_model.keras (trial {best.trial_id} left no checkpoint)"
    model = hypermodel.build(best.hyperparameters.copy())
    build_config = layout.find_attempt_file(settings.project_state_dir, best.trial_id, attempt,
                                             layout.BUILD_CONFIG)
    if not model.built and build_config:
        model.build_from_config(json.load(open(build_config)))
    if getattr(model, "optimizer", None) is not None and model.built:
        # A trained model's checkpoint holds its optimizer's state too: a fresh optimizer has no
        # slots yet, so Keras would skip loading them ("Skipping variable loading for optimizer")
        # and save a file that warns again on every load_model.
        model.optimizer.build(model.trainable_variables)
    model.load_weights(checkpoint)
    path = os.path.join(settings.project_results_dir, "best_model.keras")
    os.makedirs(settings.project_results_dir, exist_ok=True)
    model.save(path)
    log.info("best model (trial %s) saved to %s", best.trial_id, path)
    return f"best model in {path}"


def attempt_lost_shower(settings):
    """Close a lost attempt's sessions in TensorBoard, so its row says `lost`, not running."""
    from shared import hparams

    def show(trial_id: str, attempt: int, reason: str) -> None:
        try:
            hparams.mark_attempt_lost(settings.project_log_dir, trial_id, attempt, reason)
        except OSError as exc:
            log.warning("trial %s attempt %d: could not mark it lost in TensorBoard (%s)", trial_id, attempt, exc)

    return show
