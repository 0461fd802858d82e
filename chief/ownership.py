"""One chief per project, across hosts: a lease on the project's state folder, with a generation
that only grows, fenced into the journal (chief.journal).

What it relies on is what a shared network filesystem (NFS) gives, where `flock` may not work:
- O_CREAT|O_EXCL: generation g's claim, `ktcluster-chief.<g>.json` (shared.layout), is created by
  exactly one process, so no two chiefs ever hold the same generation;
- atomic rename: the holder rewrites its own claim (a temporary file, then a rename) every
  KTC_HEARTBEAT_SECONDS, counting `beat` up; a chief that stops writes `released` into it; a
  chief that takes the project over replaces the journal by a copy (chief.journal);
- a file's content: another chief judges the holder by watching its claim's content change, on
  its own monotonic clock. Clocks of different hosts are never compared (`since` is shown only).

Taking the project (`acquire`): n = the highest generation known (the journal's `chief` lines, the
claim files). The holder of generation n is
- gone at once when there is no claim, when it says `released`, or when it was a process of this
  machine and pid namespace that no longer runs (same boot, its pid gone or reused);
- else watched (`SilenceWatch`): a claim that changes within its lease is a live chief: `Held`
  (the chief exits 2 naming it); one unchanged for a whole lease (the holder's KTC_LEASE_SECONDS,
  recorded in its claim) is gone.
Then generation n+1 is claimed with O_EXCL; a chief that loses that race judges the winner the
same way.

Holding it (`Ownership`): a thread renews the claim every heartbeat and checks that the project
is still this chief's; every journal commit checks it too. It is lost once a claim of the next
generation exists (another chief judged this one gone) or once the journal is no longer the file
this chief took over. Then `on_lost` (the chief: one line, exit 1; chief.project) and
ProjectLost: nothing more is written. A write that passed its check just before a pause lands in
the file the new chief replaced, which nobody reads, and any line of a lower generation found
after a higher one's `chief` line is left out when the journal is read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import math
import os
import threading
import time

from chief.holder import (CLAIM_BYTES, MAX_CLAIM_BYTES, Claim, Held, Process, SilenceWatch, Verdict, process_alive,
                          start_ticks)
from chief.journal import JOURNAL, ProjectLost, fence_of, fence_project, generation_in
from shared import layout
from shared.atomic import write_text_atomic

__all__ = ["CLAIM_BYTES", "Claim", "Held", "Ownership", "Process", "SilenceWatch", "Verdict", "acquire",
           "known_generation", "process_alive", "start_ticks"]  # who holds a project: chief.holder
log = logging.getLogger("ktcluster.chief")

# -- the files --------------------------------------------------------------------------------

def _read(path: str) -> bytes | None:
    """A claim file's content; None if there is none. Other OSErrors are raised."""
    try:
        with open(path, "rb") as f:
            return f.read(MAX_CLAIM_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None


def known_generation(project_dir: str) -> int:
    """The highest generation the project knows: its journal's `chief` lines and its claims."""
    return max([generation_in(os.path.join(project_dir, JOURNAL)), *layout.chief_claims(project_dir)], default=0)


def acquire(project_dir: str, lease_seconds: float, heartbeat_seconds: float, *, me: Process | None = None,
            clock=time.monotonic, sleep=time.sleep, alive=process_alive, on_wait=None) -> "Ownership":
    """Take the project in `project_dir` (created if needed), waiting up to a lease for a silent
    holder (the module docstring says how it is judged); raise Held if a live chief holds it.
    `on_wait(claim, generation, lease)` is called once before a holder is watched. The returned
    Ownership is not yet renewed nor fencing the journal: call its `start`. Raises OSError when
    the folder cannot be used."""
    me = me or Process.here()
    mine = fence_of(project_dir)
    if isinstance(mine, Ownership) and mine.lost is None:  # this very process holds it (a claim with
        raise Held(mine.claim, mine.generation, mine.claim.lease_seconds)  # our pid is otherwise an earlier one's)
    os.makedirs(project_dir, exist_ok=True)
    generation = known_generation(project_dir)
    while True:
        if generation:
            _judge(project_dir, generation, lease_seconds, heartbeat_seconds, me, clock, sleep, alive, on_wait)
        claim = Claim.of(generation + 1, me, lease_seconds, heartbeat_seconds)
        path = layout.chief_claim_path(project_dir, claim.generation)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another chief claimed it first: judge that one
            generation += 1
            continue
        with os.fdopen(fd, "w") as f:
            f.write(claim.text())
        for old in layout.chief_claims(project_dir):  # the previous holder's claim stays, for people
            if old < generation:
                with contextlib.suppress(OSError):
                    os.unlink(layout.chief_claim_path(project_dir, old))
        return Ownership(project_dir, claim)


def _judge(project_dir, generation, lease_seconds, heartbeat_seconds, me, clock, sleep, alive, on_wait) -> None:
    """Return once the holder of `generation` is gone; raise Held while it lives."""
    path = layout.chief_claim_path(project_dir, generation)
    content = _read(path)
    if content is None:
        return
    claim = Claim.parse(content)
    if claim is not None and (claim.released or claim.here_and_gone(me, alive)):
        return
    lease = claim.lease_seconds if claim is not None else lease_seconds
    beat = claim.heartbeat_seconds if claim is not None else heartbeat_seconds
    watch = SilenceWatch(content, lease, clock())
    if on_wait is not None:
        on_wait(claim, generation, lease)
    while True:
        sleep(min(0.5, max(0.02, beat / 4)))
        now = _read(path)
        verdict = watch.see(now, clock())
        if verdict is Verdict.LIVE:
            raise Held(Claim.parse(now) or claim, generation, lease)
        if verdict is Verdict.GONE:
            return


class Ownership:
    """This chief's hold on its project (generation `generation`), and the journal's fence
    (chief.journal.Fence). Thread-safe."""

    def __init__(self, project_dir: str, claim: Claim):
        self.project_dir, self.claim, self.generation = project_dir, claim, claim.generation
        self._lock = threading.Lock()
        self._journal: tuple[str, int, int] | None = None  # path, st_dev, st_ino of the journal taken over
        self._lost: str | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_lost = lambda reason: None

    @property
    def path(self) -> str:
        return layout.chief_claim_path(self.project_dir, self.generation)

    @property
    def lost(self) -> str | None:
        """Why the project was lost; None while it is held."""
        return self._lost

    def start(self, on_lost) -> None:
        """Renew the claim every heartbeat from now on, and fence every journal of the project
        this process opens. `on_lost(reason)` is called once, from whichever thread finds the
        project lost (the chief exits there)."""
        self._on_lost = on_lost
        fence_project(self.project_dir, self)
        self._thread = threading.Thread(target=self._renew_loop, name="project-lease", daemon=True)
        self._thread.start()

    # -- chief.journal.Fence --------------------------------------------------------------------
    def chief_line(self) -> dict:
        return {"g": self.generation, "host": self.claim.host, "pid": self.claim.pid}

    def journal_taken(self, path: str, fd: int) -> None:
        st = os.fstat(fd)
        self._journal = (path, st.st_dev, st.st_ino)

    def check(self) -> None:
        """Raise ProjectLost (after `on_lost`) if another chief took the project over; OSError if
        that cannot be told now."""
        reason = self._lost or self.lost_reason()
        if reason:
            self.lose(reason)

    def lost_reason(self) -> str | None:
        """Why the project is no longer this chief's (a claim of the next generation, or a journal
        that is not the file this chief took over), else None. Reads files: OSError."""
        newer = _read(layout.chief_claim_path(self.project_dir, self.generation + 1))
        if newer is not None:
            claim = Claim.parse(newer)
            return f"{claim.who() if claim else f'another chief (generation {self.generation + 1})'} holds it now"
        if self._journal is not None:
            path, dev, ino = self._journal
            try:
                fd = os.open(path, os.O_RDONLY)  # opened anew: a network filesystem looks again
            except FileNotFoundError:
                return f"{path} was removed"
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
            if (st.st_dev, st.st_ino) != (dev, ino):
                return f"{path} was replaced by another chief's"
        return None

    def lose(self, reason: str):
        with self._lock:
            first, self._lost = self._lost is None, self._lost or reason
        if first:
            self._stopping.set()
            self._on_lost(reason)
        raise ProjectLost(reason)

    # -- holding ----------------------------------------------------------------------------------
    def renew(self) -> None:
        """Check the project is still ours (ProjectLost if not), then count one beat in the claim."""
        self.check()
        with self._lock:
            self.claim = dataclasses.replace(self.claim, beat=self.claim.beat + 1)
            text = self.claim.text()
        self._write(text, fsync=False)

    def _write(self, text: str, fsync: bool) -> None:
        """The claim replaced by a rename; on a full disk (no room for the temporary file)
        rewritten in place instead: every version has the same size, so that allocates nothing
        (a reader that sees half of it sees a change: a live holder, as it is)."""
        try:
            write_text_atomic(self.path, text, fsync=fsync)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.pwrite(fd, text.encode(), 0)
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)

    def _renew_loop(self) -> None:
        complained = -math.inf
        while not self._stopping.wait(self.claim.heartbeat_seconds):
            try:
                self.renew()
            except ProjectLost:
                return
            except OSError as exc:
                if time.monotonic() - complained >= 30:
                    complained = time.monotonic()
                    log.warning("cannot renew this chief's claim on the project (%s: %s); another chief may take the "
                                "project over after %gs of this", self.path, exc.strerror or exc,
                                self.claim.lease_seconds)

    def release(self) -> None:
        """Stop renewing; unless the project was lost, mark the claim released, so the next chief
        takes the project over at once. Best effort (a chief that cannot write just goes: the next
        one waits out the lease)."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        fence_project(self.project_dir, None)
        if self._lost is not None:
            return
        try:
            if self.lost_reason() is None:
                with self._lock:
                    self.claim = dataclasses.replace(self.claim, beat=self.claim.beat + 1, released=True)
                    text = self.claim.text()
                self._write(text, fsync=True)
        except OSError as exc:
            log.warning("could not mark the project released (%s): the next chief waits %gs for this one",
                        exc.strerror or exc, self.claim.lease_seconds)
