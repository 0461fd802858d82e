"""`python -m chief status`: progress and the trial table, read from the state directory.

Files, not RPC: the same command works on a running cluster
(`docker compose exec chief python -m chief status`) and on a finished one
(`docker compose run --rm chief python -m chief status`), and needs no TensorFlow.
"""

from __future__ import annotations

import glob
import json
import os
import types

from chief import progress
from chief.journal import JOURNAL, RunJournal
from shared import results


def _trial(state: dict):
    values = state["hyperparameters"]["values"]
    return types.SimpleNamespace(trial_id=state["trial_id"], status=state["status"], score=state.get("score"),
                                 hyperparameters=types.SimpleNamespace(values=values))


def snapshot(settings) -> dict | None:
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
    runs, journaled = RunJournal.replay(os.path.join(project_dir, JOURNAL))
    states.update(journaled)
    trials = [_trial(states[t]) for t in sorted(states, key=lambda t: (len(t), t))]
    direction = settings.objective.direction or ("min" if "loss" in settings.objective.name else "max")
    done = [t for t in trials if t.status == "COMPLETED" and t.score is not None]
    best = (max if direction == "max" else min)(done, key=lambda t: t.score) if done else None
    running = {run["worker"]: tid for tid, run in runs.items()
               if run["status"] == "RUNNING" and states.get(tid, {}).get("status") not in ("COMPLETED", "FAILED")}
    queued = [tid for tid, run in runs.items() if run["status"] == "RETRY"]
    space = [hp["config"]["name"] for hp in oracle["hyperparameters"]["space"]]
    return {"trials": trials, "runs": runs, "running": running, "queued": queued,
            "max_trials": settings.max_trials if settings.tuner != "hyperband" else None,
            "objective": types.SimpleNamespace(name=settings.objective.name, direction=direction),
            "best": best, "space": space, "fatal": None}


def render(snap: dict) -> str:
    rows = results.trials_rows(snap["trials"], snap["runs"], snap["space"])
    columns = results.FIXED_COLUMNS + [c for c in snap["space"] if any(r[c] is not None for r in rows)] + ["attempts"]
    cells = [[results.cell(r[c]) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = [progress.line(progress.summary(snap)), ""]
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)
