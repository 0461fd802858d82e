"""Opening a project for a coordinator: the journal taken and replayed through the trial state
machine's one `apply` (chief.recovery), the oracle made to follow what it replays to
(`ClusterOracleMixin.restore`), the invariant checked, the finished marker settled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading

from chief import invariants, recovery
from chief.journal import RunJournal
from chief.statefiles import StateWriter, StorageFaults
from chief.trials import TrialBook
from shared.layout import FINISHED_MARKER


@dataclasses.dataclass
class Opened:
    """A project ready to serve: its journal (open for appending), its state writer, the book the
    journal replays to, and the trials kept for their workers across a restart (worker -> trial)."""

    journal: RunJournal
    writer: StateWriter
    book: TrialBook
    kept: dict[str, str]


def open_project(oracle, lock: threading.Lock, faults: StorageFaults, fsync: bool) -> Opened:
    """Open the project of `oracle` (its `project_dir`). Raises JournalCorrupt (a line that
    cannot be read or contradicts the lines before it), InconsistentState (the project's files
    contradict each other, or the oracle does not follow the replayed book: each difference
    named), OSError (the journal cannot be opened)."""
    journal = RunJournal(oracle.project_dir, fsync=fsync)
    replayed = recovery.replay(journal.events, journal.path)
    journal.events = []  # replayed: what a long search wrote need not stay in memory
    writer = StateWriter(oracle, lock, faults, fsync=fsync)
    oracle.attach(journal, writer)
    kept = oracle.restore(replayed.book, replayed.states)
    problems = invariants.differences(replayed.book, oracle.bookkeeping())
    if problems:
        journal.close()
        raise recovery.InconsistentState(f"{journal.path}: the oracle rebuilt from the project's files does not "
                                         f"follow the journal ({'; '.join(problems)[:600]}); restore the project "
                                         "from a backup, or start a new search (another KTC_PROJECT)")
    return Opened(journal, writer, replayed.book, kept)


def settle_marker(project_dir: str, over: bool) -> None:
    """A search that goes on must not tell late workers it is finished: its marker goes."""
    if not over:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(project_dir, FINISHED_MARKER))
