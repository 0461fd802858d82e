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

Functions here compute paths and read the folder; none creates anything, except the chief's
record of a failed start and its re-confirmation of a finished project (below).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import time

from shared.atomic import write_text_atomic

FINISHED_MARKER = "ktcluster-finished.json"  # the chief writes it when a search is over
SEARCH_RECORD = "ktcluster-search.json"  # the chief's settings of the search (chief.status.SearchRecord)
CHECKPOINT = "checkpoint.weights.h5"  # KerasTuner's name for Keras 3 weights
BUILD_CONFIG = "build_config.json"  # KerasTuner's name for a model's build config
_ATTEMPT = re.compile(r"^attempt([1-9][0-9]*)$")
#: Generation g's claim on the project (chief.ownership): `ktcluster-chief.<g>.json`, created with
#: O_CREAT|O_EXCL by the one chief that takes generation g, then rewritten (temporary file and
#: rename) by that chief alone: a beat counter while it holds the project, `released` when it stops.
CHIEF_CLAIM_PREFIX, CHIEF_CLAIM_SUFFIX = "ktcluster-chief.", ".json"
_CLAIM = re.compile(r"^ktcluster-chief\.([1-9][0-9]{0,17})\.json$")


def json_object(content: bytes | str) -> dict | None:
    """The JSON object a file another process wrote holds; None for anything else (not JSON, or
    JSON that is not an object): callers validate its fields before use."""
    try:
        fields = json.loads(content)
    except ValueError:  # UnicodeDecodeError too
        return None
    return fields if isinstance(fields, dict) else None


def finished_marker(project_state_dir: str) -> str:
    return os.path.join(project_state_dir, FINISHED_MARKER)


def withdraw_finished(project_state_dir: str) -> None:
    """Remove FINISHED_MARKER if it is there (a chief that goes on with the project)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(finished_marker(project_state_dir))


def search_finished(project_state_dir: str) -> bool:
    """True when the project is marked finished. A worker decides with `FinishedWatch` instead: a
    marker it found as it started may be one that a chief is about to remove (see below)."""
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


def find_attempt_file(project_state_dir: str, trial_id: str, attempt: int | None, name: str) -> str | None:
    """`name` (CHECKPOINT, BUILD_CONFIG) of `attempt` (None: the accepted one) if it exists; a
    project written before per-attempt folders has it in the trial folder itself. None when
    there is none."""
    if attempt is None:
        attempt = accepted_attempt(project_state_dir, trial_id)
    candidates = [os.path.join(attempt_dir(project_state_dir, trial_id, attempt), name)] if attempt else []
    candidates.append(os.path.join(trial_dir(project_state_dir, trial_id), name))
    return next((path for path in candidates if os.path.exists(path)), None)


def chief_claim_path(project_state_dir: str, generation: int) -> str:
    """`<project state>/ktcluster-chief.<generation>.json` (generation >= 1)."""
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 1:
        raise ValueError(f"generation must be an integer >= 1, not {generation!r}")
    return os.path.join(project_state_dir, f"{CHIEF_CLAIM_PREFIX}{generation}{CHIEF_CLAIM_SUFFIX}")


def chief_claims(project_state_dir: str) -> list[int]:
    """Generations that have a claim file in the project's folder, ascending ([] if none)."""
    try:
        names = os.listdir(project_state_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(m[1]) for m in map(_CLAIM.match, names) if m)


# -- a chief that could not start -----------------------------------------------------------------
# Contract. A chief whose start fails once it knows the project's state folder (bad data, a bad
# setting, unusable storage or TLS files) writes CHIEF_FAILED there (atomically) with its reason and
# exit code, then exits. A chief that starts removes any such record first, before any slow work
# (`python -m chief status` and `health` never touch it). A worker waiting for the chief (the data
# cache, the gRPC retry loop) watches for it (ChiefFailureWatch) and exits with the chief's code
# and reason instead of waiting KTC_CHIEF_TIMEOUT_SECONDS. A chief that cannot bind its port
# (another chief serves it) writes nothing: the chief that holds the port is the one workers need.
CHIEF_FAILED = "ktcluster-chief-failed.json"
#: A record already there when a worker began watching may be stale (an earlier failed start while
#: a new chief starts and is about to remove it): it counts only once it has stood this long.
STALE_FAILURE_SECONDS = 10.0
MAX_REASON = 600  # characters of the chief's reason a worker repeats


@dataclasses.dataclass(frozen=True)
class ChiefFailure:
    """Why the chief could not start: its one-line `reason` and exit `code` (1..255); `at`: when
    (the chief's clock, seconds since the epoch; shown, never compared with a worker's clock)."""

    reason: str
    code: int
    at: float

    @classmethod
    def parse(cls, text: str) -> "ChiefFailure | None":
        """A record from the file's text, validated (it is written by another process, on a
        shared volume): None unless it is a JSON object with a non-empty string `reason` and an
        integer `code` in 1..255. The reason is made one printable line of at most MAX_REASON."""
        fields = json_object(text)
        if fields is None:
            return None
        reason, code, at = fields.get("reason"), fields.get("code"), fields.get("at", 0.0)
        if not isinstance(reason, str) or type(code) is not int or not 1 <= code <= 255:
            return None
        reason = " ".join("".join(c if c.isprintable() else " " for c in reason).split())[:MAX_REASON]
        if not reason:
            return None
        at = float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at) else 0.0
        return cls(reason, code, at)


def chief_failed_path(project_state_dir: str) -> str:
    return os.path.join(project_state_dir, CHIEF_FAILED)


def write_chief_failure(project_state_dir: str, reason: str, code: int) -> None:
    """Chief only: record a failed start (creating the project folder if needed). Raises OSError."""
    os.makedirs(project_state_dir, exist_ok=True)
    record = {"reason": reason, "code": code, "at": time.time()}
    write_text_atomic(chief_failed_path(project_state_dir), json.dumps(record) + "\n")


def clear_chief_failure(project_state_dir: str) -> None:
    """Chief only, first thing at start: remove a record of an earlier failed start (if any)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        os.unlink(chief_failed_path(project_state_dir))


def read_chief_failure(project_state_dir: str) -> ChiefFailure | None:
    """The recorded failed start, None if there is none or it cannot be read or is not valid."""
    try:
        with open(chief_failed_path(project_state_dir), encoding="utf-8", errors="replace") as f:
            return ChiefFailure.parse(f.read(64_000))
    except OSError:
        return None


class ChiefFailureWatch:
    """A worker's view of CHIEF_FAILED while it waits for the chief. `check()` returns the
    failure to act on, else None:
    - a record written after the watch began (absent at its first look, or replaced since) at once;
    - a record there at the first look, unchanged, only once the watch has run for `stale_seconds`
      (a new chief removes a stale one first thing; one still there is the last word of a chief
      that did not start again).
    No clocks are compared across machines: "new" means the file changed while we watched."""

    def __init__(self, project_state_dir: str, stale_seconds: float = STALE_FAILURE_SECONDS,
                 clock=time.monotonic):
        self.project_state_dir, self.stale_seconds, self._clock = project_state_dir, stale_seconds, clock
        self._started = clock()
        self._first = self._identity()

    def _identity(self):
        return _identity(chief_failed_path(self.project_state_dir))

    def check(self) -> ChiefFailure | None:
        seen = self._identity()
        if seen is None:
            return None
        if seen == self._first and self._clock() - self._started < self.stale_seconds:
            return None
        return read_chief_failure(self.project_state_dir)


_watches: dict[str, ChiefFailureWatch] = {}


def chief_failure_watch(project_state_dir: str) -> ChiefFailureWatch:
    """The process's one watch of this project (made at the first call: a worker calls this as it
    starts, so every later wait, data or gRPC, judges staleness from then)."""
    key = os.path.abspath(project_state_dir)
    if key not in _watches:
        _watches[key] = ChiefFailureWatch(project_state_dir)
    return _watches[key]


def _identity(path: str):
    """What tells one version of a file from another without comparing clocks: a file rewritten
    with a temporary file and a rename (shared.atomic) is a new inode with a new mtime."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


# -- a finished project ---------------------------------------------------------------------------
# Contract. FINISHED_MARKER, found as a worker starts, is a claim about the past: a chief started
# with it may only report the project (then the search is over) or continue it (KTC_MAX_TRIALS
# raised: the chief removes the marker once its start is done, before it serves). So a worker
# treats the marker as final only when a chief wrote it after the worker began watching: a search
# that ended meanwhile, or a chief that only reports the project and re-confirms the marker
# (`confirm_finished`, a new file) before it exits. A marker unchanged since the worker's first
# look is final only once the chief cannot be reached for KTC_CHIEF_TIMEOUT_SECONDS.

def confirm_finished(project_state_dir: str) -> None:
    """Chief only, reporting a finished project: rewrite the marker (same content, a new file), so
    that workers started with this chief know the search is over. Raises OSError."""
    path = finished_marker(project_state_dir)
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read(1_000_000)
    write_text_atomic(path, text)


class FinishedWatch:
    """A worker's view of FINISHED_MARKER from the moment it starts (no clocks compared)."""

    def __init__(self, project_state_dir: str):
        self.project_state_dir = project_state_dir
        self._first = _identity(finished_marker(project_state_dir))

    @property
    def marked_at_start(self) -> bool:
        """The marker was there at the first look (it may be withdrawn by a continuing chief)."""
        return self._first is not None

    def final(self) -> bool:
        """The marker is there and was written after the first look: the search is over."""
        seen = _identity(finished_marker(self.project_state_dir))
        return seen is not None and seen != self._first

    def withdrawn(self) -> bool:
        """The marker found at the first look is gone: a chief continues the project."""
        return self._first is not None and _identity(finished_marker(self.project_state_dir)) is None


_finished_watches: dict[str, FinishedWatch] = {}


def finished_watch(project_state_dir: str) -> FinishedWatch:
    """The process's one FinishedWatch of this project (made at the first call: a worker calls
    this first thing, so "after the first look" means after the worker started)."""
    key = os.path.abspath(project_state_dir)
    if key not in _finished_watches:
        _finished_watches[key] = FinishedWatch(project_state_dir)
    return _finished_watches[key]
