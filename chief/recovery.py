"""Replay of the journal: its start and end records applied, in order, through the trial state
machine's one `apply` (chief.trials), the same path live calls take; its trial lines folded into
KerasTuner states.

Used by a restarting chief (then the oracle is made to follow the book, chief.oracle) and by
`python -m chief status`, which needs no TensorFlow. The journal is the truth: the state files
are written behind it and may lag.
"""

from __future__ import annotations

import dataclasses
import os

from chief.journal import JOURNAL, Event, JournalCorrupt, read_lines, trial_state
from chief.records import RETRY, from_record
from chief.trials import Refused, TrialBook

__all__ = ["RETRY", "InconsistentState", "Replayed", "read_project", "replay"]


class InconsistentState(RuntimeError):
    """The project's files contradict each other: resuming would hand out trial ids again."""


@dataclasses.dataclass
class Replayed:
    book: TrialBook  # every trial's attempts, as the state machine left them
    states: dict[str, dict]  # trial id -> its latest KerasTuner state (trial.json's content)


def replay(events: list[dict], path: str = JOURNAL) -> Replayed:
    """Fold journal events, in order; JournalCorrupt names the first line that contradicts the
    state machine or the lines before it."""
    book, states, spaces = TrialBook(), {}, {}
    for number, event in enumerate(events, start=1):
        try:
            _fold(event, book, states, spaces)
        except (Refused, KeyError, TypeError, ValueError) as exc:
            raise JournalCorrupt(f"{path} line {number} does not fit the lines before it ({exc}); the journal is "
                                 "damaged: restore it from a backup or start a new project") from None
    return Replayed(book, states)


def _fold(event: dict, book: TrialBook, states: dict, spaces: dict) -> None:
    """One line: a start or end record through the machine's apply, a state into `states`."""
    kind = Event(event["event"])
    if kind is Event.SPACE:
        spaces[event["ref"]] = event["space"]
    elif kind is Event.TRIAL:
        trial_id, state = trial_state(event, spaces)
        states[trial_id] = state
    elif kind is Event.METRICS:
        _apply_metrics(event, states)
    elif kind in (Event.START, Event.END):
        book.apply(from_record(event))
    # a `chief` line: a chief took the project over (chief.ownership); reading the journal fenced it already


def _apply_metrics(event: dict, states: dict) -> None:
    """What one progress report added, as MetricHistory.update adds it (journals written by
    earlier versions of the chief)."""
    if event["trial"] not in states:
        return
    metrics = states[event["trial"]]["metrics"]["metrics"]
    for name, value in event["metrics"].items():
        if name not in metrics:
            metrics[name] = {"direction": event["directions"][name], "observations": []}
        observations = metrics[name]["observations"]
        same_step = [obs for obs in observations if obs["step"] == event["step"]]
        if same_step:
            same_step[0]["value"].append(value)
        else:
            observations.append({"value": [value], "step": event["step"]})
            observations.sort(key=lambda obs: obs["step"])


def read_project(project_dir: str) -> Replayed:
    """The journal of a project folder, replayed (empty if there is none; lines a chief wrote
    after it had lost the project are left out, see chief.journal)."""
    path = os.path.join(project_dir, JOURNAL)
    events, _ = read_lines(path)
    return replay(events, path)
