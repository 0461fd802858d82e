"""`python -m chief`: serve the search. `python -m chief status`: progress and the trial table
(from the state files). `python -m chief health`: is the oracle serving (Compose's healthcheck)?

Exit codes: 0 search finished (results written; a finished project is only reported, with the
settings recorded for it), 1 runtime failure (e.g. the dataset could not be downloaded), 2 bad
setting (one line naming it; also: another chief holds the project, or a setting the project
cannot change was changed, one line each). A start that fails records why for the workers
(shared.layout.CHIEF_FAILED), so they exit with this reason and code instead of waiting. A chief
that lost its project to another chief (paused or cut off past its lease) exits 1 at once.
"""

from __future__ import annotations

import contextlib
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
    """Serve the search, or only report a finished project (`_finished_record`). A start that
    fails after the settings are read leaves shared.layout.CHIEF_FAILED for the workers. The
    project is held by one chief at a time (chief.project, chief.ownership), released on the way out."""
    from shared.devices import hide_gpus

    hide_gpus()  # the chief trains nothing; leave every GPU to the workers
    from chief.server import PortInUse, bind
    from shared import tls

    record = _finished_record(settings)
    if record is not None:
        return _report_finished(settings, record)
    try:  # bind first: a second chief or a busy port fails before any slow work
        server, port = bind(settings.oracle_address, tls_dir=settings.tls_dir)
    except PortInUse:  # no failure record: the chief that holds the port is the one workers need
        return _fail(2, f"KERASTUNER_ORACLE_PORT={settings.oracle_port}: {settings.oracle_address} is already "
                        "in use (another chief?); only one chief may serve a port")
    except ConfigError as exc:  # an unusable KTC_TLS_DIR
        return _start_failed(settings, 2, str(exc))
    log.info("%s", tls.describe(settings.tls_dir, "chief"))
    signal.signal(signal.SIGTERM, _on_sigterm)
    from chief import project

    try:  # one chief per project; settings the project cannot change (chief.project)
        held = project.take(settings)
    except project.Refused as exc:  # a chief that holds the project: no failure record (its workers need it)
        if exc.record:
            _record_failure(settings, exc.code, str(exc))
        for line in exc.lines:
            _fail(exc.code, line)
        return exc.code
    try:
        return _serve(settings, server, port)
    finally:
        held.release()


def _serve(settings, server, port) -> int:
    """run(), once the project is held: start, serve until the search is over, report."""
    from chief import progress

    try:
        coordinator, build_model = _start(settings)
    except _Exit as exc:
        return _start_failed(settings, exc.code, str(exc))
    except Exception as exc:  # a bug: the workers hear of it, the traceback stays here
        _record_failure(settings, 1, f"unexpected error at start: {type(exc).__name__}: {exc}")
        raise

    from chief.journal import StorageUnavailable
    from chief.server import serve

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


def _start(settings):
    """Data, model, oracle and the project's state, ready to serve: (coordinator, build_model).
    Raises _Exit with the code and line for any failure."""
    from chief import progress
    from chief.coordinator import Coordinator
    from chief.journal import JournalCorrupt
    from chief.oracle import version_warning
    from chief.recovery import InconsistentState
    from shared import fingerprint

    dataset, build_model, oracle, space, metrics = _prepare(settings)
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
                                  on_attempt_lost=_attempt_lost_shower(settings),
                                  fingerprint=fingerprint.of(settings, build_model))
    except (InconsistentState, JournalCorrupt, OSError) as exc:  # OSError: the journal cannot be opened
        fix = "; make it writable by the chief, then start it again" if isinstance(exc, OSError) else ""
        raise _Exit(1, f"KTC_PROJECT={settings.project}: {exc}{fix}") from None
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
        raise _Exit(1, f"cannot write the project's files ({exc}); free space or fix "
                       "KTC_STATE_DIR/KTC_LOG_DIR") from None
    return coordinator, build_model


def _record_failure(settings, code: int, message: str) -> None:
    """Leave the failed start's record for the workers (shared.layout.CHIEF_FAILED); best effort:
    a state disk that refuses it is what the message already says."""
    from shared import layout

    try:
        layout.write_chief_failure(settings.project_state_dir, message, code)
    except OSError as exc:
        log.warning("could not record the failed start for the workers in %s (%s)", settings.project_state_dir, exc)


def _start_failed(settings, code: int, message: str) -> int:
    _record_failure(settings, code, message)
    return _fail(code, message)


def _finished_record(settings):
    """Report only, or run? Decided first, before any data, model or TensorFlow is loaded.

    Returns the project's chief.status.SearchRecord when the project is finished
    (shared.layout.FINISHED_MARKER) and the settings now ask for no more trials than it was run
    with: the chief then only reports it, with the settings recorded for it (whatever KTC_DATASET,
    KTC_MODEL, KTC_OBJECTIVE... say now), and exits 0. Returns None (start or go on with the
    settings given now) when the project is not finished (new, or stopped midway: it resumes);
    when KTC_MAX_TRIALS was raised above the recorded one for a tuner with a trial budget (the
    search continues); or when it has no valid record (a project from before records: the
    coordinator decides, with today's settings, as it did before)."""
    from chief.status import SearchRecord, read_search
    from shared import layout

    if not layout.search_finished(settings.project_state_dir):
        return None
    try:
        record = read_search(settings.project_state_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s in project %s cannot be read (%s): using the settings given now", layout.SEARCH_RECORD,
                    settings.project, type(exc).__name__)
        return None
    kinds = dict(tuner=str, epochs=int, objective=str, direction=str, dataset=str, model=str)
    if (not isinstance(record, SearchRecord) or type(record.max_trials) not in (int, type(None))
            or any(type(getattr(record, name)) is not kind for name, kind in kinds.items())):
        return None
    if settings.tuner != "hyperband" and record.max_trials is not None and settings.max_trials > record.max_trials:
        log.info("project %s is finished with %d trials; KTC_MAX_TRIALS=%d: continuing it", settings.project,
                 record.max_trials, settings.max_trials)
        return None
    return record


def _report_finished(settings, record) -> int:
    """A finished project's results and final line, from its files and recorded settings (no data
    or model is loaded; best_model.keras is the one written when it finished)."""
    from chief import progress, status
    from chief.journal import JournalCorrupt

    now = {"KTC_TUNER": (record.tuner, settings.tuner), "KTC_EPOCHS": (record.epochs, settings.epochs),
           "KTC_OBJECTIVE": (record.objective, settings.objective.name),
           "KTC_DATASET": (record.dataset, settings.dataset), "KTC_MODEL": (record.model, settings.model)}
    if record.max_trials is not None:
        now["KTC_MAX_TRIALS"] = (record.max_trials, settings.max_trials)
    ignored = [f"{name}={new or '(empty)'}" for name, (old, new) in now.items() if old != new]
    log.info("project %s is already finished: reporting it as it was run (%s search, %s trials, %d epochs, "
             "objective %s %s, dataset %s, model %s)%s", settings.project, record.tuner,
             record.max_trials or "hyperband's", record.epochs, record.objective, record.direction, record.dataset,
             record.model or "(guide model)",
             f"; not used for it: {', '.join(ignored)} (a new KTC_PROJECT starts a search with them)"
             if ignored else "")
    try:
        snap = status.snapshot(settings)
        if snap is None:
            raise _Exit(1, f"KTC_PROJECT={settings.project}: marked finished but has no oracle state in "
                           f"{settings.project_state_dir}")
        log.info(progress.final_report(snap, settings.project_results_dir))
    except JournalCorrupt as exc:
        return _start_failed(settings, 1, f"KTC_PROJECT={settings.project}: {exc}")
    except _Exit as exc:
        return _start_failed(settings, exc.code, str(exc))
    except OSError as exc:
        return _start_failed(settings, 1, f"writing the results of finished project {settings.project} failed "
                                          f"({exc}); free space or fix KTC_RESULTS_DIR")
    _give_results_away(settings)
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
    """Expire silent workers' leases until the search is over (no busy polling: event waits). A
    chief back from a pause first checks it still holds the project (chief.ownership): one that
    lost it exits there, before it judges any worker silent."""
    from chief.journal import fence_of

    fence = fence_of(coordinator.project_dir)
    while not coordinator.finished.wait(interval):
        if fence is not None:
            with contextlib.suppress(OSError):  # cannot tell now: the journal's commit checks again
                fence.check()
        coordinator.expire_leases()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from shared.logs import configure_logging

    configure_logging("chief", sys.stdout)
    try:
        settings = config_module.load(role="chief" if not argv else "probe")
    except ConfigError as exc:
        if not argv:
            _record_unloadable(os.environ, str(exc))
        return _fail(2, str(exc))
    if not argv:  # a chief starts: an earlier failed start's record goes first (shared.layout)
        from shared import layout

        layout.clear_chief_failure(settings.project_state_dir)
    if argv == ["health"]:
        return health(settings)
    if argv == ["status"]:
        return status(settings)
    if argv:
        return _fail(2, f"unknown command {' '.join(argv)!r}: use 'python -m chief', 'python -m chief status' "
                        "or 'python -m chief health'")
    return run(settings)


def _record_unloadable(environ, message: str) -> None:
    """Settings that do not load: record the failed start (shared.layout.CHIEF_FAILED) if
    KTC_STATE_DIR is an existing folder and KTC_PROJECT a plain name (else workers cannot share
    the folder either); nothing is created but the project's folder."""
    from shared import layout

    state, project = (environ.get(name, config_module.SETTINGS[name][0]).strip()
                      for name in ("KTC_STATE_DIR", "KTC_PROJECT"))
    if project and not project.startswith(".") and os.sep not in project and state and os.path.isdir(state):
        with contextlib.suppress(OSError):  # the line on stderr says it all
            layout.write_chief_failure(os.path.join(state, project), message, 2)


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
