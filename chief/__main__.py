"""`python -m chief`: serve the search. `python -m chief status`: progress and the trial table
(from the state files). `python -m chief health`: is the oracle serving (Compose's healthcheck)?

Exit codes: 0 search finished (results written), 1 runtime failure (e.g. the
dataset could not be downloaded), 2 bad setting (one line naming it).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from shared import config as config_module
from shared.config import ConfigError

log = logging.getLogger("ktcluster.chief")


def _fail(code: int, message: str) -> int:
    print(f"ktcluster chief: {message}", file=sys.stderr, flush=True)
    return code


def health(settings) -> int:
    """0 once the oracle accepts gRPC connections (over TLS with KTC_TLS_DIR), else 1 (within 3 s).
    Imports gRPC only (shared.tls.wait_ready): Compose runs it every few seconds, also while the
    chief starts, and importing the oracle's modules (KerasTuner, so TensorFlow) there cost CPU
    seconds per probe, taken from the chief and workers."""
    from shared import tls

    address = f"{'127.0.0.1' if settings.oracle_ip in ('0.0.0.0', '::') else settings.oracle_ip}:{settings.oracle_port}"
    try:
        return 0 if tls.wait_ready(address, timeout=3, tls_dir=settings.tls_dir) else 1
    except ConfigError as exc:  # an unusable KTC_TLS_DIR
        return _fail(2, str(exc))


def status(settings) -> int:
    from chief import status as status_module

    from chief.journal import JournalCorrupt

    try:
        snap = status_module.snapshot(settings)
    except JournalCorrupt as exc:
        return _fail(1, str(exc))
    if snap is None:
        return _fail(1, f"no search state for project {settings.project!r} in {settings.state_dir}")
    print(status_module.render(snap))
    return 0


class _Exit(Exception):
    """Stop start-up with an exit code and a one-line message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _prepare(settings):
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
        raise _Exit(2, str(exc)) from None
    except DataError as exc:
        raise _Exit(1, str(exc)) from None
    try:
        space = tuning.explore_space(build_model)
    except Exception as exc:
        raise _Exit(2, f"KTC_MODEL={settings.model or '(guide model)'}: building the model failed: "
                       f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None
    metrics = _model_metrics(space, build_model, dataset)
    reported = metrics + [f"val_{m}" for m in metrics] if metrics else None
    if reported and oracle.objective.name not in reported:
        raise _Exit(2, f"KTC_OBJECTIVE={oracle.objective.name}: the model does not report it; "
                       f"it reports {', '.join(reported)}")
    return dataset, build_model, oracle, space, metrics


def run(settings) -> int:
    from shared.devices import hide_gpus

    hide_gpus()  # the chief trains nothing; leave every GPU to the workers
    from chief import progress
    from chief.server import PortInUse, bind

    try:  # bind first: a second chief or a busy port fails before any slow work
        server, port = bind(settings.oracle_address, tls_dir=settings.tls_dir)
    except PortInUse:
        return _fail(2, f"KERASTUNER_ORACLE_PORT={settings.oracle_port}: {settings.oracle_address} is already "
                        "in use (another chief?); only one chief may serve a port")
    except ConfigError as exc:  # an unusable KTC_TLS_DIR
        return _fail(2, str(exc))
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        dataset, build_model, oracle, space, metrics = _prepare(settings)
    except _Exit as exc:
        return _fail(exc.code, str(exc))

    from chief.coordinator import Coordinator
    from chief.journal import JournalCorrupt, StorageUnavailable
    from chief.oracle import version_warning
    from chief.recovery import InconsistentState
    from chief.server import serve

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
                                  on_attempt_lost=_attempt_lost_shower(settings))
    except (InconsistentState, JournalCorrupt) as exc:
        return _fail(1, f"KTC_PROJECT={settings.project}: {exc}")
    if oracle.trials:
        log.info("resumed project %s: %d trials on record", settings.project, len(oracle.trials))
    oracle.update_space(space)  # the whole space, before any trial: no branch is discovered late
    try:
        coordinator.save_state()
        _write_hparams_config(settings, oracle, metrics, build_model)
        if not coordinator.finished.is_set():  # the search as it runs, for `python -m chief status`
            from chief.status import record_search

            record_search(settings, oracle, fsync=settings.fsync)
    except OSError as exc:
        return _fail(1, f"cannot write the project's files ({exc}); free space or fix KTC_STATE_DIR/KTC_LOG_DIR")

    if not coordinator.finished.is_set():  # a finished project is only reported, never re-run
        serve(server, coordinator)
        log.info("oracle serving on port %d: %s search, %s trials, objective %s, dataset %s",
                 port, settings.tuner, settings.max_trials, settings.objective.name, settings.dataset)
        reaper = threading.Thread(target=_reap, args=(coordinator, settings.heartbeat_seconds),
                                  name="lease-reaper", daemon=True)
        reaper.start()
        coordinator.finished.wait()
        unheard = coordinator.wait_for_stop_heard(settings.stop_grace_seconds)
        if unheard:
            log.warning("stopping without telling %s (no request within %.0fs)", ", ".join(unheard),
                        settings.stop_grace_seconds)
        server.stop(grace=5).wait()
        if coordinator.faults.over():
            return _fail(1, f"search stopped: {coordinator.fatal}")
    else:
        log.info("project %s is already finished: reporting its results", settings.project)
    snap = coordinator.snapshot()
    try:
        coordinator.close()
        log.info(progress.final_report(snap, settings.project_results_dir))
    except StorageUnavailable as exc:
        return _fail(1, f"the last results could not be stored ({exc}): no worker was told they were; free space, "
                        "then start the chief again: those trials run again")
    except OSError as exc:
        return _fail(1, f"writing the state or results files failed ({exc}); the journal holds every result: "
                        "free space, then start the chief again to write them")
    if snap.best is not None:
        _save_best_model(snap.best, snap.runs[snap.best.trial_id].accepted, build_model, settings)
    _give_results_away(settings)
    if snap.fatal:
        return _fail(1, f"search stopped: {snap.fatal}")
    coordinator.mark_finished(progress.summary_record(snap))
    return 0


def _model_metrics(space, build_model, dataset) -> list[str] | None:
    """The metric names Keras will report for this model (None if a dry run is not possible)."""
    from shared import hparams

    try:
        return hparams.reported_metrics(build_model(space.copy()), dataset.x_val, dataset.y_val)
    except Exception as exc:  # an exotic model: trials will tell
        log.warning("could not dry-run the model to list its metrics (%s)", exc)
        return None


def _write_hparams_config(settings, oracle, metrics, build_model) -> None:
    """TensorBoard's HParams experiment config from the declared space and the model's metrics;
    the hyperparameters every build asks for are the candidates for the default columns."""
    from shared import hparams

    metrics = metrics or ["loss", oracle.objective.name.removeprefix("val_")]
    space = oracle.get_space()
    always = hparams.always_used(build_model, space)
    path = hparams.write_experiment_config(settings.project_log_dir, space, metrics, oracle.objective, always)
    log.info("HParams config: %d hyperparameters (always used: %s), metrics %s (%s)", len(space.space),
             ", ".join(always) or "none", metrics, path)


def _save_best_model(best, attempt, build_model, settings) -> None:
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


def _attempt_lost_shower(settings):
    """Close a lost attempt's sessions in TensorBoard, so its row says `lost`, not running."""
    from shared import hparams

    def show(trial_id: str, attempt: int, reason: str) -> None:
        try:
            hparams.mark_attempt_lost(settings.project_log_dir, trial_id, attempt, reason)
        except OSError as exc:
            log.warning("trial %s attempt %d: could not mark it lost in TensorBoard (%s)", trial_id, attempt, exc)

    return show


def _give_results_away(settings) -> None:
    """The results belong to whoever owns the results folder (in Compose: the user's ./results)."""
    from shared import results

    try:
        results.give_to_folder_owner(settings.results_dir, settings.project_results_dir)
    except OSError as exc:  # e.g. a host folder that refuses chown: the files are there all the same
        log.warning("results in %s keep their owner: %s", settings.project_results_dir, exc)


def _on_sigterm(signum, frame):
    """`docker compose stop/restart`: every acknowledged result is already on disk, so just go."""
    log.warning("SIGTERM: stopping; results so far are saved, start the chief again to resume")
    raise SystemExit(143)


def _reap(coordinator, interval: float) -> None:
    """Expire silent workers' leases until the search is over (no busy polling: event waits)."""
    while not coordinator.finished.wait(interval):
        coordinator.expire_leases()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from shared.logs import configure_logging

    configure_logging("chief", sys.stdout)
    try:
        settings = config_module.load(role="chief" if not argv else "probe")
    except ConfigError as exc:
        return _fail(2, str(exc))
    if argv == ["health"]:
        return health(settings)
    if argv == ["status"]:
        return status(settings)
    if argv:
        return _fail(2, f"unknown command {' '.join(argv)!r}: use 'python -m chief', 'python -m chief status' "
                        "or 'python -m chief health'")
    return run(settings)


def _exit_now(code: int) -> None:
    """Leave without the interpreter's teardown: every file is written and closed by now, and
    tearing down TensorFlow's modules and heap only frees memory the OS takes back anyway, and
    would hold the chief's exit, the end of a search, for seconds. Logs and output are flushed first."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
