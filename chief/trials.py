"""The trial state machine: who may move a trial, from which state, to which.

Pure logic, no I/O and no KerasTuner: the coordinator asks it before every
oracle call and records the transition it returns in the journal; replaying
the journal through the same transitions rebuilds it after a restart.

    QUEUED --start (chief hands it to a worker)--> RUNNING(owner, attempt)
    RUNNING --report (owner, same attempt)--> RUNNING
    RUNNING --end (owner, same attempt) / expire (chief)--> COMPLETED | FAILED | QUEUED (retry)
    COMPLETED, FAILED: final, nothing moves them.

A trial the oracle never handed out is simply absent. Every refusal raises a
`Refused` subclass that names the trial, the caller and why; nothing changes
when one is raised.
"""

from __future__ import annotations

import dataclasses
import enum


class Phase(str, enum.Enum):
    QUEUED = "QUEUED"  # waiting for its next attempt (a retry)
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"

    @property
    def final(self) -> bool:
        return self in (Phase.COMPLETED, Phase.FAILED)


class Cause(str, enum.Enum):
    """Who may cause a transition."""

    CHIEF = "chief"  # the coordinator itself: handing a trial out, a lease running out
    OWNER = "owner"  # the worker holding the trial's current attempt


#: (from, event) -> (allowed targets, who may cause it)
TRANSITIONS: dict[tuple[Phase | None, str], tuple[frozenset[Phase], Cause]] = {
    (None, "start"): (frozenset({Phase.RUNNING}), Cause.CHIEF),
    (Phase.QUEUED, "start"): (frozenset({Phase.RUNNING}), Cause.CHIEF),
    (Phase.RUNNING, "report"): (frozenset({Phase.RUNNING}), Cause.OWNER),
    (Phase.RUNNING, "end"): (frozenset({Phase.COMPLETED, Phase.FAILED, Phase.QUEUED}), Cause.OWNER),
    (Phase.RUNNING, "expire"): (frozenset({Phase.FAILED, Phase.QUEUED}), Cause.CHIEF),
}

#: Statuses a worker may end an attempt with (KerasTuner's TrialStatus values): INVALID asks for a retry.
FINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "INVALID"})


class Refused(Exception):
    """A request or event that is not allowed; `str()` is one line for the caller and the log,
    `code` the gRPC status code's name the server answers with. Nothing changed."""

    code = "FAILED_PRECONDITION"


class UnknownTrial(Refused):
    code = "NOT_FOUND"


class NotOwner(Refused):
    """From anyone but the current owner of the current attempt, or for a trial not running."""


class NotFinal(Refused):
    """An end whose status is not final (RUNNING, IDLE, STOPPED, UNKNOWN...)."""

    code = "INVALID_ARGUMENT"


class InvalidRequest(Refused):
    """A malformed request: a bad tuner id, payload, search space or metric."""

    code = "INVALID_ARGUMENT"


class NotRegistered(Refused):
    """A call that only a registered ktcluster worker may make."""

    code = "PERMISSION_DENIED"


class BadTransition(Refused):
    """A transition the table does not allow (a journal that contradicts itself, or a bug)."""

    code = "INTERNAL"


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who sent an RPC: a ktcluster worker names itself, its process and its attempt; a stock
    KerasTuner client sends nothing (worker and instance None) except a tuner id on CreateTrial."""

    worker: str | None = None
    instance: str | None = None
    attempt: int | None = None

    @property
    def anonymous(self) -> bool:
        return self.worker is None


@dataclasses.dataclass
class TrialRun:
    """One trial's place in the machine. `attempt` counts attempts started; `ended` those ended.
    `stock` is True while the current attempt is held by a stock client (it reports anonymously)."""

    trial_id: str
    phase: Phase | None = None
    owner: str | None = None
    attempt: int = 0
    ended: int = 0
    stock: bool = False
    started: float | None = None  # wall time the current attempt started
    seconds: float | None = None  # duration of the last ended attempt
    ended_at: float | None = None
    message: str = ""  # the last failed attempt's message
    used: list[str] | None = None  # hyperparameters the accepted build used (ktcluster workers)
    accepted: int | None = None  # the attempt whose result counts (COMPLETED)
    token: str | None = None  # digest of the token of the process running the current attempt (chief.leases)


class TrialBook:
    """Every trial the chief handed out, by id. Not thread-safe: the coordinator's lock guards it."""

    def __init__(self):
        self.runs: dict[str, TrialRun] = {}
        self.running: dict[str, TrialRun] = {}  # the RUNNING ones: heartbeats ask, per worker

    def _move(self, run: TrialRun, event: str, target: Phase, cause: Cause) -> None:
        allowed = TRANSITIONS.get((run.phase, event))
        if allowed is None or target not in allowed[0] or allowed[1] is not cause:
            raise BadTransition(f"trial {run.trial_id}: {event} from {run.phase and run.phase.value} "
                                f"to {target.value} by {cause.value} is not allowed")
        run.phase = target

    def get(self, trial_id: str) -> TrialRun:
        run = self.runs.get(trial_id)
        if run is None:
            raise UnknownTrial(f"trial {trial_id!r} was never handed out")
        return run

    def owned_by(self, worker: str) -> dict[str, int]:
        """The trials `worker` runs now, with their attempt numbers (heartbeat replies)."""
        return {t: r.attempt for t, r in self.running.items() if r.owner == worker}

    # -- checks (raise, change nothing) ----------------------------------------------------
    def check_owner(self, trial_id: str, caller: Caller, what: str) -> TrialRun:
        """The run, if `caller` holds its current attempt. An anonymous caller is accepted only
        for a trial held by a stock client (which cannot name itself); a ktcluster caller must
        also name the current attempt when it sends one."""
        run = self.get(trial_id)
        if run.phase is not Phase.RUNNING:
            raise NotOwner(f"{what} of trial {trial_id} from {caller.worker or 'an anonymous client'} refused: "
                           f"the trial is {run.phase.value}, not running")
        if caller.anonymous:
            if not run.stock:
                raise NotOwner(f"{what} of trial {trial_id} without a worker id refused: it belongs to {run.owner}")
        elif caller.worker != run.owner or (caller.attempt is not None and caller.attempt != run.attempt):
            raise NotOwner(f"{what} of trial {trial_id} attempt {caller.attempt or '?'} from {caller.worker} "
                           f"refused: attempt {run.attempt} belongs to {run.owner}")
        return run

    def is_repeat_end(self, trial_id: str, caller: Caller) -> bool:
        """True when `caller`'s attempt already ended this trial: a result sent again after a reply
        was lost (e.g. the chief could not store it then). Acknowledged without any change."""
        run = self.runs.get(trial_id)
        return (run is not None and run.phase is not Phase.RUNNING and not caller.anonymous
                and run.owner == caller.worker and caller.attempt == run.attempt == run.ended)

    @staticmethod
    def check_final(status: str) -> None:
        if status not in FINAL_STATUSES:
            raise NotFinal(f"an attempt must end COMPLETED, FAILED or INVALID, not {status}")

    # -- transitions (the journal records each) ---------------------------------------------
    def start(self, trial_id: str, owner: str, stock: bool, now: float, token: str | None = None) -> TrialRun:
        """A new attempt, numbered after every earlier one (numbers never repeat); `token`: the
        digest of the starting process's token (None for stock clients)."""
        run = self.runs.get(trial_id) or TrialRun(trial_id)
        self._move(run, "start", Phase.RUNNING, Cause.CHIEF)
        self.runs[trial_id] = self.running[trial_id] = run
        run.owner, run.stock, run.started, run.seconds, run.token = owner, stock, now, None, token
        run.attempt += 1
        return run

    def end(self, trial_id: str, outcome: Phase, now: float, cause: Cause = Cause.OWNER,
            message: str = "", used: list[str] | None = None) -> TrialRun:
        """End the current attempt with the oracle's outcome (COMPLETED, FAILED or QUEUED for a
        retry); `cause` CHIEF when a lease ran out."""
        run = self.get(trial_id)
        self._move(run, "end" if cause is Cause.OWNER else "expire", outcome, cause)
        del self.running[trial_id]
        run.ended += 1
        run.seconds = now - run.started if run.started else None
        run.ended_at = now
        if message:
            run.message = message
        if outcome is Phase.COMPLETED:
            run.accepted, run.used = run.attempt, used
        return run
