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
    """Dataset, model and oracle, each checked before any state is written."""
    from shared import data, hypermodels, tuning
    from shared.data import DataError
    from shared.loader import ImportFromStringError

    try:
        data.prepare(settings.dataset, settings.data_dir)
        dataset = data.load(settings.dataset, settings.data_dir)
        build_model = hypermodels.resolve(settings.model, dataset)
        from chief.oracle import cluster_class

        oracle = tuning.make_oracle(settings, extend=cluster_class)
    except (ConfigError, ImportFromStringError) as exc:
        raise StartFailed(2, str(exc)) from None
    except DataError as exc:
        raise StartFailed(1, str(exc)) from None
    try:
        space = tuning.explore_space(build_model)
    except Exception as exc:
        raise StartFailed(2, f"KTC_MODEL={settings.model or '(guide model)'}: building the model failed: "
                       f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None
    metrics = model_metrics(space, build_model, dataset)
    reported = metrics + [f"val_{m}" for m in metrics] if metrics else None
    if reported and oracle.objective.name not in reported:
        raise StartFailed(2, f"KTC_OBJECTIVE={oracle.objective.name}: the model does not report it; "
                       f"it reports {', '.join(reported)}")
    return dataset, build_model, oracle, space, metrics


def start(settings):
    """Data, model, oracle and the project's state, ready to serve: (coordinator, build_model).
    Raises StartFailed with the code and line for any failure; chief.project.Refused for a search
    space that changes a recorded hyperparameter's domain."""
    from chief import progress
    from chief.coordinator import Coordinator
    from chief.journal import JournalCorrupt
    from chief.oracle import version_warning
    from chief.recovery import InconsistentState
    from shared import fingerprint

    dataset, build_model, oracle, space, metrics = prepare(settings)
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
                                  fingerprint=fingerprint.of(settings, build_model))
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
        write_hparams_config(settings, oracle, metrics, build_model)
        if not coordinator.finished.is_set():  # the search as it runs, for `python -m chief status`
            from chief.status import record_search

            record_search(settings, oracle, fsync=settings.fsync)
    except OSError as exc:
        raise StartFailed(1, f"cannot write the project's files ({exc}); free space or fix "
                       "KTC_STATE_DIR/KTC_LOG_DIR") from None
    return coordinator, build_model


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


def write_hparams_config(settings, oracle, metrics, build_model) -> None:
    """TensorBoard's HParams experiment config from the declared space and the model's metrics;
    the hyperparameters every build asks for are the candidates for the default columns."""
    from shared import hparams

    metrics = metrics or ["loss", oracle.objective.name.removeprefix("val_")]
    space = oracle.get_space()
    always = hparams.always_used(build_model, space)
    path = hparams.write_experiment_config(settings.project_log_dir, space, metrics, oracle.objective, always)
    log.info("HParams config: %d hyperparameters (always used: %s), metrics %s (%s)", len(space.space),
             ", ".join(always) or "none", metrics, path)


def save_best_model(best, attempt, build_model, settings) -> None:
    """The checkpoint of the best trial's accepted `attempt` as a standard `.keras` file (load
    with keras.models.load_model)."""
    import json

    from shared import layout

    checkpoint = layout.find_checkpoint(settings.project_state_dir, best.trial_id, attempt)
    if checkpoint is None:
        log.warning("best trial %s (attempt %s) has no checkpoint: best_model.keras not written", best.trial_id, attempt)
        return
    model = build_model(best.hyperparameters.copy())
    build_config = layout.find_build_config(settings.project_state_dir, best.trial_id, attempt)
    if not model.built and build_config:
        model.build_from_config(json.load(open(build_config)))
    if getattr(model, "optimizer", None) is not None and model.built:
        # A trained model's checkpoint holds its optimizer's state too: a fresh optimizer has no
        # slots yet, so Keras would skip loading them ("Skipping variable loading for optimizer")
        # and save a file that warns again on every load_model.
        model.optimizer.build(model.trainable_variables)
    model.load_weights(checkpoint)
    path = os.path.join(settings.project_results_dir, "best_model.keras")
    model.save(path)
    log.info("best model (trial %s) saved to %s", best.trial_id, path)


def attempt_lost_shower(settings):
    """Close a lost attempt's sessions in TensorBoard, so its row says `lost`, not running."""
    from shared import hparams

    def show(trial_id: str, attempt: int, reason: str) -> None:
        try:
            hparams.mark_attempt_lost(settings.project_log_dir, trial_id, attempt, reason)
        except OSError as exc:
            log.warning("trial %s attempt %d: could not mark it lost in TensorBoard (%s)", trial_id, attempt, exc)

    return show
