"""The journal file (chief.journal): torn tails, damaged lines, failed appends, odd numbers."""

import errno
import json
import math
import os

import pytest

from chief import journal as journal_module
from chief import recovery
from chief.journal import JOURNAL, Event, JournalCorrupt, RunJournal, StorageUnavailable, encode


class FailingWrites:
    """Make appends to one journal fail like a full disk: `writes` os.write calls on its file
    raise ENOSPC, each after writing `partial` bytes first (a torn line); `truncates` ftruncate
    calls fail too. Other files are left alone."""

    def __init__(self, monkeypatch, journal, writes=1, partial=0, truncates=0):
        self.journal, self.writes, self.partial, self.truncates = journal, writes, partial, truncates
        self._write, self._ftruncate = os.write, os.ftruncate
        monkeypatch.setattr(journal_module.os, "write", self.write)
        monkeypatch.setattr(journal_module.os, "ftruncate", self.ftruncate)

    def write(self, fd, data):
        if fd != self.journal._fd or self.writes <= 0:
            return self._write(fd, data)
        self.writes -= 1
        if self.partial:
            self._write(fd, bytes(data[:self.partial]))
        del data  # as the real os.write: no reference to the journal's buffer outlives the call
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def ftruncate(self, fd, length):
        if fd == self.journal._fd and self.truncates > 0:
            self.truncates -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return self._ftruncate(fd, length)


def _run(journal, trial, worker="w1"):
    """One attempt of `trial`, started and completed, as the coordinator journals it."""
    journal.record(Event.START, trial=trial, worker=worker, attempt=1, stock=False)
    journal.record(Event.END, trial=trial, attempt=1, status="COMPLETED", cause="owner", seconds=1.0, message="",
                   used=None)
    journal.commit()


def _journal(tmp_path, trials=("0", "1")) -> bytes:
    j = RunJournal(str(tmp_path))
    for trial in trials:
        _run(j, trial)
    j.close()
    return (tmp_path / JOURNAL).read_bytes()


def _ended(tmp_path):
    book = recovery.read_project(str(tmp_path)).book
    return {t: (r.phase.value, r.attempt) for t, r in book.runs.items()}


@pytest.mark.parametrize("cut", [1, 2, 17, 0.5, -2, -1])
def test_a_torn_last_line_is_cut_before_the_next_append_and_every_restart_replays_the_same(tmp_path, cut):
    """A crash mid-append leaves part of a line (-1: everything but its newline). The first restart
    cuts it before it appends; the restarts after it read the same journal again."""
    whole = _journal(tmp_path)
    line = encode({"event": "start", "trial": "2", "worker": "w2", "attempt": 1, "stock": False, "t": 5.0})
    torn = line[:int(len(line) * cut) if isinstance(cut, float) else cut]
    (tmp_path / JOURNAL).write_bytes(whole + torn)

    first = RunJournal(str(tmp_path))
    assert len(first.events) == 4 and (tmp_path / JOURNAL).read_bytes() == whole  # cut on open
    _run(first, "2", worker="w3")
    first.close()
    after_first = (tmp_path / JOURNAL).read_bytes()
    assert after_first.startswith(whole) and after_first.count(b"\n") == 6
    assert _ended(tmp_path) == {"0": ("COMPLETED", 1), "1": ("COMPLETED", 1), "2": ("COMPLETED", 1)}

    for _ in range(2):  # two more restarts: nothing glued, nothing lost, nothing changed
        again = RunJournal(str(tmp_path))
        assert [e["trial"] for e in again.events] == ["0", "0", "1", "1", "2", "2"]
        assert again.events[4]["worker"] == "w3"
        again.close()
        assert (tmp_path / JOURNAL).read_bytes() == after_first
    assert _ended(tmp_path) == {"0": ("COMPLETED", 1), "1": ("COMPLETED", 1), "2": ("COMPLETED", 1)}


def test_every_line_carries_the_version_and_a_newer_one_is_refused_naming_it(tmp_path):
    from chief.records import VERSION

    data = _journal(tmp_path)
    lines = [json.loads(line) for line in data.splitlines()]
    assert lines and all(line["v"] == VERSION for line in lines), lines  # trial, space, metrics lines too
    newer = json.dumps({**lines[1], "v": VERSION + 1}).encode() + b"\n"
    (tmp_path / JOURNAL).write_bytes(b"".join(data.splitlines(keepends=True)[:1]) + newer)
    with pytest.raises(JournalCorrupt, match=f"line 2 is of journal version {VERSION + 1}: this chief reads "
                                             f"versions 0 to {VERSION} \\(a newer ktcluster wrote it"):
        RunJournal(str(tmp_path))


@pytest.mark.parametrize("bad", [b"{not json", b'{"trial": "0"}', b'{"event": "nonsense"}', b"[1, 2]", b"\xff\xfe"])
def test_an_unreadable_line_before_the_last_stops_naming_file_and_line(tmp_path, bad):
    lines = _journal(tmp_path).splitlines(keepends=True)
    damaged = b"".join(lines[:2] + [bad + b"\n"] + lines[2:])
    (tmp_path / JOURNAL).write_bytes(damaged)
    path = str(tmp_path / JOURNAL)
    with pytest.raises(JournalCorrupt, match=f"^{path} line 3 cannot be read"):
        RunJournal(str(tmp_path))
    with pytest.raises(JournalCorrupt, match=f"^{path} line 3 cannot be read"):
        recovery.read_project(str(tmp_path))  # python -m chief status says the same
    assert (tmp_path / JOURNAL).read_bytes() == damaged  # never cut or appended to


def test_a_line_that_contradicts_the_ones_before_it_stops_naming_it(tmp_path):
    whole = _journal(tmp_path, trials=("0",))
    end_again = encode({"event": "end", "trial": "0", "attempt": 1, "status": "COMPLETED", "cause": "owner", "t": 9.0})
    (tmp_path / JOURNAL).write_bytes(whole + end_again)  # trial 0 ended twice
    with pytest.raises(JournalCorrupt, match="line 3 does not fit the lines before it"):
        recovery.read_project(str(tmp_path))


@pytest.mark.parametrize("partial,truncates,writes", [(0, 0, 2), (9, 0, 2), (9, 1, 2), (9, 1, 1)])
def test_a_failed_append_leaves_whole_lines_and_the_next_commit_writes_them_once(tmp_path, monkeypatch, partial,
                                                                                 truncates, writes):
    """Disk full mid-append: the journal is cut back to its last whole line (or, if even that
    fails, before the next write), the caller told StorageUnavailable, the lines kept."""
    before = _journal(tmp_path)
    j = RunJournal(str(tmp_path))
    FailingWrites(monkeypatch, j, writes=writes, partial=partial, truncates=truncates)
    j.record(Event.START, trial="2", worker="w1", attempt=1, stock=False)
    for _ in range(writes):
        with pytest.raises(StorageUnavailable, match="cannot append to .*ktcluster-runs.jsonl") as failure:
            j.commit()
        assert failure.value.errno == errno.ENOSPC and j.pending
        if not truncates:
            assert (tmp_path / JOURNAL).read_bytes() == before
    if writes > truncates:
        assert (tmp_path / JOURNAL).read_bytes() == before  # a part a failed cut left is cut by the next try
    j.record(Event.END, trial="2", attempt=1, status="FAILED", cause="owner", seconds=1.0, message="x", used=None)
    j.commit()  # the disk works again
    assert not j.pending
    j.close()
    data = (tmp_path / JOURNAL).read_bytes()
    assert data.startswith(before) and data.endswith(b"\n")
    assert [(e["event"], e["trial"]) for e in map(json.loads, data[len(before):].splitlines())] == [
        ("start", "2"), ("end", "2")]
    assert _ended(tmp_path)["2"] == ("FAILED", 1)


def test_a_failed_fsync_is_a_failed_append(tmp_path, monkeypatch):
    j = RunJournal(str(tmp_path), fsync=True)
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    j.record(Event.START, trial="0", worker="w1", attempt=1, stock=False)
    with pytest.raises(StorageUnavailable):
        j.commit()
    assert (tmp_path / JOURNAL).read_bytes() == b"" and j.pending
    monkeypatch.undo()
    j.commit()
    j.close()
    assert [e["trial"] for e in RunJournal(str(tmp_path)).events] == ["0"]


def _state(score, values, observations):
    return {"trial_id": "1", "hyperparameters": {"space": "ref-1", "values": values}, "score": score,
            "metrics": {"metrics": {"loss": {"direction": "min", "observations": observations}}},
            "best_step": 0, "status": "COMPLETED", "message": None}


ODD = [
    {"event": "metrics", "trial": "1", "step": 2, "metrics": {"loss": math.nan}, "directions": {}, "t": 1.5},
    {"event": "metrics", "trial": "1", "step": 2, "metrics": {"loss": math.inf}, "directions": {}, "t": 1.5},
    {"event": "trial", "trial": "1", "state": _state(math.nan, {"x": 3}, [{"value": [math.nan], "step": 0}]), "t": 1.5},
    {"event": "trial", "trial": "1", "state": _state(0.5, {"x": 3}, [{"value": [0.5, -math.inf], "step": 0}]), "t": 1.5},
    {"event": "trial", "trial": "1", "state": _state(0.5, {"x": 2**70}, [{"value": [0.5], "step": 0}]), "t": 1.5},
    {"event": "space", "ref": "ref-1", "space": [{"class_name": "Float", "config": {"max_value": math.inf}}], "t": 1.5},
]


def test_lines_keep_what_orjson_cannot_write():
    """Lines go through orjson, which writes NaN and infinities as null and refuses ints past 64
    bits: such lines go through json instead, and every line reads back as it was."""
    plain = {"event": "trial", "trial": "1", "state": _state(0.5, {"x": 3, "y": 0.25, "kind": "cnn", "bn": True},
                                                           [{"value": [0.5], "step": 0}]), "t": 1.5}
    assert b" " not in encode(plain) and json.loads(encode(plain)) == plain  # orjson: compact
    for event in ODD:
        line = encode(event)
        assert line.endswith(b"\n") and json.dumps(json.loads(line)) == json.dumps(event), line


def test_nan_infinity_and_big_ints_read_back_from_the_file(tmp_path):
    j = RunJournal(str(tmp_path))
    for event in ODD:
        j.record(Event(event["event"]), **{k: v for k, v in event.items() if k not in ("event", "t")})
    j.commit()
    j.close()
    events = RunJournal(str(tmp_path)).events
    strip = [{k: v for k, v in e.items() if k not in ("t", "v")} for e in events]
    assert json.dumps(strip) == json.dumps([{k: v for k, v in e.items() if k != "t"} for e in ODD])
    assert events[4]["state"]["hyperparameters"]["values"]["x"] == 2**70
