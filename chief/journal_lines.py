"""The journal's lines (chief.journal): one JSON object each, encoded and decoded here, with the
generation rule that leaves out a lost chief's late lines. No file is opened for writing here.
"""

from __future__ import annotations

import enum
import json
import math
import os
import re
from typing import Iterator

import orjson

from chief.records import VERSION, Move

JOURNAL = "ktcluster-runs.jsonl"


class Event(str, enum.Enum):
    SPACE = "space"
    TRIAL = "trial"
    METRICS = "metrics"
    START = Move.START.value
    END = Move.END.value
    CHIEF = "chief"


class JournalCorrupt(RuntimeError):
    """A line other than a torn last one cannot be read: replaying on would lose or invent trials."""


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
    """(events, length of the whole lines): every complete line decoded, in order, except lines
    a chief that had lost the project wrote late (see `decode`).

    A last line without its newline is torn (never acknowledged) and left out; any other line
    that is not a JSON object with an `event` raises JournalCorrupt with the line number."""
    if not os.path.exists(path):
        return [], 0
    with open(path, "rb") as f:
        data = f.read()
    decoded = decode(data, path)
    return decoded.events, decoded.whole


class Decoded:
    """A journal's content read: `events` (the lines that count, decoded, in order), `whole`
    (bytes up to the end of the last whole line), `ignored` (lines left out: written by a chief
    of a lower generation after a higher one took over), `generation` (the highest `chief`
    line's, 0 if none)."""

    def __init__(self, events: list[dict], whole: int, ignored: int, generation: int):
        self.events, self.whole, self.ignored, self.generation = events, whole, ignored, generation


def _generation(event) -> int:
    g = event.get("g", 0)
    if isinstance(g, bool) or not isinstance(g, int) or g < 0:
        raise ValueError(f"generation {g!r} is not an integer >= 0")
    return g


def _readable_version(event) -> bool:
    v = event.get("v", 0)  # no `v`: a line of version 0 (d1fbc2d and earlier)
    return not isinstance(v, bool) and isinstance(v, int) and 0 <= v <= VERSION


def decode(data: bytes, path: str = JOURNAL) -> Decoded:
    """Decode a journal's bytes. A line whose generation `g` is lower than that of a `chief` line
    before it was appended by a chief after another had taken the project over: it is left out
    (counted in `ignored`). JournalCorrupt names a line that cannot be read, or one of a version
    later than records.VERSION (a newer ktcluster wrote it: guessing its meaning could lose or
    re-run trials)."""
    whole = data.rfind(b"\n") + 1  # bytes up to the end of the last whole line
    events, ignored, top = [], 0, 0
    for number, line in enumerate(data[:whole].splitlines(), start=1):
        try:
            event = json.loads(line)
            kind = Event(event["event"])
            g = _generation(event)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise JournalCorrupt(f"{path} line {number} cannot be read ({type(exc).__name__}); "
                                 "the journal is damaged: restore it from a backup or start a new project") from None
        if not _readable_version(event):
            raise JournalCorrupt(f"{path} line {number} is of journal version {event.get('v')!r}: this chief "
                                 f"reads versions 0 to {VERSION} (a newer ktcluster wrote it: run that version)")
        if g < top:
            ignored += 1
            continue
        if kind is Event.CHIEF:
            top = g
        events.append(event)
    return Decoded(events, whole, ignored, top)


_CHIEF_LINE = re.compile(rb'^\{"event": ?"chief", ?"g": ?([0-9]{1,18})', re.MULTILINE)


def generation_in(path: str) -> int:
    """The highest generation a `chief` line of the journal at `path` names (0: none, or no
    journal), found without decoding every line (chief.ownership, before it claims the next)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return 0
    return max((int(m[1]) for m in _CHIEF_LINE.finditer(data)), default=0)
