"""The trial state machine: who may move a trial, from which state, to which; the one owner of
who runs what, what is queued and what ended.

Pure logic, no I/O and no KerasTuner. Every event, live or replayed, goes through `TrialBook.apply`:
a live call first asks the machine to decide it (`decide_start`, `decide_end`: the attempt number,
the outcome of an end, a retry or not), the coordinator applies the record it gets back and carries
out the `Effects` apply returns (the journal line, what the oracle must do to follow, the lost
attempt to close); a restart applies the journal's records (chief.records) in order, through the
same `apply`, and ignores the effects (already carried out).

    QUEUED --start (chief hands it to a worker)--> RUNNING(owner, attempt)
    RUNNING --report (owner, same attempt)--> RUNNING
    RUNNING --end (owner, same attempt)--> COMPLETED | FAILED | QUEUED (retry)
    RUNNING --end (chief: a lease ran out, the id was taken over)--> FAILED | QUEUED
    (absent) --queue (chief, opening a project: a trial known only from its state)--> QUEUED
    COMPLETED, FAILED: final, nothing moves them.

A trial the oracle never handed out is simply absent. Every refusal raises a `Refused` subclass
that names the trial, the caller and why; nothing changes when one is raised.
"""

from __future__ import annotations

import dataclasses
import enum

from chief.records import Cause, Ended, Move, Phase, Queued, Started

__all__ = ["Cause", "Ended", "Move", "Phase", "Queued", "Started"]  # the vocabulary, with the machine

#: (from, event, who causes it) -> allowed targets
TRANSITIONS: dict[tuple[Phase | None, Move, Cause], frozenset[Phase]] = {
    (None, Move.START, Cause.CHIEF): frozenset({Phase.RUNNING}),
    (Phase.QUEUED, Move.START, Cause.CHIEF): frozenset({Phase.RUNNING}),
    (Phase.RUNNING, Move.REPORT, Cause.OWNER): frozenset({Phase.RUNNING}),
    (Phase.RUNNING, Move.END, Cause.OWNER): frozenset({Phase.COMPLETED, Phase.FAILED, Phase.QUEUED}),
    (Phase.RUNNING, Move.END, Cause.CHIEF): frozenset({Phase.FAILED, Phase.QUEUED}),
    (None, Move.QUEUE, Cause.CHIEF): frozenset({Phase.QUEUED}),
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


class OracleStep(str, enum.Enum):
    """What KerasTuner's oracle must do to follow a move (chief.oracle's adapter carries it out)."""

    NOTHING = "nothing"  # a first attempt: the oracle handed the trial out itself
    RESTARTED = "restarted"  # a retry was handed out: stock does not save it, its state still says INVALID
    END = "end"  # end the trial as `Ended.outcome` says (stock's bookkeeping, its retry queue following)


@dataclasses.dataclass(frozen=True)
class LostAttempt:
    """An attempt the chief ended for its owner (a lease ran out, its id was taken over): its
    files are closed as lost (chief.progress) outside the lock."""

    trial: str
    attempt: int
    reason: str


@dataclasses.dataclass(frozen=True)
class Effects:
    """What one applied move changed, for the caller to carry out: `event`'s `to_record()` is the
    journal line to append (live; replayed lines are on disk already), `oracle` what the oracle
    must do to follow, `lost` an attempt to close, `run` the trial's run after the move (log
    lines and the tally read it)."""

    event: Started | Ended | Queued
    run: TrialRun
    oracle: OracleStep = OracleStep.NOTHING
    lost: LostAttempt | None = None

    @property
    def trouble(self) -> bool:
        """An attempt that ended other than COMPLETED: always logged (normal lines are budgeted)."""
        return isinstance(self.event, Ended) and self.event.outcome is not Phase.COMPLETED


class TrialBook:
    """Every trial the chief handed out, by id: the one owner of what runs, what is queued and
    what ended. Not thread-safe: the coordinator's lock guards it."""

    def __init__(self):
        self.runs: dict[str, TrialRun] = {}
        self.running: dict[str, TrialRun] = {}  # the RUNNING ones: heartbeats ask, per worker
        self.queued: dict[str, TrialRun] = {}  # the QUEUED ones, in the order they were queued

    def _move(self, run: TrialRun, event: Move, target: Phase, cause: Cause) -> None:
        allowed = TRANSITIONS.get((run.phase, event, cause))
        if allowed is None or target not in allowed:
            raise BadTransition(f"trial {run.trial_id}: {event.value} from {run.phase and run.phase.value} "
                                f"to {target.value} by {cause.value} is not allowed")
        self.running.pop(run.trial_id, None)
        self.queued.pop(run.trial_id, None)
        run.phase = target
        if target is Phase.RUNNING:
            self.running[run.trial_id] = run
        elif target is Phase.QUEUED:
            self.queued[run.trial_id] = run

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

    # -- decisions (change nothing: apply what they return) ----------------------------------
    def decide_start(self, trial_id: str, worker: str, stock: bool, now: float,
                     token: str | None = None) -> Started:
        """A new attempt of `trial_id` for `worker`, numbered after every earlier one (numbers
        never repeat); `token`: the digest of the starting process's token (None for stock)."""
        run = self.runs.get(trial_id)
        return Started(trial_id, worker, (run.attempt if run else 0) + 1, now, stock=stock, token=token)

    def decide_end(self, trial_id: str, status: str, cause: Cause, now: float, retries: int,
                   message: str = "", used: list[str] | None = None) -> Ended:
        """How the current attempt ends: `status` is what the worker (or the chief, INVALID for a
        lost attempt) ended it with, as the algorithm scored it (chief.oracle's `verdict`); an
        INVALID attempt goes back to the queue (QUEUED) while the trial has had at most
        `retries` ended attempts counting this one beyond the first, else it FAILED."""
        run = self.get(trial_id)
        if status == "COMPLETED":
            outcome = Phase.COMPLETED
        elif status == "INVALID" and run.ended + 1 <= retries:
            outcome = Phase.QUEUED
        else:
            outcome = Phase.FAILED
        seconds = now - run.started if run.started else None
        return Ended(trial_id, run.attempt, outcome, cause, now, seconds=seconds, message=message,
                     used=used if outcome is Phase.COMPLETED else None)

    # -- the one apply path, live and replayed ------------------------------------------------
    def apply(self, event: Started | Ended | Queued) -> Effects:
        """Move the trial as `event` says, or raise BadTransition (nothing changed) if the table
        does not allow it; return what the move asks of the caller."""
        if isinstance(event, Started):
            return self._start(event)
        if isinstance(event, Ended):
            return self._end(event)
        run = TrialRun(event.trial)
        self._move(run, Move.QUEUE, Phase.QUEUED, Cause.CHIEF)
        self.runs[event.trial] = run
        return Effects(event, run)

    def _start(self, event: Started) -> Effects:
        run = self.runs.get(event.trial) or TrialRun(event.trial)
        if event.attempt is not None and event.attempt != run.attempt + 1:
            raise BadTransition(f"trial {event.trial}: attempt {event.attempt} started after attempt {run.attempt}")
        self._move(run, Move.START, Phase.RUNNING, Cause.CHIEF)
        self.runs[event.trial] = run
        run.owner, run.stock, run.started, run.seconds, run.token = (event.worker, event.stock, event.t, None,
                                                                     event.token)
        run.attempt += 1
        return Effects(event, run, OracleStep.RESTARTED if run.ended else OracleStep.NOTHING)

    def _end(self, event: Ended) -> Effects:
        run = self.get(event.trial)
        if run.phase is Phase.RUNNING and event.attempt not in (None, run.attempt):
            raise BadTransition(f"trial {event.trial}: attempt {event.attempt} ended, but attempt {run.attempt} runs")
        self._move(run, Move.END, event.outcome, event.cause)
        run.ended += 1
        run.seconds = event.seconds if event.seconds is not None else (
            event.t - run.started if run.started else None)
        run.ended_at = event.t
        if event.message:
            run.message = event.message
        if event.outcome is Phase.COMPLETED:
            run.accepted, run.used = run.attempt, event.used
        lost = LostAttempt(event.trial, run.attempt, event.message) if event.cause is Cause.CHIEF else None
        return Effects(event, run, OracleStep.END, lost)
