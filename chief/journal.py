"""Append-only journal of the search: the chief's durable truth.

One JSON object per line, in `<project>/ktcluster-runs.jsonl`:
- `space`: a search space, referred to by trial lines (it is most of a state);
- `trial`: a trial's whole state (what KerasTuner keeps in trial.json);
- `metrics`: what one progress report added (written by earlier versions; still replayed);
- `start` / `end`: the trial state machine's moves, named by it (chief.records.Move) and written
  and read by its records (`Started`/`Ended`.to_record, `from_record`, with a version `v`): who
  ran which attempt, when, and how it ended;
- `chief`: a chief took the project over (chief.ownership), with its generation `g`.

Fencing (one chief per project, chief.ownership). A chief that holds the project opens the
journal by taking it over: it copies the journal's whole lines into a new file and renames that
over the journal, so a chief that lost the project keeps appending, if ever it does (a late write
after a pause, a network filesystem flushing what it cached), to a file nobody reads any more.
Its first commit starts with its `chief` line; every line it writes carries its generation `g`,
each commit first checks that the project is still its own (a lost chief's commit fails: it
stops), and reading leaves out any line whose generation is lower than that of a `chief` line
before it: a late write of a chief that lost the project never counts, wherever it landed.
Lines without `g` (a journal from before generations) are generation 0.

Lines are buffered while an oracle call runs and handed to the kernel by `commit` before the
call is answered (fsync'd too with KTC_FSYNC=1). A commit that fails (disk full, I/O error) cuts
the file back to its last whole line and keeps the lines for the next commit: nothing is
acknowledged that is not stored, and no line is ever glued onto a torn one.

On open, a last line without its newline (a crash mid-append) is cut off before anything is
appended. An undecodable line anywhere else raises `JournalCorrupt` naming the file and line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from typing import Protocol

from chief.records import VERSION
from chief.journal_lines import JOURNAL, Decoded, Event, JournalCorrupt, decode, encode, generation_in, read_lines

__all__ = ["JOURNAL", "Decoded", "Event", "Fence", "JournalCorrupt", "ProjectLost", "RunJournal", "StorageUnavailable",
           "decode", "encode", "fence_of", "fence_project", "generation_in", "read_lines"]
log = logging.getLogger("ktcluster.chief")


class StorageUnavailable(OSError):
    """The journal could not be appended; what was recorded is kept for the next commit."""


class ProjectLost(RuntimeError):
    """Another chief took the project over: this one must write nothing more (chief.ownership)."""


class Fence(Protocol):
    """What the journal needs of the chief's hold on its project (chief.ownership.Ownership)."""

    generation: int

    def check(self) -> None:
        """Raise ProjectLost if another chief took the project over (OSError: cannot tell now)."""

    def journal_taken(self, path: str, fd: int) -> None:
        """The journal at `path` is now the file open as `fd`, this chief's own."""

    def chief_line(self) -> dict:
        """The fields of this chief's `chief` line, its generation `g` first."""

    def lose(self, reason: str):
        """The project is lost (`reason`: one line): tell the chief, raise ProjectLost."""


_fences: dict[str, Fence] = {}


def fence_project(project_dir: str, fence: Fence | None) -> None:
    """Make every RunJournal of `project_dir` opened in this process from now on fenced by
    `fence` (None: no longer). The chief holds one project (chief.ownership registers it)."""
    key = os.path.abspath(project_dir)
    if fence is None:
        _fences.pop(key, None)
    else:
        _fences[key] = fence


def fence_of(project_dir: str) -> Fence | None:
    return _fences.get(os.path.abspath(project_dir))


def _take_over(path: str, fence: Fence, fsync: bool) -> tuple[int, Decoded]:
    """Make the journal this chief's own file: its whole lines copied into a new file, renamed
    over it. Returns (the new file, open for appending; what it holds, decoded). Nothing is
    written if the journal cannot be read (JournalCorrupt, OSError naming it) or the project was
    lost meanwhile (ProjectLost)."""
    if os.path.lexists(path):  # a journal this chief could not append to is refused, as before
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        with open(path, "rb") as f:
            data = f.read()
    else:
        data = b""
    decoded = decode(data, path)
    if decoded.generation >= fence.generation:
        fence.check()
        fence.lose(f"{path} was written by a chief of generation {decoded.generation} (this one: {fence.generation})")
    fence.check()
    folder, name = os.path.split(path)
    for stale in os.listdir(folder or "."):  # a copy left by an earlier taker that stopped halfway:
        # removed, so that such a taker, only paused, can never rename it over the journal
        found = re.fullmatch(re.escape(name) + r"\.g([0-9]{1,18})\.tmp", stale)
        if found and int(found[1]) <= fence.generation:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, stale))
    tmp = f"{path}.g{fence.generation}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        done, view = 0, memoryview(data)[:decoded.whole]
        while done < len(view):
            done += os.write(fd, view[done:])
        os.fsync(fd)  # once per start: the copy is on disk before it replaces the journal
        fence.check()
        os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        _sync_folder(os.path.dirname(path))
    fence.journal_taken(path, fd)
    return fd, decoded


def _sync_folder(folder: str) -> None:
    """The rename survives a power cut too (KTC_FSYNC=1); best effort."""
    with contextlib.suppress(OSError):
        fd = os.open(folder or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class RunJournal:
    """The journal file, opened for appending. `events` holds what was on disk when opened.

    `fence` (default: the one registered for `project_dir`, see `fence_project`): the chief's hold
    on the project. With one, the journal is taken over on open (see the module docstring), every
    line carries the fence's generation, the first commit starts with the `chief` line, and each
    commit checks the fence first. Without one (tests, tools), none of that.

    Not thread-safe: the coordinator's lock guards `record` and `commit`."""

    KNOWN_SPACES = 8  # spaces a trial line may refer to without writing its space again

    def __init__(self, project_dir: str, fsync: bool = False, fence: Fence | None = None):
        self.path, self.fsync = os.path.join(project_dir, JOURNAL), fsync
        self.fence = fence if fence is not None else fence_of(project_dir)
        self._pending = bytearray()
        self.ignored, self.generation = 0, None
        if self.fence is None:
            self.events, self._size = read_lines(self.path)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if os.fstat(self._fd).st_size != self._size:
                os.ftruncate(self._fd, self._size)  # cut a torn last line before appending anything
        else:
            self.generation = self.fence.generation
            self._fd, decoded = _take_over(self.path, self.fence, fsync)
            self.events, self._size, self.ignored = decoded.events, decoded.whole, decoded.ignored
            if decoded.ignored:
                log.warning("%s: %d lines written late by a chief that had lost the project are not counted",
                            self.path, decoded.ignored)
            self._pending += encode({"event": Event.CHIEF.value, **self.fence.chief_line(), "t": time.time()})
        self._spaces: list[tuple[str, list]] = []  # (reference, space) written to this file, newest last
        self._session, self._written = os.urandom(4).hex(), 0  # references unique across chief restarts

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def record(self, event: Event, **fields) -> None:
        """Buffer one line (of records.VERSION, as every line written now); `commit` writes it."""
        line = {"event": event.value, **fields, "t": time.time(), "v": VERSION}
        if self.generation is not None:
            line["g"] = self.generation
        self._pending += encode(line)

    def append(self, record: dict) -> None:
        """Buffer one line holding `record` (a record's `to_record()`, its time included)."""
        if self.generation is not None:
            record = {**record, "g": self.generation}
        self._pending += encode(record)

    def pending_events(self) -> list[dict]:
        """The buffered lines, decoded (what the next commit writes)."""
        return decode(bytes(self._pending), self.path).events

    def commit(self) -> None:
        """Append every buffered line, or none: on failure the file is cut back to its last whole
        line and StorageUnavailable raised, the lines kept for the next commit. Fenced: ProjectLost
        (nothing written) once another chief has taken the project over."""
        if not self._pending:
            return
        if self.fence is not None:
            try:
                self.fence.check()
            except OSError as exc:  # cannot tell whether the project is still ours: write nothing yet
                raise StorageUnavailable(exc.errno, f"cannot check that {self.path} is still this chief's: "
                                                    f"{exc.strerror or exc}") from exc
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
        """A trial's new state (the caller passes a fresh `trial.get_state()`, left unchanged): a
        `trial` line whose search space refers to a `space` line (`trial_state` reads it back)."""
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


def trial_state(line: dict, spaces: dict[str, list]) -> tuple[str, dict]:
    """(trial id, its state) from a `trial` line as `RunJournal.record_trial` writes it, the
    space it refers to taken from `spaces` (reference -> space: the `space` lines read before it;
    KeyError for an unknown reference). Lines from before space references hold the space itself."""
    state, hyperparameters = line["state"], line["state"]["hyperparameters"]
    if isinstance(hyperparameters["space"], str):
        state = {**state, "hyperparameters": {**hyperparameters, "space": spaces[hyperparameters["space"]]}}
    return line["trial"], state
