"""Serves one KerasTuner oracle to many workers, and survives their faults.

Every RPC is an event checked against the trial state machine (chief.trials) before the oracle
sees it, under one lock; what it changed is journaled (chief.journal) and committed before the
reply. Around the oracle:
- worker identity and leases (chief.claims, chief.leases): a duplicate id or a worker whose
  settings differ from the chief's is refused, only the process that started an attempt may go on
  with it, a silent worker's trial is re-queued, a late report from it is refused; stock
  KerasTuner clients are refused, or served with leases renewed by their calls when
  KTC_STOCK_LEASE_SECONDS > 0;
- a chief restart that neither loses nor re-runs trials (chief.recovery, `ClusterOracleMixin.restore`);
- a failing state disk: calls are refused (UNAVAILABLE) until the journal can be appended again,
  and the search stops after KTC_STORAGE_GRACE_SECONDS (chief.statefiles.StorageFaults);
- the moment the search is over (or must stop: too many failures in a row).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time

from keras_tuner.engine import trial as trial_module

from chief import claims, progress, recovery
from chief.journal import Event, RunJournal, StorageUnavailable
from chief.leases import Leases
from chief.oracle import InvalidSpace, short_message
from chief.statefiles import StateWriter, StorageFaults
from chief.trials import Caller, Cause, InvalidRequest, NotOwner, NotRegistered, Phase, TrialBook
from shared import config
from shared.atomic import write_text_atomic
from shared.layout import FINISHED_MARKER

log = logging.getLogger("ktcluster.chief")

RUNNING = trial_module.TrialStatus.RUNNING
STOPPED = trial_module.TrialStatus.STOPPED
IDLE = trial_module.TrialStatus.IDLE
INVALID = trial_module.TrialStatus.INVALID
DEAF_AFTER = 1.0  # seconds an oracle call may hold the lock before its time stops counting against leases


class Coordinator(claims.ClaimsMixin):
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
        self.journal = RunJournal(self.project_dir, fsync=fsync)
        replayed = recovery.replay(self.journal.events, self.journal.path)
        claims.restore_tokens(self.journal.events, replayed.book)
        self.journal.events = []
        self.book: TrialBook = replayed.book
        self.writer = StateWriter(oracle, self._lock, self.faults, fsync=fsync)
        oracle.attach(self.journal, self.writer)
        restored = oracle.restore(replayed.book, replayed.states)
        self.leases = Leases(lease_seconds, presence_seconds=3 * heartbeat_seconds, clock=clock,
                             stock_lease_seconds=stock_lease_seconds)
        self.heartbeat_seconds = heartbeat_seconds
        self._kept = restored  # worker -> the trial it ran before a restart
        for worker, trial_id in restored.items():
            self.leases.grant(worker, claim=self.book.runs[trial_id].token)
        self.fingerprint = fingerprint
        self._lost_later: list[tuple] = []  # (trial, attempt, reason) lost under the lock, reported by expire_leases
        self.finished = threading.Event()
        self.fatal: str | None = None
        self.stopped_workers: set[str] = set()
        self._stop_seen = False
        self._refusals_logged: set[tuple] = set()
        self._changed = threading.Condition()
        self._on_event, self._on_attempt_lost = on_event, on_attempt_lost
        # every ended attempt (trial id, status, cause, message), under the lock: chief.metrics counts
        self.on_attempt_end = lambda trial_id, status, cause, message: None
        self.trial_lines = progress.LineBudget(clock=clock)  # start and COMPLETED lines; trouble always logs
        self.tally = progress.Tally.of(oracle, self.book, clock)
        self._over = False
        self._check_finished()
        if self._over:
            self.finished.set()
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.project_dir, FINISHED_MARKER))

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

    def serving(self) -> None:
        """Call once the server answers: the trials kept for their workers across a restart are
        kept for one lease from now, not from when start-up began (on a busy machine start-up
        can take longer than a lease, which would lose them before any worker could call)."""
        with self._lock:
            unclaimed = set(self.leases.restart_granted())
        for worker, trial_id in self._kept.items():
            if worker in unclaimed:
                log.info("trial %s was running on %s before the restart: kept for it for %.0fs",
                         trial_id, worker, self.leases.lease_seconds)

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
                    oracle.tuner_ids.discard(worker)  # do not wait for it to hear STOPPED
                    for trial_id in list(self.book.owned_by(worker)):
                        trial = oracle.trials[trial_id]
                        message = f"LeaseExpired: {worker} silent for over {self._lease_of(worker):.0f}s"
                        trial.status, trial.message = INVALID, message
                        self._end(trial, worker, message, cause=Cause.CHIEF)
                        expired.append((trial_id, self.book.runs[trial_id].attempt, message))
                        log.warning("trial %s: %s; %s", trial_id, message, "re-queued"
                                    if self.book.runs[trial_id].phase is Phase.QUEUED else "out of retries")
                self._check_finished()
                taken, self._lost_later = self._lost_later, []
        except StorageUnavailable:
            silent, taken = [], []
        reason = self.faults.over()
        if reason and not self.fatal:
            self.fatal = reason
            log.error("search stopped: %s", reason)
            self.finished.set()
        if silent:
            self._notify()
        for trial_id, attempt, message in expired + taken:  # files only: outside the lock
            self._on_attempt_lost(trial_id, attempt, message)
        self._on_event(self)  # also: a worker fell silent, or was heard again
        return [trial_id for trial_id, _, _ in expired]

    def _lease_of(self, worker: str) -> float:
        run = next((r for r in self.book.running.values() if r.owner == worker), None)
        return self.leases.stock_lease_seconds if run is not None and run.stock else self.leases.lease_seconds

    # -- the oracle protocol, as the gRPC servicer calls it ---------------------------
    def get_space(self):
        with self._locked() as oracle:
            return oracle.get_space()

    def update_space(self, hyperparameters, caller: Caller) -> None:
        """Only a registered ktcluster worker may add to the space, and only what check_space allows."""
        with self._locked() as oracle:
            if caller.anonymous or not self.leases.beat(caller.worker, caller.instance):
                raise NotRegistered("UpdateSpace is accepted only from a registered ktcluster worker")
            try:
                oracle.check_space(hyperparameters)
            except InvalidSpace as exc:
                raise InvalidRequest(f"UpdateSpace refused: {exc}") from None
            oracle.update_space(hyperparameters)

    def create_trial(self, tuner_id: str, caller: Caller):
        """(trial, attempt): a RUNNING trial (new, retried or resumed) with its attempt number
        (from 1), or an IDLE/STOPPED trial with attempt 0."""
        try:
            config.validate_tuner_id(tuner_id, name="tuner_id")
        except config.ConfigError as exc:
            raise InvalidRequest(str(exc)) from None
        if not caller.anonymous and caller.worker != tuner_id:
            raise InvalidRequest(f"tuner_id {tuner_id!r} is not the caller's worker id {caller.worker!r}")
        self._refuse_stock(caller)
        with self._locked() as oracle:
            self._admit(caller, tuner_id)
            if self.fatal:  # the search stopped: nothing more is handed out
                oracle.tuner_ids.discard(tuner_id)
                trial, resumed = trial_module.Trial(oracle.get_space(), status=STOPPED), False
            else:
                resumed = tuner_id in oracle.ongoing_trials
                trial = oracle.create_trial(tuner_id)
            if trial.status == STOPPED and not self.fatal and self._retry_possible_elsewhere(tuner_id):
                # Stock says STOPPED once the budget is handed out, but a trial still running on
                # another worker may yet fail (or lose its lease) and come back for a retry:
                # this worker waits (IDLE) instead of leaving that retry with nobody to run it.
                self._stop_seen = True
                oracle.tuner_ids.add(tuner_id)
                trial = trial_module.Trial(oracle.get_space(), status=IDLE)
            attempt = 0
            if trial.status == RUNNING:
                if resumed:
                    run = self.book.get(trial.trial_id)
                    log.info("trial %s resumed by %s (attempt %d)", trial.trial_id, tuner_id, run.attempt)
                else:
                    run = self._start_attempt(trial, tuner_id, caller, now=time.time())
                    if run.attempt > 1:  # a retry: stock leaves its state saying INVALID
                        oracle.trial_restarted(trial)
                    if self.trial_lines.allow():
                        log.info("trial %s -> %s (attempt %d): %s", trial.trial_id, tuner_id, run.attempt,
                                 trial.hyperparameters.values)
                attempt = run.attempt
            elif trial.status == STOPPED:
                self._stop_seen = True
                if tuner_id not in self.stopped_workers:
                    self.stopped_workers.add(tuner_id)
                    log.info("%s told to stop: no trials left", tuner_id)
            self._check_finished()
        if trial.status == STOPPED:
            self._notify()
        self._on_event(self)
        return trial, attempt

    def _retry_possible_elsewhere(self, worker: str) -> bool:
        retries = self.oracle.max_retries_per_trial
        return any(r.owner != worker and r.ended < retries for r in self.book.running.values())

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
            try:
                oracle.check_space(trial.hyperparameters)
            except InvalidSpace as exc:
                raise InvalidRequest(f"result of trial {trial.trial_id} refused: {exc}") from None
            if message:
                trial.message = message
            self._end(trial, run.owner, message, used)
            self._check_finished()
        self._on_event(self)

    def _end(self, trial, worker: str, message: str, used=None, cause: Cause = Cause.OWNER) -> None:
        """oracle.end_trial, then the state machine's transition and its journal line."""
        oracle = self.oracle
        oracle.end_trial(trial)
        ended = oracle.trials[trial.trial_id]
        outcome = Phase.QUEUED if trial.trial_id in oracle.queued_ids else Phase(ended.status)
        run = self.book.end(trial.trial_id, outcome, time.time(), cause, short_message(message), used)
        status = recovery.outcome_status(outcome)
        self.journal.record(Event.END, trial=trial.trial_id, attempt=run.attempt, status=status, cause=cause.value,
                            seconds=run.seconds, message=short_message(message), used=used)
        self.tally.ended(ended, run)
        self.on_attempt_end(trial.trial_id, status, cause, message)
        if oracle.failure_streak and not self.fatal:
            self.fatal = oracle.failure_streak
            log.error("search stopped: %s", self.fatal)
        if outcome is not Phase.COMPLETED:
            log.info("trial %s %s by %s: %s", trial.trial_id, status, worker, short_message(message))
        elif self.trial_lines.allow():
            log.info("trial %s %s by %s: %s=%s", trial.trial_id, status, worker, oracle.objective.name, ended.score)

    def get_trial(self, trial_id):
        with self._locked() as oracle:
            self.book.get(trial_id)
            return oracle.get_trial(trial_id)

    def get_best_trials(self, num_trials=1):
        with self._locked() as oracle:
            return oracle.get_best_trials(num_trials)

    def progress(self) -> progress.Summary:
        """The summary `progress.line` prints, without touching every trial; it takes the count of
        trial lines skipped since the last call. Silent: more than two heartbeats unheard."""
        with self._lock:
            return self.tally.summary(self.oracle.max_trials or len(self.oracle.trials),
                                      {r.owner: t for t, r in self.book.running.items()}, len(self.oracle.queued_ids),
                                      self.oracle.objective.name, self.trial_lines.take_skipped(),
                                      self.trial_lines.rate, self.leases.presence(2 * self.heartbeat_seconds))

    def presence(self):
        """The leases' Presence (chief.leases): ids holding a lease, those unheard for two heartbeats."""
        with self._lock:
            return self.leases.presence(2 * self.heartbeat_seconds)

    # -- state of the search --------------------------------------------------------
    def wait_for_stop_heard(self, timeout: float) -> list[str]:
        """Block until every worker that asked for work was told STOPPED, or `timeout`; the workers still unaware."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                with self._lock:
                    waiting = sorted(self.oracle.tuner_ids)
                left = deadline - time.monotonic()
                if not waiting or left <= 0 or self.faults.over():
                    return waiting
                self._changed.wait(left)

    def _notify(self):
        with self._changed:
            self._changed.notify_all()

    def _check_finished(self):
        oracle = self.oracle
        budget_spent = bool(oracle.max_trials) and len(oracle.trials) >= oracle.max_trials
        over = (self._stop_seen or budget_spent) and not self.book.running and not oracle.queued_ids
        self._over = over or bool(self.fatal)

    def mark_finished(self, summary: dict) -> None:
        """Tell late or restarted workers (they share the state dir) that there is nothing left to do."""
        write_text_atomic(os.path.join(self.project_dir, FINISHED_MARKER), json.dumps(summary) + "\n")

    def snapshot(self) -> progress.Snapshot:
        """A consistent view for progress lines, status and the results files."""
        with self._lock:
            oracle = self.oracle
            best = oracle.get_best_trials(1)
            return progress.Snapshot(
                trials=list(oracle.trials.values()),
                runs=dict(self.book.runs),
                running={r.owner: t for t, r in self.book.running.items()},
                queued=list(oracle.queued_ids),
                max_trials=oracle.max_trials,
                objective=progress.ObjectiveInfo(oracle.objective.name, oracle.objective.direction),
                best=best[0] if best and best[0].status == trial_module.TrialStatus.COMPLETED else None,
                space=[hp.name for hp in oracle.hyperparameters.space],
                fatal=self.fatal,
            )

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
