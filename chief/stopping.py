"""The stop policy: when the search is over, or must stop. One object, asked by the coordinator
after every move of the trial state machine (chief.trials); it reads the book, never the oracle.

The search is over once nothing runs and nothing is queued, and either the trial budget is handed
out or a worker was told STOPPED. It must stop (`fatal`, one line) once `max_failures` trials in a
row ended FAILED (KTC_MAX_CONSECUTIVE_FAILURES; stock KerasTuner would raise inside its lock), or
for a reason the chief gives (`stop`: the state disk failed too long).
"""

from __future__ import annotations

from chief.trials import Ended, Phase, TrialBook


class StopPolicy:
    """`max_trials`: the trial budget (None or 0: the algorithm decides); `retries`: retries per
    trial; `max_failures`: FAILED trials in a row that stop the search. Not thread-safe: the
    coordinator's lock guards it."""

    def __init__(self, max_trials: int | None, retries: int, max_failures: int, book: TrialBook):
        self.max_trials, self.retries, self.max_failures = max_trials, retries, max_failures
        self.fatal: str | None = None
        self.stop_seen = False  # a worker was told STOPPED (or IDLE because of a budget handed out)
        finals = sorted((run.ended_at or 0.0, run.phase) for run in book.runs.values()
                        if run.phase is not None and run.phase.final)
        self.failures_in_a_row = 0
        for _, phase in finals:
            self.failures_in_a_row = self.failures_in_a_row + 1 if phase is Phase.FAILED else 0

    def ended(self, event: Ended) -> str | None:
        """Count an ended attempt; the reason to stop, when this one made `max_failures` in a row."""
        if event.outcome is Phase.COMPLETED:
            self.failures_in_a_row = 0
        elif event.outcome is Phase.FAILED:
            self.failures_in_a_row += 1
            if self.max_failures and self.failures_in_a_row >= self.max_failures:
                return self.stop(f"{self.max_failures} trials failed in a row (KTC_MAX_CONSECUTIVE_FAILURES); "
                                 f"last error: {event.message}")
        return None

    def stop(self, reason: str) -> str | None:
        """Stop the search for `reason`; the reason if it is the first (None if already stopped)."""
        if self.fatal:
            return None
        self.fatal = reason
        return reason

    def retry_possible_elsewhere(self, book: TrialBook, worker: str) -> bool:
        """A trial running on another worker may still fail (or lose its lease) and come back for a
        retry: `worker` must wait (IDLE) rather than stop."""
        return any(r.owner != worker and r.ended < self.retries for r in book.running.values())

    def over(self, book: TrialBook, handed_out: int) -> bool:
        """The search is over (or stopped); `handed_out`: trials the algorithm created so far."""
        budget_spent = bool(self.max_trials) and handed_out >= self.max_trials
        return bool(self.fatal) or ((self.stop_seen or budget_spent) and not book.running and not book.queued)
