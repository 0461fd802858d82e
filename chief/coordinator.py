"""Serves one KerasTuner oracle to many workers, and survives their faults.

A thin layer from RPCs to the trial state machine's events (chief.trials), under one lock: the
machine decides every move, the coordinator carries out the effects it returns (the journal line,
committed before the reply; the oracle following through its adapter, chief.oracle; the log,
the tally, the lost attempts to close). Opening a project is chief.opening's, when the search is
over chief.stopping's. Around the oracle:
- worker identity and leases (chief.claims, chief.leases): a duplicate id or a worker whose
  settings differ from the chief's is refused, only the process that started an attempt may go on
  with it, a silent worker's trial is re-queued, a late report from it is refused; stock
  KerasTuner clients are refused, or served with leases renewed by their calls when
  KTC_STOCK_LEASE_SECONDS > 0;
- a chief restart that neither loses nor re-runs trials (chief.opening: replay through the same apply);
- a failing state disk: calls are refused (UNAVAILABLE) until the journal can be appended again,
  and the search stops after KTC_STORAGE_GRACE_SECONDS (chief.statefiles.StorageFaults);
- the moment the search is over (or must stop: too many failures in a row).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from keras_tuner.engine import trial as trial_module

from chief import claims, moves, opening, progress, refusals, views
from chief.journal import StorageUnavailable
from chief.leases import Leases
from chief.statefiles import StorageFaults
from chief.stopping import StopPolicy
from chief.trials import Caller, InvalidRequest, NotOwner, NotRegistered, TrialBook

log = logging.getLogger("ktcluster.chief")

RUNNING = trial_module.TrialStatus.RUNNING
STOPPED = trial_module.TrialStatus.STOPPED
IDLE = trial_module.TrialStatus.IDLE
INVALID = trial_module.TrialStatus.INVALID
DEAF_AFTER = 1.0  # seconds an oracle call may hold the lock before its time stops counting against leases


class Coordinator(claims.ClaimsMixin, moves.MovesMixin, views.ViewsMixin):
    """Thread-safe facade over a ClusterOracleMixin oracle; `finished` is set when the search is
    over (or stopped: `fatal` says why). Methods taking a `Caller` raise `Refused` subclasses
    (nothing changed) and StorageUnavailable (nothing acknowledged; the caller may retry).
    `fingerprint` (shared.fingerprint): the chief's settings, which registering workers must share."""

    def __init__(self, oracle, lease_seconds: float, heartbeat_seconds: float,
                 on_event=lambda coordinator: None, clock=time.monotonic, fsync: bool = False,
                 stock_lease_seconds: float = 0.0, storage_grace_seconds: float = 300.0,
                 on_attempt_lost=lambda trial_id, attempt, reason: None, fingerprint=None):
        self._lock = threading.Lock()
        self.oracle = oracle
        self.project_dir = oracle.project_dir
        self.faults = StorageFaults(storage_grace_seconds, clock=clock)
        opened = opening.open_project(oracle, self._lock, self.faults, fsync)
        self.journal, self.writer, self.book = opened.journal, opened.writer, opened.book
        self.book: TrialBook
        self.leases = Leases(lease_seconds, presence_seconds=3 * heartbeat_seconds, clock=clock,
                             stock_lease_seconds=stock_lease_seconds)
        self.heartbeat_seconds = heartbeat_seconds
        self._kept = opened.kept  # worker -> the trial it ran before a restart
        for worker, trial_id in opened.kept.items():
            self.leases.grant(worker, claim=self.book.runs[trial_id].token)
        self.fingerprint = fingerprint
        self._lost_later: list = []  # LostAttempt: ended under the lock, reported by expire_leases
        self.finished = threading.Event()
        self.stop = StopPolicy(oracle.max_trials, oracle.max_retries_per_trial,
                               oracle.max_consecutive_failed_trials, self.book)
        self.stopped_workers: set[str] = set()
        self._refusals_logged: set[tuple] = set()
        self._changed = threading.Condition()
        self._on_event, self._on_attempt_lost = on_event, on_attempt_lost
        # every ended attempt (trial id, status, cause, message), under the lock: chief.metrics counts
        self.on_attempt_end = lambda trial_id, status, cause, message: None
        self.trial_lines = progress.LineBudget(clock=clock)  # start and COMPLETED lines; trouble always logs
        self.tally = progress.Tally.of(oracle, self.book, clock)
        self._over = self.stop.over(self.book, len(oracle.trials))
        if self._over:
            self.finished.set()
        opening.settle_marker(self.project_dir, self._over)

    @staticmethod
    def _wall() -> float:
        """The wall clock of attempts (starts, ends, durations)."""
        return time.time()

    @property
    def fatal(self) -> str | None:
        """Why the search stopped early (None: it did not)."""
        return self.stop.fatal

    @contextlib.contextmanager
    def _locked(self):
        """Serialise oracle calls. Lines left by a failed commit are written first: while the disk
        fails, calls are refused before they touch the oracle. What the call recorded is committed
        before it returns (StorageUnavailable if that fails). If a stock method raised, its own lock
        is released. A call that held the lock for over DEAF_AFTER seconds (a Bayesian fit at a
        thousand trials takes many) kept every heartbeat waiting: that time does not count against
        any lease."""
        with self._lock:
            self._commit()
            start = self.leases.clock()
            try:
                yield self.oracle
            except BaseException:
                self.oracle.release_lock_after_error()
                raise
            finally:
                held = self.leases.clock() - start
                if held > DEAF_AFTER:
                    self.leases.deaf(held)
                    if held > 2 * self.heartbeat_seconds:
                        log.warning("an oracle call held the chief for %.1fs (heartbeats waited; that time does "
                                    "not count against leases)", held)
            self._commit()
            if self._over:  # only once what ended the search is stored
                self.finished.set()

    def _commit(self) -> None:
        if not self.journal.pending:
            return
        try:
            self.journal.commit()
        except StorageUnavailable as exc:
            self.faults.failed("journal", exc)
            raise
        self.faults.succeeded("journal")

    # -- workers: identity and liveness (Register, heartbeats, admission: chief.claims) ------
    def expire_leases(self) -> list[str]:
        """Re-queue (or fail, once out of retries) the trials of workers silent past their lease,
        calling `on_attempt_lost(trial_id, attempt, reason)` for each, then `on_event` on every
        check (outside the lock: a worker may have fallen silent); also retry lines a failed commit
        left, and stop the search once the disk has failed too long. Returns the trial ids lost."""
        expired = []
        try:
            with self._locked() as oracle:
                silent = self.leases.expired()
                for worker in silent:
                    oracle.forget_worker(worker)  # do not wait for it to hear STOPPED
                    for trial_id in list(self.book.owned_by(worker)):
                        message = f"LeaseExpired: {worker} silent for over {self._lease_of(worker):.0f}s"
                        self._lose(trial_id, worker, message)
                        expired.append(trial_id)
                self._check_finished()
                taken, self._lost_later = self._lost_later, []
        except StorageUnavailable:
            silent, taken = [], []
        reason = self.faults.over()
        if reason and self.stop.stop(reason):
            log.error("search stopped: %s", reason)
            self.finished.set()
        if silent:
            self._notify()
        for lost in taken:  # files only: outside the lock
            self._on_attempt_lost(lost.trial, lost.attempt, lost.reason)
        self._on_event(self)  # also: a worker fell silent, or was heard again
        return expired

    # -- the oracle protocol, as the gRPC servicer calls it ---------------------------
    def get_space(self):
        with self._locked() as oracle:
            return oracle.get_space()

    def update_space(self, hyperparameters, caller: Caller) -> None:
        """Only a registered ktcluster worker may add to the space, and only what check_space allows."""
        with self._locked() as oracle:
            if caller.anonymous or not self.leases.beat(caller.worker, caller.instance):
                raise NotRegistered("UpdateSpace is accepted only from a registered ktcluster worker")
            refusals.request_space(oracle, hyperparameters, "UpdateSpace refused")
            oracle.update_space(hyperparameters)

    def create_trial(self, tuner_id: str, caller: Caller):
        """(trial, attempt): a RUNNING trial (new, retried or resumed) with its attempt number
        (from 1), or an IDLE/STOPPED trial with attempt 0."""
        refusals.request_tuner_id(tuner_id, "tuner_id")
        if not caller.anonymous and caller.worker != tuner_id:
            raise InvalidRequest(f"tuner_id {tuner_id!r} is not the caller's worker id {caller.worker!r}")
        self._refuse_stock(caller)
        with self._locked() as oracle:
            self._admit(caller, tuner_id)
            if self.fatal:  # the search stopped: nothing more is handed out
                oracle.forget_worker(tuner_id)
                trial = trial_module.Trial(oracle.get_space(), status=STOPPED)
            else:
                trial = oracle.create_trial(tuner_id)
            if trial.status == STOPPED and not self.fatal and self.stop.retry_possible_elsewhere(self.book, tuner_id):
                # Stock says STOPPED once the budget is handed out, but a trial still running on
                # another worker may yet fail (or lose its lease) and come back for a retry:
                # this worker waits (IDLE) instead of leaving that retry with nobody to run it.
                self.stop.stop_seen = True
                oracle.keep_waiting(tuner_id)
                trial = trial_module.Trial(oracle.get_space(), status=IDLE)
            attempt = 0
            if trial.status == RUNNING:
                run = self.book.running.get(trial.trial_id)
                if run is not None and run.owner == tuner_id:  # its own running trial, asked for again
                    log.info("trial %s resumed by %s (attempt %d)", trial.trial_id, tuner_id, run.attempt)
                else:
                    run = self._start_attempt(trial, tuner_id, caller, now=self._wall())
                    if self.trial_lines.allow():
                        log.info("trial %s -> %s (attempt %d): %s", trial.trial_id, tuner_id, run.attempt,
                                 trial.hyperparameters.values)
                attempt = run.attempt
            elif trial.status == STOPPED:
                self.stop.stop_seen = True
                if tuner_id not in self.stopped_workers:
                    self.stopped_workers.add(tuner_id)
                    log.info("%s told to stop: no trials left", tuner_id)
            self._check_finished()
        if trial.status == STOPPED:
            self._notify()
        self._on_event(self)
        return trial, attempt

    def _reporter(self, trial_id: str, caller: Caller, what: str):
        """The run whose current attempt `caller` holds, its lease renewed; NotOwner (logged once
        per trial, attempt and caller) if the caller does not hold it."""
        if not caller.anonymous:
            self._admit(caller)
        try:
            run = self.book.check_owner(trial_id, caller, what)
        except NotOwner as exc:
            key = (trial_id, caller.worker, caller.attempt)
            if key not in self._refusals_logged:
                if len(self._refusals_logged) > 10_000:
                    self._refusals_logged.clear()
                self._refusals_logged.add(key)
                log.warning("%s", exc)
            raise
        if caller.anonymous:
            self.leases.renew_stock(run.owner)
        return run

    def update_trial(self, trial_id: str, metrics: dict, step, caller: Caller):
        """A progress report from the trial's owner; returns the trial."""
        with self._locked() as oracle:
            self._reporter(trial_id, caller, "progress report")
            try:
                oracle.check_metrics(metrics)
            except ValueError as exc:
                raise InvalidRequest(f"progress report of trial {trial_id} refused: {exc}") from None
            return oracle.update_trial(trial_id, metrics, step=step)

    def end_trial(self, trial, caller: Caller, message: str = "", used=None) -> None:
        """Record a finished attempt exactly once. A result sent again by the attempt that already
        ended the trial is acknowledged without change (its first reply may have been lost)."""
        self.book.check_final(trial.status)
        with self._locked() as oracle:
            if self.book.is_repeat_end(trial.trial_id, caller):
                return
            run = self._reporter(trial.trial_id, caller, "result")
            refusals.request_space(oracle, trial.hyperparameters, f"result of trial {trial.trial_id} refused")
            if message:
                trial.message = message
            oracle.check_end(trial)
            self._end(trial, run.owner, oracle.verdict(trial), message, used)
            self._check_finished()
        self._on_event(self)

    def get_trial(self, trial_id):
        with self._locked() as oracle:
            self.book.get(trial_id)
            return oracle.get_trial(trial_id)

    def get_best_trials(self, num_trials=1):
        with self._locked() as oracle:
            return oracle.get_best_trials(num_trials)

    def _check_finished(self):
        self._over = self.stop.over(self.book, len(self.oracle.trials))

    def save_state(self) -> None:
        """Write the state files now (start-up, shutdown)."""
        self.writer.flush()

    def close(self):
        """Store the lines a failed commit left (StorageUnavailable, nothing closed, if the journal
        still cannot take them), then write the state files (OSError if that fails) and close."""
        with self._lock:
            self._commit()
        try:
            self.writer.close()
        finally:
            self.journal.close()

