"""Append-only journal of the search: the chief's durable truth.

One JSON object per line, in `<project>/ktcluster-runs.jsonl`:
- `space`: a search space, referred to by trial lines (it is most of a state);
- `trial`: a trial's whole state (what KerasTuner keeps in trial.json);
- `metrics`: what one progress report added (written by earlier versions; still replayed);
- `start` / `end`: the trial state machine's transitions (chief.trials): who ran which attempt,
  when, and how it ended.

Lines are buffered while an oracle call runs and handed to the kernel by `commit` before the
call is answered (fsync'd too with KTC_FSYNC=1). A commit that fails (disk full, I/O error) cuts
the file back to its last whole line and keeps the lines for the next commit: nothing is
acknowledged that is not stored, and no line is ever glued onto a torn one.

On open, a last line without its newline (a crash mid-append) is cut off before anything is
appended. An undecodable line anywhere else raises `JournalCorrupt` naming the file and line.
"""

from __future__ import annotations

import enum
import json
import math
import os
import time
from typing import Iterator

import orjson

JOURNAL = "ktcluster-runs.jsonl"


class Event(str, enum.Enum):
    SPACE = "space"
    TRIAL = "trial"
    METRICS = "metrics"
    START = "start"
    END = "end"


class JournalCorrupt(RuntimeError):
    """A line other than a torn last one cannot be read: replaying on would lose or invent trials."""


class StorageUnavailable(OSError):
    """The journal could not be appended; what was recorded is kept for the next commit."""


def encode(event: dict) -> bytes:
    """One journal line. orjson is used for speed, but writes NaN and infinities as null: a line
    holding one (a diverged loss) is written by json, whose NaN and Infinity json reads back, as
    is anything else orjson refuses (an int past 64 bits, a non-string key)."""
    if _finite(event):
        try:
            return orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
        except orjson.JSONEncodeError:
            pass
    return (json.dumps(event) + "\n").encode()


def _numbers(value) -> Iterator[float]:
    if isinstance(value, float):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)


def _finite(event: dict) -> bool:
    return all(math.isfinite(n) for n in _numbers(event))


def read_lines(path: str) -> tuple[list[dict], int]:
    """(events, length of the whole lines): every complete line decoded, in order.

    A last line without its newline is torn (never acknowledged) and left out; any other line
    that is not a JSON object with an `event` raises JournalCorrupt with the line number."""
    if not os.path.exists(path):
        return [], 0
    with open(path, "rb") as f:
        data = f.read()
    whole = data.rfind(b"\n") + 1  # bytes up to the end of the last whole line
    events = []
    for number, line in enumerate(data[:whole].splitlines(), start=1):
        try:
            event = json.loads(line)
            Event(event["event"])
        except (ValueError, TypeError, KeyError) as exc:
            raise JournalCorrupt(f"{path} line {number} cannot be read ({type(exc).__name__}); "
                                 "the journal is damaged: restore it from a backup or start a new project") from None
        events.append(event)
    return events, whole


class RunJournal:
    """The journal file, opened for appending. `events` holds what was on disk when opened.

    Not thread-safe: the coordinator's lock guards `record` and `commit`."""

    KNOWN_SPACES = 8  # spaces a trial line may refer to without writing its space again

    def __init__(self, project_dir: str, fsync: bool = False):
        self.path, self.fsync = os.path.join(project_dir, JOURNAL), fsync
        self.events, self._size = read_lines(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if os.fstat(self._fd).st_size != self._size:
            os.ftruncate(self._fd, self._size)  # cut a torn last line before appending anything
        self._pending = bytearray()
        self._spaces: list[tuple[str, list]] = []  # (reference, space) written to this file, newest last
        self._session, self._written = os.urandom(4).hex(), 0  # references unique across chief restarts

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def record(self, event: Event, **fields) -> None:
        """Buffer one line; `commit` writes it."""
        self._pending += encode({"event": event.value, **fields, "t": time.time()})

    def commit(self) -> None:
        """Append every buffered line, or none: on failure the file is cut back to its last whole
        line and StorageUnavailable raised, the lines kept for the next commit."""
        if not self._pending:
            return
        try:
            if os.fstat(self._fd).st_size != self._size:  # an earlier failure left part of a line
                os.ftruncate(self._fd, self._size)
            done = 0
            with memoryview(self._pending) as view:
                while done < len(view):
                    done += os.write(self._fd, view[done:])
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass  # retried before the next write
            raise StorageUnavailable(exc.errno, f"cannot append to {self.path}: {exc.strerror}") from exc
        self._size += len(self._pending)
        self._pending.clear()

    def record_trial(self, state: dict) -> None:
        """A trial's new state (the caller passes a fresh `trial.get_state()`, left unchanged)."""
        hyperparameters = state["hyperparameters"]
        reference = self._space_reference(hyperparameters["space"])
        self.record(Event.TRIAL, trial=state["trial_id"],
                    state={**state, "hyperparameters": {**hyperparameters, "space": reference}})

    def _space_reference(self, space: list) -> str:
        """The reference of a `space` line holding `space`, written first if this file has none
        among the latest KNOWN_SPACES."""
        for reference, known in reversed(self._spaces):
            if known == space:
                return reference
        self._written += 1
        reference = f"{self._session}-{self._written}"
        self.record(Event.SPACE, ref=reference, space=space)
        self._spaces = self._spaces[-(self.KNOWN_SPACES - 1):] + [(reference, space)]
        return reference

    def close(self) -> None:
        os.close(self._fd)
