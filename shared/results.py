"""What the user keeps: trials.csv and best_hyperparameters.json in KTC_RESULTS_DIR/<project>/."""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os

from shared.atomic import write_text_atomic

FIXED_COLUMNS = ["trial_id", "worker", "status", "score", "seconds"]
LAST_COLUMNS = ["attempts", "message"]  # after the hyperparameters


def trial_order(trial_id: str) -> tuple:
    """The sort key of trial ids, everywhere they are listed: KerasTuner's ids are numbers (zero-
    padded to one width), in numeric order; any other id after them, in text order."""
    return (0, int(trial_id), "") if trial_id.isdigit() else (1, 0, trial_id)


def cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):  # numpy's floats too
        return repr(float(value))
    return str(value)


HYPERBAND_PREFIX = "tuner/"  # Hyperband's own bookkeeping values: part of what the trial ran with


def used_values(values: dict, used) -> dict:
    """The values a model was built with: those named in `used` (the worker's `ktc-used` report)
    and Hyperband's bookkeeping; all of them when `used` is None (unknown, e.g. a stock worker)."""
    return {name: value for name, value in values.items()
            if used is None or name in used or name.startswith(HYPERBAND_PREFIX)}


def json_safe(value):
    """`value` with NaN and infinities as None (strict JSON has no NaN) and numpy scalars as
    Python numbers, through dicts and lists."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def used_by_every_build(runs) -> set[str]:
    """The hyperparameters every completed build reported using (empty before any did)."""
    known = [set(run.used) for run in runs.values() if run.used is not None]
    return set.intersection(*known) if known else set()


def trials_rows(trials, runs, hp_names):
    """One dict per trial, in trial-id order. `runs[trial_id]` (the chief's TrialRun) has `owner`,
    `seconds`, `attempt`, `message` and `used` (the hyperparameters the model was built with: only
    those get a value). A trial not yet ended (RUNNING, or queued for a retry) has no used set
    yet: it shows only the values every completed build used (`used_by_every_build`), none before
    a first trial completed, rather than values its build may ignore. An ended trial whose used
    set is unknown (failed, or run by a stock worker) shows every value it was given."""
    rows, common = [], None
    for trial in sorted(trials, key=lambda t: trial_order(t.trial_id)):
        run = runs.get(trial.trial_id)
        row = {
            "trial_id": trial.trial_id,
            "worker": run and run.owner,
            "status": trial.status,
            "score": trial.score,
            "seconds": None if run is None or run.seconds is None else round(run.seconds, 3),
        }
        used = run.used if run is not None else None  # None: unknown (e.g. a stock worker): every value
        if used is None and trial.status not in ("COMPLETED", "FAILED"):
            used = common = used_by_every_build(runs) if common is None else common
        values = used_values(trial.hyperparameters.values, used)
        row.update({name: values.get(name) for name in hp_names})
        row.update(attempts=run and run.attempt, message=(run and run.message) or None)
        rows.append(row)
    return rows


def write(results_dir: str, rows, hp_names, best) -> None:
    """Write both files atomically (a crash never leaves half a CSV); the JSON is strict (NaN and
    infinities as null)."""
    os.makedirs(results_dir, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIXED_COLUMNS + list(hp_names) + LAST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: cell(value) for key, value in row.items()})
    write_text_atomic(os.path.join(results_dir, "trials.csv"), buffer.getvalue())
    write_text_atomic(
        os.path.join(results_dir, "best_hyperparameters.json"),
        json.dumps(json_safe(best), indent=2, sort_keys=True, allow_nan=False) + "\n",
    )


def give_to_folder_owner(root: str, path: str) -> int:
    """Give `path` and everything in it the owner of `root`; return how many entries changed.

    In Compose, `root` is the user's ./results, bind-mounted, and the chief runs as root: what it
    writes there would belong to root, and the user could not delete or overwrite it without sudo.
    The folder ships with the repository, so it belongs to whoever cloned it. Only root may give
    files away, so anyone else (a local run) changes nothing.
    """
    if os.geteuid() != 0:
        return 0
    owner = os.stat(root)
    entries = [path]  # then each folder's contents, so every entry is looked at once
    for folder, folders, files in os.walk(path):
        entries += [os.path.join(folder, name) for name in folders + files]
    changed = 0
    for entry in entries:
        st = os.lstat(entry)
        if (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid):
            os.lchown(entry, owner.st_uid, owner.st_gid)
            changed += 1
    return changed
