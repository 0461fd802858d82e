"""`python -m chief status`: progress and the trial table, read from the state directory;
`python -m chief status --json`: the same state as one JSON object for scripts (`document`).

Files, not RPC: the same command works on a running cluster
(`docker compose exec chief python -m chief status`) and on a finished one
(`docker compose run --rm chief python -m chief status`), and needs no TensorFlow.
The search's own settings come from the project (shared.layout.SEARCH_RECORD, written by the
chief when it starts a search), never from the environment `status` happens to run in.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

from chief import progress, recovery
from shared.results import trial_order
from shared import layout, results
from shared.atomic import write_text_atomic


@dataclasses.dataclass(frozen=True)
class SearchRecord:
    """What the chief searches with, as its oracle has it. `max_trials` is None for hyperband
    (the oracle decides); `direction` is "min" or "max".

    The fields after `model` were added later (issue #21): a record written before them (d1fbc2d)
    lacks them, which means "not recorded" (None here; `read_search_fields` tells None recorded
    from absent), and the next start records them. chief.project checks a start against it: the
    tuner, the objective and its direction and the seed (where the tuner uses one) cannot change;
    the trial budget, epochs, leases and retries can, and each change is logged."""

    tuner: str
    max_trials: int | None
    epochs: int
    objective: str
    direction: str
    dataset: str
    model: str
    seed: int | None = None  # KTC_SEED; None: empty (KerasTuner drew one, kept in oracle.json)
    lease_seconds: float | None = None
    heartbeat_seconds: float | None = None
    max_retries: int | None = None


#: the fields every record has had since it was first written; the others may be absent
FIRST_FIELDS = ("tuner", "max_trials", "epochs", "objective", "direction", "dataset", "model")


def record_search(settings, oracle, fsync: bool = True) -> SearchRecord:
    """Chief, before it serves a search (a resumed one runs with the settings given now, which
    chief.project checked against the record): write the record atomically into the project's
    state dir, which must exist. Returns the record. `tuner` is KTC_TUNER as given (a built-in
    name or module:Class); `max_trials` is None when its algorithm is hyperband."""
    from shared.tuning import resolve_tuner

    hyperband = resolve_tuner(settings.tuner).algorithm == "hyperband"
    record = SearchRecord(tuner=settings.tuner,
                          max_trials=None if hyperband else settings.max_trials,
                          epochs=settings.epochs, objective=oracle.objective.name,
                          direction=oracle.objective.direction, dataset=settings.dataset,
                          model=settings.model, seed=settings.seed, lease_seconds=settings.lease_seconds,
                          heartbeat_seconds=settings.heartbeat_seconds, max_retries=settings.max_retries)
    write_text_atomic(os.path.join(settings.project_state_dir, layout.SEARCH_RECORD),
                      json.dumps(dataclasses.asdict(record), indent=1) + "\n", fsync=fsync)
    return record


def read_search_fields(project_dir: str) -> dict | None:
    """The record's fields as written (a field absent: not recorded); None for a project from
    before records. Raises OSError, ValueError (not JSON), TypeError (not a JSON object)."""
    try:
        with open(os.path.join(project_dir, layout.SEARCH_RECORD)) as f:
            fields = json.load(f)
    except FileNotFoundError:
        return None
    if not isinstance(fields, dict):
        raise TypeError(f"{layout.SEARCH_RECORD} holds a {type(fields).__name__}, not an object")
    return fields


def read_search(project_dir: str) -> SearchRecord | None:
    """The project's SearchRecord; None for a project from before it was written. KeyError for a
    record without one of FIRST_FIELDS."""
    fields = read_search_fields(project_dir)
    if fields is None:
        return None
    return SearchRecord(**{f.name: fields[f.name] if f.name in FIRST_FIELDS else fields.get(f.name)
                           for f in dataclasses.fields(SearchRecord)})


def _recorded_direction(states, objective: str) -> str | None:
    """The objective's direction as KerasTuner's metrics tracker stored it in a trial's state."""
    for state in states:
        direction = state.get("metrics", {}).get("metrics", {}).get(objective, {}).get("direction")
        if direction:
            return direction
    return None


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
    trials = [TrialRecord.of(states[t]) for t in sorted(states, key=trial_order)]
    record = read_search(project_dir)
    finished = layout.search_finished(project_dir)
    if record is not None:
        objective, direction, max_trials = record.objective, record.direction, record.max_trials
    else:  # a project from before the record: the direction its trials recorded; a finished
        # one's total is the trials it ran
        objective = settings.objective.name
        direction = _recorded_direction(states.values(), objective) or settings.objective.direction
        max_trials = None if finished or settings.tuner == "hyperband" else settings.max_trials
    done = [t for t in trials if t.status == "COMPLETED" and t.score is not None]
    best = None
    if done and direction in ("min", "max"):  # no direction known: no trial has a score yet
        best = (max if direction == "max" else min)(done, key=lambda t: t.score)
    book = replayed.book
    running = {run.owner: tid for tid, run in book.running.items()}
    queued = list(book.queued)
    space = [hp["config"]["name"] for hp in oracle["hyperparameters"]["space"]]
    return progress.Snapshot(trials, dict(book.runs), running, queued, max_trials,
                             progress.ObjectiveInfo(objective, direction), best, space, finished=finished)


MESSAGE_WIDTH = 60  # characters of a trial's message shown in the table (trials.csv has it whole)


def _message(text: str | None) -> str:
    """A trial's message on one line, at most MESSAGE_WIDTH characters."""
    text = " ".join((text or "").split())
    return text if len(text) <= MESSAGE_WIDTH else text[:MESSAGE_WIDTH - 3] + "..."


def render(snap: progress.Snapshot) -> str:
    """The progress line, the objective with its direction (`objective val_accuracy (max)`), and
    one row per trial: the values its build used (shared.results.trials_rows: a running trial
    shows only those every completed build used) and its last message, shortened to one line."""
    rows = results.trials_rows(snap.trials, snap.runs, snap.space)
    columns = (results.FIXED_COLUMNS + [c for c in snap.space if any(r[c] is not None for r in rows)]
               + ["attempts", "message"])
    cells = [[_message(r[c]) if c == "message" else results.cell(r[c]) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    direction = snap.objective.direction or "direction unknown"
    lines = [progress.line(progress.summary(snap)), f"objective {snap.objective.name} ({direction})"]
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def document(snap: progress.Snapshot, project: str) -> dict:
    """`python -m chief status --json`: what `render` shows, as one strict-JSON object for scripts.
    `progress`: the counts of the progress line (done = completed + failed, of total) and the line
    itself; `trials`: one object per trial in trial-id order with the columns of trials.csv, the
    hyperparameters under `hyperparameters` (null where the build did not use one); `best`: the
    best completed trial (null before one), with the values its build used."""
    summary = progress.summary(snap)
    rows = results.trials_rows(snap.trials, snap.runs, snap.space)
    trials = [{**{key: row[key] for key in results.FIXED_COLUMNS + results.LAST_COLUMNS},
               "hyperparameters": {name: row[name] for name in snap.space}} for row in rows]
    best = None
    if snap.best is not None:
        run = snap.runs.get(snap.best.trial_id)
        best = {"trial_id": snap.best.trial_id, "score": snap.best.score, "worker": run and run.owner,
                "hyperparameters": results.used_values(snap.best.hyperparameters.values, run and run.used)}
    return results.json_safe({
        "project": project,
        "objective": {"name": snap.objective.name, "direction": snap.objective.direction},
        "progress": {"done": summary.completed + summary.failed, "total": summary.total,
                     "completed": summary.completed, "failed": summary.failed, "queued": summary.queued,
                     "running": dict(sorted(summary.running.items())), "finished": summary.finished,
                     "eta_seconds": summary.eta, "line": progress.line(summary)},
        "best": best,
        "trials": trials,
    })
