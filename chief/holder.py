"""Who holds a project (chief.ownership): a chief's process, its claim file's content, and how
another chief judges a holder. Pure logic and /proc reads; the files are chief.ownership's.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
import os
import socket
import time

from shared import layout

MAX_CLAIM_BYTES = 4096  # a claim is a few hundred bytes; more is not a claim
CLAIM_BYTES = 1024  # every claim written is padded to this size: on a full disk it is rewritten in place
MAX_SECONDS = 7 * 24 * 3600.0


# -- who a chief is ---------------------------------------------------------------------------

def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read(200).strip()
    except OSError:
        return ""


def start_ticks(pid: int) -> int | None:
    """When process `pid` of this pid namespace started (clock ticks after boot, /proc/<pid>/stat);
    None if there is no such process running (a zombie has ended), or no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2:].split()
        return None if fields[0] in (b"Z", b"X", b"x") else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


@dataclasses.dataclass(frozen=True)
class Process:
    """A chief process: `host` and `pid` for people; `boot`, `pidns` and `started` tell, on the same
    machine and pid namespace only, whether a holder still runs."""

    host: str
    pid: int
    boot: str = ""
    pidns: str = ""
    started: int | None = None

    @classmethod
    def here(cls) -> "Process":
        pid = os.getpid()
        try:
            pidns = os.readlink("/proc/self/ns/pid")
        except OSError:
            pidns = ""
        return cls(socket.gethostname(), pid, _read_text("/proc/sys/kernel/random/boot_id"), pidns, start_ticks(pid))


def process_alive(pid: int, started: int | None) -> bool:
    """Is process `pid` of this pid namespace, started at `started` (None: whenever), running?"""
    ticks = start_ticks(pid)
    return ticks is not None and (started is None or ticks == started)


# -- the claim --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Claim:
    """The content of `ktcluster-chief.<generation>.json`. `since`: the holder's wall clock when it
    took the project (shown, never compared); `beat` counts its renewals."""

    generation: int
    host: str
    pid: int
    since: float
    lease_seconds: float
    heartbeat_seconds: float
    beat: int = 0
    released: bool = False
    boot: str = ""
    pidns: str = ""
    started: int | None = None

    @classmethod
    def of(cls, generation: int, me: Process, lease_seconds: float, heartbeat_seconds: float) -> "Claim":
        return cls(generation, me.host, me.pid, time.time(), lease_seconds, heartbeat_seconds,
                   boot=me.boot, pidns=me.pidns, started=me.started)

    def text(self) -> str:
        """The file's content: JSON, padded with spaces to CLAIM_BYTES (so that every version of a
        claim has the same size, and one can replace another in place)."""
        text = json.dumps(dataclasses.asdict(self))
        return text + " " * max(0, CLAIM_BYTES - 1 - len(text.encode())) + "\n"

    @classmethod
    def parse(cls, content: bytes | str | None) -> "Claim | None":
        """A claim from a file another process wrote: None unless every field is as it should be."""
        if content is None or len(content) > MAX_CLAIM_BYTES:
            return None
        fields = layout.json_object(content)
        if fields is None:
            return None

        def integer(name, low=0):
            value = fields.get(name)
            return value if type(value) is int and value >= low else None

        def seconds(name):
            value = fields.get(name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            return float(value) if ok and 0 < value <= MAX_SECONDS else None

        generation, pid, beat = integer("generation", 1), integer("pid", 1), integer("beat")
        lease, heartbeat, since = seconds("lease_seconds"), seconds("heartbeat_seconds"), fields.get("since")
        started = fields.get("started")
        texts = [fields.get(name, "") for name in ("host", "boot", "pidns")]
        if (None in (generation, pid, beat, lease, heartbeat) or not all(isinstance(t, str) for t in texts)
                or not isinstance(since, (int, float)) or isinstance(since, bool) or not math.isfinite(since)
                or not isinstance(fields.get("released", False), bool)
                or not (started is None or (type(started) is int and started >= 0))):
            return None
        host = " ".join("".join(c if c.isprintable() else " " for c in texts[0]).split())[:100] or "?"
        return cls(generation, host, pid, float(since), lease, heartbeat, beat, fields.get("released", False),
                   texts[1], texts[2], started)

    def who(self) -> str:
        """`the chief on host h (pid 12) since 2026-12-06 04:30:01 UTC, generation 3`"""
        since = datetime.datetime.fromtimestamp(self.since, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"the chief on host {self.host} (pid {self.pid}) since {since}, generation {self.generation}"

    def here_and_gone(self, me: Process, alive=process_alive) -> bool:
        """True when this claim's holder was a process of `me`'s machine and pid namespace that no
        longer runs (a pid now `me`'s, or gone, or reused by a later process)."""
        if not (self.boot and self.pidns and (self.boot, self.pidns, self.host) == (me.boot, me.pidns, me.host)):
            return False
        return self.pid == me.pid or not alive(self.pid, self.started)


# -- judging a holder: pure logic, this process's clock only ------------------------------------

class Verdict(enum.Enum):
    LIVE = "live"  # its claim changed while watched: a chief holds the project
    GONE = "gone"  # released, removed, or unchanged for a whole lease
    WAIT = "wait"  # not known yet


class SilenceWatch:
    """A holder judged by its claim's content (`first`: as first read; None: no claim), on this
    process's monotonic clock: a change is a live holder (unless the claim now says released, or
    is gone), no change for `lease_seconds` from the first look is a holder that is gone."""

    def __init__(self, first: bytes | None, lease_seconds: float, now: float):
        self.first, self.lease_seconds, self.since = first, lease_seconds, now

    def see(self, content: bytes | None, now: float) -> Verdict:
        if content != self.first:
            if content is None:
                return Verdict.GONE
            claim = Claim.parse(content)
            return Verdict.GONE if claim is not None and claim.released else Verdict.LIVE
        return Verdict.GONE if now - self.since >= self.lease_seconds else Verdict.WAIT


class Held(Exception):
    """Another chief holds the project. `claim`: its claim (None if it could not be read)."""

    def __init__(self, claim: Claim | None, generation: int, lease_seconds: float):
        self.claim, self.generation, self.lease_seconds = claim, generation, lease_seconds
        who = claim.who() if claim is not None else f"another chief (generation {generation}, starting)"
        super().__init__(
            f"held by {who}; only one chief may serve a project: stop that chief first (one that stops hands "
            f"the project over at once), or, if it is cut off for good, start this one again: it takes the "
            f"project over once that chief has been silent for its lease ({lease_seconds:g}s, KTC_LEASE_SECONDS)")
