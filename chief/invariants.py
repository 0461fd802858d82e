"""The invariant of the chief's trial truth: the book (chief.trials), the journal replayed, and
KerasTuner's oracle agree. `differences` names each way they do not (empty: they agree);
`Coordinator.validate` raises with them, the chief checks at every restart and the unit tests
after every call."""

from __future__ import annotations

import dataclasses

from chief.trials import Phase, TrialBook


@dataclasses.dataclass(frozen=True)
class Bookkeeping:
    """What KerasTuner's oracle keeps about the trials (chief.oracle's `bookkeeping`): the running
    trial by worker, the retry queue, the status by trial, the ended attempts by trial."""

    running: dict[str, str]
    queued: list[str]
    statuses: dict[str, str]
    run_times: dict[str, int]


def _shape(book: TrialBook) -> dict[str, tuple]:
    return {t: (r.phase and r.phase.value, r.owner, r.attempt, r.ended, r.stock, r.token)
            for t, r in book.runs.items() if r.attempt}  # a trial only queued at open (records.Queued) is not journaled


def differences(book: TrialBook, oracle: Bookkeeping, replayed: TrialBook | None = None) -> list[str]:
    """One line per disagreement between `book`, the oracle's `bookkeeping()`, and (when given)
    the book the journal replays to."""
    found = []
    running = {run.owner: t for t, run in book.running.items()}
    if running != oracle.running:
        found.append(f"running: the book says {running}, the oracle {oracle.running}")
    if sorted(book.queued) != sorted(oracle.queued):
        found.append(f"queued: the book says {sorted(book.queued)}, the oracle {sorted(oracle.queued)}")
    for trial_id, run in book.runs.items():
        status = oracle.statuses.get(trial_id)
        if run.phase is not None and run.phase.final and status is not None and status != run.phase.value:
            found.append(f"trial {trial_id}: the book says {run.phase.value}, the oracle {status}")
        elif run.phase is Phase.RUNNING and status is not None and status != "RUNNING":
            found.append(f"trial {trial_id}: the book says RUNNING, the oracle {status}")
        if status is not None and oracle.run_times.get(trial_id, 0) != run.ended:
            found.append(f"trial {trial_id}: the book counts {run.ended} ended attempts, the oracle "
                         f"{oracle.run_times.get(trial_id, 0)}")
    if replayed is not None:
        mine, theirs = _shape(book), _shape(replayed)
        for trial_id in sorted(set(mine) | set(theirs)):
            if mine.get(trial_id) != theirs.get(trial_id):
                found.append(f"trial {trial_id}: the book has (phase, owner, attempt, ended, stock, token) "
                             f"{mine.get(trial_id)}, the journal replays to {theirs.get(trial_id)}")
    return found
