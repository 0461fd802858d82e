"""What the coordinator shows of the search, read under its lock: the progress summary, who is
present, a consistent snapshot (status, results), the finished marker, the workers still to hear
STOPPED, and the invariant check (chief.invariants).
"""

from __future__ import annotations

import json
import os
import time

from keras_tuner.engine import trial as trial_module

from chief import invariants, progress, recovery
from chief.journal import read_lines
from shared.atomic import write_text_atomic
from shared.layout import FINISHED_MARKER


class ViewsMixin:
    """For chief.coordinator.Coordinator (which provides the lock, the book, the oracle, the
    leases, the tally, the journal and the stop policy)."""

    def progress(self) -> progress.Summary:
        """The summary `progress.line` prints, without touching every trial; it takes the count of
        trial lines skipped since the last call. Silent: more than two heartbeats unheard."""
        with self._lock:
            return self.tally.summary(self.oracle.max_trials or len(self.oracle.trials),
                                      {r.owner: t for t, r in self.book.running.items()}, len(self.book.queued),
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
                    waiting = self.oracle.workers_not_stopped()
                left = deadline - time.monotonic()
                if not waiting or left <= 0 or self.faults.over():
                    return waiting
                self._changed.wait(left)

    def _notify(self):
        with self._changed:
            self._changed.notify_all()

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
                queued=list(self.book.queued),
                max_trials=oracle.max_trials,
                objective=progress.ObjectiveInfo(oracle.objective.name, oracle.objective.direction),
                best=best[0] if best and best[0].status == trial_module.TrialStatus.COMPLETED else None,
                space=[hp.name for hp in oracle.hyperparameters.space],
                fatal=self.fatal,
            )

    def validate(self) -> None:
        """Raise InconsistentState naming each way the book, the journal (its lines on disk and
        those waiting for a commit, replayed) and the oracle disagree. O(journal): tests call it
        after every call; the chief checks the book against the oracle when it opens a project."""
        with self._lock:
            events = read_lines(self.journal.path)[0] + self.journal.pending_events()
            replayed = recovery.replay(events, self.journal.path).book
            problems = invariants.differences(self.book, self.oracle.bookkeeping(), replayed)
        if problems:
            raise recovery.InconsistentState("; ".join(problems))
