"""KerasTuner's oracles, extended for a cluster through their own extension points.

`cluster_oracle(cls, **kwargs)` builds `Cluster<cls>`, a subclass of the configured stock oracle
(random, bayesian, hyperband, grid) with `ClusterOracleMixin` first in its MRO: each override
calls `super()`, the algorithm and the bookkeeping stay KerasTuner's.

Every private KerasTuner name ktcluster's chief uses is used here and nowhere else:
- `Oracle._save_trial(trial)`: stock's hook for "a trial changed" (create, report, end);
  overridden to journal the state before the reply and write trial.json behind.
- `Oracle._check_consecutive_failures()`: stock scans every ended trial (O(trials) per result) and
  raises inside `@synchronized`, leaving the oracle half-updated and its lock held; overridden to
  do nothing: the stop policy (chief.stopping) counts failures in a row from the state machine.
- `Oracle._set_project_dir`, `_project_dir`, `_get_oracle_fname`, `_get_trial_dir`: where stock
  keeps its files (read by StateWriter and tools such as `tuner.reload()`).
- `Oracle._check_objective_found(metrics)`: stock's check that a report holds the objective,
  run before the report reaches the oracle (inside `update_trial` it would raise under the lock).
- `Oracle._retry_queue`, `_run_times`, `_id_to_hash`, `_tried_so_far`, `_compute_values_hash`,
  `tuner_ids`, `ongoing_trials`: the retry queue, tried values and workers not told to stop, made
  to follow the trial state machine (`follow`, `forget_worker`, `keep_waiting`), rebuilt by
  `restore`, and shown to the invariant check (`bookkeeping`); never read to decide anything.
- `engine.oracle.LOCKS` / `THREADS`: `@synchronized` releases its lock only on a normal return;
  `release_lock_after_error` releases it when a stock method raised.
- `Oracle._retry(trial)`: stock decides a retry itself and prints `Trial 07 failed 1 times. 1
  retries left.` bare to stdout; overridden to follow the state machine's decision and send what
  stock prints to the chief's log, in its format.
Tested with keras-tuner TESTED_KERAS_TUNER; `version_warning()` says so when another is installed.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import math
import os
import threading

from keras_tuner.src.engine import oracle as oracle_module
from keras_tuner.engine import trial as trial_module

from chief import oracle_files, refusals
from chief.invariants import Bookkeeping
from chief.journal import JOURNAL
from chief.recovery import InconsistentState
from chief.refusals import InvalidSpace
from chief.trials import Effects, Ended, InvalidRequest, OracleStep, Phase, Queued, TrialBook
from shared.results import trial_order

__all__ = ["Bookkeeping", "ClusterOracleMixin", "InvalidSpace", "cluster_class", "cluster_oracle", "version_warning"]

TESTED_KERAS_TUNER = ("1.4.7", "1.4.8")  # inclusive range of keras-tuner versions tested
RUNNING = trial_module.TrialStatus.RUNNING
FINAL = (trial_module.TrialStatus.COMPLETED, trial_module.TrialStatus.FAILED)
stock_log = logging.getLogger("ktcluster.keras_tuner")  # what stock prints, as chief log lines
log = logging.getLogger("ktcluster.chief")


def version_warning() -> str | None:
    """None if the installed keras-tuner is in the tested range, else a one-line warning."""
    installed = importlib.metadata.version("keras-tuner")

    def key(version):
        return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())

    low, high = TESTED_KERAS_TUNER
    if key(low) <= key(installed) <= key(high):
        return None
    return (f"keras-tuner {installed} is installed; ktcluster's chief is tested with {low} to {high} and uses "
            "some of its private methods (chief/oracle.py): pin keras-tuner in that range if trials misbehave")


class ClusterOracleMixin:
    """Journaled, write-behind state and cluster queries for a stock oracle. `attach` must be
    called before the first trial. Every method runs under the coordinator's lock."""

    journal = None  # chief.journal.RunJournal
    writer = None  # chief.statefiles.StateWriter
    _following: Phase | None = None  # the outcome the state machine decided, while `follow` ends a trial
    #: called as on_end(oracle, trial) after a trial's end is recorded (its hyperparameters merged
    #: into the space by stock's end_trial: those first drawn in fit or run_trial arrive here);
    #: chief.startup sets it to keep the HParams config in step. It must not raise.
    on_end = None

    def attach(self, journal, writer) -> None:
        self.journal, self.writer = journal, writer

    def use_project(self, directory: str, name: str) -> None:
        self._set_project_dir(directory, name)

    # -- stock extension points ----------------------------------------------------------
    def _save_trial(self, trial) -> None:
        self.journal.record_trial(trial.get_state())
        self.writer.trial_changed(trial)

    def save(self) -> None:
        self.writer.save()

    def _retry(self, trial) -> bool:
        """The state machine's decision (`follow`) made stock's: the trial queued for a retry or
        ended with the outcome decided. What stock prints goes to the log (sys.stdout is swapped
        for the call: a print from another thread meanwhile is logged too, never lost)."""
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                retried = super()._retry(trial)
        finally:
            for line in filter(None, map(str.strip, printed.getvalue().splitlines())):
                stock_log.info("KerasTuner: %s", line)
        decided = self._following
        if decided is None or retried is (decided is Phase.QUEUED):
            return retried
        if retried:
            self._retry_queue.remove(trial.trial_id)
        else:
            self._retry_queue.append(trial.trial_id)
        trial.status = trial_module.TrialStatus.INVALID if decided is Phase.QUEUED else decided.value
        return decided is Phase.QUEUED

    def _check_consecutive_failures(self) -> None:
        """Off: chief.stopping.StopPolicy decides when failures in a row stop the search."""

    # -- what the coordinator and the state files ask ---------------------------------------
    @property
    def project_dir(self) -> str:
        return self._project_dir

    def oracle_file(self) -> str:
        return self._get_oracle_fname()

    def trial_file(self, trial_id: str) -> str:
        return os.path.join(self._get_trial_dir(trial_id), "trial.json")

    # -- the adapter: the oracle follows the trial state machine (chief.trials) ---------------
    def follow(self, effects: Effects, trial=None) -> None:
        """Carry out `effects.oracle`. END: stock's end_trial with `trial` (the worker's copy, its
        status and message), the retry queue and final status as the machine decided; RESTARTED:
        the retried trial (`trial`, as create_trial returned it) saved, stock does not."""
        if effects.oracle is OracleStep.RESTARTED:
            self._save_trial(trial)
        elif effects.oracle is OracleStep.END:
            assert isinstance(effects.event, Ended)
            self._following = effects.event.outcome
            try:
                self.end_trial(trial)
            finally:
                self._following = None
            if self.on_end is not None:
                self.on_end(self, self.trials[trial.trial_id])

    def verdict(self, trial) -> str:
        """The status the algorithm gives an ending attempt, before any retry is decided: stock
        counts a COMPLETED one whose objective scores NaN as INVALID. Reports are refused unless
        finite (chief.refusals): only a trial with a non-finite value on record (journals of
        older chiefs) is scored here."""
        recorded = self.trials.get(trial.trial_id)
        if trial.status != trial_module.TrialStatus.COMPLETED or recorded is None or all(
                math.isfinite(value) for history in recorded.metrics.metrics.values()
                for observation in history.get_history() for value in observation.value):
            return trial.status
        self.score_trial(recorded)  # stock scores it again in end_trial, with the same metrics
        return trial_module.TrialStatus.INVALID if recorded.score != recorded.score else trial.status

    def lost_copy(self, trial_id: str, message: str):
        """What the chief ends a lost attempt with: the trial as recorded, INVALID, with `message`."""
        recorded = self.trials[trial_id]
        return trial_module.Trial(recorded.hyperparameters, trial_id=trial_id,
                                  status=trial_module.TrialStatus.INVALID, message=message)

    def forget_worker(self, worker: str) -> None:
        """`worker` will not hear STOPPED (its lease ran out, or the search stopped): stop waiting for it."""
        self.tuner_ids.discard(worker)

    def keep_waiting(self, worker: str) -> None:
        """`worker` was told IDLE instead of STOPPED: it will ask again, and must hear STOPPED then."""
        self.tuner_ids.add(worker)

    def workers_not_stopped(self) -> list[str]:
        """The workers that asked for work and were not yet told STOPPED, sorted."""
        return sorted(self.tuner_ids)

    def bookkeeping(self) -> Bookkeeping:
        """What stock keeps about who runs what, what is queued and what ended (the invariant check)."""
        return Bookkeeping({w: t.trial_id for w, t in self.ongoing_trials.items()}, list(self._retry_queue),
                           {t: trial.status for t, trial in self.trials.items()}, dict(self._run_times))

    def check_metrics(self, metrics: dict) -> None:
        """ValueError unless a progress report is safe to record (chief.refusals.check_metrics), with
        the objective among its metrics (stock would raise that inside its lock)."""
        refusals.check_metrics(metrics)
        self._check_objective_found(metrics)

    def check_space(self, hyperparameters) -> None:
        """InvalidSpace unless merging `hyperparameters` into the space is safe (chief.refusals)."""
        refusals.check_space(self.hyperparameters.space, hyperparameters)

    def check_end(self, trial) -> None:
        """InvalidRequest (nothing changed) unless an attempt may end as `trial` says: a COMPLETED
        trial must have its objective on record (stock would raise a KeyError inside its lock)."""
        if trial.status == trial_module.TrialStatus.COMPLETED and trial.trial_id in self.trials:
            recorded = self.trials[trial.trial_id].metrics.metrics
            if not self.objective.has_value(recorded):
                raise InvalidRequest(
                    f"trial {trial.trial_id} ended COMPLETED without a report of its objective "
                    f"{self.objective.name} (reported: {', '.join(sorted(recorded))[:200] or 'nothing'}); report "
                    "it first, or end the attempt FAILED")

    def release_lock_after_error(self) -> None:
        """A stock `@synchronized` method raised in this thread: release the lock it kept."""
        if oracle_module.THREADS[self] == threading.current_thread().name:
            oracle_module.THREADS[self] = None
            oracle_module.LOCKS[self].release()

    # -- restart ------------------------------------------------------------------------
    def restore(self, book: TrialBook, states: dict[str, dict]) -> dict[str, str]:
        """Rebuild the oracle from the journal (`book`, `states`: the truth) and KerasTuner's files
        (written behind it: they may lag, be missing or damaged, or be ahead of a journal replaced
        by an older copy); return the trials still running, by worker. One line is logged per file
        rewritten or set aside. Raises InconsistentState (one line naming the file and what to do)
        for a journal without a readable oracle.json (the chief writes oracle.json before its
        first trial: starting afresh would hand the journal's trial ids out again), and for an
        oracle.json ahead of the journal in an oracle whose own state names trials (Hyperband, Grid).

        Stock `reload` re-queues every trial its (lagging) oracle.json lists as ongoing, finished
        ones included: that is how a stock chief re-ran finished trials. Here a trial whose
        attempt is still running stays with its worker (its lease decides), a trial waiting for a
        retry is queued, a trial that exists without a start (a project or journal from before
        start lines) is queued unless its state is final, and finished trials stay finished."""
        known = set(book.runs) | set(states)
        saved = oracle_files.read_oracle_file(self.oracle_file(), self.project_dir, known)
        if saved is None:
            return {}
        if not known and saved["start_order"]:
            raise InconsistentState(
                f"{self.oracle_file()} names {len(saved['start_order'])} trials but the journal "
                f"({os.path.join(self.project_dir, JOURNAL)}) has none: restore the journal, or start "
                "a new search (another KTC_PROJECT)")
        self.trials = {}
        ahead = oracle_files.load_trial_files(self, known, states)
        for trial_id, state in states.items():
            self.trials[trial_id] = trial_module.Trial.from_state(state)
            self.writer.trial_changed(self.trials[trial_id])
        ahead |= {t for t in map(str, saved["start_order"]) if t not in self.trials}
        if ahead and not self.writer.behind:
            raise InconsistentState(
                f"{self.oracle_file()} names trials {', '.join(sorted(ahead, key=trial_order))} that the journal "
                f"({len(known)} trials) does not: it is ahead of the journal (was the journal replaced by an "
                "older copy?); restore the journal, or start a new search (another KTC_PROJECT)")
        self.set_state(oracle_files.within(saved, set(self.trials)))
        if ahead or oracle_files.within(saved, set(self.trials)) != saved:
            log.warning("%s named trials the journal does not (%s): rewritten from the journal",
                        self.oracle_file(), ", ".join(sorted(ahead, key=trial_order)) or "none")
        self.writer.save()
        return self._rebuild(book)

    def _rebuild(self, book: TrialBook) -> dict[str, str]:
        """The oracle's bookkeeping made to follow the journal's book: running trials stay with
        their owners, the book's queue is the retry queue (a trial known only from a state that
        is not final, from journals before start lines, is queued through the book first),
        orders, run counts and tried values rebuilt."""
        for trial_id, trial in self.trials.items():
            if trial_id not in book.runs and trial.status not in FINAL:
                book.apply(Queued(trial_id))
        self.ongoing_trials, restored = {}, {}
        for trial_id, run in book.running.items():
            if trial_id in self.trials:
                self.trials[trial_id].status = RUNNING
                self.ongoing_trials[run.owner] = self.trials[trial_id]
                self.tuner_ids.add(run.owner)
                restored[run.owner] = trial_id
        self._retry_queue = [t for t in book.queued if t in self.trials]
        known = set(self.start_order)
        self.start_order += [t for t in sorted(self.trials, key=trial_order) if t not in known]
        ended = set(self.end_order)
        finals = sorted((run.ended_at or 0, t) for t, run in book.runs.items()
                        if t not in ended and t in self.trials and run.phase is not None and run.phase.final)
        self.end_order += [t for _, t in finals]
        for trial_id, run in book.runs.items():
            self._run_times[trial_id] = max(self._run_times[trial_id], run.ended)
        for trial_id, trial in self.trials.items():
            if self._id_to_hash[trial_id] is None:
                digest = self._compute_values_hash(trial.hyperparameters.values)
                self._id_to_hash[trial_id] = digest
                self._tried_so_far.add(digest)
        return restored


def cluster_class(cls: type) -> type:
    """`Cluster<cls>`: the stock oracle class with ClusterOracleMixin first in its MRO."""
    if issubclass(cls, ClusterOracleMixin):
        return cls
    return type("Cluster" + cls.__name__, (ClusterOracleMixin, cls), {})


def cluster_oracle(cls: type, **kwargs):
    """An instance of `cluster_class(cls)` built with the stock constructor's arguments."""
    return cluster_class(cls)(**kwargs)

