"""One chief per project (chief.ownership): the lease logic on a fake clock (nothing sleeps), the
claim files, and the journal's fence (chief.journal) with two chiefs in one process."""

import errno
import json
import os
import threading

import pytest

from chief import journal as journal_module
from chief import ownership, recovery
from chief.journal import JOURNAL, Event, JournalCorrupt, ProjectLost, RunJournal
from chief.ownership import Claim, Held, Process, SilenceWatch, Verdict
from shared import layout

ME = Process("host-b", 200, boot="boot-1", pidns="pid:[1]", started=50)
OTHER = Process("host-a", 100, boot="boot-0", pidns="pid:[9]", started=10)


class Clock:
    """A monotonic clock that only `sleep` moves; `on_sleep()` runs at each sleep (a holder's
    renewal, say)."""

    def __init__(self):
        self.now, self.slept, self.on_sleep = 1000.0, 0, None

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds
        self.slept += 1
        if self.on_sleep is not None:
            self.on_sleep()


@pytest.fixture
def clock():
    return Clock()


def _acquire(project, clock, me=ME, lease=4.0, heartbeat=1.0, alive=lambda pid, started: True, **kw):
    return ownership.acquire(str(project), lease, heartbeat, me=me, clock=clock, sleep=clock.sleep, alive=alive, **kw)


def _claim(project, generation) -> Claim:
    return Claim.parse((project / f"ktcluster-chief.{generation}.json").read_bytes())


@pytest.fixture
def lost():
    """on_lost for an Ownership in a test: records the reasons instead of exiting."""
    reasons = []
    return reasons


def _hold(project, clock, lost, **kw):
    held = _acquire(project, clock, **kw)
    held._on_lost = lost.append  # what start() sets, without its renewing thread
    return held


# -- the pure logic ---------------------------------------------------------------------------

def test_a_claim_that_changes_is_a_live_holder_and_one_unchanged_for_a_lease_is_gone():
    watch = SilenceWatch(b"beat 1", lease_seconds=4, now=0)
    assert watch.see(b"beat 1", now=3.99) is Verdict.WAIT
    assert watch.see(b"beat 1", now=4.0) is Verdict.GONE
    assert watch.see(b"beat 2", now=0.5) is Verdict.LIVE


def test_a_claim_that_says_released_or_disappears_is_gone_at_once():
    released = Claim.of(3, OTHER, 4, 1)
    released = Claim(**{**released.__dict__, "released": True})
    watch = SilenceWatch(b"beat 1", lease_seconds=60, now=0)
    assert watch.see(released.text().encode(), now=0.1) is Verdict.GONE
    assert watch.see(None, now=0.1) is Verdict.GONE


def test_a_claim_round_trips_and_anything_else_is_not_a_claim():
    claim = Claim.of(7, OTHER, 6.0, 1.5)
    assert Claim.parse(claim.text()) == claim
    good = json.loads(claim.text())
    for bad in ({**good, "generation": 0}, {**good, "generation": True}, {**good, "pid": "1"},
                {**good, "lease_seconds": float("nan")}, {**good, "lease_seconds": -1}, {**good, "since": None},
                {**good, "released": "yes"}, {**good, "host": 5}, {**good, "started": -1}):
        assert Claim.parse(json.dumps(bad)) is None, bad
    for text in (b"", b"[]", b"not json", b"{" * 5000, None):
        assert Claim.parse(text) is None
    assert Claim.parse(json.dumps({**good, "host": "a\nb\x00c"})).host == "a b c"  # one printable line


def test_a_holder_of_this_machine_and_pid_namespace_that_no_longer_runs_is_gone():
    mine = Claim.of(1, Process("host-b", 150, "boot-1", "pid:[1]", 40), 4, 1)
    assert mine.here_and_gone(ME, alive=lambda pid, started: False)
    assert not mine.here_and_gone(ME, alive=lambda pid, started: True)
    assert Claim.of(1, ME, 4, 1).here_and_gone(ME, alive=lambda pid, started: True)  # our pid: an earlier process
    for other in (OTHER, Process("host-b", 150, "boot-2", "pid:[1]"), Process("host-b", 150, "boot-1", "pid:[2]"),
                  Process("host-c", 150, "boot-1", "pid:[1]"), Process("host-b", 150, "", "")):
        assert not Claim.of(1, other, 4, 1).here_and_gone(ME, alive=lambda pid, started: False), other


def test_the_real_process_checks_see_this_process_and_not_a_dead_one():
    me = Process.here()
    assert ownership.process_alive(me.pid, me.started)
    assert not ownership.process_alive(me.pid, (me.started or 0) + 1)  # a reused pid
    assert not ownership.process_alive(2**22 + 12345, None)


# -- taking the project ---------------------------------------------------------------------------

def test_a_new_project_is_taken_at_once_as_generation_1(tmp_path, clock):
    project = tmp_path / "proj"
    held = _acquire(project, clock)
    assert held.generation == 1 and clock.slept == 0
    claim = _claim(project, 1)
    assert (claim.host, claim.pid, claim.lease_seconds, claim.heartbeat_seconds, claim.released) == \
        ("host-b", 200, 4.0, 1.0, False)


def test_a_released_project_or_a_dead_local_holder_is_taken_at_once(tmp_path, clock, lost):
    project = tmp_path / "proj"
    first = _hold(project, clock, lost, me=OTHER)
    first.release()
    assert _claim(project, 1).released
    second = _acquire(project, clock, me=Process("host-b", 150, "boot-1", "pid:[1]", 40))
    assert second.generation == 2 and clock.slept == 0
    third = _acquire(project, clock, alive=lambda pid, started: False)  # generation 2's process is gone
    assert third.generation == 3 and clock.slept == 0


def test_a_live_holder_is_named_and_nothing_is_claimed(tmp_path, clock, lost):
    project = tmp_path / "proj"
    holder = _hold(project, clock, lost, me=OTHER, lease=6.0)
    clock.on_sleep = lambda: holder.renew() if clock.slept % 4 == 0 else None  # a beat each second
    waited = []
    with pytest.raises(Held) as refused:
        _acquire(project, clock, on_wait=lambda claim, g, lease: waited.append((claim.pid, g, lease)))
    message = str(refused.value)
    assert "host host-a (pid 100)" in message and "generation 1" in message and "UTC" in message
    assert "stop that chief first" in message and "6s" in message and "KTC_LEASE_SECONDS" in message
    assert waited == [(100, 1, 6.0)] and clock.now - 1000 <= 1.0
    assert layout.chief_claims(str(project)) == [1] and not lost


def test_a_silent_holder_is_taken_over_after_its_own_lease_not_before(tmp_path, clock, lost):
    project = tmp_path / "proj"
    _hold(project, clock, lost, me=OTHER, lease=10.0)  # its lease, not ours (4 s), decides
    held = _acquire(project, clock)
    assert held.generation == 2 and 10.0 <= clock.now - 1000 <= 10.5
    assert layout.chief_claims(str(project)) == [1, 2]


def test_a_chief_that_loses_the_race_for_a_generation_judges_the_winner(tmp_path, clock, lost):
    project = tmp_path / "proj"
    _hold(project, clock, lost, me=OTHER).release()
    racer = Claim.of(2, Process("host-c", 300), 4.0, 1.0)
    path = project / "ktcluster-chief.2.json"
    path.write_text(racer.text())  # claimed by another chief while this one looked
    beats = iter(range(1, 100))
    clock.on_sleep = lambda: path.write_text(Claim(**{**racer.__dict__, "beat": next(beats)}).text())
    with pytest.raises(Held, match="host host-c"):
        _acquire(project, clock)
    clock.on_sleep = None
    held = _acquire(project, clock)  # host-c falls silent: generation 3 after its lease
    assert held.generation == 3


def test_an_unreadable_claim_is_watched_with_our_lease(tmp_path, clock):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "ktcluster-chief.1.json").write_text("")  # created, not yet written (or damaged)
    held = _acquire(project, clock, lease=5.0)
    assert held.generation == 2 and 5.0 <= clock.now - 1000 <= 5.5


def test_the_next_generation_follows_the_journal_when_the_claims_were_removed(tmp_path, clock):
    project = tmp_path / "proj"
    project.mkdir()
    lines = [{"event": "chief", "g": 4, "host": "x", "pid": 1, "t": 1.0}, {"event": "chief", "g": 7, "t": 2.0}]
    (project / JOURNAL).write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert journal_module.generation_in(str(project / JOURNAL)) == 7
    assert _acquire(project, clock).generation == 8


def test_only_the_previous_claim_is_kept(tmp_path, clock, lost):
    project = tmp_path / "proj"
    for _ in range(4):
        _hold(project, clock, lost).release()
    assert layout.chief_claims(str(project)) == [3, 4]


# -- holding it ---------------------------------------------------------------------------------

def test_renewing_counts_beats_and_release_says_so_once(tmp_path, clock, lost):
    project = tmp_path / "proj"
    held = _hold(project, clock, lost)
    held.renew()
    held.renew()
    assert _claim(project, 1).beat == 2 and not _claim(project, 1).released
    held.release()
    assert _claim(project, 1).released and _claim(project, 1).beat == 3


def test_on_a_full_disk_the_claim_is_renewed_and_released_in_place(tmp_path, clock, lost, monkeypatch):
    project = tmp_path / "proj"
    held = _hold(project, clock, lost)
    size = (project / "ktcluster-chief.1.json").stat().st_size
    assert size == ownership.CLAIM_BYTES

    def full(path, text, fsync=True):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ownership, "write_text_atomic", full)
    held.renew()
    assert _claim(project, 1).beat == 1 and (project / "ktcluster-chief.1.json").stat().st_size == size
    held.release()
    assert _claim(project, 1).released and not list(project.glob("*.tmp"))


def test_a_chief_whose_project_was_taken_over_is_told_once_and_writes_no_claim(tmp_path, clock, lost):
    project = tmp_path / "proj"
    paused = _hold(project, clock, lost, me=OTHER)
    paused.renew()
    newer = _acquire(project, clock)  # paused past its lease: taken over
    assert newer.generation == 2
    before = (project / "ktcluster-chief.1.json").read_bytes()
    for _ in range(2):
        with pytest.raises(ProjectLost, match="host host-b \\(pid 200\\).*generation 2 holds it now"):
            paused.renew()
    paused.release()
    assert len(lost) == 1 and "holds it now" in lost[0]
    assert (project / "ktcluster-chief.1.json").read_bytes() == before  # nothing written once lost


def test_the_renewing_thread_finds_the_loss_by_itself(tmp_path, clock):
    project = tmp_path / "proj"
    held = _acquire(project, clock, heartbeat=0.05)
    told, heard = [], threading.Event()
    held.start(on_lost=lambda reason: (told.append(reason), heard.set()))
    try:
        assert journal_module.fence_of(str(project)) is held
        (project / "ktcluster-chief.2.json").write_text(Claim.of(2, OTHER, 4, 1).text())  # another chief's claim
        assert heard.wait(5) and len(told) == 1 and "host host-a (pid 100)" in told[0]
    finally:
        held.release()
    assert journal_module.fence_of(str(project)) is None


# -- the journal's fence ------------------------------------------------------------------------

def _run(journal, trial, worker="w1"):
    journal.record(Event.START, trial=trial, worker=worker, attempt=1, stock=False)
    journal.record(Event.END, trial=trial, attempt=1, status="COMPLETED", cause="owner", seconds=1.0, message="",
                   used=None)
    journal.commit()


def _lines(project):
    return [json.loads(line) for line in open(project / JOURNAL)]


def test_a_fenced_journal_starts_with_the_chiefs_line_and_stamps_its_generation(tmp_path, clock, lost):
    project = tmp_path / "proj"
    held = _hold(project, clock, lost)
    j = RunJournal(str(project), fence=held)
    assert j.events == [] and (project / JOURNAL).read_bytes() == b""  # nothing written before a commit
    _run(j, "0")
    lines = _lines(project)
    assert lines[0]["event"] == "chief" and (lines[0]["g"], lines[0]["host"], lines[0]["pid"]) == (1, "host-b", 200)
    assert [line["g"] for line in lines] == [1, 1, 1]
    assert recovery.read_project(str(project)).book.runs["0"].phase.value == "COMPLETED"


def test_a_takeover_copies_the_journal_and_the_old_chief_can_write_nothing_that_counts(tmp_path, clock, lost):
    project = tmp_path / "proj"
    old = _hold(project, clock, lost, me=OTHER)
    a = RunJournal(str(project), fence=old)
    _run(a, "0")
    (project / JOURNAL).open("ab").write(b'{"event": "start", "tri')  # a torn tail: cut by the copy
    new = _hold(project, clock, lost)  # after old's lease of silence
    b = RunJournal(str(project), fence=new)
    assert [e["event"] for e in b.events] == ["chief", "start", "end"] and b.events[0]["g"] == 1
    a.record(Event.START, trial="1", worker="w1", attempt=1, stock=False)
    with pytest.raises(ProjectLost):
        a.commit()  # checked first: nothing written
    assert len(lost) == 1
    a.fence = None  # a write that passed its check just before a pause: it lands in the old file
    a.commit()
    _run(b, "1", worker="w2")
    lines = _lines(project)
    assert [(line["event"], line["g"]) for line in lines] == [("chief", 1), ("start", 1), ("end", 1), ("chief", 2),
                                                              ("start", 2), ("end", 2)]
    assert not list(project.glob("*.tmp"))
    runs = recovery.read_project(str(project)).book.runs
    assert {t: (r.owner, r.attempt, r.phase.value) for t, r in runs.items()} == \
        {"0": ("w1", 1, "COMPLETED"), "1": ("w2", 1, "COMPLETED")}


def test_lines_a_lower_generation_appended_after_a_higher_one_took_over_never_count(tmp_path):
    project = tmp_path / "proj"
    project.mkdir()
    lines = [
        {"event": "start", "trial": "0", "worker": "w1", "attempt": 1, "t": 1.0},  # before generations: 0
        {"event": "chief", "g": 1, "t": 2.0},
        {"event": "end", "trial": "0", "attempt": 1, "status": "COMPLETED", "t": 3.0, "g": 1},
        {"event": "chief", "g": 2, "t": 4.0},
        {"event": "start", "trial": "1", "worker": "w1", "attempt": 1, "t": 5.0, "g": 1},  # late: generation 1
        {"event": "start", "trial": "1", "worker": "w2", "attempt": 1, "t": 6.0, "g": 2},
        {"event": "start", "trial": "2", "worker": "w0", "attempt": 1, "t": 7.0},  # late: generation 0
        {"event": "end", "trial": "1", "attempt": 1, "status": "COMPLETED", "t": 8.0, "g": 2},
    ]
    (project / JOURNAL).write_text("".join(json.dumps(line) + "\n" for line in lines))
    decoded = journal_module.decode((project / JOURNAL).read_bytes())
    assert (decoded.ignored, decoded.generation) == (2, 2)
    runs = recovery.read_project(str(project)).book.runs
    assert {t: (r.owner, r.phase.value) for t, r in runs.items()} == {"0": ("w1", "COMPLETED"),
                                                                      "1": ("w2", "COMPLETED")}


@pytest.mark.parametrize("g", ['"1"', "-1", "true", "1.5"])
def test_a_line_with_a_malformed_generation_is_damage(tmp_path, g):
    path = tmp_path / JOURNAL
    path.write_text('{"event": "chief", "g": 1, "t": 1}\n{"event": "start", "trial": "0", "g": %s, "t": 2}\n' % g)
    with pytest.raises(JournalCorrupt, match="line 2 cannot be read"):
        journal_module.read_lines(str(path))


def test_a_damaged_or_unwritable_journal_is_not_taken_over(tmp_path, clock, lost):
    project = tmp_path / "proj"
    held = _hold(project, clock, lost)
    damaged = b'{"event": "start", "trial": "0", "worker": "w", "t": 1}\nnot json\n'
    (project / JOURNAL).write_bytes(damaged)
    with pytest.raises(JournalCorrupt, match="line 2"):
        RunJournal(str(project), fence=held)
    assert (project / JOURNAL).read_bytes() == damaged and not list(project.glob("*.tmp"))
    (project / JOURNAL).unlink()
    (project / JOURNAL).mkdir()
    with pytest.raises(OSError) as failed:
        RunJournal(str(project), fence=held)
    assert JOURNAL in str(failed.value) and not lost


def test_a_journal_already_written_by_a_later_generation_means_the_project_is_lost(tmp_path, clock, lost):
    project = tmp_path / "proj"
    held = _hold(project, clock, lost)
    (project / JOURNAL).write_text(json.dumps({"event": "chief", "g": 5, "t": 1.0}) + "\n")
    with pytest.raises(ProjectLost):
        RunJournal(str(project), fence=held)
    assert len(lost) == 1 and "generation 5" in lost[0]


def test_a_fence_that_cannot_be_checked_keeps_the_lines_for_the_next_commit(tmp_path, clock, lost, monkeypatch):
    project = tmp_path / "proj"
    held = _hold(project, clock, lost)
    j = RunJournal(str(project), fence=held)
    j.record(Event.START, trial="0", worker="w1", attempt=1, stock=False)

    def unreachable():
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(held, "lost_reason", unreachable)
    with pytest.raises(journal_module.StorageUnavailable, match="still this chief's"):
        j.commit()
    assert j.pending and (project / JOURNAL).read_bytes() == b""
    monkeypatch.undo()
    j.commit()
    assert [line["event"] for line in _lines(project)] == ["chief", "start"]


def test_a_copy_left_by_a_taker_that_stopped_halfway_is_removed(tmp_path, clock, lost):
    project = tmp_path / "proj"
    _hold(project, clock, lost).release()
    stale = project / f"{JOURNAL}.g1.tmp"
    stale.write_text("half a copy")
    held = _hold(project, clock, lost)
    RunJournal(str(project), fence=held)
    assert not stale.exists() and os.path.exists(project / JOURNAL)
