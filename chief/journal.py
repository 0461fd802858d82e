"""Append-only journal of the search: the chief's durable truth.

Two kinds of lines, appended (no file created, O(1) per event) and in the kernel
before the caller replies (fsync'd too with KTC_FSYNC=1):
- `trial`: a trial's whole state (what KerasTuner keeps in trial.json), on
  every change;
- `start` / `end`: who ran which attempt, when, and how it ended.
Replayed on start, so a restarted chief (and `python -m chief status`, which
needs no TensorFlow) knows every trial and attempt even when the trial.json
files, written behind, lag.
"""

from __future__ import annotations

import json
import os
import time

JOURNAL = "ktcluster-runs.jsonl"


class RunJournal:
    """`runs`: trial id -> latest attempt, kept up to date; `states`: trial id -> latest trial
    state as replayed when opened (for reloading; the live oracle holds the trials after that,
    so the journal does not keep a second copy of every state)."""

    def __init__(self, project_dir: str, fsync: bool = False):
        self.path, self.fsync = os.path.join(project_dir, JOURNAL), fsync
        self.runs, self.states = self.replay(self.path)
        self._file = open(self.path, "a")

    @staticmethod
    def replay(path: str) -> tuple[dict[str, dict], dict[str, dict]]:
        """(runs, states): runs are trial id -> latest attempt (worker, started, seconds, status,
        attempts, message, used); states are trial id -> the trial's latest state."""
        runs: dict[str, dict] = {}
        states: dict[str, dict] = {}
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    try:
                        RunJournal._apply(runs, states, json.loads(line))
                    except ValueError:  # a torn last line from a crash: ignore it
                        continue
        return runs, states

    @staticmethod
    def _apply(runs, states, event):
        """Fold one event in (`states` None: skip trial states); `ends` counts ended attempts,
        `ended_at` orders results."""
        kind = event["event"]
        if kind == "trial":
            if states is not None:
                states[event["trial"]] = event["state"]
            return
        run = runs.setdefault(event["trial"], {"attempts": 0, "ends": 0, "message": ""})
        if kind == "start":
            run.update(worker=event["worker"], started=event["t"], seconds=None, status="RUNNING")
            run["attempts"] += 1
        elif kind == "end":
            run.update(seconds=event.get("seconds"), status=event["status"], ended_at=event["t"])
            run["ends"] += 1
            if event.get("used") is not None:
                run["used"] = event["used"]
            if event.get("message"):
                run["message"] = event["message"]

    def record(self, **event):
        """Fold one event in and buffer its line; `commit` hands it to the kernel."""
        event["t"] = time.time()
        self._apply(self.runs, None, event)
        self._file.write(json.dumps(event) + "\n")

    def commit(self) -> None:
        """Make what was recorded durable: one write (and fsync) per oracle call, not per event
        (a trial's start is two events, its end two more), before the call is answered."""
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def record_trial(self, state: dict) -> None:
        """A trial's new state (the caller passes a fresh `trial.get_state()`)."""
        self.record(event="trial", trial=state["trial_id"], state=state)

    def close(self):
        self._file.close()
