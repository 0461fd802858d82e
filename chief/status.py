"""`python -m chief status`: progress and the trial table, read from the state directory.

Files, not RPC: the same command works on a running cluster
(`docker compose exec chief python -m chief status`) and on a finished one
(`docker compose run --rm chief python -m chief status`), and needs no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

from chief import progress, recovery
from shared import results


@dataclasses.dataclass(frozen=True)
class Values:
    values: dict


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """What status needs of a trial, read from its state (no KerasTuner import)."""

    trial_id: str
    status: str
    score: float | None
    hyperparameters: Values

    @classmethod
    def of(cls, state: dict) -> "TrialRecord":
        return cls(state["trial_id"], state["status"], state.get("score"), Values(state["hyperparameters"]["values"]))


def snapshot(settings) -> progress.Snapshot | None:
    """A coordinator-like snapshot of the project's files; None if the project has no state yet.

    The journal is the truth (the trial.json files and oracle.json are written behind it)."""
    project_dir = settings.project_state_dir
    oracle_file = os.path.join(project_dir, "oracle.json")
    if not os.path.exists(oracle_file):
        return None
    oracle = json.load(open(oracle_file))
    states = {}
    for path in glob.glob(os.path.join(project_dir, "trial_*", "trial.json")):
        state = json.load(open(path))
        states[state["trial_id"]] = state
    replayed = recovery.read_project(project_dir)
    states.update(replayed.states)
    trials = [TrialRecord.of(states[t]) for t in sorted(states, key=lambda t: (len(t), t))]
    direction = settings.objective.direction or ("min" if "loss" in settings.objective.name else "max")
    done = [t for t in trials if t.status == "COMPLETED" and t.score is not None]
    best = (max if direction == "max" else min)(done, key=lambda t: t.score) if done else None
    book = replayed.book
    running = {run.owner: tid for tid, run in book.running.items()}
    queued = [tid for tid, run in book.runs.items() if run.phase is recovery.Phase.QUEUED]
    space = [hp["config"]["name"] for hp in oracle["hyperparameters"]["space"]]
    return progress.Snapshot(trials, dict(book.runs), running, queued,
                             settings.max_trials if settings.tuner != "hyperband" else None,
                             progress.ObjectiveInfo(settings.objective.name, direction), best, space)


def render(snap: progress.Snapshot) -> str:
    rows = results.trials_rows(snap.trials, snap.runs, snap.space)
    columns = results.FIXED_COLUMNS + [c for c in snap.space if any(r[c] is not None for r in rows)] + ["attempts"]
    cells = [[results.cell(r[c]) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = [progress.line(progress.summary(snap)), ""]
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)
