"""`python -m chief`: serve the search (and its Prometheus metrics on KTC_METRICS_PORT, chief.metrics).
`python -m chief status`: progress and the trial table (from the state files); `status --json`:
the same as one JSON object (chief.status.document). `python -m chief health`: is the oracle
serving (Compose's healthcheck)?

Exit codes: 0 search finished (results written; a finished project is only reported, with the
settings recorded for it), 1 runtime failure (e.g. the dataset could not be downloaded), 2 bad
setting (one line naming it; also: another chief holds the project, or a setting the project
cannot change was changed, or a recorded hyperparameter's domain (chief.project.check_space), one
line each). A start that fails records why for the workers
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


def status(settings, as_json: bool = False) -> int:
    import json

    from chief import status as status_module

    from chief.journal import JournalCorrupt

    try:
        snap = status_module.snapshot(settings)
    except JournalCorrupt as exc:
        return _fail(1, str(exc))
    if snap is None:
        return _fail(1, f"no search state for project {settings.project!r} in {settings.state_dir}")
    print(json.dumps(status_module.document(snap, settings.project), allow_nan=False) if as_json
          else status_module.render(snap))
    return 0



def run(settings) -> int:
    """Serve the search, or only report a finished project (`chief.finished.finished_record`). A start that
    fails after the settings are read leaves shared.layout.CHIEF_FAILED for the workers. The
    project is held by one chief at a time (chief.project, chief.ownership), released on the way out."""
    from shared.devices import hide_gpus

    hide_gpus()  # the chief trains nothing; leave every GPU to the workers
    from chief.server import PortInUse, bind
    from shared import tls

    from chief import finished, startup

    record = finished.finished_record(settings)
    if record is not None:
        try:
            finished.report_finished(settings, record)
        except startup.StartFailed as exc:
            return _start_failed(settings, exc.code, str(exc))
        return 0
    try:  # bind first: a second chief or a busy port fails before any slow work
        server, port = bind(settings.oracle_address, tls_dir=settings.tls_dir)
    except PortInUse:  # no failure record: the chief that holds the port is the one workers need
        return _fail(2, f"KERASTUNER_ORACLE_PORT={settings.oracle_port}: {settings.oracle_address} is already "
                        "in use (another chief?); only one chief may serve a port")
    except ConfigError as exc:  # an unusable KTC_TLS_DIR
        return _start_failed(settings, 2, str(exc))
    try:
        metrics = _metrics_endpoint(settings)  # bound here too: a busy port fails before any slow work
    except OSError as exc:  # no failure record: what holds the port may be the chief workers need
        return _fail(2, f"KTC_METRICS_PORT={settings.metrics_port}: cannot serve metrics on "
                        f"{settings.oracle_ip}:{settings.metrics_port} ({exc.strerror or exc}); "
                        "choose a free port, or 0 for no metrics")
    log.info("%s", tls.describe(settings.tls_dir, "chief"))
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _hold_and_serve(settings, server, port, metrics)
    finally:
        if metrics is not None:
            metrics.stop()


def _metrics_endpoint(settings):
    """The metrics endpoint (chief.metrics.Endpoint) on KTC_METRICS_PORT, None when it is 0; OSError
    if the port cannot be bound."""
    if not settings.metrics_port:
        return None
    from chief.metrics import ChiefMetrics, Endpoint

    return Endpoint(ChiefMetrics(), settings.oracle_ip, settings.metrics_port)


def _hold_and_serve(settings, server, port, metrics) -> int:
    """run(), once the ports are bound: take the project, serve it, release it."""
    from chief import project

    try:  # one chief per project; settings the project cannot change (chief.project)
        held = project.take(settings)
    except project.Refused as exc:  # a chief that holds the project: no failure record (its workers need it)
        return _refused(settings, exc)
    from shared import layout

    # Going on with a project marked finished (KTC_MAX_TRIALS raised): say so to the workers now,
    # before the data and the model load; a search over after all marks it again at its end.
    layout.withdraw_finished(settings.project_state_dir)
    try:
        return _serve(settings, server, port, metrics)
    finally:
        held.release()


def _serve(settings, server, port, metrics=None) -> int:
    """run(), once the project is held: start, serve until the search is over, report. `metrics`
    (chief.metrics.Endpoint) watches the coordinator and serves until the report is written."""
    from chief import finished, progress, startup

    from chief import project

    try:
        coordinator, hypermodel = startup.start(settings)
    except startup.StartFailed as exc:
        return _start_failed(settings, exc.code, str(exc))
    except project.Refused as exc:  # a search space the project cannot take (chief.project.check_space)
        return _refused(settings, exc)
    except Exception as exc:  # a bug: the workers hear of it, the traceback stays here
        _record_failure(settings, 1, f"unexpected error at start: {type(exc).__name__}: {exc}")
        raise

    from chief.journal import StorageUnavailable
    from chief.server import serve

    if metrics is not None:
        metrics.metrics.watch(coordinator)
    if not coordinator.finished.is_set():  # a finished project is only reported, never re-run
        serve(server, coordinator, on_call=metrics.metrics.rpc if metrics is not None else None)
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
        model_note = (startup.save_best_model(snap.best, snap.runs[snap.best.trial_id].accepted, hypermodel, settings)
                      if snap.best is not None else "no best_model.keras (no trial completed)")
        log.info(progress.final_report(snap, settings.project_results_dir, model_note))
    except StorageUnavailable as exc:
        return _fail(1, f"the last results could not be stored ({exc}): no worker was told they were; free space, "
                        "then start the chief again: those trials run again")
    except OSError as exc:
        return _fail(1, f"writing the state or results files failed ({exc}); the journal holds every result: "
                        "free space, then start the chief again to write them")
    finished.give_results_away(settings)
    if snap.fatal:
        return _fail(1, f"search stopped: {snap.fatal}")
    coordinator.mark_finished(progress.summary_record(snap))
    return 0



def _record_failure(settings, code: int, message: str) -> None:
    """Leave the failed start's record for the workers (shared.layout.CHIEF_FAILED); best effort:
    a state disk that refuses it is what the message already says."""
    from shared import layout

    try:
        layout.write_chief_failure(settings.project_state_dir, message, code)
    except OSError as exc:
        log.warning("could not record the failed start for the workers in %s (%s)", settings.project_state_dir, exc)


def _refused(settings, exc) -> int:
    """A chief.project.Refused start: its record for the workers if it asks for one, one line each."""
    if exc.record:
        _record_failure(settings, exc.code, str(exc))
    for line in exc.lines:
        _fail(exc.code, line)
    return exc.code


def _start_failed(settings, code: int, message: str) -> int:
    _record_failure(settings, code, message)
    return _fail(code, message)



def _on_sigterm(signum, frame):
    """`docker compose stop/restart`: every acknowledged result is already on disk, so just go."""
    log.warning("SIGTERM: stopping; results so far are saved, start the chief again to resume")
    raise SystemExit(143)


def _reap(coordinator, interval: float) -> None:
    """Expire silent workers' leases until the search is over (no busy polling: event waits). A
    chief back from a pause first checks it still holds the project (chief.ownership): one that
    lost it exits there, before it judges any worker silent (ProjectLost here: another thread
    found it first and is ending the process)."""
    from chief.journal import ProjectLost, fence_of

    fence = fence_of(coordinator.project_dir)
    while not coordinator.finished.wait(interval):
        try:
            if fence is not None:
                with contextlib.suppress(OSError):  # cannot tell now: the journal's commit checks again
                    fence.check()
            coordinator.expire_leases()
        except ProjectLost:
            return


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
    if argv in (["status"], ["status", "--json"]):
        return status(settings, as_json=argv[1:] == ["--json"])
    if argv:
        return _fail(2, f"unknown command {' '.join(argv)!r}: use 'python -m chief', 'python -m chief status' "
                        "('status --json' for scripts) or 'python -m chief health'")
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
