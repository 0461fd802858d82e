"""Where chief and workers put things in the shared state folder (`<KTC_STATE_DIR>/<project>`).

One place for the file names both sides use, so the worker imports nothing from `chief/`.

Per-attempt folders: every attempt of a trial writes its checkpoint and build config into
`trial_<id>/attempt<k>/`. A worker that lost its attempt (lease expired, e.g. after a pause) and
writes once more before it hears so can then only touch its own folder, never the files of the
attempt the chief accepts. The chief knows the accepted attempt from its journal and reads
`checkpoint_path(..., attempt)`. A worker that needs a finished trial's checkpoint (Hyperband
warm starts) uses `accepted_attempt`: attempts are numbered upwards, a new one is made only after
the previous one was taken away or ended for a retry, and none after one is accepted, so the
accepted attempt of a completed trial is its highest-numbered folder.

Functions here compute paths and read the folder; none creates anything.
"""

from __future__ import annotations

import os
import re

FINISHED_MARKER = "ktcluster-finished.json"  # the chief writes it when a search is over
SEARCH_RECORD = "ktcluster-search.json"  # the chief's settings of the search (chief.status.SearchRecord)
CHECKPOINT = "checkpoint.weights.h5"  # KerasTuner's name for Keras 3 weights
BUILD_CONFIG = "build_config.json"  # KerasTuner's name for a model's build config
_ATTEMPT = re.compile(r"^attempt([1-9][0-9]*)$")


def finished_marker(project_state_dir: str) -> str:
    return os.path.join(project_state_dir, FINISHED_MARKER)


def search_finished(project_state_dir: str) -> bool:
    """True when the chief has marked this project's search as over."""
    return os.path.exists(finished_marker(project_state_dir))


def trial_dir(project_state_dir: str, trial_id: str) -> str:
    """KerasTuner's folder of a trial (the chief's trial.json lives there)."""
    return os.path.join(project_state_dir, f"trial_{trial_id}")


def attempt_dir(project_state_dir: str, trial_id: str, attempt: int) -> str:
    """`<project state>/trial_<id>/attempt<k>`: written only by the worker running attempt k."""
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt must be an integer >= 1, not {attempt!r}")
    return os.path.join(trial_dir(project_state_dir, trial_id), f"attempt{attempt}")


def checkpoint_path(project_state_dir: str, trial_id: str, attempt: int) -> str:
    return os.path.join(attempt_dir(project_state_dir, trial_id, attempt), CHECKPOINT)


def build_config_path(project_state_dir: str, trial_id: str, attempt: int) -> str:
    return os.path.join(attempt_dir(project_state_dir, trial_id, attempt), BUILD_CONFIG)


def attempts_on_disk(project_state_dir: str, trial_id: str) -> list[int]:
    """Attempt numbers that have a folder for this trial, ascending ([] if none)."""
    try:
        names = os.listdir(trial_dir(project_state_dir, trial_id))
    except FileNotFoundError:
        return []
    return sorted(int(m[1]) for m in map(_ATTEMPT.match, names) if m)


def accepted_attempt(project_state_dir: str, trial_id: str) -> int | None:
    """For a COMPLETED trial: the attempt whose result the chief accepted (see the module
    docstring for why that is the highest folder); None when no attempt wrote a folder."""
    found = attempts_on_disk(project_state_dir, trial_id)
    return found[-1] if found else None


def find_checkpoint(project_state_dir: str, trial_id: str, attempt: int | None) -> str | None:
    """The checkpoint of `attempt` (None: the accepted one) if it exists; a project written
    before per-attempt folders has it in the trial folder itself. None when there is none."""
    if attempt is None:
        attempt = accepted_attempt(project_state_dir, trial_id)
    candidates = [checkpoint_path(project_state_dir, trial_id, attempt)] if attempt else []
    candidates.append(os.path.join(trial_dir(project_state_dir, trial_id), CHECKPOINT))
    return next((path for path in candidates if os.path.exists(path)), None)


def find_build_config(project_state_dir: str, trial_id: str, attempt: int | None) -> str | None:
    """Like `find_checkpoint`, for the build config."""
    if attempt is None:
        attempt = accepted_attempt(project_state_dir, trial_id)
    candidates = [build_config_path(project_state_dir, trial_id, attempt)] if attempt else []
    candidates.append(os.path.join(trial_dir(project_state_dir, trial_id), BUILD_CONFIG))
    return next((path for path in candidates if os.path.exists(path)), None)
