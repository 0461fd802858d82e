"""The trial state machine's vocabulary and its records: what a journal start or end line holds.

`Move` names the state machine's events (chief.trials); the journal's `start` and `end` lines are
named by it (chief.journal.Event). `Started` and `Ended` are those lines as typed records: the
coordinator journals `to_record()` of what the machine applied, and a restart replays
`from_record(line)` through the same `TrialBook.apply`. No I/O.

Versions (`v`): 1 since issue 23. A line without `v` is version 0 (d1fbc2d and earlier): the same
fields, some of them absent in older lines (`attempt`, `stock`, `token`, `cause`, `message`, `used`,
`seconds`), read with the defaults below (no `attempt`: the next attempt, or the current one). A line of a later version than VERSION is refused (ValueError): a
newer ktcluster wrote it, and guessing its meaning could lose or re-run trials.
"""

from __future__ import annotations

import dataclasses
import enum

VERSION = 1
RETRY = "RETRY"  # an end line's status when the trial went back to the queue (Phase.QUEUED)


class Phase(str, enum.Enum):
    QUEUED = "QUEUED"  # waiting for its next attempt (a retry)
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"

    @property
    def final(self) -> bool:
        return self in (Phase.COMPLETED, Phase.FAILED)

    @property
    def status(self) -> str:
        """What an end line, the log and the metrics call this outcome (RETRY for QUEUED)."""
        return RETRY if self is Phase.QUEUED else self.value


class Cause(str, enum.Enum):
    """Who may cause a transition."""

    CHIEF = "chief"  # the coordinator itself: handing a trial out, a lease running out, an id taken over
    OWNER = "owner"  # the worker holding the trial's current attempt


class Move(str, enum.Enum):
    """The state machine's events; START and END are also the names of their journal lines."""

    START = "start"  # the chief hands a trial out: a new attempt
    REPORT = "report"  # the owner reports progress (journaled as the trial's new state, not as a move)
    END = "end"  # the owner ends its attempt, or the chief ends it for it (cause CHIEF)
    QUEUE = "queue"  # a trial known only from its state (journals from before start lines), not final


@dataclasses.dataclass(frozen=True)
class Started:
    """`worker` runs attempt `attempt` of `trial` from wall time `t`. `stock`: a stock KerasTuner
    client holds it; `token`: the digest of the starting process's token (chief.leases; None for
    stock clients and lines written before tokens)."""

    trial: str
    worker: str
    attempt: int | None  # None: the next (version 0 lines written before attempt numbers)
    t: float
    stock: bool = False
    token: str | None = None

    def to_record(self) -> dict:
        line = {"event": Move.START.value, "trial": self.trial, "worker": self.worker, "attempt": self.attempt,
                "stock": self.stock}
        if self.token:
            line["token"] = self.token
        line.update(t=self.t, v=VERSION)
        return line


@dataclasses.dataclass(frozen=True)
class Ended:
    """Attempt `attempt` of `trial` ended at wall time `t` with `outcome` (QUEUED: a retry), by its
    owner or the chief (`cause`); `message`: one line (a failed attempt's error); `used`: the
    hyperparameters the accepted build used (ktcluster workers, COMPLETED only)."""

    trial: str
    attempt: int | None  # None: the current one (version 0 lines written before attempt numbers)
    outcome: Phase
    cause: Cause
    t: float
    seconds: float | None = None
    message: str = ""
    used: list[str] | None = None

    def to_record(self) -> dict:
        return {"event": Move.END.value, "trial": self.trial, "attempt": self.attempt, "status": self.outcome.status,
                "cause": self.cause.value, "seconds": self.seconds, "message": self.message, "used": self.used,
                "t": self.t, "v": VERSION}


@dataclasses.dataclass(frozen=True)
class Queued:
    """A trial the chief knows only from its KerasTuner state (written before start lines) and
    that is not final: queued for an attempt when a project is opened. Never journaled."""

    trial: str


def from_record(line: dict) -> Started | Ended:
    """The record a start or end line holds, of any version up to VERSION; ValueError, KeyError
    or TypeError for a line that is not one."""
    version = line.get("v", 0)
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= VERSION:
        raise ValueError(f"record version {version!r}: this chief reads versions 0 to {VERSION} (a newer "
                         "ktcluster wrote it)")
    move = Move(line["event"])
    if move is Move.START:
        return Started(str(line["trial"]), str(line["worker"]), _attempt(line), float(line["t"]),
                       stock=bool(line.get("stock", False)), token=line.get("token"))
    if move is Move.END:
        status = line["status"]
        return Ended(str(line["trial"]), _attempt(line), Phase.QUEUED if status == RETRY else Phase(status),
                     Cause(line.get("cause", Cause.OWNER.value)), float(line["t"]), seconds=line.get("seconds"),
                     message=line.get("message") or "", used=line.get("used"))
    raise ValueError(f"a {move.value} line is not a journal record")


def _attempt(line: dict) -> int | None:
    return None if line.get("attempt") is None and line.get("v", 0) == 0 else int(line["attempt"])
