"""Append-only journal of the search: the chief's durable truth.

Lines are appended (no file created, O(1) per event) and in the kernel before
the caller replies (fsync'd too with KTC_FSYNC=1):
- `trial`: a trial's whole state (what KerasTuner keeps in trial.json) when it
  starts or ends, its search space by reference to a `space` line (a space is
  most of a state and is the same for trial after trial);
- `metrics`: what a progress report added (an epoch's metrics), not the whole
  state again: a trial reports every epoch;
- `start` / `end`: who ran which attempt, when, and how it ended.
Replayed on start, so a restarted chief (and `python -m chief status`, which
needs no TensorFlow) knows every trial and attempt even when the trial.json
files, written behind, lag.
"""

from __future__ import annotations

import json
import math
import os
import time

import orjson

JOURNAL = "ktcluster-runs.jsonl"


def encode(event: dict) -> bytes:
    """One journal line. orjson writes these lines ~15x faster than json (the journal was ~20% of
    the chief's own time per trial, benchmarks/RESULTS.md), but writes NaN and infinities as null:
    a line holding one (a diverged loss) is written by json, whose NaN and Infinity json reads
    back, as is anything else orjson refuses (an int past 64 bits, a non-string key)."""
    if _finite(event):
        try:
            return orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
        except orjson.JSONEncodeError:
            pass
    return (json.dumps(event) + "\n").encode()


def _finite(event: dict) -> bool:
    """No float of the event is NaN or infinite. Trial states and metrics carry the reported
    numbers; start and end lines only times; anything else (space lines: rare) is not checked."""
    kind = event["event"]
    if kind in ("start", "end"):
        return True
    if kind == "metrics":
        numbers = [event["step"], *event["metrics"].values()]
    elif kind == "trial":
        state = event["state"]
        numbers = [state["score"], *state["hyperparameters"]["values"].values()]
        for history in state["metrics"]["metrics"].values():
            for observation in history["observations"]:
                numbers.append(observation["step"])
                numbers.extend(observation["value"])
    else:
        return False
    return all(math.isfinite(n) for n in numbers if isinstance(n, float))


class RunJournal:
    """`runs`: trial id -> latest attempt, kept up to date; `states`: trial id -> latest trial
    state as replayed when opened (for reloading; the live oracle holds the trials after that,
    so the journal does not keep a second copy of every state)."""

    KNOWN_SPACES = 8  # spaces a trial line may refer to without writing its space again

    def __init__(self, project_dir: str, fsync: bool = False):
        self.path, self.fsync = os.path.join(project_dir, JOURNAL), fsync
        self.runs, self.states = self.replay(self.path)
        self._spaces: list[tuple[str, list]] = []  # (reference, space) written to this file, newest last
        self._session, self._written = os.urandom(4).hex(), 0  # references unique across chief restarts
        self._file = open(self.path, "ab")

    @staticmethod
    def replay(path: str) -> tuple[dict[str, dict], dict[str, dict]]:
        """(runs, states): runs are trial id -> latest attempt (worker, started, seconds, status,
        attempts, message, used); states are trial id -> the trial's latest state."""
        runs: dict[str, dict] = {}
        states: dict[str, dict] = {}
        spaces: dict[str, list] = {}
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    try:
                        event = json.loads(line)
                    except ValueError:  # a torn last line from a crash: ignore it
                        continue
                    RunJournal._apply(runs, event, states, spaces)
        return runs, states

    @staticmethod
    def _apply(runs, event, states=None, spaces=None):
        """Fold one event in (`states` None: skip trial states); `ends` counts ended attempts,
        `ended_at` orders results."""
        kind = event["event"]
        if kind in ("space", "trial", "metrics"):
            if states is not None:
                RunJournal._apply_state(event, states, spaces)
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

    @staticmethod
    def _apply_state(event, states, spaces):
        kind = event["event"]
        if kind == "space":
            spaces[event["ref"]] = event["space"]
        elif kind == "trial":
            state, hyperparameters = event["state"], event["state"]["hyperparameters"]
            if isinstance(hyperparameters["space"], str):
                state["hyperparameters"] = {**hyperparameters, "space": spaces[hyperparameters["space"]]}
            states[event["trial"]] = state
        elif event["trial"] in states:  # metrics: as MetricHistory.update adds a value, in its config form
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

    def record(self, **event):
        """Fold one event in and buffer its line; `commit` hands it to the kernel."""
        event["t"] = time.time()
        self._apply(self.runs, event)
        self._file.write(encode(event))

    def commit(self) -> None:
        """Make what was recorded durable: one write (and fsync) per oracle call, not per event
        (a trial's start is two events, its end two more), before the call is answered."""
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def record_trial(self, state: dict) -> None:
        """A trial's new state (the caller passes a fresh `trial.get_state()`, left unchanged)."""
        hyperparameters = state["hyperparameters"]
        reference = self._space_reference(hyperparameters["space"])
        self.record(event="trial", trial=state["trial_id"],
                    state={**state, "hyperparameters": {**hyperparameters, "space": reference}})

    def record_metrics(self, trial_id: str, step, metrics: dict, directions: dict) -> None:
        """What one progress report added to a trial: `metrics` (name -> value) at `step`, and
        the direction of each metric the trial had not reported before."""
        self.record(event="metrics", trial=trial_id, step=step, metrics=metrics, directions=directions)

    def _space_reference(self, space: list) -> str:
        """The reference of a `space` line holding `space`, written first if this file has none
        among the latest KNOWN_SPACES (a list comparison: far cheaper than encoding it)."""
        for reference, known in reversed(self._spaces):
            if known == space:
                return reference
        self._written += 1
        reference = f"{self._session}-{self._written}"
        self.record(event="space", ref=reference, space=space)
        self._spaces = self._spaces[-(self.KNOWN_SPACES - 1):] + [(reference, space)]
        return reference

    def close(self):
        self._file.close()
