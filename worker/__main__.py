"""`python -m worker`: ask the chief for trials and train them until told to stop.

Exit codes: 0 search over, 1 runtime failure (chief unreachable, data missing),
2 bad setting (one line naming it). A chief that recorded a failed start
(shared.layout.CHIEF_FAILED) ends a waiting worker with the chief's own code and reason.

A project marked finished when the worker starts is not over yet for it: a chief started with it
may continue it (KTC_MAX_TRIALS raised). The worker waits for the chief's word before it loads
its data and model (`_await_chief`, shared.layout.FinishedWatch): the marker withdrawn (go on), re-confirmed
(exit 0), a failed start (the chief's code), or no chief's word within KTC_LEASE_SECONDS + 30 s
(at most KTC_CHIEF_TIMEOUT_SECONDS; exit 0): a continuing chief withdraws the marker as soon as it
holds the project, before it loads data or model.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from shared import config as config_module
from shared.config import ConfigError

log = logging.getLogger("ktcluster.worker")


def _fail(code: int, message: str) -> int:
    print(f"ktcluster worker: {message}", file=sys.stderr, flush=True)
    return code


def main() -> int:
    from shared.logs import configure_logging

    configure_logging("worker", sys.stdout)
    try:
        settings = config_module.load(role="worker")
        from shared.identity import replica_of, worker_id

        tuner_id = worker_id(settings.tuner_id)
    except ConfigError as exc:
        return _fail(2, str(exc))
    from shared import layout, tls

    # Watch for the chief's record of a failed start from now: one written while we start up
    # (TensorFlow's import, the data) ends our first wait at once (see layout.ChiefFailureWatch).
    watch = layout.chief_failure_watch(settings.project_state_dir)
    finished = layout.finished_watch(settings.project_state_dir)  # its first look: "finished" before we started

    from shared import data, devices, hypermodels
    from shared.data import DataError
    from worker.client import (ChiefFailed, ChiefUnreachable, DuplicateWorkerId, SearchFinished, SettingsMismatch,
                               TLSMismatch)

    devices.configure_tensorflow(settings.tf_threads)
    try:  # the device first: every worker says which one it was given, also one that trains nothing
        device = devices.use_device(tuner_id, replica_of(tuner_id), settings.gpu_map)
    except ValueError as exc:
        return _fail(2, str(exc))
    log.info("%s: chief %s, device %s", tuner_id, settings.oracle_address, device)
    log.info("%s: %s", tuner_id, tls.describe(settings.tls_dir, "worker"))
    if finished.marked_at_start:  # before the data and the model load
        code = _await_chief(settings, tuner_id, finished, watch)
        if code is not None:
            return code

    def chief_gave_up():
        failure = watch.check()
        if failure is not None:
            raise ChiefFailed(failure)

    from worker import runner

    try:
        dataset = data.load(settings.dataset, settings.data_dir, wait=settings.chief_timeout_seconds,
                            between=chief_gave_up)
        hypermodel = hypermodels.resolve(settings.model, dataset)
        runner.run(settings, tuner_id, device, dataset, hypermodel)
    except ConfigError as exc:  # ImportFromStringError too: a bad module:name in KTC_MODEL, KTC_TUNER...
        return _fail(2, str(exc))
    except SearchFinished as exc:
        log.info("%s: %s; exiting", tuner_id, exc)
        return 0
    except DuplicateWorkerId as exc:
        return _fail(2, f"KERASTUNER_TUNER_ID={tuner_id}: {exc}")
    except SettingsMismatch as exc:
        return _fail(2, f"{tuner_id}: {exc}")
    except ChiefFailed as exc:
        if finished.final():  # a finished project's report failed: the search is over all the same
            log.info("%s: project %s is finished; exiting", tuner_id, settings.project)
            return 0
        return _fail(exc.code, f"{tuner_id}: {exc}")
    except TLSMismatch as exc:
        return _fail(2, f"KTC_TLS_DIR={settings.tls_dir or '(unset)'}: {tuner_id}: {exc}")
    except ChiefUnreachable as exc:
        if _search_finished(settings):
            log.info("%s: the search finished while the chief was out of reach; exiting", tuner_id)
            return 0
        return _fail(1, f"{tuner_id}: {exc}")
    except DataError as exc:
        return _fail(1, f"{tuner_id}: {exc}")
    log.info("%s: no trials left, exiting", tuner_id)
    return 0


AWAIT_POLL_SECONDS = 0.25  # how often a worker on a project marked finished looks for the chief's word
#: A chief that goes on with a project marked finished withdraws the marker once it holds the project:
#: seconds after it starts, or after the lease of a chief that died holding it. A worker on a finished
#: project waits that long (at most KTC_CHIEF_TIMEOUT_SECONDS) for a chief before taking it as over.
FINISHED_WAIT_SECONDS = 30


def _await_chief(settings, tuner_id: str, finished, failures) -> int | None:
    """The project was marked finished as this worker started: wait for the chief's word before
    loading anything. None: go on (a chief continues the project: it withdrew the marker); else the
    exit code: 0 when the marker is written again (the chief only reports the project, or a search
    ended meanwhile) or still there after FINISHED_WAIT_SECONDS past the lease (no chief continued it);
    the chief's own code when it records a failed start."""
    project = settings.project
    wait = min(settings.chief_timeout_seconds, settings.lease_seconds + FINISHED_WAIT_SECONDS)
    log.info("%s: project %s is marked finished: waiting for the chief to continue it (e.g. KTC_MAX_TRIALS "
             "raised) or to report it, up to %.0fs", tuner_id, project, wait)
    deadline, pause = time.monotonic() + wait, threading.Event()
    while True:
        if finished.final():
            log.info("%s: project %s is already finished (its chief says so); nothing to do", tuner_id, project)
            return 0
        if finished.withdrawn():
            log.info("%s: the chief continues project %s", tuner_id, project)
            return None
        failure = failures.check()
        if failure is not None:
            return _fail(failure.code, f"{tuner_id}: the chief could not start (it exited {failure.code}): "
                                       f"{failure.reason}")
        if time.monotonic() >= deadline:
            log.info("%s: project %s is finished and no chief continued it within %.0fs; nothing to do",
                     tuner_id, project, wait)
            return 0
        pause.wait(AWAIT_POLL_SECONDS)


def _search_finished(settings) -> bool:
    """The chief leaves a marker in the shared state dir when a search is over."""
    from shared import layout

    return layout.search_finished(settings.project_state_dir)


if __name__ == "__main__":
    sys.exit(main())
